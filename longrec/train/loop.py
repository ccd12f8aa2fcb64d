"""The one training loop of longrec: epochs, early stopping on a validation metric, best-state restore,
checkpoints, seeding and (under torchrun) DDP — parameterised by a task that says what a batch, a loss and
a validation are. The CTR trainer (``longrec.train.trainer``) and the next-item trainer
(``longrec.train.nextitem``) are two tasks of this loop; the CLI, the components and the experiments all
reach it through them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longrec.runtime import retain_freed_memory

__all__ = ["FitResult", "LoopSettings", "Task", "fit", "set_seed"]

logger = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels (the loop's one seeding)."""
    import os
    import random

    import numpy as np

    # Must be set before the first cuBLAS call for deterministic GPU matmuls.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # warn_only: a model using an op without a deterministic kernel still runs (with a warning).
    torch.use_deterministic_algorithms(True, warn_only=True)


class LoopSettings(Protocol):
    """The fields of a trainer config the loop reads (TrainConfig and NextItemTrainConfig have them)."""

    epochs: int
    seed: int
    patience: int
    num_threads: int | None
    retain_freed_memory: bool
    max_steps_per_epoch: int | None


class Task(Protocol):
    """What one kind of training needs from the loop's point of view."""

    monitor: str  # validation metric to maximise ("auc", "ndcg@10")
    supports_parallel: bool  # whether the loss goes through the model's forward (DDP can wrap it)

    def optimizers(self, model: torch.nn.Module) -> list[torch.optim.Optimizer]: ...

    def n_batches(self) -> int: ...

    def batches(self, generator: torch.Generator) -> Iterator[dict[str, Tensor]]: ...

    def loss(self, model: torch.nn.Module, forward: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor: ...

    def batch_weight(self, batch: dict[str, Tensor]) -> int:
        """How much this batch's loss counts in the epoch's mean loss (samples, or 1 per step)."""
        ...

    def validate(self, model: torch.nn.Module) -> dict[str, Any]: ...


@dataclass
class FitResult:
    """Per-epoch history, the best epoch (1-based) by the monitored metric and its checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = dataclasses.asdict(self)
        data["best_checkpoint"] = str(self.best_checkpoint) if self.best_checkpoint else None
        return data


def _show_progress(enabled: bool) -> bool:
    return enabled and sys.stderr.isatty()


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    if device.type == "cpu":
        return batch
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _one_epoch(
    model: torch.nn.Module,
    task: Task,
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    settings: LoopSettings,
    parallel=None,
    forward: torch.nn.Module | None = None,
) -> tuple[float, int]:
    """One pass; returns (weighted mean loss, total weight). Under torchrun each global batch is cut
    across ranks (``parallel.shard``) and ``forward`` is the DDP wrapper."""
    model.train()
    n_batches = task.n_batches()
    if settings.max_steps_per_epoch is not None:
        n_batches = min(n_batches, settings.max_steps_per_epoch)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=not _show_progress(getattr(settings, "progress", False)),
    )
    try:
        for step, batch in enumerate(task.batches(generator)):
            if step >= n_batches:
                break
            batch = _to_device(batch, device)
            scale = 1.0
            if parallel is not None:
                batch, scale = parallel.shard(batch)
            loss = task.loss(model, forward if forward is not None else model, batch)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            if parallel is not None:
                # DDP averages gradients over ranks; the scale makes that the global batch's mean.
                (loss * scale).backward()
                parallel.sync_sparse_gradients(model)
            else:
                loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            # A rank with no sample in a short last batch ran one with zero weight: it counts none.
            size = task.batch_weight(batch) if parallel is None or scale else 0
            # Accumulate on device: a .item() per step would force a GPU sync.
            total_loss += loss.detach().double() * size
            seen += size
            bar.update(1)
            if not bar.disable and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        bar.close()
    if parallel is not None:
        total, seen_all = parallel.all_sum(float(total_loss.item()), float(seen))
        total_loss, seen = torch.tensor(total, dtype=torch.float64), int(seen_all)
    mean_loss = float(total_loss.item() / max(seen, 1))
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss became {mean_loss} in epoch {epoch}")
    return mean_loss, seen


def fit(
    model: torch.nn.Module,
    task: Task,
    settings: LoopSettings,
    device: torch.device,
    has_validation: bool = True,
    save_best=None,
) -> FitResult:
    """Train ``model`` in place on ``task``; keep and finally restore the best epoch by ``task.monitor``.

    Without validation every epoch runs and the last one counts as best. ``save_best(epoch, metrics)``,
    when given, is called on the main process each time the best epoch changes (checkpoints).
    """
    from longrec.train.distributed import DataParallel

    set_seed(settings.seed)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    parallel = DataParallel.current(device) if task.supports_parallel else None
    if parallel is not None:
        device = parallel.device
    if settings.retain_freed_memory and device.type == "cpu":
        retain_freed_memory()
    model.to(device)
    if hasattr(task, "place_shared"):  # optional: tensors every batch carries whole go to the device once
        task.place_shared(device)
    optimizers = task.optimizers(model)
    forward = parallel.wrap(model) if parallel is not None else None
    generator = torch.Generator().manual_seed(settings.seed)

    result = FitResult()
    best = -math.inf
    best_state: dict[str, Tensor] | None = None
    stale = 0
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        train_loss, seen = _one_epoch(
            model, task, optimizers, generator, device, epoch, settings, parallel, forward
        )
        seconds = time.perf_counter() - start
        if parallel is None:
            valid = task.validate(model) if has_validation else {}
        else:  # rank 0 validates and every rank takes its metrics, so all stop at the same epoch
            valid = parallel.broadcast(task.validate(model) if has_validation and parallel.is_main else {})
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_seconds": seconds,
            "train_samples_per_second": seen / max(seconds, 1e-9),
            "valid": valid,
        }
        result.history.append(record)
        score = float(valid.get(task.monitor, math.nan)) if has_validation else math.inf
        logger.info(
            "epoch %d: train loss %.5f (%.1f s), valid %s",
            epoch,
            train_loss,
            seconds,
            ", ".join(f"{k} {v:.5f}" for k, v in valid.items() if isinstance(v, float)),
        )
        # NaN (e.g. a one-class validation set) never counts as an improvement.
        if not has_validation or score > best:
            best, result.best_epoch, result.best_valid_metrics, stale = score, epoch, dict(valid), 0
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
            if save_best is not None and (parallel is None or parallel.is_main):
                result.best_checkpoint = save_best(epoch, valid)
        else:
            stale += 1
            if stale >= settings.patience and epoch < settings.epochs:
                logger.info("early stopping after epoch %d (best epoch %d)", epoch, result.best_epoch)
                result.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        logger.warning(f"validation {task.monitor} was never defined; keeping the last weights")
    return result
