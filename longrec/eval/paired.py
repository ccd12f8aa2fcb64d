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


class _WeightedAuc:
    """One scoring's ties and negatives prepared once; ``rows(weights)`` gives the AUC under each row of
    sample weights [R, n] (ties count one half): a weighted Mann-Whitney statistic."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.positive = np.asarray(labels).astype(bool)
        _, groups = np.unique(scores, return_inverse=True)  # each sample's distinct score, ascending
        self.groups = groups.reshape(-1)
        n_groups = int(self.groups.max()) + 1 if len(self.groups) else 0
        negative = ~self.positive
        self.negatives_by_group = sparse.csr_matrix(
            (np.ones(int(negative.sum())), (np.flatnonzero(negative), self.groups[negative])),
            shape=(len(self.groups), n_groups),
        )

    def rows(self, weights: np.ndarray) -> np.ndarray:
        neg_by_group = np.asarray((self.negatives_by_group.T @ weights.T).T)  # [R, G]
        credit = np.cumsum(neg_by_group, axis=1) - 0.5 * neg_by_group  # below + half the ties
        pos_weights = weights[:, self.positive]
        wins = (pos_weights * credit[:, self.groups[self.positive]]).sum(axis=1)
        pairs = pos_weights.sum(axis=1) * weights[:, ~self.positive].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return wins / pairs


def weighted_auc_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one scoring under each row of `weights` [R, n]; ties count one half."""
    return _WeightedAuc(labels, np.asarray(scores)).rows(weights)


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
    cand_auc, prod_auc = _WeightedAuc(labels, cand), _WeightedAuc(labels, prod)  # prepared once
    auc_c = float(cand_auc.rows(ones)[0])
    auc_p = float(prod_auc.rows(ones)[0])

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
        auc_lifts.append(cand_auc.rows(weights) - prod_auc.rows(weights))
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
