"""The memory shards' raw-bytes gather (``longrec.serving.shard_transport``): the route served by a real
uvicorn server on a unix socket and on TCP, called by ``RawShardClient`` over its keep-alive connection;
every error answers at once with a message (never a hang), a slow shard times out, a restarted server is
reached again, and a ``RemoteShardedMemory`` over two such shards degrades when one stops."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn

from longrec.serving.process import free_port
from longrec.serving.shard_transport import (
    RAW_GATHER_PATH,
    RawShardClient,
    ShardCallError,
    ShardUnavailable,
    dispatch_first,
    raw_gather_app,
)

TABLE = np.arange(64 * 4, dtype=np.float32).reshape(64, 4) / 7


class Served:
    """``raw_gather_app(lookup)`` served by uvicorn in a thread, on a unix socket or a TCP port."""

    def __init__(
        self, lookup, socket_path: Path | None = None, max_slots: int = 1 << 20, observe=None, app=None
    ) -> None:
        self.port = None if socket_path else free_port()
        where = {"uds": str(socket_path)} if socket_path else {"host": "127.0.0.1", "port": self.port}
        app = app or raw_gather_app(lookup, max_slots, observe=observe)
        config = uvicorn.Config(app, lifespan="off", log_level="warning", **where)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.url = f"file://{socket_path}" if socket_path else f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def call(url: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One request over a new connection to the server on unix socket ``url`` (file://...)."""
    connection = http.client.HTTPConnection("localhost", timeout=5)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.connect(url.removeprefix("file://"))
    connection.request(method, path, body=body)
    answer = connection.getresponse()
    return answer.status, answer.read()


def table_lookup(slots: np.ndarray) -> np.ndarray:
    if slots.size and (slots.min() < 0 or slots.max() >= len(TABLE)):
        raise ValueError(f"slots outside shard 0's range [0, {len(TABLE)})")
    return TABLE[slots]


@pytest.fixture
def unix_shard(tmp_path: Path):
    served = Served(table_lookup, tmp_path / "shard.sock")
    yield served
    served.stop()


def test_gathers_rows_over_a_unix_socket_and_tcp(unix_shard) -> None:
    tcp_shard = Served(table_lookup)
    try:
        for url in (unix_shard.url, tcp_shard.url, tcp_shard.url.replace("tcp://", "http://")):
            client = RawShardClient(url, timeout_s=2.0)
            for slots in (np.array([3, 0, 63, 3]), np.arange(64), np.array([], dtype=np.int64)):
                rows = client.gather(slots)
                assert rows.dtype == np.float32 and rows.shape == (len(slots), 4)
                np.testing.assert_array_equal(rows, TABLE[slots])
            client.close()
    finally:
        tcp_shard.stop()


def test_one_connection_per_thread_is_kept_alive(unix_shard) -> None:
    client = RawShardClient(unix_shard.url, timeout_s=2.0)
    client.gather(np.array([1]))
    connection = client._local.connection
    client.gather(np.array([2]))
    assert client._local.connection is connection  # reused, not reconnected
    seen = []
    worker = threading.Thread(target=lambda: seen.append(client._local.__dict__.get("connection")))
    worker.start()
    worker.join()
    assert seen == [None]  # another thread opens its own


def test_errors_answer_at_once_with_their_reason(tmp_path: Path, unix_shard) -> None:
    client = RawShardClient(unix_shard.url, timeout_s=2.0)
    with pytest.raises(ShardCallError, match=r"400: slots outside shard 0's range \[0, 64\)"):
        client.gather(np.array([5, 64]))
    client.gather(np.array([5]))  # the connection survives an error answer

    def unavailable(slots):
        raise ShardUnavailable("memory shard 1 (values-00001-of-00002) failed to load: checksum")

    def broken(slots):
        raise RuntimeError("disk on fire")

    for lookup, expected in (
        (unavailable, "503: memory shard 1 .* checksum"),
        (broken, "500: RuntimeError: disk on fire"),
    ):
        served = Served(lookup, tmp_path / f"{lookup.__name__}.sock")
        try:
            started = time.perf_counter()
            with pytest.raises(ShardCallError, match=expected):
                RawShardClient(served.url, timeout_s=5.0).gather(np.array([1]))
            assert time.perf_counter() - started < 2.0  # answered, not left to the timeout
        finally:
            served.stop()


def test_malformed_bodies_wrong_method_path_and_size_are_4xx(tmp_path: Path, unix_shard) -> None:
    small = Served(table_lookup, tmp_path / "small.sock", max_slots=4)
    try:
        status, body = call(unix_shard.url, "POST", RAW_GATHER_PATH, b"\x01" * 7)
        assert status == 400 and b"7 bytes is not little-endian int64 slot ids" in body
        assert call(unix_shard.url, "GET", RAW_GATHER_PATH, None)[0] == 405
        assert call(unix_shard.url, "POST", "/raw/scatter", b"")[0] == 404
        status, body = call(small.url, "POST", RAW_GATHER_PATH, np.arange(5, dtype="<i8").tobytes())
        assert status == 413 and b"larger than 4 slot ids" in body
    finally:
        small.stop()


def test_every_answer_is_observed_with_its_status(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []
    served = Served(table_lookup, tmp_path / "observed.sock", observe=lambda *each: seen.append(each))
    try:
        client = RawShardClient(served.url, timeout_s=2.0)
        client.gather(np.array([1, 2]))
        with pytest.raises(ShardCallError, match="400"):
            client.gather(np.array([64]))  # outside the shard
        assert [status for status, _ in seen] == [200, 400]
        assert all(0 < seconds < 1 for _, seconds in seen)
    finally:
        served.stop()


def test_dispatch_first_sends_the_raw_route_past_the_other_app(tmp_path: Path) -> None:
    """What a memory shard's server runs: the raw route's requests reach its app directly; other paths
    (and lifespan events) reach the app behind it, here one that answers 299 for anything."""
    reached: list[str] = []

    async def behind(scope, receive, send) -> None:
        reached.append(scope["path"] if scope["type"] == "http" else scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 299, "headers": []})
            await send({"type": "http.response.body", "body": b"behind"})

    app = dispatch_first("/raw", raw_gather_app(table_lookup), behind)
    served = Served(None, tmp_path / "dispatch.sock", app=app)
    try:
        np.testing.assert_array_equal(RawShardClient(served.url, 2.0).gather(np.array([5])), TABLE[[5]])

        def status_of(path: str) -> int:
            return call(served.url, "GET", path, None)[0]

        assert status_of("/raw/gather") == 405  # the raw app's own answer
        assert status_of("/raw/other") == 404
        assert status_of("/readyz") == 299 and status_of("/rawish") == 299 and status_of("/") == 299
        assert reached == ["/readyz", "/rawish", "/"]
    finally:
        served.stop()


def test_a_slow_shard_times_out_and_the_next_call_reconnects(tmp_path: Path) -> None:
    delay = {"s": 1.0}

    def slow(slots):
        time.sleep(delay["s"])
        return TABLE[slots]

    served = Served(slow, tmp_path / "slow.sock")
    try:
        client = RawShardClient(served.url, timeout_s=0.2)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            client.gather(np.array([1]))
        assert time.perf_counter() - started < 0.9
        assert client._local.connection is None  # the late answer must not be read as the next one's
        delay["s"] = 0.0
        time.sleep(1.0)  # the server finishes the late call
        np.testing.assert_array_equal(client.gather(np.array([9])), TABLE[[9]])
    finally:
        served.stop()


def test_a_restarted_server_is_reached_again(tmp_path: Path) -> None:
    path = tmp_path / "restart.sock"
    served = Served(table_lookup, path)
    client = RawShardClient(served.url, timeout_s=2.0)
    client.gather(np.array([1]))
    served.stop()
    with pytest.raises((ConnectionError, OSError, http.client.HTTPException)):
        client.gather(np.array([1]))  # the kept connection is gone, and so is the server
    served = Served(table_lookup, path)
    try:
        np.testing.assert_array_equal(client.gather(np.array([2])), TABLE[[2]])
    finally:
        served.stop()


def test_urls_name_the_route_with_any_path_prefix() -> None:
    assert RawShardClient("file:///tmp/x/1.sock", timeout_s=1.0).path == "/raw/gather"
    assert RawShardClient("tcp://127.0.0.1:3001", timeout_s=1.0).path == "/raw/gather"
    assert RawShardClient("http://longrec-memory-shard-0:3000", timeout_s=1.0).path == "/raw/gather"
    assert RawShardClient("https://gateway.example/shard-0/", timeout_s=1.0).path == "/shard-0/raw/gather"


def test_bad_urls_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="expected file://, tcp://, http:// or https://"):
        RawShardClient("grpc://shard:3000", timeout_s=1.0)
    with pytest.raises(ValueError, match="names no host"):
        RawShardClient("http://", timeout_s=1.0)


def test_remote_sharded_memory_over_two_raw_shards_degrades_when_one_stops(tmp_path: Path) -> None:
    """The ranker's memory with two raw-route shards: the same rows as a local ``ShardedMemory``; with one
    shard stopped, its slots read as zero, the read is flagged and it does not wait past the deadline."""
    from longrec.memory import MemoryConfig, ProductKeyMemory
    from longrec.memory.sharded import ShardedMemory
    from longrec.serving.memory import MemoryIndex, RemoteShardedMemory

    torch.manual_seed(0)
    config = MemoryConfig(slots=64, key_dim=8, value_dim=4, top_k=4)
    memory = ProductKeyMemory(config)
    local = ShardedMemory.from_memory(memory, 2)
    servers = [
        Served(
            lambda slots, table=table, start=start: table.numpy()[slots - start], tmp_path / f"shard{i}.sock"
        )
        for i, (table, (start, _)) in enumerate(zip(local.shards, local.ranges, strict=True))
    ]
    try:
        entries = [{"start": start, "stop": stop} for start, stop in local.ranges]
        index = MemoryIndex(config, local.row_keys, local.col_keys, entries)
        clients = [RawShardClient(s.url, timeout_s=0.5).gather for s in servers]
        remote = RemoteShardedMemory(index, clients, timeout_s=0.5, retry_after_s=60.0)
        distinct = torch.tensor([1, 7, 31, 32, 40, 63])
        torch.testing.assert_close(remote.fetch_distinct(distinct), local.fetch_distinct(distinct))
        assert not remote.degraded
        servers[1].stop()
        started = time.perf_counter()
        rows = remote.fetch_distinct(distinct)
        assert time.perf_counter() - started < 1.5
        assert remote.degraded
        torch.testing.assert_close(rows[:3], local.fetch_distinct(distinct)[:3])
        assert rows[3:].abs().sum() == 0
    finally:
        for served in servers:
            served.stop()
