"""DIN: Deep Interest Network (Zhou et al., KDD 2018), the baseline of docs/MODELS.md section 1.

An activation unit scores every history item against the target, the user interest is the weighted sum
of history embeddings, and an MLP head maps [interest, target, interest ⊙ target, side] to a logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.schema import FeatureSpec
from longrec.models.base import (
    ACTIVATIONS,
    MLP,
    CTRModel,
    SideFeatureEmbedding,
    make_activation,
    padded_embedding,
)

__all__ = ["DIN", "DINBackbone", "DINConfig", "ActivationUnit"]


@dataclass
class DINConfig:
    """DIN hyper-parameters; the defaults train well on MovieLens-sized data."""

    embedding_dim: int = 32  # d: item (and time-bucket) embedding width
    attention_hidden: tuple[int, ...] = (80, 40)  # activation unit MLP, paper sizes
    head_hidden: tuple[int, ...] = (200, 80)  # prediction MLP, paper sizes
    activation: str = "dice"  # "dice" | "prelu" | "sigmoid", used in the activation unit and the head
    softmax_attention: bool = (
        False  # False: raw weights (paper); True: masked softmax of w/√d (official code)
    )
    use_side_features: bool = True  # genre / age / gender / occupation embeddings into the head
    side_embedding_dim: int = 8  # width of each side-feature embedding (small vocabularies)
    use_time_buckets: bool = False  # add a Δt-bucket embedding to each history item embedding
    dropout: float = 0.0  # dropout after each head hidden layer
    l2_embedding: float = 0.0  # mini-batch-aware L2 on item-embedding rows seen in the batch (0 = off)
    embedding_init_std: float = 0.05  # N(0, std) init; small so unnormalised sums over L items stay tame

    def __post_init__(self) -> None:
        self.attention_hidden = tuple(self.attention_hidden)
        self.head_hidden = tuple(self.head_hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.embedding_dim <= 0 or self.side_embedding_dim <= 0:
            raise ValueError("embedding widths must be positive")
        if not self.attention_hidden:
            raise ValueError("attention_hidden needs at least one layer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l2_embedding < 0:
            raise ValueError(f"l2_embedding must be >= 0, got {self.l2_embedding}")


class ActivationUnit(nn.Module):
    """MLP([e_j, v, e_j − v, e_j ⊙ v]) → one weight per history position: [B, L, d] × [B, d] → [B, L].

    The first layer is one ``nn.Linear(4d, H)`` but is applied in decomposed form,
    W·[e; v; e−v; e⊙v] = (W_e + W_diff)·e + W_prod·(e⊙v) + (W_v − W_diff)·v, so the target term is
    computed once per sample instead of once per position and [B, L, 4d] is never built. Same function,
    same parameters, about half the FLOPs of the first layer.
    """

    # Serving on CPU sets this (``enable_fused_cpu_scoring``): ``score_targets`` then runs the fused kernel.
    fused_cpu_scoring: bool = False

    def __init__(self, dim: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.dim = dim
        self.input_layer = nn.Linear(4 * dim, hidden[0])
        self.input_activation = make_activation(activation, hidden[0])
        self.rest = MLP(hidden[0], hidden[1:], activation, output_dim=1)

    def forward(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        w_e, w_v, w_diff, w_prod = self.input_layer.weight.split(self.dim, dim=1)
        history_weight = torch.cat([w_e + w_diff, w_prod], dim=1)  # [H, 2d]
        target_term = F.linear(target, w_v - w_diff, self.input_layer.bias)  # [B, H]
        features = torch.cat([history, history * target.unsqueeze(1)], dim=-1)  # [B, L, 2d]
        hidden = F.linear(features, history_weight) + target_term.unsqueeze(1)
        hidden = self.input_activation(hidden, mask)
        return self.rest(hidden, mask).squeeze(-1)

    def enable_fused_cpu_scoring(self) -> bool:
        """Score candidates through the fused CPU kernel (``longrec.kernels.din_attention``) from now on;
        False, and the torch path stays, where the kernel cannot be built. Eval mode only."""
        from longrec.kernels.din_attention import din_kernel_available

        self.fused_cpu_scoring = din_kernel_available()
        return self.fused_cpu_scoring

    def history_term(self, history: Tensor) -> Tensor:
        """The target-independent part of the first layer, (W_e + W_diff)·e: [B, L, d] → [B, L, H]."""
        w_e, _, w_diff, _ = self.input_layer.weight.split(self.dim, dim=1)
        return F.linear(history, w_e + w_diff)

    def score_targets(self, history: Tensor, history_term: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Weights [C, L] of C targets [C, d] against one precomputed history ([1, L, d], [1, L, H]).

        Serving's split of ``forward``: ``history_term`` is computed once per user, only the product and
        target terms once per candidate. Eval mode only (Dice uses its running statistics).
        """
        _, w_v, w_diff, w_prod = self.input_layer.weight.split(self.dim, dim=1)
        target_term = F.linear(target, w_v - w_diff, self.input_layer.bias)  # [C, H]
        if self.fused_cpu_scoring and history.device.type == "cpu" and history.dtype == torch.float32:
            from longrec.kernels.din_attention import fused_scores

            return fused_scores(self, history, history_term, target, target_term)
        hidden = F.linear(history * target.unsqueeze(1), w_prod) + history_term + target_term.unsqueeze(1)
        hidden = self.input_activation(hidden, mask)
        return self.rest(hidden, mask).squeeze(-1)


class DINBackbone(nn.Module):
    """DIN's user side: item (and time-bucket) embeddings, side features and the activation unit that
    pools the history against a target. DIN puts an MLP head on it; LMN adds its memory reads first."""

    # Parameter names of models saved before the backbone was its own module (loaded transparently).
    OWN = ("item_embedding", "time_embedding", "side", "attention")

    def __init__(self, spec: FeatureSpec, config: DINConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        # One table for history and target items; row 0 is padding and stays zero.
        self.item_embedding = padded_embedding(spec.n_items, d, config.embedding_init_std)
        self.time_embedding: nn.Embedding | None = None
        if config.use_time_buckets:
            self.time_embedding = padded_embedding(spec.n_time_buckets, d, config.embedding_init_std)
        self.side = SideFeatureEmbedding(spec, config.side_embedding_dim, enabled=config.use_side_features)
        self.attention = ActivationUnit(d, config.attention_hidden, config.activation)
        self.output_dim = 3 * d + self.side.output_dim  # width of head_features

    def embed_history(self, batch: dict[str, Tensor]) -> Tensor:
        """e_j (+ its time-bucket embedding): [B, L, d]."""
        history = self.item_embedding(batch["history_items"])
        if self.time_embedding is not None:
            history = history + self.time_embedding(batch["history_time_buckets"])
        return history

    def weights_from_scores(self, scores: Tensor, mask: Tensor) -> Tensor:
        """Per-position weights, exactly 0 on padding: raw scores (paper) or a masked softmax."""
        if self.config.softmax_attention:
            scores = scores / math.sqrt(self.config.embedding_dim)
            # Masked softmax; multiplying by the mask afterwards keeps an all-padded row at zero, not NaN.
            weights = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)
            return weights * mask
        return scores.masked_fill(~mask, 0.0)

    def attention_weights(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-position weights [B, L], exactly 0 on padded positions."""
        return self.weights_from_scores(self.attention(history, target, mask), mask)

    def head_features(self, batch: dict[str, Tensor], interest: Tensor, target: Tensor) -> Tensor:
        """[interest, v, interest ⊙ v, side]: what DIN's head reads."""
        return torch.cat([interest, target, interest * target, self.side(batch)], dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """history [B, L, d], target [B, d], weights [B, L], interest [B, d] and the head features."""
        mask = batch["history_mask"]
        history = self.embed_history(batch)
        target = self.item_embedding(batch["target_item"])
        weights = self.attention_weights(history, target, mask)
        interest = torch.bmm(weights.unsqueeze(1), history).squeeze(1)  # Σ_j w_j e_j: [B, d]
        features = self.head_features(batch, interest, target)
        return {
            "history": history,
            "target": target,
            "weights": weights,
            "interest": interest,
            "features": features,
        }

    # -- serving: the candidate-independent part once per user, then every candidate ------------------
    def encode_user(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What scoring needs from one user's history (a batch of one row), independent of the target."""
        history = self.embed_history(batch)
        return {
            "history": history,
            "mask": batch["history_mask"],
            "history_term": self.attention.history_term(history),
        }

    def score_candidates(self, user: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """forward()'s outputs for C candidate targets of the user of ``encode_user`` (eval mode)."""
        history, mask = user["history"], user["mask"]
        target = self.item_embedding(batch["target_item"])  # [C, d]
        scores = self.attention.score_targets(history, user["history_term"], target, mask)
        weights = self.weights_from_scores(scores, mask.expand_as(scores))
        interest = weights @ history[0]  # [C, L] × [L, d]
        return {
            "target": target,
            "weights": weights,
            "interest": interest,
            "features": self.head_features(batch, interest, target),
        }


def prefix_backbone_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: checkpoints from before the backbone module name its parameters without
    the ``backbone.`` prefix; rename them so old registered models still load."""
    for key in list(state_dict):
        if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0] in DINBackbone.OWN:
            state_dict[f"{prefix}backbone.{key[len(prefix) :]}"] = state_dict.pop(key)


class UsesDINBackbone:
    """For models built on ``self.backbone``: its item table and activation unit under the names models
    and tests use, and loading of checkpoints from before the backbone module (call in ``__init__``)."""

    backbone: DINBackbone

    def _accept_pre_backbone_checkpoints(self) -> None:
        self.register_load_state_dict_pre_hook(prefix_backbone_keys)

    @property
    def item_embedding(self) -> nn.Embedding:
        """The backbone's item table (history and target share it)."""
        return self.backbone.item_embedding

    @property
    def attention(self) -> ActivationUnit:
        return self.backbone.attention


class DIN(UsesDINBackbone, CTRModel):
    """Deep Interest Network: the backbone's pooled interest and an MLP head."""

    name: ClassVar[str] = "din"
    config_class: ClassVar[type] = DINConfig

    def __init__(self, spec: FeatureSpec, config: DINConfig | None = None) -> None:
        config = config if config is not None else DINConfig()
        super().__init__(spec, config)
        self.backbone = DINBackbone(spec, config)
        self.head = MLP(
            self.backbone.output_dim,
            config.head_hidden,
            config.activation,
            output_dim=1,
            dropout=config.dropout,
        )
        self._accept_pre_backbone_checkpoints()

    def attention_weights(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-position weights [B, L], exactly 0 on padded positions."""
        return self.backbone.attention_weights(history, target, mask)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.backbone(batch)["features"]).squeeze(-1)

    # -- serving: the candidate-independent user part once, then every candidate --------------------
    def encode_user(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What scoring needs from one user's history (a batch of one row), independent of the target."""
        return self.backbone.encode_user(batch)

    def score_candidates(self, user: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Logits [C] of the C targets in ``batch`` for the user of ``encode_user``; equals ``forward``."""
        return self.head(self.backbone.score_candidates(user, batch)["features"]).squeeze(-1)

    def loss(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        """BCE plus, when ``l2_embedding > 0``, the mini-batch-aware L2 penalty."""
        loss = super().loss(batch, logits)
        if self.config.l2_embedding > 0:
            loss = loss + self.config.l2_embedding * self.embedding_l2(batch)
        return loss

    def embedding_l2(self, batch: dict[str, Tensor]) -> Tensor:
        """Σ ||w_j||² over the distinct item rows used by this batch (targets and valid history).

        The DIN paper's mini-batch-aware regulariser touches only rows present in the batch, so sparse
        rows are not shrunk on every step; the paper's 1/n_j frequency weighting is left out because the
        model does not know global item frequencies.
        """
        seen = torch.cat([batch["target_item"], batch["history_items"][batch["history_mask"]]]).unique()
        return self.item_embedding(seen).square().sum()
