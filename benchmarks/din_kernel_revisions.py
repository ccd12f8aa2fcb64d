"""The fused DIN attention kernel of this checkout against the kernel of an earlier commit, in one process.

Builds ``longrec/kernels/din_attention_cpu.cpp`` as it was at ``--before`` (``git show``) with the same
compiler flags beside this checkout's build, and times both on the same request: DIN's activation unit
(d=32, attention 80-40, Dice with non-trivial running statistics, as the tests set them), 100 candidates,
each L, at 1 and 2 threads. Both are checked against the torch path first. The two alternate call by call
in rounds; this machine's speed drifts by tens of percent within minutes, so each prints the minimum (the
least disturbed call) and the median of all its calls, and the before / after ratio of each, measured in
this run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/din_kernel_revisions.py --before 38ef55c \\
        --json benchmarks/results/din_kernel_revisions.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/din_kernel_revisions.py --before 7f07478 \\
        --before-lanes 8 --before-rows 4 --lengths 50 200 1000 \\
        --json benchmarks/results/din_kernel_transposed.json

``--before-lanes`` and ``--before-rows`` give the padding that commit's Python side gave its kernel.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from din_attention_cpu import rows_by_length, write_results  # noqa: E402

N_CANDIDATES = 100
SOURCE = "longrec/kernels/din_attention_cpu.cpp"
ROOT = Path(__file__).resolve().parent.parent


def build_revision(revision: str, directory: Path) -> ctypes.CDLL:
    """The kernel source of ``revision``, built with this checkout's flags and its ctypes signature."""
    from longrec.kernels import din_attention

    source = directory / "din_attention_cpu_before.cpp"
    source.write_bytes(subprocess.run(["git", "show", f"{revision}:{SOURCE}"], cwd=ROOT, check=True,
                                      capture_output=True).stdout)  # fmt: skip
    library = directory / "din_attention_cpu_before.so"
    subprocess.run(["g++", *din_attention.CFLAGS, "-o", str(library), str(source)], check=True)
    loaded = ctypes.CDLL(str(library))
    din_attention._load()
    current = din_attention._state["library"].din_attention_scores
    loaded.din_attention_scores.restype = current.restype
    loaded.din_attention_scores.argtypes = current.argtypes
    return loaded


@torch.no_grad()
def measure(
    length: int, before: ctypes.CDLL, before_padding: tuple[int, int], rounds: int, repeats: int
) -> dict:
    from longrec.kernels import din_attention
    from longrec.models.din import ActivationUnit

    torch.manual_seed(0)
    unit = ActivationUnit(32, (80, 40), "dice").eval()
    for module in unit.modules():
        if type(module).__name__ == "Dice":
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.alpha.data.normal_()
    history = torch.randn(1, length, 32) * 0.3
    target = torch.randn(N_CANDIDATES, 32) * 0.3
    history_term = unit.history_term(history)
    _, w_v, w_diff, _ = unit.input_layer.weight.split(unit.dim, dim=1)
    target_term = F.linear(target, w_v - w_diff, unit.input_layer.bias)
    expected = unit.score_targets(
        history, history_term, target, torch.ones(N_CANDIDATES, length, dtype=torch.bool)
    )
    din_attention._load()
    # Each kernel with the padding its Python side gave it: (library, width multiple, row multiple).
    kernels = {
        "before": (before, *before_padding),
        "after": (din_attention._state["library"], din_attention.LANES, din_attention.ROWS),
    }

    def call(name: str):
        library, din_attention.LANES, din_attention.ROWS = kernels[name]
        din_attention._state["library"] = library
        return din_attention.fused_scores(unit, history, history_term, target, target_term)

    row: dict = {"L": length, "candidates": N_CANDIDATES}
    try:
        for name in kernels:
            row[f"{name}_max_abs_difference"] = float((call(name) - expected).abs().max())
        times: dict[str, list[float]] = {f"{n}_t{t}": [] for t in (1, 2) for n in kernels}
        for _ in range(rounds):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for name in kernels:
                    call(name)
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call(name)
                        times[f"{name}_t{threads}"].append((time.perf_counter() - start) * 1e3)
    finally:
        din_attention._state["library"], din_attention.LANES, din_attention.ROWS = kernels["after"]
    for key, values in times.items():
        row[f"{key}_min_ms"] = round(min(values), 2)
        row[f"{key}_median_ms"] = round(statistics.median(values), 2)
    for threads in (1, 2):
        for stat in ("min", "median"):
            row[f"before_over_after_t{threads}_{stat}"] = round(
                row[f"before_t{threads}_{stat}_ms"] / row[f"after_t{threads}_{stat}_ms"], 2
            )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="the commit whose kernel source is 'before'")
    parser.add_argument(
        "--before-lanes", type=int, default=16, help="the width padding that commit's kernel takes: 16 before "
        "396f55e (the 8-float tail), 8 from it until a8dc68d (positions in lanes), 1 since",
    )  # fmt: skip
    parser.add_argument(
        "--before-rows", type=int, default=4, help="the row padding that commit's kernel takes: 4 before "
        "a8dc68d, 1 since",
    )  # fmt: skip
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        before = build_revision(args.before, Path(directory))
        rows = rows_by_length(
            lambda length: measure(
                length, before, (args.before_lanes, args.before_rows), args.rounds, args.repeats
            ),
            args.lengths,
        )
    print(
        f"\n| L | threads | before ({args.before}) min | after min | ratio | before median | after median | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for t in (1, 2):
            print(
                f"| {r['L']} | {t} | {r[f'before_t{t}_min_ms']:.2f} ms | {r[f'after_t{t}_min_ms']:.2f} ms | "
                f"{r[f'before_over_after_t{t}_min']:.2f}x | {r[f'before_t{t}_median_ms']:.2f} ms | "
                f"{r[f'after_t{t}_median_ms']:.2f} ms | {r[f'before_over_after_t{t}_median']:.2f}x |"
            )
    if args.json:
        write_results(
            args.json,
            "din_kernel_revisions.py",
            argv,
            rows,
            before=args.before,
            weights="random; Dice running statistics and slopes drawn as in tests/test_din_attention_kernel.py",
        )
    return rows


if __name__ == "__main__":
    main()
