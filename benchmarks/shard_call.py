"""One memory-shard call as the ranker makes it, with the shard's API sync (``def gather``) and async
(``async def gather``): which one ``serving/service.py``'s ``MemoryShard`` should be.

A sync BentoML API runs each call in a worker thread; an async one runs on the server's event loop. The
lookup itself (numpy rows of a 524,288 × 32 float32 table, one shard of LMN's 1M slots) takes far less
than a millisecond, so the hand-off can be most of a call. This serves a front service that depends
(``bentoml.depends``) on two shard twins that differ only in that keyword, and times round trips from the
front through each dependency's async client (pickle over HTTP on loopback, as the ranker's calls go),
the twins alternating in rounds; each keeps the median of its round medians. Slot counts: about one
shard's share of a request at L=50 (1,200 slots) and at L=1000 (8,800 slots), 100 candidates, K=16.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shard_call.py --json benchmarks/results/shard_call.json
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

SERVICES = """
import statistics, time
import bentoml
import numpy as np

TABLE = np.random.default_rng(0).random((524_288, 32), dtype=np.float32)


@bentoml.service(workers=1)
class SyncShard:
    @bentoml.api
    def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]


@bentoml.service(workers=1)
class AsyncShard:
    @bentoml.api
    async def gather(self, slots: np.ndarray) -> np.ndarray:
        return TABLE[np.asarray(slots, dtype=np.int64)]


@bentoml.service(workers=1)
class Front:
    sync_shard = bentoml.depends(SyncShard)
    async_shard = bentoml.depends(AsyncShard)

    @bentoml.api
    async def bench(self, slots: int = 1200, calls: int = 100, rounds: int = 5) -> dict:
        ids = np.random.default_rng(slots).integers(0, len(TABLE), slots)
        medians = {"sync": [], "async": []}
        for _ in range(rounds):
            for name, shard in (("sync", self.sync_shard), ("async", self.async_shard)):
                for _ in range(5):  # warm the connection
                    await shard.to_async.gather(slots=ids)
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    rows = await shard.to_async.gather(slots=ids)
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
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "BENTOML_DO_NOT_TRACK": "True"}
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "shard_twins.py").write_text(SERVICES)
        bentoml = Path(sys.executable).with_name("bentoml")
        server = subprocess.Popen(
            [str(bentoml), "serve", "shard_twins:Front", "--port", str(port), "--host", "127.0.0.1"],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
                rows.append({"slots": slots, "sync_ms": round(answer["sync"], 3), "async_ms": round(answer["async"], 3),
                             "sync_over_async": round(answer["sync"] / answer["async"], 2)})  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)

    print("| slots per call | sync API round trip (median) | async API | sync / async |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['slots']:,} | {row['sync_ms']:.2f} ms | {row['async_ms']:.2f} ms | {row['sync_over_async']:.2f}x |"
        )
    if args.json:
        result = {
            "command": " ".join(["benchmarks/shard_call.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "calls": args.calls,
            "rounds": args.rounds,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
