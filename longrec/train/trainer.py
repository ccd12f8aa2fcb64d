"""CTR training: ``TrainConfig`` and ``train_model``, the CTR task of the one loop (``longrec.train.loop``).

Training keeps the weights of the epoch with the best validation AUC, stops early after ``patience``
epochs without improvement, and restores the best weights before returning. Prediction and evaluation
live in ``longrec.eval.predict``, checkpoints in ``longrec.models.checkpoint``; both are re-exported here
for the callers that train, score and save in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from longrec.data.tensors import TensorSampleSet
from longrec.eval.predict import evaluate_model, predict
from longrec.models.base import CTRModel
from longrec.models.checkpoint import CHECKPOINT_FORMAT_VERSION, load_checkpoint, save_checkpoint
from longrec.seeding import derive_seed
from longrec.train.loop import FitResult, fit, set_seed

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "TrainConfig",
    "TrainResult",
    "evaluate_model",
    "load_checkpoint",
    "predict",
    "resolve_device",
    "save_checkpoint",
    "set_seed",
    "derive_seed",
    "runtime_record",
    "train_model",
]

logger = logging.getLogger(__name__)

BEST_CHECKPOINT_NAME = "best.pt"


@dataclass
class TrainConfig:
    """Optimisation settings shared by all models."""

    epochs: int = 3  # upper bound; early stopping usually ends sooner on small data
    batch_size: int = 1024
    eval_batch_size: int = 4096  # no gradients at evaluation, so larger batches are cheap
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    seed: int = 0
    patience: int = 1  # epochs without a better validation AUC before stopping
    max_steps_per_epoch: int | None = None  # cap for smoke runs; None = full pass
    device: str = "auto"  # "cpu" | "cuda" | "cuda:N" | "auto" (cuda when this process sees a GPU)
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch default
    # Keep glibc from re-faulting large activations on every CPU step (longrec.runtime): 35–40% of a
    # step at L=1000. The process then holds its peak memory until it exits.
    retain_freed_memory: bool = True
    progress: bool = True  # tqdm bar (only shown on a TTY)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("max_steps_per_epoch must be >= 1 or None")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")


# The loop's result (history, best epoch and metrics, checkpoint, early stop), under its CTR name.
TrainResult = FitResult


def runtime_record(device: torch.device) -> dict[str, Any]:
    """Where training ran and which kernel backends it used (Triton on CUDA, C++ or torch on CPU)."""
    from longrec.kernels import backends_used

    record: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        record["cuda_device_name"] = torch.cuda.get_device_name(device)
    else:
        record["cpu_threads"] = torch.get_num_threads()
    used = backends_used()
    record["kernels"] = used
    record["triton_kernels_ran"] = any("triton" in backends for backends in used.values())
    return record


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when available, else cpu; a cuda request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return resolved


@dataclass
class CTRTask:
    """The CTR task of the one training loop: shuffled sample batches, the model's loss (BCE plus its own
    terms), validation AUC."""

    train: TensorSampleSet
    valid: TensorSampleSet | None
    config: TrainConfig
    monitor: str = "auc"
    supports_parallel: bool = True

    def optimizers(self, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        return model.build_optimizers(self.config.lr, self.config.weight_decay)

    def n_batches(self) -> int:
        return math.ceil(len(self.train) / self.config.batch_size)

    def batches(self, generator: torch.Generator):
        return self.train.batches(self.config.batch_size, shuffle=True, generator=generator)

    def place_shared(self, device: torch.device) -> None:
        """Move the tensors every batch carries whole (the long view's log) to ``device`` once."""
        self.train = self.train.with_shared_on(device)

    def loss(self, model: torch.nn.Module, forward: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model.loss(batch, forward(batch))

    def batch_weight(self, batch: dict[str, Tensor]) -> int:
        return int(batch["label"].shape[0])

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        return (
            evaluate_model(model, self.valid, self.config.eval_batch_size) if self.valid is not None else {}
        )


def train_model(
    model: CTRModel,
    train: TensorSampleSet,
    valid: TensorSampleSet | None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place with the one loop (``longrec.train.loop``); keep, checkpoint and finally
    restore the best epoch by validation AUC.

    Without ``valid`` every epoch runs and the last one counts as best. With ``checkpoint_dir`` the best
    state is also written to ``checkpoint_dir/best.pt``. Under ``torchrun`` the loop runs DDP.
    """
    config = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("the training set is empty")
    device = resolve_device(config.device)
    logger.info(
        "training %s on %d samples (%d valid) for up to %d epochs on %s",
        model.name,
        len(train),
        len(valid) if valid is not None else 0,
        config.epochs,
        device,
    )
    save_best = None
    if checkpoint_dir is not None:
        checkpoint_path = Path(checkpoint_dir) / BEST_CHECKPOINT_NAME

        def save_best(epoch: int, valid_metrics: dict) -> Path:
            extra = {
                "epoch": epoch,
                "valid_metrics": valid_metrics,
                "train_config": dataclasses.asdict(config),
            }
            return save_checkpoint(checkpoint_path, model, extra=extra)

    result = fit(model, CTRTask(train, valid, config), config, device, valid is not None, save_best)
    logger.info("best epoch %d, valid metrics %s", result.best_epoch, result.best_valid_metrics)
    return result
