"""The ranker: load a registered model (checked against its file manifest), read the user's features
online, compute the candidate-independent part once and score every candidate in one pass.

``Ranker`` holds its scorers in a dict keyed by arm so an A/B split can add a second model version
beside the first; today every user goes to the single arm ``"main"``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longrec.memory.sharded import sha256_file
from longrec.serving.features import (
    HISTORY_WIDTH_STEP,
    OnlineFeatures,
    UserFeatures,
    build_batches,
    empty_user,
    trim_history_padding,
)
from longrec.serving.schemas import RankRequest, RankResponse, ScoredItem

__all__ = [
    "ModelFileError",
    "ModelScorer",
    "Ranker",
    "RankingError",
    "UnknownItemError",
    "file_manifest",
    "verify_manifest",
]

logger = logging.getLogger(__name__)

MAIN_ARM = "main"  # no experiment: the production model
CONTROL_ARM, CANDIDATE_ARM = "control", "candidate"  # the A/B arms (longrec.rollout.assignment)
MODEL_FILES = ("model.pt", "model_meta.json")


class ModelFileError(RuntimeError):
    """A model file is missing or differs from the manifest recorded when the service was packaged."""


class RankingError(ValueError):
    """A request the model cannot score (the message names the field); a 4xx, never a 5xx."""


class UnknownItemError(RankingError):
    """A candidate or history item id outside the model's item vocabulary."""


def file_manifest(directory: str | Path, names: tuple[str, ...] = MODEL_FILES) -> dict[str, str]:
    """{file name: sha256} of the files of a model folder that serving reads."""
    directory = Path(directory)
    return {name: sha256_file(directory / name) for name in names if (directory / name).is_file()}


def verify_manifest(directory: str | Path, manifest: dict[str, str]) -> None:
    """Raise ``ModelFileError`` naming the first file that is missing or does not match its sha256."""
    directory = Path(directory)
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"model file {name} is missing from {directory}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelFileError(
                f"model file {name} in {directory} fails its checksum: sha256 {actual[:12]}… but the "
                f"manifest says {expected[:12]}… (corrupted or replaced)"
            )


class ModelScorer:
    """One loaded model version: ``encode_user`` once per request, then ``score_candidates``."""

    compiled = False  # enable_compile(): scoring runs torch.compile'd (encode_user + score_candidates)
    compiled_score: Callable | None = None  # (user batch, candidate batch) -> logits, compiled whole
    fused_attention = False  # enable_fused_attention(): the attention runs the fused CPU kernel
    _reads_pool: ThreadPoolExecutor | None = None  # LMN: the memory reads beside the attention

    def __init__(self, model_dir: str | Path, tag: str, manifest: dict[str, str] | None = None) -> None:
        from longrec.models.checkpoint import load_checkpoint

        model_dir = Path(model_dir)
        if manifest:
            verify_manifest(model_dir, manifest)
        try:
            self.model, meta = load_checkpoint(model_dir / "model.pt")
        except Exception as error:  # a truncated or foreign file: say which, not a torch traceback
            raise ModelFileError(f"model file model.pt in {model_dir} is unreadable: {error}") from error
        self.model.eval()
        self.spec = meta["spec"]
        self.name = meta["model_name"]
        self.tag = tag
        self.model_dir = model_dir

    @property
    def needs_memory(self) -> bool:
        return hasattr(self.model, "sharded_memory")

    def attach_memory(self, memory) -> None:
        """Serve LMN's eval-mode reads from ``memory`` (a ``ShardedMemory``, local or remote)."""
        if memory.config != self.model.memory.config:
            raise ModelFileError(
                f"memory shards have {memory.config}, the model has {self.model.memory.config}"
            )
        self.model.sharded_memory = memory
        # Every item's row top-K once, now: a request then looks its reads' rows up (LMN.cache_item_rows).
        self.model.cache_item_rows()

    @torch.no_grad()
    def score(self, user_batch: dict, candidate_batch: dict) -> np.ndarray:
        """Logits [C] for the candidates (float64 for JSON)."""
        if self.needs_memory and self.model.sharded_memory is not None:
            return self._score_beside_reads(user_batch, candidate_batch).double().numpy()
        score = self.compiled_score or self._encode_and_score
        return score(user_batch, candidate_batch).double().numpy()

    def _encode_and_score(self, user_batch: dict, candidate_batch: dict) -> torch.Tensor:
        return self.model.score_candidates(self.model.encode_user(user_batch), candidate_batch)

    def _score_beside_reads(self, user_batch: dict, candidate_batch: dict) -> torch.Tensor:
        """LMN: the request's memory reads (one round trip per shard service) run in a helper thread
        while this thread computes the backbone's attention over C × L, which does not need them; the
        head then joins both. The shard latency hides behind the attention instead of adding to it."""
        model = self.model
        if self._reads_pool is None:
            self._reads_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memory-reads")
        pending = self._reads_pool.submit(self._request_reads, user_batch, candidate_batch)
        try:
            backbone = model.backbone.score_candidates(
                model.backbone.encode_user(user_batch), candidate_batch
            )
        finally:
            reads, degraded = pending.result()  # never leave a read running past its request
        if degraded:  # the memory's flag is per thread: carry the helper's over to the request's thread
            model.sharded_memory.degraded = True
        return model.score_from_reads(
            backbone, reads["history_reads"], reads["read_positions"], reads["target_reads"]
        )

    def _request_reads(self, user_batch: dict, candidate_batch: dict) -> tuple[dict, bool]:
        memory = self.model.sharded_memory
        with torch.no_grad():  # grad mode is per thread
            if hasattr(memory, "degraded"):
                memory.degraded = False
            reads = self.model.request_reads(user_batch, candidate_batch)
        return reads, bool(getattr(memory, "degraded", False))

    def enable_fused_attention(self) -> bool:
        """DIN's activation unit (DIN, LMN) and IMN's multi-way attention score candidates through the fused
        CPU kernel; False where the model has neither or the kernel cannot be built here (the torch path
        serves, with a warning)."""
        from longrec.models.din import ActivationUnit
        from longrec.models.imn import MultiWayAttention

        kinds = (ActivationUnit, MultiWayAttention)
        units = [module for module in self.model.modules() if isinstance(module, kinds)]
        self.fused_attention = bool(units) and all(unit.enable_fused_cpu_scoring() for unit in units)
        return self.fused_attention

    def enable_compile(self) -> None:
        """``torch.compile`` the scoring path (dynamic shapes: any candidate count and history width):
        ``encode_user`` and ``score_candidates`` as one graph, so the user half fuses too (RecBLR's
        BD-LRU layers are ~70 small ops per request around the scan). LMN's memory reads go through the
        shard clients (numpy, threads, timeouts), so for LMN only the dense backbone part (the attention
        over C × L) is compiled and the reads stay eager. Compiles on first call: ``Ranker.warm_up``
        makes that call before the service is ready."""
        if self.needs_memory:
            backbone = self.model.backbone
            backbone.score_candidates = torch.compile(backbone.score_candidates, dynamic=True)
        else:
            self.compiled_score = torch.compile(self._encode_and_score, dynamic=True)
        self.compiled = True

    def disable_compile(self) -> None:
        """Back to eager (a compile that fails at warm-up, e.g. no C++ compiler, must not stop serving)."""
        self.compiled_score = None
        if self.needs_memory:
            self.model.backbone.__dict__.pop("score_candidates", None)
        self.compiled = False

    def check_items(self, items: np.ndarray, field_name: str) -> None:
        if items.size and int(items.max()) >= self.spec.n_items:
            bad = [int(i) for i in items[items >= self.spec.n_items][:5]]
            raise UnknownItemError(
                f"{field_name}: unknown item id(s) {bad} (this model knows ids 1..{self.spec.n_items - 1})"
            )


@dataclass
class RankerMetrics:
    """Hooks the service points at its Prometheus metrics; no-ops by default (in-process use)."""

    observe_request: Callable[[str, float], None] = lambda arm, seconds: None
    # (stage, seconds) per request: "features" (online store read and batch assembly), "score" (the
    # model), "respond" (ordering, the response and the rollout log): where a request's time goes.
    observe_stage: Callable[[str, float], None] = lambda stage, seconds: None
    count_flag: Callable[[str], None] = lambda flag: None
    extra: dict = field(default_factory=dict)


class Ranker:
    """Scores candidates for users with the models of ``scorers`` (by arm) and online features."""

    def __init__(
        self,
        scorers: dict[str, ModelScorer],
        features: OnlineFeatures | None,
        metrics: RankerMetrics | None = None,
        hooks=None,
        trim_history: bool = True,
    ) -> None:
        if not scorers:
            raise ValueError("a ranker needs at least one model")
        self.scorers = scorers
        self.features = features
        self.metrics = metrics or RankerMetrics()
        self.hooks = hooks  # longrec.rollout.hooks.RolloutHooks: assignment and request log, or None
        self.thread_choice: dict | None = None  # choose_threads: its attempts and the deciding one's figures
        self.trim_history = trim_history  # score histories cut to their valid events (trim_history_padding)

    def warm_up(self) -> None:
        """Score synthetic full-length requests per model without the feature store, so kernels (RecBLR's
        compiled scan) load and a ``torch.compile``d scoring path compiles before the service reports
        ready: one candidate and several (dynamic shapes specialise 1 apart), so no request pays a
        compile. With trimmed histories, also the shortest width, so a short history does not recompile
        either. LMN's memory lives in the shard services, not up yet at this point: only its backbone
        (the compiled part) is warmed; its first request warms the reads."""
        for scorer in self.scorers.values():
            counts = (1, 3) if scorer.compiled else (1,)
            lengths = [scorer.spec.max_history_length]
            if scorer.compiled and self.trim_history and lengths[0] > HISTORY_WIDTH_STEP:
                lengths.append(HISTORY_WIDTH_STEP)
            try:
                for count in counts:
                    if scorer.needs_memory and not scorer.compiled:
                        break
                    for length in lengths:
                        batches = _synthetic_batches(scorer, count, length)
                        if self.trim_history:
                            batches = (trim_history_padding(batches[0]), batches[1])
                        _score_synthetic(scorer, batches)
            except Exception as error:  # a compile that cannot run here (no C++ compiler, ...): eager
                if not scorer.compiled:
                    raise
                logger.warning("torch.compile failed for %s, serving eager: %s", scorer.tag, error)
                scorer.disable_compile()

    def choose_threads(
        self, most: int, candidates: int = 100, repeats: int = 7, attention_threads: int | None = None
    ) -> dict[tuple[int, int], float]:
        """Set the threads of torch's intra-op ops and of the fused attention kernel to whichever setting
        scores a synthetic full-length request of ``candidates`` fastest (the production model, after
        warm_up). Settings, as (torch, kernel): (1, 1) and (``most``, ``most``); with the fused kernel also
        (1, ``most``), the kernel on every CPU while the small ops around it stay on one. Measured, not
        assumed: the attention over C × L gains from a second core, while small ops (RecBLR's head, a
        100-row GEMM) lose more to waking threads than they gain. ``attention_threads`` fixes the kernel's
        count instead (only the torch count is chosen). The settings alternate and each keeps its fastest
        of ``repeats`` runs, so a short burst of other work slows all alike.

        Work that holds a core through the whole measurement would still decide it: it makes a second
        thread look worthless. At start-up there is such work (torch.compile's worker processes still
        starting, shard services loading). Of four rankers served on 2 cores on 2026-12-03, two chose
        (1, 1) or (2, 2) and served slower than those that chose (1, 2)
        (benchmarks/results/serving_kernel_transposed_ab), for a reason not recorded then. So the
        machine's other CPU use is read from /proc/stat around each measurement; one where other processes
        used more than ``QUIET_OTHER_CPUS`` is repeated after a pause, up to ``THREAD_CHOICE_ATTEMPTS``
        times, and the quietest attempt decides. Returns its {(torch threads, kernel threads): seconds}."""
        scorer = self.scorers[MAIN_ARM]
        batches = _synthetic_batches(scorer, max(1, min(candidates, scorer.spec.n_items - 1)))
        most = max(1, most)
        if attention_threads:
            settings = sorted({(1, attention_threads), (most, attention_threads)})
        else:
            settings = sorted({(1, 1), (most, most)} | ({(1, most)} if scorer.fused_attention else set()))
        attempts: list[tuple[float, dict[tuple[int, int], float]]] = []
        for attempt in range(THREAD_CHOICE_ATTEMPTS):
            if attempt:
                time.sleep(THREAD_CHOICE_PAUSE_S)
            busy, own, wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
            timings = self._time_settings(scorer, batches, settings, repeats)
            busy_after = _busy_cpu_seconds()
            other = 0.0  # other processes' CPUs (busy cores) over the attempt; 0 where /proc/stat is absent
            if busy is not None and busy_after is not None:
                own_used = time.process_time() - own
                other = max(0.0, busy_after - busy - own_used) / max(time.perf_counter() - wall, 1e-9)
            attempts.append((other, timings))
            if other < QUIET_OTHER_CPUS:
                break
        deciding = min(range(len(attempts)), key=lambda index: attempts[index][0])
        other, timings = attempts[deciding]
        best = min(timings, key=timings.get)
        self._set_threads(best)
        self.thread_choice = {
            "attempts": len(attempts),
            "deciding_attempt": deciding + 1,
            "other_cpus": round(other, 3),
            "ms": {setting: round(seconds * 1000, 2) for setting, seconds in timings.items()},
        }
        logger.info(
            "threads (torch, attention kernel): %s (synthetic request ms by setting: %s; attempt %d of %d, "
            "other processes using %.2f CPUs)",
            best,
            self.thread_choice["ms"],
            deciding + 1,
            len(attempts),
            other,
        )
        return timings

    @staticmethod
    def _set_threads(setting: tuple[int, int]) -> None:
        from longrec.kernels.din_attention import set_kernel_threads

        torch.set_num_threads(setting[0])
        set_kernel_threads(setting[1])

    def _time_settings(
        self, scorer: ModelScorer, batches: tuple[dict, dict], settings: list[tuple[int, int]], repeats: int
    ) -> dict[tuple[int, int], float]:
        """Each setting's fastest of ``repeats`` synthetic scorings, settings alternating."""
        timings = {setting: float("inf") for setting in settings}
        for round_ in range(repeats + 1):
            for setting in settings:
                self._set_threads(setting)
                started = time.perf_counter()
                _score_synthetic(scorer, batches)
                if round_:  # the first round only wakes each setting's threads
                    timings[setting] = min(timings[setting], time.perf_counter() - started)
        return timings

    def arm_for(self, user_id: int):
        """(arm, scorer key, assignment) for ``user_id``. Without a rollout: ("main", "main", None). With one,
        the experiment's sticky assignment; a user assigned to a candidate this process has not loaded
        (the experiment changed after start-up) is served and logged as control, which the rollout's
        sample-ratio check then reports."""
        if self.hooks is None:
            return MAIN_ARM, MAIN_ARM, None
        assignment = self.hooks.assign(user_id)
        if assignment.experiment_id is None:  # no experiment: production, logged as "main"
            return MAIN_ARM, MAIN_ARM, dataclasses.replace(assignment, arm=MAIN_ARM)
        candidate = self.scorers.get(CANDIDATE_ARM)
        if (
            assignment.arm == CANDIDATE_ARM
            and candidate is not None
            and candidate.tag == assignment.model_tag
        ):
            return CANDIDATE_ARM, CANDIDATE_ARM, assignment
        if assignment.arm == CANDIDATE_ARM:
            assignment = dataclasses.replace(assignment, arm=CONTROL_ARM, model_tag=None)
        return CONTROL_ARM, MAIN_ARM, assignment

    def ready(self) -> tuple[bool, str]:
        """(ready, reason): model(s) loaded, features reachable, every shard loaded."""
        if self.features is not None and not self.features.ready:
            if not self.features.load_item_genres():
                return False, f"feature store not readable: {self.features.last_error}"
        return True, "ok"

    def _user_features(self, request: RankRequest) -> UserFeatures:
        if request.history is not None:
            items = np.asarray(request.history.items, dtype=np.int64)
            stamps = np.asarray(request.history.timestamps, dtype=np.int64)
            base = self.features.user(request.user_id) if self.features is not None else empty_user()
            if base.fallback:
                base = empty_user(fallback=True)
            return UserFeatures(items, stamps, base.side, found=True, fallback=base.fallback)
        if self.features is None:
            return empty_user()
        return self.features.user(request.user_id)

    def rank(self, request: RankRequest) -> RankResponse:
        """Score every candidate of ``request`` in one pass and return them best first."""
        started = time.perf_counter()
        arm, key, assignment = self.arm_for(request.user_id)
        scorer = self.scorers[key]
        candidates = np.asarray(request.candidate_items, dtype=np.int64)
        scorer.check_items(candidates, "candidate_items")
        if request.history is not None:
            scorer.check_items(np.asarray(request.history.items, dtype=np.int64), "history.items")
        user = self._user_features(request)
        genres = self.features.genres(candidates) if self.features is not None else np.zeros_like(candidates)
        user_batch, candidate_batch = build_batches(
            scorer.spec, request.user_id, user, candidates, genres, request.timestamp
        )
        # History items the model has never seen (newer than the model) read as padding's zero row.
        history = user_batch["history_items"]
        history[history >= scorer.spec.n_items] = 0
        if self.trim_history:
            user_batch = trim_history_padding(user_batch)
        memory = getattr(scorer.model, "sharded_memory", None)
        if memory is not None and hasattr(memory, "degraded"):
            memory.degraded = False
        features_done = time.perf_counter()
        logits = scorer.score(user_batch, candidate_batch)
        score_done = time.perf_counter()
        degraded = bool(memory is not None and getattr(memory, "degraded", False))
        order = np.argsort(-logits, kind="stable")
        if request.top_k is not None:
            order = order[: request.top_k]
        scores = 1.0 / (1.0 + np.exp(-logits))
        unknown = not user.found and not user.fallback
        # Python numbers in bulk (tolist), not one numpy scalar conversion per field (100 items, timed by
        # hand: 0.13 -> 0.09 ms).
        ordered = zip(candidates[order].tolist(), scores[order].tolist(), logits[order].tolist(), strict=True)
        response = RankResponse(
            items=[ScoredItem(item_id=item, score=score, logit=logit) for item, score, logit in ordered],
            model_tag=scorer.tag,
            model_name=scorer.name,
            history_length=int(user_batch["history_mask"].sum()),
            unknown_user=unknown or not 0 < request.user_id < scorer.spec.n_users,
            feature_fallback=user.fallback,
            degraded_memory=degraded,
        )
        response.arm = arm
        for flag in ("unknown_user", "feature_fallback", "degraded_memory"):
            if getattr(response, flag):
                self.metrics.count_flag(flag)
        seconds = time.perf_counter() - started
        if assignment is not None:  # the rollout's append-only request log (survives restarts)
            response.experiment_id = assignment.experiment_id
            response.request_id = self.hooks.record(
                assignment,
                user_id=request.user_id,
                items=[item.item_id for item in response.items],
                scores=[item.score for item in response.items],
                latency_ms=seconds * 1000,
                model_tag=scorer.tag,
                history_length=response.history_length,
                flags={
                    flag: getattr(response, flag)
                    for flag in ("unknown_user", "feature_fallback", "degraded_memory")
                },
            )
        self.metrics.observe_request(arm, seconds)
        self.metrics.observe_stage("features", features_done - started)
        self.metrics.observe_stage("score", score_done - features_done)
        self.metrics.observe_stage("respond", time.perf_counter() - score_done)
        return response


def _synthetic_batches(scorer: ModelScorer, count: int, events: int | None = None) -> tuple[dict, dict]:
    """A history of ``events`` (default: a full L) and ``count`` candidates, built as a real request's
    features are."""
    length = scorer.spec.max_history_length
    events = length if events is None else min(events, length)
    user = UserFeatures(np.ones(events, np.int64), np.arange(events, dtype=np.int64), {}, found=True)
    user.side = {column: 0 for column in ("user_age", "user_gender", "user_occupation")}
    candidates = np.arange(1, count + 1)
    return build_batches(scorer.spec, 1, user, candidates, np.zeros(count, np.int64), request_time=length)


# choose_threads: a measurement during which other processes kept more than this many CPUs busy is
# repeated, at most THREAD_CHOICE_ATTEMPTS times in all, after a pause.
QUIET_OTHER_CPUS = 0.15
THREAD_CHOICE_ATTEMPTS = 4
THREAD_CHOICE_PAUSE_S = 0.5


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all but idle and iowait) on the CPUs this process may
    run on, from /proc/stat; None where that cannot be read (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        usable = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in usable:
            continue
        values = [int(value) for value in fields]
        ticks += sum(values) - values[3] - values[4]  # idle, iowait
    return ticks / os.sysconf("SC_CLK_TCK")


@torch.no_grad()
def _score_synthetic(scorer: ModelScorer, batches: tuple[dict, dict]) -> None:
    """Score a synthetic request; LMN only through its backbone (the part computed here, and compiled),
    since its memory reads need the shard services."""
    if scorer.needs_memory:
        backbone = scorer.model.backbone
        backbone.score_candidates(backbone.encode_user(batches[0]), batches[1])
    else:
        scorer.score(*batches)
