"""The pipeline's feature step: a dataset folder becomes an applied, materialized Feast repo."""

from __future__ import annotations

import time
from pathlib import Path

from longrec.data.datasets import RecDataset
from longrec.features.store import create_feature_repo, materialize


def materialize_dataset(dataset_dir: str | Path, repo_dir: str | Path, max_history_length: int) -> dict:
    """Write the feature data of a dataset into a new Feast repo, apply it and fill the online store."""
    if max_history_length <= 0:
        raise ValueError(f"max_history_length must be a positive integer, got {max_history_length}")
    dataset = RecDataset.load(dataset_dir)
    started = time.time()
    store = create_feature_repo(
        repo_dir, dataset.events, dataset.item_features, dataset.user_features, max_history_length
    )
    applied = time.time()
    materialize(store)
    data_bytes = sum(p.stat().st_size for p in (Path(repo_dir) / "data").glob("*.parquet"))
    return {
        "max_history_length": max_history_length,
        "offline_bytes": data_bytes,
        "offline_bytes_per_event": data_bytes / max(len(dataset.events), 1),
        "apply_seconds": round(applied - started, 2),
        "materialize_seconds": round(time.time() - applied, 2),
    }
