"""Server CPU per memory-shard gather: the raw route (``longrec.serving.shard_transport.raw_gather_app``)
served by `bentoml serve` as a mounted app (by default, and with BentoML's access log, metrics or tracing
turned off through ``BENTOML_CONFIG_OPTIONS``), by `bentoml serve` with the service class the MemoryShard
services use since `5d87d3d` (``RawRouteFirst``: the route answered ahead of BentoML's
middleware), and the same ASGI app served alone by uvicorn. One client sends ``--calls`` gathers of
``--slots`` slot ids over one kept-alive ``http.client`` connection; the server process's CPU (user +
system, /proc) and the wall time per call are reported. Every variant runs once per round, in order, for
``--rounds`` rounds; each keeps its median over rounds.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shard_server_cpu.py --json benchmarks/results/shard_server_cpu.json
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from din_attention_cpu import write_results

from longrec.serving.process import free_port, process_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
TABLE_ROWS = 524_288  # one shard of LMN's 1,048,576 slots, d_v = 32

APP = f"""
import numpy as np
from longrec.serving.shard_transport import raw_gather_app

TABLE = np.random.default_rng(0).random(({TABLE_ROWS}, 32), dtype=np.float32)
app = raw_gather_app(lambda ids: TABLE[ids])
"""
SERVICE = """
import bentoml
from raw_app import app
from longrec.serving.raw_route_service import RawRouteFirst


@bentoml.service(workers=1)
@bentoml.asgi_app(app, path="/raw")
class Shard:
    pass


@bentoml.service(workers=1, service_class=RawRouteFirst)
@bentoml.asgi_app(app, path="/raw")
class ShardRawFirst:
    pass
"""
# variant: (service, BENTOML_CONFIG_OPTIONS)
BENTOML_VARIANTS = {
    "bentoml serve": ("Shard", ""),
    "bentoml serve, no access log": ("Shard", "api_server.logging.access.enabled=false"),
    "bentoml serve, no metrics": ("Shard", "api_server.metrics.enabled=false"),
    "bentoml serve, route not traced": ("Shard", "tracing.excluded_urls=raw/gather"),
    "bentoml serve, RawRouteFirst (the shards' service class)": ("ShardRawFirst", ""),
}


def serve(variant: str, folder: Path, port: int) -> tuple[subprocess.Popen, int]:
    """Start the variant; return the process and the PID of the process that serves requests."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(ROOT),
    }
    if variant == "uvicorn alone":
        command = [sys.executable, "-m", "uvicorn", "raw_app:app", "--port", str(port), "--lifespan", "off"]
        command += ["--log-level", "warning"]
    else:
        service, options = BENTOML_VARIANTS[variant]
        command = [
            str(Path(sys.executable).with_name("bentoml")),
            "serve",
            f"shard:{service}",
            "--port",
            str(port),
        ]
        if options:
            env["BENTOML_CONFIG_OPTIONS"] = options
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    probe = np.zeros(1, dtype="<i8").tobytes()
    while True:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/raw/gather", content=probe, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"{variant} did not answer within 120 s")
        time.sleep(0.3)
    if variant == "uvicorn alone":
        return process, process.pid
    listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    workers = [
        int(line.split()[0]) for line in listing if line.strip() and int(line.split()[1]) == process.pid
    ]
    return process, workers[0]


def measure(variant: str, folder: Path, slots: int, calls: int) -> dict:
    port = free_port()
    process, pid = serve(variant, folder, port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = np.random.default_rng(1).integers(0, TABLE_ROWS, slots).astype("<i8").tobytes()
        for _ in range(200):  # warm
            connection.request("POST", "/raw/gather", body=body)
            connection.getresponse().read()
        cpu, started = process_cpu_seconds(pid), time.perf_counter()
        for _ in range(calls):
            connection.request("POST", "/raw/gather", body=body)
            answer = connection.getresponse()
            assert answer.status == 200 and len(answer.read()) == slots * 32 * 4
        wall = time.perf_counter() - started
        return {
            "server_cpu_ms": 1000 * (process_cpu_seconds(pid) - cpu) / calls,
            "wall_ms": 1000 * wall / calls,
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--slots", type=int, default=2000, help="slot ids per gather (~one shard's share at L=1000)"
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = ["uvicorn alone", *BENTOML_VARIANTS]
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "raw_app.py").write_text(APP)
        Path(folder, "shard.py").write_text(SERVICE)
        for _ in range(args.rounds):
            for variant in variants:
                results[variant].append(measure(variant, Path(folder), args.slots, args.calls))
    rows = [
        {
            "server": variant,
            "server_cpu_ms_per_call": round(statistics.median(r["server_cpu_ms"] for r in runs), 3),
            "wall_ms_per_call": round(statistics.median(r["wall_ms"] for r in runs), 3),
            "server_cpu_ms_each_round": [round(r["server_cpu_ms"], 3) for r in runs],
        }
        for variant, runs in results.items()
    ]
    print(
        f"| server ({args.slots:,} slots per gather) | server CPU per call | wall per call | CPU each round |"
    )
    print("|---|---|---|---|")
    for row in rows:
        rounds = " / ".join(f"{value:.2f}" for value in row["server_cpu_ms_each_round"])
        print(
            f"| {row['server']} | {row['server_cpu_ms_per_call']:.2f} ms | {row['wall_ms_per_call']:.2f} ms | {rounds} |"
        )
    if args.json:
        write_results(args.json, "shard_server_cpu.py", None, rows, slots=args.slots, calls=args.calls,
                      rounds=args.rounds)  # fmt: skip


if __name__ == "__main__":
    main()
