"""Traffic replay: a bounded load generator that replays a dataset's test-period interactions as ranking
requests against a running ranker, and logs what a user would have done with each response.

Each interaction becomes one request: the user, candidates = the true next item + sampled negatives (items
the user never interacted with), top_k. The user clicks when the true item is shown in the top-k (or, with
the position-biased click model, with probability 1/log2(1 + position)). This is how online metrics are
produced without live users.

HTTP contract: the BentoML ranker's `POST /rank` (serving/service.py, longrec/serving/schemas.py; the
tests use a stub that speaks the same shapes):

    request:  {"user_id": int, "candidate_items": [int, ...], "top_k": int, "timestamp": int}
              (no other fields: the service forbids extras; `timestamp` is the replayed interaction's time,
              so time-gap features are computed in replayed time)
    response: {"items": [{"item_id": int, "score": float, "logit": float}, ...] best first,
               "model_tag": str, "history_length": int,
               "unknown_user": bool, "feature_fallback": bool, "degraded_memory": bool,
               # what the rollout adds to the service's response (absent fields are tolerated):
               "arm": "control" | "candidate", "experiment_id": int | null, "request_id": str}

A response of plain ids ({"items": [ids], "scores": [...]}) and a "flags" dict are accepted as well.
Without "arm" a request is logged as arm "unknown" and counts for no arm. Without "request_id" the replay
makes one. The service is expected to log each request itself (longrec.rollout.requestlog.RequestLogger)
under the request id it returns; the replay logs the same id again from the client side (ignored when the
service logged it first), so an uninstrumented service still yields a complete log, and it logs the click."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from longrec.data.datasets import RecDataset
from longrec.rollout.requestlog import RequestLogger

logger = logging.getLogger(__name__)

CLICK_MODELS = ("shown", "position")
# Boolean flags of the ranker's response, kept in the log's flags.
SERVICE_FLAGS = ("unknown_user", "feature_fallback", "degraded_memory")


def parse_items(payload: dict) -> tuple[list[int], list[float]]:
    """Ranked item ids and scores from a response: scored-item objects or plain ids plus "scores"."""
    items = payload["items"]
    if items and isinstance(items[0], dict):
        return [int(item["item_id"]) for item in items], [float(item.get("score", np.nan)) for item in items]
    return [int(item) for item in items], [float(score) for score in payload.get("scores", [])]


@dataclass(frozen=True)
class ReplayRequest:
    """One replayed interaction."""

    user_id: int
    target_item: int
    candidate_items: list[int]
    as_of: float  # the interaction's timestamp
    history_length: int  # of the history a model with max length L sees (for the drift reference)
    recency_s: float | None  # seconds since the user's previous interaction


def replay_requests(
    dataset: RecDataset,
    *,
    n_negatives: int = 49,
    max_history_length: int = 50,
    period: str = "test",
    seed: int = 0,
) -> list[ReplayRequest]:
    """Every interaction of a period of the 80/10/10 global time split (the training pipeline's), in time
    order, with its sampled candidates. `period` is "test" (replayed traffic) or "valid" (the reference the
    served traffic is compared with for drift: the most recent period the model was selected on)."""
    from longrec.data.samples import SampleConfig, assign_splits, sample_negatives, sort_events

    if n_negatives < 1:
        raise ValueError(f"n_negatives must be at least 1, got {n_negatives}")
    events = sort_events(dataset.events, max_history_length)
    split = assign_splits(events, SampleConfig(max_history_length=max_history_length, split="time"))
    index = np.flatnonzero(split == {"train": 0, "valid": 1, "test": 2}[period])
    index = index[np.argsort(events.timestamp[index], kind="stable")]
    interacted = np.unique(events.user_id * dataset.n_items + events.item_id)
    negatives = sample_negatives(
        events.user_id[index], n_negatives, dataset.n_items, interacted, np.random.default_rng(seed)
    )
    has_history = events.history_end[index] > events.history_start[index]
    previous = events.timestamp[np.maximum(events.history_end[index] - 1, 0)]
    recency = np.where(has_history, events.timestamp[index] - previous, np.nan)
    rng = np.random.default_rng(seed + 1)
    requests = []
    for row, position in enumerate(index):
        candidates = np.r_[events.item_id[position], negatives[row]]
        rng.shuffle(candidates)  # the true item's slot must not leak its identity to the ranker
        requests.append(
            ReplayRequest(
                user_id=int(events.user_id[position]),
                target_item=int(events.item_id[position]),
                candidate_items=candidates.tolist(),
                as_of=float(events.timestamp[position]),
                history_length=int(events.history_end[position] - events.history_start[position]),
                recency_s=None if np.isnan(recency[row]) else float(recency[row]),
            )
        )
    return requests


@dataclass
class ReplaySummary:
    """What one replay did."""

    requests: int = 0
    errors: int = 0
    clicks: int = 0
    by_arm: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def click_position(ranked_items: list, target_item: int, top_k: int) -> int:
    """1-based position of the true item in the shown top-k, 0 when it is not shown."""
    shown = list(ranked_items)[:top_k]
    return shown.index(target_item) + 1 if target_item in shown else 0


def replay(
    base_url: str,
    requests: list[ReplayRequest],
    log: RequestLogger,
    *,
    top_k: int = 10,
    click_model: str = "shown",
    experiment_id: int | None = None,
    max_requests: int | None = None,
    max_seconds: float | None = None,
    timeout_s: float = 10.0,
    seed: int = 0,
    progress: bool = True,
    client=None,
) -> ReplaySummary:
    """Send `requests` (at most `max_requests`, for at most `max_seconds`) to POST {base_url}/rank one after
    another, and log every response and click. `experiment_id` labels rows when the service does not say."""
    import httpx
    from tqdm import tqdm

    if click_model not in CLICK_MODELS:
        raise ValueError(f"click_model must be one of {CLICK_MODELS}, got {click_model!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    rng = np.random.default_rng(seed)
    batch = requests[: max_requests if max_requests is not None else len(requests)]
    summary = ReplaySummary()
    started = time.monotonic()
    own_client = client is None
    client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
    try:
        for request in tqdm(batch, desc="replay", unit="req", disable=not progress, mininterval=1.0):
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
            _replay_one(client, request, log, top_k, click_model, experiment_id, rng, summary)
    finally:
        if own_client:
            client.close()
    summary.seconds = time.monotonic() - started
    return summary


def _replay_one(client, request: ReplayRequest, log, top_k, click_model, experiment_id, rng, summary) -> None:
    import httpx

    body = {
        "user_id": request.user_id,
        "candidate_items": request.candidate_items,
        "top_k": top_k,
        "timestamp": int(request.as_of),
    }
    sent = time.time()
    started = time.perf_counter()
    payload, failure = None, None
    try:
        response = client.post("/rank", json=body)
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200 or not isinstance(payload, dict) or "items" not in payload:
            failure = f"HTTP {response.status_code}"
    except httpx.HTTPError as error:
        latency_ms = (time.perf_counter() - started) * 1000
        failure = type(error).__name__
    payload = payload if isinstance(payload, dict) else {}
    request_id = str(payload.get("request_id") or uuid.uuid4().hex)
    arm = payload.get("arm") or "unknown"
    summary.requests += 1
    by_arm = summary.by_arm.setdefault(arm, {"requests": 0, "clicks": 0, "errors": 0})
    by_arm["requests"] += 1
    flags = dict(payload.get("flags") or {})
    flags.update({name: bool(payload[name]) for name in SERVICE_FLAGS if name in payload})
    common = dict(
        request_id=request_id, user_id=request.user_id, arm=arm, model_tag=payload.get("model_tag"),
        latency_ms=latency_ms, experiment_id=payload.get("experiment_id", experiment_id),
        # what the service says its model saw; never the dataset's own value, which would hide a shift
        history_length=payload.get("history_length"), recency_s=payload.get("recency_s"), ts=sent,
        source="replay",
    )  # fmt: skip
    if failure:
        summary.errors += 1
        by_arm["errors"] += 1
        log.log(items=[], scores=[], status="error", flags={**flags, "error": failure}, **common)
        return
    items, scores = parse_items(payload)
    log.log(items=items, scores=scores, flags=flags, **common)
    position = click_position(items, request.target_item, top_k)
    if click_model == "shown":
        clicked = position > 0
    else:  # examination probability falls with the position (DCG's discount)
        clicked = position > 0 and rng.random() < 1.0 / np.log2(position + 1)
    summary.clicks += int(clicked)
    by_arm["clicks"] += int(clicked)
    log.log_feedback(
        request_id=request_id,
        target_item=request.target_item,
        position=position,
        clicked=clicked,
        top_k=top_k,
    )
