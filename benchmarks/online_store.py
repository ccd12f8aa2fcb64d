"""Online feature reads, Redis vs SQLite: the ranker's read (one user's last L items and timestamps plus
user side features, one `get_online_features` call) for every one of 1,000 users at L=1000.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/online_store.py

Both stores are filled by the same `create_feature_repo` + `materialize` from the same synthetic events
(every user has more than L events, so each read returns L items). Redis is a real `redis-server` started
on loopback (no persistence); SQLite is Feast's file-backed default. Each user is read once in a shuffled
order after a warm-up, timed with perf_counter around the Feast call; every read is checked to return
the user's L items.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_frames(n_users: int, events_per_user: int, seed: int = 0):
    """Events (each user with `events_per_user` events), item genres and user attributes."""
    rng = np.random.default_rng(seed)
    n = n_users * events_per_user
    events = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, n_users + 1), events_per_user),
            "item_id": rng.integers(1, 20_000, size=n),
            "timestamp": 1_600_000_000 + rng.integers(0, 365 * 86_400, size=n),
        }
    )
    items = pd.DataFrame({"item_id": np.arange(1, 20_000), "genre_id": rng.integers(0, 18, 19_999)})
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age_id": rng.integers(1, 7, n_users),
            "gender_id": rng.integers(1, 3, n_users),
            "occupation_id": rng.integers(1, 21, n_users),
        }
    )
    return events, items, users


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make setup installs it with apt-get)")
    from longrec.serving.process import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.05)
    server.terminate()
    raise SystemExit("redis-server did not answer")


def measure(store, user_ids: list[int], length: int, warmup: int) -> dict:
    """Latency of one ranker-style read per user (ms), after `warmup` reads."""
    from longrec.features.definitions import SEQUENCE_FEATURES, SEQUENCE_VIEW, USER_FEATURES, USER_VIEW

    features = [f"{SEQUENCE_VIEW}:{name}" for name in SEQUENCE_FEATURES]
    features += [f"{USER_VIEW}:{name}" for name in USER_FEATURES]

    def read(user: int) -> dict:
        return store.get_online_features(features=features, entity_rows=[{"user_id": user}]).to_dict()

    for user in user_ids[:warmup]:
        read(user)
    latencies = []
    for user in user_ids:
        started = time.perf_counter()
        row = read(user)
        latencies.append((time.perf_counter() - started) * 1000)
        if len(row["sequence_items"][0]) != length or row["age_id"][0] is None:
            raise RuntimeError(f"user {user}: read {len(row['sequence_items'][0])} items, expected {length}")
    values = np.asarray(latencies)
    return {
        "reads": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "max_ms": round(float(values.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--length", type=int, default=1000, help="history length L of the online snapshot")
    parser.add_argument("--events-per-user", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", type=Path, default=RESULTS / "online_store.json")
    args = parser.parse_args()

    from longrec.features.store import create_feature_repo, materialize

    events, items, users = synthetic_frames(args.users, args.events_per_user)
    order = np.random.default_rng(1).permutation(np.arange(1, args.users + 1)).tolist()
    results = {
        "setup": {
            "users": args.users,
            "max_history_length": args.length,
            "events": len(events),
            "read": "get_online_features: sequence_items + sequence_timestamps (L each) + 3 user features, 1 user",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        },
        "stores": {},
    }
    with tempfile.TemporaryDirectory(prefix="online-store-") as tmp:
        tmp = Path(tmp)
        server, port = start_redis(tmp)
        try:
            configs = {"sqlite": "sqlite", "redis": {"connection_string": f"127.0.0.1:{port}"}}
            for name, online in configs.items():
                store = create_feature_repo(
                    tmp / name, events, items, users, args.length, online_store=online
                )
                started = time.perf_counter()
                materialize(store)
                materialize_seconds = time.perf_counter() - started
                stats = measure(store, order, args.length, args.warmup)
                stats["materialize_seconds"] = round(materialize_seconds, 1)
                results["stores"][name] = stats
                print(name, json.dumps(stats), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
