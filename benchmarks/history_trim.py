"""What cutting each history to its valid events saves the ranker, on real users' history lengths.

A long-sequence model is served at L=1000, but most users have far fewer events: the padded positions
still cost attention over candidates × L unless the ranker trims them (``trim_history_padding``, the
serving default; exact, see tests/test_serving.py). This measures the ranker in process (``Ranker.rank``
with the user's history in the request, so no Feast read; compiled scoring as served, but with DIN's and
LMN's attention on the torch path, not the fused CPU kernel the service uses; the service's thread choice)
on requests whose history lengths are the real datasets' users' (each user's latest ≤ L events),
trimmed and untrimmed alternating on the same requests, and prints the ratio measured in this run.
Weights and item ids are random: the cost depends on the lengths, not on the values.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/history_trim.py \\
        --json benchmarks/results/history_trim.json
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
import torch  # noqa: E402

MODELS = ("din", "imn", "recblr", "lmn")
N_ITEMS = 20_000
N_CANDIDATES = 100
NOW = 2_000_000_000


def real_lengths(dataset: str, length: int) -> np.ndarray:
    """Each user's history length as served: all their events, at most L (the online store's latest)."""
    from longrec.data.datasets import load_dataset

    counts = load_dataset(dataset).events.groupby("user_id").size().to_numpy()
    return np.minimum(counts, length)


def build_ranker(name: str, length: int, root: Path, trim: bool):
    from longrec.models.registry import build_model
    from longrec.serving.demo import demo_spec, write_model_dir
    from longrec.serving.ranker import ModelScorer, Ranker

    model_dir = root / name
    if not model_dir.is_dir():
        torch.manual_seed(0)
        spec = demo_spec(n_items=N_ITEMS, max_history_length=length)
        overrides = {"memory_slots": 65_536} if name == "lmn" else None  # in-process memory, no shards
        write_model_dir(build_model(name, spec, overrides), model_dir)
    scorer = ModelScorer(model_dir, f"trim-{name}")
    scorer.enable_compile()
    ranker = Ranker({"main": scorer}, None, trim_history=trim)
    ranker.warm_up()
    return ranker


def requests(lengths: np.ndarray, count: int, seed: int = 0) -> list:
    from longrec.serving.schemas import RankRequest

    rng = np.random.default_rng(seed)
    out = []
    for n in rng.choice(lengths, count, replace=True):
        history = None
        if n:
            history = {
                "items": rng.integers(1, N_ITEMS, n).tolist(),
                "timestamps": np.sort(rng.integers(NOW - 10**8, NOW, n)).tolist(),
            }
        candidates = rng.choice(np.arange(1, N_ITEMS), N_CANDIDATES, replace=False).tolist()
        out.append(RankRequest(user_id=1, candidate_items=candidates, history=history, timestamp=NOW))
    return out


def measure(
    name: str, length: int, dataset_lengths: dict[str, np.ndarray], count: int, root: Path
) -> list[dict]:
    from longrec.serving.config import ServingConfig
    from longrec.serving.service_support import set_ranker_threads

    rankers = {trim: build_ranker(name, length, root, trim) for trim in (False, True)}
    threads = set_ranker_threads(rankers[False], ServingConfig("x", name), with_metrics=False)
    rows = []
    for dataset, lengths in dataset_lengths.items():
        batch = requests(lengths, count)
        for request in batch[:5]:  # warm both paths on real shapes
            rankers[False].rank(request), rankers[True].rank(request)
        times = {False: [], True: []}
        for request in batch:
            for trim in (False, True):  # alternate, so load hits both alike
                started = time.perf_counter()
                rankers[trim].rank(request)
                times[trim].append(time.perf_counter() - started)
        full, cut = (1000 * np.asarray(times[k]) for k in (False, True))
        rows.append(
            {
                "model": name,
                "L": length,
                "lengths_from": dataset,
                "median_history_length": float(np.median(lengths)),
                "requests": count,
                "torch_threads": threads,
                "padded_p50_ms": float(np.percentile(full, 50)),
                "padded_p99_ms": float(np.percentile(full, 99)),
                "trimmed_p50_ms": float(np.percentile(cut, 50)),
                "trimmed_p99_ms": float(np.percentile(cut, 99)),
                "mean_speedup": float(full.mean() / cut.mean()),
            }
        )
        print(
            f"{name:6s} L={length} {dataset:17s} median history {rows[-1]['median_history_length']:.0f}: "
            f"p50 {rows[-1]['padded_p50_ms']:.1f} → {rows[-1]['trimmed_p50_ms']:.1f} ms, p99 "
            f"{rows[-1]['padded_p99_ms']:.1f} → {rows[-1]['trimmed_p99_ms']:.1f} ms, mean "
            f"{rows[-1]['mean_speedup']:.1f}× faster trimmed",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("-L", "--length", type=int, default=1000)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "dslabs-movielens"])
    parser.add_argument("--requests", type=int, default=200, help="requests per dataset and model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dataset_lengths = {name: real_lengths(name, args.length) for name in args.datasets}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += measure(name, args.length, dataset_lengths, args.requests, Path(tmp))
    if args.json:
        payload = {
            "command": "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/history_trim.py "
            f"--models {' '.join(args.models)} -L {args.length} --datasets {' '.join(args.datasets)} "
            f"--requests {args.requests} --json {args.json}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load_average_at_end": os.getloadavg(),
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
