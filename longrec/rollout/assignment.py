"""Sticky bucketing: hash(salt, user id) -> one of 10,000 buckets; the candidate serves buckets below
traffic% x 100. A user's bucket never changes within an experiment (the salt is fixed at start), so a user
switches arm only when the share grows past their bucket, and never back."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_BUCKETS = 10_000
CONTROL, CANDIDATE = "control", "candidate"


def bucket(salt: str, user_id) -> int:
    """The user's bucket in [0, 10,000): the first 8 bytes of sha256(salt:user_id), modulo 10,000."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


def buckets(salt: str, user_ids) -> np.ndarray:
    """`bucket` of many users."""
    return np.fromiter((bucket(salt, user_id) for user_id in user_ids), dtype=np.int64, count=len(user_ids))


def arm_of_bucket(user_bucket, traffic_percent: float):
    """CANDIDATE where bucket < traffic% x 100 (works on ints and numpy arrays)."""
    threshold = round(traffic_percent * N_BUCKETS / 100)
    if isinstance(user_bucket, np.ndarray):
        return np.where(user_bucket < threshold, CANDIDATE, CONTROL)
    return CANDIDATE if user_bucket < threshold else CONTROL


@dataclass(frozen=True)
class Assignment:
    """Which model serves a request. `model_tag` None means: the production model (no experiment)."""

    arm: str
    model_tag: str | None
    experiment_id: int | None
    bucket: int | None
    traffic_percent: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class Assigner:
    """Assigns users of one dataset to arms from the stored experiment state; safe to call per request.

    This is what the serving ranker holds: `assigner.assign(user_id)` gives the arm and the model tag to
    serve, `assigner.tags()` the versions to keep loaded. The state is re-read at most every `refresh_s`
    seconds (the ranker sees a ramp, rollback or promotion within that time)."""

    def __init__(self, dataset: str, root: str | Path | None = None, refresh_s: float = 5.0):
        from longrec.rollout.state import ExperimentStore

        self.dataset = dataset
        self.refresh_s = refresh_s
        self._store = ExperimentStore(root)
        self._lock = threading.Lock()
        self._loaded_at = -float("inf")
        self._experiment = None

    def experiment(self):
        """The active experiment (cached for refresh_s), or None."""
        with self._lock:
            now = time.monotonic()
            if now - self._loaded_at >= self.refresh_s:
                self._experiment = self._store.active(self.dataset)
                self._loaded_at = now
            return self._experiment

    def assign(self, user_id) -> Assignment:
        """The arm and model tag for this user's request."""
        experiment = self.experiment()
        if experiment is None:
            return Assignment(CONTROL, None, None, None, 0.0)
        user_bucket = bucket(experiment.salt, user_id)
        arm = arm_of_bucket(user_bucket, experiment.traffic)
        tag = experiment.candidate_tag if arm == CANDIDATE else experiment.control_tag
        return Assignment(arm, tag, experiment.id, user_bucket, experiment.traffic)

    def tags(self) -> dict[str, str | None]:
        """{arm: model tag} of the active experiment ({} without one): the versions the ranker keeps loaded."""
        experiment = self.experiment()
        if experiment is None:
            return {}
        return {CONTROL: experiment.control_tag, CANDIDATE: experiment.candidate_tag}
