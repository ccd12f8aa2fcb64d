"""Feast feature repo: event log, point-in-time histories (DuckDB offline store), materialization, SQLite
and Redis online reads."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from longrec.features.store import (
    EventLog,
    FeatureConsistencyError,
    create_feature_repo,
    fetch_histories,
    fetch_item_features,
    materialize,
    measure_offline_storage,
    online_history,
    write_feature_data,
    write_sequence_snapshots,
)

L = 4
T0 = 880_000_000  # 1997-11-20, inside the MovieLens era


def make_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tiny shuffled events with same-second ties, a one-event user and a user without attributes."""
    rows = []
    for user, count in ((1, 9), (2, 3), (3, 1), (4, 6)):
        for k in range(count):
            # Events with k % 3 == 2 share the previous event's second: ties a history must exclude.
            rows.append((user, 1 + (user * 7 + k) % 12, T0 + 100 * user + 10 * (k - (k % 3 == 2))))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events = events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    items = pd.DataFrame({"item_id": np.arange(1, 13), "genre_id": np.arange(1, 13) % 4})
    users = pd.DataFrame(
        {"user_id": [1, 2, 3], "age_id": [1, 2, 3], "gender_id": [1, 2, 1], "occupation_id": [5, 6, 7]}
    )
    return events, items, users


def brute_force(events: pd.DataFrame, user: int, before: int | None, length: int) -> tuple[list, list]:
    """The last `length` events of `user` strictly before `before` (None: all), stable time order."""
    mine = events[events["user_id"] == user].sort_values("timestamp", kind="stable")
    if before is not None:
        mine = mine[mine["timestamp"] < before]
    mine = mine.tail(length)
    return mine["item_id"].tolist(), mine["timestamp"].tolist()


def make_requests(events: pd.DataFrame) -> pd.DataFrame:
    """Every event as a target, plus duplicates, targets before a first event, ties and an unknown user."""
    extra = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 4, 99, 3, 1],
            "target_timestamp": [T0, T0 + 100, T0 + 200, T0 + 10_000, T0 + 500, T0 + 301, T0 + 100],
        }
    )
    targets = events[["user_id", "timestamp"]].rename(columns={"timestamp": "target_timestamp"})
    return pd.concat([targets, extra]).sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return make_frames()


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory, frames):
    events, items, users = frames
    return create_feature_repo(tmp_path_factory.mktemp("repo"), events, items, users, max_history_length=L)


def test_snapshots_hold_last_events_per_distinct_second(tmp_path: Path, frames) -> None:
    events = frames[0]
    rows = write_sequence_snapshots(events, tmp_path / "s.parquet", max_history_length=L)
    table = pq.read_table(tmp_path / "s.parquet").to_pandas()
    assert rows == len(table) == len(events.drop_duplicates(["user_id", "timestamp"]))
    for row in table.itertuples():
        second = int(row.event_timestamp.timestamp())
        items, times = brute_force(events, row.user_id, second + 1, L)
        assert list(row.sequence_items) == items and list(row.sequence_timestamps) == times


def test_historical_histories_are_point_in_time_correct(sqlite_store, frames) -> None:
    events, _, users = frames
    requests = make_requests(events)
    out = fetch_histories(sqlite_store, requests, max_history_length=L)

    # One row per request, in request order, none dropped.
    assert len(out) == len(requests)
    pd.testing.assert_frame_equal(out[["user_id", "target_timestamp"]], requests.astype("int64"))
    for row in out.itertuples():
        assert all(t < row.target_timestamp for t in row.history_timestamps)
        items, times = brute_force(events, row.user_id, row.target_timestamp, L)
        assert list(row.history_items) == items, row
        assert list(row.history_timestamps) == times, row
        assert row.history_items.dtype == np.int64

    # Ties: an event sharing the target's second is not history, and no event means an empty one.
    user1 = events[events["user_id"] == 1]
    tied = user1["timestamp"][user1["timestamp"].duplicated()].iloc[0]
    tie_row = out[(out["user_id"] == 1) & (out["target_timestamp"] == tied)].iloc[0]
    assert tied not in tie_row.history_timestamps
    first = out[(out["user_id"] == 1) & (out["target_timestamp"] == T0)].iloc[0]
    assert len(first.history_items) == 0 and first.age_id == 1  # side features survive an empty history
    unknown = out[out["user_id"] == 99].iloc[0]
    assert len(unknown.history_items) == 0 and unknown.age_id == 0

    # User side features are static and target-independent; user 4 has none, so 0 = unknown.
    expected = users.set_index("user_id").reindex(out["user_id"]).fillna(0).astype("int64")
    np.testing.assert_array_equal(
        out[["age_id", "gender_id", "occupation_id"]].to_numpy(), expected.to_numpy()
    )

    # A shorter L keeps the most recent events; the log holds every event, so a longer L than the
    # serving snapshots were built with reads back in full too.
    for length in (2, L + 3):
        other = fetch_histories(sqlite_store, requests, max_history_length=length)
        for row in other.itertuples():
            items, _ = brute_force(events, row.user_id, row.target_timestamp, length)
            assert list(row.history_items) == items, (length, row)


def test_event_log_sorts_rows_back_and_applies_ttl(frames) -> None:
    """Offline stores return rows in any order; a positive ttl drops events older than target - ttl."""
    events = frames[0].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    positions = events.groupby("user_id").cumcount().to_numpy()
    shuffled = np.random.default_rng(0).permutation(len(events))
    log = EventLog.from_arrays(
        events["user_id"].to_numpy()[shuffled],
        events["timestamp"].to_numpy()[shuffled],
        events["item_id"].to_numpy()[shuffled],
        positions[shuffled],
    )
    requests = make_requests(frames[0])
    items, stamps = log.histories(requests["user_id"], requests["target_timestamp"], L)
    for k, row in enumerate(requests.itertuples()):
        expected_items, expected_times = brute_force(events, row.user_id, row.target_timestamp, L)
        n = len(expected_items)
        assert items[k, :n].tolist() == expected_items and stamps[k, :n].tolist() == expected_times
        assert not items[k, n:].any() and not stamps[k, n:].any()  # right padding

    ttl = 25
    expiring = EventLog(log.user_ids, log.user_start, log.timestamps, log.item_ids, ttl_seconds=ttl)
    _, stamps = expiring.histories(requests["user_id"], requests["target_timestamp"], L)
    for k, row in enumerate(requests.itertuples()):
        kept = [
            t
            for t in brute_force(events, row.user_id, row.target_timestamp, L)[1]
            if t >= row.target_timestamp - ttl
        ]
        assert stamps[k, : len(kept)].tolist() == kept and not stamps[k, len(kept) :].any()

    scrambled = positions.copy()
    scrambled[[0, 1]] = scrambled[[1, 0]]
    with pytest.raises(FeatureConsistencyError, match="disagree"):
        EventLog.from_arrays(events["user_id"], events["timestamp"], events["item_id"], scrambled)


def test_materialized_online_store_holds_latest_sequence(sqlite_store, frames, tmp_path: Path) -> None:
    events, items, _ = frames
    materialize(sqlite_store)
    user_ids = [*sorted(events["user_id"].unique().tolist()), 99]
    online = online_history(sqlite_store, user_ids)
    assert list(online) == user_ids
    for user in user_ids:
        expected_items, expected_times = brute_force(events, user, None, L)
        assert online[user][0].tolist() == expected_items
        assert online[user][1].tolist() == expected_times
    genres = fetch_item_features(sqlite_store, [3, 1, 500])
    assert genres["genre_id"].tolist() == [3 % 4, 1 % 4, 0]

    # The repo is self-contained: a copy elsewhere opens and serves the same values.
    from feast import FeatureStore

    copy = shutil.copytree(sqlite_store.repo_path, tmp_path / "moved")
    moved = online_history(FeatureStore(repo_path=str(copy)), user_ids)
    assert all(np.array_equal(moved[u][0], online[u][0]) for u in user_ids)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.redis
def test_redis_online_store_matches_sqlite(sqlite_store, frames, tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed (the Makefile installs it with apt-get)")
    import redis

    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        events, items, users = frames
        store = create_feature_repo(
            tmp_path / "repo",
            events,
            items,
            users,
            max_history_length=L,
            online_store={"type": "redis", "connection_string": f"localhost:{port}"},
        )
        materialize(store)
        materialize(sqlite_store)
        user_ids = [*sorted(events["user_id"].unique().tolist()), 99]
        from_redis, from_sqlite = online_history(store, user_ids), online_history(sqlite_store, user_ids)
        for user in user_ids:
            assert from_redis[user][0].tolist() == from_sqlite[user][0].tolist()
            assert from_redis[user][1].tolist() == from_sqlite[user][1].tolist()
        assert client.dbsize() > 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_missing_event_column_names_it(tmp_path: Path, frames) -> None:
    events, items, users = frames
    with pytest.raises(ValueError, match="timestamp"):
        write_feature_data(events.drop(columns="timestamp"), items, users, tmp_path, L)
    with pytest.raises(ValueError, match="genre_id"):
        write_feature_data(events, items.drop(columns="genre_id"), users, tmp_path, L)
    with pytest.raises(ValueError, match="target_timestamp"):
        fetch_histories(None, pd.DataFrame({"user_id": [1]}), L)  # validated before Feast is touched


def test_measure_offline_storage(tmp_path: Path, frames) -> None:
    result = measure_offline_storage(frames[0], L, tmp_path)
    assert result["sequence_bytes"] == (tmp_path / f"sequence_L{L}.parquet").stat().st_size > 0
    assert result["bytes_per_event"] == pytest.approx(result["sequence_bytes"] / len(frames[0]))


def test_declarative_repo_defines_each_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`feast apply` in feature_repo/ would collect exactly one copy of each object."""
    from feast.repo_operations import parse_repo

    repo = Path(__file__).resolve().parents[1] / "feature_repo"
    modules = ("data_sources", "entities", "features", "feature_services")
    monkeypatch.chdir(repo)  # Feast names repo modules relative to the working directory
    monkeypatch.syspath_prepend(str(repo))
    try:
        contents = parse_repo(repo)
    finally:
        for name in modules:
            sys.modules.pop(name, None)
    # parse_repo always adds Feast's own "__dummy" entity (for entity-less views).
    assert sorted(e.name for e in contents.entities if e.name != "__dummy") == ["item", "user"]
    assert len(contents.data_sources) == 4
    assert sorted(v.name for v in contents.feature_views) == [
        "item_side_features",
        "user_behavior_events",
        "user_behavior_sequence",
        "user_side_features",
    ]
    assert sorted(s.name for s in contents.feature_services) == ["longrec_serving", "longrec_training"]
    assert all(v.owner and v.tags for v in contents.feature_views)
