"""IMN's served scoring with its multi-way attention through the fused CPU kernel, against the torch paths.

A served IMN request scores C candidates against one history: N = 3 memory reads, each an attention unit
over C × L (the first layer per candidate, then sigmoid, H → 1, sigmoid). This times the whole compiled
``encode_user`` + ``score_candidates`` the ranker runs, for an IMN with the default sizes (d=32, H=64,
3 reads) at 100 candidates and each L, three ways:

- ``expanded``: the code before the kernel came to IMN, kept here: the history expanded to C rows and
  ``read_memory`` (``baddbmm`` over [C, L, d]);
- ``shared``: ``read_shared_history`` on the torch path (one [L, d] history against C matrices);
- ``fused``: ``read_shared_history`` with the kernel (``longrec.kernels.din_attention.unit_scores``),
  so the [C, L, H] hidden layer is never built.

Each at (torch threads, kernel threads) = (1, 1), (2, 2) and, for the kernel, (1, 2), the settings the
ranker chooses among. Variants alternate in rounds (the machine is shared: load hits all alike); each keeps
the median of its round medians. Prints the ratios measured in this run and checks the three give the same
logits. Random weights: the cost does not depend on them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/imn_attention_cpu.py \\
        --json benchmarks/results/imn_attention_cpu.json
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from din_attention_cpu import rows_by_length, timed, write_results  # noqa: E402
from lmn_item_rows import ranker_scorer  # noqa: E402


def expanded_score(model, user: dict, batch: dict) -> torch.Tensor:
    """IMN.score_candidates as it was before ``read_shared_history``: the history expanded per candidate."""
    target = model.item_embedding(batch["target_item"])
    count = target.shape[0]
    history = user["history"].expand(count, -1, -1)
    memory, _ = model.read_memory(history, target, user["mask"].expand(count, -1))
    state = model.enhance(memory, target)
    head_input = torch.cat([state, target, state * target, model.side(batch)], dim=-1)
    return model.head(head_input).squeeze(-1)


@torch.no_grad()
def measure(length: int, rounds: int, repeats: int) -> dict:
    from longrec.kernels.din_attention import set_kernel_threads

    scorer, user_batch, candidate_batch = ranker_scorer("imn", length)
    model = scorer.model
    attention = model.attention
    # One compiled function per path, as a ranker compiles one (dynamo's recompile limit would otherwise
    # send a path that toggles the kernel back to eager).
    paths = {
        "expanded": torch.compile(lambda u, c: expanded_score(model, model.encode_user(u), c), dynamic=True),
        "shared": torch.compile(lambda u, c: model.score_candidates(model.encode_user(u), c), dynamic=True),
        "fused": torch.compile(lambda u, c: model.score_candidates(model.encode_user(u), c), dynamic=True),
    }

    def call(path: str, kernel_threads: int):
        def run():
            attention.fused_cpu_scoring = path == "fused"
            set_kernel_threads(kernel_threads)
            return paths[path](user_batch, candidate_batch)

        return run

    settings = {"t1": (1, 1), "t2": (2, 2), "t1_kernel2": (1, 2)}
    variants = {
        f"{path}_{name}": (torch_threads, call(path, kernel_threads))
        for name, (torch_threads, kernel_threads) in settings.items()
        for path in ("expanded", "shared", "fused")
        if path == "fused" or kernel_threads == torch_threads
    }
    row: dict = {"L": length, "candidates": len(candidate_batch["target_item"])}
    try:
        logits = {path: call(path, 1)() for path in ("expanded", "shared", "fused")}
        for path in ("shared", "fused"):
            row[f"{path}_max_abs_difference"] = float((logits[path] - logits["expanded"]).abs().max())
        times = timed(variants, rounds, repeats)
    finally:
        attention.fused_cpu_scoring = False
        set_kernel_threads(None)
    row.update({f"{name}_ms": value for name, value in times.items()})
    for name in ("t1", "t2"):
        row[f"expanded_over_fused_{name}"] = round(times[f"expanded_{name}"] / times[f"fused_{name}"], 2)
        row[f"shared_over_fused_{name}"] = round(times[f"shared_{name}"] / times[f"fused_{name}"], 2)
    best_torch = min(times["expanded_t1"], times["expanded_t2"])
    row["best_expanded_over_fused_t1_kernel2"] = round(best_torch / times["fused_t1_kernel2"], 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = rows_by_length(lambda length: measure(length, args.rounds, args.repeats), args.lengths)
    print(
        "\n| L | threads (torch, kernel) | expanded (before) | shared, torch | fused kernel | before / fused |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        for name, label in (("t1", "(1, 1)"), ("t2", "(2, 2)")):
            print(
                f"| {r['L']} | {label} | {r[f'expanded_{name}_ms']:.2f} ms | {r[f'shared_{name}_ms']:.2f} ms | "
                f"{r[f'fused_{name}_ms']:.2f} ms | {r[f'expanded_over_fused_{name}']:.2f}x |"
            )
        print(
            f"| {r['L']} | (1, 2) | – | – | {r['fused_t1_kernel2_ms']:.2f} ms | "
            f"{r['best_expanded_over_fused_t1_kernel2']:.2f}x (over the faster before) |"
        )
    if args.json:
        write_results(args.json, "imn_attention_cpu.py", argv, rows, weights="random")
    return rows


if __name__ == "__main__":
    main()
