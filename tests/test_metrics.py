"""CTR metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from longrec.eval.ctr import auc, ctr_metrics, gauc, logloss, rela_impr


def _loop_gauc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Reference GAUC: a Python loop over users with scikit-learn's AUC."""
    total, weight = 0.0, 0
    for user in np.unique(user_ids):
        rows = user_ids == user
        if labels[rows].min() == labels[rows].max():
            continue
        total += roc_auc_score(labels[rows], scores[rows]) * rows.sum()
        weight += rows.sum()
    return total / weight


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + labels * 0.5, 1)  # rounding creates many ties
    assert len(np.unique(scores)) < 100
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_hand_values() -> None:
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # pos {0.8, 0.3} vs neg {0.3, 0.1}: wins 0.8>0.3, 0.8>0.1, 0.3>0.1, one tie → 3.5 / 4
    assert auc([1, 1, 0, 0], [0.8, 0.3, 0.3, 0.1]) == 0.875


def test_auc_single_class_is_nan() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_gauc_by_hand() -> None:
    # user 7: pos 0.9 beats neg 0.5, loses to neg 0.95 → AUC 0.5, 3 impressions
    # user 3: AUC 0.875 (see test_auc_hand_values), 4 impressions; user 9: positives only → skipped
    user_ids = np.array([7, 3, 7, 9, 3, 3, 7, 3, 9])
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.5, 0.2, 0.3, 0.3, 0.95, 0.1, 0.7])
    assert gauc(user_ids, labels, scores) == pytest.approx((3 * 0.5 + 4 * 0.875) / 7, abs=1e-12)


def test_gauc_matches_per_user_sklearn_loop() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    user_ids = rng.integers(0, 150, size=n)
    labels = rng.integers(0, 2, size=n)
    scores = np.round(rng.normal(size=n) + labels * 0.3, 1)
    assert gauc(user_ids, labels, scores) == pytest.approx(_loop_gauc(user_ids, labels, scores), abs=1e-12)


def test_gauc_all_users_one_class_is_nan() -> None:
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.3, 0.2, 0.1]))


def test_logloss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=100)
    probs = rng.uniform(0.01, 0.99, size=100)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), abs=1e-12)
    clipped = logloss([1, 0], [0.0, 1.0])
    assert math.isfinite(clipped) and clipped == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_rela_impr() -> None:
    assert rela_impr(0.75, 0.70) == pytest.approx(25.0)
    assert rela_impr(0.70, 0.70) == 0.0
    with pytest.raises(ValueError):
        rela_impr(0.7, 0.5)


def test_ctr_metrics_from_logits() -> None:
    user_ids = np.array([1, 1, 2, 2, 2])
    labels = np.array([1, 0, 0, 1, 1])
    logits = np.array([2.0, -1.0, 0.5, 1.0, -800.0])  # -800 must not overflow
    metrics = ctr_metrics(user_ids, labels, logits)
    assert set(metrics) == {"auc", "gauc", "logloss", "n_samples", "positive_rate"}
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, logits))
    assert metrics["gauc"] == pytest.approx(_loop_gauc(user_ids, labels, logits))
    probs = np.clip(1 / (1 + np.exp(-np.clip(logits, -50, 50))), 1e-15, 1 - 1e-15)
    assert metrics["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-9)
    assert metrics["n_samples"] == 5
    assert metrics["positive_rate"] == pytest.approx(0.6)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
