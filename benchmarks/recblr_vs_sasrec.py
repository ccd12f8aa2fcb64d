"""RecBLR vs SASRec training cost per epoch and peak memory as the history length L grows.

One training step = next-item loss at every position (full softmax over ``--items`` items) + backward
+ Adam, on random sequences of exactly L items, batch ``--batch``. Seconds per epoch are extrapolated
from the mean of the timed steps to an epoch of ``--epoch-sequences`` sequences (default 6,040: one
sequence per MovieLens-1M user, the paper's setting). Peak memory: on CUDA ``max_memory_allocated``; on
CPU the growth of the process's peak RSS from just before the first step, each (model, L) measured in a
fresh subprocess so peaks do not leak between runs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/recblr_vs_sasrec.py --lengths 50 200 500 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(model_name: str, length: int, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of one model at one length (run in its own process)."""
    from longrec.models.registry import build_sequential_model
    from longrec.runtime import retain_freed_memory

    if not args.default_malloc:  # as the trainers do on CPU: no re-faulting of large activations
        retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_sequential_model(model_name, args.items, length).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    items = torch.randint(1, args.items, (args.batch, length + 1), device=device)
    inputs, targets = items[:, :-1], items[:, 1:]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        loss = model.next_item_loss(inputs, inputs > 0, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Baseline before the first step, so the peak includes activations, gradients and Adam state.
    rss_before = peak_rss_bytes()
    step()  # warm-up (allocator, Adam state)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds_per_step = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes() - rss_before
    steps_per_epoch = -(-args.epoch_sequences // args.batch)
    return {
        "model": model_name,
        "L": length,
        "seconds_per_step": seconds_per_step,
        "seconds_per_epoch": seconds_per_step * steps_per_epoch,
        "peak_memory_mb": peak / 2**20,
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "CPU peak RSS growth",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    parser.add_argument("--models", nargs="+", default=["recblr", "sasrec"])
    parser.add_argument("--items", type=int, default=3416, help="catalogue size (ML-1M after 5-core: 3,416)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epoch-sequences", type=int, default=6040)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc returning freed memory")
    parser.add_argument("--single", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "recblr_vs_sasrec")
    args = parser.parse_args()

    if args.single:
        print(json.dumps(measure(args.single[0], int(args.single[1]), args)))
        return

    rows = []
    for length in args.lengths:
        for model in args.models:
            command = [sys.executable, __file__, "--single", model, str(length)]
            command += ["--items", str(args.items), "--batch", str(args.batch), "--steps", str(args.steps)]
            command += ["--epoch-sequences", str(args.epoch_sequences), "--threads", str(args.threads)]
            command += ["--device", args.device] + (["--default-malloc"] if args.default_malloc else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"L={length:5d} {model:7s} {row['seconds_per_step'] * 1e3:9.1f} ms/step  "
                f"{row['seconds_per_epoch']:8.1f} s/epoch  peak {row['peak_memory_mb']:8.1f} MB",
                flush=True,
            )
    lines = [
        f"Training cost, batch {args.batch}, {args.items} items, epoch = {args.epoch_sequences} sequences, "
        f"device {args.device}, threads {args.threads or torch.get_num_threads()}, "
        f"malloc: {'default' if args.default_malloc else 'retain freed memory'}",
        "",
        "| L | RecBLR s/epoch | SASRec s/epoch | SASRec / RecBLR time | RecBLR peak MB | SASRec peak MB |",
        "|---|---|---|---|---|---|",
    ]
    by_key = {(row["model"], row["L"]): row for row in rows}
    for length in args.lengths:
        recblr, sasrec = by_key.get(("recblr", length)), by_key.get(("sasrec", length))
        if recblr is None or sasrec is None:
            continue
        ratio = sasrec["seconds_per_epoch"] / recblr["seconds_per_epoch"]
        print(f"L={length}: SASRec/RecBLR time ratio {ratio:.2f}")
        lines.append(
            f"| {length} | {recblr['seconds_per_epoch']:.1f} | {sasrec['seconds_per_epoch']:.1f} | {ratio:.2f} | "
            f"{recblr['peak_memory_mb']:.0f} | {sasrec['peak_memory_mb']:.0f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(
        json.dumps({"args": vars(args) | {"output": str(args.output)}, "rows": rows}, indent=2, default=str)
    )
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
