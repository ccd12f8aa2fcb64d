"""The sample builder: splits, negatives, leakage, padding, determinism."""

import numpy as np
import pandas as pd
import pytest

from longrec.data.datasets import RecDataset, _assemble
from longrec.data.samples import (
    SampleConfig,
    build_training_set,
    histories_from_sequences,
    sample_negatives,
)
from longrec.data.training_set import read_training_set, stack_sequences, write_training_set


def make_dataset(n_users: int = 6, events_per_user: int = 12, n_items: int = 40, seed: int = 0) -> RecDataset:
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        times = np.sort(rng.integers(0, 10_000, size=events_per_user)) * 3600
        times[3] = times[2]  # a same-second tie in every user
        items = rng.choice(np.arange(100, 100 + n_items), size=events_per_user, replace=False)
        rows += [(f"u{user}", int(i), int(t)) for i, t in zip(items, times, strict=True)]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return _assemble(
        "toy", frame["user"].to_numpy(), frame["item"].to_numpy(), frame["timestamp"].to_numpy(), None, None
    )


def brute_force_history(dataset: RecDataset, user: int, target_time: int, length: int) -> list[int]:
    events = dataset.events.reset_index().sort_values(["timestamp", "index"], kind="stable")
    earlier = events[(events.user_id == user) & (events.timestamp < target_time)]
    return earlier["item_id"].tolist()[-length:]


@pytest.mark.parametrize("split", ["time", "leave_one_out"])
def test_histories_match_brute_force_and_never_leak(split):
    dataset = make_dataset()
    config = SampleConfig(max_history_length=4, split=split)
    frame = build_training_set(dataset, config)
    items = stack_sequences(frame["history_items"])
    stamps = stack_sequences(frame["history_timestamps"])
    mask = stack_sequences(frame["history_mask"], np.bool_)
    # Strictly earlier, always: no event at or after the target's second.
    assert not ((stamps >= frame["target_timestamp"].to_numpy()[:, None]) & mask).any()
    for row in frame.sample(40, random_state=0).itertuples():
        expected = brute_force_history(dataset, row.user_id, row.target_timestamp, 4)
        got = items[row.Index][mask[row.Index]].tolist()
        assert got == expected
    # Padding: valid positions first, item 0 / time 0 / mask False after.
    assert (mask == (np.arange(4)[None, :] < frame["history_length"].to_numpy()[:, None])).all()
    assert ((items == 0) == ~mask).all() and (stamps[~mask] == 0).all()
    assert (frame["history_length"] >= 1).all()


def test_time_split_follows_global_time_ranges():
    dataset = make_dataset()
    frame = build_training_set(dataset, SampleConfig(max_history_length=4))
    t = dataset.events["timestamp"]
    span = t.max() - t.min()
    positives = frame[frame.label == 1]
    train_end, valid_end = t.min() + 0.8 * span, t.min() + 0.9 * span
    assert (positives[positives.split == "train"].target_timestamp < train_end).all()
    valid = positives[positives.split == "valid"].target_timestamp
    assert ((valid >= train_end) & (valid < valid_end)).all()
    assert (positives[positives.split == "test"].target_timestamp >= valid_end).all()
    # Test histories may reach back into train-time events.
    test_rows = frame[(frame.split == "test")]
    assert (test_rows.history_length > 0).all()


def test_leave_one_out_holds_out_each_users_last_two_events():
    dataset = make_dataset()
    frame = build_training_set(dataset, SampleConfig(max_history_length=4, split="leave_one_out"))
    positives = frame[frame.label == 1]
    assert positives.groupby("split").size().to_dict() == {"test": 6, "train": 6 * 9, "valid": 6}
    last_time = dataset.events.groupby("user_id").timestamp.max()
    test = positives[positives.split == "test"].set_index("user_id").target_timestamp
    assert (test == last_time.reindex(test.index)).all()


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negatives_are_never_in_the_users_history_and_counts_match(sampling):
    dataset = make_dataset()
    config = SampleConfig(
        max_history_length=4, train_negatives=2, eval_negatives=5, negative_sampling=sampling
    )
    frame = build_training_set(dataset, config)
    seen = set(zip(dataset.events.user_id, dataset.events.item_id, strict=True))
    negatives = frame[frame.label == 0]
    assert not any((u, i) in seen for u, i in zip(negatives.user_id, negatives.target_item, strict=True))
    per_positive = frame.groupby(["split", "user_id", "target_timestamp"]).label.agg(["size", "sum"])
    # Positives that share a second share a group: each brings its own negatives.
    ratio = (per_positive["size"] / per_positive["sum"]).groupby(level="split").first()
    assert ratio.to_dict() == {"test": 6.0, "train": 3.0, "valid": 6.0}
    # Negatives of one positive are distinct and share its history.
    assert not frame.duplicated(["user_id", "target_timestamp", "target_item", "split"]).any()


def test_sampling_is_seeded_and_deterministic():
    dataset = make_dataset()
    a = build_training_set(dataset, SampleConfig(max_history_length=4, seed=3))
    b = build_training_set(dataset, SampleConfig(max_history_length=4, seed=3))
    c = build_training_set(dataset, SampleConfig(max_history_length=4, seed=4))
    pd.testing.assert_frame_equal(
        a.drop(columns=["history_items", "history_timestamps", "history_mask"]),
        b.drop(columns=["history_items", "history_timestamps", "history_mask"]),
    )
    assert not a.target_item.equals(c.target_item)


def test_sample_negatives_rejects_impossible_requests():
    interacted = np.array([1 * 4 + 1, 1 * 4 + 2, 1 * 4 + 3])  # user 1 saw every item of 3
    with pytest.raises(ValueError, match="almost every item"):
        sample_negatives(np.array([1]), 1, 4, interacted, np.random.default_rng(0))


def test_histories_from_sequences_keeps_the_newest_events():
    items, stamps = histories_from_sequences([[5, 6, 7], [], [9]], [[1, 2, 3], [], [4]], 2)
    assert items.tolist() == [[6, 7], [0, 0], [9, 0]]
    assert stamps.tolist() == [[2, 3], [0, 0], [4, 0]]


@pytest.mark.parametrize("bad", [0, -3])
def test_history_length_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_history_length must be a positive integer"):
        SampleConfig(max_history_length=bad)


def test_training_set_round_trips_through_parquet(tmp_path):
    dataset = make_dataset()
    frame = build_training_set(dataset, SampleConfig(max_history_length=4))
    spec = dataset.feature_spec(4)
    write_training_set(frame, spec, tmp_path, {"seed": 0})
    back, spec_back, meta = read_training_set(tmp_path)
    assert spec_back == spec and meta == {"seed": 0}
    for column in ("history_items", "history_timestamps", "history_mask"):
        assert (stack_sequences(back[column]) == stack_sequences(frame[column])).all()
    pd.testing.assert_series_equal(back["label"], frame["label"])


def test_popularity_negatives_use_training_period_counts_only():
    """An item that only becomes popular in the valid/test period is future information at training time:
    it must never be drawn as a popularity negative."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(40):
        times = np.sort(rng.integers(0, 1_000, size=10)) * 60
        items = rng.choice(np.arange(1, 30), size=10, replace=False)
        rows += [(f"u{user}", int(i), int(t)) for i, t in zip(items, times, strict=True)]
    # Late users who all watch item 999 after the training period ends (time split: last 20% of the range).
    rows += [(f"late{user}", 999, 59_000 + user) for user in range(60)]
    rows += [(f"late{user}", 5, 58_000 + user) for user in range(60)]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    dataset = _assemble(
        "pop", frame["user"].to_numpy(), frame["item"].to_numpy(), frame["timestamp"].to_numpy(), None, None
    )
    future_item = int(np.flatnonzero(dataset.item_vocab.astype(str) == "999")[0])
    config = SampleConfig(max_history_length=4, eval_negatives=8, negative_sampling="popularity")
    samples = build_training_set(dataset, config)
    negatives = samples[samples.label == 0]
    assert len(negatives) > 300
    assert future_item not in set(negatives.target_item)  # most popular item overall, zero training count
    assert future_item in set(samples[samples.label == 1].target_item)


def test_sampling_and_initialisation_get_independent_seeds():
    from longrec.seeding import derive_seed

    assert derive_seed(0, "negative-sampling") != derive_seed(0, "model-init")
    assert derive_seed(0, "model-init") == derive_seed(0, "model-init")
    assert derive_seed(1, "model-init") != derive_seed(0, "model-init")
