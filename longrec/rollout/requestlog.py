"""The append-only request log: every ranking request (id, time, user, arm, items, scores, latency, flags) and
every click fed back for it, in SQLite (WAL) so it survives a service restart and several writers.

The serving ranker writes requests (`RequestLogger.log`); whoever observes the user writes feedback (here
the traffic replay, `log_feedback`). Both are keyed by request id and written with INSERT OR IGNORE, so a
request logged by the service and again by the replay's client-side fallback is stored once (first wins)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd

from longrec.rollout.state import connect, default_rollout_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    experiment_id INTEGER,
    ts REAL NOT NULL,
    user_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    model_tag TEXT,
    items TEXT NOT NULL,
    scores TEXT NOT NULL,
    latency_ms REAL,
    status TEXT NOT NULL,
    flags TEXT NOT NULL,
    history_length INTEGER,
    recency_s REAL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_experiment ON requests (experiment_id, ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    target_item TEXT,
    position INTEGER NOT NULL,
    clicked INTEGER NOT NULL,
    top_k INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS requests_no_update BEFORE UPDATE ON requests
BEGIN SELECT RAISE(ABORT, 'the request log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS requests_no_delete BEFORE DELETE ON requests
BEGIN SELECT RAISE(ABORT, 'the request log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'the request log is append-only'); END;
"""


def default_request_log_path() -> Path:
    return default_rollout_dir() / "requests.db"


class RequestLogger:
    """Appends to the request log; one instance per process, safe across threads.

    `synchronous=NORMAL` in WAL mode: a committed row survives a process crash; only an OS crash can lose
    the last few commits, which costs a few logged requests, never consistency."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_request_log_path()
        self.db = connect(self.path)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def log(
        self,
        *,
        request_id: str,
        user_id,
        arm: str,
        model_tag: str | None,
        items: list,
        scores: list,
        latency_ms: float | None,
        experiment_id: int | None = None,
        status: str = "ok",
        flags: dict | None = None,
        history_length: int | None = None,
        recency_s: float | None = None,
        ts: float | None = None,
        source: str = "service",
    ) -> None:
        """Append one served (or failed: status="error") request. A repeated request id is ignored."""
        row = (
            str(request_id),
            experiment_id,
            time.time() if ts is None else ts,
            str(user_id),
            arm,
            model_tag,
            json.dumps([_plain(item) for item in items]),
            json.dumps([float(score) for score in scores]),
            latency_ms,
            status,
            json.dumps(flags or {}, default=str),
            history_length,
            recency_s,
            source,
        )
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row
            )

    def log_feedback(
        self,
        *,
        request_id: str,
        target_item,
        position: int,
        clicked: bool,
        top_k: int,
        ts: float | None = None,
    ) -> None:
        """Append what the user did with a response: the true item's 1-based position in the top-k (0 when
        not shown) and whether they clicked it."""
        row = (
            str(request_id),
            time.time() if ts is None else ts,
            str(target_item),
            int(position),
            int(clicked),
            top_k,
        )
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?, ?)", row)

    def close(self) -> None:
        self.db.close()


def _plain(value):
    # numpy ints and the like become JSON-able Python values
    return value.item() if hasattr(value, "item") else value


def read_requests(
    path: str | Path, experiment_id: int | None = None, since: float | None = None
) -> pd.DataFrame:
    """Requests joined with their feedback, oldest first; one row per request.

    Columns: request_id, experiment_id, ts, user_id, arm, model_tag, items, scores (lists), latency_ms, status,
    flags (dict), history_length, recency_s, source, position, clicked, top_k (NaN without feedback)."""
    path = Path(path)
    columns = [
        "request_id", "experiment_id", "ts", "user_id", "arm", "model_tag", "items", "scores", "latency_ms",
        "status", "flags", "history_length", "recency_s", "source", "position", "clicked", "top_k",
    ]  # fmt: skip
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    query = (
        "SELECT r.*, f.position, f.clicked, f.top_k FROM requests r LEFT JOIN feedback f USING (request_id)"
        " WHERE 1 = 1"
    )
    params: list = []
    if experiment_id is not None:
        query += " AND r.experiment_id = ?"
        params.append(experiment_id)
    if since is not None:
        query += " AND r.ts >= ?"
        params.append(since)
    query += " ORDER BY r.ts, r.rowid"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        frame = pd.read_sql_query(query, connection, params=params)
    finally:
        connection.close()
    for column in ("items", "scores", "flags"):
        frame[column] = frame[column].map(json.loads)
    return frame[columns]
