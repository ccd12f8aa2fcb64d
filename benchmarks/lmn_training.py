"""LMN training throughput and peak memory with a million-slot memory (CPU by default).

Trains LMN on MovieLens (L=50, the pipeline's samples) for one epoch or ``--max-steps`` steps and prints
samples/s, epoch seconds, the value table's size, peak RSS and (after a full epoch) test AUC.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/lmn_training.py --slots 1048576
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from longrec.data.datasets import load_dataset  # noqa: E402
from longrec.data.samples import SampleConfig, build_training_set  # noqa: E402
from longrec.data.training_set import tensors_by_split  # noqa: E402
from longrec.models.registry import build_model  # noqa: E402
from longrec.train.trainer import TrainConfig, evaluate_model, train_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--slots", type=int, default=1_048_576)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--history-reads", type=int, default=20, help="memory_history_reads; 0 = all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (default: full epoch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS / "lmn_training.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.dataset)
    spec = dataset.feature_spec(50)
    splits = tensors_by_split(build_training_set(dataset, SampleConfig()), spec)
    rss_data = peak_rss_mb()
    overrides = {
        "memory_slots": args.slots,
        "memory_top_k": args.top_k,
        "memory_history_reads": args.history_reads or None,
    }
    model = build_model("lmn", spec, overrides)
    rss_model = peak_rss_mb()
    config = TrainConfig(
        epochs=args.epochs,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps,
        device=args.device,
        num_threads=args.threads,
        progress=False,
    )
    start = time.perf_counter()
    result = train_model(model, splits["train"], splits["valid"], config)
    wall = time.perf_counter() - start
    first = result.history[0]
    summary = {
        "dataset": args.dataset,
        "model_config": overrides,
        "train_config": {"epochs": args.epochs, "max_steps": args.max_steps, "threads": args.threads},
        "value_table_mib": model.memory_bytes() / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples_per_second": first["train_samples_per_second"],
        "epoch_seconds": [round(h["train_seconds"], 1) for h in result.history],
        "valid_auc": [h["valid"].get("auc") for h in result.history],
        "train_wall_seconds_with_eval": wall,
        "peak_rss_mib_after_data": rss_data,
        "peak_rss_mib_after_model": rss_model,
        "peak_rss_mib": peak_rss_mb(),
    }
    if args.max_steps is None:
        summary["test"] = evaluate_model(model, splits["test"])
    for key, value in summary.items():
        print(f"{key}: {value}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
