"""Product-key memory (Lample et al., 2019) as LMN uses it (docs/MODELS.md §4).

n = r² slots addressed by a row sub-key table and a column sub-key table (each [H, r, d_k/2]); slot
(i, j) = i·r + j has key [K_row[i]; K_col[j]], so q·key = q_row·K_row[i] + q_col·K_col[j] and the top-K
over all n slots is found from the top-K of each axis and the K×K grid of their sums: O((r + K²)·d_k)
per query instead of O(n·d_k). Values are an ``nn.Embedding`` with sparse gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.kernels.pkm import Backend, pkm_read, sorted_topk

__all__ = ["MemoryConfig", "ProductKeyMemory", "QUERY_VARIANTS", "UserAwareQuery", "axis_topk"]

QUERY_VARIANTS = ("split", "joint")


@dataclass
class MemoryConfig:
    """Shape of a product-key memory."""

    slots: int = 65_536  # n = r²; r = √n must be an integer (1,048,576 → r = 1024)
    key_dim: int = 64  # d_k: full key width; row and column sub-keys take d_k/2 each
    value_dim: int = 32  # d_v: width of a value slot
    top_k: int = 32  # K: slots read per query and head (also the per-axis top-K)
    heads: int = 1  # independent key sets (and queries) reading the shared value table; reads are summed

    def __post_init__(self) -> None:
        root = math.isqrt(self.slots) if self.slots > 0 else 0
        if root * root != self.slots or root < 1:
            raise ValueError(f"memory slots must be a perfect square (r² with r ≥ 1), got {self.slots}")
        if self.key_dim <= 0 or self.key_dim % 2:
            raise ValueError(f"key_dim must be a positive even number, got {self.key_dim}")
        if self.value_dim <= 0 or self.heads <= 0:
            raise ValueError("value_dim and heads must be positive")
        if not 1 <= self.top_k <= root:
            raise ValueError(f"top_k must lie in [1, √slots = {root}], got {self.top_k}")

    @property
    def n_rows(self) -> int:
        """r: number of row (and of column) sub-keys."""
        return math.isqrt(self.slots)


def axis_topk(query_half: Tensor, sub_keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Scores of [N, H, d_k/2] query halves against [H, r, d_k/2] sub-keys, then top-k: two [N, H, k]."""
    scores = torch.einsum("nhd,hrd->nhr", query_half, sub_keys)
    return sorted_topk(scores, k)


class ProductKeyMemory(nn.Module):
    """Row/column sub-keys, a sparse value table, the two-axis top-K activation and the weighted read."""

    def __init__(self, config: MemoryConfig, sparse: bool = True, backend: Backend = "auto") -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        half = config.key_dim // 2
        r = config.n_rows
        bound = 1.0 / math.sqrt(half)
        self.row_keys = nn.Parameter(torch.empty(config.heads, r, half).uniform_(-bound, bound))
        self.col_keys = nn.Parameter(torch.empty(config.heads, r, half).uniform_(-bound, bound))
        self.values = nn.Embedding(config.slots, config.value_dim, sparse=sparse)
        nn.init.normal_(self.values.weight, std=config.value_dim**-0.5)

    def row_topk(self, row_query: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K rows for query halves [N, H, d_k/2]: (scores, row ids) [N, H, K]."""
        return axis_topk(row_query, self.row_keys, self.config.top_k)

    def col_topk(self, col_query: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K columns for query halves [N, H, d_k/2]: (scores, column ids) [N, H, K]."""
        return axis_topk(col_query, self.col_keys, self.config.top_k)

    def read_topk(
        self, row_top: Tensor, row_idx: Tensor, col_top: Tensor, col_idx: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """K×K grid top-K, softmax and gather: (reads [N, d_v], slots [N, H, K], weights [N, H, K])."""
        return pkm_read(
            row_top,
            row_idx,
            col_top,
            col_idx,
            self.values.weight,
            self.config.n_rows,
            sparse_grad=self.values.sparse,
            backend=self.backend,
        )

    def forward(self, row_query: Tensor, col_query: Tensor) -> Tensor:
        """Reads [N, d_v] for query halves [N, H, d_k/2] (row half, column half)."""
        row_top, row_idx = self.row_topk(row_query)
        col_top, col_idx = self.col_topk(col_query)
        return self.read_topk(row_top, row_idx, col_top, col_idx)[0]


class UserAwareQuery(nn.Module):
    """User-aware query: ``split`` q = [W_i e ; W_u g] (item half → rows, user half → columns), or
    ``joint`` q = W [e ; g] cut in two. Returns (row half, column half), each [N, H, d_k/2]."""

    def __init__(self, item_dim: int, user_dim: int, key_dim: int, heads: int, variant: str = "split"):
        super().__init__()
        if variant not in QUERY_VARIANTS:
            raise ValueError(f"unknown query variant {variant!r}; choose from {', '.join(QUERY_VARIANTS)}")
        self.variant = variant
        self.heads = heads
        self.half = key_dim // 2
        if variant == "split":
            self.item_projection = nn.Linear(item_dim, heads * self.half)
            self.user_projection = nn.Linear(user_dim, heads * self.half)
        else:
            self.projection = nn.Linear(item_dim + user_dim, heads * key_dim)

    def row_query(self, item: Tensor) -> Tensor:
        """Split variant only: the row half from item embeddings [N, d] alone."""
        return self.item_projection(item).view(-1, self.heads, self.half)

    def col_query(self, user: Tensor) -> Tensor:
        """Split variant only: the column half from user features [N, d_g] alone."""
        return self.user_projection(user).view(-1, self.heads, self.half)

    def forward(self, item: Tensor, user: Tensor) -> tuple[Tensor, Tensor]:
        if self.variant == "split":
            return self.row_query(item), self.col_query(user)
        q = self.projection(torch.cat([item, user], dim=-1)).view(-1, self.heads, 2, self.half)
        return q[:, :, 0], q[:, :, 1]
