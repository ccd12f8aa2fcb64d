"""DIN's activation unit over C candidates × one user's L history positions, fused on CPU for serving.

The serving split (``ActivationUnit.score_targets``) scores every candidate against one history. In torch
ops each layer's [C·L, H] activations go to memory and back (32 MB per layer at L=1000, C=100), and the
two GEMMs plus the Dice activations run at memory speed. ``din_attention_cpu.cpp`` carries one tile of
(candidate, 64 positions) through every layer in buffers that stay in cache (see its header).

IMN's multi-way attention has the same shape (a first layer that is one matrix per candidate on the
history, sigmoid, H → 1): ``unit_scores`` runs it through the kernel's second entry point, which takes
those matrices (``MultiWayAttention.shared_history_weights``).

It is a serving path, opt-in per model (``ActivationUnit.fused_cpu_scoring`` and
``MultiWayAttention.fused_cpu_scoring``, which the ranker sets):
float32, eval mode, no autograd. Built on first use by g++ with ``-march=native`` and loaded by ctypes
(about a second, cached per CPU type); where it cannot be built, the torch path serves. Registered as
the custom ops ``longrec::din_attention_scores`` and ``longrec::attention_unit_scores`` so
``torch.compile`` keeps each as one opaque call. ``tests/test_din_attention_kernel.py`` checks both against
the torch path; ``benchmarks/din_attention_cpu.py`` and ``benchmarks/imn_attention_cpu.py`` time them.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longrec.kernels import record_backend
from longrec.kernels.cpu_build import kernel_cache_root

__all__ = [
    "ACTIVATION_CODES",
    "din_kernel_available",
    "din_kernel_build_dir",
    "fused_scores",
    "kernel_threads",
    "set_kernel_threads",
]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("din_attention_cpu.cpp")
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "library" once loaded, or "error" once that failed
_threads: dict[str, int] = {}  # "count": the kernel's own thread count, once set_kernel_threads set one

ACTIVATION_CODES = {"Dice": 0, "PReLU": 1, "_Sigmoid": 2}
# The padding the kernel needs: none since it keeps positions in vector lanes (it pads them itself). It took
# widths padded to 8 and rows to 4 until then; benchmarks/din_kernel_revisions.py sets these to time it.
LANES = 1  # layer widths are zero-padded to a multiple of this
ROWS = 1  # history rows are zero-padded to a multiple of this
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")


def _cpu_fingerprint() -> str:
    """The CPU's instruction-set flags, hashed: a ``-march=native`` build is only reused on the same kind."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line.split(":", 1)[1]
                break
    except OSError:
        pass
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def din_kernel_build_dir() -> Path:
    """Where the kernel is built: per torch version and CPU type, under ``kernel_cache_root()``."""
    return kernel_cache_root() / f"din_attention_cpu-{_cpu_fingerprint()}"


def _build() -> Path:
    """The shared library for this source, compiler flags and CPU type, built once (~1 s) and cached.
    Concurrent builders (a ranker's workers) wait on one lock; the file appears by an atomic rename."""
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:12]
    build_dir = din_kernel_build_dir()
    library = build_dir / f"din_attention_cpu-{key}.so"
    if library.exists():
        return library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not library.exists():
            partial = library.with_suffix(f".{os.getpid()}.tmp")
            result = subprocess.run(
                [compiler, *CFLAGS, "-o", str(partial), str(_SOURCE)], capture_output=True, text=True
            )
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
            partial.rename(library)
    return library


def _load() -> Any | None:
    with _lock:
        if "library" in _state or "error" in _state:
            return _state.get("library")
        if os.environ.get("LONGREC_DIN_CPU_KERNEL", "1") == "0":
            _state["error"] = "disabled by LONGREC_DIN_CPU_KERNEL=0"
            return None
        try:
            library = ctypes.CDLL(str(_build()))
            pointer, integer = ctypes.c_void_p, ctypes.c_int64
            # weights_t, biases, act_params, widths, n_layers, activation, w_out, b_out (_layer_arguments)
            layers = [pointer] * 4 + [integer, integer, pointer, ctypes.c_float]
            library.din_attention_scores.restype = None
            library.din_attention_scores.argtypes = [
                *[pointer] * 5,  # history, history_term, target, target_term, w_prod_t
                *layers,
                *[integer] * 3,  # L, d, C
                pointer,  # per-candidate scratch
                pointer,  # scores
                integer,  # threads
            ]
            library.attention_unit_scores.restype = None
            library.attention_unit_scores.argtypes = [
                *[pointer] * 3,  # history, per_candidate, target_term
                *layers,
                *[integer] * 3,  # L, d, C
                pointer,  # scores
                integer,  # threads
            ]
            _state["library"] = library
        except Exception as error:  # no compiler, no writable cache: the torch path serves
            _state["error"] = f"{type(error).__name__}: {error}".strip()
            logger.warning(
                "fused DIN attention kernel unavailable, serving the torch path (%s)", _state["error"]
            )
        return _state.get("library")


def set_kernel_threads(threads: int | None) -> None:
    """Run the kernel on its own OpenMP team of ``threads``; None: torch's intra-op count (the default).

    The ranker may give the kernel every usable CPU while torch's own ops (the small GEMMs of the head and
    the first layer's halves, LMN's memory reads) run on one: the kernel splits C × L into many tiles, while
    a 100-row GEMM pays more for waking a second thread than it gains. On 2 cores DIN's scoring call took
    1.05x (L=1000), 1.26x (L=200) and 1.74x (L=50) as long with both on 2 as with torch on 1 and the kernel
    on 2 (benchmarks/attention_threads.py, minima, in benchmarks/results/attention_threads.json); for LMN
    it was within the run's spread. ``Ranker.choose_threads`` measures which setting is faster for the served model."""
    if threads is None:
        _threads.pop("count", None)
    elif threads < 1:
        raise ValueError(f"kernel threads must be >= 1, got {threads}")
    else:
        _threads["count"] = int(threads)


def kernel_threads() -> int:
    """The threads the kernel runs on: ``set_kernel_threads``'s count, else torch's intra-op count."""
    return _threads.get("count") or torch.get_num_threads()


def din_kernel_available() -> bool:
    """True when the fused CPU kernel is built (building it on the first call)."""
    return _load() is not None


def din_kernel_error() -> str | None:
    """Why the kernel is unavailable, once a load was tried and failed."""
    return _state.get("error")


@torch.library.custom_op("longrec::din_attention_scores", mutates_args=())
def _scores_op(
    history: Tensor,
    history_term: Tensor,
    target: Tensor,
    target_term: Tensor,
    w_prod_t: Tensor,
    weights_t: list[Tensor],
    biases: list[Tensor],
    act_params: list[Tensor],
    activation: int,
    w_out: Tensor,
    b_out: Tensor,
) -> Tensor:
    library = _loaded_library()
    record_backend("din_attention", "cpu-fused")
    length, dim = history.shape
    count, first_width = target.shape[0], w_prod_t.shape[1]
    widths, layers = _layer_arguments(first_width, weights_t, biases, act_params, activation, w_out, b_out)
    _check_inputs(
        history, history_term, target, target_term, w_prod_t, w_out, *weights_t, *biases, *act_params
    )
    if length % ROWS or any(int(width) % LANES for width in widths.tolist()):
        raise ValueError(f"history rows must be padded to a multiple of {ROWS}, widths to one of {LANES}")

    scores = history.new_empty((count, length))
    scratch = history.new_empty(count * dim * first_width)
    library.din_attention_scores(
        history.data_ptr(),
        history_term.data_ptr(),
        target.data_ptr(),
        target_term.data_ptr(),
        w_prod_t.data_ptr(),
        *layers,
        length,
        dim,
        count,
        scratch.data_ptr(),
        scores.data_ptr(),
        kernel_threads(),
    )
    return scores


@_scores_op.register_fake
def _(
    history,
    history_term,
    target,
    target_term,
    w_prod_t,
    weights_t,
    biases,
    act_params,
    activation,
    w_out,
    b_out,
):
    return history.new_empty((target.shape[0], history.shape[0]))


def _loaded_library() -> Any:
    library = _load()
    if library is None:
        raise RuntimeError(f"the fused attention kernel is unavailable: {_state.get('error')}")
    return library


def _layer_arguments(
    first_width: int,
    weights_t: list[Tensor],
    biases: list[Tensor],
    act_params: list[Tensor],
    activation: int,
    w_out: Tensor,
    b_out: Tensor,
) -> tuple[Tensor, tuple]:
    """The unit's layers as both entry points take them, from weights_t to b_out, and the widths tensor
    they point into (the caller keeps it alive through the call). Layer 0 has no weights or bias here."""
    n_layers = len(act_params)
    widths = torch.tensor([first_width] + [w.shape[1] for w in weights_t], dtype=torch.int64)
    layers = (
        (ctypes.c_void_p * n_layers)(None, *(t.data_ptr() for t in weights_t)),
        (ctypes.c_void_p * n_layers)(None, *(t.data_ptr() for t in biases)),
        (ctypes.c_void_p * n_layers)(*(t.data_ptr() for t in act_params)),
        widths.data_ptr(),
        n_layers,
        activation,
        w_out.data_ptr(),
        float(b_out.item()),
    )
    return widths, layers


def _check_inputs(*tensors: Tensor) -> None:
    for tensor in tensors:
        if tensor.dtype != torch.float32 or not tensor.is_contiguous() or tensor.device.type != "cpu":
            raise ValueError("the attention kernels take contiguous float32 CPU tensors")


@torch.library.custom_op("longrec::attention_unit_scores", mutates_args=())
def _unit_scores_op(
    history: Tensor,
    per_candidate: Tensor,
    target_term: Tensor,
    weights_t: list[Tensor],
    biases: list[Tensor],
    act_params: list[Tensor],
    activation: int,
    w_out: Tensor,
    b_out: Tensor,
) -> Tensor:
    library = _loaded_library()
    record_backend("attention_unit", "cpu-fused")
    length, dim = history.shape
    count, first_width = target_term.shape
    if per_candidate.shape != (count, dim, first_width):
        raise ValueError(
            f"per_candidate must be [{count}, {dim}, {first_width}], got {list(per_candidate.shape)}"
        )
    _check_inputs(history, per_candidate, target_term, w_out, *weights_t, *biases, *act_params)
    widths, layers = _layer_arguments(first_width, weights_t, biases, act_params, activation, w_out, b_out)
    scores = history.new_empty((count, length))
    library.attention_unit_scores(
        history.data_ptr(),
        per_candidate.data_ptr(),
        target_term.data_ptr(),
        *layers,
        length,
        dim,
        count,
        scores.data_ptr(),
        kernel_threads(),
    )
    return scores


@_unit_scores_op.register_fake
def _(history, per_candidate, target_term, weights_t, biases, act_params, activation, w_out, b_out):
    return history.new_empty((target_term.shape[0], history.shape[0]))


def unit_scores(
    history: Tensor, per_candidate: Tensor, target_term: Tensor, output: torch.nn.Linear, activation: str
) -> Tensor:
    """One hidden layer's attention unit over C candidates × one history, through the kernel: [C, L] raw
    scores ``output(act(per_candidate[c]ᵀ · e_l + target_term[c]))``.

    history [L, d]; per_candidate [C, d, H] (candidate c's first-layer matrix, transposed); target_term
    [C, H] (its bias); ``output`` the H → 1 layer; ``activation`` "sigmoid" (IMN's multi-way attention).
    """
    if activation != "sigmoid":
        raise ValueError(f"unit_scores supports the sigmoid activation, got {activation!r}")
    width = target_term.shape[1]
    act_params = torch.zeros(3, width)
    act_params[1] = 1.0
    return _unit_scores_op(
        history.contiguous(),
        per_candidate.contiguous(),
        target_term.contiguous(),
        [],
        [],
        [act_params],
        ACTIVATION_CODES["_Sigmoid"],
        output.weight[0].contiguous(),
        output.bias.reshape(1).contiguous(),
    )


def _pad_last(x: Tensor, width: int, value: float = 0.0) -> Tensor:
    return F.pad(x, (0, width - x.shape[-1]), value=value) if x.shape[-1] != width else x


def _padded_width(width: int) -> int:
    return -(-width // LANES) * LANES


def _activation_params(activation: torch.nn.Module, width: int, padded: int) -> Tensor:
    """[3, padded]: Dice (running mean, 1/√(var + eps), α); PReLU (·, ·, α); sigmoid none. Padding columns
    get mean 0, scale 1, α 0, so a padded (zero) pre-activation stays 0 for Dice and PReLU."""
    params = torch.zeros(3, width)
    params[1] = 1.0
    kind = type(activation).__name__
    if kind == "Dice":
        params = torch.stack(
            [
                activation.running_mean,
                torch.rsqrt(activation.running_var + activation.eps),
                activation.alpha,
            ]
        )
    elif kind == "PReLU":
        params = torch.stack(
            [torch.zeros_like(activation.alpha), torch.ones_like(activation.alpha), activation.alpha]
        )
    return F.pad(params.float(), (0, padded - width)).contiguous()


def fused_scores(unit, history: Tensor, history_term: Tensor, target: Tensor, target_term: Tensor) -> Tensor:
    """``ActivationUnit.score_targets`` for one history through the fused kernel: [C, L] raw scores.

    history [1, L, d], history_term [1, L, H1] (``unit.history_term``), target [C, d], target_term [C, H1]
    (the target half with the first layer's bias). Pads rows to a multiple of ``ROWS`` and widths to one
    of ``LANES`` with zeros (1 and 1: none, for today's kernel) and cuts the scores back to L.
    """
    length = history.shape[1]
    rows = -(-length // ROWS) * ROWS
    first_width = unit.input_layer.out_features
    first_padded = _padded_width(first_width)
    w_prod = unit.input_layer.weight[:, 3 * unit.dim :]  # [H1, d]
    history_rows = F.pad(history[0], (0, 0, 0, rows - length)).contiguous()
    history_term_rows = F.pad(history_term[0], (0, first_padded - first_width, 0, rows - length)).contiguous()
    widths = [first_width] + [linear.out_features for linear in unit.rest.linears]
    padded = [_padded_width(width) for width in widths]
    weights_t, biases = [], []
    for k, linear in enumerate(unit.rest.linears):
        weights_t.append(
            F.pad(
                linear.weight.t(), (0, padded[k + 1] - widths[k + 1], 0, padded[k] - widths[k])
            ).contiguous()
        )
        biases.append(_pad_last(linear.bias, padded[k + 1]).contiguous())
    activations = [unit.input_activation, *unit.rest.activations]
    act_params = [
        _activation_params(act, width, pad)
        for act, width, pad in zip(activations, widths, padded, strict=True)
    ]
    output = unit.rest.output
    scores = _scores_op(
        history_rows,
        history_term_rows,
        target.contiguous(),
        _pad_last(target_term, first_padded).contiguous(),
        _pad_last(w_prod.t(), first_padded).contiguous(),
        weights_t,
        biases,
        act_params,
        ACTIVATION_CODES[type(unit.input_activation).__name__],
        _pad_last(output.weight[0], padded[-1]).contiguous(),
        output.bias.reshape(1).contiguous(),
    )
    return scores[:, :length]
