"""Test AUC vs memory size (the LMN paper's memory-scaling experiment), with a plot.

Trains LMN at each memory size on one dataset (same samples, same seeds) and DIN as the reference line.
Writes ``results/lmn_memory_scaling_<dataset>.{csv,md,png}``.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/lmn_memory_scaling.py \
        --dataset dslabs-movielens --slots 4096 16384 65536 262144 1048576 --seeds 0 --epochs 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from longrec.data.samples import SampleConfig  # noqa: E402
from longrec.experiments.seed_study import build_splits, seed_study, summarise, write_seed_study  # noqa: E402
from longrec.train.trainer import TrainConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _slots_of(label: str) -> int:
    """Memory size of an ``lmn <slots>`` row label (0 for DIN, so it sorts first)."""
    return int(label.split()[1]) if label.startswith("lmn ") else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="dslabs-movielens")
    parser.add_argument("--slots", type=int, nargs="+", default=[4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--history-reads", type=int, default=0, help="memory_history_reads; 0 = all (spec)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam, all models (the pipeline's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-train-samples", type=int, default=None, help="random subset of train")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true", help="keep earlier runs of other sizes from the CSV")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    models = {"din": ("din", {})}
    for slots in args.slots:
        overrides = {
            "memory_slots": slots,
            "memory_top_k": args.top_k,
            "memory_history_reads": args.history_reads or None,
        }
        models[f"lmn {slots}"] = ("lmn", overrides)
    splits = build_splits(args.dataset, SampleConfig(), args.max_train_samples)
    train_config = TrainConfig(
        epochs=args.epochs, lr=args.learning_rate, num_threads=args.threads, progress=False
    )
    runs = seed_study(args.dataset, models, SampleConfig(), train_config, args.seeds, splits=splits)
    stem = f"lmn_memory_scaling_{args.dataset}"
    previous = args.output / f"{stem}.csv"
    if args.append and previous.is_file():
        earlier = pd.read_csv(previous)
        runs = pd.concat([earlier[~earlier["label"].isin(runs["label"])], runs], ignore_index=True)
        runs = runs.sort_values("label", key=lambda labels: labels.map(_slots_of), kind="stable")
    title = f"{args.dataset}: LMN test AUC vs memory slots, {args.epochs} epoch(s), seeds {args.seeds}"
    title += f", train samples: {args.max_train_samples or 'all'}"
    path = write_seed_study(runs, args.output, stem, title)
    path.write_text(path.read_text() + f"\nCommand (last run): `{' '.join(sys.argv)}`\n")

    summary = summarise(runs)
    sizes = sorted(_slots_of(label) for label in summary.index if label.startswith("lmn "))
    lmn_rows = summary.loc[[f"lmn {slots}" for slots in sizes]]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(sizes, lmn_rows["auc_mean"], yerr=lmn_rows["auc_std"], marker="o", label="LMN")
    axis.axhline(summary.loc["din", "auc_mean"], color="grey", linestyle="--", label="DIN (backbone)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("memory slots")
    axis.set_ylabel("test AUC")
    axis.set_title(f"LMN memory scaling, {args.dataset}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.output / f"{stem}.png", dpi=120)
    print(path.read_text())


if __name__ == "__main__":
    main()
