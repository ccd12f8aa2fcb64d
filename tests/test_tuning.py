"""The tuning step: a seeded search on validation AUC that never reads test data and, at budget 0, is
today's training exactly."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from kfp import dsl

from components.train_model import train_model as train_component
from longrec.data.ingest import ingest_dataset
from longrec.data.samples import SampleConfig
from longrec.data.training_set import (
    build_training_set_from_events,
    read_training_set,
    tensors_by_split,
    write_training_set,
)
from longrec.models.registry import available_models, build_model, model_config_from_dict
from longrec.seeding import derive_seed
from longrec.train.run import train_from_training_set
from longrec.train.trainer import TrainConfig, set_seed, train_model
from longrec.train.tuning import SEARCH_SPACES, TrialResult, search_space, tune_model

CONFIG = TrainConfig(epochs=2, batch_size=128, lr=3e-3, seed=0, progress=False)
BUDGET = 4


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    ingest_dataset("ml-100k", root / "events", max_events=600)
    build_training_set_from_events(root / "events", SampleConfig(max_history_length=8, seed=0), root / "set")
    return root / "set"


@pytest.fixture(scope="module")
def poisoned_dir(training_dir, tmp_path_factory):
    """The same training set with its test split wrecked: labels flipped, histories and targets shuffled."""
    frame, spec, meta = read_training_set(training_dir)
    test = frame["split"] == "test"
    rng = np.random.default_rng(1)
    frame.loc[test, "label"] = 1 - frame.loc[test, "label"]
    frame.loc[test, "target_item"] = rng.permutation(frame.loc[test, "target_item"].to_numpy())
    frame.loc[test, "history_items"] = pd.Series(
        [rng.permutation(items) for items in frame.loc[test, "history_items"]], index=frame.index[test]
    )
    out = tmp_path_factory.mktemp("poisoned") / "set"
    write_training_set(frame, spec, out, meta)
    assert not read_training_set(out)[0].equals(read_training_set(training_dir)[0])
    return out


def _tune(directory, budget=BUDGET, **kwargs):
    frame, spec, _ = read_training_set(directory)
    splits = tensors_by_split(frame[frame["split"] != "test"], spec)
    return tune_model("din", spec, splits["train"], splits["valid"], CONFIG, budget, **kwargs)


@pytest.fixture(scope="module")
def tuned(training_dir):
    return _tune(training_dir)


def test_every_model_has_a_space_led_by_its_untuned_settings():
    assert set(SEARCH_SPACES) == set(available_models())
    for name in available_models():
        space = search_space(name, CONFIG)
        default = space.default()
        assert default["lr"] == CONFIG.lr and default["epochs"] == CONFIG.epochs
        assert default["patience"] == CONFIG.patience and default["weight_decay"] == CONFIG.weight_decay
        config = model_config_from_dict(name, {})
        assert all(getattr(config, knob) == default[knob] for knob in space.model)
        assert len(space.model) >= 2  # dropout plus at least one model-specific knob
    imn = search_space("imn", CONFIG).model
    assert {"iterations", "memory_enhancement"} <= set(imn)
    assert {"memory_loss_weight", "memory_slots"} <= set(search_space("lmn", CONFIG).model)


def test_a_sample_is_seeded_distinct_and_starts_with_the_untuned_settings():
    space = search_space("imn", CONFIG)
    draw = space.sample(6, seed=3)
    assert draw == space.sample(6, seed=3) and draw != space.sample(6, seed=4)
    assert draw[0] == space.default()
    assert len({json.dumps(a, sort_keys=True) for a in draw}) == 6
    assert space.sample(0, seed=3) == []
    assert len(space.sample(10**6, seed=3)) == space.size()  # a budget beyond the grid runs the grid


def test_unknown_model_and_bad_budget_are_refused(training_dir):
    with pytest.raises(ValueError, match="no search space for model 'nope'"):
        search_space("nope")
    with pytest.raises(ValueError, match="budget must be >= 1"):
        _tune(training_dir, budget=0)


def test_the_pick_is_the_trial_with_the_best_validation_auc(tuned):
    model, config, result, record = tuned
    assert len(record.trials) == BUDGET and not record.stopped_by_time_limit
    aucs = [trial.valid_auc for trial in record.trials]
    assert record.chosen_trial == int(np.argmax(aucs))
    assert result.best_valid_metrics["auc"] == pytest.approx(max(aucs))
    # The returned config and model carry the chosen settings.
    chosen = record.chosen.params
    assert config.lr == chosen["lr"] and config.epochs == chosen["epochs"]
    assert model.config.dropout == chosen["dropout"] and model.config.activation == chosen["activation"]
    assert record.trials[0].params == search_space("din", CONFIG).default()


def test_same_seed_and_budget_give_the_same_pick(training_dir, tuned):
    again = _tune(training_dir)[3]
    assert again.chosen_trial == tuned[3].chosen_trial
    assert [t.params for t in again.trials] == [t.params for t in tuned[3].trials]
    assert [t.valid_auc for t in again.trials] == [t.valid_auc for t in tuned[3].trials]


@pytest.mark.parametrize("kept", [1, BUDGET - 1])
def test_a_resumed_search_ends_as_the_uninterrupted_one(training_dir, tuned, kept):
    """A study saves each trial as it ends (on_trial) and, restarted, passes the saved ones back: only
    the rest train, and the pick, the records and the returned weights are the uninterrupted run's."""
    model, config, _, record = tuned
    saved = [TrialResult(**json.loads(json.dumps(dataclasses.asdict(t)))) for t in record.trials[:kept]]
    newly: list = []
    again_model, again_config, _, again = _tune(training_dir, finished_trials=saved, on_trial=newly.append)
    assert [t.trial for t in newly] == list(range(kept, BUDGET))  # only the rest trained
    assert [(t.params, t.valid_auc) for t in again.trials] == [(t.params, t.valid_auc) for t in record.trials]
    assert again.chosen_trial == record.chosen_trial and again_config == config
    state = model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in again_model.state_dict().items())
    # Every trial saved and only the record wanted (the benchmark): nothing trains at all.
    model_none, _, result_none, whole = _tune(
        training_dir, finished_trials=record.trials, on_trial=newly.append, retrain_resumed_pick=False
    )
    assert model_none is None and result_none is None and whole.chosen_trial == record.chosen_trial
    # Its time is the trials' time, though another process trained them (both rounded to 0.01 s, as recorded).
    assert whole.seconds >= round(sum(t.seconds for t in record.trials), 2)
    assert len(newly) == BUDGET - kept
    wrong = [dataclasses.replace(saved[0], params={**saved[0].params, "lr": 0.123})]
    with pytest.raises(ValueError, match="start the search over"):
        _tune(training_dir, finished_trials=wrong)


def test_a_poisoned_test_split_changes_nothing(training_dir, poisoned_dir, tmp_path):
    # Through the entry point the pipeline uses, which reads the whole folder, test rows included.
    clean = train_from_training_set(training_dir, "din", CONFIG, tmp_path / "clean", tuning_budget=3)
    poisoned = train_from_training_set(poisoned_dir, "din", CONFIG, tmp_path / "poisoned", tuning_budget=3)
    assert poisoned["tuning"]["chosen_params"] == clean["tuning"]["chosen_params"]
    assert [t["valid_auc"] for t in poisoned["tuning"]["trials"]] == [
        t["valid_auc"] for t in clean["tuning"]["trials"]
    ]
    first = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "poisoned" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_budget_zero_is_todays_training(training_dir, tmp_path):
    out = train_from_training_set(training_dir, "din", CONFIG, tmp_path / "fixed", tuning_budget=0)
    assert out["tuning"] is None
    # Today's training, written out: seed, build, train on train/valid with the fixed config.
    frame, spec, _ = read_training_set(training_dir)
    splits = tensors_by_split(frame, spec)
    set_seed(derive_seed(CONFIG.seed, "model-init"))
    model = build_model("din", spec)
    train_model(model, splits["train"], splits["valid"], CONFIG)
    saved = torch.load(tmp_path / "fixed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())
    meta = json.loads((tmp_path / "fixed" / "model_meta.json").read_text())
    assert meta["tuning"] is None and meta["train_config"] == dataclasses.asdict(CONFIG)


def test_a_time_limit_stops_starting_trials_and_says_so(training_dir):
    record = _tune(training_dir, budget=3, time_limit_s=1e-6)[3]
    assert len(record.trials) == 1 and record.stopped_by_time_limit


def test_the_train_component_records_trials_and_pick(training_dir, tmp_path):
    training_set = dsl.Dataset(uri=str(training_dir))
    model = dsl.Model(uri=str(tmp_path / "model"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    train_component.python_func(
        training_set=training_set,
        model_name="din",
        epochs=2,
        batch_size=128,
        learning_rate=3e-3,
        seed=0,
        device="cpu",
        tuning_trials=2,
        tuning_time_limit_minutes=0.0,
        model_settings="",
        model=model,
        metrics=metrics,
    )
    trials = model.metadata["tuning_trials"]
    assert len(trials) == 2 and model.metadata["tuned_params"] in [t["params"] for t in trials]
    assert metrics.metadata["tuning_trials_run"] == 2
    assert metrics.metadata["valid_auc"] == pytest.approx(max(t["valid_auc"] for t in trials))
    meta = json.loads((tmp_path / "model" / "model_meta.json").read_text())
    assert meta["train_config"]["lr"] == meta["tuning"]["chosen_params"]["lr"]


# A kfp.local run with a budget showing its trials on the run page: tests/test_pipeline.py
# (test_second_run_is_compared_against_production; one pipeline run checks several things).
