"""Training-set build from Feast: old store (file offline store, per-second snapshots) vs new (DuckDB
offline store, event log, chunked build), time and peak memory, one run each.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/feature_retrieval.py \
        --datasets ml-100k:50 dslabs-movielens:1000 synthetic-10m:1000

Every (dataset, store) runs in a child process, so its peak RSS (ru_maxrss) is its own: the
pipeline's `materialize_dataset` then `build_training_set_from_features`, exactly as the KFP steps call
them. "old" runs the library as it was at `--old-commit` (extracted with `git archive`, put first on
PYTHONPATH); "new" runs this checkout. A child that passes `--timeout` is stopped and its last finished
stage is reported, so a time-boxed run still says how far it got.

`--pit-probe 1000x100 1000x1000` times Feast's own point-in-time join (`get_historical_features` on
the DuckDB store) for USERS x EVENTS-per-user requests against a scalar per-(user, second) view: the
join the event log replaces, because its cost grows with requests x rows per user.

For synthetic-10m the training set is not written: at L=1000 it would hold ~26M samples x 1,000
positions x 3 sequence columns. There the child reads the history of every distinct (user, target
second) request in chunks (new) or with the old `fetch_histories` (old) and reduces it to a checksum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OLD_COMMIT = "f2b149d"  # last commit with the file offline store and per-second snapshots


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_events(path: Path, n_events: int, seed: int = 0) -> None:
    """Heavy-tailed user activity (mean 500 events, many above 1,000), Zipf items, two years of seconds."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_users = n_events // 500
    weights = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    counts = np.maximum(1, np.round(weights / weights.sum() * n_events)).astype(np.int64)
    counts[np.argmax(counts)] += n_events - counts.sum()
    users = np.repeat(np.arange(1, n_users + 1), counts)
    items = np.minimum(rng.zipf(1.2, size=n_events), 100_000)
    stamps = 1_500_000_000 + rng.integers(0, 2 * 365 * 86_400, size=n_events)
    pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps}).to_parquet(path, index=False)


def prepare(dataset: str, workdir: Path) -> Path:
    """The ingested dataset folder the pipeline's feature steps read."""
    from longrec.data.datasets import load_dataset

    folder = workdir / "events"
    if dataset.startswith("synthetic-"):
        n_events = int(float(dataset.split("-", 1)[1].rstrip("m")) * 1_000_000)
        raw = workdir / "synthetic.parquet"
        synthetic_events(raw, n_events)
        loaded = load_dataset(str(raw))
    else:
        loaded = load_dataset(dataset)
    loaded.save(folder)
    return folder


def child(args: argparse.Namespace) -> None:
    """One (dataset, store) measurement; appends a stage record to args.record after every stage."""
    import pandas as pd

    from longrec.data.datasets import RecDataset
    from longrec.data.samples import SampleConfig, build_targets
    from longrec.features.materialize import materialize_dataset

    record = Path(args.record)
    stages: list[dict] = []

    def stage(name: str, started: float, **extra) -> None:
        stages.append(
            {
                "stage": name,
                "seconds": round(time.time() - started, 2),
                "peak_rss_gib": round(peak_rss_gib(), 3),
            }
            | extra
        )
        record.write_text(json.dumps(stages, indent=2))

    work = Path(args.workdir)
    started = time.time()
    info = materialize_dataset(args.dataset_dir, work / "repo", max_history_length=args.length)
    stage("materialize", started, offline_bytes=info["offline_bytes"])

    config = SampleConfig(max_history_length=args.length, seed=0)
    started = time.time()
    if args.mode == "build":
        from longrec.features.training_set import build_training_set_from_features

        out = build_training_set_from_features(args.dataset_dir, work / "repo", config, work / "ts")
        size = sum(p.stat().st_size for p in (work / "ts").iterdir())
        stage(
            "training_set",
            started,
            n_samples=out["n_samples"],
            fetch_seconds=out["fetch_seconds"],
            training_set_bytes=size,
        )
        return

    # histories: every distinct request's history, read and reduced to a checksum (nothing written).
    dataset = RecDataset.load(args.dataset_dir)
    targets, _ = build_targets(dataset, config)
    requests = targets[["user_id", "target_timestamp"]].drop_duplicates().reset_index(drop=True)
    del targets, dataset
    stage("targets", started, n_requests=len(requests))
    started = time.time()
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(work / "repo"))
    checksum, values = 0, 0
    if args.store == "new":
        from longrec.features.store import EventLog, iter_history_chunks

        log = EventLog.from_store(store)
        stage("pull_event_log", started, n_events=len(log))
        for _, items, _ in iter_history_chunks(log, requests, args.length, 16_000_000 // args.length):
            checksum = (checksum + int(items.sum())) % 2**61
            values += int((items != 0).sum())
    else:
        from longrec.features.store import fetch_histories

        frame = fetch_histories(store, pd.DataFrame(requests), args.length)
        for items in frame["history_items"]:
            checksum = (checksum + int(np.asarray(items).sum())) % 2**61
            values += len(items)
    stage("histories", started, history_values=values, checksum=checksum)


def pit_probe(n_users: int, per_user: int, workdir: Path) -> dict:
    """get_historical_features (DuckDB) for every event of n_users x per_user against a count view."""
    from datetime import timedelta

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Int64
    from feast.value_type import ValueType

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    stamps = 880_000_000 + np.sort(rng.integers(0, 10**7, size=(n_users, per_user)), axis=1).reshape(-1)
    rows = (
        pd.DataFrame({"user_id": users, "ts": stamps}).groupby(["user_id", "ts"]).size().reset_index(name="n")
    )
    rows["event_count"] = rows.groupby("user_id")["n"].cumsum()
    (workdir / "data").mkdir(parents=True)
    table = pa.table(
        {
            "user_id": rows["user_id"].to_numpy(),
            "event_timestamp": pa.array(rows["ts"].to_numpy() * 10**6, pa.timestamp("us", tz="UTC")),
            "event_count": rows["event_count"].to_numpy(),
        }
    )
    pq.write_table(table, workdir / "data" / "counts.parquet")
    config = {
        "project": "probe",
        "provider": "local",
        "registry": "data/registry.db",
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        "entity_key_serialization_version": 3,
    }
    (workdir / "feature_store.yaml").write_text(yaml.safe_dump(config))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(
        name="counts", path=str(workdir / "data" / "counts.parquet"), timestamp_field="event_timestamp"
    )
    view = FeatureView(
        name="counts",
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64), Field(name="event_count", dtype=Int64)],
        source=source,
    )
    store = FeatureStore(repo_path=str(workdir))
    store.apply([user, source, view])
    entity_df = pd.DataFrame(
        {"user_id": rows["user_id"], "event_timestamp": pd.to_datetime(rows["ts"] - 1, unit="s", utc=True)}
    )
    started = time.time()
    out = store.get_historical_features(entity_df=entity_df, features=["counts:event_count"]).to_arrow()
    return {
        "requests": len(entity_df),
        "rows_returned": out.num_rows,
        "seconds": round(time.time() - started, 1),
    }


def old_snapshot_values(dataset_dir: Path, length: int) -> int:
    """List values in the old per-(user, second) snapshot file of this dataset at this L."""
    from longrec.data.datasets import RecDataset
    from longrec.features.store import _snapshot_plan

    _, _, _, starts, ends = _snapshot_plan(RecDataset.load(dataset_dir).events, length)
    return int((ends - starts + 1).sum())


def old_tree(commit: str, into: Path) -> Path:
    """The `longrec` package as of `commit`, extracted under `into`."""
    archive = into / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "longrec"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "old", filter="data")
    return into / "old"


def run(dataset: str, length: int, stores: list[str], timeout: int, old_commit: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="feature-retrieval-") as tmp:
        tmp = Path(tmp)
        started = time.time()
        dataset_dir = prepare(dataset, tmp)
        print(f"{dataset}: dataset ready in {time.time() - started:.0f} s", flush=True)
        mode = "histories" if dataset.startswith("synthetic-") else "build"
        for store in stores:
            work = tmp / store
            work.mkdir()
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            if store == "old":
                env["PYTHONPATH"] = str(old_tree(old_commit, tmp))
            record = work / "stages.json"
            command = [
                sys.executable,
                __file__,
                "--child",
                "--store",
                store,
                "--dataset-dir",
                str(dataset_dir),
                "--length",
                str(length),
                "--mode",
                mode,
                "--workdir",
                str(work),
                "--record",
                str(record),
            ]
            started = time.time()
            try:
                done = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
                status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
            except subprocess.TimeoutExpired:
                status = f"stopped after the {timeout} s time box"
            stages = json.loads(record.read_text()) if record.is_file() else []
            row = {
                "dataset": dataset,
                "max_history_length": length,
                "store": store,
                "mode": mode,
                "status": status,
                "wall_seconds": round(time.time() - started, 1),
                "peak_rss_gib": max((s["peak_rss_gib"] for s in stages), default=None),
                "stages": stages,
                # What the old store's materialize has to write: one L-long snapshot per (user, second).
                **(
                    {"old_snapshot_values": old_snapshot_values(dataset_dir, length)}
                    if store == "old"
                    else {}
                ),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def render(rows: list[dict], probes: list[dict]) -> str:
    """The results as a markdown table (written next to the JSON)."""
    lines = [
        "# Training-set build from Feast: old store vs new",
        "",
        "Generated by `benchmarks/feature_retrieval.py` from `feature_retrieval.json` (one run each, 2 cores",
        "shared with other work: load average 1-2 during these runs). old = file offline store, per-second",
        "snapshots, Python join-back",
        f"(commit {OLD_COMMIT}); new = DuckDB offline store, event log, chunked build. Peak memory = the child",
        "process's max RSS. `fetch` = the history/feature reads inside the training-set step. rows = samples",
        "written, or (synthetic, histories mode: nothing written) distinct requests whose history was read.",
        "",
        "| dataset | L | store | status | materialize s | training-set step s | fetch s | peak RSS GiB | rows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        stages = {s["stage"]: s for s in row["stages"]}
        if "training_set" in stages:
            step, fetch = stages["training_set"]["seconds"], stages["training_set"]["fetch_seconds"]
            count = stages["training_set"]["n_samples"]
        else:  # histories mode: targets, then (new) the event-log pull, then every request's history
            reads = [stages[k]["seconds"] for k in ("pull_event_log", "histories") if k in stages]
            done = "histories" in stages
            fetch = round(sum(reads), 1) if done else "—"
            step = round(stages["targets"]["seconds"] + sum(reads), 1) if done else "—"
            count = stages.get("targets", {}).get("n_requests", "—")
        lines.append(
            f"| {row['dataset']} | {row['max_history_length']} | {row['store']} | {row['status']} | "
            f"{stages.get('materialize', {}).get('seconds', '—')} | {step} | {fetch} | "
            f"{row['peak_rss_gib']} | {count} |"
        )
    for row in rows:
        if row.get("old_snapshot_values") and row["status"] != "ok":
            lines += [
                "",
                f"{row['dataset']}, old: its materialize step alone has to write {row['old_snapshot_values']:,} "
                f"snapshot list values (x2 columns, int64) at L={row['max_history_length']}; it did not finish "
                f"({row['status']}, after {row['wall_seconds']} s; exit -9 is the kernel's OOM killer).",
            ]
    if probes:
        lines += [
            "",
            "Feast's point-in-time join alone (`--pit-probe`: `get_historical_features` on the DuckDB store, one",
            "request per event against a scalar per-(user, second) view; run under load average about 6):",
            "",
            "| users x events per user | requests | seconds |",
            "|---|---|---|",
        ]
        for probe in probes:
            lines.append(
                f"| {probe['users']} x {probe['events_per_user']} | {probe['requests']} | "
                f"{probe.get('seconds', probe.get('status'))} |"
            )
    return "\n".join(lines) + "\n"


def write_markdown(output: Path) -> None:
    rows = json.loads(output.read_text()) if output.is_file() else []
    probe_path = output.with_name("feature_retrieval_pit_probe.json")
    probes = json.loads(probe_path.read_text()) if probe_path.is_file() else []
    output.with_suffix(".md").write_text(render(rows, probes))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["ml-100k:50", "dslabs-movielens:1000", "synthetic-10m:1000"]
    )
    parser.add_argument("--stores", nargs="+", default=["new", "old"], choices=["new", "old"])
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (dataset, store) child")
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--output", type=Path, default=RESULTS / "feature_retrieval.json")
    parser.add_argument(
        "--pit-probe", nargs="+", metavar="USERSxEVENTS", help="time Feast's point-in-time join"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--store", "--dataset-dir", "--mode", "--workdir", "--record"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pit-probe-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.pit_probe:
        probes = []
        for shape in args.pit_probe:
            n_users, per_user = (int(x) for x in shape.split("x"))
            command = [sys.executable, __file__, "--pit-probe-child", shape]
            started = time.time()
            try:
                done = subprocess.run(
                    command, timeout=args.timeout, capture_output=True, text=True, check=True
                )
                probe = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                probe = {
                    "requests": n_users * per_user,
                    "status": f"stopped after the {args.timeout} s time box",
                }
            except subprocess.CalledProcessError as error:  # e.g. -9: the kernel's OOM killer
                probe = {"requests": n_users * per_user, "status": f"died (exit {error.returncode})"}
            probe |= {
                "users": n_users,
                "events_per_user": per_user,
                "wall_seconds": round(time.time() - started, 1),
            }
            print(json.dumps(probe), flush=True)
            probes.append(probe)
        path = args.output.with_name("feature_retrieval_pit_probe.json")
        path.write_text(json.dumps(probes, indent=2) + "\n")
        write_markdown(args.output)
        print(f"wrote {path}")
        return
    if args.pit_probe_child:
        n_users, per_user = (int(x) for x in args.pit_probe_child.split("x"))
        with tempfile.TemporaryDirectory(prefix="pit-probe-") as tmp:
            print(json.dumps(pit_probe(n_users, per_user, Path(tmp) / "repo")))
        return
    results = []
    for spec in args.datasets:
        name, length = spec.rsplit(":", 1)
        results.extend(run(name, int(length), args.stores, args.timeout, args.old_commit))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(args.output.read_text()) if args.output.is_file() else []
        kept = [
            r
            for r in previous
            if (r["dataset"], r["store"]) not in {(x["dataset"], x["store"]) for x in results}
        ]
        args.output.write_text(json.dumps(kept + results, indent=2) + "\n")
    write_markdown(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
