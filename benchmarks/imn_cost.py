"""Training throughput, peak memory and forward latency of DIN and IMN against history length, on CPU.

Each (model, L) point runs in a fresh subprocess so its peak RSS is its own: we report the growth of the
RSS high-water mark over the RSS measured just before the first step (model, optimiser and batch built).
Histories are full (every position valid), so cost is at its maximum for each L. Ratios are taken within
this one run. Like ``train_model`` on CPU, each point keeps freed memory in the process
(``longrec.runtime``); ``--default-malloc`` measures with glibc's default. Usage:

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/imn_cost.py [--lengths 50 200 250 500 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(
    model_name: str, length: int, batch_size: int, steps: int, threads: int, retain: bool, queue: mp.Queue
) -> None:
    """Child process: train steps/s, peak RSS growth, tracemalloc peak (Python heap only), latency."""
    import tracemalloc

    import torch

    from longrec.runtime import retain_freed_memory

    if retain:  # as train_model does on CPU: no re-faulting of the large activations every step
        retain_freed_memory()

    from longrec.data.schema import FeatureSpec
    from longrec.data.tensors import synthetic_sample_set
    from longrec.models.registry import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = FeatureSpec(
        n_users=1000, n_items=5000, n_genres=20, n_ages=8, n_genders=3, n_occupations=22,
        max_history_length=length,
    )  # fmt: skip
    samples = synthetic_sample_set(spec, batch_size, seed=0, min_history=length)  # full histories
    batch = samples.tensors
    model = build_model(model_name, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        logits = model(batch)
        loss = model.loss(batch, logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    # Baseline before the warm-up step: the peak then counts activations, gradients and Adam state even
    # when the allocator keeps the warm-up's memory mapped.
    rss_before = _rss_mib()
    step()  # warm-up: allocator, Adam state
    tracemalloc.start()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train_seconds = (time.perf_counter() - start) / steps
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux

    model.eval()
    with torch.no_grad():
        model(batch)
        start = time.perf_counter()
        for _ in range(steps):
            model(batch)
        forward_batch = (time.perf_counter() - start) / steps
        single = {key: value[:1] for key, value in batch.items()}
        model(single)
        start = time.perf_counter()
        for _ in range(20):
            model(single)
        forward_single = (time.perf_counter() - start) / 20
    queue.put(
        {
            "model": model_name,
            "L": length,
            "batch_size": batch_size,
            "train_samples_per_s": batch_size / train_seconds,
            "train_ms_per_sample": 1e3 * train_seconds / batch_size,
            "peak_rss_growth_mib": max(peak_rss - rss_before, 0.0),
            "tracemalloc_peak_mib": python_peak / 2**20,
            "forward_ms_per_sample_batched": 1e3 * forward_batch / batch_size,
            "forward_ms_batch_of_1": 1e3 * forward_single,
        }
    )


def measure(model_name: str, length: int, batch_size: int, steps: int, threads: int, retain: bool) -> dict:
    """Run one point in a fresh process (spawn) and return its figures."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_measure, args=(model_name, length, batch_size, steps, threads, retain, queue)
    )
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 250, 500, 1000])
    parser.add_argument("--models", nargs="+", default=["din", "imn"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc returning freed memory (re-faulting it)"
    )
    args = parser.parse_args()

    import pandas as pd

    rows = []
    for length in args.lengths:
        for model_name in args.models:
            row = measure(
                model_name, length, args.batch_size, args.steps, args.threads, not args.default_malloc
            )
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
            rows.append(row)
    frame = pd.DataFrame(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output / "imn_cost.csv", index=False)

    table = frame.pivot(index="L", columns="model")
    lines = [
        f"# DIN vs IMN cost on CPU ({args.threads} thread(s), batch {args.batch_size}, full histories, "
        f"default configs, malloc: {'default' if args.default_malloc else 'retain freed memory'})",
        "",
        "| L | "
        + " | ".join(f"{m} samples/s | {m} ms/sample | {m} peak RSS growth MiB" for m in args.models)
        + " | IMN/DIN time |",
        "|---" * (1 + 3 * len(args.models) + 1) + "|",
    ]
    for length in args.lengths:
        cells = []
        for model_name in args.models:
            cells += [
                f"{table.loc[length, ('train_samples_per_s', model_name)]:.0f}",
                f"{table.loc[length, ('train_ms_per_sample', model_name)]:.3f}",
                f"{table.loc[length, ('peak_rss_growth_mib', model_name)]:.0f}",
            ]
        ratio = "n/a"
        if {"din", "imn"} <= set(args.models):
            ms = table["train_ms_per_sample"]
            ratio = f"{ms.loc[length, 'imn'] / ms.loc[length, 'din']:.2f}"
        lines.append(f"| {length} | " + " | ".join(cells) + f" | {ratio} |")
    summary = []
    if "imn" in args.models and {250, 1000} <= set(args.lengths):
        growth = (
            table.loc[1000, ("train_ms_per_sample", "imn")] / table.loc[250, ("train_ms_per_sample", "imn")]
        )
        summary.append(f"IMN train time per sample, L=1000 / L=250: {growth:.2f} (linear = 4)")
    if {"din", "imn"} <= set(args.models) and 1000 in args.lengths:
        for model_name in args.models:
            summary.append(
                f"{model_name} forward latency at L=1000: "
                f"{table['forward_ms_per_sample_batched'].loc[1000, model_name]:.3f} ms/sample in a batch "
                f"of {args.batch_size}, {table['forward_ms_batch_of_1'].loc[1000, model_name]:.2f} ms for "
                "a batch of 1"
            )
        cost = (
            table.loc[1000, ("train_ms_per_sample", "imn")] / table.loc[1000, ("train_ms_per_sample", "din")]
        )
        memory = (
            table.loc[1000, ("peak_rss_growth_mib", "imn")] / table.loc[1000, ("peak_rss_growth_mib", "din")]
        )
        summary.append(f"IMN/DIN at L=1000: train time x{cost:.2f}, peak RSS growth x{memory:.2f}")
    lines += ["", *[f"- {line}" for line in summary]]
    lines.append(
        "- tracemalloc sees only Python-heap allocations (torch tensors bypass it); its peak per point is in "
        "imn_cost.csv and stays small: the RSS growth is the figure that counts."
    )
    (args.output / "imn_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for model_name in args.models:
        part = frame[frame.model == model_name].sort_values("L")
        axes[0].plot(part.L, part.train_ms_per_sample, marker="o", label=model_name)
        axes[1].plot(part.L, part.peak_rss_growth_mib, marker="o", label=model_name)
        axes[2].plot(part.L, part.forward_ms_per_sample_batched, marker="o", label=model_name)
    for axis, title in zip(
        axes, ["train ms / sample", "peak RSS growth (MiB)", "forward ms / sample (batched)"], strict=True
    ):
        axis.set_xlabel("history length L")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(args.output / "imn_cost.png", dpi=120)
    print(f"wrote {args.output / 'imn_cost.md'}, .csv, .png")


if __name__ == "__main__":
    main()
