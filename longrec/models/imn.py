"""IMN: the Iterative Memory Network (ICLR 2022 submission, no public code), docs/MODELS.md section 2.

Every history event is embedded as item + log2 time bucket + position (0 = newest). A memory initialised
from the target reads the history N times: multi-way attention over [e − m, e − v, e ⊙ m, e ⊙ v] gives
sigmoid weights, the weighted sum of the history updates the memory through a GRU cell. An optional
memory-enhancement GRU refines the memory against the target, and an MLP head scores it.

The first attention layer is applied in decomposed form so the [B, L, 4d] features are never built:
W·[e − m; e − v; e ⊙ m; e ⊙ v] = (A + B + C·diag(m) + D·diag(v))·e − A·m − B·v, i.e. one per-sample
[d, H] matrix and one per-sample bias, then a single batched matmul over the history per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.schema import FeatureSpec
from longrec.models.base import ACTIVATIONS, MLP, CTRModel, SideFeatureEmbedding, padded_embedding

__all__ = ["IMN", "IMNConfig", "MultiWayAttention", "history_positions"]

WEIGHT_NORMALISATIONS = ("none", "valid_length")


@dataclass
class IMNConfig:
    """IMN hyper-parameters; defaults are the paper's IMN-3P (without the "+") at public-data sizes.

    Ablation switches (the paper's table): ``iterations`` (N = 1..4), ``memory_enhancement`` (the "+"),
    ``euclidean_terms`` (False = Hadamard only: [e ⊙ m, e ⊙ v]), ``late_cross`` and
    ``weight_normalisation``.
    """

    embedding_dim: int = 32  # d: item, time-bucket and position embeddings (summed), memory width
    iterations: int = 3  # N: memory read passes over the history ("3P" = 3 passes)
    attention_hidden: int = 64  # width of the first point-wise FFN layer (sigmoid), then → 1 (sigmoid)
    # "+": T GRU steps u_t = GRU([W u_{t-1}; v], u_{t-1}) after the reads. Off by default: 3P scored at or
    # above 3P+ in every study here (ML-100k L=50, dslabs L=50 and L=200; README "IMN vs DIN"), and the
    # tuning step (longrec/train/tuning.py) can still switch it on per dataset.
    memory_enhancement: bool = False
    enhancement_steps: int = 3  # T
    euclidean_terms: bool = True  # False: Hadamard-only ablation, features [e ⊙ m, e ⊙ v]
    # Late ("delayed") cross ablation, our reading of the paper: the target does not take part in reading
    # the history. The memory starts from the masked mean of the history instead of v and the attention
    # sees only [e − m, e ⊙ m]; the target meets the user state only afterwards (enhancement GRU, head).
    late_cross: bool = False
    # Sigmoid weights are not normalised in the paper ("none"); "valid_length" divides the pooled sum by
    # the number of valid events, which keeps its scale independent of L.
    weight_normalisation: Literal["none", "valid_length"] = "none"
    use_time_buckets: bool = True  # add the log2 Δt-bucket embedding to each event
    use_positions: bool = True  # add the position embedding (0 = newest valid event)
    head_hidden: tuple[int, ...] = (128, 64)  # prediction MLP, the paper's public-data sizes
    head_activation: str = "dice"  # "dice" | "prelu" | "sigmoid" in the head, as DIN's head
    use_side_features: bool = True  # genre / age / gender / occupation embeddings into the head
    side_embedding_dim: int = 8  # width of each side-feature embedding
    dropout: float = 0.0  # dropout after each head hidden layer
    embedding_init_std: float = 0.05  # N(0, std) init, as DIN
    # Multiplies the trainer's learning rate for this model's Adam. The GRU memory path learns slowly at a
    # small lr (benchmarks/results/imn_vs_din_ml100k.md); left at 1 so a shared lr stays shared: compare
    # models at equal lr.
    learning_rate_scale: float = 1.0

    def __post_init__(self) -> None:
        self.head_hidden = tuple(self.head_hidden)
        if not 1 <= self.iterations <= 8:
            raise ValueError(f"iterations must be in 1..8, got {self.iterations}")
        if self.enhancement_steps < 1:
            raise ValueError(f"enhancement_steps must be >= 1, got {self.enhancement_steps}")
        if self.embedding_dim <= 0 or self.attention_hidden <= 0 or self.side_embedding_dim <= 0:
            raise ValueError("embedding_dim, attention_hidden and side_embedding_dim must be positive")
        if self.weight_normalisation not in WEIGHT_NORMALISATIONS:
            raise ValueError(
                f"weight_normalisation must be one of {WEIGHT_NORMALISATIONS}, "
                f"got {self.weight_normalisation!r}"
            )
        if self.head_activation not in ACTIVATIONS:
            raise ValueError(f"unknown head_activation {self.head_activation!r}; choose from {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate_scale <= 0:
            raise ValueError(f"learning_rate_scale must be > 0, got {self.learning_rate_scale}")


def history_positions(mask: Tensor) -> Tensor:
    """Position of each event counted from the newest valid one (0 = newest), 0 on padding: [B, L].

    Histories are right-padded and oldest first, so event j of a row with n valid events is n − 1 − j.
    """
    n_valid = mask.sum(dim=1, keepdim=True)
    index = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return torch.where(mask, n_valid - 1 - index, torch.zeros_like(index))


class MultiWayAttention(nn.Module):
    """Point-wise FFN over [e − m, e − v, e ⊙ m, e ⊙ v] → sigmoid weight per event: [B, L].

    ``input_layer`` holds the weights of the explicit form (blocks in that order; only the terms the
    config keeps); ``forward`` applies it decomposed, one ``baddbmm`` per call.
    """

    # Serving on CPU sets this (``enable_fused_cpu_scoring``): ``shared_history_weights`` then runs the
    # fused kernel (longrec.kernels.din_attention.unit_scores).
    fused_cpu_scoring: bool = False

    def __init__(self, dim: int, hidden: int, euclidean_terms: bool, use_target: bool) -> None:
        super().__init__()
        self.dim = dim
        self.euclidean_terms = euclidean_terms
        self.use_target = use_target
        self.terms = self.term_names(euclidean_terms, use_target)
        self.input_layer = nn.Linear(len(self.terms) * dim, hidden)
        self.output_layer = nn.Linear(hidden, 1)

    @staticmethod
    def term_names(euclidean_terms: bool, use_target: bool) -> tuple[str, ...]:
        """The feature blocks in input order, e.g. ("e-m", "e-v", "e*m", "e*v")."""
        others = ("m", "v") if use_target else ("m",)
        diffs = tuple(f"e-{o}" for o in others) if euclidean_terms else ()
        return diffs + tuple(f"e*{o}" for o in others)

    def explicit_features(self, history: Tensor, memory: Tensor, target: Tensor) -> Tensor:
        """The [B, L, k·d] features of the paper's formula (reference for tests; never used in training)."""
        operands = {"m": memory.unsqueeze(1), "v": target.unsqueeze(1)}
        blocks = [history - operands[t[2]] if t[1] == "-" else history * operands[t[2]] for t in self.terms]
        return torch.cat([block.expand_as(history) for block in blocks], dim=-1)

    def decomposed(self, memory: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The first layer per sample: matrix [B, H, d] on e and bias [B, H], for memory and target [B, d]."""
        blocks = dict(zip(self.terms, self.input_layer.weight.split(self.dim, dim=1), strict=True))
        operands = {"m": memory, "v": target}
        shared = sum((w for t, w in blocks.items() if t[1] == "-"), torch.zeros_like(blocks["e*m"]))
        matrix = shared  # [H, d] → per-sample [B, H, d] once a product term is added
        bias = self.input_layer.bias.expand(memory.shape[0], -1)  # [B, H]
        for term, weight in blocks.items():
            operand = operands[term[2]]
            if term[1] == "-":  # W·(e − o) = W·e − W·o: W·e is in `shared`
                bias = bias - F.linear(operand, weight)
            else:  # W·(e ⊙ o) = (W·diag(o))·e
                matrix = matrix + weight * operand.unsqueeze(1)
        return matrix, bias

    def forward(self, history: Tensor, memory: Tensor, target: Tensor) -> Tensor:
        """Unmasked weights a_j ∈ (0, 1) of every position: [B, L, d] × [B, d] × [B, d] → [B, L]."""
        matrix, bias = self.decomposed(memory, target)
        hidden = torch.sigmoid(torch.baddbmm(bias.unsqueeze(1), history, matrix.transpose(1, 2)))
        return torch.sigmoid(self.output_layer(hidden).squeeze(-1))

    def enable_fused_cpu_scoring(self) -> bool:
        """Score candidates through the fused CPU kernel from now on; False, and the torch path stays,
        where the kernel cannot be built. Eval mode only."""
        from longrec.kernels.din_attention import din_kernel_available

        self.fused_cpu_scoring = din_kernel_available()
        return self.fused_cpu_scoring

    def shared_history_weights(self, history: Tensor, memory: Tensor, target: Tensor) -> Tensor:
        """``forward`` for C samples that share one history (serving's candidates): history [L, d],
        memory and target [C, d] → unmasked weights [C, L]. The history is not copied per candidate; with
        ``fused_cpu_scoring`` the [C, L, H] hidden layer is never built either."""
        matrix, bias = self.decomposed(memory, target)
        if self.fused_cpu_scoring and history.device.type == "cpu" and history.dtype == torch.float32:
            from longrec.kernels.din_attention import unit_scores

            logits = unit_scores(history, matrix.transpose(1, 2), bias, self.output_layer, "sigmoid")
        else:
            # As forward does (baddbmm over the history expanded, a view): torch's broadcast matmul of one
            # [L, d] against [C, d, H] was slower on 2 threads.
            rows = history.expand(matrix.shape[0], -1, -1)
            hidden = torch.sigmoid(torch.baddbmm(bias.unsqueeze(1), rows, matrix.transpose(1, 2)))
            logits = self.output_layer(hidden).squeeze(-1)
        return torch.sigmoid(logits)


class IMN(CTRModel):
    """Iterative Memory Network: N target-initialised memory reads, optional enhancement, MLP head."""

    name: ClassVar[str] = "imn"
    config_class: ClassVar[type] = IMNConfig

    def __init__(self, spec: FeatureSpec, config: IMNConfig | None = None) -> None:
        config = config if config is not None else IMNConfig()
        super().__init__(spec, config)
        d = config.embedding_dim
        self.item_embedding = self._table(spec.n_items, d, padding=True)
        self.time_embedding = (
            self._table(spec.n_time_buckets, d, padding=True) if config.use_time_buckets else None
        )
        self.position_embedding = self._table(spec.max_history_length, d) if config.use_positions else None
        self.attention = MultiWayAttention(
            d, config.attention_hidden, config.euclidean_terms, use_target=not config.late_cross
        )
        self.memory_cell = nn.GRUCell(d, d)  # m^n = GRU(c^n, m^{n-1}), shared by the N iterations
        self.enhance_projection: nn.Linear | None = None
        self.enhance_cell: nn.GRUCell | None = None
        if config.memory_enhancement:
            self.enhance_projection = nn.Linear(d, d, bias=False)  # W in [W u_{t-1}; v]
            self.enhance_cell = nn.GRUCell(2 * d, d)
        self.side = SideFeatureEmbedding(spec, config.side_embedding_dim, enabled=config.use_side_features)
        self.head = MLP(
            3 * d + self.side.output_dim,
            config.head_hidden,
            config.head_activation,
            output_dim=1,
            dropout=config.dropout,
        )

    def _table(self, rows: int, dim: int, padding: bool = False) -> nn.Embedding:
        return padded_embedding(rows, dim, self.config.embedding_init_std, padding=padding)

    def embed_history(self, batch: dict[str, Tensor]) -> Tensor:
        """e_j = item + time bucket + position embedding: [B, L, d] (padded rows are masked later)."""
        history = self.item_embedding(batch["history_items"])
        if self.time_embedding is not None:
            history = history + self.time_embedding(batch["history_time_buckets"])
        if self.position_embedding is not None:
            # Histories longer than the spec share the last position row rather than failing.
            positions = history_positions(batch["history_mask"]).clamp_max(self.spec.max_history_length - 1)
            history = history + self.position_embedding(positions)
        return history

    def read_memory(self, history: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The N memory reads: (m^N [B, d], the weights [B, L] of every iteration, 0 on padding)."""
        weights_per_iteration = []
        valid = mask.to(history.dtype)
        n_valid = valid.sum(dim=1, keepdim=True).clamp_min(1.0)
        if self.config.late_cross:
            memory = torch.bmm(valid.unsqueeze(1), history).squeeze(1) / n_valid
        else:
            memory = target
        for _ in range(self.config.iterations):
            weights = self.attention(history, memory, target) * valid
            pooled = torch.bmm(weights.unsqueeze(1), history).squeeze(1)  # Σ_j a_j e_j
            if self.config.weight_normalisation == "valid_length":
                pooled = pooled / n_valid
            memory = self.memory_cell(pooled, memory)
            weights_per_iteration.append(weights)
        return memory, weights_per_iteration

    def read_shared_history(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """``read_memory``'s m^N for C targets [C, d] against one user's history ([1, L, d], mask [1, L]):
        serving's candidates, without expanding the history to C copies."""
        events = history[0]
        valid = mask.to(history.dtype)  # [1, L]
        n_valid = valid.sum(dim=1, keepdim=True).clamp_min(1.0)
        if self.config.late_cross:
            memory = (valid @ events / n_valid).expand(target.shape[0], -1)
        else:
            memory = target
        for _ in range(self.config.iterations):
            weights = self.attention.shared_history_weights(events, memory, target) * valid
            pooled = weights @ events  # Σ_j a_j e_j: [C, d]
            if self.config.weight_normalisation == "valid_length":
                pooled = pooled / n_valid
            memory = self.memory_cell(pooled, memory)
        return memory

    def enhance(self, memory: Tensor, target: Tensor) -> Tensor:
        """Memory enhancement: T steps of u_t = GRU([W u_{t-1}; v], u_{t-1}), u_0 = m^N."""
        if self.enhance_cell is None or self.enhance_projection is None:
            return memory
        state = memory
        for _ in range(self.config.enhancement_steps):
            state = self.enhance_cell(torch.cat([self.enhance_projection(state), target], dim=-1), state)
        return state

    def user_interest(self, batch: dict[str, Tensor]) -> Tensor:
        """The target-aware user state u_T [B, d] fed to the head."""
        target = self.item_embedding(batch["target_item"])
        memory, _ = self.read_memory(self.embed_history(batch), target, batch["history_mask"])
        return self.enhance(memory, target)

    def build_optimizers(self, lr: float, weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """One Adam at ``lr · learning_rate_scale``."""
        return super().build_optimizers(lr * self.config.learning_rate_scale, weight_decay)

    # -- serving: the memory starts from the target, so only the history embedding is shared ---------
    def encode_user(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The embedded history of one user (a batch of one row), shared by every candidate."""
        return {"history": self.embed_history(batch), "mask": batch["history_mask"]}

    def score_candidates(self, user: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Logits [C] of the C targets in ``batch`` for the user of ``encode_user``; equals ``forward``."""
        target = self.item_embedding(batch["target_item"])
        memory = self.read_shared_history(user["history"], target, user["mask"])
        state = self.enhance(memory, target)
        head_input = torch.cat([state, target, state * target, self.side(batch)], dim=-1)
        return self.head(head_input).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        target = self.item_embedding(batch["target_item"])
        memory, _ = self.read_memory(self.embed_history(batch), target, batch["history_mask"])
        state = self.enhance(memory, target)
        head_input = torch.cat([state, target, state * target, self.side(batch)], dim=-1)
        return self.head(head_input).squeeze(-1)
