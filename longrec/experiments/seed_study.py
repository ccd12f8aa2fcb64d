"""Mean ± std of test metrics over training seeds for several models on one dataset.

The training set is built once (its negatives come from ``sample_config.seed``); each seed then changes
only the model's initialisation and the batch order, so the spread measures training noise. Any
registered model can take part: ``models`` maps a row label to (model name, config overrides).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from longrec.data.datasets import RecDataset, load_dataset
from longrec.data.samples import SampleConfig, build_training_set
from longrec.data.tensors import TensorSampleSet
from longrec.data.training_set import tensors_by_split
from longrec.models.registry import build_model
from longrec.train.trainer import TrainConfig, evaluate_model, train_model

__all__ = [
    "METRICS",
    "ModelSpec",
    "build_splits",
    "seed_study",
    "summarise",
    "summary_markdown",
    "write_seed_study",
]

logger = logging.getLogger(__name__)

ModelSpec = tuple[str, Mapping[str, Any]]  # (registered model name, config overrides)
METRICS = ("auc", "gauc", "logloss")


def build_splits(
    dataset: str | RecDataset,
    sample_config: SampleConfig,
    max_train_samples: int | None = None,
    max_events: int | None = None,
) -> tuple[dict[str, TensorSampleSet], Any]:
    """({split: samples}, feature spec) built from events; optionally a random subset of train samples."""
    data = load_dataset(dataset, max_events=max_events) if isinstance(dataset, str) else dataset
    frame = build_training_set(data, sample_config)
    spec = data.feature_spec(sample_config.max_history_length)
    splits = tensors_by_split(frame, spec)
    if max_train_samples is not None and len(splits["train"]) > max_train_samples:
        rng = np.random.default_rng(sample_config.seed)
        keep = np.sort(rng.choice(len(splits["train"]), max_train_samples, replace=False))
        splits["train"] = splits["train"].subset(keep)
    return splits, spec


def seed_study(
    dataset: str | RecDataset,
    models: Mapping[str, ModelSpec],
    sample_config: SampleConfig,
    train_config: TrainConfig,
    seeds: Sequence[int],
    max_train_samples: int | None = None,
    splits: tuple[dict[str, TensorSampleSet], Any] | None = None,
) -> pd.DataFrame:
    """Train every (label, seed) and return one row per run with its test and validation metrics.

    ``splits`` (from ``build_splits``) skips rebuilding the samples when a caller already has them.
    """
    if not models:
        raise ValueError("models is empty")
    if not seeds:
        raise ValueError("seeds is empty")
    split_sets, spec = (
        splits if splits is not None else build_splits(dataset, sample_config, max_train_samples)
    )
    if "train" not in split_sets or "test" not in split_sets:
        raise ValueError(f"the training set needs train and test splits, got {sorted(split_sets)}")
    rows = []
    for label, (model_name, overrides) in models.items():
        for seed in seeds:
            config = dataclasses.replace(train_config, seed=int(seed))
            # build_model draws the initial weights: seed before it, not only inside train_model.
            torch.manual_seed(int(seed))
            model = build_model(model_name, spec, dict(overrides))
            start = time.perf_counter()
            result = train_model(model, split_sets["train"], split_sets.get("valid"), config)
            seconds = time.perf_counter() - start
            test = evaluate_model(model, split_sets["test"], config.eval_batch_size)
            epoch_seconds = [record["train_seconds"] for record in result.history]
            rows.append(
                {
                    "label": label,
                    "model": model_name,
                    "overrides": dict(overrides),
                    "seed": int(seed),
                    **{f"test_{m}": float(test[m]) for m in METRICS},
                    **{f"valid_{m}": float(result.best_valid_metrics.get(m, np.nan)) for m in METRICS},
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "seconds_per_epoch": float(np.mean(epoch_seconds)),
                    "train_seconds": seconds,
                    "n_train": len(split_sets["train"]),
                    "n_test": len(split_sets["test"]),
                }
            )
            logger.info("%s seed %d: test %s", label, seed, {m: round(test[m], 4) for m in METRICS})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per label: mean and std (ddof=1, 0 for one seed) of every test metric, plus seeds and epoch time."""
    grouped = runs.groupby("label", sort=False)
    summary = pd.DataFrame({"model": grouped["model"].first(), "seeds": grouped["seed"].count()})
    for metric in METRICS:
        summary[f"{metric}_mean"] = grouped[f"test_{metric}"].mean()
        summary[f"{metric}_std"] = grouped[f"test_{metric}"].std(ddof=1).fillna(0.0)
    summary["seconds_per_epoch"] = grouped["seconds_per_epoch"].mean()
    summary["epochs_run"] = grouped["epochs_run"].mean()
    return summary


def summary_markdown(runs: pd.DataFrame, title: str | None = None) -> str:
    """A Markdown table: one row per label with test AUC / GAUC / LogLoss as mean ± std over seeds."""
    summary = summarise(runs)
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| model | seeds | test AUC | test GAUC | test LogLoss | s/epoch | epochs run |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in summary.iterrows():
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in METRICS]
        lines.append(
            f"| {label} | {int(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {row['seconds_per_epoch']:.1f} | {row['epochs_run']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_seed_study(runs: pd.DataFrame, output: str | Path, stem: str, title: str | None = None) -> Path:
    """Write ``{stem}.csv`` (every run) and ``{stem}.md`` (the summary table) under ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    runs.to_csv(output / f"{stem}.csv", index=False)
    path = output / f"{stem}.md"
    path.write_text(summary_markdown(runs, title))
    return path
