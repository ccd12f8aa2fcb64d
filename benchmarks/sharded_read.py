"""LMN's served memory read, as the ranker runs it per request (``RemoteShardedMemory.read_topk``), against
the same read as it ran until 2026-12-03, in process.

A served LMN request reads the memory for every history item and every candidate: Q = L + 100 reads of
K slots each. After the two-axis selection the ranker fetches each distinct slot once from its shard, one
call per shard in a thread pool. Both variants here run that, with in-process shard clients (numpy rows of a
1,048,576-slot table in 2 shards; K = 16, d_v = 32, one head: the LMN the serving benchmark serves), so only
the ranker's own work is timed, not HTTP:

- ``before`` (the read until 2026-12-03, kept here as ``BeforeRemoteMemory``): each distinct slot's shard
  by ``bucketize``, each shard's slots by a mask and ``nonzero``, their rows written back by index, then
  every selection's row copied out, [Q, H, K, d_v], weighted and summed;
- ``after`` (``RemoteShardedMemory`` now): the sorted distinct slots cut into one run per shard, each
  shard's rows copied in as a block, and one ``embedding_bag`` over the distinct rows with each
  selection's row index and weight, so the [Q, H, K, d_v] copy is never built.

The queries are one request's: a random item half per read and one user half for all of them (one user
per request), so reads share columns and a request selects a few thousand distinct slots, as a trained
model's do (the count is printed). Variants alternate in rounds; each keeps the median of its round
medians. Prints the ratios measured in this run and the largest difference between the two reads.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/sharded_read.py --json benchmarks/results/sharded_read.json
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from din_attention_cpu import rows_by_length, timed, write_results  # noqa: E402  (alternating rounds, median of medians)

SLOTS = 1_048_576
CANDIDATES = 100


class BeforeRemoteMemory:
    """``RemoteShardedMemory`` with its read as it was until 2026-12-03 (the code, kept for comparison)."""

    @staticmethod
    def wrap(memory):
        from longrec.kernels.pkm import select_slots

        def gather(slots: torch.Tensor) -> torch.Tensor:
            flat = slots.reshape(-1)
            unique, inverse = torch.unique(flat, return_inverse=True)
            owner = torch.bucketize(unique, memory._bounds, right=True)
            rows = torch.zeros(len(unique), memory.config.value_dim, dtype=torch.float32)
            futures = {}
            for shard in range(memory.n_shards):
                here = (owner == shard).nonzero().squeeze(-1)
                if here.numel():
                    futures[shard] = (here, memory._pool.submit(memory._call, shard, unique[here].numpy()))
            for here, future in futures.values():
                rows[here] = torch.from_numpy(future.result(timeout=memory.timeout_s))
            return rows.index_select(0, inverse).view(*slots.shape, memory.config.value_dim)

        def read_topk(row_top, row_idx, col_top, col_idx) -> torch.Tensor:
            weights, slots = select_slots(row_top, row_idx, col_top, col_idx, memory.config.n_rows)
            return (weights.unsqueeze(-1) * gather(slots)).sum(dim=(1, 2))

        return read_topk


@torch.no_grad()
def measure(length: int, rounds: int, repeats: int) -> dict:
    from longrec.kernels.pkm import select_slots
    from longrec.memory import MemoryConfig, ProductKeyMemory
    from longrec.memory.sharded import ShardedMemory
    from longrec.serving.memory import MemoryIndex, RemoteShardedMemory

    torch.manual_seed(0)
    config = MemoryConfig(slots=SLOTS, key_dim=64, value_dim=32, top_k=16, heads=1)
    local = ShardedMemory.from_memory(ProductKeyMemory(config, sparse=False), 2)
    index = MemoryIndex(
        config, local.row_keys, local.col_keys, [{"start": a, "stop": b} for a, b in local.ranges]
    )

    def client(shard: int):
        start, values = local.ranges[shard][0], local.shards[shard].numpy()
        return lambda slots: values[slots - start]

    memory = RemoteShardedMemory(index, [client(0), client(1)], timeout_s=30)
    before_read = BeforeRemoteMemory.wrap(memory)
    reads = length + CANDIDATES
    half = config.key_dim // 2
    row_top, row_idx = memory.row_topk(torch.randn(reads, config.heads, half))  # one item half per read
    col_top, col_idx = memory.col_topk(torch.randn(1, config.heads, half).expand(reads, -1, -1))  # one user

    def before() -> torch.Tensor:
        return before_read(row_top, row_idx, col_top, col_idx)

    def after() -> torch.Tensor:
        return memory.read_topk(row_top, row_idx, col_top, col_idx)[0]

    _, slots = select_slots(row_top, row_idx, col_top, col_idx, config.n_rows)
    variants = {}
    for threads in (1, 2):
        variants[f"before_t{threads}"] = (threads, before)
        variants[f"after_t{threads}"] = (threads, after)
    ms = timed(variants, rounds, repeats)
    row = {
        "L": length,
        "reads": reads,
        "slots": SLOTS,
        "top_k": config.top_k,
        "selections": int(slots.numel()),
        "distinct_slots": int(torch.unique(slots).numel()),
        "max_abs_difference": float((before() - after()).abs().max()),
        **ms,
    }
    for threads in (1, 2):
        row[f"speedup_t{threads}"] = round(ms[f"before_t{threads}"] / ms[f"after_t{threads}"], 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = rows_by_length(lambda length: measure(length, args.rounds, args.repeats), args.lengths)
    print("\n| L | reads | distinct slots | threads | before | after | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for t in (1, 2):
            print(
                f"| {r['L']} | {r['reads']} | {r['distinct_slots']} | {t} | {r[f'before_t{t}']:.2f} ms | "
                f"{r[f'after_t{t}']:.2f} ms | {r[f'speedup_t{t}']:.2f}x |"
            )
    if args.json:
        write_results(args.json, "sharded_read.py", argv, rows)
    return rows


if __name__ == "__main__":
    main()
