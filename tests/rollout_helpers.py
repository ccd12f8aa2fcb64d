"""Shared pieces of the rollout tests: a real registry holding two tiny stored versions, and synthetic
request logs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from longrec.rollout.assignment import CANDIDATE, CONTROL, arm_of_bucket, buckets
from longrec.rollout.requestlog import RequestLogger

DATASET = "rollout-test"


def registry_with_models(root: Path, names=("din", "recblr")) -> tuple[object, list[str]]:
    """A real ModelRegistry with one stored version per name (placeholder weights: the rollout reads tags
    and pointers only) and production pointing at the first."""
    from longrec.registry.store import ModelRegistry

    registry = ModelRegistry(root / "registry")
    dataset_dir = root / "dataset"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "dataset.json").write_text(json.dumps({"name": DATASET, "fingerprint": "f" * 16}))
    tags = []
    for name in names:
        model_dir = root / f"model-{name}"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.pt").write_bytes(b"placeholder")
        (model_dir / "model_meta.json").write_text(json.dumps({"model_name": name}))
        (model_dir / "evaluation.json").write_text(json.dumps({"test_metrics": {"auc": 0.8}}))
        tags.append(registry.register(model_dir, dataset_dir))
    registry.promote(tags[0], DATASET, reason="test baseline")
    return registry, tags


def log_synthetic_requests(
    log: RequestLogger,
    experiment,
    n: int,
    ctr: dict,
    *,
    seed: int,
    latency_ms: dict | None = None,
    error_rate: dict | None = None,
) -> None:
    """Log `n` requests of fresh users, assigned by the experiment's salt and traffic, clicked with
    probability ctr[arm]."""
    rng = np.random.default_rng(seed)
    users = [f"u{seed}-{i}" for i in range(n)]
    arms = arm_of_bucket(buckets(experiment.salt, users), experiment.traffic)
    latency_ms = latency_ms or {CONTROL: 20.0, CANDIDATE: 20.0}
    error_rate = error_rate or {}
    for user, arm in zip(users, arms, strict=True):
        request_id = uuid.uuid4().hex
        failed = rng.random() < error_rate.get(arm, 0.0)
        log.log(
            request_id=request_id, user_id=user, arm=str(arm), model_tag=arm, items=[1, 2, 3],
            scores=[0.3, 0.2, 0.1], latency_ms=float(rng.exponential(latency_ms[arm])),
            experiment_id=experiment.id, status="error" if failed else "ok",
        )  # fmt: skip
        if not failed:
            clicked = rng.random() < ctr[arm]
            log.log_feedback(
                request_id=request_id, target_item=1, position=1 if clicked else 0, clicked=clicked, top_k=3
            )
