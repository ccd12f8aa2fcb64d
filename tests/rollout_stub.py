"""A tiny stand-in for the ranking service, for the rollout tests only. It speaks the BentoML ranker's
`POST /rank` shapes (longrec/serving/schemas.py: extra request fields refused, scored-item objects back)
plus the three response fields the rollout adds (arm, experiment_id, request_id), and does the ranker's
side of the rollout as the real service must (Assigner for the arm, RequestLogger for every request). It
scores with two fixed functions instead of models: "popularity" (training-period item counts: a real,
weak recommender) and "random". The real service is the BentoML ranker in serving/ and longrec/serving/."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from longrec.rollout.hooks import RolloutHooks


class StubRanker:
    """Scores candidates with the scorer named for the arm's model tag; logs like the real ranker."""

    def __init__(self, dataset, *, dataset_key, state_dir, log_path, production_tag, scorers: dict,
                 max_history_length=50, truncate_history: int | None = None, seed=0):  # fmt: skip
        events = dataset.events.sort_values(["user_id", "timestamp"], kind="stable")
        self.user_times = {u: g.to_numpy() for u, g in events.groupby("user_id")["timestamp"]}
        cutoff = np.quantile(events["timestamp"], 0.8)
        self.popularity = np.bincount(
            events.loc[events["timestamp"] < cutoff, "item_id"], minlength=dataset.n_items
        )
        self.hooks = RolloutHooks(dataset_key, state_dir, log_path, refresh_s=0)
        self.production_tag = production_tag
        self.scorers = scorers  # model tag -> "popularity" | "random"
        self.max_history_length = max_history_length
        self.truncate_history = truncate_history  # serve at most this many history items (a feature bug)
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()

    REQUEST_FIELDS = {"user_id", "candidate_items", "top_k", "timestamp", "history"}

    def rank(self, body: dict) -> tuple[int, dict]:
        """(HTTP status, response body)."""
        extra = set(body) - self.REQUEST_FIELDS
        if extra:  # as the real service's pydantic model (extra="forbid")
            return 400, {"error": f"unexpected fields {sorted(extra)}"}
        started = time.perf_counter()
        assignment = self.hooks.assign(body["user_id"])
        tag = assignment.model_tag or self.production_tag
        candidates = np.asarray(body["candidate_items"], dtype=np.int64)
        times = self.user_times.get(int(body["user_id"]), np.array([], dtype=np.int64))
        now = body.get("timestamp", int(time.time()))
        seen = int(np.searchsorted(times, now, side="left"))
        history_length = min(seen, self.max_history_length, self.truncate_history or self.max_history_length)
        recency = float(now - times[seen - 1]) if seen else None
        with self.lock:
            if self.scorers[tag] == "popularity":
                scores = np.log1p(self.popularity[candidates]) + 1e-3 * self.rng.random(len(candidates))
            else:
                scores = self.rng.random(len(candidates))
        order = np.argsort(-scores)[: body.get("top_k") or len(candidates)]
        response = {
            "items": [{"item_id": int(candidates[i]), "score": float(scores[i]), "logit": float(scores[i])} for i in order],
            "model_tag": tag, "model_name": self.scorers[tag], "history_length": history_length,
            "unknown_user": seen == 0, "feature_fallback": False, "degraded_memory": False,
        }  # fmt: skip
        request_id = self.hooks.record(
            assignment, user_id=body["user_id"], model_tag=tag, items=[item["item_id"] for item in response["items"]],
            scores=[item["score"] for item in response["items"]], latency_ms=(time.perf_counter() - started) * 1000,
            flags={"unknown_user": seen == 0}, history_length=history_length, recency_s=recency,
        )  # fmt: skip
        response.update(arm=assignment.arm, experiment_id=assignment.experiment_id, request_id=request_id)
        return 200, response


def serve(ranker: StubRanker) -> tuple[ThreadingHTTPServer, str]:
    """Serve POST /rank on a free local port in a daemon thread; returns the server and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # headers and body go out as two writes: without this, Nagle + delayed ACK add 40 ms to each
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, response = (404, {}) if self.path != "/rank" else ranker.rank(body)
            payload = json.dumps(response).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
