"""Served ranking latency with the online store on SQLite vs Redis: the same DIN ranker (random weights;
latency does not depend on them), the same synthetic users with L=1000 histories, the same requests
(100 candidates), once per store, over HTTP on loopback with `bentoml serve` (one worker).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serving_online_store.py

Prints p50/p99 per store and writes benchmarks/results/serving_online_store.json. Redis is a real
`redis-server` on loopback (see benchmarks/online_store.py for the bare read figures of both stores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--json", type=Path, default=RESULTS / "serving_online_store.json")
    args = parser.parse_args()

    import httpx
    from online_store import start_redis, synthetic_frames  # this folder is on sys.path

    from longrec.data.schema import FeatureSpec
    from longrec.features.store import create_feature_repo, materialize
    from longrec.models.registry import build_model
    from longrec.serving.demo import store_model_dir, write_model_dir
    from longrec.serving.package import prepare_serving
    from longrec.serving.process import ServeProcess, free_port

    events, items, users = synthetic_frames(args.users, args.length + 200)
    spec = FeatureSpec(
        n_users=args.users + 1, n_items=20_000, n_genres=18, n_ages=7, n_genders=3, n_occupations=21,
        max_history_length=args.length,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    bodies = [
        {
            "user_id": int(rng.integers(1, args.users + 1)),
            "candidate_items": rng.choice(np.arange(1, 20_000), args.candidates, replace=False).tolist(),
            "timestamp": 1_700_000_000,
        }
        for _ in range(args.requests)
    ]
    results = {
        "setup": {
            "model": "din (random weights)", "max_history_length": args.length, "users": args.users,
            "requests": args.requests, "candidates": args.candidates, "workers": 1,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
            "load_average_before": os.getloadavg()[0],
        },
        "stores": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serving-store-") as tmp:
        tmp = Path(tmp)
        registry = tmp / "registry"
        import torch

        torch.manual_seed(0)
        model_dir = write_model_dir(build_model("din", spec), tmp / "din")
        tag = store_model_dir(registry, model_dir, "longrec-bench-din")
        server, port = start_redis(tmp)
        try:
            stores = {
                "sqlite": "sqlite",
                "redis": {"type": "redis", "connection_string": f"127.0.0.1:{port}"},
            }
            for name, online in stores.items():
                store = create_feature_repo(
                    tmp / name, events, items, users, args.length, online_store=online
                )
                materialize(store)
                config = prepare_serving(registry, tag, 2, tmp / name)
                with ServeProcess(registry, free_port(), config=config) as service:
                    latencies = []
                    with httpx.Client(base_url=service.url, timeout=60) as client:
                        for body in bodies[:20]:  # warm-up
                            client.post("/rank", json=body).raise_for_status()
                        for body in bodies:
                            started = time.perf_counter()
                            response = client.post("/rank", json=body)
                            latencies.append((time.perf_counter() - started) * 1000)
                            response.raise_for_status()
                            assert response.json()["history_length"] == args.length, response.json()
                stats = {
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                    "mean_ms": round(float(np.mean(latencies)), 2),
                }
                results["stores"][name] = stats
                print(name, json.dumps(stats), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    results["setup"]["load_average_after"] = os.getloadavg()[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
