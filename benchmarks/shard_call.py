"""One memory-shard call as the ranker makes it, with the shard's API sync (``def gather``) and async
(``async def gather``): which one ``serving/service.py``'s ``MemoryShard`` should be.

A sync BentoML API runs each call in a worker thread; an async one runs on the server's event loop. The
lookup itself (numpy rows of a 524,288 × 32 float32 table, one shard of LMN's 1M slots) takes far less
than a millisecond, so the hand-off can be most of a call. This serves a front service that depends
(``bentoml.depends``) on two shard twins that differ only in that keyword, and times round trips from the
front through each dependency's async client (pickle over HTTP on loopback, as the ranker's calls go),
the twins alternating in rounds; each keeps the median of its round medians. Slot counts: about one
shard's share of a request at L=50 (1,200 slots) and at L=1000 (8,800 slots), 100 candidates, K=16.

`--twins` picks other comparisons, both async: `access-log` (BentoML's access log off on one twin) and
`raw-route` (a raw-bytes Starlette route mounted on one twin, called through the dependency's aiohttp
session, against the API). Neither was kept for the shards; the figures say why (README, Serving latency).
`raw-thread` times both twins from a worker thread, as the ranker's memory reads call: the raw route the
shards now serve (`longrec.serving.shard_transport`), over `RawShardClient`'s blocking keep-alive
connection, against the API through the dependency's async client handed to the server's loop (what the
ranker did before 2026-12-03 17:00 UTC).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shard_call.py --json benchmarks/results/shard_call.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shard_call.py --twins raw-route --slots 1200 2000 4000 8800 \\
        --json benchmarks/results/shard_call_raw_route.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shard_call.py --twins raw-thread --slots 1200 2000 4000 8800 \\
        --json benchmarks/results/shard_call_raw_thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HEADER = """
import asyncio, statistics, time
import bentoml
import numpy as np

TABLE = np.random.default_rng(0).random((524_288, 32), dtype=np.float32)
"""

# Every comparison's Second twin is the async API, called through the dependency's client.
SECOND = """

@bentoml.service(workers=1)
class Second:
    @bentoml.api
    async def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]


async def call_second(front, ids):
    return await front.second.to_async.gather(slots=ids)
"""
CALL_FIRST_API = """

async def call_first(front, ids):
    return await front.first.to_async.gather(slots=ids)
"""

# Each comparison: its First twin and how the front calls it (an awaitable of the ids); Second is SECOND.
TWINS = {
    # The API's kind: a sync API hands each call to a worker thread, an async one runs on the loop.
    "sync-async": ("sync", "async", """
@bentoml.service(workers=1)
class First:
    @bentoml.api
    def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]
""" + CALL_FIRST_API),
    # BentoML's access log off on one twin (both async).
    "access-log": ("no_access_log", "access_log", """
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class First:
    @bentoml.api
    async def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]
""" + CALL_FIRST_API),
    # A raw-bytes route (a Starlette app mounted on the shard: int64 slots in, float32 rows out), called
    # through the dependency's own aiohttp session, against the async API.
    "raw-route": ("raw_route", "async_api", """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def raw_gather(request: Request) -> Response:
    ids = np.frombuffer(await request.body(), dtype=np.int64)
    return Response(TABLE[ids].tobytes(), media_type="application/octet-stream")


@bentoml.service(workers=1)
@bentoml.asgi_app(Starlette(routes=[Route("/gather", raw_gather, methods=["POST"])]), path="/raw")
class First:
    @bentoml.api
    async def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]


async def call_first(front, ids):
    session = await front.first.to_async._session_manager.get_session()  # BentoML 1.4's aiohttp session
    async with session.post("/raw/gather", data=ids.astype(np.int64).tobytes()) as answer:
        body = await answer.read()
    return np.frombuffer(body, dtype=np.float32).reshape(-1, 32)
"""),
}

# From a worker thread, as the ranker's memory reads call: a minimal raw-bytes ASGI route mounted on the
# shard, called with a blocking keep-alive http.client connection over the dependency's own address (a
# unix socket under `bentoml serve`), against the async API called through the dependency's async client
# on the server's loop (asyncio.run_coroutine_threadsafe, what serving/service.py did before).
TWINS["raw-thread"] = ("raw_thread", "api_via_loop", """
import asyncio
from longrec.serving.shard_transport import raw_gather_app, RawShardClient


@bentoml.service(workers=1)
@bentoml.asgi_app(raw_gather_app(lambda ids: TABLE[ids]), path="/raw")
class First:
    @bentoml.api
    async def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]


CLIENTS = {}


def call_first(front, ids):
    client = CLIENTS.get("first")
    if client is None:
        client = CLIENTS["first"] = RawShardClient(front.first.to_async.url, timeout_s=5.0)
    return client.gather(ids)
""")
THREAD_SECOND = """

def call_second(front, ids):
    future = asyncio.run_coroutine_threadsafe(front.second.to_async.gather(slots=ids), front.loop)
    return future.result(timeout=5.0)
"""

FRONT = """

@bentoml.service(workers=1)
class Front:
    first = bentoml.depends(First)
    second = bentoml.depends(Second)

    @bentoml.api
    async def bench(self, slots: int = 1200, calls: int = 100, rounds: int = 5) -> dict:
        import inspect

        import anyio.to_thread

        ids = np.random.default_rng(slots).integers(0, len(TABLE), slots)
        medians = {"first": [], "second": []}
        self.loop = asyncio.get_running_loop()

        def timed_in_thread(call):  # a sync call: the loop stays free, as the ranker's reads leave it
            for _ in range(5):  # warm the connection
                call(self, ids)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                rows = call(self, ids)
                times.append(time.perf_counter() - started)
            return times, rows

        for _ in range(rounds):
            for name, call in (("first", call_first), ("second", call_second)):
                if not inspect.iscoroutinefunction(call):
                    times, rows = await anyio.to_thread.run_sync(timed_in_thread, call)
                else:
                    for _ in range(5):  # warm the connection
                        await call(self, ids)
                    times = []
                    for _ in range(calls):
                        started = time.perf_counter()
                        rows = await call(self, ids)
                        times.append(time.perf_counter() - started)
                assert rows.shape == (slots, 32)
                medians[name].append(statistics.median(times) * 1e3)
        return {name: statistics.median(values) for name, values in medians.items()}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, nargs="+", default=[1200, 8800])
    parser.add_argument("--calls", type=int, default=100, help="calls per round and twin")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--twins", choices=tuple(TWINS), default="sync-async",
        help="what the two shard twins differ in: the API's kind (the default), BentoML's access log, "
        "or a raw-bytes route against the API",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--server-log", action="store_true", help="show the services' log")
    args = parser.parse_args()

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "BENTOML_DO_NOT_TRACK": "True"}
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        first, second, twins = TWINS[args.twins]
        second_twin = SECOND + THREAD_SECOND if args.twins == "raw-thread" else SECOND
        Path(folder, "shard_twins.py").write_text(HEADER + twins + second_twin + FRONT)
        bentoml = Path(sys.executable).with_name("bentoml")
        server_log = None if args.server_log else subprocess.DEVNULL  # --server-log: see its traceback
        server = subprocess.Popen(
            [str(bentoml), "serve", "shard_twins:Front", "--port", str(port), "--host", "127.0.0.1"],
            cwd=folder, env=env, stdout=server_log, stderr=server_log,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the shard twins did not become ready within 120 s")
                time.sleep(0.5)
            rows = []
            for slots in args.slots:
                answer = httpx.post(
                    f"{url}/bench",
                    json={"slots": slots, "calls": args.calls, "rounds": args.rounds},
                    timeout=600,
                ).json()
                if "first" not in answer:
                    raise SystemExit(f"the bench call failed: {answer}")
                rows.append({"slots": slots, f"{first}_ms": round(answer["first"], 3),
                             f"{second}_ms": round(answer["second"], 3),
                             f"{first}_over_{second}": round(answer["first"] / answer["second"], 2)})  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"| slots per call | {first} round trip (median) | {second} | {first} / {second} |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['slots']:,} | {row[f'{first}_ms']:.2f} ms | {row[f'{second}_ms']:.2f} ms | "
            f"{row[f'{first}_over_{second}']:.2f}x |"
        )
    if args.json:
        result = {
            "command": " ".join(["benchmarks/shard_call.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "twins": args.twins,
            "calls": args.calls,
            "rounds": args.rounds,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
