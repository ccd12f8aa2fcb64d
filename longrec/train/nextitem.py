"""Next-item training: every prefix a sample, softmax cross-entropy over all items (tied embeddings).

One epoch is a shuffled pass over the training windows of ``NextItemData``; after each epoch the model
is ranked on the validation targets and the best epoch by NDCG@10 is kept (early stopping with
``patience``), then scored on the test targets. ``run_next_item`` repeats this over seeds and reports
mean ± std.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from longrec.data.nextitem import NextItemData
from longrec.eval.ranking import evaluate_next_item
from longrec.models.registry import build_sequential_model
from longrec.models.sequential import SequentialRecommender
from longrec.runtime import retain_freed_memory
from longrec.train.trainer import set_seed

__all__ = ["NextItemTrainConfig", "run_next_item", "summarise_seeds", "train_next_item"]

logger = logging.getLogger(__name__)


@dataclass
class NextItemTrainConfig:
    """Optimisation settings for next-item models (paper: Adam 1e-3)."""

    epochs: int = 20  # upper bound; early stopping on validation NDCG@10
    batch_size: int = 128  # windows per step (each holds up to L targets)
    eval_batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    retain_freed_memory: bool = True  # as TrainConfig: no re-faulting of large activations on CPU
    max_steps_per_epoch: int | None = None  # cap for smoke runs

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class NextItemResult:
    """Per-epoch history, the best epoch and its validation and test metrics."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    seconds_per_epoch: float = 0.0


def train_next_item(
    model: SequentialRecommender, data: NextItemData, config: NextItemTrainConfig | None = None
) -> NextItemResult:
    """Train in place, keep the best epoch by validation NDCG@10, and score it on the test targets."""
    config = config or NextItemTrainConfig()
    set_seed(config.seed)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = torch.device(config.device)
    if config.retain_freed_memory and device.type == "cpu":
        retain_freed_memory()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    items = torch.as_tensor(data.train_items)
    targets = torch.as_tensor(data.train_targets)
    generator = torch.Generator().manual_seed(config.seed)
    result = NextItemResult()
    best_score, best_state, stale = -math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(items), generator=generator)
        total, steps = 0.0, 0
        for step, begin in enumerate(range(0, len(order), config.batch_size)):
            if config.max_steps_per_epoch is not None and step >= config.max_steps_per_epoch:
                break
            index = order[begin : begin + config.batch_size]
            batch_items = items[index].to(device)
            loss = model.next_item_loss(batch_items, batch_items > 0, targets[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        seconds = time.perf_counter() - start
        valid = evaluate_next_item(model, data.valid_history, data.valid_target, config.eval_batch_size)
        result.history.append(
            {"epoch": epoch, "train_loss": total / max(steps, 1), "seconds": seconds, "valid": valid}
        )
        logger.info(
            "epoch %d: loss %.4f (%.1f s), valid hr@10 %.4f ndcg@10 %.4f",
            epoch,
            total / max(steps, 1),
            seconds,
            valid["hr@10"],
            valid["ndcg@10"],
        )
        if valid["ndcg@10"] > best_score:
            best_score, result.best_epoch, result.valid, stale = valid["ndcg@10"], epoch, valid, 0
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("early stopping after epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds_per_epoch = float(np.mean([record["seconds"] for record in result.history]))
    result.test = evaluate_next_item(model, data.test_history, data.test_target, config.eval_batch_size)
    return result


def summarise_seeds(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} over seeds (sample std, ddof = 1; 0 for a single seed)."""
    summary = {}
    for key in per_seed[0] if per_seed else []:
        values = np.array([run[key] for run in per_seed], dtype=np.float64)
        summary[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return summary


def run_next_item(
    model_name: str,
    data: NextItemData,
    seeds: list[int],
    train_config: NextItemTrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` once per seed; per-seed results plus mean ± std of the test metrics."""
    train_config = train_config or NextItemTrainConfig()
    runs = []
    for seed in seeds:
        config = dataclasses.replace(train_config, seed=seed)
        set_seed(seed)  # model initialisation depends on the seed too
        model = build_sequential_model(model_name, data.n_items, data.max_history_length, model_overrides)
        result = train_next_item(model, data, config)
        logger.info("%s seed %d: test %s", model_name, seed, result.test)
        runs.append(
            {
                "seed": seed,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "seconds_per_epoch": result.seconds_per_epoch,
                "valid": result.valid,
                "test": result.test,
                "history": result.history,
            }
        )
    return {
        "model": model_name,
        "data": data.summary(),
        "train_config": dataclasses.asdict(train_config),
        "model_overrides": model_overrides or {},
        "runs": runs,
        "test_summary": summarise_seeds([run["test"] for run in runs]),
    }
