"""LMN serving: each request's memory reads with the row axis looked up in a per-item table
(``LMN.cache_item_rows``, what the ranker does) against computing it per request, in process.

A served LMN request reads the memory for every history item and every candidate. With the split query
the row half of a read depends on the item alone, so its top-K rows against the r row sub-keys are a
table over the item vocabulary once the weights are frozen. This times, for LMN with 1,048,576 slots
(r = 1024, K = 16) and 100 candidates at several L: (a) ``request_reads`` (all the request's reads,
value rows from two in-process shards) and (b) the whole ``ModelScorer.score`` the ranker runs (the
reads in a helper thread beside the fused-kernel attention), each without and with the table, at 1 and
2 torch threads. Variants alternate in rounds (the machine is shared: load hits all alike); each keeps
the median of its round medians. Prints the ratios measured in this run, and checks the two paths give
the same scores.

Random weights, with the query projections' biases zeroed: a fresh model's biases dominate its item
term, so every item would pick the same rows and a request would touch ~250 distinct slots; zeroed,
requests touch thousands, as a trained model's do (the count is printed).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_item_rows.py \\
        --json benchmarks/results/lmn_item_rows.json
"""

from __future__ import annotations

import argparse
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from din_attention_cpu import rows_by_length, timed, write_results  # noqa: E402  (alternating rounds, median of medians)

N_ITEMS = 20_000
N_CANDIDATES = 100
SLOTS = 1_048_576


def omp_threads_of_this_thread(threads: int) -> None:
    """OpenMP keeps a thread count per thread: set the calling thread's only (torch.set_num_threads would
    also change the count every later thread starts with). Tried for the ranker's reads thread, not kept."""
    torch.get_num_threads()  # torch's lazy per-thread init first, or it would overwrite the count
    ctypes.CDLL(None).omp_set_num_threads(threads)  # torch's libgomp, loaded globally
    assert torch.get_num_threads() == threads


def ranker_scorer(name: str, length: int, on_gather=None):
    """The ranker's scorer (``ModelScorer``, fused attention on where the model has it, not compiled)
    around a random ``name`` model, and one request of 100 candidates with a full ``length`` history. LMN
    reads its memory from two in-process shards, with its query biases zeroed (module doc); ``on_gather``,
    if given, sees each shard call's slot count. Also used by ``attention_threads.py``."""
    from longrec.memory.sharded import ShardedMemory
    from longrec.models.registry import build_model
    from longrec.serving.demo import demo_spec
    from longrec.serving.features import UserFeatures, build_batches, trim_history_padding
    from longrec.serving.memory import MemoryIndex, RemoteShardedMemory
    from longrec.serving.ranker import ModelScorer

    torch.manual_seed(0)
    spec = demo_spec(n_users=200, n_items=N_ITEMS, max_history_length=length)
    model = build_model(name, spec, {"memory_slots": SLOTS} if name == "lmn" else {}).eval()
    scorer = ModelScorer.__new__(ModelScorer)  # the ranker's scorer around this in-memory model
    scorer.model, scorer.spec, scorer.name, scorer.tag = model, spec, name, "bench"
    scorer.enable_fused_attention()
    if name == "lmn":
        with torch.no_grad():
            model.query.item_projection.bias.zero_()
            model.query.user_projection.bias.zero_()
        local = ShardedMemory.from_memory(model.memory, 2)
        index = MemoryIndex(
            local.config, local.row_keys, local.col_keys, [{"start": a, "stop": b} for a, b in local.ranges]
        )

        def client(shard: int):
            start, values = local.ranges[shard][0], local.shards[shard].numpy()

            def gather(slots: np.ndarray) -> np.ndarray:
                if on_gather is not None:
                    on_gather(len(slots))
                return values[slots - start]

            return gather

        scorer.attach_memory(RemoteShardedMemory(index, [client(0), client(1)], timeout_s=30))
    rng = np.random.default_rng(0)
    user = UserFeatures(
        rng.integers(1, N_ITEMS, length),
        np.arange(length, dtype=np.int64),
        {"user_age": 1, "user_gender": 1, "user_occupation": 1},
        found=True,
    )
    candidates = rng.choice(np.arange(1, N_ITEMS), N_CANDIDATES, replace=False)
    user_batch, candidate_batch = build_batches(
        spec, 3, user, candidates, np.zeros(N_CANDIDATES, np.int64), request_time=length
    )
    return scorer, trim_history_padding(user_batch), candidate_batch


def measure(length: int, rounds: int, repeats: int, reads_pool: bool = False) -> dict:
    distinct: list[int] = []
    scorer, user_batch, candidate_batch = ranker_scorer("lmn", length, on_gather=distinct.append)
    model = scorer.model
    table = model._item_rows  # built by attach_memory, as served

    def with_table(on: bool, call):
        def run():
            model._item_rows = table if on else None
            with torch.no_grad():
                call()

        return run

    with torch.no_grad():
        model._item_rows = None
        expected = scorer.score(user_batch, candidate_batch)
        model._item_rows = table
        distinct.clear()
        got = scorer.score(user_batch, candidate_batch)
    slots_touched = sum(distinct)
    variants = {}
    for threads in (1, 2):
        for on in (False, True):
            suffix = f"{'table' if on else 'computed'}_t{threads}"
            variants[f"reads_{suffix}"] = (
                threads,
                with_table(on, lambda: model.request_reads(user_batch, candidate_batch)),
            )
            variants[f"score_{suffix}"] = (
                threads,
                with_table(on, lambda: scorer.score(user_batch, candidate_batch)),
            )
    if reads_pool:  # the ranker's reads thread on 1 or 2 OpenMP threads, the request thread on 2
        for omp in (1, 2):
            pool = ThreadPoolExecutor(4, initializer=omp_threads_of_this_thread, initargs=(omp,))

            def score_with(pool=pool):
                default, scorer._reads_pool, model._item_rows = scorer._reads_pool, pool, table
                try:
                    with torch.no_grad():
                        scorer.score(user_batch, candidate_batch)
                finally:
                    scorer._reads_pool = default  # the other variants keep the ranker's own pool

            variants[f"score_table_t2_reads_omp{omp}"] = (2, score_with)
    ms = timed(variants, rounds, repeats)
    row = {
        "L": length,
        "candidates": N_CANDIDATES,
        "slots": SLOTS,
        "distinct_slots_per_request": slots_touched,
        "table_mb": round(sum(t.numel() * t.element_size() for t in table) / 2**20, 1),
        "max_abs_score_difference": float(np.abs(got - expected).max()),
        **ms,
    }
    for threads in (1, 2):
        for part in ("reads", "score"):
            row[f"{part}_speedup_t{threads}"] = round(
                ms[f"{part}_computed_t{threads}"] / ms[f"{part}_table_t{threads}"], 2
            )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--reads-pool-threads",
        action="store_true",
        help="also time the ranker's score with its reads thread on 1 and on 2 OpenMP threads (an idea "
        "tried and not kept: benchmarks/results/reads_one_omp_thread/)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = rows_by_length(
        lambda length: measure(length, args.rounds, args.repeats, args.reads_pool_threads), args.lengths
    )
    print("\n| L | threads | reads: computed | table | ratio | ranker score: computed | table | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for t in (1, 2):
            print(
                f"| {r['L']} | {t} | {r[f'reads_computed_t{t}']:.2f} ms | {r[f'reads_table_t{t}']:.2f} ms | "
                f"{r[f'reads_speedup_t{t}']:.2f}x | {r[f'score_computed_t{t}']:.2f} ms | "
                f"{r[f'score_table_t{t}']:.2f} ms | {r[f'score_speedup_t{t}']:.2f}x |"
            )
    if args.json:
        write_results(
            args.json,
            "lmn_item_rows.py",
            argv,
            rows,
            weights="random, query biases zeroed (see the module doc)",
        )
    return rows


if __name__ == "__main__":
    main()
