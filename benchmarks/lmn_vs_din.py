"""LMN (million-slot memory) vs its DIN backbone: test AUC mean ± std over seeds, with peak RSS.

Uses ``longrec.experiments.seed_study`` (one training set per dataset, each seed changes the model's
initialisation and batch order). Writes ``results/lmn_vs_din_<dataset>.{csv,md}``; with several
``--memory-loss-weights`` (the λ of BCE + λ·L_mem, which the paper does not give) one LMN per λ, written
to ``results/lmn_lambda_<dataset>.{csv,md}``.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_vs_din.py \
        --datasets ml-100k dslabs-movielens --seeds 0 1 2 --epochs 3
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_vs_din.py \
        --datasets ml-100k --seeds 0 1 2 --epochs 3 --memory-loss-weights 0 0.1 1
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from longrec.data.samples import SampleConfig  # noqa: E402
from longrec.experiments.seed_study import build_splits, seed_study, summary_markdown, write_seed_study  # noqa: E402
from longrec.train.trainer import TrainConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "dslabs-movielens"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1_048_576)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--history-reads", type=int, default=0, help="memory_history_reads; 0 = all (spec)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam, all models (the pipeline's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-train-samples", type=int, default=None, help="random subset of train")
    parser.add_argument("--memory-loss-weights", type=float, nargs="+", default=[0.1], help="λ values")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    lmn = {
        "memory_slots": args.slots,
        "memory_top_k": args.top_k,
        "memory_history_reads": args.history_reads or None,
    }
    models = {"din": ("din", {})}
    sweep = len(args.memory_loss_weights) > 1
    for weight in args.memory_loss_weights:
        label = f"lmn ({args.slots:,} slots, K={args.top_k}" + (f", λ={weight:g})" if sweep else ")")
        models[label] = ("lmn", {**lmn, "memory_loss_weight": weight})
    train_config = TrainConfig(
        epochs=args.epochs, lr=args.learning_rate, num_threads=args.threads, progress=False
    )
    for dataset in args.datasets:
        splits = build_splits(dataset, SampleConfig(), args.max_train_samples)
        runs = seed_study(dataset, models, SampleConfig(), train_config, args.seeds, splits=splits)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stem = f"lmn_lambda_{dataset}" if sweep else f"lmn_vs_din_{dataset}"
        title = f"{dataset}: LMN vs DIN, {args.epochs} epoch(s), seeds {args.seeds}"
        title += f", train samples: {args.max_train_samples or 'all'}"
        path = write_seed_study(runs, args.output, stem, title)
        note = f"\nPeak RSS of the whole process so far: {peak:.0f} MiB.\n\nCommand: `{' '.join(sys.argv)}`\n"
        path.write_text(path.read_text() + note)
        print(summary_markdown(runs, title) + note, flush=True)


if __name__ == "__main__":
    main()
