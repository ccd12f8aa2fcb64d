"""Hyper-parameter search on the validation split: every model gets the same budget of trials.

A trial trains one model with one assignment of the search space (``SEARCH_SPACES``) on the train split and
scores it by the best validation AUC its early stopping reached; the best trial's weights are the tuned
model. The search is a seeded random search without replacement over each model's finite grid, so the same
seed and budget give the same trials and the same pick (CPU training is deterministic, ``set_seed``). Trial 0
is always the untuned settings, so a tuned model never scores below the fixed one on validation.

The test split never reaches this module: ``tune_model`` takes the train and valid sample sets only, and
``tune_from_training_set`` drops every other split before building tensors. The same spaces drive the Katib
``Experiment`` each model gets on a cluster (``longrec.pipeline.katib``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from longrec.data.schema import FeatureSpec
from longrec.data.tensors import TensorSampleSet
from longrec.models.registry import build_model, model_config_from_dict
from longrec.seeding import derive_seed
from longrec.train.trainer import TrainConfig, TrainResult, set_seed, train_model

__all__ = [
    "SEARCH_SPACES",
    "TRAIN_KNOBS",
    "SearchSpace",
    "TrialResult",
    "TuningResult",
    "search_space",
    "tune_model",
]

logger = logging.getLogger(__name__)

# Knobs of TrainConfig every model shares. ``search_space`` puts the untuned run's value of each first.
TRAIN_KNOBS: dict[str, list[Any]] = {
    "lr": [0.001, 0.002, 0.003, 0.005, 0.01],
    "epochs": [3, 5],
    "patience": [1, 2],
    "weight_decay": [0.0, 1e-6, 1e-5],
}
# Model-config knobs: dropout for every model, plus the one knob per model the issue names (IMN's
# iterations and enhancement, LMN's λ and slots).
MODEL_KNOBS: dict[str, dict[str, list[Any]]] = {
    "din": {"dropout": [0.0, 0.1, 0.3], "activation": ["dice", "prelu"]},
    "imn": {"dropout": [0.0, 0.1, 0.3], "iterations": [3, 1, 2], "memory_enhancement": [True, False]},
    "recblr": {"dropout": [0.0, 0.1, 0.3], "n_layers": [2, 1]},
    "lmn": {
        "dropout": [0.0, 0.1, 0.3],
        "memory_loss_weight": [0.1, 0.01, 0.5],
        "memory_slots": [65_536, 16_384],
    },
}
SEARCH_SPACES = {name: {**TRAIN_KNOBS, **knobs} for name, knobs in MODEL_KNOBS.items()}


@dataclass(frozen=True)
class SearchSpace:
    """Finite choices per knob; ``train`` knobs go to TrainConfig, ``model`` knobs to the model config."""

    model_name: str
    train: dict[str, list[Any]]
    model: dict[str, list[Any]]

    def knobs(self) -> dict[str, list[Any]]:
        return {**self.train, **self.model}

    def size(self) -> int:
        return math.prod(len(values) for values in self.knobs().values())

    def default(self) -> dict[str, Any]:
        """The untuned settings: the first value of every knob."""
        return {name: values[0] for name, values in self.knobs().items()}

    def sample(self, budget: int, seed: int) -> list[dict[str, Any]]:
        """``budget`` distinct assignments: the default first, then a seeded random draw from the rest."""
        knobs = self.knobs()
        grid = [dict(zip(knobs, values, strict=True)) for values in itertools.product(*knobs.values())]
        default, rest = grid[0], grid[1:]
        rng = random.Random(derive_seed(seed, f"tuning:{self.model_name}"))
        return ([default] + rng.sample(rest, min(budget - 1, len(rest))))[:budget] if budget > 0 else []

    def split(self, assignment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(TrainConfig fields, model-config fields) of one assignment."""
        return (
            {k: v for k, v in assignment.items() if k in self.train},
            {k: v for k, v in assignment.items() if k in self.model},
        )


def search_space(
    model_name: str, base: TrainConfig | None = None, model_overrides: dict[str, Any] | None = None
) -> SearchSpace:
    """The search space of ``model_name``, each knob's list led by the value the untuned run uses: the
    field of ``base`` (the pipeline's fixed settings) or of the model config with ``model_overrides``."""
    if model_name not in MODEL_KNOBS:
        raise ValueError(f"no search space for model {model_name!r}; known: {', '.join(MODEL_KNOBS)}")
    config = model_config_from_dict(model_name, model_overrides or {})
    config_fields = {f.name for f in dataclasses.fields(config)}
    missing = set(MODEL_KNOBS[model_name]) - config_fields
    if missing:  # a renamed config field must not silently drop out of the search
        raise ValueError(f"search space of {model_name} names unknown config fields {sorted(missing)}")
    base = base or TrainConfig()
    train = {name: _lead_with(getattr(base, name), values) for name, values in TRAIN_KNOBS.items()}
    model = {
        name: _lead_with(getattr(config, name), values) for name, values in MODEL_KNOBS[model_name].items()
    }
    return SearchSpace(model_name, train, model)


def _lead_with(current: Any, values: list[Any]) -> list[Any]:
    """``values`` with ``current`` moved (or added) to the front."""
    return [current] + [v for v in values if v != current]


@dataclass
class TrialResult:
    """One trial: its settings, validation metrics of its best epoch and cost."""

    trial: int
    params: dict[str, Any]
    valid_auc: float
    valid_logloss: float
    best_epoch: int
    epochs_run: int
    seconds: float


@dataclass
class TuningResult:
    """The trials in order and the chosen one (its model weights are in the model ``tune_model`` returns)."""

    model_name: str
    budget: int
    seed: int
    space: dict[str, list[Any]]
    trials: list[TrialResult] = field(default_factory=list)
    chosen_trial: int = 0
    stopped_by_time_limit: bool = False
    seconds: float = 0.0

    @property
    def chosen(self) -> TrialResult:
        return self.trials[self.chosen_trial]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["chosen_params"] = self.chosen.params
        data["chosen_valid_auc"] = self.chosen.valid_auc
        return data


def tune_model(
    model_name: str,
    spec: FeatureSpec,
    train: TensorSampleSet,
    valid: TensorSampleSet,
    base_config: TrainConfig,
    budget: int,
    time_limit_s: float = 0.0,
    model_overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    finished_trials: list[TrialResult] | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    retrain_resumed_pick: bool = True,
) -> tuple[torch.nn.Module | None, TrainConfig, TrainResult | None, TuningResult]:
    """Search ``budget`` trials on validation AUC; return (best model, its TrainConfig, its training
    result, the tuning record). Test data is not an argument: the search cannot read it.

    ``time_limit_s`` > 0 stops starting new trials once that much time has passed (the record says so;
    a search cut by time is no longer reproducible trial for trial). Every trial trains from the same seed.

    Resuming a long search (a study of several hours): ``on_trial`` is called with each trial as it
    finishes, so a caller can save it; ``finished_trials`` are those saved trials, the first trials of
    this same search (same model, space, seed), which are kept instead of trained again. The chosen
    trial is trained again at the end only when it is one of them (its weights were not kept), unless
    ``retrain_resumed_pick`` is False (a caller that wants the record only): model and result are then None.
    """
    if budget < 1:
        raise ValueError(f"a tuning budget must be >= 1 trial, got {budget}")
    if len(valid) == 0:
        raise ValueError("tuning needs a validation split; this training set has none")
    space = search_space(model_name, base_config, model_overrides)
    assignments = space.sample(budget, base_config.seed)
    record = TuningResult(model_name, budget, base_config.seed, space.knobs())
    say = progress or _progress
    say(
        f"tuning {model_name}: {len(assignments)} of {space.size()} settings on validation AUC"
        + (f", time limit {time_limit_s:.0f} s" if time_limit_s > 0 else "")
    )
    best: tuple[float, torch.nn.Module | None, TrainConfig, TrainResult | None] | None = None
    start = time.perf_counter()
    finished = list(finished_trials or [])
    if len(finished) > len(assignments):
        raise ValueError(f"{len(finished)} finished trials for a search of {len(assignments)}")
    for index, trial in enumerate(finished):
        if trial.trial != index or trial.params != assignments[index]:
            raise ValueError(
                f"finished trial {index} has settings {trial.params}, but this search's trial {index} is "
                f"{assignments[index]} (another model, space, seed or budget): start the search over"
            )
    for index, assignment in enumerate(assignments):
        if index < len(finished):  # resumed: kept, not trained again
            trial = finished[index]
            record.trials.append(trial)
            if best is None or trial.valid_auc > best[0]:
                config = dataclasses.replace(base_config, **space.split(assignment)[0])
                best = (trial.valid_auc, None, config, None)
                record.chosen_trial = index
            say(
                f"tuning {model_name}: trial {index + 1}/{len(assignments)} resumed: valid AUC {trial.valid_auc:.4f}"
            )
            continue
        if time_limit_s > 0 and index > 0 and time.perf_counter() - start > time_limit_s:
            record.stopped_by_time_limit = True
            say(f"tuning {model_name}: time limit reached after {index} trial(s)")
            break
        train_fields, model_fields = space.split(assignment)
        config = dataclasses.replace(base_config, **train_fields)
        trial_start = time.perf_counter()
        set_seed(derive_seed(config.seed, "model-init"))  # every trial starts from the same draw
        model = build_model(model_name, spec, {**(model_overrides or {}), **model_fields})
        result = train_model(model, train, valid, config)
        auc = float(result.best_valid_metrics.get("auc", math.nan))
        trial = TrialResult(
            trial=index,
            params=assignment,
            valid_auc=auc,
            valid_logloss=float(result.best_valid_metrics.get("logloss", math.nan)),
            best_epoch=result.best_epoch,
            epochs_run=len(result.history),
            seconds=round(time.perf_counter() - trial_start, 2),
        )
        record.trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        # Strictly better only: ties keep the earlier trial (the default first), NaN never wins.
        if best is None or auc > best[0]:
            best = (auc, model, config, result)
            record.chosen_trial = index
        else:
            del model
        say(
            f"tuning {model_name}: trial {index + 1}/{len(assignments)} {_short(assignment)} → "
            f"valid AUC {auc:.4f} (best {record.chosen.valid_auc:.4f}, trial {record.chosen_trial + 1})"
        )
    # A resumed search's time includes its resumed trials (trained by an earlier process).
    record.seconds = round(sum(t.seconds for t in finished) + time.perf_counter() - start, 2)
    assert best is not None
    _, model, config, result = best
    # The chosen trial was resumed: train it again, from the same seed, for its weights.
    if model is None and retrain_resumed_pick:
        set_seed(derive_seed(config.seed, "model-init"))
        model = build_model(
            model_name, spec, {**(model_overrides or {}), **space.split(record.chosen.params)[1]}
        )
        result = train_model(model, train, valid, config)
    return model, config, result, record


def _progress(message: str) -> None:
    # Printed, not only logged: a KFP task's log and a kfp.local run show stderr, whatever the log level.
    logger.info(message)
    print(message, file=sys.stderr, flush=True)


def _short(assignment: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in assignment.items())


def apply_settings(
    model_name: str, settings: dict[str, Any], config: TrainConfig
) -> tuple[TrainConfig, dict[str, Any]]:
    """Chosen settings (a tuning pick, a Katib optimal trial) → (TrainConfig, model-config overrides).

    Knobs are the model's search-space knobs; values need not be on its grid (a human may set them), but
    must be valid for the config they go into.
    """
    space = search_space(model_name, config)
    unknown = set(settings) - set(space.knobs())
    if unknown:
        raise ValueError(
            f"unknown setting(s) {sorted(unknown)} for {model_name}; known: {', '.join(space.knobs())}"
        )
    train_fields, model_fields = space.split(settings)
    config = dataclasses.replace(config, **train_fields)  # TrainConfig validates its own fields
    model_config_from_dict(model_name, model_fields)  # and the model config its own
    return config, model_fields
