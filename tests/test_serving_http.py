"""Serving over HTTP: `bentoml serve` of an LMN ranker with 2 MemoryShard services on loopback, started
once for the module; bad bodies (4xx, never 5xx, bounded schemathesis run), metrics, a killed shard, and a
corrupted file keeping a second server from becoming ready."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_serving import NOW, offline_logits, world  # noqa: F401  (the module-scoped world fixture)

from longrec.serving.package import prepare_serving
from longrec.serving.process import ServeError, ServeProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(world):  # noqa: F811
    config = prepare_serving(world["root"] / "registry", world["tags"]["lmn"], 2, world["repo"])
    config.shard_timeout_s = 0.3
    with ServeProcess(world["root"] / "registry", free_port(), config=config) as process:
        yield process


def rank(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/rank", json=body, timeout=10, **kwargs)


def test_health_ready_and_parity_over_http(server, world) -> None:  # noqa: F811
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    candidates = [5, 17, 3, 42, 59, 8, 23]
    response = rank(server, {"user_id": 3, "candidate_items": candidates, "timestamp": NOW})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_tag"] == world["tags"]["lmn"] and body["model_name"] == "lmn"
    assert not (body["unknown_user"] or body["feature_fallback"] or body["degraded_memory"])
    served = {item["item_id"]: item["logit"] for item in body["items"]}
    expected = offline_logits(world, "lmn", 3, candidates)
    np.testing.assert_allclose([served[c] for c in candidates], expected, atol=1e-5, rtol=0)
    top = rank(server, {"user_id": 3, "candidate_items": candidates, "top_k": 2, "timestamp": NOW}).json()
    assert [i["item_id"] for i in top["items"]] == [i["item_id"] for i in body["items"][:2]]


def test_unknown_user_is_flagged(server) -> None:
    body = rank(server, {"user_id": 9_999, "candidate_items": [1, 2, 3]}).json()
    assert body["unknown_user"] and body["history_length"] == 0 and len(body["items"]) == 3


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"user_id": "seven", "candidate_items": [1]}, 400, "user_id"),
        ({"user_id": 1, "candidate_items": []}, 400, "candidate_items"),
        ({"user_id": 1, "candidate_items": list(range(1, 1002))}, 400, "candidate_items"),
        ({"user_id": 1, "candidate_items": [3, -1]}, 400, "candidate_items"),
        ({"user_id": -2, "candidate_items": [3]}, 400, "user_id"),
        ({"user_id": 1, "candidate_items": [3, 600]}, 400, "candidate_items"),  # outside the vocabulary
        (
            {"user_id": 1, "candidate_items": [3], "history": {"items": [77], "timestamps": [1]}},
            400,
            "history",
        ),
        ({"user_id": 1, "candidate_items": [3], "top_k": 5000}, 400, "top_k"),
    ],
)
def test_bad_bodies_are_4xx_naming_the_field(server, body, status, field) -> None:
    response = rank(server, body)
    assert response.status_code == status, response.text
    assert field in response.text
    # One shape for every rejection: an object whose "error" says what is wrong (BentoML alone answers
    # the model's own rejections, e.g. an unknown item id, as a one-element list).
    answer = response.json()
    assert isinstance(answer, dict) and isinstance(answer["error"], str), answer


def test_oversized_non_json_and_pickle_bodies_are_rejected(server) -> None:
    big = json.dumps({"user_id": 1, "candidate_items": [1], "pad": "x" * (1 << 20)})
    response = httpx.post(f"{server.url}/rank", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.text
    import pickle

    payload = pickle.dumps({"user_id": 1, "candidate_items": [1]})
    for content_type in ("application/vnd.bentoml+pickle", "application/octet-stream", "text/plain"):
        response = httpx.post(f"{server.url}/rank", content=payload, headers={"content-type": content_type})
        assert response.status_code == 415 and "application/json" in response.text
    response = httpx.post(
        f"{server.url}/rank", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "json" in response.text.lower()


def test_metrics_count_requests_latency_flags_and_shards(server) -> None:
    rank(server, {"user_id": 9_999, "candidate_items": [1, 2]})
    rank(server, {"user_id": 3, "candidate_items": list(range(1, 60)), "timestamp": NOW})  # both shards read
    assert rank(server, {"user_id": 1, "candidate_items": [10**6]}).status_code == 400  # counted, invalid
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "longrec_rank_requests_total",
        "longrec_rank_latency_seconds_bucket",
        "longrec_rank_errors_total",
        'longrec_rank_flags_total{flag="unknown_user"}',
        'longrec_memory_shard_latency_seconds_bucket{le="0.001",shard="1"}',
        'longrec_gc_pause_seconds_count{generation="0"}',  # the collector has run since start-up
        *(
            f'longrec_rank_stage_seconds_count{{stage="{stage}"}}'
            for stage in ("features", "score", "respond")
        ),
        "bentoml_service_request_total",
        # the shards' own metric of their raw route, which their servers answer ahead of BentoML's
        # middleware (so BentoML's request metrics never see that route)
        'longrec_memory_shard_gather_seconds_count{shard="1",status="200"}',
    ):
        assert name in text, name
    assert 'endpoint="/raw/gather"' not in text
    # The suite serves with LONGREC_TORCH_THREADS=1 (tests/conftest.py): the server reports what it uses.
    assert "longrec_ranker_torch_threads 1.0" in text
    assert "longrec_ranker_attention_threads 1.0" in text  # the kernel follows a set torch count
    assert 'longrec_ranker_fused_attention{arm="main"} 1.0' in text  # LMN's attention runs the CPU kernel


def test_schemathesis_finds_no_5xx(server) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    operation = schema["/rank"]["POST"]
    failures = []

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy())
    def check(case) -> None:
        response = case.call(base_url=server.url, timeout=10)
        if response.status_code >= 500:
            failures.append((case.body, response.status_code, response.text[:200]))

    check()
    assert not failures, failures[:3]


def test_killed_shard_degrades_within_the_timeout_and_recovers(server) -> None:
    import os
    import signal

    body = {"user_id": 4, "candidate_items": list(range(1, 50)), "timestamp": NOW}
    normal = rank(server, body).json()
    assert not normal["degraded_memory"]
    (pid,) = server.worker_pids("MemoryShard1")
    os.kill(pid, signal.SIGKILL)
    degraded_seen, deadline = False, time.monotonic() + 90
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = rank(server, body)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200 and elapsed < 3.0, (response.status_code, elapsed)
        result = response.json()
        degraded_seen |= result["degraded_memory"]
        if degraded_seen and not result["degraded_memory"]:
            break  # the shard is back (restarted by the server) and answers again
        time.sleep(0.2)
    assert degraded_seen, "no response was flagged while the shard was down"
    assert not result["degraded_memory"], "the shard never came back"
    assert [i["logit"] for i in result["items"]] == pytest.approx(
        [i["logit"] for i in normal["items"]], abs=1e-9
    )


def test_corrupted_shard_file_keeps_the_service_unready_naming_it(world, tmp_path: Path) -> None:  # noqa: F811
    registry = tmp_path / "registry"
    shutil.copytree(world["root"] / "registry" / "models", registry / "models")
    config = prepare_serving(registry, world["tags"]["lmn"], 2, world["repo"])
    from longrec.registry.store import ModelRegistry

    shard_dir = ModelRegistry(registry).model_path(config.shard_tags[0])
    values = next(shard_dir.glob("values-00000-*.safetensors"))
    values.write_bytes(b"\x00" * 16 + values.read_bytes()[16:])
    process = ServeProcess(registry, free_port(), config=config)
    try:
        process.start()
        answer, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and process.process.poll() is None:
            answer = process.readyz()
            if answer is not None and answer.status_code != 200 and values.name in answer.text:
                break
            assert answer is None or answer.status_code != 200, "a corrupted shard must not become ready"
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 503, process.log_tail()
        assert f"memory shard 0 ({values.name}) fails its checksum" in answer.text
        # A request gets the reason too, not BentoML's generic "unexpected error".
        response = httpx.post(f"{process.url}/rank", json={"user_id": 1, "candidate_items": [1]}, timeout=10)
        assert response.status_code == 503 and values.name in response.json()["error"], response.text
        with pytest.raises(ServeError, match=values.name):
            process.wait_ready(timeout=2)
    finally:
        process.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_stopped_under_a_served_ranker_falls_back_and_recovers(world, tmp_path: Path) -> None:  # noqa: F811
    import subprocess

    from longrec.features.store import create_feature_repo, materialize
    from longrec.serving.demo import demo_frames

    port = free_port()
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    server = None
    try:
        time.sleep(0.5)
        events, items, users = demo_frames(world["spec"], events_per_user=11)
        store = create_feature_repo(
            tmp_path / "repo", events, items, users, world["spec"].max_history_length,
            online_store={"type": "redis", "connection_string": f"localhost:{port}"},
        )  # fmt: skip
        materialize(store)
        config = prepare_serving(world["root"] / "registry", world["tags"]["din"], 2, tmp_path / "repo")
        server = ServeProcess(world["root"] / "registry", free_port(), config=config).__enter__()
        body = {"user_id": 3, "candidate_items": [1, 2, 3, 4], "timestamp": NOW}
        normal = rank(server, body).json()
        assert not normal["feature_fallback"] and normal["history_length"] == 8
        redis.terminate()
        redis.wait(timeout=10)
        started = time.perf_counter()
        down = rank(server, body)
        assert down.status_code == 200 and time.perf_counter() - started < 5
        assert down.json()["feature_fallback"] and down.json()["history_length"] == 0
        assert 'longrec_rank_flags_total{flag="feature_fallback"}' in httpx.get(f"{server.url}/metrics").text
        redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # back, empty: materialize again
        time.sleep(0.5)
        materialize(store)
        back = rank(server, body).json()
        assert not back["feature_fallback"] and back["items"] == normal["items"]
    finally:
        if server is not None:
            server.stop()
        redis.terminate()
        redis.wait(timeout=10)
