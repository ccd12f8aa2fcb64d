"""Ingest step: a dataset name or file becomes a self-describing folder of parquet files."""

from __future__ import annotations

from pathlib import Path

from longrec.data.datasets import load_dataset


def ingest_dataset(dataset: str, output_dir: str | Path, max_events: int | None = None) -> dict:
    """Load `dataset`, write it under output_dir and return its summary (name, sizes, fingerprint)."""
    loaded = load_dataset(dataset, max_events=max_events)
    loaded.save(output_dir)
    return {
        "dataset": loaded.name,
        "track": loaded.track,
        "n_events": len(loaded.events),
        "n_users": loaded.n_users - 1,
        "n_items": loaded.n_items - 1,
        "fingerprint": loaded.fingerprint(),
    }
