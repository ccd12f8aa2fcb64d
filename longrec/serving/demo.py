"""Small served worlds for tests and the serving benchmark: synthetic events in a Feast repo and models
(trained weights are not needed to measure serving; parity holds for any weights) stored in a registry's
model store the way the pipeline stores them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from longrec.data.schema import FeatureSpec

__all__ = ["demo_frames", "demo_spec", "store_model_dir", "write_model_dir"]


def demo_spec(n_users: int = 12, n_items: int = 60, max_history_length: int = 8) -> FeatureSpec:
    """A vocabulary for ``demo_frames`` (ids 1..n-1; 0 is padding / unknown)."""
    return FeatureSpec(
        n_users=n_users, n_items=n_items, n_genres=5, n_ages=4, n_genders=3, n_occupations=6,
        max_history_length=max_history_length,
    )  # fmt: skip


def demo_frames(
    spec: FeatureSpec, events_per_user: int, seed: int = 0, users_with_history: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, item features, user features): users 1..k get ``events_per_user`` events each."""
    rng = np.random.default_rng(seed)
    k = users_with_history if users_with_history is not None else spec.n_users - 2
    users = np.repeat(np.arange(1, k + 1), events_per_user)
    items = rng.integers(1, spec.n_items, size=len(users))
    times = 880_000_000 + np.tile(np.arange(events_per_user) * 600, k) + users * 7
    events = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times}).astype("int64")
    item_frame = pd.DataFrame(
        {"item_id": np.arange(1, spec.n_items), "genre_id": np.arange(1, spec.n_items) % spec.n_genres}
    )
    user_ids = np.arange(1, k + 1)
    user_frame = pd.DataFrame(
        {
            "user_id": user_ids,
            "age_id": user_ids % spec.n_ages,
            "gender_id": 1 + user_ids % (spec.n_genders - 1),
            "occupation_id": user_ids % spec.n_occupations,
        }
    )
    return events, item_frame, user_frame


def write_model_dir(model, model_dir: str | Path, memory_shards: int = 4) -> Path:
    """model.pt, model_meta.json and (LMN) the memory shards, as ``longrec.train.run`` writes them."""
    from longrec.models.checkpoint import save_checkpoint

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model_dir / "model.pt", model)
    if hasattr(model, "export_artifacts"):
        model.export_artifacts(model_dir, memory_shards)
    meta = {
        "model_name": model.name,
        "model_config": dataclasses.asdict(model.config),
        "feature_spec": dataclasses.asdict(model.spec),
    }
    (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return model_dir


def store_model_dir(registry_root: str | Path, model_dir: str | Path, name: str) -> str:
    """Copy a model folder into the registry's BentoML model store as ``name``; returns the tag."""
    from longrec.registry.bento_models import create_model

    root = Path(registry_root).resolve()
    return create_model(root, name, Path(model_dir), {"stage": "candidate"}, {})
