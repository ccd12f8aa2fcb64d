"""Paired comparison of two models scored on the same samples: AUC and LogLoss lifts with a bootstrap
confidence interval that resamples users (samples of one user are correlated; resampling rows would make
the interval too narrow).

Each bootstrap replicate draws users with replacement; a sample's weight is the number of times its user
was drawn, and the replicate's AUC is the weighted Mann-Whitney statistic. Both models see the same
replicate, so the interval is for the difference, with the pairing's correlation kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse

from longrec.eval.ctr import gauc

__all__ = ["PairedLift", "paired_lift", "weighted_auc_rows"]

_EPS = 1e-15


@dataclass(frozen=True)
class PairedLift:
    """Candidate minus production on the same samples; intervals are two-sided at `confidence`."""

    auc_candidate: float
    auc_production: float
    auc_lift: float
    auc_lift_low: float
    auc_lift_high: float
    logloss_lift: float  # > 0: the candidate's LogLoss is worse
    logloss_lift_low: float
    logloss_lift_high: float
    gauc_lift: float
    confidence: float
    n_bootstrap: int
    n_users: int
    n_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _score_groups(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of each sample's distinct score in ascending order (ties share one), and the count."""
    unique, inverse = np.unique(scores, return_inverse=True)
    return inverse.reshape(-1), len(unique)


def weighted_auc_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one scoring under each row of `weights` [R, n]; ties count one half."""
    positive = labels.astype(bool)
    groups, n_groups = _score_groups(scores)
    neg_onehot = sparse.csr_matrix(
        (np.ones(int((~positive).sum())), (np.flatnonzero(~positive), groups[~positive])),
        shape=(len(scores), n_groups),
    )
    neg_by_group = np.asarray((neg_onehot.T @ weights.T).T)  # [R, G]
    below = np.cumsum(neg_by_group, axis=1) - neg_by_group
    credit = below + 0.5 * neg_by_group  # [R, G]
    pos_weights = weights[:, positive]
    wins = (pos_weights * credit[:, groups[positive]]).sum(axis=1)
    pairs = pos_weights.sum(axis=1) * weights[:, ~positive].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / pairs


def paired_lift(
    user_ids: ArrayLike,
    labels: ArrayLike,
    candidate_logits: ArrayLike,
    production_logits: ArrayLike,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 50,
) -> PairedLift:
    """AUC, LogLoss and GAUC lifts of candidate over production, with user-bootstrap intervals."""
    users = np.asarray(user_ids).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    cand = np.asarray(candidate_logits, dtype=np.float64).reshape(-1)
    prod = np.asarray(production_logits, dtype=np.float64).reshape(-1)
    if not (len(users) == len(labels) == len(cand) == len(prod)):
        raise ValueError("user_ids, labels and both score arrays must have the same length")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    _, user_index = np.unique(users, return_inverse=True)
    n_users = int(user_index.max()) + 1 if len(user_index) else 0
    ones = np.ones((1, len(labels)))
    auc_c = float(weighted_auc_rows(labels, cand, ones)[0])
    auc_p = float(weighted_auc_rows(labels, prod, ones)[0])

    def sample_logloss(logits: np.ndarray) -> np.ndarray:
        p = np.clip(_sigmoid(logits), _EPS, 1 - _EPS)
        return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    loss_diff = sample_logloss(cand) - sample_logloss(prod)
    rng = np.random.default_rng(seed)
    auc_lifts, loss_lifts = [], []
    for start in range(0, n_bootstrap, chunk):
        reps = min(chunk, n_bootstrap - start)
        counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=reps)  # [R, U]
        weights = counts[:, user_index].astype(np.float64)  # [R, n]
        auc_lifts.append(weighted_auc_rows(labels, cand, weights) - weighted_auc_rows(labels, prod, weights))
        loss_lifts.append((weights @ loss_diff) / weights.sum(axis=1))
    auc_lifts = np.concatenate(auc_lifts)
    loss_lifts = np.concatenate(loss_lifts)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(auc_lifts, [tail, 100 - tail])
    loss_low, loss_high = np.nanpercentile(loss_lifts, [tail, 100 - tail])
    return PairedLift(
        auc_candidate=auc_c,
        auc_production=auc_p,
        auc_lift=auc_c - auc_p,
        auc_lift_low=float(low),
        auc_lift_high=float(high),
        logloss_lift=float(loss_diff.mean()),
        logloss_lift_low=float(loss_low),
        logloss_lift_high=float(loss_high),
        gauc_lift=float(gauc(users, labels, cand) - gauc(users, labels, prod)),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        n_users=n_users,
        n_samples=len(labels),
    )
