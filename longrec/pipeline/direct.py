"""`longrec train`: the training pipeline's steps for one model, in this process, without KFP or Feast."""

from __future__ import annotations

import json
from pathlib import Path

from longrec.train.run import TrainConfig, train_from_training_set
from longrec.train.tuning import apply_settings

__all__ = ["train_direct"]


def train_direct(params, output: str | Path) -> dict:
    """The pipeline's steps for one model without KFP or Feast: the same library calls its components
    make (ingest, build, validate, train, evaluate), with histories cut from the events instead of read
    from the feature store."""
    from longrec.data.ingest import ingest_dataset
    from longrec.data.samples import SampleConfig
    from longrec.data.training_set import build_training_set_from_events
    from longrec.eval.compare import compare_models
    from longrec.validation.run import validate_training_set_dir

    output = Path(output)
    ingest_dataset(params.dataset, output / "events", max_events=params.max_events or None)
    config = SampleConfig(
        max_history_length=params.max_history_length,
        memory_history_length=params.memory_history_length,
        split=params.split,
        train_negatives=params.train_negatives,
        eval_negatives=params.eval_negatives,
        negative_sampling=params.negative_sampling,
        seed=params.seed,
    )
    training_dir = output / "training_set"
    build_training_set_from_events(output / "events", config, training_dir)
    validate_training_set_dir(
        training_dir,
        output / "validation_report.html",
        output / "validation_results.json",
        docs_dir=output / "validation_docs",
    )
    model_name = params.models[0]
    train_config = TrainConfig(
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.learning_rate,
        seed=params.seed,
        device=params.device,
    )
    model_dir = output / model_name
    fixed = json.loads(params.model_settings or "{}").get(model_name, {})
    train_config, overrides = apply_settings(model_name, fixed, train_config)
    train_from_training_set(
        training_dir,
        model_name,
        train_config,
        model_dir,
        model_overrides=overrides or None,
        tuning_budget=params.tuning_trials,
        tuning_time_limit_s=params.tuning_time_limit_minutes * 60,
    )
    result = compare_models(
        training_dir,
        [model_dir],
        comparison_md=output / "comparison.md",
        metrics_json=output / "metrics.json",
    )
    return {
        "model_dir": str(model_dir),
        "training_set": str(training_dir),
        "test_metrics": result.candidate_metrics,
    }
