"""CTR metrics: AUC, GAUC, LogLoss, RelaImpr.

All functions are vectorised numpy. AUC is the rank statistic (Mann-Whitney U) with tied scores given
their average rank, which is what scikit-learn's ``roc_auc_score`` computes. A metric that is undefined
(a single class present) is returned as NaN rather than raised, so one bad slice never kills a report.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["auc", "gauc", "logloss", "rela_impr", "ctr_metrics"]


def _as_1d(name: str, values: ArrayLike, dtype: type | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        array = array.reshape(-1)
    if dtype is not None and np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_binary(labels: np.ndarray) -> np.ndarray:
    if labels.size and not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    return labels.astype(bool)


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")


def _tie_averaged_positions(sorted_keys: list[np.ndarray]) -> np.ndarray:
    """0-based positions in a sorted array, with runs of equal keys given their mean position."""
    n = len(sorted_keys[0])
    starts_run = np.ones(n, dtype=bool)
    if n > 1:
        differs = np.zeros(n - 1, dtype=bool)
        for key in sorted_keys:
            differs |= key[1:] != key[:-1]
        starts_run[1:] = differs
    run_id = np.cumsum(starts_run) - 1
    run_start = np.flatnonzero(starts_run)
    run_size = np.diff(np.append(run_start, n))
    mean_position = run_start + (run_size - 1) / 2.0
    return mean_position[run_id]


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; tied scores count one half. NaN if only one class is present."""
    y = _check_binary(_as_1d("labels", labels))
    s = _as_1d("scores", scores, np.float64)
    _check_lengths(labels=y, scores=s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _tie_averaged_positions([s[order]]) + 1.0
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> float:
    """Per-user AUC averaged with weights = the user's number of impressions (samples).

    Users whose samples are all one class are skipped (their AUC is undefined). NaN if no user is left.
    Runs in O(n log n) with one sort over (user, score), without a Python loop over users.
    """
    u = _as_1d("user_ids", user_ids)
    y = _check_binary(_as_1d("labels", labels))
    s = _as_1d("scores", scores, np.float64)
    _check_lengths(user_ids=u, labels=y, scores=s)
    if len(u) == 0:
        return float("nan")
    order = np.lexsort((s, u))  # primary key user, secondary score
    u_sorted, s_sorted, y_sorted = u[order], s[order], y[order]

    user_starts = np.ones(len(u_sorted), dtype=bool)
    user_starts[1:] = u_sorted[1:] != u_sorted[:-1]
    user_index = np.cumsum(user_starts) - 1
    user_first = np.flatnonzero(user_starts)

    # Rank within the user = global tie-averaged position (ties only within the same user) - user start.
    within_user_rank = _tie_averaged_positions([u_sorted, s_sorted]) - user_first[user_index] + 1.0

    n_users = len(user_first)
    n_samples = np.bincount(user_index, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(user_index, weights=y_sorted.astype(np.float64), minlength=n_users)
    n_neg = n_samples - n_pos
    pos_rank_sum = np.bincount(
        user_index, weights=np.where(y_sorted, within_user_rank, 0.0), minlength=n_users
    )

    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    user_auc = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    weights = n_samples[valid]
    return float(np.sum(user_auc * weights) / np.sum(weights))


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps] so a saturated 0/1 is finite."""
    y = _check_binary(_as_1d("labels", labels)).astype(np.float64)
    p = _as_1d("probs", probs, np.float64)
    _check_lengths(labels=y, probs=p)
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr in percent: ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100 (the DIN paper's measure)."""
    if auc_base == 0.5:
        raise ValueError("rela_impr is undefined for a base AUC of exactly 0.5")
    return float(((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0)


def ctr_metrics(user_ids: ArrayLike, labels: ArrayLike, logits: ArrayLike) -> dict[str, float | int]:
    """AUC, GAUC, LogLoss (of sigmoid(logits)), sample count and positive rate of one evaluation set."""
    y = _as_1d("labels", labels)
    z = _as_1d("logits", logits, np.float64)
    _check_lengths(user_ids=_as_1d("user_ids", user_ids), labels=y, logits=z)
    # Sigmoid in float64 via tanh: stable for large |z| without overflow warnings.
    probs = 0.5 * (1.0 + np.tanh(0.5 * z))
    return {
        "auc": auc(y, z),
        "gauc": gauc(user_ids, y, z),
        "logloss": logloss(y, probs),
        "n_samples": int(len(y)),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
    }
