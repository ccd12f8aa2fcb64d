"""Durable experiment state: one SQLite database (WAL) holding every A/B experiment and an append-only audit
log of each decision, its inputs and who made it. Every change of state and its audit row commit in one
transaction, so a crash leaves either the old state or the new one, never half of each."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SCHEDULE = (5.0, 25.0, 50.0, 100.0)

# Statuses. "promoting" is the one in-between state: the decision is recorded, the registry pointer may not
# have moved yet; `recover()` in longrec.rollout.decide finishes or undoes it.
RUNNING, PROMOTING, PROMOTED, ROLLED_BACK = "running", "promoting", "promoted", "rolled_back"
ACTIVE_STATUSES = (RUNNING, PROMOTING)


class RolloutError(ValueError):
    """An invalid rollout command or state; the message says what and nothing was changed."""


def default_rollout_dir() -> Path:
    """$LONGREC_ROLLOUT_DIR, else $LONGREC_HOME/rollout, else ./.longrec/rollout."""
    if os.environ.get("LONGREC_ROLLOUT_DIR"):
        return Path(os.environ["LONGREC_ROLLOUT_DIR"])
    return Path(os.environ.get("LONGREC_HOME", ".longrec")) / "rollout"


@dataclass(frozen=True)
class Guardrails:
    """Limits on the candidate arm; breaking one rolls the candidate back."""

    max_error_rate: float = 0.02  # share of candidate requests that failed
    max_p99_latency_ms: float = 500.0  # candidate p99 latency
    # Candidate CTR / control CTR below this, with the ratio's upper 95 % bound below it too, rolls back.
    min_ctr_ratio: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise RolloutError(f"max error rate must lie in [0, 1], got {self.max_error_rate}")
        if self.max_p99_latency_ms <= 0:
            raise RolloutError(f"max p99 latency must be positive, got {self.max_p99_latency_ms}")
        if not 0 <= self.min_ctr_ratio <= 1:
            raise RolloutError(f"min CTR ratio must lie in [0, 1], got {self.min_ctr_ratio}")


@dataclass(frozen=True)
class StatsConfig:
    """The sequential test and the sample sizes each decision needs."""

    alpha: float = 0.05  # always-valid false-positive rate of the mSPRT
    # Prior s.d. of the CTR difference in the mSPRT's normal mixture: the size of effect it is tuned to find.
    mixture_sd: float = 0.05
    srm_alpha: float = 0.001  # SRM fires below this chi-square p-value (a strict level: it blocks decisions)
    min_impressions_per_arm: int = 200  # per arm within the current stage before a ramp or promotion

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.srm_alpha < 1:
            raise RolloutError("alpha and srm_alpha must lie in (0, 1)")
        if self.mixture_sd <= 0:
            raise RolloutError(f"mixture_sd must be positive, got {self.mixture_sd}")
        if self.min_impressions_per_arm < 1:
            raise RolloutError("min_impressions_per_arm must be at least 1")


@dataclass(frozen=True)
class Experiment:
    """One A/B experiment of a candidate model against the production (control) model of a dataset."""

    id: int
    dataset: str
    control_tag: str | None
    candidate_tag: str
    salt: str
    traffic: float  # percent of buckets served by the candidate
    schedule: tuple[float, ...]
    guardrails: Guardrails
    test: StatsConfig
    status: str
    stage_started_at: float  # when the traffic share last changed: SRM is checked on this stage only
    created_at: float
    updated_at: float
    pending: dict | None = field(default=None)  # the promote being carried out (status "promoting")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def next_traffic(self) -> float | None:
        """The schedule's next share above the current one, or None at the end."""
        later = [share for share in self.schedule if share > self.traffic]
        return min(later) if later else None

    def summary(self) -> dict:
        """A JSON-able view for status output and reports."""
        return {
            "id": self.id,
            "dataset": self.dataset,
            "control": self.control_tag,
            "candidate": self.candidate_tag,
            "traffic_percent": self.traffic,
            "schedule": list(self.schedule),
            "status": self.status,
            "salt": self.salt,
            "guardrails": self.guardrails.__dict__,
            "test": self.test.__dict__,
            "created_at": _iso(self.created_at),
            "stage_started_at": _iso(self.stage_started_at),
        }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def validate_traffic(traffic: float) -> float:
    """A traffic share in percent, checked to lie in [0, 100]."""
    traffic = float(traffic)
    if not 0 <= traffic <= 100:
        raise RolloutError(f"traffic must be a percentage in [0, 100], got {traffic:g}")
    return traffic


def validate_schedule(schedule) -> tuple[float, ...]:
    """Ramp steps in percent: strictly increasing, inside (0, 100], ending at 100."""
    steps = tuple(validate_traffic(share) for share in schedule)
    if not steps or any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[0] <= 0:
        raise RolloutError(f"schedule must be strictly increasing percentages above 0, got {list(steps)}")
    if steps[-1] != 100:
        raise RolloutError(f"schedule must end at 100 %, got {list(steps)}")
    return steps


_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    control_tag TEXT,
    candidate_tag TEXT NOT NULL,
    salt TEXT NOT NULL,
    traffic REAL NOT NULL,
    schedule TEXT NOT NULL,
    guardrails TEXT NOT NULL,
    test TEXT NOT NULL,
    status TEXT NOT NULL,
    pending TEXT,
    stage_started_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    traffic_before REAL,
    traffic_after REAL,
    status_after TEXT,
    reason TEXT NOT NULL,
    inputs TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with full fsync on commit; transactions are explicit (BEGIN IMMEDIATE)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


class ExperimentStore:
    """Experiments and their audit log in `root/rollout.db`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_rollout_dir()
        self.path = self.root / "rollout.db"
        self.db = connect(self.path)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- reads -------------------------------------------------------------------------------------------
    def get(self, experiment_id: int) -> Experiment:
        row = self.db.execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        if row is None:
            raise RolloutError(f"no experiment with id {experiment_id}")
        return _experiment(row)

    def active(self, dataset: str) -> Experiment | None:
        """The running (or promoting) experiment of a dataset, if any."""
        row = self.db.execute(
            "SELECT * FROM experiments WHERE dataset = ? AND status IN (?, ?) ORDER BY id DESC LIMIT 1",
            (dataset, *ACTIVE_STATUSES),
        ).fetchone()
        return _experiment(row) if row else None

    def latest(self, dataset: str) -> Experiment | None:
        """The most recent experiment of a dataset, whatever its status."""
        row = self.db.execute(
            "SELECT * FROM experiments WHERE dataset = ? ORDER BY id DESC LIMIT 1", (dataset,)
        ).fetchone()
        return _experiment(row) if row else None

    def in_status(self, status: str) -> list[Experiment]:
        rows = self.db.execute("SELECT * FROM experiments WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [_experiment(row) for row in rows]

    def audit(self, experiment_id: int) -> list[dict]:
        """The experiment's audit rows, oldest first, inputs decoded."""
        rows = self.db.execute(
            "SELECT * FROM audit WHERE experiment_id = ? ORDER BY seq", (experiment_id,)
        ).fetchall()
        return [{**dict(row), "inputs": json.loads(row["inputs"]), "time": _iso(row["ts"])} for row in rows]

    # -- writes: each is one transaction holding the change and its audit row ----------------------------
    def create(
        self,
        *,
        dataset: str,
        control_tag: str | None,
        candidate_tag: str,
        traffic: float,
        schedule=DEFAULT_SCHEDULE,
        guardrails: Guardrails | None = None,
        test: StatsConfig | None = None,
        salt: str | None = None,
        actor: str,
        reason: str = "experiment started",
        inputs: dict | None = None,
    ) -> Experiment:
        """Start an experiment; refuses a second active one on the same dataset."""
        traffic = validate_traffic(traffic)
        schedule = validate_schedule(schedule)
        if traffic >= 100:
            raise RolloutError(
                "an experiment cannot start at 100 %: that is a promotion (`longrec rollout promote`)"
            )
        guardrails, test = guardrails or Guardrails(), test or StatsConfig()
        now = time.time()
        salt = salt or os.urandom(8).hex()
        with self._transaction():
            if self.active(dataset) is not None:
                raise RolloutError(
                    f"experiment {self.active(dataset).id} is already running on {dataset}; "
                    "promote or roll it back first"
                )
            cursor = self.db.execute(
                "INSERT INTO experiments (dataset, control_tag, candidate_tag, salt, traffic, schedule, guardrails,"
                " test, status, pending, stage_started_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (
                    dataset,
                    control_tag,
                    candidate_tag,
                    salt,
                    traffic,
                    json.dumps(schedule),
                    json.dumps(guardrails.__dict__),
                    json.dumps(test.__dict__),
                    RUNNING,
                    now,
                    now,
                    now,
                ),
            )
            experiment_id = cursor.lastrowid
            self._append_audit(
                experiment_id, actor, "start", None, traffic, RUNNING, reason,
                {"control": control_tag, "candidate": candidate_tag, "schedule": schedule, **(inputs or {})},
            )  # fmt: skip
        return self.get(experiment_id)

    def transition(
        self,
        experiment: Experiment,
        *,
        action: str,
        actor: str,
        reason: str,
        inputs: dict | None = None,
        traffic: float | None = None,
        status: str | None = None,
        pending: dict | None | type(...) = ...,
    ) -> Experiment:
        """Change traffic/status/pending of an experiment and append the audit row, atomically.

        Fails (changing nothing) if the stored experiment changed since `experiment` was read, so two
        concurrent `step`s cannot both act on the same state."""
        now = time.time()
        new_traffic = experiment.traffic if traffic is None else validate_traffic(traffic)
        new_status = status or experiment.status
        new_pending = experiment.pending if pending is ... else pending
        stage_started = now if new_traffic != experiment.traffic else experiment.stage_started_at
        with self._transaction():
            cursor = self.db.execute(
                "UPDATE experiments SET traffic = ?, status = ?, pending = ?, stage_started_at = ?, updated_at = ?"
                " WHERE id = ? AND updated_at = ? AND status = ?",
                (
                    new_traffic,
                    new_status,
                    json.dumps(new_pending) if new_pending is not None else None,
                    stage_started,
                    now,
                    experiment.id,
                    experiment.updated_at,
                    experiment.status,
                ),
            )
            if cursor.rowcount != 1:
                raise RolloutError(f"experiment {experiment.id} changed while this command ran; run it again")
            self._append_audit(
                experiment.id,
                actor,
                action,
                experiment.traffic,
                new_traffic,
                new_status,
                reason,
                inputs or {},
            )
        return self.get(experiment.id)

    def note(self, experiment: Experiment, *, action: str, actor: str, reason: str, inputs: dict) -> None:
        """Append an audit row that changes no state (e.g. a hold and the analysis behind it)."""
        with self._transaction():
            self._append_audit(
                experiment.id, actor, action, experiment.traffic, experiment.traffic, experiment.status, reason,
                inputs,
            )  # fmt: skip

    def _append_audit(self, experiment_id, actor, action, before, after, status, reason, inputs) -> None:
        self.db.execute(
            "INSERT INTO audit (experiment_id, ts, actor, action, traffic_before, traffic_after, status_after,"
            " reason, inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                experiment_id,
                time.time(),
                actor,
                action,
                before,
                after,
                status,
                reason,
                json.dumps(inputs, default=str),
            ),
        )

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def _experiment(row: sqlite3.Row) -> Experiment:
    return Experiment(
        id=row["id"],
        dataset=row["dataset"],
        control_tag=row["control_tag"],
        candidate_tag=row["candidate_tag"],
        salt=row["salt"],
        traffic=row["traffic"],
        schedule=tuple(json.loads(row["schedule"])),
        guardrails=Guardrails(**json.loads(row["guardrails"])),
        test=StatsConfig(**json.loads(row["test"])),
        status=row["status"],
        stage_started_at=row["stage_started_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        pending=json.loads(row["pending"]) if row["pending"] else None,
    )


def default_actor() -> str:
    """Who is acting: $LONGREC_ACTOR, else user@host."""
    if os.environ.get("LONGREC_ACTOR"):
        return os.environ["LONGREC_ACTOR"]
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"{user}@{os.uname().nodename}"
