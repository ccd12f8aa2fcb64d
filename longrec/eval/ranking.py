"""Full-ranking next-item metrics: HR@K, NDCG@K, MRR@K with the held-out item ranked against all items.

The rank of the target is the number of other candidate items scoring at least as high (0 = top). Ties
count against the target (pessimistic), so a constant scorer gets no credit. Item 0 (padding) is never a
candidate; ``exclude_history=True`` also removes the user's history items (except the target itself),
which RecBole does not do for sequential models, so it is off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["evaluate_next_item", "ranking_metrics", "target_ranks"]


def target_ranks(scores: Tensor, targets: Tensor, history: Tensor | None = None) -> Tensor:
    """0-based rank of each target among all items: #{j ≠ target, j ≠ 0 : score_j ≥ score_target}.

    ``scores`` [N, n_items], ``targets`` [N]; ``history`` [N, L] (0 = padding) removes those items from
    the candidates when given.
    """
    scores = scores.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]
    scores[:, 0] = -torch.inf
    if history is not None:
        scores.scatter_(1, history, -torch.inf)
        scores[:, 0] = -torch.inf
    scores[rows, targets] = -torch.inf  # the target does not outrank itself
    return (scores >= target_scores[:, None]).sum(dim=1)


def ranking_metrics(ranks: np.ndarray | Tensor, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """HR@K = 1[rank < K], NDCG@K = 1/log2(rank + 2) if rank < K, MRR@K = 1/(rank + 1) if rank < K."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, Tensor) else ranks, dtype=np.float64)
    metrics: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = float(hit.mean()) if len(ranks) else float("nan")
        metrics[f"ndcg@{k}"] = (
            float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else float("nan")
        )
        metrics[f"mrr@{k}"] = (
            float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else float("nan")
        )
    return metrics


@torch.no_grad()
def evaluate_next_item(
    model: torch.nn.Module,
    history: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    batch_size: int = 512,
    ks: Sequence[int] = (10, 20),
    exclude_history: bool = False,
) -> dict[str, float]:
    """Leave-one-out full ranking of a next-item model (``user_state`` + ``score_all``) on [U, L] histories."""
    device = next(model.parameters()).device
    history = torch.as_tensor(history, dtype=torch.long)
    targets = torch.as_tensor(targets, dtype=torch.long)
    was_training = model.training
    model.eval()
    ranks = []
    try:
        for start in range(0, len(targets), batch_size):
            items = history[start : start + batch_size].to(device)
            target = targets[start : start + batch_size].to(device)
            scores = model.score_all(model.user_state(items, items > 0)).float()
            ranks.append(target_ranks(scores, target, items if exclude_history else None).cpu())
    finally:
        model.train(was_training)
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return ranking_metrics(all_ranks, ks)
