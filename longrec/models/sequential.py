"""Next-item recommenders (RecBLR, SASRec): a causal encoder over item ids, scored against all items.

Every model here maps right-padded histories ``items [B, L]`` with ``mask [B, L]`` to hidden states
[B, L, d] where position t depends only on positions ≤ t, so one forward pass trains on every prefix.
Scores are dot products with the item table (tied embeddings): the user state at the last valid position
times ``item_embedding.weightᵀ``; item 0 (padding) is never a candidate.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["SequentialRecommender", "gather_last_valid"]


def gather_last_valid(hidden: Tensor, mask: Tensor) -> Tensor:
    """hidden [B, L, d] at each row's last valid position → [B, d] (position 0 for an all-padding row)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)  # largest valid index; works for any mask pattern
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class SequentialRecommender(nn.Module, abc.ABC):
    """Causal history encoder with a tied item table: ``encode``, ``user_state`` and ``score_all``."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    item_embedding: nn.Embedding

    def __init__(self, n_items: int, max_history_length: int, config: Any) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_history_length = max_history_length
        self.config = config

    @abc.abstractmethod
    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """Hidden states [B, L, d]; position t sees only positions ≤ t and never padding."""

    def user_state(self, items: Tensor, mask: Tensor) -> Tensor:
        """The state at the last valid position: [B, d]."""
        return gather_last_valid(self.encode(items, mask), mask)

    def score_all(self, states: Tensor) -> Tensor:
        """Scores of every item for each state: [..., n_items] (column 0 is padding)."""
        return states @ self.item_embedding.weight.t()

    def next_item_loss(self, items: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        """Mean softmax cross-entropy over all items at every position with a target (target 0 = none); the
        padding row is out of the softmax unless the config's ``padding_in_softmax`` (RecBole's) says so."""
        hidden = self.encode(items, mask)
        has_target = targets > 0
        logits = self.score_all(hidden[has_target])  # only scored rows: [n_targets, n_items]
        if not getattr(self.config, "padding_in_softmax", False):
            logits[:, 0] = torch.finfo(logits.dtype).min  # padding is never the answer
        return nn.functional.cross_entropy(logits, targets[has_target])
