"""The model interface every CTR model implements, and layers the models share.

A model maps a batch (see ``longrec.data.schema.BATCH_KEYS``) to logits [B]. Each model class names its
config dataclass in ``config_class`` and is constructed as ``Model(spec, config)``. Layers here take an
optional validity ``mask`` so sequence models can keep padded positions out of batch statistics.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.schema import SIDE_FEATURES, FeatureSpec

__all__ = [
    "ACTIVATIONS",
    "CTRModel",
    "Dice",
    "MLP",
    "PReLU",
    "SideFeatureEmbedding",
    "make_activation",
]


class CTRModel(nn.Module, abc.ABC):
    """Abstract CTR model: ``forward(batch) -> logits [B]`` and a training ``loss(batch, logits)``."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # Whether training batches should carry the training set's long view (LMN's memory writes); no
    # model reads it at inference.
    reads_long_view: ClassVar[bool] = False

    def __init__(self, spec: FeatureSpec, config: Any) -> None:
        super().__init__()
        self.spec = spec
        self.config = config

    @abc.abstractmethod
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits [B] for the target items of ``batch``."""

    def loss(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        """Training objective; binary cross-entropy on the logits by default (subclasses add terms)."""
        return F.binary_cross_entropy_with_logits(logits, batch["label"].to(logits.dtype))

    def build_optimizers(self, lr: float, weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """Optimisers the trainer steps together; one Adam by default (sparse-table models override)."""
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)]


def padded_embedding(rows: int, dim: int, std: float, padding: bool = True) -> nn.Embedding:
    """An N(0, std) embedding table whose row 0 (padding / unknown) is zero and receives no gradient."""
    table = nn.Embedding(rows, dim, padding_idx=0 if padding else None)
    nn.init.normal_(table.weight, std=std)
    if padding:
        with torch.no_grad():
            table.weight[0].zero_()
    return table


class SideFeatureEmbedding(nn.Module):
    """Embeds the ``SIDE_FEATURES`` columns of a batch and concatenates them: [B, n_features * dim].

    With ``enabled=False`` it holds no parameters and returns a [B, 0] tensor, so a model can always
    concatenate its output. Id 0 (unknown) gets its own learned vector: "unknown" can be informative.
    """

    def __init__(self, spec: FeatureSpec, dim: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        vocab = spec.side_vocab()
        self.features = tuple(SIDE_FEATURES) if enabled else ()
        self.tables = nn.ModuleDict({name: nn.Embedding(vocab[name], dim) for name in self.features})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.output_dim = dim * len(self.features)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if not self.enabled:
            reference = batch["target_item"]
            return reference.new_zeros((reference.shape[0], 0), dtype=torch.get_default_dtype())
        return torch.cat([self.tables[name](batch[name]) for name in self.features], dim=-1)


class _DiceBatchStats(torch.autograd.Function):
    """Dice on rows [N, F] with statistics over rows weighted by ``weight`` [N] (1 = valid, 0 = padding).

    Forward and backward written out by hand: autograd over the same expression keeps about ten [N, F]
    temporaries alive, this keeps two, and Dice on [B·L, 80] is the hot spot of DIN training on CPU.
    Backward is the BatchNorm backward restricted to the weighted rows (gradients flow through the batch
    mean and variance, as in the official BatchNorm-based Dice). Returns (y, mean, biased var, count).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, alpha: Tensor, eps: float) -> tuple[Tensor, ...]:
        count = weight.sum().clamp_min(1.0)
        mean = (weight @ x) / count
        z = x - mean
        var = (weight @ z.square()) / count
        rstd = torch.rsqrt(var + eps)
        z.mul_(rstd)
        y = torch.lerp(x * alpha, x, torch.sigmoid(z))  # α·x + p·(x − α·x) = p·x + (1 − p)·α·x
        ctx.save_for_backward(x, z, weight, alpha, rstd, count)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        x, z, weight, alpha, rstd, count = ctx.saved_tensors
        p = torch.sigmoid(z)
        one_minus_p = 1.0 - p
        grad_yx = grad_y * x
        grad_alpha = (grad_yx * one_minus_p).sum(0)
        grad_z = grad_yx.mul_(one_minus_p).mul_(p).mul_(1.0 - alpha)  # ∂y/∂z = x·(1 − α)·p·(1 − p)
        sum_grad_z = grad_z.sum(0)
        sum_grad_z_z = (grad_z * z).sum(0)
        grad_x = torch.lerp(alpha.expand_as(p), torch.ones_like(alpha).expand_as(p), p).mul_(grad_y)
        grad_x.add_(grad_z.mul_(rstd))
        # Through the batch mean and variance, which only the weighted (valid) rows feed.
        through_stats = torch.addcmul(sum_grad_z, z, sum_grad_z_z).mul_(rstd / count).mul_(weight[:, None])
        grad_x.sub_(through_stats)
        return grad_x, None, grad_alpha, None


class Dice(nn.Module):
    """Dice (DIN paper): f(s) = p·s + (1 − p)·α·s with p = σ((s − E[s]) / √(Var[s] + eps)).

    Statistics are per feature over all leading dimensions, restricted to ``mask`` (True = valid) when
    one is given, so padded sequence positions never move them. Training uses batch statistics (with
    gradients, as BatchNorm does) and updates running estimates; evaluation uses the running estimates.
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.zeros(num_features))  # official DIN code starts α at 0
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training:
            p = torch.sigmoid((x - self.running_mean) * torch.rsqrt(self.running_var + self.eps))
            return torch.lerp(x * self.alpha, x, p)
        flat = x.reshape(-1, x.shape[-1])
        if mask is None:
            weight = flat.new_ones(flat.shape[0])
        else:
            weight = mask.reshape(-1).to(flat.dtype)
        y, mean, var, count = _DiceBatchStats.apply(flat, weight, self.alpha, self.eps)
        with torch.no_grad():
            unbiased = var * count / (count - 1.0).clamp_min(1.0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return y.view(x.shape)


class PReLU(nn.Module):
    """Per-feature PReLU over the last dimension (``nn.PReLU`` uses dim 1, wrong for [B, L, F])."""

    def __init__(self, num_features: int, init: float = 0.25) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_features,), init))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.where(x >= 0, x, self.alpha * x)


class _Sigmoid(nn.Module):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.sigmoid(x)


ACTIVATIONS = ("dice", "prelu", "sigmoid")


def make_activation(name: str, num_features: int) -> nn.Module:
    """An activation module whose ``forward(x, mask=None)`` accepts an optional validity mask."""
    if name == "dice":
        return Dice(num_features)
    if name == "prelu":
        return PReLU(num_features)
    if name == "sigmoid":
        return _Sigmoid()
    raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")


class MLP(nn.Module):
    """Linear → activation → dropout for each hidden size, then an optional linear output layer.

    ``forward(x, mask)`` passes ``mask`` (shape ``x.shape[:-1]``) to mask-aware activations like Dice.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: tuple[int, ...],
        activation: str,
        output_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.activations = nn.ModuleList()
        width = input_dim
        for size in hidden:
            self.linears.append(nn.Linear(width, size))
            self.activations.append(make_activation(activation, size))
            width = size
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(width, output_dim) if output_dim is not None else None
        self.output_dim = output_dim if output_dim is not None else width

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for linear, activation in zip(self.linears, self.activations, strict=True):
            x = self.dropout(activation(linear(x), mask))
        return self.output(x) if self.output is not None else x
