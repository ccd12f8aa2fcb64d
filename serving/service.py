"""The longrec ranker as a BentoML 1.4 service graph.

``Ranker`` serves ``POST /rank``. For an LMN model it depends (``bentoml.depends``) on one ``MemoryShardN``
service per shard model of the config, each holding one slot range of the value table and answering
``gather`` (the ranker calls its raw-bytes route, ``longrec.serving.shard_transport``); the shards run,
scale and restart as their own processes. Other models have no shards.

What is served comes from ``longrec_serving.json`` (bundled in a Bento by ``longrec.serving.package``) or
the file named by $LONGREC_SERVING_CONFIG (``longrec serve`` writes one). Importing this module loads
nothing heavy: models, shards and the feature store load in each service's ``__init__``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
import numpy as np

from longrec.serving.config import DEFAULT_SHARDS, ServingConfig, load_serving_config
from longrec.serving.raw_route_service import RawRouteFirst
from longrec.serving.schemas import RankRequest, RankResponse
from longrec.serving.service_support import (
    BodyGuard,
    quiet_threads,
    serving_metrics,
    set_ranker_threads,
    shard_metrics,
    watch_gc_pauses,
)
from longrec.serving.shard_transport import RAW_MOUNT, RawShardClient, ShardUnavailable, raw_gather_app

logger = logging.getLogger("longrec.serving")

CONFIG: ServingConfig | None = load_serving_config(Path(__file__).parent)
ENVS = [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}, {"name": "BENTOML_DO_NOT_TRACK", "value": "True"}]
# Why this process's ranker failed to load (None: it loaded); BodyGuard answers requests 503 with it.
LOAD_ERROR: dict[str, str | None] = {"reason": None}
# /rank_batch: at most this many requests per batch, and the dispatcher's deadline for one to start.
BATCH_MAX_SIZE = 16
BATCH_MAX_LATENCY_MS = 1000


def _not_ready(message: str):
    from starlette.exceptions import HTTPException

    return HTTPException(status_code=503, detail=message)


def memory_shard_service(index: int, tag: str, timeout_s: float):
    """The service of memory shard ``index``: loads its value file (checked against the manifest) and
    answers gathers at its raw-bytes route (the ranker's calls, answered ahead of BentoML's middleware:
    ``RawRouteFirst``) and at the ``gather`` API."""
    loaded: list = []  # the service instance, once constructed: the raw route's lookups go to it

    def raw_lookup(slots: np.ndarray) -> np.ndarray:
        if not loaded:
            raise ShardUnavailable(f"memory shard {index} ({tag}) is still starting")
        return loaded[0].lookup(slots)

    def observe(status: int, seconds: float) -> None:
        shard_metrics()["gather"].labels(shard=str(index), status=str(status)).observe(seconds)

    @bentoml.asgi_app(raw_gather_app(raw_lookup, observe=observe), path=RAW_MOUNT)
    class MemoryShard:
        shard_model = bentoml.models.BentoModel(tag)

        def __init__(self) -> None:
            quiet_threads()
            from longrec.serving.memory import ShardValues

            self.error: str | None = None
            try:
                self.values = ShardValues(self.shard_model.path, index)
            except Exception as error:  # a corrupted or missing file: not ready, and say which
                self.error = f"memory shard {index} ({tag}) failed to load: {error}"
                logger.error(self.error)
            loaded[:] = [self]
            shard_metrics()  # on /metrics before the first gather

        def __is_ready__(self) -> bool:
            if self.error:
                raise _not_ready(self.error)
            return True

        def lookup(self, slots: np.ndarray) -> np.ndarray:
            """Value rows [N, d_v] of global slot ids in this shard's range (in process, the ranker's path;
            served, its raw route's)."""
            if self.error:
                raise ShardUnavailable(self.error)
            return self.values.gather(slots)

        @bentoml.api
        async def gather(self, slots: np.ndarray) -> np.ndarray:
            """``lookup`` as a BentoML API (pickle or JSON), for clients other than the ranker. Async, so
            it runs on the server's loop: the lookup takes well under a millisecond, less than the
            hand-off to a worker thread that a sync API pays on every call."""
            try:
                return self.lookup(slots)
            except ShardUnavailable as error:
                raise bentoml.exceptions.ServiceUnavailable(str(error)) from error

    MemoryShard.__name__ = MemoryShard.__qualname__ = f"MemoryShard{index}"
    # The ranker's calls time out at its own shard deadline (timeout_s); BentoML's traffic timeout, for
    # the gather API's callers, is looser.
    return bentoml.service(
        name=f"MemoryShard{index}",
        workers=1,
        envs=ENVS,
        traffic={"timeout": max(1.0, 4 * timeout_s)},
        service_class=RawRouteFirst,
    )(MemoryShard)


class Ranker:
    """Scores 1..1,000 candidate items for a user: online features, one forward pass, flags."""

    def __init__(self) -> None:
        quiet_threads(CONFIG.torch_threads if CONFIG is not None else 1)
        self.error: str | None = None
        self.ranker = None
        if CONFIG is None:
            self.error = "no model configured: set LONGREC_SERVING_CONFIG or serve with `longrec serve`"
            logger.error(self.error)
            LOAD_ERROR["reason"] = self.error
            return
        from longrec.serving.service_support import build_ranker

        n_shards = len(CONFIG.shard_tags)
        shards = [getattr(self, f"memory_shard_{i}") for i in range(n_shards)]
        try:
            self.ranker = build_ranker(
                CONFIG,
                self.model_ref.path,
                memory_dir=self.memory_index.path if n_shards else None,
                shard_clients=[_gather_client(shard, CONFIG.shard_timeout_s) for shard in shards],
                shard_dirs=[bentoml.models.get(tag).path for tag in CONFIG.shard_tags],
                candidate_dir=self.candidate_ref.path if CONFIG.candidate_tag else None,
            )
            self.ranker.warm_up()
            set_ranker_threads(self.ranker, CONFIG)
        except Exception as error:  # corrupted model file, bad shard index, ...: not ready, say why
            self.error = f"ranker for {CONFIG.model_tag} failed to load: {error}"
            logger.error(self.error)
        LOAD_ERROR["reason"] = self.error  # /rank answers 503 with it (BodyGuard)
        watch_gc_pauses()

    def __is_ready__(self) -> bool:
        if self.error:
            raise _not_ready(self.error)
        ready, reason = self.ranker.ready()
        if not ready:
            raise _not_ready(reason)
        return True

    @bentoml.api(route="/rank", input_spec=RankRequest, output_spec=RankResponse)
    async def rank(self, **fields) -> RankResponse:
        """Rank ``candidate_items`` for ``user_id`` (best first), with the model tag and flags."""
        if self.ranker is None:
            raise bentoml.exceptions.ServiceUnavailable(self.error or "not loaded")
        request = RankRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        # One worker: scoring on the loop saves a thread hand-off per request. LMN's shard calls do not
        # need the loop (their own connections, from the memory's threads).
        return self._rank(request)

    def _rank(self, request: RankRequest) -> RankResponse:
        from longrec.serving.ranker import RankingError

        try:
            return self.ranker.rank(request)
        except RankingError as error:
            serving_metrics()["errors"].labels(kind="invalid").inc()
            raise bentoml.exceptions.InvalidArgument(str(error)) from error
        except Exception:
            serving_metrics()["errors"].labels(kind="internal").inc()
            raise

    @bentoml.api(
        route="/rank_batch",
        batchable=True,
        max_batch_size=BATCH_MAX_SIZE,
        max_latency_ms=BATCH_MAX_LATENCY_MS,
    )
    async def rank_batch(self, requests: list[RankRequest]) -> list[dict]:
        """/rank with BentoML's adaptive batching: each call sends a list of requests (usually one); the
        dispatcher joins the lists of concurrent calls into one batch, ranks it in one call of this
        method and hands each caller its part. The answers are /rank's, in order; a request the model
        rejects (e.g. an unknown item id) answers {"error": message} in its place, since the batch it
        shares with other callers cannot fail for it. Measured against /rank in benchmarks/serving.py."""
        if self.ranker is None:
            raise bentoml.exceptions.ServiceUnavailable(self.error or "not loaded")
        requests = [r if isinstance(r, RankRequest) else RankRequest.model_validate(r) for r in requests]
        return self._rank_many(requests)

    def _rank_many(self, requests: list[RankRequest]) -> list[dict]:
        from longrec.serving.ranker import RankingError

        answers = []
        for request in requests:
            try:
                answers.append(self.ranker.rank(request).model_dump())
            except RankingError as error:
                serving_metrics()["errors"].labels(kind="invalid").inc()
                answers.append({"error": str(error)})
            except Exception:
                serving_metrics()["errors"].labels(kind="internal").inc()
                raise
        return answers


def _gather_client(shard, timeout_s: float):
    """A callable slots -> rows over a shard dependency. Served, the dependency is a remote proxy: the
    memory's threads call the shard's raw route at the proxy's address, each over its own keep-alive
    connection (``RawShardClient``), which needs neither the server's loop nor a thread hand-off. In
    process, the dependency is the shard instance itself."""
    from _bentoml_impl.client import RemoteProxy

    if isinstance(shard, RemoteProxy):
        return RawShardClient(shard.to_async.url, timeout_s=timeout_s).gather
    return shard.lookup


if CONFIG is not None:
    Ranker.model_ref = bentoml.models.BentoModel(CONFIG.model_tag)
    if CONFIG.candidate_tag:  # A/B rollout: the candidate version beside production
        Ranker.candidate_ref = bentoml.models.BentoModel(CONFIG.candidate_tag)
    if CONFIG.shard_tags:  # the ranker reads the manifest and the replicated keys from shard 0's model
        Ranker.memory_index = bentoml.models.BentoModel(CONFIG.shard_tags[0])
    for _index, _tag in enumerate(CONFIG.shard_tags):
        setattr(
            Ranker,
            f"memory_shard_{_index}",
            bentoml.depends(memory_shard_service(_index, _tag, CONFIG.shard_timeout_s)),
        )

Ranker = bentoml.service(
    name="Ranker",
    workers=1,
    envs=ENVS,
    traffic={"timeout": 30},
    labels={"project": "longrec", "default_shards": str(DEFAULT_SHARDS)},
)(Ranker)
Ranker.add_asgi_middleware(BodyGuard, unavailable=lambda: LOAD_ERROR["reason"])
