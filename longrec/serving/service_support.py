"""The pieces of the BentoML services that are plain Python: building a ranker from a config, its
Prometheus metrics, and the ASGI guard that keeps non-JSON and oversized bodies away from the API.

``serving/service.py`` stays a thin declaration of the service graph over these.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from longrec.serving.config import ServingConfig

__all__ = [
    "BodyGuard",
    "MAX_BODY_BYTES",
    "build_ranker",
    "flush_gc_pauses",
    "one_error_object",
    "quiet_threads",
    "send_json_error",
    "serving_metrics",
    "set_ranker_threads",
    "usable_cpus",
    "watch_gc_pauses",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1,000 candidates and a 10,000-event override fit in well under it

_METRICS: dict | None = None
_SHARD_METRICS: dict | None = None
_GC_WATCHED = False
_GC_PAUSES: deque[tuple[int, float]] = deque(maxlen=100_000)  # (generation, seconds), until flushed


def usable_cpus(cpu_max: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU limit (a pod's `limits.cpu`,
    which the affinity does not show: a 4-CPU pod on a 64-core node sees 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def quiet_threads(threads: int = 1) -> int:
    """Set torch's intra-op threads (0: one per usable CPU) with no OpenMP spinning, so idle threads give
    their cores back to the shard services and the server's event loop. Returns the count set."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    threads = threads if threads > 0 else usable_cpus()
    torch.set_num_threads(threads)
    return threads


def watch_gc_pauses() -> None:
    """Time every garbage-collector pass of this process (once per process); ``flush_gc_pauses`` puts them
    in ``longrec_gc_pause_seconds``. The pauses are invisible in the request stages yet land inside some
    requests.

    The callback only appends to a deque: a collection can start inside a metric update, while that thread
    holds prometheus' multiprocess lock (not reentrant), so observing a metric from the callback would
    deadlock the thread. It did: two threads observing metrics hung within seconds."""
    import gc

    global _GC_WATCHED
    if _GC_WATCHED:
        return
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            _GC_PAUSES.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    _GC_WATCHED = True


def flush_gc_pauses() -> None:
    """Observe the garbage-collector passes timed since the last flush (the ranker calls it per request)."""
    histogram = serving_metrics()["gc_pause"]
    while True:
        try:
            generation, seconds = _GC_PAUSES.popleft()
        except IndexError:
            return
        histogram.labels(generation=str(generation)).observe(seconds)


def serving_metrics() -> dict:
    """The ranker's Prometheus metrics, created once per process (after BentoML set the multiprocess dir)."""
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge, Histogram

        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        _METRICS = {
            "requests": Counter("longrec_rank_requests", "Ranked requests.", ["arm", "model"]),
            "latency": Histogram(
                "longrec_rank_latency_seconds", "Time to rank one request.", ["arm"], buckets=buckets
            ),
            "stage_latency": Histogram(
                "longrec_rank_stage_seconds",
                "Time in one stage of ranking a request: features (online store read and batch"
                " assembly), score (the model, memory reads included) or respond.",
                ["stage"],
                buckets=buckets,
            ),
            "errors": Counter("longrec_rank_errors", "Rejected or failed rank requests.", ["kind"]),
            "flags": Counter("longrec_rank_flags", "Responses carrying a flag.", ["flag"]),
            "shard_latency": Histogram(
                "longrec_memory_shard_latency_seconds",
                "One gather from a memory shard.",
                ["shard"],
                buckets=buckets,
            ),
            "shard_failures": Counter("longrec_memory_shard_failures", "Failed shard gathers.", ["shard"]),
            # multiprocess_mode: BentoML collects metrics across processes; one ranker worker sets it.
            "threads": Gauge(
                "longrec_ranker_torch_threads", "The ranker's intra-op threads.", multiprocess_mode="max"
            ),
            "attention_threads": Gauge(
                "longrec_ranker_attention_threads",
                "The fused attention kernel's threads (DIN, LMN, IMN; longrec.kernels.din_attention).",
                multiprocess_mode="max",
            ),
            "thread_choice_attempts": Gauge(
                "longrec_ranker_thread_choice_attempts",
                "Measurements the start-up thread choice took (more than 1: other processes were busy).",
                multiprocess_mode="max",
            ),
            "thread_choice_other_cpus": Gauge(
                "longrec_ranker_thread_choice_other_cpus",
                "CPUs other processes kept busy during the measurement that chose the threads.",
                multiprocess_mode="max",
            ),
            "gc_pause": Histogram(
                "longrec_gc_pause_seconds",
                "One pass of Python's garbage collector in the ranker process (it stops every thread"
                " that needs the interpreter), by generation.",
                ["generation"],
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
            ),
            "fused_attention": Gauge(
                "longrec_ranker_fused_attention",
                "1 when the arm's attention runs the fused CPU kernel (longrec.kernels.din_attention).",
                ["arm"],
                multiprocess_mode="max",
            ),
        }
    return _METRICS


def shard_metrics() -> dict:
    """A memory shard's own Prometheus metrics (its raw route is served ahead of BentoML's request
    metrics), created once per process, after BentoML set the multiprocess dir."""
    global _SHARD_METRICS
    if _SHARD_METRICS is None:
        from prometheus_client import Histogram

        _SHARD_METRICS = {
            "gather": Histogram(
                "longrec_memory_shard_gather_seconds",
                "Time a memory shard took to answer one raw-route gather, inside the shard process, by"
                " shard and HTTP status.",
                ["shard", "status"],
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            ),
        }
    return _SHARD_METRICS


def set_ranker_threads(ranker, config: ServingConfig, with_metrics: bool = True) -> int:
    """The ranker's threads after warm-up. torch's intra-op threads: the config's count, or with 0 (the
    default) chosen by ``Ranker.choose_threads`` on a synthetic full-length request, together with the
    fused attention kernel's threads (``attention_threads``: 0 = chosen too; with ``torch_threads`` set and
    ``attention_threads`` 0, the same count). The ranker is then warmed at that count. Exported as
    ``longrec_ranker_torch_threads`` and ``longrec_ranker_attention_threads``; returns torch's count."""
    import torch

    from longrec.kernels.din_attention import kernel_threads, set_kernel_threads

    if config.torch_threads > 0:
        threads = quiet_threads(config.torch_threads)
        set_kernel_threads(config.attention_threads or threads)
    else:
        ranker.choose_threads(usable_cpus(), attention_threads=config.attention_threads or None)
        threads = torch.get_num_threads()
    # A compiled graph is specialised to the thread count it was compiled under, and warm_up ran under
    # torch's default (every core of the node): warm again, so no request pays a compile at this count.
    ranker.warm_up()
    if with_metrics:
        serving_metrics()["threads"].set(threads)
        serving_metrics()["attention_threads"].set(kernel_threads())
        if ranker.thread_choice is not None:
            serving_metrics()["thread_choice_attempts"].set(ranker.thread_choice["attempts"])
            serving_metrics()["thread_choice_other_cpus"].set(ranker.thread_choice["other_cpus"])
    return threads


def build_ranker(
    config: ServingConfig,
    model_dir: str | Path,
    memory_dir: str | Path | None = None,
    shard_clients: Sequence[Callable] = (),
    with_metrics: bool = True,
    shard_dirs: Sequence[str | Path] = (),
    candidate_dir: str | Path | None = None,
):
    """A ``Ranker`` for ``config``: the model checked against its manifest, the memory index (manifest and
    keys) from ``memory_dir``, gathers through ``shard_clients``, features from the configured Feast repo."""
    from longrec.serving.features import OnlineFeatures
    from longrec.serving.memory import RemoteShardedMemory, check_shard_files, load_memory_index
    from longrec.serving.ranker import ModelFileError, ModelScorer, Ranker, RankerMetrics

    scorer = ModelScorer(model_dir, config.model_tag, config.model_files)
    metrics = RankerMetrics()
    on_shard_call = None
    if with_metrics:
        registry = serving_metrics()

        def observe_request(arm: str, seconds: float) -> None:
            registry["requests"].labels(arm=arm, model=scorer.name).inc()
            registry["latency"].labels(arm=arm).observe(seconds)
            flush_gc_pauses()

        def on_shard_call(shard: int, seconds: float, ok: bool) -> None:
            registry["shard_latency"].labels(shard=str(shard)).observe(seconds)
            if not ok:
                registry["shard_failures"].labels(shard=str(shard)).inc()

        metrics = RankerMetrics(
            observe_request=observe_request,
            observe_stage=lambda stage, seconds: (
                registry["stage_latency"].labels(stage=stage).observe(seconds)
            ),
            count_flag=lambda flag: registry["flags"].labels(flag=flag).inc(),
        )
    if scorer.needs_memory:
        if memory_dir is None or not shard_clients:
            raise ModelFileError(f"{scorer.name} needs its memory shard models; the config lists none")
        check_shard_files(shard_dirs)
        index = load_memory_index(memory_dir)
        memory = RemoteShardedMemory(
            index,
            shard_clients,
            timeout_s=config.shard_timeout_s,
            retry_after_s=config.shard_retry_after_s,
            on_shard_call=on_shard_call,
        )
        scorer.attach_memory(memory)
    features = None
    if config.feature_repo:
        features = OnlineFeatures(config.feature_repo, scorer.spec.n_items, config.feature_store_yaml)
    scorers = {"main": scorer}
    if config.candidate_tag:
        if candidate_dir is None:
            raise ModelFileError(f"the A/B candidate {config.candidate_tag} has no model folder")
        candidate = ModelScorer(candidate_dir, config.candidate_tag, config.candidate_files)
        if candidate.needs_memory:
            raise ModelFileError(
                f"the A/B candidate {config.candidate_tag} ({candidate.name}) needs memory shard services of "
                "its own, which an A/B ranker does not start: roll out a model without a memory, or promote it"
            )
        if candidate.spec.n_items != scorer.spec.n_items:
            raise ModelFileError(
                f"the A/B candidate {config.candidate_tag} knows {candidate.spec.n_items} items, production "
                f"{scorer.spec.n_items}: the two arms must share one item vocabulary"
            )
        scorers["candidate"] = candidate
    hooks = None
    if config.rollout_dir and config.dataset:
        from longrec.rollout.hooks import RolloutHooks

        hooks = RolloutHooks(config.dataset, state_dir=config.rollout_dir)
    if config.fused_attention:  # before compiling: the compiled graphs call the kernel
        for arm, each in scorers.items():
            each.enable_fused_attention()
            if with_metrics:
                serving_metrics()["fused_attention"].labels(arm=arm).set(int(each.fused_attention))
    if config.compile:  # compiled at warm_up(), before the service reports ready
        for each in scorers.values():
            each.enable_compile()
    return Ranker(scorers, features, metrics, hooks, trim_history=config.trim_history_padding)


def one_error_object(send):
    """An ASGI ``send`` that answers every 4xx error as one JSON object, ``{"error": ...}``.

    BentoML 1.4 answers the 4xx exceptions an API raises (``InvalidArgument``: an unknown item id, say) as
    a one-element list, ``[{"error": ...}]`` (a stray comma in its handler), and its own validation errors
    as an object. Clients would have to parse both shapes, so this unwraps the list. Other responses pass
    through untouched."""
    import json

    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            start = message  # held until the body is complete
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        only = parsed[0] if isinstance(parsed, list) and len(parsed) == 1 else None
        if isinstance(only, dict) and "error" in only:
            body = json.dumps(only).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


class BodyGuard:
    """ASGI middleware for the ranker: POST bodies must be JSON and at most ``max_bytes``; else 415/413.
    While ``unavailable()`` gives a reason (the model failed to load), requests get 503 with that reason:
    BentoML itself would answer any 5xx with a generic "unexpected error" and hide it. Every 4xx body is
    one JSON object with an ``error`` field (``one_error_object``)."""

    def __init__(
        self,
        app,
        max_bytes: int = MAX_BODY_BYTES,
        paths: tuple[str, ...] = ("/rank", "/rank_batch"),
        unavailable: Callable[[], str | None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths
        self.unavailable = unavailable

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        reason = self.unavailable() if self.unavailable is not None else None
        if reason:
            await self._reject(send, 503, reason)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            await self._reject(
                send, 415, f"body must be application/json, got {media_type or 'no content-type'}"
            )
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send, 413, f"body larger than {self.max_bytes} bytes")
            return
        # Without a Content-Length (chunked), count as the body arrives.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(send, 413, f"body larger than {self.max_bytes} bytes")
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, one_error_object(send))

    @staticmethod
    async def _reject(send, status: int, message: str) -> None:
        serving_metrics()["errors"].labels(kind=str(status)).inc()
        await send_json_error(send, status, message)


async def send_json_error(send, status: int, message: str) -> None:
    """Answer an ASGI request with ``status`` and the JSON body ``{"error": message}``."""
    import json

    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
