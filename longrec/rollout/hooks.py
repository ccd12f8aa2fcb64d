"""The rollout's side of the ranking service, in one object: which arm and model serve a user, and the
append-only log of every request. The BentoML ranker (serving/, longrec/serving/) holds one per process:

    hooks = RolloutHooks(dataset="ml-100k")              # state and log under $LONGREC_HOME/rollout
    assignment = hooks.assign(request.user_id)           # .arm, .model_tag (None: serve production)
    ... score with the model of assignment.model_tag ...
    request_id = hooks.record(assignment, user_id=..., items=[ids best first], scores=[...],
                              latency_ms=..., flags={...}, history_length=...)
    response += {"arm": assignment.arm, "experiment_id": assignment.experiment_id, "request_id": request_id}

`hooks.tags()` names the versions to keep loaded ({} when no experiment runs: production only)."""

from __future__ import annotations

import uuid
from pathlib import Path

from longrec.rollout.assignment import Assigner, Assignment
from longrec.rollout.requestlog import RequestLogger
from longrec.rollout.state import default_rollout_dir


class RolloutHooks:
    """Assignment and request logging for one dataset's ranker."""

    def __init__(
        self,
        dataset: str,
        state_dir: str | Path | None = None,
        request_log: str | Path | None = None,
        refresh_s: float = 5.0,
    ):
        state_dir = Path(state_dir) if state_dir else default_rollout_dir()
        self.assigner = Assigner(dataset, state_dir, refresh_s=refresh_s)
        self.log = RequestLogger(request_log or state_dir / "requests.db")

    def assign(self, user_id) -> Assignment:
        """The user's arm and the model tag to serve (None: the production model, no experiment)."""
        return self.assigner.assign(user_id)

    def tags(self) -> dict[str, str | None]:
        """{"control": tag, "candidate": tag} of the running experiment, {} without one."""
        return self.assigner.tags()

    def record(
        self,
        assignment: Assignment,
        *,
        user_id,
        items: list,
        scores: list,
        latency_ms: float,
        model_tag: str | None = None,
        flags: dict | None = None,
        history_length: int | None = None,
        recency_s: float | None = None,
        status: str = "ok",
        request_id: str | None = None,
    ) -> str:
        """Log one served (or failed: status="error") request; returns its request id (for the response)."""
        request_id = request_id or uuid.uuid4().hex
        self.log.log(
            request_id=request_id, user_id=user_id, arm=assignment.arm,
            model_tag=model_tag or assignment.model_tag, items=items, scores=scores, latency_ms=latency_ms,
            experiment_id=assignment.experiment_id, status=status, flags=flags, history_length=history_length,
            recency_s=recency_s,
        )  # fmt: skip
        return request_id

    def close(self) -> None:
        self.log.close()
