"""RecBLR: behaviour-dependent linear recurrent units (CIKM 2024), MODELS.md section 3.

Each BD-LRU layer: Linear d → 2D split into branch x and gate z; causal depthwise conv (kernel 4) + SiLU
on x; behaviour-dependent gates r, i; decay a = exp(−softplus(Λ)·r), input scale b = √(1 − a² + 1e-8)·i;
the recurrence h_t = a_t·h_{t−1} + b_t·x'_t by a parallel scan (``longrec.kernels.scan``); out =
Linear(SiLU(z)·h); residual + LayerNorm; FFN d → 4d → d (SiLU) with residual + LayerNorm.

Padding never leaks (the official code pads before the conv and lets padding enter the state): the
branch is zeroed at padded positions before the conv, and at padded positions the scan gets (a = 1,
β = 0), so the state passes through padding unchanged; the user state is read at the last valid position.
With right padding the causal conv never looks at later (padded) positions anyway. ``mask_padding=False``
reproduces the leaky reading (padding embeddings enter conv and state) for comparison.

Internally everything runs time-major ([L, B, ·]): the scan's CPU path is then a free view, and the
causal conv is K shifted multiply-adds along the leading axis.

Two models share the encoder: ``RecBLR`` (the CTR model, registered as "recblr": head on
[state, v, state ⊙ v, side]) and ``RecBLRNextItem`` (tied-embedding full-softmax next-item model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.schema import FeatureSpec
from longrec.kernels.scan import BACKENDS as SCAN_BACKENDS
from longrec.kernels.scan import linear_scan
from longrec.models.base import ACTIVATIONS, MLP, CTRModel, SideFeatureEmbedding, padded_embedding
from longrec.models.sequential import SequentialRecommender

__all__ = [
    "BDLRULayer",
    "RecBLR",
    "RecBLRConfig",
    "RecBLREncoder",
    "RecBLRNextItem",
    "RecBLRNextItemConfig",
    "decay_parameter_init",
]


DECAY_INITS = ("uniform", "official")
INITS = ("torch", "official")


def decay_parameter_init(
    n_channels: int, decay_min: float = 0.9, decay_max: float = 0.999, spacing: str = "uniform"
) -> Tensor:
    """Λ such that the channels' decays exp(−softplus(Λ)) run from decay_min to decay_max.

    "uniform": the decays themselves evenly spaced. "official" (chengkai-liu/RecBLR): Λ evenly spaced
    between softplus⁻¹(−log decay_min) and softplus⁻¹(−log decay_max). Since softplus(Λ) ≈ e^Λ there, the
    rates −log a are then about log-uniform: half the channels decay slower than 0.99 per step, against
    about a tenth with "uniform"."""
    if not 0.0 < decay_min <= decay_max < 1.0:
        raise ValueError(f"need 0 < decay_min <= decay_max < 1, got {decay_min}, {decay_max}")
    if spacing not in DECAY_INITS:
        raise ValueError(f"unknown decay init {spacing!r}; choose from {', '.join(DECAY_INITS)}")
    if spacing == "official":
        ends = -torch.log(torch.tensor([decay_min, decay_max], dtype=torch.float64))
        low, high = torch.log(torch.expm1(ends))
        return torch.linspace(float(low), float(high), n_channels, dtype=torch.float64).float()
    decay = torch.linspace(decay_min, decay_max, n_channels, dtype=torch.float64)
    rate = -torch.log(decay)  # softplus(Λ) = −log a
    return torch.log(torch.expm1(rate)).float()  # softplus⁻¹


class BDLRULayer(nn.Module):
    """One BD-LRU block plus its FFN, on time-major inputs [L, B, d] with a validity mask [L, B]."""

    def __init__(
        self,
        dim: int,
        expansion: int = 2,
        conv_kernel: int = 4,
        dropout: float = 0.2,
        decay_min: float = 0.9,
        decay_max: float = 0.999,
        mask_padding: bool = True,
        scan_backend: str = "auto",
        decay_init: str = "uniform",
        layer_norm_eps: float = 1e-5,
        pow2_left_pad: bool = False,
    ) -> None:
        super().__init__()
        inner = expansion * dim
        self.inner = inner
        self.mask_padding = mask_padding
        self.pow2_left_pad = pow2_left_pad
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        # Depthwise causal conv as [D, K] weights: y_t = bias + Σ_k w_k · x_{t−K+1+k}.
        self.conv_weight = nn.Parameter(torch.empty(inner, conv_kernel))
        self.conv_bias = nn.Parameter(torch.zeros(inner))
        bound = 1.0 / math.sqrt(conv_kernel)  # Conv1d's default fan-in bound for a depthwise kernel
        nn.init.uniform_(self.conv_weight, -bound, bound)
        self.gates = nn.Linear(inner, 2 * inner)  # r and i
        self.decay_logit = nn.Parameter(decay_parameter_init(inner, decay_min, decay_max, decay_init))  # Λ
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.ffn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def causal_conv(self, x: Tensor) -> Tensor:
        """Depthwise causal conv along the leading (time) axis of [L, B, D]: output t sees inputs ≤ t."""
        kernel = self.conv_weight.shape[1]
        padded = F.pad(x, (0, 0, 0, 0, kernel - 1, 0))
        steps = x.shape[0]
        out = torch.addcmul(self.conv_bias, padded[kernel - 1 :], self.conv_weight[:, kernel - 1])
        for k in range(kernel - 1):
            out = torch.addcmul(out, padded[k : k + steps], self.conv_weight[:, k])
        return out

    def decay(self, r: Tensor) -> Tensor:
        """a = exp(−softplus(Λ) · r), in (0, 1)."""
        return torch.exp(-F.softplus(self.decay_logit) * r)

    def forward(self, x: Tensor, mask: Tensor, last_index: Tensor | None = None) -> Tensor:
        """[L, B, d] → [L, B, d]; with ``last_index`` [B], only the output at those positions: [B, d].

        The recurrence still runs over every position, but the output projection, LayerNorm and FFN,
        which are per position, are then computed once per sequence (what a CTR head reads).
        """
        branch, gate = self.in_proj(x).chunk(2, dim=-1)
        valid = mask.unsqueeze(-1)
        if self.mask_padding:
            branch = branch * valid
        lead = 0
        if self.pow2_left_pad:
            # The official code left-pads the branch with zeros to a power-of-two length before its conv;
            # those steps are not masked, so silu(conv bias) enters the state before the first item.
            lead = (1 << (x.shape[0] - 1).bit_length()) - x.shape[0]
            branch = F.pad(branch, (0, 0, 0, 0, lead, 0))
            valid = F.pad(valid, (0, 0, 0, 0, lead, 0), value=True)
        branch = F.silu(self.causal_conv(branch))
        gates = torch.sigmoid(self.gates(branch))
        if self.mask_padding:
            # r = i = 0 on padding gives (a = 1, β = 0): the state passes through padded steps unchanged.
            gates = gates * valid
        r, i = gates.chunk(2, dim=-1)
        a = self.decay(r)
        b = torch.sqrt(torch.addcmul(torch.ones_like(a), a, a, value=-1.0) + 1e-8) * i
        beta = b * branch
        h = linear_scan(a, beta, dim=0, backend=self.scan_backend)[lead:]
        if last_index is not None:
            rows = torch.arange(x.shape[1], device=x.device)
            h, gate, x = h[last_index, rows], gate[last_index, rows], x[last_index, rows]
        out = self.out_proj(F.silu(gate) * h)
        y = self.norm(self.dropout(out) + x)
        return self.ffn_norm(self.dropout(self.ffn(y)) + y)


class RecBLREncoder(nn.Module):
    """Item embeddings → LayerNorm(Dropout(·)) → BD-LRU layers; batch-first in and out."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_layers: int = 2,
        expansion: int = 2,
        conv_kernel: int = 4,
        dropout: float = 0.2,
        decay_min: float = 0.9,
        decay_max: float = 0.999,
        mask_padding: bool = True,
        embedding_init_std: float = 0.02,
        scan_backend: str = "auto",
        decay_init: str = "uniform",
        init: str = "torch",
        layer_norm_eps: float = 1e-5,
        pow2_left_pad: bool = False,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        self.item_embedding = padded_embedding(n_items, dim, embedding_init_std)
        self.embedding_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            BDLRULayer(
                dim,
                expansion,
                conv_kernel,
                dropout,
                decay_min,
                decay_max,
                mask_padding,
                scan_backend,
                decay_init,
                layer_norm_eps,
                pow2_left_pad,
            )
            for _ in range(n_layers)
        )
        if init == "official":
            self._official_init(conv_kernel)

    def _official_init(self, conv_kernel: int) -> None:
        """RecBole's `_init_weights` as the official code applies it: every Linear weight N(0, 0.02) and its
        bias 0 (PyTorch's default is uniform ±1/√fan_in: ±0.125 for d = 64); the conv is an nn.Conv1d there,
        which that init skips, so its bias keeps PyTorch's uniform ±1/√K (ours starts at 0)."""
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        bound = 1.0 / math.sqrt(conv_kernel)
        for layer in self.layers:
            nn.init.uniform_(layer.conv_bias, -bound, bound)

    @classmethod
    def from_config(cls, n_items: int, config) -> RecBLREncoder:
        """The encoder of a RecBLR config (the CTR and the next-item configs share these fields)."""
        return cls(
            n_items,
            config.embedding_dim,
            config.n_layers,
            config.expansion,
            config.conv_kernel,
            config.dropout,
            config.decay_min,
            config.decay_max,
            config.mask_padding,
            config.embedding_init_std,
            config.scan_backend,
            config.decay_init,
            config.init,
            config.layer_norm_eps,
            config.pow2_left_pad,
        )

    def forward(self, items: Tensor, mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """Hidden states [B, L, d] for items [B, L]; ``extra`` [B, L, d] is added to the item embeddings."""
        x, time_mask = self._embed(items, mask, extra)
        for layer in self.layers:
            x = layer(x, time_mask)
        return x.transpose(0, 1)

    def last_state(self, items: Tensor, mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """The output at each row's last valid position, [B, d], skipping the last layer's other outputs."""
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        last_index = (mask.long() * positions).argmax(dim=1)
        x, time_mask = self._embed(items, mask, extra)
        for layer in self.layers[:-1]:
            x = layer(x, time_mask)
        return self.layers[-1](x, time_mask, last_index)

    def _embed(self, items: Tensor, mask: Tensor, extra: Tensor | None) -> tuple[Tensor, Tensor]:
        embedded = self.item_embedding(items.t())  # time-major [L, B, d] straight from the lookup
        if extra is not None:
            embedded = embedded + extra.transpose(0, 1)
        return self.embedding_norm(self.embedding_dropout(embedded)), mask.t()


# ------------------------------------------------------------------------------------------- CTR task
@dataclass
class RecBLRConfig:
    """RecBLR for CTR; defaults sized so one epoch of ML-100k (L = 50) trains in well under a minute."""

    embedding_dim: int = 16  # d (paper: 64 for next-item); small so `make run` stays fast on 2 cores
    expansion: int = 2  # E: recurrent width D = E·d
    n_layers: int = 2  # BD-LRU layers (paper: 2)
    conv_kernel: int = 4  # causal depthwise conv width (paper: 4)
    dropout: float = 0.0  # embedding / block / FFN dropout (off: costly on CPU, DIN uses none either)
    decay_min: float = 0.9  # exp(−softplus(Λ)) at init spans [decay_min, decay_max] (paper)
    decay_max: float = 0.999
    mask_padding: bool = True  # False = official code's reading: padding enters the conv and the state
    head_hidden: tuple[int, ...] = (200, 80)  # MLP on [state, v, state ⊙ v, side], as DIN's head
    activation: str = "prelu"  # head activation: "dice" | "prelu" | "sigmoid"
    use_side_features: bool = True  # genre / age / gender / occupation embeddings into the head
    side_embedding_dim: int = 8
    use_time_buckets: bool = False  # add a Δt-bucket embedding to each history item (paper: none)
    embedding_init_std: float = 0.05
    scan_backend: str = (
        "auto"  # "auto" (Triton on CUDA, C++ kernel on CPU) | "cpu" | "torch" | "triton" | "reference"
    )
    decay_init: str = "uniform"  # see RecBLRNextItemConfig
    init: str = "torch"
    layer_norm_eps: float = 1e-5
    pow2_left_pad: bool = False

    def __post_init__(self) -> None:
        self.head_hidden = tuple(self.head_hidden)
        if self.embedding_dim <= 0 or self.expansion <= 0 or self.n_layers <= 0 or self.conv_kernel <= 0:
            raise ValueError("embedding_dim, expansion, n_layers and conv_kernel must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.decay_min <= self.decay_max < 1.0:
            raise ValueError("need 0 < decay_min <= decay_max < 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(
                f"unknown scan_backend {self.scan_backend!r}; choose from {', '.join(SCAN_BACKENDS)}"
            )


class RecBLR(CTRModel):
    """RecBLR for CTR: the BD-LRU user state at the last valid position, MLP on [state, v, state ⊙ v]."""

    name: ClassVar[str] = "recblr"
    config_class: ClassVar[type] = RecBLRConfig

    def __init__(self, spec: FeatureSpec, config: RecBLRConfig | None = None) -> None:
        config = config if config is not None else RecBLRConfig()
        super().__init__(spec, config)
        d = config.embedding_dim
        self.encoder = RecBLREncoder.from_config(spec.n_items, config)
        self.time_embedding: nn.Embedding | None = None
        if config.use_time_buckets:
            self.time_embedding = padded_embedding(spec.n_time_buckets, d, config.embedding_init_std)
        self.side = SideFeatureEmbedding(spec, config.side_embedding_dim, enabled=config.use_side_features)
        self.head = MLP(3 * d + self.side.output_dim, config.head_hidden, config.activation, output_dim=1)

    @property
    def item_embedding(self) -> nn.Embedding:
        """The item table shared by history and target."""
        return self.encoder.item_embedding

    def user_state(self, batch: dict[str, Tensor]) -> Tensor:
        """The history's state at its last valid position, independent of the target: [B, d]."""
        mask = batch["history_mask"]
        extra = (
            self.time_embedding(batch["history_time_buckets"]) if self.time_embedding is not None else None
        )
        return self.encoder.last_state(batch["history_items"], mask, extra)

    # -- serving: the sequence state is target-independent, computed once per user ----------------
    def encode_user(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The user state of one user (a batch of one row), shared by every candidate."""
        return {"state": self.user_state(batch)}

    def score_candidates(self, user: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Logits [C] of the C targets in ``batch`` for the user of ``encode_user``; equals ``forward``."""
        target = self.item_embedding(batch["target_item"])
        state = user["state"].expand(target.shape[0], -1)
        head_input = torch.cat([state, target, state * target, self.side(batch)], dim=-1)
        return self.head(head_input).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        state = self.user_state(batch)
        target = self.item_embedding(batch["target_item"])
        head_input = torch.cat([state, target, state * target, self.side(batch)], dim=-1)
        return self.head(head_input).squeeze(-1)


# ------------------------------------------------------------------------------------ next-item task
@dataclass
class RecBLRNextItemConfig:
    """RecBLR for next-item prediction; defaults are the paper's (d = 64, E = 2, 2 layers, kernel 4)."""

    embedding_dim: int = 64  # d (paper)
    expansion: int = 2  # D = 128
    n_layers: int = 2
    conv_kernel: int = 4
    dropout: float = 0.2  # paper: 0.2 on ML-1M, 0.5 on Beauty/Sports
    decay_min: float = 0.9
    decay_max: float = 0.999
    mask_padding: bool = True
    embedding_init_std: float = 0.02  # RecBole's normal init for sequential models
    scan_backend: str = "auto"
    # How the official code (chengkai-liu/RecBLR under RecBole) differs; benchmarks/recblr_ablation.py
    # measures each, benchmarks/results/RECBLR.md has the table.
    decay_init: str = "uniform"  # "uniform" decays | "official": Λ evenly spaced (long-memory heavy)
    init: str = "torch"  # "torch" defaults | "official": RecBole's N(0, 0.02) Linear weights, zero biases
    layer_norm_eps: float = 1e-5  # official: 1e-12
    # Official: zeros before the conv up to a power-of-two length, unmasked (their silu(conv bias) enters
    # the state). Sequences are right-padded here as in RecBole, so that is where its padding reaches the
    # read-out; mask_padding=False alone changes nothing at the valid positions of right-padded rows.
    pow2_left_pad: bool = False
    # Official (RecBole): the softmax runs over every row of the item table, the padding row 0 included
    # (never a target, so it only takes probability mass); ours masks it out.
    padding_in_softmax: bool = False

    def __post_init__(self) -> None:
        if self.decay_init not in DECAY_INITS:
            raise ValueError(f"unknown decay_init {self.decay_init!r}; choose from {', '.join(DECAY_INITS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")


class RecBLRNextItem(SequentialRecommender):
    """RecBLR next-item model: tied item embeddings, full softmax over all items."""

    name: ClassVar[str] = "recblr"
    config_class: ClassVar[type] = RecBLRNextItemConfig

    def __init__(
        self, n_items: int, max_history_length: int, config: RecBLRNextItemConfig | None = None
    ) -> None:
        config = config if config is not None else RecBLRNextItemConfig()
        super().__init__(n_items, max_history_length, config)
        self.encoder = RecBLREncoder.from_config(n_items, config)
        self.item_embedding = self.encoder.item_embedding

    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """Hidden states [B, L, d]; causal and padding-free (see the module docstring)."""
        return self.encoder(items, mask)
