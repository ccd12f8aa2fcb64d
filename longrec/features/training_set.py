"""The pipeline's training-set step: sample targets from events, read every history from Feast."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from feast import FeatureStore

from longrec.data.datasets import RecDataset
from longrec.data.samples import SampleConfig, assemble_training_set, build_targets, histories_from_sequences
from longrec.data.training_set import write_training_set
from longrec.features.store import fetch_histories

logger = logging.getLogger(__name__)


def build_training_set_from_features(
    dataset_dir: str | Path, repo_dir: str | Path, config: SampleConfig, output_dir: str | Path
) -> dict:
    """Targets and negatives from events; histories and user features by point-in-time Feast retrieval."""
    dataset = RecDataset.load(dataset_dir)
    targets, _ = build_targets(dataset, config)
    store = FeatureStore(repo_path=str(repo_dir))
    started = time.time()
    # Negatives share their positive's history, so each (user, target time) is fetched once.
    requests = targets[["user_id", "target_timestamp"]].drop_duplicates().reset_index(drop=True)
    fetched = fetch_histories(store, requests, config.max_history_length)
    joined = targets[["user_id", "target_timestamp"]].merge(
        fetched, on=["user_id", "target_timestamp"], how="left", validate="many_to_one"
    )
    if len(joined) != len(targets) or joined["history_items"].isna().any():
        raise RuntimeError("Feast retrieval lost samples: every target must get a history row")
    items, stamps = histories_from_sequences(
        joined["history_items"].tolist(), joined["history_timestamps"].tolist(), config.max_history_length
    )
    frame = assemble_training_set(targets, items, stamps, dataset)
    # User side features as the feature store served them.
    for column, source in (
        ("user_age", "age_id"),
        ("user_gender", "gender_id"),
        ("user_occupation", "occupation_id"),
    ):
        frame[column] = joined[source].to_numpy(np.int64)
    fetch_seconds = time.time() - started
    spec = dataset.feature_spec(config.max_history_length)
    meta = {
        "dataset": dataset.name,
        "dataset_track": dataset.track,
        "dataset_fingerprint": dataset.fingerprint(),
        "sample_config": config.to_dict(),
        "history_source": "feast.get_historical_features (as of target_timestamp - 1 s)",
        "n_samples": int(len(frame)),
        "n_samples_by_split": {k: int(v) for k, v in frame["split"].value_counts().items()},
    }
    write_training_set(frame, spec, output_dir, meta)
    logger.info("training set: %d samples, histories fetched in %.1f s", len(frame), fetch_seconds)
    return {
        **meta["n_samples_by_split"],
        "n_samples": meta["n_samples"],
        "fetch_seconds": round(fetch_seconds, 1),
    }
