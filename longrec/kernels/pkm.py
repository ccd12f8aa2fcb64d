"""Product-key memory read: two-axis top-K over a K×K grid, softmax, weighted value gather (LMN, §4).

Inputs are the per-axis top-K, sorted descending, as ``torch.topk`` returns them (``two_axis_topk``),
shaped [Q, H, K] (queries, heads, K). The fused step forms the K×K grid of summed scores per (query, head),
keeps its top K, softmaxes their scores and reads Σ_k w_k V[slot_k], summing the heads: out [Q, D].

``pkm_read_reference`` is the pure-torch version (``torch.topk`` + ``F.embedding_bag``, sparse gradients
for the value table if asked). ``pkm_read_triton`` is a Triton kernel doing the grid top-K, softmax and
gather in registers (forward) and, backward, the scores' gradients plus a scatter-add (atomic) into the
selected value rows (dense) or the per-slot rows of a sparse COO gradient. ``pkm_read`` dispatches:
Triton on CUDA tensors, the reference on CPU. The kernel also runs on CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longrec.kernels import record_backend

try:  # triton is optional on CPU-only installs; the reference path never needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

__all__ = [
    "brute_force_topk",
    "grid_candidates",
    "pkm_lookup",
    "pkm_read",
    "pkm_read_reference",
    "pkm_read_triton",
    "sorted_topk",
    "take",
    "unique_ids",
    "two_axis_topk",
]

Backend = Literal["auto", "reference", "triton"]


# Members per group in ``sorted_topk``'s first stage (measured best of 4, 8, 16 at r = 1024, k = 32).
_GROUP_MEMBERS = 8


def sorted_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` along the last axis, sorted descending: ``scores.topk(k)``, faster for long rows on CPU.

    ``torch.topk`` on CPU runs a selection per row that costs ~7 µs for r = 1024 (single thread), the
    largest part of a million-slot lookup. For rows of at least 8k scores on CPU this selects in two
    stages instead: split the row into 8 strided slices, keep the k columns whose maximum over the slices
    is largest, then take the top-k of those 8k candidates. Exact: each of the top-k scores is the
    maximum of its column or below it, and at most k column maxima can reach the k-th score, so the
    chosen columns hold all of the top k (up to ties). ~1.6× faster at r = 1024, k = 32 (3.5 → 2.2 µs per
    row with 2 threads); gradients flow as through ``topk``.
    """
    n = scores.shape[-1]
    if scores.device.type != "cpu" or n < _GROUP_MEMBERS * k or n % _GROUP_MEMBERS:
        return scores.topk(k, dim=-1)
    width = n // _GROUP_MEMBERS
    # Column c of the [..., 8, width] view holds scores c, c + width, ...: a max over the 8 slices is
    # an elementwise max of contiguous rows, which vectorises (a max over contiguous groups does not).
    grouped = scores.unflatten(-1, (_GROUP_MEMBERS, width))
    columns = grouped.amax(dim=-2).topk(k, dim=-1, sorted=False).indices  # [..., k]
    candidates = grouped.gather(-1, columns.unsqueeze(-2).expand(*grouped.shape[:-1], k))  # [..., 8, k]
    top, position = candidates.flatten(-2).topk(k, dim=-1)
    return top, columns.gather(-1, position % k) + (position // k) * width


def two_axis_topk(row_scores: Tensor, col_scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``k`` of row scores and of column scores separately: four [..., k] tensors (scores, indices)."""
    row_top, row_idx = sorted_topk(row_scores, k)
    col_top, col_idx = sorted_topk(col_scores, k)
    return row_top, row_idx, col_top, col_idx


def brute_force_topk(row_scores: Tensor, col_scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` over all r² slots (slot = row·r + col, score = row + col); the test oracle. [..., k]."""
    full = (row_scores.unsqueeze(-1) + col_scores.unsqueeze(-2)).flatten(-2)  # [..., r*r]
    scores, slots = full.topk(k, dim=-1)
    return scores, slots


_CANDIDATES: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def grid_candidates(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Grid cells (a, b) with (a + 1)(b + 1) ≤ k: the only cells that can be in the top-k of a sorted grid.

    With both axes sorted descending, cell (a, b) is beaten or tied by the (a + 1)(b + 1) cells (a', b')
    with a' ≤ a and b' ≤ b, so it can only make the top-k when (a + 1)(b + 1) ≤ k: about k·ln k cells
    (119 for k = 32) instead of k² (1,024).
    """
    key = (k, str(device))
    if key not in _CANDIDATES:
        cells = [(a, b) for a in range(k) for b in range(k // (a + 1))]
        rows = torch.tensor([a for a, _ in cells], dtype=torch.int64, device=device)
        cols = torch.tensor([b for _, b in cells], dtype=torch.int64, device=device)
        _CANDIDATES[key] = (rows, cols)
    return _CANDIDATES[key]


def take(tensor: Tensor, dim: int, index: Tensor) -> Tensor:
    """``tensor`` indexed by the 1-D ``index`` along ``dim``. Without autograd this is ``index_select``,
    several times faster on CPU than advanced indexing (aten::index, the largest cost of a served LMN
    request's reads); with autograd, advanced indexing, whose backward is deterministic on CUDA too."""
    if tensor.requires_grad and torch.is_grad_enabled():
        return tensor[(slice(None),) * (dim % tensor.dim()) + (index,)]
    return tensor.index_select(dim, index)


def unique_ids(ids: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique(ids, return_inverse=True)`` of a 1-D tensor of ids: (sorted distinct ids, each id's
    index among them). For non-negative int64 ids on CPU, sorts with numpy instead: each id shifted left
    with its position in the low bits, one vectorised sort of those keys, then a pass that numbers the
    runs. numpy's sort is vectorised and torch's CPU sort is not: a served LMN request's reads at L=1000
    (~17,600 slot ids to deduplicate) took 2.32 against 2.79 ms (``benchmarks/lmn_unique_ids.py``).
    Exact: the same two tensors."""
    n = ids.numel()
    plain = ids.device.type == "cpu" and ids.dtype == torch.int64 and ids.dim() == 1 and n > 0
    # A compiled graph keeps torch's op: dynamo would trace the numpy code into torch ops.
    if not plain or torch.compiler.is_compiling():
        return torch.unique(ids, return_inverse=True)
    values = np.ascontiguousarray(ids.numpy())
    bits = max((n - 1).bit_length(), 1)  # a position fits in the low ``bits`` bits
    if int(values.min()) < 0 or int(values.max()) >= 1 << (63 - bits):
        return torch.unique(ids, return_inverse=True)
    keys = (values << bits) | np.arange(n, dtype=np.int64)
    keys.sort()
    ordered = keys >> bits
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[keys & ((1 << bits) - 1)] = np.cumsum(starts, dtype=np.int64) - 1
    return torch.from_numpy(ordered[starts]), torch.from_numpy(inverse)


def _grid_topk(row_top: Tensor, row_idx: Tensor, col_top: Tensor, col_idx: Tensor, n_rows: int):
    """Top-K of the K×K grid of summed scores: (scores [..., K], slots [..., K]).

    Expects each axis' top-K sorted descending (``torch.topk``'s default) and only scores the
    ``grid_candidates`` cells.
    """
    k = row_top.shape[-1]
    cand_rows, cand_cols = grid_candidates(k, row_top.device)
    scores, position = (take(row_top, -1, cand_rows) + take(col_top, -1, cand_cols)).topk(k, dim=-1)
    rows = row_idx.gather(-1, cand_rows[position])
    cols = col_idx.gather(-1, cand_cols[position])
    return scores, rows * n_rows + cols


def select_slots(
    row_top: Tensor, row_idx: Tensor, col_top: Tensor, col_idx: Tensor, n_rows: int
) -> tuple[Tensor, Tensor]:
    """The read's selection step, public for readers that fetch value rows themselves (a sharded memory):
    (softmax weights [..., K], slot ids [..., K]) of the top-K cells of the two-axis grid."""
    scores, slots = _grid_topk(row_top, row_idx, col_top, col_idx, n_rows)
    return torch.softmax(scores, dim=-1), slots


def combine_distinct_rows(weights: Tensor, rows: Tensor, inverse: Tensor) -> Tensor:
    """Σ over heads and slots of weight · value row, for a reader that fetched each distinct slot once:
    weights [Q, H, K], rows [U, D] of the U distinct slots, inverse [Q, H, K] (each selection's row in
    ``rows``) → [Q, D]. One ``embedding_bag`` pass gathers and sums: the [Q, H, K, D] rows of every
    selection are never built. The reference read passes the whole value table with the slot ids."""
    q = weights.shape[0]
    return F.embedding_bag(
        inverse.reshape(q, -1), rows, per_sample_weights=weights.reshape(q, -1).to(rows.dtype), mode="sum"
    )


def pkm_read_reference(
    row_top: Tensor,
    row_idx: Tensor,
    col_top: Tensor,
    col_idx: Tensor,
    values: Tensor,
    n_rows: int,
    sparse_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch read: inputs [Q, H, K]; returns (out [Q, D] summed over heads, slots, weights [Q, H, K])."""
    weights, slots = select_slots(row_top, row_idx, col_top, col_idx, n_rows)
    if sparse_grad and torch.is_grad_enabled() and values.requires_grad:
        q = slots.shape[0]
        flat_slots, flat_weights = slots.reshape(q, -1), weights.reshape(q, -1).to(values.dtype)
        return _WeightedBagSparseGrad.apply(values, flat_slots, flat_weights), slots, weights
    # The value table is every slot's row, so a slot id is its row's index.
    return combine_distinct_rows(weights, values, slots), slots, weights


class _WeightedBagSparseGrad(torch.autograd.Function):
    """``embedding_bag(mode="sum")`` whose sparse value-table gradient has one row per distinct slot.

    ``F.embedding_bag(sparse=True)`` emits one gradient row per (query, slot) and the sparse optimiser
    then coalesces them (a generic sort, the largest single cost of an LMN step on CPU); summing rows per
    distinct slot with ``unique`` + ``index_add_`` here is about twice as fast, and leaves coalesce only a
    sorted, duplicate-free index to check.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, slots: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(values, slots, weights)
        return F.embedding_bag(slots, values, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        values, slots, weights = ctx.saved_tensors
        grad_weights = None
        if ctx.needs_input_grad[2]:
            grad_weights = torch.bmm(F.embedding(slots, values), grad_out.unsqueeze(-1)).squeeze(-1)
        grad_values = None
        if ctx.needs_input_grad[0]:
            distinct, inverse = unique_ids(slots.reshape(-1))
            rows = (weights.unsqueeze(-1) * grad_out.unsqueeze(1)).reshape(-1, values.shape[1])
            summed = rows.new_zeros(len(distinct), values.shape[1]).index_add_(0, inverse, rows)
            grad_values = torch.sparse_coo_tensor(
                distinct.unsqueeze(0), summed, values.shape, is_coalesced=True, check_invariants=False
            )
        return grad_values, None, grad_weights


if triton is not None:

    @triton.jit
    def _pkm_forward_kernel(
        row_top_ptr,
        row_idx_ptr,
        col_top_ptr,
        col_idx_ptr,
        values_ptr,
        out_ptr,
        slots_ptr,
        weights_ptr,
        sel_row_ptr,
        sel_col_ptr,
        K,
        D,
        n_rows,
        stride_v,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        m = tl.program_id(0)
        ka = tl.arange(0, BLOCK_K)
        kvalid = ka < K
        rs = tl.load(row_top_ptr + m * K + ka, mask=kvalid, other=float("-inf")).to(tl.float32)
        cs = tl.load(col_top_ptr + m * K + ka, mask=kvalid, other=float("-inf")).to(tl.float32)
        flat = tl.reshape(rs[:, None] + cs[None, :], [BLOCK_K * BLOCK_K])
        pos = tl.arange(0, BLOCK_K * BLOCK_K)
        sel_scores = tl.full([BLOCK_K], float("-inf"), tl.float32)
        sel_pos = tl.zeros([BLOCK_K], tl.int32)
        # K rounds of argmax: K·K² work per row, all in registers; K ≤ 64 in practice.
        for k in range(0, K):
            best = tl.max(flat, axis=0)
            arg = tl.argmax(flat, axis=0)
            sel_scores = tl.where(ka == k, best, sel_scores)
            sel_pos = tl.where(ka == k, arg, sel_pos)
            flat = tl.where(pos == arg, float("-inf"), flat)
        top = tl.max(tl.where(kvalid, sel_scores, float("-inf")), axis=0)
        e = tl.where(kvalid, tl.exp(sel_scores - top), 0.0)
        w = e / tl.sum(e, axis=0)
        a = sel_pos // BLOCK_K
        b = sel_pos % BLOCK_K
        rows = tl.load(row_idx_ptr + m * K + a, mask=kvalid, other=0)
        cols = tl.load(col_idx_ptr + m * K + b, mask=kvalid, other=0)
        slots = rows.to(tl.int64) * n_rows + cols.to(tl.int64)
        tl.store(slots_ptr + m * K + ka, slots, mask=kvalid)
        tl.store(weights_ptr + m * K + ka, w, mask=kvalid)
        tl.store(sel_row_ptr + m * K + ka, a, mask=kvalid)
        tl.store(sel_col_ptr + m * K + ka, b, mask=kvalid)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            dvalid = offs < D
            v = tl.load(
                values_ptr + slots[:, None] * stride_v + offs[None, :],
                mask=kvalid[:, None] & dvalid[None, :],
                other=0.0,
            ).to(tl.float32)
            acc = tl.sum(w[:, None] * v, axis=0)
            tl.store(out_ptr + m * D + offs, acc, mask=dvalid)

    @triton.jit
    def _pkm_backward_kernel(
        grad_out_ptr,
        values_ptr,
        slots_ptr,
        weights_ptr,
        sel_row_ptr,
        sel_col_ptr,
        grad_row_ptr,
        grad_col_ptr,
        grad_values_ptr,
        K,
        D,
        H,
        stride_v,
        DENSE: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        m = tl.program_id(0)
        q = m // H  # heads of one query share its output gradient
        ka = tl.arange(0, BLOCK_K)
        kvalid = ka < K
        w = tl.load(weights_ptr + m * K + ka, mask=kvalid, other=0.0)
        slots = tl.load(slots_ptr + m * K + ka, mask=kvalid, other=0)
        grad_w = tl.zeros([BLOCK_K], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            dvalid = offs < D
            both = kvalid[:, None] & dvalid[None, :]
            go = tl.load(grad_out_ptr + q * D + offs, mask=dvalid, other=0.0).to(tl.float32)
            v = tl.load(values_ptr + slots[:, None] * stride_v + offs[None, :], mask=both, other=0.0)
            grad_w += tl.sum(v.to(tl.float32) * go[None, :], axis=1)
            rows = w[:, None] * go[None, :]
            if DENSE:
                # Scatter-add into the selected value rows; slots repeat across queries, hence atomics.
                tl.atomic_add(grad_values_ptr + slots[:, None] * D + offs[None, :], rows, mask=both)
            else:
                tl.store(grad_values_ptr + (m * K + ka[:, None]) * D + offs[None, :], rows, mask=both)
        # Softmax backward, then each selected grid cell's gradient goes to its row and its column score.
        grad_s = w * (grad_w - tl.sum(w * grad_w, axis=0))
        a = tl.load(sel_row_ptr + m * K + ka, mask=kvalid, other=-1)
        b = tl.load(sel_col_ptr + m * K + ka, mask=kvalid, other=-1)
        grad_row = tl.sum(tl.where(a[:, None] == ka[None, :], grad_s[:, None], 0.0), axis=0)
        grad_col = tl.sum(tl.where(b[:, None] == ka[None, :], grad_s[:, None], 0.0), axis=0)
        tl.store(grad_row_ptr + m * K + ka, grad_row, mask=kvalid)
        tl.store(grad_col_ptr + m * K + ka, grad_col, mask=kvalid)


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(d), 64)


class _PKMReadFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton forward and backward kernels; slots and weights are outputs only."""

    @staticmethod
    def forward(
        ctx: Any,
        row_top: Tensor,
        col_top: Tensor,
        values: Tensor,
        row_idx: Tensor,
        col_idx: Tensor,
        n_rows: int,
        sparse_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        q, h, k = row_top.shape
        d = values.shape[1]
        m = q * h
        rt, ct = row_top.reshape(m, k).float().contiguous(), col_top.reshape(m, k).float().contiguous()
        ri, ci = row_idx.reshape(m, k).contiguous(), col_idx.reshape(m, k).contiguous()
        values_c = values.contiguous()
        device = values.device
        out = torch.empty(m, d, device=device, dtype=torch.float32)
        slots = torch.empty(m, k, device=device, dtype=torch.int64)
        weights = torch.empty(m, k, device=device, dtype=torch.float32)
        sel_row = torch.empty(m, k, device=device, dtype=torch.int32)
        sel_col = torch.empty(m, k, device=device, dtype=torch.int32)
        if m > 0:
            _pkm_forward_kernel[(m,)](
                rt, ri, ct, ci, values_c, out, slots, weights, sel_row, sel_col,
                k, d, n_rows, values_c.stride(0),
                BLOCK_K=triton.next_power_of_2(k), BLOCK_D=_block_d(d),
            )  # fmt: skip
        ctx.save_for_backward(values_c, slots, weights, sel_row, sel_col)
        ctx.shape = (q, h, k, d)
        ctx.sparse_grad = sparse_grad
        ctx.dtypes = (row_top.dtype, col_top.dtype)
        ctx.mark_non_differentiable(slots, weights)
        out = out.view(q, h, d).sum(1).to(values.dtype)
        return out, slots.view(q, h, k), weights.view(q, h, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        values, slots, weights, sel_row, sel_col = ctx.saved_tensors
        q, h, k, d = ctx.shape
        m = q * h
        grad_out = grad_out.float().contiguous()
        grad_row = torch.zeros(m, k, device=values.device, dtype=torch.float32)
        grad_col = torch.zeros_like(grad_row)
        dense = not ctx.sparse_grad
        if dense:
            grad_values = torch.zeros(values.shape, device=values.device, dtype=torch.float32)
        else:
            grad_values = torch.empty(m * k, d, device=values.device, dtype=torch.float32)
        if m > 0:
            _pkm_backward_kernel[(m,)](
                grad_out, values, slots, weights, sel_row, sel_col, grad_row, grad_col, grad_values,
                k, d, h, values.stride(0),
                DENSE=dense, BLOCK_K=triton.next_power_of_2(k), BLOCK_D=_block_d(d),
            )  # fmt: skip
        if dense:
            grad_v = grad_values.to(values.dtype)
        else:
            grad_v = torch.sparse_coo_tensor(
                slots.reshape(1, -1), grad_values.to(values.dtype), values.shape, check_invariants=False
            )
        grad_row_top = grad_row.view(q, h, k).to(ctx.dtypes[0])
        grad_col_top = grad_col.view(q, h, k).to(ctx.dtypes[1])
        return grad_row_top, grad_col_top, grad_v, None, None, None, None


def pkm_read_triton(
    row_top: Tensor,
    row_idx: Tensor,
    col_top: Tensor,
    col_idx: Tensor,
    values: Tensor,
    n_rows: int,
    sparse_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton read, same contract as ``pkm_read_reference`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if triton is None:  # pragma: no cover
        raise RuntimeError("triton is not installed")
    return _PKMReadFunction.apply(row_top, col_top, values, row_idx, col_idx, n_rows, sparse_grad)


def pkm_read(
    row_top: Tensor,
    row_idx: Tensor,
    col_top: Tensor,
    col_idx: Tensor,
    values: Tensor,
    n_rows: int,
    sparse_grad: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Grid top-K + softmax + weighted gather; ``auto`` = Triton on CUDA tensors, the reference on CPU."""
    if backend == "auto":
        backend = "triton" if values.is_cuda and triton is not None else "reference"
    record_backend("pkm_read", backend)
    if backend == "triton":
        return pkm_read_triton(row_top, row_idx, col_top, col_idx, values, n_rows, sparse_grad)
    if backend == "reference":
        return pkm_read_reference(row_top, row_idx, col_top, col_idx, values, n_rows, sparse_grad)
    raise ValueError(f"unknown backend {backend!r}; choose auto, reference or triton")


def pkm_lookup(
    row_scores: Tensor,
    col_scores: Tensor,
    values: Tensor,
    k: int,
    sparse_grad: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Full two-axis activation from row/column scores [Q, H, r]: (out [Q, D], slots, weights [Q, H, K])."""
    n_rows = row_scores.shape[-1]
    row_top, row_idx, col_top, col_idx = two_axis_topk(row_scores, col_scores, k)
    return pkm_read(row_top, row_idx, col_top, col_idx, values, n_rows, sparse_grad, backend)
