"""The fused CPU kernel of DIN's activation unit (serving's candidate scoring) against the torch path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from longrec.kernels import din_attention
from longrec.kernels.din_attention import din_kernel_available, fused_scores
from longrec.models.din import ActivationUnit
from longrec.models.registry import build_model
from longrec.serving.demo import demo_spec


def _unit(activation: str, hidden: tuple[int, ...], dim: int = 32) -> ActivationUnit:
    """An activation unit with non-trivial eval-mode statistics (Dice) and slopes (PReLU)."""
    torch.manual_seed(0)
    unit = ActivationUnit(dim, hidden, activation).eval()
    for module in unit.modules():
        if type(module).__name__ == "Dice":
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.alpha.data.normal_()
        if type(module).__name__ == "PReLU":
            module.alpha.data.normal_()
    return unit


def _target_term(unit: ActivationUnit, target: torch.Tensor) -> torch.Tensor:
    _, w_v, w_diff, _ = unit.input_layer.weight.split(unit.dim, dim=1)
    return F.linear(target, w_v - w_diff, unit.input_layer.bias)


def test_the_kernel_builds_here() -> None:
    assert din_kernel_available(), din_attention.din_kernel_error()


@pytest.mark.parametrize("activation", ["dice", "prelu", "sigmoid"])
@pytest.mark.parametrize(
    ("length", "candidates", "hidden"),
    [(130, 7, (80, 40)), (1, 1, (33,)), (37, 3, (20, 50, 17)), (64, 2, (96, 112)), (12, 2, (104, 5))],
)
@torch.no_grad()
def test_fused_scores_equal_the_torch_path(activation, length, candidates, hidden) -> None:
    """Every activation; widths that fill the kernel's 12-column panels (96) and that end in a part panel
    (5, 17, 33, 40, 80, 104, 112); one to three hidden layers; histories shorter than one 16-position
    vector (1, 12), not a multiple of 16 (37, 130), ending in a tile of 16 after whole 64-position tiles
    (130), or of 32 + 16 (37); one candidate."""
    unit = _unit(activation, hidden)
    history = torch.randn(1, length, 32) * 0.3
    target = torch.randn(candidates, 32) * 0.3
    mask = torch.ones(candidates, length, dtype=torch.bool)
    history_term = unit.history_term(history)
    expected = unit.score_targets(history, history_term, target, mask)
    got = fused_scores(unit, history, history_term, target, _target_term(unit, target))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["dice", "sigmoid"])
@torch.no_grad()
def test_saturated_activations_equal_the_torch_path(activation) -> None:
    """Pre-activations far past the exp's ±87 clamp: the sigmoid saturates to 0 or 1 as torch's does,
    never to an overflowed or NaN value."""
    unit = _unit(activation, (80, 40))
    history = torch.randn(1, 40, 32) * 30
    target = torch.randn(5, 32) * 30
    mask = torch.ones(5, 40, dtype=torch.bool)
    history_term = unit.history_term(history)
    expected = unit.score_targets(history, history_term, target, mask)
    got = fused_scores(unit, history, history_term, target, _target_term(unit, target))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@torch.no_grad()
def test_the_kernel_uses_every_thread_and_gives_the_same_scores() -> None:
    unit = _unit("dice", (80, 40))
    history, target = torch.randn(1, 300, 32) * 0.3, torch.randn(20, 32) * 0.3
    history_term, target_term = unit.history_term(history), _target_term(unit, target)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert din_attention.kernel_threads() == 1  # by default the kernel follows torch's count
        one = fused_scores(unit, history, history_term, target, target_term)
        torch.set_num_threads(2)
        two = fused_scores(unit, history, history_term, target, target_term)
        torch.set_num_threads(1)
        din_attention.set_kernel_threads(2)  # its own team, torch's ops on one (what the ranker may choose)
        assert din_attention.kernel_threads() == 2 and torch.get_num_threads() == 1
        own = fused_scores(unit, history, history_term, target, target_term)
        with pytest.raises(ValueError, match="kernel threads"):
            din_attention.set_kernel_threads(0)
    finally:
        din_attention.set_kernel_threads(None)
        torch.set_num_threads(before)
    assert din_attention.kernel_threads() == before
    assert torch.equal(one, two) and torch.equal(one, own)  # tiles are independent: threads change nothing


@pytest.mark.parametrize("name", ["din", "lmn", "imn"])
@torch.no_grad()
def test_models_score_candidates_through_the_kernel_as_through_torch(name: str) -> None:
    """DIN and LMN (the same backbone) and IMN with the kernel switched on, eager and compiled, give the
    torch path's logits; padded history positions stay out (mask applied after the kernel)."""
    from longrec.serving.ranker import ModelScorer, _synthetic_batches

    torch.manual_seed(3)
    overrides = {"memory_slots": 4096} if name == "lmn" else None
    model = build_model(name, demo_spec(max_history_length=40), overrides).eval()
    scorer = ModelScorer.__new__(ModelScorer)
    scorer.model, scorer.spec = model, model.spec
    user_batch, candidate_batch = _synthetic_batches(scorer, 9, events=23)
    user_batch["history_items"] = (
        torch.randint(1, 60, user_batch["history_items"].shape) * user_batch["history_mask"].long()
    )
    expected = model.score_candidates(model.encode_user(user_batch), candidate_batch)
    attention = model.attention if name == "imn" else model.backbone.attention
    assert attention.enable_fused_cpu_scoring()
    eager = model.score_candidates(model.encode_user(user_batch), candidate_batch)
    compiled = torch.compile(model.score_candidates, dynamic=True)(
        model.encode_user(user_batch), candidate_batch
    )
    torch.testing.assert_close(eager, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("length", "candidates", "hidden"), [(130, 7, 64), (1, 1, 5), (37, 3, 33)])
@torch.no_grad()
def test_unit_scores_equal_the_torch_path(length, candidates, hidden) -> None:
    """The kernel's second entry point (each candidate's first-layer matrix given, sigmoid, one hidden
    layer: IMN's multi-way attention) against torch, for several lengths and widths."""
    from longrec.kernels.din_attention import unit_scores

    torch.manual_seed(1)
    output = torch.nn.Linear(hidden, 1)
    history = torch.randn(length, 32) * 0.3
    per_candidate = torch.randn(candidates, 32, hidden) * 0.3
    target_term = torch.randn(candidates, hidden)
    expected = output(torch.sigmoid(torch.matmul(history, per_candidate) + target_term.unsqueeze(1))).squeeze(
        -1
    )
    got = unit_scores(history, per_candidate, target_term, output, "sigmoid")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_without_the_kernel_the_torch_path_serves(monkeypatch) -> None:
    """No compiler (or a failed build): switching the kernel on answers False and scoring stays on torch."""
    monkeypatch.setattr(din_attention, "_state", {"error": "RuntimeError: no C++ compiler (g++) on PATH"})
    unit = _unit("dice", (80, 40))
    assert unit.enable_fused_cpu_scoring() is False and unit.fused_cpu_scoring is False
    with torch.no_grad():
        history, target = torch.randn(1, 10, 32), torch.randn(3, 32)
        scores = unit.score_targets(
            history, unit.history_term(history), target, torch.ones(3, 10, dtype=torch.bool)
        )
    assert scores.shape == (3, 10)


BROKEN_COMPILER_PROBE = """
from longrec.kernels import din_attention
assert not din_attention.din_kernel_available()
print(din_attention.din_kernel_error())
"""


def test_a_failed_build_is_reported_not_raised(tmp_path) -> None:
    env = {**os.environ, "LONGREC_KERNEL_CACHE": str(tmp_path), "CXX": "/bin/false"}
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_COMPILER_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "/bin/false failed" in result.stdout
    assert "fused DIN attention kernel unavailable, serving the torch path" in result.stderr


def test_the_kernel_is_cached_per_cpu_type(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LONGREC_KERNEL_CACHE", str(tmp_path))
    assert din_attention.din_kernel_build_dir().parent == tmp_path
    assert din_attention._cpu_fingerprint() in din_attention.din_kernel_build_dir().name


def test_the_serving_config_switch(monkeypatch) -> None:
    from longrec.serving.config import ServingConfig

    assert ServingConfig("m:v", "din").fused_attention is True
    monkeypatch.setenv("LONGREC_FUSED_ATTENTION", "0")
    assert ServingConfig("m:v", "din").with_environment().fused_attention is False
