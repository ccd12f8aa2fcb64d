"""Training loop, prediction, evaluation and checkpoints for any ``CTRModel``.

Training keeps the weights of the epoch with the best validation AUC, stops early after ``patience``
epochs without improvement, and restores the best weights before returning. Checkpoints are plain dicts
(state_dict + JSON-able config and feature spec) loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from longrec.data.schema import FeatureSpec
from longrec.data.tensors import TensorSampleSet
from longrec.eval.ctr import ctr_metrics
from longrec.models.base import CTRModel
from longrec.models.registry import build_model
from longrec.runtime import retain_freed_memory
from longrec.seeding import derive_seed
from longrec.train.distributed import DataParallel

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

CHECKPOINT_FORMAT_VERSION = 1
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


@dataclass
class TrainResult:
    """Per-epoch history, the best epoch (1-based) by validation AUC and its checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_metrics: dict[str, float | int] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = dataclasses.asdict(self)
        data["best_checkpoint"] = str(self.best_checkpoint) if self.best_checkpoint else None
        return data


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


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels."""
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


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when available, else cpu; a cuda request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return resolved


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    if device.type == "cpu":
        return batch
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _show_progress(enabled: bool) -> bool:
    return enabled and sys.stderr.isatty()


@torch.no_grad()
def predict(model: CTRModel, samples: TensorSampleSet, batch_size: int = 4096) -> np.ndarray:
    """Logits for every sample, in order, as float32 [N]; eval mode, no gradients (mode restored after)."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        outputs = [
            model(_to_device(batch, device)).float().cpu()
            for batch in samples.batches(batch_size, shuffle=False)
        ]
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(outputs).numpy()


def evaluate_model(
    model: CTRModel, samples: TensorSampleSet, batch_size: int = 4096
) -> dict[str, float | int]:
    """``ctr_metrics`` (AUC, GAUC, LogLoss, ...) of ``model`` on ``samples``."""
    logits = predict(model, samples, batch_size)
    return ctr_metrics(samples["user_id"].numpy(), samples["label"].numpy(), logits)


def _json_roundtrip(value: Any) -> Any:
    """Force a JSON-able value (tuples → lists); what ``weights_only`` loading accepts."""
    return json.loads(json.dumps(value))


def save_checkpoint(
    path: str | Path,
    model: CTRModel,
    model_name: str | None = None,
    model_config: Any = None,
    spec: FeatureSpec | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{state_dict, model_name, model_config, spec, extra}`` with ``torch.save``; returns the path.

    Name, config and spec default to the model's own. The file is written next to its destination and
    renamed, so a crash never leaves a half-written checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model_config if model_config is not None else model.config
    spec = spec if spec is not None else model.spec
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_name": model_name or model.name,
        "model_config": _json_roundtrip(
            dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
        ),
        "spec": _json_roundtrip(dataclasses.asdict(spec)),
        "extra": _json_roundtrip(extra or {}),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CTRModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint through the registry; returns (model in eval mode, meta).

    ``meta`` holds ``model_name``, ``model_config`` (dict), ``spec`` (a ``FeatureSpec``), ``extra`` and
    ``format_version``.
    """
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format {version!r} in {path}")
    spec = FeatureSpec.from_dict(payload["spec"])
    model = build_model(payload["model_name"], spec, payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    model.to(map_location)
    model.eval()
    meta = {key: value for key, value in payload.items() if key != "state_dict"}
    meta["spec"] = spec
    return model, meta


def _train_one_epoch(
    model: CTRModel,
    optimizers: list[torch.optim.Optimizer],
    train: TensorSampleSet,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    parallel: DataParallel | None = None,
    forward: torch.nn.Module | None = None,
) -> tuple[float, int]:
    """One pass over ``train``; returns (sample-weighted mean loss, samples seen).

    With ``parallel`` (torchrun), each global batch is cut across ranks and ``forward`` is the DDP wrapper.
    """
    model.train()
    n_batches = math.ceil(len(train) / config.batch_size)
    if config.max_steps_per_epoch is not None:
        n_batches = min(n_batches, config.max_steps_per_epoch)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=not _show_progress(config.progress),
    )
    try:
        for step, batch in enumerate(train.batches(config.batch_size, shuffle=True, generator=generator)):
            if step >= n_batches:
                break
            batch = _to_device(batch, device)
            if parallel is not None:
                batch, scale = parallel.shard(batch)
                logits = forward(batch)
            else:
                logits = model(batch)
            loss = model.loss(batch, logits)
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
            size = int(batch["label"].shape[0]) if parallel is None or scale else 0
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


def train_model(
    model: CTRModel,
    train: TensorSampleSet,
    valid: TensorSampleSet | None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place; keep, checkpoint and finally restore the best epoch by validation AUC.

    Without ``valid`` every epoch runs and the last one counts as best. With ``checkpoint_dir`` the best
    state is also written to ``checkpoint_dir/best.pt``.
    """
    config = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("the training set is empty")
    set_seed(config.seed)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    parallel = DataParallel.current(device)  # None unless running under torchrun with > 1 process
    if parallel is not None:
        device = parallel.device
    if config.retain_freed_memory and device.type == "cpu":
        retain_freed_memory()
    model.to(device)
    optimizers = model.build_optimizers(config.lr, config.weight_decay)
    forward = parallel.wrap(model) if parallel is not None else None
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint_path = Path(checkpoint_dir) / BEST_CHECKPOINT_NAME if checkpoint_dir is not None else None

    result = TrainResult()
    best_auc = -math.inf
    best_state: dict[str, Tensor] | None = None
    epochs_without_gain = 0
    logger.info(
        "training %s on %d samples (%d valid) for up to %d epochs on %s",
        model.name,
        len(train),
        len(valid) if valid is not None else 0,
        config.epochs,
        device,
    )
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loss, seen = _train_one_epoch(
            model, optimizers, train, config, generator, device, epoch, parallel, forward
        )
        train_seconds = time.perf_counter() - start
        if parallel is None:
            valid_metrics = evaluate_model(model, valid, config.eval_batch_size) if valid is not None else {}
        else:
            # Rank 0 validates and every rank takes its metrics, so all stop at the same epoch.
            main_metrics = (
                evaluate_model(model, valid, config.eval_batch_size)
                if valid is not None and parallel.is_main
                else {}
            )
            valid_metrics = parallel.broadcast(main_metrics)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_seconds": train_seconds,
            "train_samples_per_second": seen / max(train_seconds, 1e-9),
            "valid": valid_metrics,
        }
        result.history.append(record)
        valid_auc = float(valid_metrics.get("auc", math.nan)) if valid is not None else math.inf
        logger.info(
            "epoch %d: train loss %.5f (%.0f samples/s), valid auc %.5f gauc %.5f logloss %.5f",
            epoch,
            train_loss,
            record["train_samples_per_second"],
            valid_metrics.get("auc", math.nan),
            valid_metrics.get("gauc", math.nan),
            valid_metrics.get("logloss", math.nan),
        )

        # NaN AUC (one-class validation set) never counts as an improvement.
        if valid is None or valid_auc > best_auc:
            best_auc = valid_auc
            result.best_epoch = epoch
            result.best_valid_metrics = dict(valid_metrics)
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
            epochs_without_gain = 0
            if checkpoint_path is not None and (parallel is None or parallel.is_main):
                extra = {
                    "epoch": epoch,
                    "valid_metrics": valid_metrics,
                    "train_config": dataclasses.asdict(config),
                }
                result.best_checkpoint = save_checkpoint(checkpoint_path, model, extra=extra)
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= config.patience and epoch < config.epochs:
                logger.info("early stopping after epoch %d (best epoch %d)", epoch, result.best_epoch)
                result.stopped_early = True
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        logger.warning(
            "validation AUC was never defined (one-class validation set?); keeping the last weights"
        )
    logger.info("best epoch %d, valid metrics %s", result.best_epoch, result.best_valid_metrics)
    return result
