"""The BD-LRU linear recurrence h_t = a_t ⊙ h_{t−1} + β_t (β = b ⊙ x), h_{−1} = 0, of RecBLR (MODELS.md §3).

Three implementations of one function, scanning along a chosen time dimension:

1. ``scan_reference`` — a serial torch loop under plain autograd: the ground truth for tests and the
   baseline of the speed benchmark.
2. ``LinearScanTorch`` — a ``torch.autograd.Function`` for CPU. The time axis is moved to the front and
   flattened to [L, N] rows; forward and backward (a reverse scan) are loops of one ``addcmul(out=)``
   per step into pre-allocated buffers, with no autograd graph. On CPU this moves the minimum number of
   bytes (it is memory-bound) and beats a chunked two-pass scan, which reads and writes every element
   2–3 times per pass; measured in ``benchmarks/scan_speed.py``. Pass time-major contiguous tensors
   (``dim=0``) to avoid a transposing copy.
3. ``LinearScanTriton`` — Triton kernels, forward and backward, for any length: each program owns a
   block of channels and walks the sequence in tiles of ``block_l`` steps, scanning each tile with
   ``tl.associative_scan`` over the combine (a₁, β₁)∘(a₂, β₂) = (a₁a₂, a₂β₁ + β₂) and carrying the
   last state into the next tile. fp32 or bf16 inputs, fp32 accumulation, outputs in the input dtype.

Backward (both fast versions): g_t = ∂h_t + a_{t+1} g_{t+1}; ∂β_t = g_t; ∂a_t = h_{t−1} g_t.
``linear_scan`` dispatches: CUDA tensors → Triton, anything else → the torch version.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "LinearScanTorch",
    "LinearScanTriton",
    "linear_scan",
    "scan_reference",
    "triton_available",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton", "reference"]


def scan_reference(a: Tensor, beta: Tensor, dim: int = 1) -> Tensor:
    """Serial h_t = a_t ⊙ h_{t−1} + β_t along ``dim`` under autograd (the ground truth; slow to train)."""
    _check_inputs(a, beta)
    a_steps = a.unbind(dim)
    beta_steps = beta.unbind(dim)
    state = torch.zeros_like(beta_steps[0]) if beta_steps else None
    outputs = []
    for a_t, beta_t in zip(a_steps, beta_steps, strict=True):
        state = torch.addcmul(beta_t, a_t, state)
        outputs.append(state)
    return torch.stack(outputs, dim=dim) if outputs else beta.clone()


def _check_inputs(a: Tensor, beta: Tensor) -> None:
    if a.shape != beta.shape:
        raise ValueError(f"a and beta must have the same shape, got {tuple(a.shape)} and {tuple(beta.shape)}")
    if a.device != beta.device:
        raise ValueError(f"a and beta must be on one device, got {a.device} and {beta.device}")


def _time_major_rows(x: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``x`` as a contiguous [L, N] tensor of ``dtype`` (a free view when it is already time-major)."""
    moved = x.movedim(dim, 0)
    return moved.to(dtype).contiguous().reshape(moved.shape[0], -1)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 inputs accumulate in fp32; fp32 and fp64 keep their precision (fp64 for gradcheck).
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _forward_rows(a: Tensor, beta: Tensor) -> Tensor:
    """h for [L, N] rows: one fused multiply-add per step, written straight into the output buffer."""
    h = torch.empty_like(beta)
    if h.shape[0] == 0:
        return h
    h_rows, a_rows, beta_rows = h.unbind(0), a.unbind(0), beta.unbind(0)
    h_rows[0].copy_(beta_rows[0])
    for t in range(1, len(h_rows)):
        torch.addcmul(beta_rows[t], a_rows[t], h_rows[t - 1], out=h_rows[t])
    return h


def _backward_rows(a: Tensor, h: Tensor, grad_h: Tensor) -> tuple[Tensor, Tensor]:
    """(∂a, ∂β) for [L, N] rows: the reverse scan g_t = ∂h_t + a_{t+1} g_{t+1}, then ∂a_t = h_{t−1} g_t."""
    g = torch.empty_like(grad_h)
    n_steps = g.shape[0]
    if n_steps == 0:
        return torch.zeros_like(a), g
    g_rows, a_rows, grad_rows = g.unbind(0), a.unbind(0), grad_h.unbind(0)
    g_rows[-1].copy_(grad_rows[-1])
    for t in range(n_steps - 2, -1, -1):
        torch.addcmul(grad_rows[t], a_rows[t + 1], g_rows[t + 1], out=g_rows[t])
    grad_a = torch.empty_like(a)
    grad_a[0].zero_()
    torch.mul(h[:-1], g[1:], out=grad_a[1:])
    return grad_a, g


class LinearScanTorch(torch.autograd.Function):
    """CPU scan along ``dim``: hand-written forward and reverse-scan backward, no per-step graph."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, beta: Tensor, dim: int) -> Tensor:
        dim = dim % a.dim()
        compute = _accumulation_dtype(beta.dtype)
        a_rows = _time_major_rows(a, dim, compute)
        h_rows = _forward_rows(a_rows, _time_major_rows(beta, dim, compute))
        ctx.save_for_backward(a_rows, h_rows)
        ctx.dim = dim
        ctx.moved_shape = beta.movedim(dim, 0).shape
        ctx.dtypes = (a.dtype, beta.dtype)
        return h_rows.reshape(ctx.moved_shape).movedim(0, dim).to(beta.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        a_rows, h_rows = ctx.saved_tensors
        grad_rows = _time_major_rows(grad_h, ctx.dim, a_rows.dtype)
        grad_a, grad_beta = _backward_rows(a_rows, h_rows, grad_rows)

        def back(rows: Tensor, dtype: torch.dtype) -> Tensor:
            return rows.reshape(ctx.moved_shape).movedim(0, ctx.dim).to(dtype)

        return back(grad_a, ctx.dtypes[0]), back(grad_beta, ctx.dtypes[1]), None


# --------------------------------------------------------------------------------------------- Triton
try:  # triton is optional: CPU-only installs without it still get the torch paths.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    _HAVE_TRITON = False


def triton_available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if not _HAVE_TRITON:
        return False
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.is_available()
    return os.environ.get("TRITON_INTERPRET") == "1"


if _HAVE_TRITON:

    @triton.jit
    def _combine(a_left, h_left, a_right, h_right):
        # Applying (a_left, h_left) then (a_right, h_right): h = a_right·h_left + h_right.
        return a_left * a_right, a_right * h_left + h_right

    @triton.jit
    def _scan_forward_kernel(
        a_ptr,
        beta_ptr,
        h_ptr,
        n_steps,
        n_channels,
        BLOCK_L: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # Inputs are contiguous [L, N]; this program owns channels [pid·BLOCK_N, (pid+1)·BLOCK_N).
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, BLOCK_L)
        channel_ok = offs_n < n_channels
        carry = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n_steps, BLOCK_L):
            offs_l = start + rows
            ok = (offs_l[:, None] < n_steps) & channel_ok[None, :]
            offsets = offs_l[:, None] * n_channels + offs_n[None, :]
            # Steps past the end get (a = 1, β = 0): they carry the state through unchanged.
            a = tl.load(a_ptr + offsets, mask=ok, other=1.0).to(tl.float32)
            beta = tl.load(beta_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            a_cum, h_local = tl.associative_scan((a, beta), 0, _combine)
            h = h_local + a_cum * carry[None, :]
            tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=ok)
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_L - 1, h, 0.0), axis=0)

    @triton.jit
    def _scan_backward_kernel(
        a_ptr,
        h_ptr,
        grad_h_ptr,
        grad_a_ptr,
        grad_beta_ptr,
        n_steps,
        n_channels,
        BLOCK_L: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # Reverse scan g_t = ∂h_t + a_{t+1}·g_{t+1}: tiles are loaded newest-first so it runs as a forward
        # scan over j, with t = n_steps − 1 − (tile start + j).
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, BLOCK_L)
        channel_ok = offs_n < n_channels
        carry = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n_steps, BLOCK_L):
            offs_t = n_steps - 1 - (start + rows)
            ok = (offs_t[:, None] >= 0) & channel_ok[None, :]
            next_ok = ok & (offs_t[:, None] + 1 < n_steps)
            prev_ok = ok & (offs_t[:, None] >= 1)
            offsets = offs_t[:, None] * n_channels + offs_n[None, :]
            coef = tl.load(a_ptr + offsets + n_channels, mask=next_ok, other=0.0).to(tl.float32)
            coef = tl.where(ok, coef, 1.0)
            grad = tl.load(grad_h_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            coef_cum, g_local = tl.associative_scan((coef, grad), 0, _combine)
            g = g_local + coef_cum * carry[None, :]
            h_prev = tl.load(h_ptr + offsets - n_channels, mask=prev_ok, other=0.0).to(tl.float32)
            tl.store(grad_beta_ptr + offsets, g.to(grad_beta_ptr.dtype.element_ty), mask=ok)
            tl.store(grad_a_ptr + offsets, (h_prev * g).to(grad_a_ptr.dtype.element_ty), mask=ok)
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_L - 1, g, 0.0), axis=0)


def _triton_launch_shape(n_channels: int, block_l: int | None, block_n: int | None) -> tuple[int, int]:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    # The interpreter pays per element, so tests use small tiles; on a GPU wider tiles fill the warps.
    block_l = block_l or (16 if interpreted else 64)
    block_n = block_n or (min(8, triton.next_power_of_2(n_channels)) if interpreted else 32)
    if block_l & (block_l - 1) or block_n & (block_n - 1):
        raise ValueError(f"block sizes must be powers of two, got block_l={block_l}, block_n={block_n}")
    return block_l, block_n


class LinearScanTriton(torch.autograd.Function):
    """Triton scan along ``dim``, forward and backward; any length, fp32/bf16 in, fp32 accumulation."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, beta: Tensor, dim: int, block_l: int | None = None, block_n: int | None = None
    ) -> Tensor:
        if not _HAVE_TRITON:
            raise RuntimeError("triton is not installed")
        dim = dim % a.dim()
        out_dtype = beta.dtype
        a_rows = _time_major_rows(a, dim, a.dtype)
        beta_rows = _time_major_rows(beta, dim, beta.dtype)
        n_steps, n_channels = beta_rows.shape
        h_rows = torch.empty_like(beta_rows, dtype=out_dtype)
        block_l, block_n = _triton_launch_shape(n_channels, block_l, block_n)
        grid = (triton.cdiv(max(n_channels, 1), block_n),)
        if n_steps and n_channels:
            _scan_forward_kernel[grid](a_rows, beta_rows, h_rows, n_steps, n_channels, block_l, block_n)
        ctx.save_for_backward(a_rows, h_rows)
        ctx.dim, ctx.blocks, ctx.grid = dim, (block_l, block_n), grid
        ctx.moved_shape = beta.movedim(dim, 0).shape
        ctx.dtypes = (a.dtype, beta.dtype)
        return h_rows.reshape(ctx.moved_shape).movedim(0, dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        a_rows, h_rows = ctx.saved_tensors
        grad_rows = _time_major_rows(grad_h, ctx.dim, grad_h.dtype)
        n_steps, n_channels = grad_rows.shape
        grad_a = torch.empty_like(a_rows, dtype=ctx.dtypes[0])
        grad_beta = torch.empty_like(a_rows, dtype=ctx.dtypes[1])
        if n_steps and n_channels:
            _scan_backward_kernel[ctx.grid](
                a_rows, h_rows, grad_rows, grad_a, grad_beta, n_steps, n_channels, *ctx.blocks
            )

        def back(rows: Tensor) -> Tensor:
            return rows.reshape(ctx.moved_shape).movedim(0, ctx.dim)

        return back(grad_a), back(grad_beta), None, None, None


def linear_scan(a: Tensor, beta: Tensor, dim: int = 1, backend: Backend = "auto") -> Tensor:
    """h_t = a_t ⊙ h_{t−1} + β_t along ``dim`` (h_{−1} = 0); same shape and dtype as ``beta``.

    ``backend="auto"`` runs Triton on CUDA tensors and the torch CPU version elsewhere; "triton" on CPU
    needs ``TRITON_INTERPRET=1`` (tests); "reference" is the slow serial autograd loop.
    """
    _check_inputs(a, beta)
    if backend == "auto":
        backend = "triton" if a.is_cuda and triton_available(a.device) else "torch"
    if backend == "reference":
        return scan_reference(a, beta, dim)
    if backend == "torch":
        return LinearScanTorch.apply(a, beta, dim)
    if backend == "triton":
        if not triton_available(a.device):
            raise RuntimeError("the Triton scan needs a CUDA tensor, or TRITON_INTERPRET=1 on CPU")
        return LinearScanTriton.apply(a, beta, dim)
    raise ValueError(f"unknown backend {backend!r}; choose auto, torch, triton or reference")
