"""Training entry points used by the pipeline's train task and the `longrec train` command."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from longrec.data.training_set import read_long_history_log, read_training_set, tensors_by_split
from longrec.model_files import CHECKPOINT_FILE, MODEL_META_FILE
from longrec.models.registry import MODEL_REGISTRY, build_model
from longrec.train.trainer import (
    TrainConfig,
    derive_seed,
    resolve_device,
    runtime_record,
    save_checkpoint,
    set_seed,
    train_model,
)

__all__ = ["TrainConfig", "train_from_training_set"]

logger = logging.getLogger(__name__)


def train_from_training_set(
    training_set_dir: str | Path,
    model_name: str,
    config: TrainConfig,
    output_dir: str | Path,
    model_overrides: dict[str, Any] | None = None,
    tuning_budget: int = 0,
    tuning_time_limit_s: float = 0.0,
) -> dict:
    """Train `model_name` on a training-set folder; write model.pt and model_meta.json to output_dir.

    ``tuning_budget`` > 0 first searches that many settings on the validation split
    (``longrec.train.tuning``) and keeps the best trial; 0 trains once with ``config`` as given.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frame, spec, meta = read_training_set(training_set_dir)
    # The long view (a training set built with memory_history_length > 0) rides along only for models
    # that write from it; the others never see it.
    model_class = MODEL_REGISTRY[model_name][1] if model_name in MODEL_REGISTRY else None
    long_log = read_long_history_log(training_set_dir) if getattr(model_class, "reads_long_view", False) else None
    # Training reads train and valid only; test rows are dropped before any tensor is built.
    splits = tensors_by_split(frame[frame["split"].isin(["train", "valid"])], spec, long_log)
    if "train" not in splits:
        raise ValueError(f"training set {training_set_dir} has no train split")
    tuning = None
    if tuning_budget > 0:
        from longrec.train.tuning import tune_model

        if "valid" not in splits:
            raise ValueError(f"tuning needs a validation split; training set {training_set_dir} has none")
        model, config, result, tuning = tune_model(
            model_name,
            spec,
            splits["train"],
            splits["valid"],
            config,
            tuning_budget,
            tuning_time_limit_s,
            model_overrides,
        )
    else:
        # build_model draws the initial weights: seed before it (not only inside train_model), or every
        # pipeline run starts from other weights and the AUC gate compares runs it cannot reproduce.
        set_seed(derive_seed(config.seed, "model-init"))
        model = build_model(model_name, spec, model_overrides)
        result = train_model(model, splits["train"], splits.get("valid"), config)
    save_checkpoint(output_dir / CHECKPOINT_FILE, model, model_name=model_name, spec=spec)
    if hasattr(model, "export_artifacts"):  # models with deployable parts (LMN's memory shards)
        model.export_artifacts(output_dir)
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        # Whether training batches carried the long view (LMN wrote its memory from L_long events).
        "trained_with_long_view": long_log is not None,
    }
    model_meta = {
        "model_name": model_name,
        "model_config": dataclasses.asdict(model.config),
        "feature_spec": dataclasses.asdict(spec),
        "train_config": dataclasses.asdict(config),
        "training_set": meta,
        "valid_metrics": result.best_valid_metrics,
        "history": result.history,
        "summary": summary,
        "runtime": runtime_record(resolve_device(config.device)),
        "tuning": tuning.to_dict() if tuning is not None else None,
    }
    (output_dir / MODEL_META_FILE).write_text(json.dumps(model_meta, indent=2, default=str))
    logger.info(
        "trained %s: best epoch %d, valid %s", model_name, result.best_epoch, result.best_valid_metrics
    )
    return {
        "summary": summary,
        "valid_metrics": result.best_valid_metrics,
        "runtime": model_meta["runtime"],
        "tuning": model_meta["tuning"],
    }
