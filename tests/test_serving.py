"""Serving, in process: the split forward and the ranker against the offline model (parity to 1e-5 for
every model type, LMN through 2 shard readers), request validation, flags, file checks, and the BentoML
service classes instantiated and called without a server."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from longrec.data.tensors import time_buckets
from longrec.features.store import create_feature_repo, materialize
from longrec.memory.sharded import MemoryShardError
from longrec.models.registry import build_model
from longrec.serving.demo import demo_frames, demo_spec, store_model_dir, write_model_dir
from longrec.serving.memory import ShardValues
from longrec.serving.package import prepare_serving
from longrec.serving.process import free_port
from longrec.serving.ranker import ModelFileError, UnknownItemError
from longrec.serving.schemas import RankRequest
from longrec.serving.service_support import build_ranker

MODELS = {
    "din": {},
    "imn": {},
    "recblr": {},
    "lmn": {"memory_slots": 256, "memory_top_k": 4, "memory_key_dim": 16, "memory_value_dim": 8},
}
NOW = 880_100_000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Feast repo (SQLite) of synthetic events and one stored model of each type, random weights."""
    root = tmp_path_factory.mktemp("serving")
    spec = demo_spec()
    events, items, users = demo_frames(spec, events_per_user=11)
    store = create_feature_repo(root / "repo", events, items, users, spec.max_history_length)
    materialize(store)
    tags = {}
    for name, overrides in MODELS.items():
        torch.manual_seed(1)
        model = build_model(name, spec, overrides)
        write_model_dir(model, root / "trained" / name)
        tags[name] = store_model_dir(root / "registry", root / "trained" / name, f"longrec-demo-{name}")
    return {"root": root, "spec": spec, "events": events, "repo": root / "repo", "tags": tags}


def local_ranker(world, name: str, **config_overrides):
    """A ranker for stored model ``name``; LMN's 2 shards are read in process through ShardValues.
    Eager unless ``compile=True`` (compiling costs seconds per model; one test covers the compiled path)."""
    config_overrides.setdefault("compile", False)
    config = prepare_serving(world["root"] / "registry", world["tags"][name], 2, world["repo"])
    for key, value in config_overrides.items():
        setattr(config, key, value)
    from longrec.registry.store import ModelRegistry

    registry = ModelRegistry(world["root"] / "registry")
    model_dir = registry.model_path(config.model_tag)
    shard_dirs = [registry.model_path(tag) for tag in config.shard_tags]
    clients = [ShardValues(path, i).gather for i, path in enumerate(shard_dirs)]
    ranker = build_ranker(
        config, model_dir, shard_dirs[0] if shard_dirs else None, clients, with_metrics=False
    )
    return ranker, config


def offline_logits(world, name: str, user_id: int, candidates: list[int]) -> np.ndarray:
    """The offline model (its own, unsharded memory) on a batch built from the raw events."""
    from longrec.train.trainer import load_checkpoint

    spec, events = world["spec"], world["events"]
    mine = (
        events[events["user_id"] == user_id]
        .sort_values("timestamp", kind="stable")
        .tail(spec.max_history_length)
    )
    length = spec.max_history_length
    items = np.zeros((1, length), np.int64)
    stamps = np.zeros((1, length), np.int64)
    items[0, : len(mine)] = mine["item_id"]
    stamps[0, : len(mine)] = mine["timestamp"]
    mask = items != 0
    count = len(candidates)
    users = {1 + u: (1 + u) % spec.n_ages for u in range(spec.n_users)}
    batch = {
        "user_id": torch.full((count,), user_id),
        "target_item": torch.tensor(candidates),
        "history_items": torch.from_numpy(items).expand(count, -1),
        "history_time_buckets": torch.from_numpy(time_buckets(stamps, np.array([NOW]), mask)).expand(
            count, -1
        ),
        "history_mask": torch.from_numpy(mask).expand(count, -1),
        "target_genre": torch.tensor(candidates) % spec.n_genres,
        "user_age": torch.full((count,), users[user_id]),
        "user_gender": torch.full((count,), 1 + user_id % (spec.n_genders - 1)),
        "user_occupation": torch.full((count,), user_id % spec.n_occupations),
    }
    model, _ = load_checkpoint(world["root"] / "trained" / name / "model.pt")
    with torch.no_grad():
        return model(batch).double().numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_served_scores_equal_offline_scores(world, name: str) -> None:
    ranker, config = local_ranker(world, name)
    candidates = [5, 17, 3, 42, 59, 8, 23]
    response = ranker.rank(RankRequest(user_id=3, candidate_items=candidates, timestamp=NOW))
    served = {item.item_id: item.logit for item in response.items}
    expected = offline_logits(world, name, 3, candidates)
    np.testing.assert_allclose([served[c] for c in candidates], expected, atol=1e-5, rtol=0)
    assert [i.item_id for i in response.items] == [
        candidates[j] for j in np.argsort(-expected, kind="stable")
    ]
    assert response.model_tag == world["tags"][name] and response.model_name == name
    assert response.history_length == world["spec"].max_history_length
    assert not (response.unknown_user or response.feature_fallback or response.degraded_memory)
    assert (len(config.shard_tags) == 2) == (name == "lmn")


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_scoring_equals_offline_scores(world, name: str) -> None:
    """The serving default: torch.compile'd scoring (LMN: its backbone), compiled at warm-up for one and
    several candidates, then any candidate count and an empty history without a new compile."""
    ranker, _ = local_ranker(world, name, compile=True)
    scorer = ranker.scorers["main"]
    assert scorer.compiled
    ranker.warm_up()
    assert scorer.compiled, "the compile failed at warm-up and fell back to eager"
    import torch._dynamo

    for candidates in ([5, 17, 3, 42, 59, 8, 23], [9], list(range(1, 60))):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        response = ranker.rank(RankRequest(user_id=3, candidate_items=candidates, timestamp=NOW))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before, "recompiled"
        served = {item.item_id: item.logit for item in response.items}
        expected = offline_logits(world, name, 3, candidates)
        np.testing.assert_allclose([served[c] for c in candidates], expected, atol=1e-5, rtol=0)
    empty = ranker.rank(RankRequest(user_id=11, candidate_items=[1, 2, 3], timestamp=NOW))
    assert empty.unknown_user and all(np.isfinite(i.logit) for i in empty.items)


def test_top_k_and_history_override(world) -> None:
    ranker, _ = local_ranker(world, "din")
    full = ranker.rank(RankRequest(user_id=2, candidate_items=list(range(1, 31)), timestamp=NOW))
    top = ranker.rank(RankRequest(user_id=2, candidate_items=list(range(1, 31)), top_k=5, timestamp=NOW))
    assert [i.item_id for i in top.items] == [i.item_id for i in full.items[:5]]
    override = {"items": [4, 4, 9], "timestamps": [NOW - 900, NOW - 600, NOW - 60]}
    other = ranker.rank(RankRequest(user_id=2, candidate_items=[1, 2, 3], history=override, timestamp=NOW))
    assert other.history_length == 3


def test_each_request_reports_its_stages_within_its_latency(world) -> None:
    from longrec.serving.ranker import RankerMetrics

    ranker, _ = local_ranker(world, "lmn")
    requests, stages = [], []
    ranker.metrics = RankerMetrics(
        observe_request=lambda arm, seconds: requests.append(seconds),
        observe_stage=lambda stage, seconds: stages.append((stage, seconds)),
    )
    ranker.rank(RankRequest(user_id=2, candidate_items=[1, 2, 3], timestamp=NOW))
    assert [stage for stage, _ in stages] == ["features", "score", "respond"]
    assert all(seconds >= 0 for _, seconds in stages)
    assert sum(seconds for _, seconds in stages) >= requests[0]  # respond ends after the request's clock


def test_unknown_user_is_scored_with_an_empty_history_and_flagged(world) -> None:
    ranker, _ = local_ranker(world, "lmn")
    for user in (11, 10_000):  # in the vocabulary without events; outside the vocabulary
        response = ranker.rank(RankRequest(user_id=user, candidate_items=[1, 2, 3], timestamp=NOW))
        assert response.unknown_user and response.history_length == 0 and len(response.items) == 3
        assert all(np.isfinite(i.score) for i in response.items)


def test_unknown_items_are_rejected_naming_the_field(world) -> None:
    ranker, _ = local_ranker(world, "din")
    with pytest.raises(UnknownItemError, match="candidate_items.*60"):
        ranker.rank(RankRequest(user_id=1, candidate_items=[1, 60]))
    with pytest.raises(UnknownItemError, match="history.items"):
        ranker.rank(RankRequest(user_id=1, candidate_items=[1], history={"items": [99], "timestamps": [1]}))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "7", "candidate_items": [1]}, "user_id"),
        ({"user_id": 1, "candidate_items": []}, "candidate_items"),
        ({"user_id": 1, "candidate_items": list(range(1, 1002))}, "candidate_items"),
        ({"user_id": 1, "candidate_items": [1, -4]}, "candidate_items"),
        ({"user_id": 1, "candidate_items": [1, 0]}, "candidate_items"),
        ({"user_id": -1, "candidate_items": [1]}, "user_id"),
        ({"user_id": 1, "candidate_items": [1.5]}, "candidate_items"),
        ({"user_id": 1, "candidate_items": [1], "top_k": 0}, "top_k"),
        ({"user_id": 1, "candidate_items": [1], "history": {"items": [1, 2], "timestamps": [1]}}, "history"),
        ({"user_id": 1, "candidate_items": [1], "surprise": 1}, "surprise"),
    ],
)
def test_request_limits_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RankRequest.model_validate(body)


def test_corrupted_model_file_is_named(world, tmp_path: Path) -> None:
    ranker, config = local_ranker(world, "din")
    model_dir = tmp_path / "model"
    shutil.copytree(ranker.scorers["main"].model_dir, model_dir)
    with (model_dir / "model.pt").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00garbage\x00")
    with pytest.raises(ModelFileError, match="model.pt.*checksum"):
        build_ranker(config, model_dir, with_metrics=False)


def test_corrupted_shard_file_is_named(world, tmp_path: Path) -> None:
    _, config = local_ranker(world, "lmn")
    from longrec.registry.store import ModelRegistry

    shard_dir = tmp_path / "shard1"
    shutil.copytree(ModelRegistry(world["root"] / "registry").model_path(config.shard_tags[1]), shard_dir)
    values = next(shard_dir.glob("values-00001-*.safetensors"))
    values.write_bytes(values.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(MemoryShardError, match=rf"memory shard 1 \({values.name}\) fails its checksum"):
        ShardValues(shard_dir, 1)


def test_lmn_reads_memory_once_per_shard_beside_the_attention(world) -> None:
    """One request asks each shard once (history and target reads together), and the backbone's attention
    does not wait for those calls: shards answering in 0.3 s cost one 0.3 s, not two in a row."""
    ranker, _ = local_ranker(world, "lmn", shard_timeout_s=2.0)
    scorer = ranker.scorers["main"]
    memory = scorer.model.sharded_memory
    healthy = list(memory.clients)
    calls: list[tuple[int, float, float]] = []
    backbone_spans: list[tuple[float, float]] = []

    def slow(shard):
        def gather(slots):
            started = time.perf_counter()
            time.sleep(0.3)
            rows = healthy[shard](slots)
            calls.append((shard, started, time.perf_counter()))
            return rows

        return gather

    score_candidates = scorer.model.backbone.score_candidates

    def timed_backbone(*args):
        started = time.perf_counter()
        out = score_candidates(*args)
        backbone_spans.append((started, time.perf_counter()))
        return out

    request = RankRequest(user_id=3, candidate_items=[5, 17, 3, 42], timestamp=NOW)
    expected = offline_logits(world, "lmn", 3, [5, 17, 3, 42])
    memory.clients[:] = [slow(0), slow(1)]
    scorer.model.backbone.score_candidates = timed_backbone
    try:
        started = time.perf_counter()
        response = ranker.rank(request)
        elapsed = time.perf_counter() - started
    finally:
        memory.clients[:] = healthy
        del scorer.model.backbone.score_candidates
    assert sorted(shard for shard, _, _ in calls) == [0, 1]
    assert elapsed < 0.55, f"the two shards' 0.3 s answers took {elapsed:.2f} s: calls in series"
    ((begin, end),) = backbone_spans
    assert all(begin < call_end for _, _, call_end in calls), "the attention waited for the memory reads"
    assert not response.degraded_memory
    served = {item.item_id: item.logit for item in response.items}
    np.testing.assert_allclose([served[c] for c in [5, 17, 3, 42]], expected, atol=1e-5, rtol=0)


def test_dead_shard_degrades_within_the_timeout_and_recovers(world) -> None:
    ranker, _ = local_ranker(world, "lmn", shard_timeout_s=0.2, shard_retry_after_s=0.3)
    memory = ranker.scorers["main"].model.sharded_memory
    healthy = memory.clients[1]
    request = RankRequest(user_id=4, candidate_items=list(range(1, 40)), timestamp=NOW)
    normal = ranker.rank(request)

    def hanging(slots):
        time.sleep(2.0)
        return healthy(slots)

    memory.clients[1] = hanging
    started = time.perf_counter()
    degraded = ranker.rank(request)
    assert time.perf_counter() - started < 1.0
    assert degraded.degraded_memory and len(degraded.items) == 39
    skipped = ranker.rank(request)  # inside retry_after: not asked at all
    assert skipped.degraded_memory
    memory.clients[1] = healthy
    time.sleep(0.35)
    recovered = ranker.rank(request)
    assert not recovered.degraded_memory
    assert [i.logit for i in recovered.items] == [i.logit for i in normal.items]


def assert_user_rows_match_get_online_features(online, users) -> None:
    """The ranker's direct ``online_read`` of a user returns what Feast's ``get_online_features`` does."""
    from longrec.features.definitions import SEQUENCE_FEATURES, SEQUENCE_VIEW, USER_FEATURES, USER_VIEW

    features = [f"{SEQUENCE_VIEW}:{name}" for name in SEQUENCE_FEATURES]
    features += [f"{USER_VIEW}:{name}" for name in USER_FEATURES]
    for user in users:
        expected = online.store.get_online_features(features=features, entity_rows=[{"user_id": user}])
        expected = {k: v[0] for k, v in expected.to_dict().items() if k != "user_id"}
        assert online.read_user_row(user) == expected, user


def test_user_rows_read_directly_equal_get_online_features(world) -> None:
    """Users with a history, users without one (side features only) and ids the store has never seen."""
    from longrec.serving.features import OnlineFeatures

    online = OnlineFeatures(world["repo"], world["spec"].n_items)
    users = sorted(set(world["events"]["user_id"].tolist()))
    assert_user_rows_match_get_online_features(online, users[:3] + [users[-1], 10**9, -3])
    assert online.user(users[0]).found and len(online.user(users[0]).items) == 8
    assert not online.user(10**9).found and not online.user(10**9).fallback


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_down_falls_back_and_recovers(world, tmp_path: Path) -> None:
    events, items, users = demo_frames(world["spec"], events_per_user=11)
    port = free_port()
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        store = create_feature_repo(
            tmp_path / "repo", events, items, users, world["spec"].max_history_length,
            online_store={"type": "redis", "connection_string": f"localhost:{port}"},
        )  # fmt: skip
        materialize(store)
        ranker, _ = local_ranker(world, "din", feature_repo=str(tmp_path / "repo"))
        request = RankRequest(user_id=3, candidate_items=[1, 2, 3, 4], timestamp=NOW)
        normal = ranker.rank(request)
        assert not normal.feature_fallback and normal.history_length == 8
        assert_user_rows_match_get_online_features(ranker.features, [1, 3, 10**9])
        server.terminate()
        server.wait(timeout=10)
        down = ranker.rank(request)
        assert down.feature_fallback and down.history_length == 0 and not down.unknown_user
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # empty again: materialize anew
        time.sleep(0.5)
        materialize(store)
        back = ranker.rank(request)
        assert not back.feature_fallback and [i.logit for i in back.items] == [i.logit for i in normal.items]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def service_module(world, monkeypatch, tmp_path: Path):
    """serving/service.py imported fresh for the stored LMN model (the registry as BentoML's model store);
    the global model store and the module are put back afterwards."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    config = prepare_serving(world["root"] / "registry", world["tags"]["lmn"], 2, world["repo"])
    monkeypatch.setenv("LONGREC_SERVING_CONFIG", str(config.to_json(tmp_path / "serving.json")))
    BentoMLContainer.model_store.set(ModelStore(str(world["root"] / "registry" / "models")))
    sys.modules.pop("serving.service", None)
    try:
        yield importlib.import_module("serving.service")
    finally:
        sys.modules.pop("serving.service", None)
        BentoMLContainer.model_store.reset()


def test_service_classes_in_process(world, service_module) -> None:
    service = service_module
    assert set(service.Ranker.dependencies) == {"memory_shard_0", "memory_shard_1"}
    ranker = service.Ranker()  # its shard dependencies are instantiated in process too
    assert ranker.__is_ready__()
    response = asyncio.run(ranker.rank(user_id=3, candidate_items=[5, 17, 3], timestamp=NOW))
    expected = offline_logits(world, "lmn", 3, [5, 17, 3])
    np.testing.assert_allclose(sorted(i.logit for i in response.items), sorted(expected), atol=1e-5)
    shard = service.Ranker.dependencies["memory_shard_1"].on()
    assert shard.lookup(np.array([128, 255])).shape == (2, 8)
    assert asyncio.run(shard.gather(slots=np.array([128, 255]))).shape == (2, 8)  # the served API


def test_a_bento_served_by_dataset_logs_requests_to_the_rollout_folder(tmp_path: Path, monkeypatch) -> None:
    """A Bento's bundled config names no rollout folder: serving it by dataset passes one by environment,
    so its requests reach the request log as a generated config's do."""
    from longrec.serving.config import ServingConfig
    from longrec.serving.run import ServeTarget

    target = ServeTarget("m:v", bento_tag="b:v", rollout_dir=str(tmp_path / "rollout"))
    _, env = target.process(tmp_path, 1).command()
    assert env["LONGREC_ROLLOUT_DIR"] == str(tmp_path / "rollout")
    bundled = ServingConfig(model_tag="m:v", model_name="din", dataset="ml-100k")
    monkeypatch.setenv("LONGREC_ROLLOUT_DIR", env["LONGREC_ROLLOUT_DIR"])
    assert bundled.with_environment().rollout_dir == str(tmp_path / "rollout")


def test_ranker_threads_are_measured_by_default_and_follow_the_environment(world, monkeypatch) -> None:
    """Threads 0 (the default): the fastest of (torch, attention kernel) = (1, 1), (N, N) and, with the fused
    kernel, (1, N) on a synthetic full-length request is kept; counts set in the config or
    LONGREC_TORCH_THREADS / LONGREC_ATTENTION_THREADS are used as given (the kernel follows torch's count
    unless its own is set)."""
    from longrec.kernels.din_attention import kernel_threads, set_kernel_threads
    from longrec.serving.config import ServingConfig
    from longrec.serving.service_support import quiet_threads, set_ranker_threads, usable_cpus

    config = ServingConfig(model_tag="m:v", model_name="din")
    assert config.torch_threads == 0 and config.attention_threads == 0
    monkeypatch.setenv("LONGREC_TORCH_THREADS", "3")
    monkeypatch.setenv("LONGREC_ATTENTION_THREADS", "2")
    assert config.with_environment().torch_threads == 3
    assert config.with_environment().attention_threads == 2
    ranker, _ = local_ranker(world, "din")
    before = torch.get_num_threads()
    try:
        assert ranker.scorers["main"].fused_attention  # the serving default
        timings = ranker.choose_threads(2, candidates=20, repeats=3)
        assert set(timings) == {(1, 1), (1, 2), (2, 2)} and all(seconds > 0 for seconds in timings.values())
        assert (torch.get_num_threads(), kernel_threads()) == min(timings, key=timings.get)
        assert set(ranker.choose_threads(2, candidates=20, repeats=1, attention_threads=2)) == {(1, 2), (2, 2)}
        assert kernel_threads() == 2
        assert (
            set_ranker_threads(ranker, ServingConfig("m:v", "din", torch_threads=1), with_metrics=False) == 1
        )
        assert torch.get_num_threads() == 1 and kernel_threads() == 1
        set_ranker_threads(ranker, ServingConfig("m:v", "din", torch_threads=1, attention_threads=2), False)
        assert torch.get_num_threads() == 1 and kernel_threads() == 2
        assert set_ranker_threads(ranker, ServingConfig("m:v", "din"), with_metrics=False) in {
            1,
            usable_cpus(),
        }
        assert quiet_threads(0) == usable_cpus() == torch.get_num_threads()
        lmn, _ = local_ranker(world, "lmn")  # timed through its backbone: the shards are not up at start-up
        assert set(lmn.choose_threads(2, candidates=5, repeats=1)) == {(1, 1), (1, 2), (2, 2)}
        recblr, _ = local_ranker(world, "recblr")  # no attention kernel: torch's count alone
        assert set(recblr.choose_threads(2, candidates=5, repeats=1)) == {(1, 1), (2, 2)}
    finally:
        set_kernel_threads(None)
        torch.set_num_threads(before)


def test_thread_choice_repeats_a_measurement_other_processes_disturbed(world, monkeypatch) -> None:
    """Other processes busy during the measurement (the machine's busy CPU time grows faster than this
    process's own): measured again after a pause, and the quiet attempt's timings decide. Busy through
    every attempt: the least disturbed one decides, after THREAD_CHOICE_ATTEMPTS."""
    from longrec.kernels.din_attention import kernel_threads, set_kernel_threads
    from longrec.serving import ranker as ranker_module

    ranker, _ = local_ranker(world, "din")
    attempts = iter(
        [  # per attempt: (other processes' busy seconds during it, its timings)
            (5.0, {(1, 1): 0.010, (1, 2): 0.030, (2, 2): 0.030}),  # a second core looked worthless
            (0.0, {(1, 1): 0.020, (1, 2): 0.011, (2, 2): 0.015}),
        ]
    )
    busy = {"seconds": 0.0}

    def fake_time_settings(scorer, batches, settings, repeats):
        other, timings = next(attempts)
        busy["seconds"] += other
        return timings

    monkeypatch.setattr(ranker, "_time_settings", fake_time_settings)
    monkeypatch.setattr(ranker_module, "_busy_cpu_seconds", lambda: busy["seconds"])
    monkeypatch.setattr(ranker_module, "THREAD_CHOICE_PAUSE_S", 0.0)
    before = torch.get_num_threads()
    try:
        timings = ranker.choose_threads(2, candidates=5, repeats=1)
        assert timings[(1, 2)] == 0.011 and (torch.get_num_threads(), kernel_threads()) == (1, 2)
        assert ranker.thread_choice["attempts"] == ranker.thread_choice["deciding_attempt"] == 2
        assert ranker.thread_choice["other_cpus"] == 0.0  # exported as longrec_ranker_thread_choice_*
        attempts = iter([(5.0, {(1, 1): 0.010, (1, 2): 0.030, (2, 2): 0.030})] * 3 + [
            (1.0, {(1, 1): 0.020, (1, 2): 0.012, (2, 2): 0.015})
        ])  # fmt: skip
        monkeypatch.setattr(ranker, "_time_settings", fake_time_settings)
        timings = ranker.choose_threads(2, candidates=5, repeats=1)
        assert next(attempts, None) is None  # all four attempts ran
        assert timings[(1, 2)] == 0.012 and (torch.get_num_threads(), kernel_threads()) == (1, 2)
        assert ranker.thread_choice["attempts"] == ranker.thread_choice["deciding_attempt"] == 4
    finally:
        set_kernel_threads(None)
        torch.set_num_threads(before)


def test_usable_cpus_honour_a_cgroup_cpu_limit(tmp_path: Path) -> None:
    """A pod's CPU limit caps the default threads; the affinity alone would show every core of the node."""
    from longrec.serving.service_support import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{100000 * (affinity + 8)} 100000\n")  # a limit above the affinity
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity  # cgroup v1 or none: the affinity


@pytest.fixture(scope="module")
def long_models(tmp_path_factory):
    """One stored model of each type at L=40 (random weights), for histories much shorter than L."""
    from longrec.serving.demo import write_model_dir

    root = tmp_path_factory.mktemp("trim")
    spec = demo_spec(max_history_length=40)
    for name, overrides in MODELS.items():
        torch.manual_seed(1)
        write_model_dir(build_model(name, spec, overrides), root / name)
    return root


def _history(length: int) -> dict:
    rng = np.random.default_rng(length)
    return {
        "items": rng.integers(1, 60, length).tolist(),
        "timestamps": sorted(rng.integers(NOW - 10**6, NOW, length).tolist()),
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_trimmed_history_scores_equal_the_padded_length(long_models, name: str) -> None:
    """Scoring each history cut to its valid events (the serving default) gives the scores of the full,
    padded L for every model type: short, step-sized, just-over-a-step, full and over-long histories, and
    an empty one. Compiled (with the fused attention kernel where the model has DIN's attention), short
    and long widths share the graph compiled at warm-up. Trimmed LMN reads
    its memory as served (shard clients, beside the attention); padded, its own table."""
    from longrec.serving.ranker import ModelScorer, Ranker

    def ranker(trim: bool, compiled: bool) -> Ranker:
        scorer = ModelScorer(long_models / name, f"trim-{name}")
        if compiled:  # as served: the fused attention kernel (DIN, LMN, IMN) inside the compiled graph
            scorer.enable_fused_attention()
            scorer.enable_compile()
        if scorer.needs_memory and trim:  # as served: shard clients, reads beside the attention
            from longrec.serving.memory import RemoteShardedMemory, load_memory_index

            memory_dir = long_models / name / "memory"
            clients = [ShardValues(memory_dir, i).gather for i in range(4)]
            scorer.attach_memory(RemoteShardedMemory(load_memory_index(memory_dir), clients))
        built = Ranker({"main": scorer}, None, trim_history=trim)
        built.warm_up()
        return built

    full, trimmed, compiled = ranker(False, False), ranker(True, False), ranker(True, True)
    import torch._dynamo

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    candidates = [5, 17, 3, 42, 59, 8, 23]
    for length in (0, 1, 3, 16, 17, 40, 55):
        history = _history(length) if length else None
        request = RankRequest(user_id=3, candidate_items=candidates, history=history, timestamp=NOW)
        expected = [item.logit for item in full.rank(request).items]
        assert [item.logit for item in trimmed.rank(request).items] == pytest.approx(expected, abs=1e-6)
        response = compiled.rank(request)
        assert [item.logit for item in response.items] == pytest.approx(expected, abs=1e-5)
        assert response.history_length == min(length, 40)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a history width recompiled"


def test_trim_history_padding_keeps_the_valid_events() -> None:
    from longrec.serving.features import trim_history_padding

    mask = torch.zeros(1, 100, dtype=torch.bool)
    mask[0, :20] = True
    batch = {"history_items": mask.long() * 7, "history_mask": mask, "user_id": torch.tensor([3])}
    trimmed = trim_history_padding(batch, step=16)
    assert trimmed["history_items"].shape == (1, 32) and trimmed["history_mask"].sum() == 20
    assert trimmed["history_mask"].stride() == (32, 1)  # as an untrimmed batch's: one compiled graph
    assert trimmed["user_id"] is batch["user_id"]
    empty = torch.zeros(1, 100, dtype=torch.bool)
    assert trim_history_padding({"history_mask": empty}, 16)["history_mask"].shape == (1, 16)
    assert trim_history_padding({"history_mask": mask[:, :10]}, 16)["history_mask"].shape == (1, 10)


def test_no_request_compiles_after_the_thread_count_is_set(long_models) -> None:
    """Compiled graphs are specialised to the thread count. The service warms up under torch's default
    (every core of the node), then sets its own count: it warms again, so requests of one or many
    candidates, short or full histories, run without a compile."""
    import torch._dynamo

    from longrec.serving.config import ServingConfig
    from longrec.serving.ranker import ModelScorer, Ranker
    from longrec.serving.service_support import set_ranker_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        scorer = ModelScorer(long_models / "din", "threads-din")
        scorer.enable_compile()
        ranker = Ranker({"main": scorer}, None)
        ranker.warm_up()
        set_ranker_threads(ranker, ServingConfig("m:v", "din", torch_threads=1), with_metrics=False)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for candidates, length in (([5], 3), ([5, 17, 3], 40), (list(range(1, 30)), 17)):
            request = RankRequest(
                user_id=3, candidate_items=candidates, history=_history(length), timestamp=NOW
            )
            ranker.rank(request)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a request compiled"
    finally:
        torch.set_num_threads(before)
