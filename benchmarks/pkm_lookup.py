"""Lookup time per query vs memory size: product-key (two-axis top-K) vs dense (score every slot).

For each size n = r² the product-key lookup scores r row and r column sub-keys, keeps the top-K of each,
the top-K of the K×K grid, and gathers with ``F.embedding_bag``: the library path LMN runs
(``axis_topk`` per axis, then ``pkm_read``); the dense lookup scores all n full keys
[K_row[i]; K_col[j]] and takes the top-K. Both return the same slots (checked on the dense subset).
Prints a table and the 1M/16K time ratios of both, measured in this run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/pkm_lookup.py            # CPU, 2 threads
    .venv/bin/python benchmarks/pkm_lookup.py --device cuda                       # Triton read on GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longrec.kernels.pkm import pkm_read  # noqa: E402
from longrec.memory.product_keys import axis_topk  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pkm_lookup_once(row_q, col_q, row_keys, col_keys, values, k: int, backend: str):
    """Product-key lookup (one head): per-axis scores and sorted top-K, then grid top-K + softmax + gather."""
    row_top, row_idx = axis_topk(row_q[:, None], row_keys[None], k)
    col_top, col_idx = axis_topk(col_q[:, None], col_keys[None], k)
    out, slots, _ = pkm_read(row_top, row_idx, col_top, col_idx, values, row_keys.shape[0], backend=backend)
    return out, slots


def dense_lookup_once(dense_q, full_keys, values, k: int, chunk: int):
    """Dense lookup: score every full key, top-K, softmax + gather; queries in chunks to bound memory."""
    outs, picked = [], []
    for start in range(0, len(dense_q), chunk):
        top, idx = (dense_q[start : start + chunk] @ full_keys.T).topk(k, dim=-1)
        outs.append(F.embedding_bag(idx, values, per_sample_weights=torch.softmax(top, -1), mode="sum"))
        picked.append(idx)
    return torch.cat(outs), torch.cat(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--dense-queries", type=int, default=256, help="queries timed for the dense lookup")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--half-width", type=int, default=32, help="d_k/2: width of a row or column sub-key")
    parser.add_argument("--value-dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--output", type=Path, default=RESULTS / "pkm_lookup.json")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU here")
    if device.type == "cuda" and args.dense_queries == 256:
        args.dense_queries = args.queries
    torch.set_num_threads(args.threads)
    backend = "triton" if device.type == "cuda" else "reference"
    gen = torch.Generator().manual_seed(0)
    half, k = args.half_width, args.k
    rows_out = []
    print(f"device={device} threads={args.threads} queries={args.queries} K={k} d_k/2={half} "
          f"d_v={args.value_dim} backend={backend} dense timed on {args.dense_queries} queries")  # fmt: skip
    print(f"{'slots':>9} {'r':>5} {'pkm µs/q':>9} {'dense µs/q':>11} {'dense/pkm':>9}")
    for slots in args.slots:
        r = int(round(slots**0.5))
        row_keys = torch.randn(r, half, generator=gen).to(device)
        col_keys = torch.randn(r, half, generator=gen).to(device)
        values = torch.randn(slots, args.value_dim, generator=gen).to(device)
        row_q = torch.randn(args.queries, half, generator=gen).to(device)
        col_q = torch.randn(args.queries, half, generator=gen).to(device)

        # Dense: the r² full keys [K_row[i]; K_col[j]], scored in query chunks to bound memory.
        full_keys = torch.cat([row_keys.repeat_interleave(r, 0), col_keys.repeat(r, 1)], dim=1)
        dense_q = torch.cat([row_q, col_q], dim=1)[: args.dense_queries]
        chunk = max(1, min(len(dense_q), (1 << 26) // slots))

        pkm = partial(pkm_lookup_once, row_q, col_q, row_keys, col_keys, values, k, backend)
        dense = partial(dense_lookup_once, dense_q, full_keys, values, k, chunk)
        with torch.no_grad():
            pkm_s = timed(pkm, args.repeats, device)
            dense_s = timed(dense, max(1, args.repeats // 2), device)
            same = torch.equal(pkm()[1][: args.dense_queries, 0].sort(-1).values, dense()[1].sort(-1).values)
        row = {
            "slots": slots,
            "r": r,
            "pkm_us_per_query": pkm_s / args.queries * 1e6,
            "dense_us_per_query": dense_s / len(dense_q) * 1e6,
            "same_slots_as_dense": bool(same),
        }
        rows_out.append(row)
        print(f"{slots:>9} {r:>5} {row['pkm_us_per_query']:>9.2f} {row['dense_us_per_query']:>11.1f} "
              f"{row['dense_us_per_query'] / row['pkm_us_per_query']:>9.1f}  same slots: {same}", flush=True)  # fmt: skip
    by_slots = {row["slots"]: row for row in rows_out}
    summary = {}
    if 1048576 in by_slots and 16384 in by_slots:
        big, small = by_slots[1048576], by_slots[16384]
        summary = {
            "pkm_ratio_1M_over_16K": big["pkm_us_per_query"] / small["pkm_us_per_query"],
            "dense_ratio_1M_over_16K": big["dense_us_per_query"] / small["dense_us_per_query"],
            "pkm_us_per_query_1M": big["pkm_us_per_query"],
        }
        print(f"1M/16K time ratio: product-key {summary['pkm_ratio_1M_over_16K']:.2f}x, "
              f"dense {summary['dense_ratio_1M_over_16K']:.1f}x; product-key at 1M: "
              f"{summary['pkm_us_per_query_1M']:.2f} µs/query")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {"settings": settings, "device": str(device), "backend": backend, "rows": rows_out, **summary}
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
