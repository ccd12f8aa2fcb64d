"""Build, apply and query the longrec Feast repo: parquet snapshots, point-in-time histories, online reads.

See `longrec.features.definitions` for the representation: one row per (user, distinct event timestamp)
holding the last L events up to and including that second. A history for a target at `t` is read at
`t - 1s`, so it holds exactly the events strictly before `t`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, FileSource

from longrec.data.schema import EVENT_COLUMNS, ITEM_FEATURE_COLUMNS, USER_FEATURE_COLUMNS
from longrec.features.definitions import (
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

_SEQUENCE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        (TIMESTAMP_FIELD, pa.timestamp("ns", tz="UTC")),
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
    return pa.array(unix_seconds.astype("int64") * 1_000_000_000, type=pa.timestamp("ns", tz="UTC"))


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
    """Write one snapshot row per (user, distinct timestamp) to a parquet file and return the row count."""
    users, items, times, starts, ends = _snapshot_plan(events, max_history_length)
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
    return int(len(ends))


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
    """Write the sequence and side-feature parquet files into `data_dir`; return bytes per file name."""
    events = _int_frame(events, EVENT_COLUMNS, "events")
    item_features = _int_frame(item_features, ITEM_FEATURE_COLUMNS, "item_features")
    user_features = _int_frame(user_features, USER_FEATURE_COLUMNS, "user_features")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_sequence_snapshots(events, data_dir / SEQUENCE_FILE, max_history_length)
    # Static rows sit before every event so any point-in-time lookup finds them.
    stamp = _static_timestamp(events)
    _write_static(item_features, "item_id", stamp, data_dir / ITEM_FILE)
    _write_static(user_features, "user_id", stamp, data_dir / USER_FILE)
    return {name: _file_size(data_dir / name) for name in (SEQUENCE_FILE, ITEM_FILE, USER_FILE)}


def _online_store_config(online_store: str | dict[str, Any]) -> dict[str, Any]:
    if online_store == "sqlite":
        return {"type": "sqlite", "path": "online_store.db"}
    if isinstance(online_store, dict):
        return {"type": "redis", **online_store}
    raise ValueError(f"online_store must be 'sqlite' or a dict of redis settings, got {online_store!r}")


def write_store_config(repo_dir: Path | str, online_store: str | dict[str, Any] = "sqlite") -> Path:
    """Write feature_store.yaml with paths relative to `repo_dir`, so the repo can be moved as a whole."""
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": "registry.db", "cache_ttl_seconds": 60},
        "offline_store": {"type": "file"},
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
    # A relative data dir resolves against repo_path, keeping the repo self-contained.
    store.apply(feature_definitions(DATA_SUBDIR))
    return store


def materialize(store: FeatureStore, end_date: datetime | None = None) -> None:
    """Materialize all views up to `end_date` (default now; naive means UTC) into the online store."""
    if end_date is None:
        end_date = datetime.now(UTC)
    elif end_date.tzinfo is None:
        end_date = end_date.replace(tzinfo=UTC)
    store.materialize(start_date=MATERIALIZE_START, end_date=end_date)


def _snapshot_length(store: FeatureStore) -> int | None:
    """The L the sequence parquet was built with, or None when the source is not a local longrec file."""
    source = store.get_feature_view(SEQUENCE_VIEW).batch_source
    if not isinstance(source, FileSource):
        return None
    path = Path(FileSource.get_uri_for_file_path(store.repo_path, source.path))
    if not path.is_file():
        return None
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(HISTORY_LENGTH_KEY)
    return int(value) if value is not None else None


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
    result = result[[*key_columns, *names]].astype({column: "int64" for column in key_columns})
    if result.duplicated(key_columns).any():
        raise FeatureConsistencyError(
            f"{view}: get_historical_features returned duplicate {key_columns} rows"
        )
    merged = keys.merge(result, on=key_columns, how="left", validate="one_to_one", indicator=True)
    if (merged["_merge"] == "both").sum() != len(result):
        raise FeatureConsistencyError(f"{view}: get_historical_features returned rows matching no request")
    return merged.drop(columns="_merge")


def fetch_histories(store: FeatureStore, requests: pd.DataFrame, max_history_length: int) -> pd.DataFrame:
    """Histories of events strictly before each target, plus user side features; one row per request."""
    keys = _int_frame(requests, REQUEST_COLUMNS, "requests")
    built_with = _snapshot_length(store)
    if built_with is not None and max_history_length > built_with:
        raise ValueError(
            f"max_history_length={max_history_length} exceeds L={built_with}, the length the snapshots "
            "were built with; rebuild the feature data with a larger L"
        )
    # Feast does not keep row order, and drops an entity row whose user has feature rows but none early
    # enough (in a multi-view call, for every view): query each view alone, once per key, and join back.
    unique = keys.drop_duplicates().reset_index(drop=True)
    # Whole seconds: the snapshot as of t - 1s holds exactly the events strictly before t.
    sequences = _historical(store, unique, unique["target_timestamp"] - 1, SEQUENCE_VIEW, SEQUENCE_FEATURES)

    history_items, history_timestamps = [], []
    for items, times, target in zip(
        sequences["sequence_items"],
        sequences["sequence_timestamps"],
        sequences["target_timestamp"],
        strict=True,
    ):
        items, times = _as_int_array(items)[-max_history_length:], _as_int_array(times)[-max_history_length:]
        if len(items) != len(times):
            raise FeatureConsistencyError(
                f"sequence_items and sequence_timestamps differ in length at {target}"
            )
        if len(times) and times[-1] >= target:
            raise FeatureConsistencyError(
                f"history at target_timestamp={target} holds an event at {times[-1]}"
            )
        history_items.append(items)
        history_timestamps.append(times)
    per_key = unique.assign(history_items=history_items, history_timestamps=history_timestamps)

    # Side features are static: one lookup per user, as of that user's latest request.
    latest = unique.groupby("user_id", sort=False)["target_timestamp"].max().reset_index()
    side = _historical(store, latest[["user_id"]], latest["target_timestamp"] - 1, USER_VIEW, USER_FEATURES)
    # A user without attributes gets 0, the contract's "unknown".
    side[list(USER_FEATURES)] = side[list(USER_FEATURES)].fillna(0).astype("int64")
    per_key = per_key.merge(side, on="user_id", how="left", validate="many_to_one")

    # A left merge keeps the left frame's order, so rows come back in request order.
    out = keys.merge(per_key, on=list(REQUEST_COLUMNS), how="left", validate="many_to_one")
    if len(out) != len(keys):
        raise FeatureConsistencyError(f"expected {len(keys)} rows, assembled {len(out)}")
    return out


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
