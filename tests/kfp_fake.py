"""A stand-in Kubeflow Pipelines API server for submit tests: a real HTTP server on 127.0.0.1 (in a thread)
that records every request kfp.Client sends and answers the v2beta1 endpoints a submission uses."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None
    headers: dict[str, str]


@dataclass
class FakeKFP:
    """Records calls; ``experiments`` are the ones that already exist; ``fail_runs`` answers runs with 500."""

    experiments: list[dict] = field(default_factory=list)
    fail_runs: bool = False
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet test output
                pass

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = Call(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None,
                            dict(self.headers))  # fmt: skip
                fake.calls.append(call)
                status, answer = fake.answer(call)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, call: Call) -> tuple[int, dict]:
        route = (call.method, call.path)
        if route == ("GET", "/apis/v2beta1/healthz"):  # asked before a run (multi-user or not)
            return 200, {"multi_user": False}
        if route == ("GET", "/apis/v2beta1/experiments"):
            wanted = json.loads(call.query["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if route == ("POST", "/apis/v2beta1/experiments"):
            experiment = {**call.body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if route == ("POST", "/apis/v2beta1/runs"):
            if self.fail_runs:
                return 500, {"error": "pipeline spec rejected", "code": 13}
            return 200, {**call.body, "run_id": "run-123", "state": "PENDING"}
        if route == ("POST", "/apis/v2beta1/recurringruns"):
            return 200, {**call.body, "recurring_run_id": "recurring-7", "status": "ENABLED"}
        return 404, {"error": f"no route {call.method} {call.path}", "code": 5}

    def posted(self, path: str) -> list[dict]:
        return [c.body for c in self.calls if c.method == "POST" and c.path == path]

    def __enter__(self) -> FakeKFP:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
