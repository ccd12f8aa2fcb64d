"""The BD-LRU scan: the C++ CPU kernel, the pure-torch version and the Triton kernel (interpreter on CPU)
against the serial reference."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from longrec.kernels import scan as scan_module
from longrec.kernels.scan import cpu_kernel_available, linear_scan, scan_reference, triton_available

LENGTHS = (1, 7, 100, 257)
# Both CPU versions must agree with the reference; "cpu" is the compiled kernel (the CPU default).
CPU_BACKENDS = ("torch", "cpu")


def _inputs(shape, dtype=torch.float32, low=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = low + (1 - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
    beta = torch.randn(shape, generator=generator, dtype=torch.float64)
    return a.to(dtype).requires_grad_(), beta.to(dtype).requires_grad_()


def _values_and_grads(fn, a, beta):
    h = fn(a, beta)
    grad = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).reshape(h.shape)
    grad_a, grad_beta = torch.autograd.grad(h, (a, beta), grad)
    return h, grad_a, grad_beta


def test_cpu_kernel_builds_here():
    # The machines this project runs on have a compiler: a silent fallback would hide a broken kernel.
    assert cpu_kernel_available(), scan_module._cpu_state.get("error")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dim", (0, 1))
def test_cpu_scans_match_reference(backend, length, dim):
    shape = (length, 3, 5) if dim == 0 else (3, length, 5)
    a, beta = _inputs(shape)
    expected = _values_and_grads(lambda a, b: scan_reference(a, b, dim), a, beta)
    got = _values_and_grads(lambda a, b: linear_scan(a, b, dim, backend=backend), a, beta)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dim", (0, 1))
def test_cpu_scans_gradcheck_float64(backend, dim):
    a, beta = _inputs((4, 6, 3) if dim == 1 else (6, 4, 3), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, dim, backend=backend), (a, beta))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_scans_long_sequence_is_stable(backend):
    # L = 4096 with a ≈ 0.9: products over the sequence underflow; the step-wise scan never forms them.
    a, beta = _inputs((2, 4096, 4), torch.float32, low=0.89)
    with torch.no_grad():
        expected = scan_reference(a.double(), beta.double(), 1)
        got = linear_scan(a, beta, 1, backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_scans_bfloat16_accumulate_in_float32(backend):
    a, beta = _inputs((2, 300, 4), torch.float32, low=0.9)
    with torch.no_grad():
        expected = scan_reference(a.double(), beta.double(), 1)
        got = linear_scan(a.bfloat16(), beta.bfloat16(), 1, backend=backend)
    assert got.dtype == torch.bfloat16
    # Only input/output rounding (bf16: ~3 significant digits), no error growth over 300 steps.
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=6e-2)


@pytest.mark.parametrize(
    ("shape", "dim", "dtype"),
    [
        ((300, 8192), 0, torch.float32),
        ((300, 8191), 0, torch.float32),
        ((16, 300, 512), 1, torch.float32),
        ((300, 4096), 0, torch.float64),
    ],
    ids=["time-major", "time-major-unaligned-rows", "batch-first", "float64"],
)
def test_cpu_kernel_streaming_stores_on_large_outputs(shape, dim, dtype):
    # ≥ 8 MiB outputs take the streaming-store path; 8191 channels misalign every other row.
    a, beta = _inputs(shape, dtype, low=0.8)
    grad = torch.randn(a.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = linear_scan(a, beta, dim, backend="cpu")
    expected = linear_scan(a, beta, dim, backend="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got_grads = torch.autograd.grad(got, (a, beta), grad)
    expected_grads = torch.autograd.grad(expected, (a, beta), grad)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", (0, 1))
def test_cpu_scan_compiles_into_one_graph_without_gradients(dim):
    """Serving compiles RecBLR's user state whole: without gradients the CPU kernel's forward is a traced
    op (no graph break, fullgraph=True), so the ops around it fuse; it equals the eager kernel for every
    history width the dynamic graph serves, and with gradients the autograd Function still runs."""
    import torch._dynamo

    def layer(a, beta):  # elementwise work on both sides of the scan, as in a BD-LRU layer
        return torch.tanh(linear_scan(torch.sigmoid(a), beta * 2.0, dim, backend="cpu")) + 1.0

    compiled = torch.compile(layer, dynamic=True, fullgraph=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for length in (16, 48, 300):
            a, beta = _inputs((length, 3, 5) if dim == 0 else (3, length, 5))
            torch.testing.assert_close(compiled(a, beta), layer(a, beta), rtol=1e-6, atol=1e-6)
    # Two graphs at most: the first call specialises, the second marks the width dynamic; then no more.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2
    a, beta = _inputs((3, 40, 5) if dim == 1 else (40, 3, 5))
    expected = _values_and_grads(layer, a, beta)
    got = _values_and_grads(torch.compile(layer, dynamic=True), a, beta)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_auto_backend_uses_the_cpu_kernel_on_cpu(monkeypatch):
    a, beta = _inputs((2, 5, 3))
    calls = []
    monkeypatch.setattr(
        scan_module.LinearScanCpu, "apply", lambda *args: calls.append(1) or scan_reference(*args)
    )
    linear_scan(a, beta)
    assert calls == [1]


def test_auto_backend_falls_back_to_torch_without_the_cpu_kernel(monkeypatch):
    monkeypatch.setattr(scan_module, "_cpu_state", {"error": "no compiler"})
    a, beta = _inputs((2, 5, 3))
    torch.testing.assert_close(linear_scan(a, beta), scan_reference(a, beta))
    with pytest.raises(RuntimeError, match="CPU scan kernel is unavailable: no compiler"):
        linear_scan(a, beta, backend="cpu")


def test_shape_mismatch_and_unknown_backend_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 4), backend="gpu")


needs_triton = pytest.mark.skipif(not triton_available("cpu"), reason="needs TRITON_INTERPRET=1 (or a GPU)")


@needs_triton
@pytest.mark.parametrize("length", LENGTHS)
def test_triton_scan_matches_reference(length):
    # Odd channel count (5) exercises the channel mask; block_l=16 makes 257 span 17 tiles.
    a, beta = _inputs((2, length, 5))
    expected = _values_and_grads(lambda a, b: scan_reference(a, b, 1), a, beta)
    got = _values_and_grads(lambda a, b: linear_scan(a, b, 1, backend="triton"), a, beta)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@needs_triton
def test_triton_scan_time_major_and_bfloat16():
    a, beta = _inputs((33, 2, 4), low=0.9)
    h, grad_a, grad_beta = _values_and_grads(lambda a, b: linear_scan(a, b, 0, backend="triton"), a, beta)
    ref = _values_and_grads(lambda a, b: scan_reference(a, b, 0), a, beta)
    torch.testing.assert_close(h, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_a, ref[1], rtol=1e-5, atol=1e-5)
    a16 = a.detach().bfloat16().requires_grad_()
    b16 = beta.detach().bfloat16().requires_grad_()
    h16, grad_a16, grad_b16 = _values_and_grads(lambda a, b: linear_scan(a, b, 0, backend="triton"), a16, b16)
    assert h16.dtype == grad_a16.dtype == grad_b16.dtype == torch.bfloat16
    torch.testing.assert_close(h16.double(), ref[0].double(), rtol=2e-2, atol=6e-2)
    torch.testing.assert_close(grad_b16.double(), ref[2].double(), rtol=2e-2, atol=6e-2)


STALE_LOCK_PROBE = """
import os, time
from longrec.kernels import cpu_build, scan
lock = scan.cpu_kernel_build_dir() / "lock"
lock.touch()
old = time.time() - 2 * cpu_build.STALE_BUILD_LOCK_SECONDS
os.utime(lock, (old, old))
assert scan.cpu_kernel_available(), scan._cpu_state
assert not lock.exists()
"""


def test_a_stale_build_lock_from_a_killed_build_does_not_hang_the_next_load(tmp_path):
    # torch waits forever on a build lock a killed build left behind; the loader clears an old one.
    assert cpu_kernel_available()
    shutil.copytree(scan_module.cpu_kernel_build_dir(), tmp_path / scan_module.cpu_kernel_build_dir().name)
    env = {**os.environ, "LONGREC_KERNEL_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", STALE_LOCK_PROBE], env=env, check=True, timeout=300)


def test_the_kernel_cache_follows_longrec_kernel_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGREC_KERNEL_CACHE", str(tmp_path))
    assert scan_module.cpu_kernel_build_dir().parent == tmp_path


@pytest.mark.parametrize("shape", [(1, 37, 13), (3, 10, 64), (2, 5, 4096)])
def test_cpu_kernel_streaming_and_normal_stores_agree(shape):
    # Forced on for small and odd shapes: unaligned rows and row tails take the scalar stores.
    module = scan_module._load_cpu_kernel()
    a, beta = (x.detach() for x in _inputs(shape))
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    h_stream, h_normal = module.scan_forward(a, beta, 1), module.scan_forward(a, beta, 0)
    assert torch.equal(h_stream, h_normal)
    for g_stream, g_normal in zip(
        module.scan_backward(a, h_normal, grad, 1), module.scan_backward(a, h_normal, grad, 0), strict=True
    ):
        assert torch.equal(g_stream, g_normal)
