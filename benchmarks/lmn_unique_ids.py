"""LMN serving: a request's memory reads with their slot and item ids deduplicated by
``longrec.kernels.pkm.unique_ids`` (one numpy sort of position-tagged keys; what the ranker runs since
2026-12-03) against ``torch.unique``, in process, for LMN with 1,048,576 slots and 100 candidates at
several L, on 1 torch thread. Each request's reads deduplicate twice: the items they read (history and
candidates) and the ~16 selected slots of each read. Variants alternate in rounds; each keeps the median
of its round medians. Prints the ratio measured in this run and checks both give the same reads.

Random weights with the query biases zeroed, as in ``benchmarks/lmn_item_rows.py`` (thousands of
distinct slots per request, as a trained model reads).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_unique_ids.py \\
        --json benchmarks/results/lmn_unique_ids.json
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from din_attention_cpu import rows_by_length, timed, write_results  # noqa: E402
from lmn_item_rows import ranker_scorer  # noqa: E402

import longrec.kernels.pkm as pkm  # noqa: E402
import longrec.memory.sharded as sharded  # noqa: E402
import longrec.models.lmn as lmn  # noqa: E402

MODULES = (pkm, sharded, lmn)  # every module that calls unique_ids
UNIQUE_IDS = pkm.unique_ids


def torch_unique(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.unique(ids, return_inverse=True)


def use(dedupe) -> None:
    for module in MODULES:
        module.unique_ids = dedupe


@torch.no_grad()
def measure(length: int, rounds: int, repeats: int) -> dict:
    slots: list[int] = []
    scorer, user_batch, candidate_batch = ranker_scorer("lmn", length, on_gather=slots.append)
    model = scorer.model

    def reads_with(dedupe):
        def run():
            use(dedupe)
            return model.request_reads(user_batch, candidate_batch)

        return run

    numpy_reads, torch_reads = reads_with(UNIQUE_IDS), reads_with(torch_unique)
    expected = torch_reads()
    slots.clear()
    got = numpy_reads()
    distinct = list(slots)  # one request's distinct slots per shard
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    medians = timed({"unique_ids": (1, numpy_reads), "torch.unique": (1, torch_reads)}, rounds, repeats)
    use(UNIQUE_IDS)
    return {
        "history_length": length,
        "candidates": 100,
        "distinct_slots_per_shard": distinct,
        "reads_ms_unique_ids": medians["unique_ids"],
        "reads_ms_torch_unique": medians["torch.unique"],
        "speedup": round(medians["torch.unique"] / medians["unique_ids"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = rows_by_length(lambda length: measure(length, args.rounds, args.repeats), args.lengths)
    if args.json:
        write_results(args.json, "lmn_unique_ids.py", None, rows, weights="random, query biases zeroed")


if __name__ == "__main__":
    main()
