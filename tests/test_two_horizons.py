"""LMN's two horizons (issue #16): the long view written into the memory during training holds only events
strictly before each target, GE checks it from the log itself, and nothing at inference reads it."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from longrec.data.datasets import load_dataset
from longrec.data.samples import SampleConfig, build_training_set_with_log
from longrec.data.schema import LONG_LOG_KEY
from longrec.data.training_set import (
    build_training_set_from_events,
    read_long_history_log,
    read_training_set,
    stack_sequences,
    tensors_by_split,
    write_training_set,
)
from longrec.models.lmn import LMN, LMNConfig
from longrec.train.trainer import TrainConfig, train_model

SHORT, LONG = 5, 40


@pytest.fixture(scope="module")
def two_horizon_set():
    dataset = load_dataset("ml-100k", max_events=1_200)
    config = SampleConfig(max_history_length=SHORT, memory_history_length=LONG, seed=3)
    frame, log = build_training_set_with_log(dataset, config)
    return dataset, config, frame, log


def _windows(frame, log):
    start = frame["long_history_start"].to_numpy()
    length = frame["long_history_length"].to_numpy()
    return log.windows(start, length, LONG)


def test_long_window_is_the_last_l_long_events_strictly_before_the_target(two_horizon_set):
    dataset, _, frame, log = two_horizon_set
    items, stamps = _windows(frame, log)
    length = frame["long_history_length"].to_numpy()
    target_time = frame["target_timestamp"].to_numpy()
    valid = np.arange(LONG)[None, :] < length[:, None]
    # Only the sample's own user's events, all strictly before the target.
    start = frame["long_history_start"].to_numpy()
    owner = log.user_ids[np.minimum(start[:, None] + np.arange(LONG), len(log) - 1)]
    assert (owner[valid] == np.repeat(frame["user_id"].to_numpy(), length)).all()
    assert (stamps[valid] < np.repeat(target_time, length)).all()
    # Every earlier event of the user up to L_long: counted straight from the events.
    events = dataset.events
    for row in frame.sample(200, random_state=0).itertuples():
        earlier = events[(events["user_id"] == row.user_id) & (events["timestamp"] < row.target_timestamp)]
        assert row.long_history_length == min(len(earlier), LONG)
    # The short history is the newest end of the long window.
    short = stack_sequences(frame["history_items"])
    n_short = frame["history_length"].to_numpy()
    for row in range(0, len(frame), 97):
        n, m = n_short[row], length[row]
        assert np.array_equal(items[row, m - n : m], short[row, :n])
    assert (length >= n_short).all() and length.max() == LONG > SHORT


def test_feast_long_view_matches_the_event_reference(tmp_path):
    from longrec.features.materialize import materialize_dataset
    from longrec.features.training_set import build_training_set_from_features

    dataset = load_dataset("ml-100k", max_events=700)
    dataset.save(tmp_path / "events")
    config = SampleConfig(max_history_length=4, memory_history_length=30, seed=1)
    materialize_dataset(tmp_path / "events", tmp_path / "repo", max_history_length=4)
    build_training_set_from_features(tmp_path / "events", tmp_path / "repo", config, tmp_path / "ts")
    feast_frame, _, meta = read_training_set(tmp_path / "ts")
    feast_log = read_long_history_log(tmp_path / "ts")
    reference, reference_log = build_training_set_with_log(dataset, config)
    assert meta["sample_config"]["memory_history_length"] == 30
    for frame, log in ((feast_frame, feast_log), (reference, reference_log)):
        frame["_items"] = list(log.windows(frame["long_history_start"], frame["long_history_length"], 30)[0])
    assert (
        feast_frame["long_history_length"].to_numpy() == reference["long_history_length"].to_numpy()
    ).all()
    assert np.array_equal(stack_sequences(feast_frame["_items"]), stack_sequences(reference["_items"]))
    assert (
        feast_frame["long_history_last_timestamp"].to_numpy()
        == reference["long_history_last_timestamp"].to_numpy()
    ).all()


def test_sample_config_refuses_a_long_view_shorter_than_the_history():
    with pytest.raises(ValueError, match="memory_history_length"):
        SampleConfig(max_history_length=50, memory_history_length=20)
    from longrec.pipeline.params import PipelineParams

    with pytest.raises(ValueError, match="L_long = 20"):
        PipelineParams(max_history_length=50, memory_history_length=20)


def _lmn(spec, **overrides) -> LMN:
    torch.manual_seed(0)
    config = LMNConfig(memory_slots=1_024, memory_top_k=4, memory_key_dim=16, memory_value_dim=8, **overrides)
    return LMN(spec, config)


def test_memory_writes_come_only_from_the_window(two_horizon_set):
    dataset, config, frame, log = two_horizon_set
    spec = dataset.feature_spec(SHORT)
    # Poison every log event outside all windows: a write of any of them would show the sentinel.
    covered = np.zeros(len(log), bool)
    for start, length in zip(frame["long_history_start"], frame["long_history_length"], strict=True):
        covered[start : start + length] = True
    in_windows = set(log.item_ids[covered].tolist())
    sentinel = next(item for item in range(spec.n_items - 1, 0, -1) if item not in in_windows)
    assert (~covered).any()  # each user's last event is in no window (nothing comes after it)
    poisoned = dataclasses.replace(log, item_ids=np.where(covered, log.item_ids, sentinel))
    splits = tensors_by_split(frame, spec, poisoned)
    model = _lmn(spec, memory_write_samples=16)
    written = []
    draw = model.long_view_writes

    def recording(batch):  # what the memory loss writes in each training step
        items, rows = draw(batch)
        written.append(items.clone())
        return items, rows

    model.long_view_writes = recording
    model.train()
    for batch in splits["train"].batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        model.loss(batch, model(batch)).backward()
    items = torch.cat(written)
    assert len(items) and not (items == sentinel).any()
    # A window of at most W events is written whole, each event once; a longer one W times, inside it.
    batch = next(splits["train"].batches(64))
    rows_items, rows = model.long_view_writes(batch)
    length = batch["long_history_length"]
    assert ((length > 16) & (length > 0)).any() and ((length <= 16) & (length > 0)).any()
    for row in torch.nonzero(length > 0).flatten().tolist():
        start, n = int(batch["long_history_start"][row]), int(length[row])
        window = batch[LONG_LOG_KEY][start : start + n].tolist()
        row_writes = rows_items[rows == row].tolist()
        if n <= 16:
            assert sorted(row_writes) == sorted(window)
        else:
            assert len(row_writes) == 16 and set(row_writes) <= set(window)


def test_two_horizon_lmn_trains_and_inference_never_reads_the_long_view(two_horizon_set):
    dataset, _, frame, log = two_horizon_set
    spec = dataset.feature_spec(SHORT)
    splits = tensors_by_split(frame, spec, log)
    for target in ("projection", "interest"):
        model = _lmn(spec, memory_target=target)
        result = train_model(
            model,
            splits["train"],
            splits["valid"],
            TrainConfig(epochs=1, batch_size=256, lr=3e-3, device="cpu"),
        )
        assert np.isfinite(result.history[0]["train_loss"]), target
        model.eval()
        with_long = next(splits["test"].batches(50))
        short_only = {k: v for k, v in with_long.items() if not k.startswith("long_history")}
        assert LONG_LOG_KEY not in short_only
        with torch.no_grad():
            scores = model(short_only)
            assert torch.equal(model(with_long), scores)  # the long view changes nothing at inference
            # The serving path (user encoded once, candidates scored) on the short view alone.
            row = {k: v[:1] for k, v in short_only.items()}
            user = model.encode_user(row)
            served = model.score_candidates(user, {k: v[:1] for k, v in short_only.items()})
        assert torch.allclose(served, scores[:1], atol=1e-5)


def test_validation_checks_long_windows_against_the_log(two_horizon_set, tmp_path):
    from longrec.validation.run import validate_training_set_dir
    from longrec.validation.suite import TrainingSetValidationError

    dataset, config, frame, log = two_horizon_set
    meta = {"sample_config": config.to_dict()}
    spec = dataset.feature_spec(SHORT)
    write_training_set(frame, spec, tmp_path / "good", meta, log)
    summary = validate_training_set_dir(tmp_path / "good", tmp_path / "good.html", tmp_path / "good.json")
    assert summary["success"]

    # A window moved one event later includes the target event itself (or the next user's first event).
    leaky = frame.copy()
    leaky["long_history_start"] = leaky["long_history_start"] + 1
    write_training_set(leaky, spec, tmp_path / "leaky", meta, log)
    with pytest.raises(TrainingSetValidationError) as failure:
        validate_training_set_dir(tmp_path / "leaky", tmp_path / "leaky.html", tmp_path / "leaky.json")
    assert "every long-window event strictly before its target" in str(failure.value)
    # The report a person opens names the rule.
    page = (tmp_path / "leaky.html").read_text()
    assert (
        "long-window event strictly before its target" in page and "long view (L_long, training only)" in page
    )
    # Windows pointing at another user's events (the log starts with user 1's).
    crossing = frame.copy()
    crossing["long_history_start"] = 0
    write_training_set(crossing, spec, tmp_path / "crossing", meta, log)
    with pytest.raises(TrainingSetValidationError, match="holds only the sample's user's events"):
        validate_training_set_dir(
            tmp_path / "crossing", tmp_path / "crossing.html", tmp_path / "crossing.json"
        )

    # A training set that claims a long view but lost its log cannot pass.
    (tmp_path / "good" / "long_history_log.parquet").unlink()
    with pytest.raises(TrainingSetValidationError, match="event log is missing"):
        validate_training_set_dir(tmp_path / "good", tmp_path / "lost.html", tmp_path / "lost.json")


def test_direct_build_writes_the_long_view(tmp_path):
    dataset = load_dataset("ml-100k", max_events=400)
    dataset.save(tmp_path / "events")
    config = SampleConfig(max_history_length=3, memory_history_length=12)
    build_training_set_from_events(tmp_path / "events", config, tmp_path / "ts")
    frame, _, _ = read_training_set(tmp_path / "ts")
    log = read_long_history_log(tmp_path / "ts")
    assert log is not None and len(log) == len(dataset.events)
    assert frame["long_history_length"].max() == 12
    assert isinstance(frame, pd.DataFrame)
    # Without a long view there is no log and no long columns.
    build_training_set_from_events(
        tmp_path / "events", SampleConfig(max_history_length=3), tmp_path / "short"
    )
    short, _, _ = read_training_set(tmp_path / "short")
    assert read_long_history_log(tmp_path / "short") is None and "long_history_start" not in short.columns


def test_the_serving_feature_service_reads_no_event_log(tmp_path):
    from longrec.features.definitions import EVENTS_VIEW, SEQUENCE_VIEW, build_definitions

    definitions = build_definitions(tmp_path)
    serving = {projection.name for projection in definitions.longrec_serving.feature_view_projections}
    training = {projection.name for projection in definitions.longrec_training.feature_view_projections}
    # Serving reads the latest snapshot of L events; the event log (any L_long) is for training only.
    assert SEQUENCE_VIEW in serving and EVENTS_VIEW not in serving and EVENTS_VIEW in training


def test_the_long_log_goes_to_the_device_once_not_with_every_batch(two_horizon_set):
    """Every batch carries the whole log; training and prediction move it to the model's device once
    (``meta`` stands in for a GPU here) and every batch then carries that one copy."""
    from longrec.train.trainer import CTRTask

    dataset, _, frame, log = two_horizon_set
    train = tensors_by_split(frame, dataset.feature_spec(SHORT), log)["train"]
    assert train.with_shared_on("cpu") is train  # already there: nothing copied
    placed = train.with_shared_on("meta")
    assert placed.shared[LONG_LOG_KEY].device.type == "meta"
    # Per-row tensors are not copied (they still move batch by batch).
    assert all(placed.tensors[key] is value for key, value in train.tensors.items())
    logs = {id(batch[LONG_LOG_KEY]) for batch in placed.batches(64)}
    assert len(logs) == 1
    task = CTRTask(train, None, TrainConfig(device="cpu"))
    task.place_shared(torch.device("meta"))
    assert next(task.batches(torch.Generator().manual_seed(0)))[LONG_LOG_KEY].device.type == "meta"
