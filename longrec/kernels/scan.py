"""The BD-LRU linear recurrence h_t = a_t ⊙ h_{t−1} + β_t (β = b ⊙ x), h_{−1} = 0, of RecBLR (MODELS.md §3).

Four implementations of one function, scanning along a chosen time dimension:

1. ``scan_reference`` — a serial torch loop under plain autograd: the ground truth for tests and the
   baseline of the speed benchmark.
2. ``LinearScanTorch`` — a ``torch.autograd.Function`` in pure torch ops on a free [outer, L, inner] view
   of the input (time in the middle, whatever ``dim``); forward and backward (a reverse scan) are loops of
   one ``addcmul(out=)`` per step into pre-allocated buffers, with no autograd graph. Its floor is per-op
   cost, not bandwidth: each of the ~2L ops pays ~2–3 µs of dispatch, and an op large enough to use both
   cores pays ~60 µs more to wake the second OpenMP thread under ``OMP_WAIT_POLICY=PASSIVE`` (measured on
   the 2-core machines). That is also why a chunked two-pass scan in torch ops is no faster here: it
   trades L small ops for ~4·√L large ones and moves every element 2–3 times.
3. ``LinearScanCpu`` — the same Function over a small C++ kernel (``scan_cpu.cpp``, built on first use by
   ``torch.utils.cpp_extension``: ~20 s, then cached per machine): one OpenMP region per pass, each thread
   walking the whole sequence for a block of channels, every element read and written once, large outputs
   written with streaming stores. The CPU default; (2) stands in where it cannot be built.
4. ``LinearScanTriton`` — Triton kernels, forward and backward, for any length: each program owns a
   block of channels and walks the sequence in tiles of ``block_l`` steps, scanning each tile with
   ``tl.associative_scan`` over the combine (a₁, β₁)∘(a₂, β₂) = (a₁a₂, a₂β₁ + β₂) and carrying the
   last state into the next tile. fp32 or bf16 inputs, fp32 accumulation, outputs in the input dtype.

Backward (all but the reference): g_t = ∂h_t + a_{t+1} g_{t+1}; ∂β_t = g_t; ∂a_t = h_{t−1} g_t.
``linear_scan`` dispatches: CUDA tensors → Triton; CPU → the C++ kernel, or the torch version without it.
The CPU versions take any contiguous layout as it is; Triton moves time to the front (a free view for
time-major input, a transposing copy otherwise). ``benchmarks/scan_cpu_options.py`` measures the choices.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from longrec.kernels import record_backend
from longrec.kernels.cpu_build import build_cpu_extension, kernel_cache_root

__all__ = [
    "BACKENDS",
    "LinearScanCpu",
    "LinearScanTorch",
    "LinearScanTriton",
    "cpu_kernel_available",
    "cpu_kernel_build_dir",
    "linear_scan",
    "scan_reference",
    "triton_available",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "cpu", "torch", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "cpu", "torch", "triton", "reference")


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


def _steps_view(x: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``x`` as a contiguous [outer, L, inner] tensor of ``dtype``, time in the middle (a free view of any
    contiguous input, whatever ``dim``: no transposing copy)."""
    x = x.to(dtype).contiguous()
    return x.view(math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1 :]))


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 inputs accumulate in fp32; fp32 and fp64 keep their precision (fp64 for gradcheck).
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _forward_steps(a: Tensor, beta: Tensor) -> Tensor:
    """h for [outer, L, inner]: one fused multiply-add per step, written straight into the output buffer."""
    h = torch.empty_like(beta)
    if h.shape[1] == 0:
        return h
    h_steps, a_steps, beta_steps = h.unbind(1), a.unbind(1), beta.unbind(1)
    h_steps[0].copy_(beta_steps[0])
    for t in range(1, len(h_steps)):
        torch.addcmul(beta_steps[t], a_steps[t], h_steps[t - 1], out=h_steps[t])
    return h


def _backward_steps(a: Tensor, h: Tensor, grad_h: Tensor) -> tuple[Tensor, Tensor]:
    """(∂a, ∂β) for [outer, L, inner]: the reverse scan g_t = ∂h_t + a_{t+1} g_{t+1}, then ∂a_t = h_{t−1} g_t."""
    g = torch.empty_like(grad_h)
    n_steps = g.shape[1]
    if n_steps == 0:
        return torch.zeros_like(a), g
    g_steps, a_steps, grad_steps = g.unbind(1), a.unbind(1), grad_h.unbind(1)
    g_steps[-1].copy_(grad_steps[-1])
    for t in range(n_steps - 2, -1, -1):
        torch.addcmul(grad_steps[t], a_steps[t + 1], g_steps[t + 1], out=g_steps[t])
    grad_a = torch.empty_like(a)
    grad_a[:, 0].zero_()
    torch.mul(h[:, :-1], g[:, 1:], out=grad_a[:, 1:])
    return grad_a, g


@dataclass(frozen=True)
class _StepKernels:
    """Forward and backward of the scan over [outer, L, inner] tensors, and the dtype they compute in."""

    forward: Callable[[Tensor, Tensor], Tensor]  # (a, β) → h
    backward: Callable[[Tensor, Tensor, Tensor], Any]  # (a, h, ∂h) → (∂a, ∂β)
    compute_dtype: Callable[[torch.dtype], torch.dtype]


class _StepsScan(torch.autograd.Function):
    """The scan along ``dim`` by CPU kernels on [outer, L, inner] views: no per-step autograd graph."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, beta: Tensor, dim: int, kernels: _StepKernels) -> Tensor:
        dim = dim % a.dim()
        compute = kernels.compute_dtype(torch.promote_types(a.dtype, beta.dtype))
        a_steps = _steps_view(a, dim, compute)
        h_steps = kernels.forward(a_steps, _steps_view(beta, dim, compute))
        ctx.save_for_backward(a_steps, h_steps)
        ctx.dim, ctx.kernels, ctx.shape = dim, kernels, beta.shape
        ctx.dtypes = (a.dtype, beta.dtype)
        return h_steps.view(beta.shape).to(beta.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        a_steps, h_steps = ctx.saved_tensors
        grad_a, grad_beta = ctx.kernels.backward(
            a_steps, h_steps, _steps_view(grad_h, ctx.dim, a_steps.dtype)
        )
        return (
            grad_a.view(ctx.shape).to(ctx.dtypes[0]),
            grad_beta.view(ctx.shape).to(ctx.dtypes[1]),
            None,
            None,
        )


_TORCH_STEPS = _StepKernels(_forward_steps, _backward_steps, _accumulation_dtype)


class LinearScanTorch:
    """Pure-torch scan along ``dim``: one ``addcmul`` per step, forward and backward, any device."""

    @staticmethod
    def apply(a: Tensor, beta: Tensor, dim: int) -> Tensor:
        return _StepsScan.apply(a, beta, dim, _TORCH_STEPS)


# ------------------------------------------------------------------------------------------ C++ (CPU)
_CPU_SOURCE = Path(__file__).with_name("scan_cpu.cpp")
_cpu_lock = threading.Lock()
_cpu_state: dict[str, Any] = {}  # "module" once built, or "error" once that failed


def cpu_kernel_build_dir() -> Path:
    """Where the CPU kernel is built and cached: ``$LONGREC_KERNEL_CACHE`` or ~/.cache/longrec/kernels."""
    return kernel_cache_root() / f"scan_cpu-torch{torch.__version__}"


def _load_cpu_kernel() -> Any | None:
    """The compiled CPU scan module, built once per machine and cached; None where it cannot be built."""
    with _cpu_lock:
        if "module" in _cpu_state or "error" in _cpu_state:
            return _cpu_state.get("module")
        if os.environ.get("LONGREC_SCAN_CPU_KERNEL", "1") == "0":
            _cpu_state["error"] = "disabled by LONGREC_SCAN_CPU_KERNEL=0"
            return None
        try:
            _cpu_state["module"] = build_cpu_extension(
                "longrec_scan_cpu", _CPU_SOURCE, cpu_kernel_build_dir(), ["-O3", "-fopenmp"]
            )
        except Exception as error:  # no compiler, no ninja, no writable cache: the torch version still runs
            _cpu_state["error"] = f"{type(error).__name__}: {error}".strip()
            logger.warning("CPU scan kernel unavailable, using the pure-torch scan (%s)", _cpu_state["error"])
        return _cpu_state.get("module")


def cpu_kernel_available() -> bool:
    """True when the compiled CPU scan kernel is built (building it on the first call)."""
    if "module" in _cpu_state:  # built: no lock, so torch.compile traces this without a graph break
        return True
    return _load_cpu_kernel() is not None


def _cpu_steps() -> _StepKernels:
    module = _load_cpu_kernel()
    if module is None:
        raise RuntimeError(f"the CPU scan kernel is unavailable: {_cpu_state.get('error')}")
    # 16-bit rows go in as they are: the kernel accumulates them in float.
    return _StepKernels(module.scan_forward, module.scan_backward, lambda dtype: dtype)


class LinearScanCpu:
    """CPU scan along ``dim`` by the compiled kernel (``scan_cpu.cpp``): one OpenMP region per pass."""

    @staticmethod
    def apply(a: Tensor, beta: Tensor, dim: int) -> Tensor:
        if torch.compiler.is_compiling() and not (a.requires_grad or beta.requires_grad):
            return _cpu_scan_inference(a, beta, dim)
        return _StepsScan.apply(a, beta, dim, _cpu_steps())


def _cpu_scan_inference(a: Tensor, beta: Tensor, dim: int) -> Tensor:
    """The forward scan as one traceable op, for ``torch.compile`` without gradients (serving RecBLR's user
    state): the autograd Function is a graph break, which left every op around the scan eager, while as an
    op the ~70 small elementwise ops of a BD-LRU layer fuse around it. Same kernel, same result."""
    dim = dim % a.dim()
    compute = torch.promote_types(a.dtype, beta.dtype)  # the kernel accumulates 16-bit rows in float itself
    h_steps = _cpu_scan_forward_op(_steps_view(a, dim, compute), _steps_view(beta, dim, compute))
    return h_steps.view(beta.shape).to(beta.dtype)


def _cpu_scan_forward_kernel(a: Tensor, beta: Tensor) -> Tensor:
    """h over contiguous [outer, L, inner] rows by the compiled CPU kernel (forward only)."""
    record_backend("linear_scan", "cpu")
    return _cpu_steps().forward(a, beta)


# Defined through a Library, not torch.library.custom_op: the op is only called without gradients, and
# custom_op's Python autograd and aliasing wrappers cost ~40 µs per call (timed by hand on one user's
# [1, 1000, 32] rows: 132 µs per call as a custom_op, 98 µs as this op, 92 µs for the kernel alone).
_LIBRARY = torch.library.Library("longrec", "FRAGMENT")
_LIBRARY.define("linear_scan_cpu_forward(Tensor a, Tensor beta) -> Tensor")
_LIBRARY.impl("linear_scan_cpu_forward", _cpu_scan_forward_kernel, "CPU")


@torch.library.register_fake("longrec::linear_scan_cpu_forward")
def _(a: Tensor, beta: Tensor) -> Tensor:
    return torch.empty_like(beta)


_cpu_scan_forward_op = torch.ops.longrec.linear_scan_cpu_forward.default


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

    ``backend="auto"`` runs Triton on CUDA tensors and, on CPU, the compiled kernel ("cpu"), or the
    pure-torch version ("torch") where that kernel cannot be built; "triton" on CPU needs
    ``TRITON_INTERPRET=1`` (tests); "reference" is the slow serial autograd loop.
    """
    _check_inputs(a, beta)
    if backend == "auto":
        if a.is_cuda and triton_available(a.device):
            backend = "triton"
        elif a.device.type == "cpu" and cpu_kernel_available():
            backend = "cpu"
        else:
            backend = "torch"
    record_backend("linear_scan", backend)
    if backend == "reference":
        return scan_reference(a, beta, dim)
    if backend == "torch":
        return LinearScanTorch.apply(a, beta, dim)
    if backend == "cpu":
        if a.device.type != "cpu":
            raise ValueError(f"the cpu scan backend needs CPU tensors, got {a.device}")
        return LinearScanCpu.apply(a, beta, dim)
    if backend == "triton":
        if not triton_available(a.device):
            raise RuntimeError("the Triton scan needs a CUDA tensor, or TRITON_INTERPRET=1 on CPU")
        return LinearScanTriton.apply(a, beta, dim)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
