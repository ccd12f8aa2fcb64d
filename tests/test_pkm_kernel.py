"""PKM lookup kernel: two-axis activation vs brute force, Triton (interpreter) vs the torch reference."""

from __future__ import annotations

import os

import pytest
import torch

from longrec.kernels.pkm import (
    brute_force_topk,
    pkm_lookup,
    pkm_read,
    pkm_read_reference,
    pkm_read_triton,
    sorted_topk,
    two_axis_topk,
    unique_ids,
)

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(
    not HAVE_TRITON or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="needs triton on a GPU or TRITON_INTERPRET=1",
)


def scores(q: int, h: int, r: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(q, h, r, generator=gen), torch.randn(q, h, r, generator=gen)


# (64, 4) and (96, 8) take sorted_topk's two-stage path (r ≥ 8k, r divisible by 8).
@pytest.mark.parametrize(("r", "k"), [(5, 1), (7, 3), (8, 8), (11, 5), (64, 4), (96, 8)])
def test_two_axis_topk_equals_brute_force_over_all_slots(r: int, k: int) -> None:
    row, col = scores(6, 2, r, seed=r)
    values = torch.randn(r * r, 4)
    _, slots, weights = pkm_lookup(row, col, values, k, backend="reference")
    best, best_slots = brute_force_topk(row, col, k)
    assert torch.equal(slots.sort(-1).values, best_slots.sort(-1).values)
    # Weights are the softmax of exactly the brute-force top-K scores.
    torch.testing.assert_close(weights.sort(-1).values, torch.softmax(best, -1).sort(-1).values)


@pytest.mark.parametrize(
    ("shape", "k"),
    [((64, 1, 1024), 32), ((16, 3, 256), 32), ((16, 2, 200), 16), ((8, 1000), 7), ((4, 2, 64), 32)],
    ids=["r1024-k32", "r256-k32-edge", "r200-not-divisible", "2d", "short-row"],
)
def test_sorted_topk_equals_torch_topk_in_values_indices_and_gradients(shape, k) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, requires_grad=True)
    top, idx = sorted_topk(x, k)
    expected_top, expected_idx = x.topk(k, dim=-1)
    assert torch.equal(top, expected_top) and torch.equal(idx, expected_idx)
    grad = torch.randn(top.shape, generator=gen)
    (got_grad,) = torch.autograd.grad(top, x, grad)
    (expected_grad,) = torch.autograd.grad(expected_top, x, grad)
    torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize(
    ("ids", "why"),
    [
        (
            torch.randint(0, 1 << 20, (17_600,), generator=torch.Generator().manual_seed(0)),
            "a request's slots",
        ),
        (torch.randint(0, 50, (3_000,), generator=torch.Generator().manual_seed(1)), "many repeats"),
        (torch.tensor([7]), "one id"),
        (torch.tensor([5, 5, 5]), "one distinct id"),
        (torch.zeros(0, dtype=torch.int64), "empty"),
        (torch.tensor([0, 1 << 62, 3, 0]), "ids too wide for the keys: torch's path"),
        (torch.tensor([-4, 2, -4]), "negative ids: torch's path"),
        (torch.tensor([3, 1, 3], dtype=torch.int32), "int32: torch's path"),
    ],
)
def test_unique_ids_equals_torch_unique(ids: torch.Tensor, why: str) -> None:
    distinct, inverse = unique_ids(ids)
    expected_distinct, expected_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(distinct, expected_distinct), why
    assert torch.equal(inverse, expected_inverse), why
    assert distinct.dtype == ids.dtype and inverse.dtype == torch.int64


def test_reference_read_is_weighted_sum_of_selected_rows() -> None:
    row, col = scores(3, 2, 6)
    values = torch.randn(36, 5)
    out, slots, weights = pkm_lookup(row, col, values, 4, backend="reference")
    expected = (weights.unsqueeze(-1) * values[slots]).sum(dim=(1, 2))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))


def test_auto_backend_on_cpu_is_the_reference() -> None:
    row, col = scores(2, 1, 5)
    values = torch.randn(25, 3)
    tops = two_axis_topk(row, col, 2)
    auto = pkm_read(*tops, values, 5)
    reference = pkm_read_reference(*tops, values, 5)
    for a, b in zip(auto, reference, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="unknown backend"):
        pkm_read(*tops, values, 5, backend="cuda")  # type: ignore[arg-type]


@needs_triton
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(("q", "h", "r", "k", "d"), [(3, 2, 7, 3, 5), (2, 1, 5, 5, 9), (1, 3, 6, 1, 3)])
def test_triton_matches_reference_values_and_gradients(q, h, r, k, d, sparse: bool) -> None:
    gen = torch.Generator().manual_seed(q * 100 + r)
    row = torch.randn(q, h, r, generator=gen)
    col = torch.randn(q, h, r, generator=gen)
    values = torch.randn(r * r, d, generator=gen)
    upstream = torch.randn(q, d, generator=gen)
    results = []
    for read in (pkm_read_reference, pkm_read_triton):
        row_scores = row.clone().requires_grad_()
        col_scores = col.clone().requires_grad_()
        table = values.clone().requires_grad_()
        tops = two_axis_topk(row_scores, col_scores, k)
        out, slots, weights = read(*tops, table, r, sparse)
        (out * upstream).sum().backward()
        assert table.grad.is_sparse == sparse
        grad_table = table.grad.to_dense() if sparse else table.grad
        results.append((out, slots, weights, row_scores.grad, col_scores.grad, grad_table))
    (out_ref, slots_ref, w_ref, *grads_ref), (out_tri, slots_tri, w_tri, *grads_tri) = results
    torch.testing.assert_close(out_tri, out_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(slots_tri, slots_ref)  # both keep the top-K in descending score order
    torch.testing.assert_close(w_tri, w_ref)
    for tri, ref in zip(grads_tri, grads_ref, strict=True):
        torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)


def test_reference_sparse_gradient_is_summed_per_slot_and_equals_embedding_bag() -> None:
    gen = torch.Generator().manual_seed(5)
    row, col = torch.randn(4, 2, 6, generator=gen), torch.randn(4, 2, 6, generator=gen)
    upstream = torch.randn(4, 3, generator=gen)
    table = torch.randn(36, 3, generator=gen).requires_grad_()
    out, slots, weights = pkm_lookup(row, col, table, 3, sparse_grad=True, backend="reference")
    (out * upstream).sum().backward()
    assert table.grad.is_sparse and table.grad._nnz() == len(slots.unique())  # one row per slot
    dense = table.detach().clone().requires_grad_()
    expected = torch.nn.functional.embedding_bag(
        slots.reshape(4, -1), dense, per_sample_weights=weights.reshape(4, -1), mode="sum"
    )
    (expected * upstream).sum().backward()
    torch.testing.assert_close(table.grad.to_dense(), dense.grad)


def test_unique_ids_in_a_compiled_graph_is_torch_unique() -> None:
    """Under torch.compile it hands over to ``torch.unique`` (dynamo would trace the numpy path into torch
    ops, one of which, a cumsum of bools, has no CPU kernel)."""
    ids = torch.tensor([9, 2, 9, 4, 2, 2])
    distinct, inverse = torch.compile(unique_ids, dynamic=True)(ids)
    expected_distinct, expected_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(distinct, expected_distinct) and torch.equal(inverse, expected_inverse)
