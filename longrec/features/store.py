"""Build, apply and query the longrec Feast repo: event log, serving snapshots, histories, online reads.

See `longrec.features.definitions` for the representation. Training histories come from the event-log
view: `EventLog.from_store` pulls it once through the offline store (DuckDB locally, Spark or BigQuery on
a cluster: `pull_all_from_table_or_query`, which every offline store implements), and the point-in-time
cut is a vectorised binary search per request, the last L events with timestamp strictly before the
target. Static user features go through `get_historical_features`, one row per user, joined back on keys.

Why not `get_historical_features` on a per-second snapshot view, as before: that stores O(events x L)
values, and every Feast offline store implements the point-in-time join as a range join on the entity
key followed by a row_number over each request's earlier rows, O(requests x rows per user). At 1,000
events per user that join outgrows the training set itself (benchmarks/results/feature_retrieval.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore

from longrec.data.samples import pad_histories
from longrec.data.schema import EVENT_COLUMNS, ITEM_FEATURE_COLUMNS, USER_FEATURE_COLUMNS
from longrec.features.definitions import (
    EVENT_FEATURES,
    EVENTS_FILE,
    EVENTS_VIEW,
    ITEM_FEATURES,
    ITEM_FILE,
    ITEM_VIEW,
    SEQUENCE_FEATURES,
    SEQUENCE_FILE,
    SEQUENCE_VIEW,
    TIMESTAMP_FIELD,
    USER_FEATURES,
    USER_FILE,
    USER_VIEW,
    feature_definitions,
)

logger = logging.getLogger(__name__)

PROJECT = "longrec"
DATA_SUBDIR = "data"
# Parquet schema metadata key recording the L the snapshots were built with.
HISTORY_LENGTH_KEY = b"longrec.max_history_length"
REQUEST_COLUMNS = ("user_id", "target_timestamp")
# Materialization starts well before the static side-feature rows (stamped at or before 1970-01-01).
MATERIALIZE_START = datetime(1900, 1, 1, tzinfo=UTC)
# Rows of one snapshot chunk: bounds memory and keeps list offsets far below the int32 limit.
_VALUES_PER_CHUNK = 4_000_000
_PARQUET_COMPRESSION = "zstd"

_EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        (TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")),
        ("behavior_item_id", pa.int64()),
        ("behavior_position", pa.int64()),
    ]
)
_SEQUENCE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        (TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")),
        ("sequence_items", pa.list_(pa.int64())),
        ("sequence_timestamps", pa.list_(pa.int64())),
    ]
)


class FeatureConsistencyError(RuntimeError):
    """Feast returned features that break the longrec contract (dropped, duplicated or leaking rows)."""


def _int_frame(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """Check `frame` has the integer, null-free `columns` and return just those as int64."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; expected columns {list(columns)}")
    for column in columns:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise ValueError(f"{name}.{column} must be an integer column, got dtype {frame[column].dtype}")
        if frame[column].isna().any():
            raise ValueError(f"{name}.{column} contains nulls")
    return frame[list(columns)].astype("int64").reset_index(drop=True)


def _to_utc(unix_seconds: np.ndarray) -> pa.Array:
    return pa.array(unix_seconds.astype("int64") * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _snapshot_plan(events: pd.DataFrame, max_history_length: int) -> tuple[np.ndarray, ...]:
    """Sorted (users, items, times) plus the first and last event index of every snapshot row."""
    if max_history_length < 1:
        raise ValueError(f"max_history_length must be >= 1, got {max_history_length}")
    events = _int_frame(events, EVENT_COLUMNS, "events")
    users = events["user_id"].to_numpy()
    times = events["timestamp"].to_numpy()
    # np.lexsort is stable: ties keep the original row order, as the event contract requires.
    order = np.lexsort((times, users))
    users, items, times = users[order], events["item_id"].to_numpy()[order], times[order]

    n = len(users)
    positions = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, positions, 0))
    # The last event of each (user, second) group closes one snapshot, so ties share a snapshot.
    group_end = np.ones(n, dtype=bool)
    group_end[:-1] = (users[1:] != users[:-1]) | (times[1:] != times[:-1])
    ends = np.flatnonzero(group_end)
    starts = np.maximum(user_start[ends], ends - max_history_length + 1)
    return users, items, times, starts, ends


def write_sequence_snapshots(events: pd.DataFrame, path: Path | str, max_history_length: int) -> int:
    """Write one snapshot row per (user, distinct timestamp) to a parquet file and return the row count.

    The pre-event-log representation, kept to measure its storage (benchmarks/feature_storage.py).
    """
    users, items, times, starts, ends = _snapshot_plan(events, max_history_length)
    _write_snapshot_rows(users, items, times, starts, ends, path, max_history_length)
    return int(len(ends))


def write_latest_snapshots(events: pd.DataFrame, path: Path | str, max_history_length: int) -> int:
    """Write each user's last L events (one row per user, stamped at the user's last event); return rows."""
    users, items, times, starts, ends = _snapshot_plan(events, max_history_length)
    last = np.ones(len(ends), dtype=bool)
    last[:-1] = users[ends[1:]] != users[ends[:-1]]
    _write_snapshot_rows(users, items, times, starts[last], ends[last], path, max_history_length)
    return int(last.sum())


def write_event_log(events: pd.DataFrame, path: Path | str) -> int:
    """Write the event-log view's rows (user, time, item, rank in the user's log) and return the count."""
    users, items, times, _, _ = _snapshot_plan(events, 1)
    n = len(users)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    positions = np.arange(n) - np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    table = pa.Table.from_arrays(
        [
            pa.array(users, type=pa.int64()),
            _to_utc(times),
            pa.array(items, type=pa.int64()),
            pa.array(positions, type=pa.int64()),
        ],
        schema=_EVENTS_SCHEMA,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression=_PARQUET_COMPRESSION, row_group_size=1 << 20)
    return n


def _write_snapshot_rows(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    path: Path | str,
    max_history_length: int,
) -> None:
    """Write snapshot rows [starts, ends] of the sorted events to parquet, in bounded chunks."""
    n = len(users)
    lengths = ends - starts + 1

    metadata = {HISTORY_LENGTH_KEY: str(max_history_length).encode()}
    schema = _SEQUENCE_SCHEMA.with_metadata(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rows are written in chunks of about _VALUES_PER_CHUNK list values each.
    chunk_of_row = (np.cumsum(lengths) - 1) // _VALUES_PER_CHUNK
    bounds = [0, *(np.flatnonzero(np.diff(chunk_of_row)) + 1).tolist(), len(ends)]
    with pq.ParquetWriter(path, schema, compression=_PARQUET_COMPRESSION) as writer:
        for row, stop in pairwise(bounds):
            if row == stop:  # no events: the writer still leaves a valid, empty file
                continue
            chunk_lengths = lengths[row:stop]
            offsets = np.zeros(len(chunk_lengths) + 1, dtype=np.int32)
            np.cumsum(chunk_lengths, out=offsets[1:])
            # Flat index of every list value: the row's first event, then consecutive positions.
            flat = np.repeat(starts[row:stop] - offsets[:-1], chunk_lengths) + np.arange(offsets[-1])
            pa_offsets = pa.array(offsets, type=pa.int32())
            table = pa.Table.from_arrays(
                [
                    pa.array(users[ends[row:stop]], type=pa.int64()),
                    _to_utc(times[ends[row:stop]]),
                    pa.ListArray.from_arrays(pa_offsets, pa.array(items[flat], type=pa.int64())),
                    pa.ListArray.from_arrays(pa_offsets, pa.array(times[flat], type=pa.int64())),
                ],
                schema=schema,
            )
            writer.write_table(table)
    logger.info("wrote %d snapshots of %d events (L=%d) to %s", len(ends), n, max_history_length, path)


def _static_timestamp(events: pd.DataFrame) -> int:
    """Unix second stamped on static side-feature rows: 1970-01-01, or earlier if events predate it."""
    first = int(events["timestamp"].min()) if len(events) else 0
    return min(0, first - 1)


def _write_static(frame: pd.DataFrame, key: str, stamp: int, path: Path) -> None:
    if frame[key].duplicated().any():
        raise ValueError(
            f"{path.stem}: duplicate {key} values {frame[key][frame[key].duplicated()].head().tolist()}"
        )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column(TIMESTAMP_FIELD, _to_utc(np.full(len(frame), stamp)))
    pq.write_table(table, path, compression=_PARQUET_COMPRESSION)


def write_feature_data(
    events: pd.DataFrame,
    item_features: pd.DataFrame,
    user_features: pd.DataFrame,
    data_dir: Path | str,
    max_history_length: int,
) -> dict[str, int]:
    """Write the event log, serving snapshots and side features into `data_dir`; return bytes per file."""
    events = _int_frame(events, EVENT_COLUMNS, "events")
    item_features = _int_frame(item_features, ITEM_FEATURE_COLUMNS, "item_features")
    user_features = _int_frame(user_features, USER_FEATURE_COLUMNS, "user_features")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_event_log(events, data_dir / EVENTS_FILE)
    write_latest_snapshots(events, data_dir / SEQUENCE_FILE, max_history_length)
    # Static rows sit before every event so any point-in-time lookup finds them.
    stamp = _static_timestamp(events)
    _write_static(item_features, "item_id", stamp, data_dir / ITEM_FILE)
    _write_static(user_features, "user_id", stamp, data_dir / USER_FILE)
    return {name: _file_size(data_dir / name) for name in (EVENTS_FILE, SEQUENCE_FILE, ITEM_FILE, USER_FILE)}


def _online_store_config(online_store: str | dict[str, Any]) -> dict[str, Any]:
    if online_store == "sqlite":
        return {"type": "sqlite", "path": "online_store.db"}
    if isinstance(online_store, dict):
        return {"type": "redis", **online_store}
    raise ValueError(f"online_store must be 'sqlite' or a dict of redis settings, got {online_store!r}")


def write_store_config(repo_dir: Path | str, online_store: str | dict[str, Any] = "sqlite") -> Path:
    """Write feature_store.yaml (DuckDB offline store) with registry and online paths relative to `repo_dir`."""
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": "registry.db", "cache_ttl_seconds": 60},
        "offline_store": {"type": "duckdb"},
        "online_store": _online_store_config(online_store),
        "entity_key_serialization_version": 3,
    }
    path = Path(repo_dir) / "feature_store.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def create_feature_repo(
    repo_dir: Path | str,
    events: pd.DataFrame,
    item_features: pd.DataFrame,
    user_features: pd.DataFrame,
    max_history_length: int,
    online_store: str | dict[str, Any] = "sqlite",
) -> FeatureStore:
    """Write data and feature_store.yaml under `repo_dir`, apply the definitions, and return the store."""
    repo_dir = Path(repo_dir).resolve()
    repo_dir.mkdir(parents=True, exist_ok=True)
    sizes = write_feature_data(
        events, item_features, user_features, repo_dir / DATA_SUBDIR, max_history_length
    )
    logger.info("feature data in %s: %s", repo_dir / DATA_SUBDIR, sizes)
    write_store_config(repo_dir, online_store)
    store = FeatureStore(repo_path=str(repo_dir))
    # Absolute source paths: DuckDB reads them as given. The online store and registry stay relative, so
    # a moved repo still serves online; offline reads need the data where it was written.
    store.apply(feature_definitions(repo_dir / DATA_SUBDIR))
    return store


def materialize(store: FeatureStore, end_date: datetime | None = None) -> None:
    """Materialize all views up to `end_date` (default now; naive means UTC) into the online store."""
    if end_date is None:
        end_date = datetime.now(UTC)
    elif end_date.tzinfo is None:
        end_date = end_date.replace(tzinfo=UTC)
    store.materialize(start_date=MATERIALIZE_START, end_date=end_date)


def _as_int_array(value: Any) -> np.ndarray:
    """A Feast list value (array, list or missing) as an int64 numpy array."""
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return np.empty(0, dtype=np.int64)
    return np.asarray(value, dtype=np.int64)


def _historical(
    store: FeatureStore, keys: pd.DataFrame, at: pd.Series, view: str, names: Sequence[str]
) -> pd.DataFrame:
    """`keys` (unique rows) left-joined with `view` features as of `at` (unix seconds), in `keys` order."""
    key_columns = list(keys.columns)
    entity_df = keys.assign(**{TIMESTAMP_FIELD: pd.to_datetime(at.to_numpy(), unit="s", utc=True)})
    features = [f"{view}:{name}" for name in names]
    result = store.get_historical_features(entity_df=entity_df, features=features).to_df()
    # Feast may drop rows without a feature row in the window and does not keep order: join back on keys.
    result = result[[*key_columns, *names]].dropna(subset=list(names), how="all")
    result = result.astype({column: "int64" for column in key_columns})
    if result.duplicated(key_columns).any():
        raise FeatureConsistencyError(
            f"{view}: get_historical_features returned duplicate {key_columns} rows"
        )
    merged = keys.merge(result, on=key_columns, how="left", validate="one_to_one", indicator=True)
    if (merged["_merge"] == "both").sum() != len(result):
        raise FeatureConsistencyError(f"{view}: get_historical_features returned rows matching no request")
    return merged.drop(columns="_merge")


@dataclass(frozen=True)
class EventLog:
    """The event-log view in memory, sorted by (user, time, position): O(events), independent of L."""

    user_ids: np.ndarray  # distinct users, ascending
    user_start: np.ndarray  # [n_users + 1] index of each user's first event, then the total
    timestamps: np.ndarray  # unix seconds
    item_ids: np.ndarray
    ttl_seconds: int = 0  # 0 = events never expire

    @classmethod
    def from_store(cls, store: FeatureStore, view: str = EVENTS_VIEW) -> EventLog:
        """Pull the whole view through the store's offline store (DuckDB, Spark, BigQuery, ...)."""
        feature_view = store.get_feature_view(view)
        source = feature_view.batch_source
        # The offline-store API every Feast store implements (its optional time range left open); the
        # provider is where FeatureStore keeps its configured offline store.
        job = store._get_provider().offline_store.pull_all_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=["user_id"],
            feature_name_columns=list(EVENT_FEATURES),
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            start_date=None,
            end_date=None,
        )
        table = job.to_arrow()
        stamps = (
            table.column(source.timestamp_field)
            .cast(pa.timestamp("s", tz="UTC"), safe=False)
            .cast(pa.int64())
        )
        return cls.from_arrays(
            table.column("user_id").to_numpy(),
            stamps.to_numpy(),
            table.column("behavior_item_id").to_numpy(),
            table.column("behavior_position").to_numpy(),
            ttl_seconds=int(feature_view.ttl.total_seconds()) if feature_view.ttl else 0,
        )

    @classmethod
    def from_arrays(
        cls,
        user_ids: np.ndarray,
        timestamps: np.ndarray,
        item_ids: np.ndarray,
        positions: np.ndarray,
        ttl_seconds: int = 0,
    ) -> EventLog:
        """Sort rows that came back in any order (offline stores do not keep it) and index users."""
        user_ids, positions = np.asarray(user_ids, np.int64), np.asarray(positions, np.int64)
        order = np.lexsort((positions, user_ids))
        users = user_ids[order]
        stamps = np.asarray(timestamps, np.int64)[order]
        new_user = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, bool)
        if len(users) and (np.diff(positions[order])[~new_user[1:]] != 1).any():
            raise FeatureConsistencyError(f"{EVENTS_VIEW}: positions are not 0..n-1 within each user")
        if len(users) and (np.diff(stamps)[~new_user[1:]] < 0).any():
            raise FeatureConsistencyError(f"{EVENTS_VIEW}: a user's positions and timestamps disagree")
        starts = np.flatnonzero(new_user)
        return cls(
            user_ids=users[starts],
            user_start=np.r_[starts, len(users)].astype(np.int64),
            timestamps=stamps,
            item_ids=np.asarray(item_ids, np.int64)[order],
            ttl_seconds=ttl_seconds,
        )

    def __len__(self) -> int:
        return len(self.timestamps)

    def history_bounds(
        self, user_ids: np.ndarray, target_timestamps: np.ndarray, max_history_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(first index, length) in this log of each request's history: the user's last L events strictly
        before the target (and, with a ttl, no older than target - ttl). Unknown users get length 0."""
        if max_history_length < 1:
            raise ValueError(f"max_history_length must be >= 1, got {max_history_length}")
        user_ids = np.asarray(user_ids, np.int64)
        targets = np.asarray(target_timestamps, np.int64)
        if len(self) == 0 or len(user_ids) == 0:
            zeros = np.zeros(len(user_ids), np.int64)
            return zeros, zeros.copy()
        rank = np.minimum(np.searchsorted(self.user_ids, user_ids), len(self.user_ids) - 1)
        known = self.user_ids[rank] == user_ids
        lo, hi = self.user_start[rank], self.user_start[rank + 1]
        # Number of the user's events strictly before t: binary search inside each user's time-sorted
        # slice, done for all requests at once on (user rank, time) keys.
        t_min, t_max = int(self.timestamps.min()), int(self.timestamps.max())
        span = t_max - t_min + 2
        if span * len(self.user_ids) >= 2**62:
            raise ValueError("timestamp range x users too large for int64 search keys")
        event_rank = np.repeat(np.arange(len(self.user_ids)), np.diff(self.user_start))
        event_keys = event_rank * span + (self.timestamps - t_min)

        def first_at_or_after(t: np.ndarray) -> np.ndarray:
            return np.searchsorted(event_keys, rank * span + np.clip(t - t_min, 0, span - 1), side="left")

        end = np.clip(first_at_or_after(targets), lo, hi)
        start = np.maximum(lo, end - max_history_length)
        if self.ttl_seconds > 0:
            start = np.maximum(start, np.minimum(first_at_or_after(targets - self.ttl_seconds), end))
        length = np.where(known, end - start, 0)
        return np.where(known, start, 0), length

    def histories(
        self, user_ids: np.ndarray, target_timestamps: np.ndarray, max_history_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded [N, L] history items and timestamps (oldest first, padding 0)."""
        start, length = self.history_bounds(user_ids, target_timestamps, max_history_length)
        return pad_histories(self.item_ids, self.timestamps, start, length, max_history_length)


def fetch_user_features(store: FeatureStore, user_ids: np.ndarray, at: np.ndarray) -> pd.DataFrame:
    """Static user side features (user_id + USER_FEATURES) as of `at` per user; 0 where a user has none."""
    keys = pd.DataFrame({"user_id": np.asarray(user_ids, np.int64)})
    if keys["user_id"].duplicated().any():
        raise ValueError("fetch_user_features takes each user once")
    side = _historical(store, keys, pd.Series(np.asarray(at, np.int64)), USER_VIEW, USER_FEATURES)
    side[list(USER_FEATURES)] = side[list(USER_FEATURES)].fillna(0).astype("int64")
    return side


def fetch_histories(store: FeatureStore, requests: pd.DataFrame, max_history_length: int) -> pd.DataFrame:
    """Histories of events strictly before each target, plus user side features; one row per request,
    in request order (history_items / history_timestamps are variable-length int64 arrays)."""
    keys = _int_frame(requests, REQUEST_COLUMNS, "requests")
    log = EventLog.from_store(store)
    users, targets = keys["user_id"].to_numpy(), keys["target_timestamp"].to_numpy()
    start, length = log.history_bounds(users, targets, max_history_length)
    cuts = np.cumsum(length)[:-1]
    flat = np.repeat(start - np.r_[0, np.cumsum(length)[:-1]], length) + np.arange(int(length.sum()))
    out = keys.assign(
        history_items=np.split(log.item_ids[flat], cuts) if len(keys) else [],
        history_timestamps=np.split(log.timestamps[flat], cuts) if len(keys) else [],
    )
    # Side features are static: one lookup per user, as of that user's latest request.
    latest = keys.groupby("user_id", sort=False)["target_timestamp"].max()
    side = fetch_user_features(store, latest.index.to_numpy(), latest.to_numpy() - 1)
    out = out.merge(side, on="user_id", how="left", validate="many_to_one")
    if len(out) != len(keys):
        raise FeatureConsistencyError(f"expected {len(keys)} rows, assembled {len(out)}")
    return out


def iter_history_chunks(
    log: EventLog, requests: pd.DataFrame, max_history_length: int, rows_per_chunk: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(row slice, items [n, L], timestamps [n, L]) of consecutive request chunks: memory is bounded by
    rows_per_chunk x L, not by the number of requests."""
    users = requests["user_id"].to_numpy(np.int64)
    targets = requests["target_timestamp"].to_numpy(np.int64)
    for begin in range(0, len(requests), max(1, rows_per_chunk)):
        rows = slice(begin, min(begin + rows_per_chunk, len(requests)))
        items, stamps = log.histories(users[rows], targets[rows], max_history_length)
        yield rows, items, stamps


def online_history(store: FeatureStore, user_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each user's latest (items, timestamps) online, oldest first; unknown users get empty arrays."""
    user_ids = [int(user) for user in user_ids]
    if not user_ids:
        return {}
    response = store.get_online_features(
        features=[f"{SEQUENCE_VIEW}:{name}" for name in SEQUENCE_FEATURES],
        entity_rows={"user_id": user_ids},
    ).to_dict()
    return {
        user: (_as_int_array(items), _as_int_array(times))
        for user, items, times in zip(
            user_ids, response["sequence_items"], response["sequence_timestamps"], strict=True
        )
    }


def fetch_item_features(store: FeatureStore, item_ids: Iterable[int]) -> pd.DataFrame:
    """Online item side features (item_id, genre_id) in the given order; unknown items get 0."""
    item_ids = [int(item) for item in item_ids]
    if not item_ids:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "genre_id": pd.Series(dtype="int64")})
    response = store.get_online_features(
        features=[f"{ITEM_VIEW}:{name}" for name in ITEM_FEATURES], entity_rows={"item_id": item_ids}
    ).to_dict()
    frame = pd.DataFrame({"item_id": item_ids})
    for name in ITEM_FEATURES:
        frame[name] = pd.Series(response[name], dtype="float64").fillna(0).astype("int64")
    return frame


def measure_offline_storage(events: pd.DataFrame, max_history_length: int, workdir: Path | str) -> dict:
    """Bytes on disk of the sequence snapshots at this L, per event, next to a plain events parquet."""
    events = _int_frame(events, EVENT_COLUMNS, "events")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sequence_path = workdir / f"sequence_L{max_history_length}.parquet"
    rows = write_sequence_snapshots(events, sequence_path, max_history_length)
    _, _, _, starts, ends = _snapshot_plan(events, max_history_length)
    n_values = int((ends - starts + 1).sum())
    events_path = workdir / "events.parquet"
    pq.write_table(
        pa.Table.from_pandas(events, preserve_index=False), events_path, compression=_PARQUET_COMPRESSION
    )
    metadata = pq.read_metadata(sequence_path)
    sequence_bytes = _file_size(sequence_path)
    n_events = max(len(events), 1)
    return {
        "max_history_length": max_history_length,
        "n_events": len(events),
        "n_snapshot_rows": rows,
        "n_row_groups": metadata.num_row_groups,
        "n_sequence_values": n_values,
        # The same snapshots as plain int64 (two lists + user id + timestamp): what zstd is saving.
        "raw_int64_bytes": 16 * (n_values + rows),
        "sequence_bytes": sequence_bytes,
        "bytes_per_event": sequence_bytes / n_events,
        "events_bytes": _file_size(events_path),
        "events_bytes_per_event": _file_size(events_path) / n_events,
    }
