"""The BD-LRU scan: torch CPU version and Triton kernel (interpreter on CPU) against the serial reference."""

import pytest
import torch

from longrec.kernels.scan import linear_scan, scan_reference, triton_available

LENGTHS = (1, 7, 100, 257)


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


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dim", (0, 1))
def test_torch_scan_matches_reference(length, dim):
    shape = (length, 3, 5) if dim == 0 else (3, length, 5)
    a, beta = _inputs(shape)
    expected = _values_and_grads(lambda a, b: scan_reference(a, b, dim), a, beta)
    got = _values_and_grads(lambda a, b: linear_scan(a, b, dim, backend="torch"), a, beta)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", (0, 1))
def test_torch_scan_gradcheck_float64(dim):
    a, beta = _inputs((4, 6, 3) if dim == 1 else (6, 4, 3), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, dim, backend="torch"), (a, beta))


def test_torch_scan_long_sequence_is_stable():
    # L = 4096 with a ≈ 0.9: products over the sequence underflow; the step-wise scan never forms them.
    a, beta = _inputs((2, 4096, 4), torch.float32, low=0.89)
    with torch.no_grad():
        expected = scan_reference(a.double(), beta.double(), 1)
        got = linear_scan(a, beta, 1, backend="torch")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_torch_scan_bfloat16_accumulates_in_float32():
    a, beta = _inputs((2, 300, 4), torch.float32, low=0.9)
    with torch.no_grad():
        expected = scan_reference(a.double(), beta.double(), 1)
        got = linear_scan(a.bfloat16(), beta.bfloat16(), 1, backend="torch")
    assert got.dtype == torch.bfloat16
    # Only input/output rounding (bf16: ~3 significant digits), no error growth over 300 steps.
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=6e-2)


def test_auto_backend_uses_torch_on_cpu():
    a, beta = _inputs((2, 5, 3))
    torch.testing.assert_close(linear_scan(a, beta), scan_reference(a, beta))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 5))


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
