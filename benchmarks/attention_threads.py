"""The ranker's scoring call with torch's ops and the fused attention kernel on separate thread counts.

The ranker scores DIN and LMN through the fused attention kernel (``longrec/kernels/din_attention_cpu.cpp``),
which splits C × L into 1,600 tiles at L=1000 and gains from every core. The torch ops around it (the head's
and the first layer's small GEMMs, LMN's memory reads) are small: on 2 cores, waking a second thread for a
100-row GEMM costs more than it saves. This times ``ModelScorer.score`` (compiled, as served; LMN with
1,048,576 slots read from two in-process shards in its helper thread) for one request of 100 candidates at
each L, with (torch threads, kernel threads) = (1, 1), (1, 2) and (2, 2). The settings alternate call by call
in rounds; this machine's speed drifts by tens of percent within minutes, so each prints the minimum and
the median of all its calls, measured in this run. Random weights (LMN's query biases zeroed, as in
``lmn_item_rows.py``, so reads touch thousands of slots as a trained model's do).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/attention_threads.py \\
        --json benchmarks/results/attention_threads.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from din_attention_cpu import rows_by_length, write_results  # noqa: E402
from lmn_item_rows import N_CANDIDATES, ranker_scorer  # noqa: E402

SETTINGS = ((1, 1), (1, 2), (2, 2))  # (torch intra-op threads, kernel threads)


def scorer_for(name: str, length: int):
    """``lmn_item_rows.ranker_scorer`` (the ranker's scorer and one request) with the fused kernel required
    and scoring compiled, as served."""
    scorer, user_batch, candidate_batch = ranker_scorer(name, length)
    assert scorer.fused_attention, "the fused kernel cannot be built here"
    scorer.enable_compile()
    return scorer, user_batch, candidate_batch


@torch.no_grad()
def measure(length: int, models: list[str], rounds: int, repeats: int) -> dict:
    from longrec.kernels.din_attention import set_kernel_threads

    row: dict = {"L": length, "candidates": N_CANDIDATES}
    try:
        for name in models:
            scorer, user_batch, candidate_batch = scorer_for(name, length)
            reference = None
            times: dict[tuple[int, int], list[float]] = {setting: [] for setting in SETTINGS}
            for _ in range(rounds):
                for setting in SETTINGS:
                    torch.set_num_threads(setting[0])
                    set_kernel_threads(setting[1])
                    logits = scorer.score(user_batch, candidate_batch)  # wakes this setting's threads
                    reference = logits if reference is None else reference
                    row[f"{name}_max_abs_difference"] = max(
                        row.get(f"{name}_max_abs_difference", 0.0), float(np.abs(logits - reference).max())
                    )
                    for _ in range(repeats):
                        start = time.perf_counter()
                        scorer.score(user_batch, candidate_batch)
                        times[setting].append((time.perf_counter() - start) * 1e3)
            for (torch_threads, kernel), values in times.items():
                key = f"{name}_torch{torch_threads}_kernel{kernel}"
                row[f"{key}_min_ms"] = round(min(values), 2)
                row[f"{key}_median_ms"] = round(statistics.median(values), 2)
            for stat in ("min", "median"):
                row[f"{name}_t2k2_over_t1k2_{stat}"] = round(
                    row[f"{name}_torch2_kernel2_{stat}_ms"] / row[f"{name}_torch1_kernel2_{stat}_ms"], 2
                )
    finally:
        set_kernel_threads(None)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["din", "lmn"], choices=["din", "lmn"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = rows_by_length(lambda length: measure(length, args.models, args.rounds, args.repeats), args.lengths)
    header = " | ".join(f"torch {t}, kernel {k}: min / median" for t, k in SETTINGS)
    print(f"\n| model | L | {header} | (2, 2) over (1, 2): min / median |")
    print("|---|---|" + "---|" * (len(SETTINGS) + 1))
    for r in rows:
        for name in args.models:
            cells = " | ".join(
                f"{r[f'{name}_torch{t}_kernel{k}_min_ms']:.2f} / {r[f'{name}_torch{t}_kernel{k}_median_ms']:.2f} ms"
                for t, k in SETTINGS
            )
            print(
                f"| {name} | {r['L']} | {cells} | {r[f'{name}_t2k2_over_t1k2_min']:.2f}x / "
                f"{r[f'{name}_t2k2_over_t1k2_median']:.2f}x |"
            )
    if args.json:
        write_results(
            args.json,
            "attention_threads.py",
            argv,
            rows,
            weights="random; LMN's query biases zeroed (see the module doc)",
        )
    return rows


if __name__ == "__main__":
    main()
