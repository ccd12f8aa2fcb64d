"""The fused CPU kernel of DIN's activation unit against the torch path, in process, on one request.

DIN and LMN serve by scoring C candidates against one user's history (``ActivationUnit.score_targets``):
attention over C × L. This times that step for a DIN with the paper's sizes (d=32, attention 80-40, Dice)
at 100 candidates and several L, through (a) torch ops compiled as the service compiles them, and (b) the
fused kernel (``longrec/kernels/din_attention_cpu.cpp``), each at 1 and 2 torch threads; then the whole
compiled ``score_candidates`` of DIN, which the ranker runs, with the kernel off and on. The variants
alternate in rounds (the machine is shared: load hits all alike); each keeps the median of its round
medians. Prints the ratio measured in this run. Random weights: the cost does not depend on them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/din_attention_cpu.py \\
        --json benchmarks/results/din_attention_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

N_ITEMS = 20_000
N_CANDIDATES = 100


def timed(variants: dict, rounds: int, repeats: int, before=None, digits: int = 2) -> dict[str, float]:
    """Median over rounds of each variant's median ms per call; variants alternate within a round.
    ``variants``: {name: (torch threads, call)}; ``before``, if given, runs untimed before each timed call."""
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (threads, call) in variants.items():
            torch.set_num_threads(threads)
            call()
            times = []
            for _ in range(repeats):
                if before is not None:
                    before()
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times) * 1e3)
    return {name: round(statistics.median(values), digits) for name, values in medians.items()}


def rows_by_length(measure, lengths: list[int]) -> list[dict]:
    """``measure(length)`` for each history length, each row printed as it comes; torch's thread count
    (which the timings change) is put back afterwards."""
    threads_before = torch.get_num_threads()
    rows = []
    try:
        for length in lengths:
            rows.append(measure(length))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        torch.set_num_threads(threads_before)
    return rows


def write_results(path: str | Path, script: str, argv: list[str] | None, rows: list[dict], **extra) -> None:
    """An in-process benchmark's result file: the command that wrote it, the machine, the time, ``extra``
    (e.g. what the weights are) and the rows."""
    payload = {
        "command": f"OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/{script} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "rows": rows,
    }
    Path(path).write_text(json.dumps(payload, indent=2))


@torch.no_grad()
def measure(length: int, rounds: int, repeats: int) -> dict:
    from longrec.kernels.din_attention import fused_scores
    from longrec.models.registry import build_model
    from longrec.serving.demo import demo_spec
    from longrec.serving.ranker import _synthetic_batches

    torch.manual_seed(0)
    spec = demo_spec(n_items=N_ITEMS, max_history_length=length)
    model = build_model("din", spec).eval()
    unit = model.backbone.attention
    scorer = type("Scorer", (), {"spec": spec})()
    user_batch, candidate_batch = _synthetic_batches(scorer, N_CANDIDATES)
    user_batch["history_items"] = torch.randint(1, N_ITEMS, user_batch["history_items"].shape)
    candidate_batch["target_item"] = torch.randint(1, N_ITEMS, candidate_batch["target_item"].shape)
    user = model.encode_user(user_batch)
    history, history_term, mask = user["history"], user["history_term"], user["mask"]
    target = model.item_embedding(candidate_batch["target_item"])
    _, w_v, w_diff, _ = unit.input_layer.weight.split(unit.dim, dim=1)
    target_term = F.linear(target, w_v - w_diff, unit.input_layer.bias)
    mask = mask.expand(N_CANDIDATES, length)

    torch_attention = torch.compile(unit.score_targets, dynamic=True)
    expected = unit.score_targets(history, history_term, target, mask)
    max_difference = (fused_scores(unit, history, history_term, target, target_term) - expected).abs().max()
    torch_model = torch.compile(model.score_candidates, dynamic=True)
    torch_model(user, candidate_batch)  # compiled with the kernel off
    unit.fused_cpu_scoring = True
    fused_model = torch.compile(model.score_candidates, dynamic=True)
    fused_model(user, candidate_batch)
    unit.fused_cpu_scoring = False

    def model_call(compiled, fused: bool):
        def call():
            unit.fused_cpu_scoring = fused
            compiled(user, candidate_batch)

        return call

    def torch_attention_call():
        unit.fused_cpu_scoring = False  # the flag is the compiled graphs' guard: the model calls set it
        torch_attention(history, history_term, target, mask)

    variants = {}
    for threads in (1, 2):
        variants[f"attention_torch_compiled_t{threads}"] = (threads, torch_attention_call)
        variants[f"attention_fused_t{threads}"] = (
            threads,
            lambda: fused_scores(unit, history, history_term, target, target_term),
        )
        variants[f"din_score_torch_compiled_t{threads}"] = (threads, model_call(torch_model, False))
        variants[f"din_score_fused_compiled_t{threads}"] = (threads, model_call(fused_model, True))
    ms = timed(variants, rounds, repeats)
    row = {"L": length, "candidates": N_CANDIDATES, "max_abs_difference": float(max_difference), **ms}
    for threads in (1, 2):
        row[f"attention_speedup_t{threads}"] = round(
            ms[f"attention_torch_compiled_t{threads}"] / ms[f"attention_fused_t{threads}"], 2
        )
        row[f"din_score_speedup_t{threads}"] = round(
            ms[f"din_score_torch_compiled_t{threads}"] / ms[f"din_score_fused_compiled_t{threads}"], 2
        )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    from longrec.kernels.din_attention import din_kernel_available, din_kernel_error

    if not din_kernel_available():
        sys.exit(f"the fused kernel cannot be built here: {din_kernel_error()}")
    rows = rows_by_length(lambda length: measure(length, args.rounds, args.repeats), args.lengths)
    print(
        "\n| L | threads | attention: torch compiled | fused | ratio | DIN score_candidates: torch | fused | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for t in (1, 2):
            print(
                f"| {r['L']} | {t} | {r[f'attention_torch_compiled_t{t}']:.2f} ms | {r[f'attention_fused_t{t}']:.2f} ms"
                f" | {r[f'attention_speedup_t{t}']:.2f}x | {r[f'din_score_torch_compiled_t{t}']:.2f} ms | "
                f"{r[f'din_score_fused_compiled_t{t}']:.2f} ms | {r[f'din_score_speedup_t{t}']:.2f}x |"
            )
    if args.json:
        write_results(
            args.json, "din_attention_cpu.py", argv, rows, weights="random (the cost does not depend on them)"
        )
    return rows


if __name__ == "__main__":
    main()
