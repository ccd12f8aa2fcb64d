"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention next-item baseline of the RecBLR paper.

Item embedding + learned absolute position embedding (counted from the oldest event of the window),
LayerNorm and dropout, then ``n_layers`` blocks of causal multi-head self-attention and a point-wise FFN,
each with residual + LayerNorm (RecBole's post-norm layout). Attention is causal and masks padded keys,
so with right padding a valid position never attends to padding. Cost is O(L²·d) per layer: the
quadratic reference RecBLR is compared against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.models.sequential import SequentialRecommender

__all__ = ["SASRec", "SASRecBlock", "SASRecConfig"]


@dataclass
class SASRecConfig:
    """SASRec hyper-parameters; RecBole's defaults (d = 64, 2 layers, 2 heads, inner 256)."""

    embedding_dim: int = 64
    n_layers: int = 2  # transformer blocks (paper: 2)
    n_heads: int = 2  # RecBole default; the paper uses 1
    inner_dim: int = 256  # point-wise FFN width
    dropout: float = 0.2  # embedding, attention and FFN dropout (RecBole's default: 0.5)
    embedding_init_std: float = 0.02
    # "torch" defaults for the Linear layers | "recbole": N(0, 0.02) weights and zero biases, as RecBole's
    # SASRec (and RecBLR's official code) initialise them; RecBLR got the same switch (RECBLR.md).
    init: str = "torch"
    padding_in_softmax: bool = False  # RecBole's: the padding row 0 stays in the softmax (see RecBLR's)

    def __post_init__(self) -> None:
        if self.init not in ("torch", "recbole"):
            raise ValueError(f"unknown init {self.init!r}; choose torch or recbole")
        if self.embedding_dim % self.n_heads:
            raise ValueError(
                f"embedding_dim {self.embedding_dim} must be divisible by n_heads {self.n_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SASRecBlock(nn.Module):
    """Causal multi-head self-attention + point-wise FFN (GELU), each with residual and LayerNorm."""

    def __init__(self, dim: int, n_heads: int, inner_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout_p = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, inner_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner_dim, dim)
        )
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(batch, steps, dim)
        y = self.norm(x + self.dropout(self.out(attended)))
        return self.ffn_norm(y + self.dropout(self.ffn(y)))


class SASRec(SequentialRecommender):
    """SASRec with tied item embeddings and a full softmax over all items."""

    name: ClassVar[str] = "sasrec"
    config_class: ClassVar[type] = SASRecConfig

    def __init__(self, n_items: int, max_history_length: int, config: SASRecConfig | None = None) -> None:
        config = config if config is not None else SASRecConfig()
        super().__init__(n_items, max_history_length, config)
        d = config.embedding_dim
        self.item_embedding = nn.Embedding(n_items, d, padding_idx=0)
        self.position_embedding = nn.Embedding(max_history_length, d)
        for table in (self.item_embedding, self.position_embedding):
            nn.init.normal_(table.weight, std=config.embedding_init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.embedding_norm = nn.LayerNorm(d)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(d, config.n_heads, config.inner_dim, config.dropout) for _ in range(config.n_layers)
        )
        if config.init == "recbole":
            for module in self.blocks.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)

    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """Hidden states [B, L, d]; position t attends to valid positions ≤ t only."""
        steps = items.shape[1]
        if steps > self.max_history_length:
            raise ValueError(f"history length {steps} exceeds max_history_length {self.max_history_length}")
        positions = torch.arange(steps, device=items.device)
        x = self.item_embedding(items) + self.position_embedding(positions)
        x = self.embedding_dropout(self.embedding_norm(x))
        causal = torch.ones(steps, steps, dtype=torch.bool, device=items.device).tril()
        # Key j visible to query t iff j ≤ t and j is valid; the diagonal keeps padded queries finite.
        allowed = (causal & mask[:, None, :]) | torch.eye(steps, dtype=torch.bool, device=items.device)
        allowed = allowed[:, None]  # broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return x
