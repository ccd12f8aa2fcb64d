"""The pipeline's Feast-backed training set equals the reference built straight from events."""

import numpy as np

from longrec.data.datasets import load_dataset
from longrec.data.samples import SampleConfig, build_training_set
from longrec.data.training_set import read_training_set, stack_sequences
from longrec.features.materialize import materialize_dataset
from longrec.features.training_set import build_training_set_from_features


def test_feast_histories_match_the_event_reference(tmp_path):
    dataset = load_dataset("ml-100k", max_events=700)
    dataset.save(tmp_path / "events")
    config = SampleConfig(max_history_length=6, seed=1)
    materialize_dataset(tmp_path / "events", tmp_path / "repo", max_history_length=6)
    build_training_set_from_features(tmp_path / "events", tmp_path / "repo", config, tmp_path / "ts")
    from_feast, spec, meta = read_training_set(tmp_path / "ts")
    reference = build_training_set(dataset, config)
    assert len(from_feast) == len(reference) and meta["n_samples"] == len(reference)
    for column in (
        "user_id",
        "target_item",
        "target_timestamp",
        "label",
        "split",
        "history_length",
        "user_age",
        "user_gender",
        "user_occupation",
        "target_genre",
    ):
        assert (from_feast[column].to_numpy() == reference[column].to_numpy()).all(), column
    for column in ("history_items", "history_timestamps", "history_mask"):
        assert np.array_equal(stack_sequences(from_feast[column]), stack_sequences(reference[column])), column
    assert spec == dataset.feature_spec(6)
