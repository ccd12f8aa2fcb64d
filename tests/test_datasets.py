"""Dataset loaders on the real shipped data and on user files, including broken ones."""

import numpy as np
import pandas as pd
import pytest

from longrec.data.datasets import DatasetError, RecDataset, load_dataset


def test_movielens_100k_from_the_recbole_wheel():
    dataset = load_dataset("ml-100k")
    assert len(dataset.events) == 100_000
    assert dataset.n_users - 1 == 943 and dataset.n_items - 1 == 1682
    assert dataset.events[["user_id", "item_id"]].min().min() == 1  # 0 is padding
    # Side features: genres for items, age/gender/occupation for users, 0 only where unknown.
    assert (dataset.item_features["genre_id"] > 0).mean() > 0.99
    assert dataset.user_features[["age_id", "gender_id", "occupation_id"]].gt(0).all().all()
    spec = dataset.feature_spec(50)
    assert spec.n_genders == 3 and spec.n_occupations == 22


def test_dslabs_movielens_long_histories():
    dataset = load_dataset("dslabs-movielens")
    counts = dataset.events.groupby("user_id").size()
    assert len(dataset.events) == 100_004 and counts.max() == 2_391 and len(counts) == 671


def test_max_events_keeps_whole_users(tmp_path):
    full = load_dataset("ml-100k")
    small = load_dataset("ml-100k", max_events=2_000)
    counts = small.events.groupby("user_id").size()
    assert 2_000 <= len(small.events) < 2_000 + 737
    assert small.n_users - 1 == len(counts)
    # Per-user event counts equal the full dataset's for the kept users.
    raw = full.events.assign(raw=full.user_vocab[full.events.user_id]).groupby("raw").size()
    kept = small.events.assign(raw=small.user_vocab[small.events.user_id]).groupby("raw").size()
    assert (raw.reindex(kept.index) == kept).all()


def test_csv_and_parquet_files(tmp_path):
    frame = pd.DataFrame({"user": ["a", "a", "b"], "item": [10, 11, 10], "timestamp": [3, 1, 2]})
    frame.to_csv(tmp_path / "events.csv", index=False)
    frame.to_parquet(tmp_path / "events.parquet")
    for name in ("events.csv", "events.parquet"):
        dataset = load_dataset(str(tmp_path / name))
        assert dataset.n_users == 3 and dataset.n_items == 3
        assert dataset.events["timestamp"].tolist() == [3, 1, 2]
        assert isinstance(dataset, RecDataset)


def test_iso_dates_are_accepted(tmp_path):
    pd.DataFrame({"user_id": [1, 1], "item_id": [5, 6], "timestamp": ["2020-01-01", "2020-01-02"]}).to_csv(
        tmp_path / "dates.csv", index=False
    )
    dataset = load_dataset(str(tmp_path / "dates.csv"))
    assert np.diff(dataset.events["timestamp"].to_numpy()).tolist() == [86_400]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user,product,timestamp\n1,2,3\n", "no item column"),
        ("user,item,timestamp\n1,,3\n", "empty user, item or timestamp"),
        ("user,item,timestamp\n1,2,yesterday-ish\n", "neither numeric nor a date"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DatasetError, match="neither a built-in dataset"):
        load_dataset(str(tmp_path / "nope.csv"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(str(tmp_path / "x.json"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_dataset(str(tmp_path / "broken.parquet"))


def test_save_and_load_round_trip(tmp_path):
    dataset = load_dataset("ml-100k", max_events=1_000)
    dataset.save(tmp_path)
    back = RecDataset.load(tmp_path)
    pd.testing.assert_frame_equal(back.events, dataset.events)
    assert back.fingerprint() == dataset.fingerprint()
    assert back.feature_spec(10) == dataset.feature_spec(10)
