"""Serving's performance paths over HTTP: a DIN ranker served by `bentoml serve` with its default
torch.compile'd scoring (compiled at warm-up) answers /rank and the adaptive-batching /rank_batch with the
offline model's scores to 1e-5, for concurrent callers whose calls BentoML may join into one batch; a
request the model rejects answers an error in its own place without failing the batch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_serving import NOW, offline_logits, world  # noqa: F401  (the module-scoped world fixture)

from longrec.serving.package import prepare_serving
from longrec.serving.process import ServeProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def din_server(world):  # noqa: F811
    config = prepare_serving(world["root"] / "registry", world["tags"]["din"], 2, world["repo"])
    assert config.compile, "serving compiles the scoring path by default"
    with ServeProcess(world["root"] / "registry", free_port(), config=config) as process:
        yield process


def test_compiled_and_batched_ranking_over_http_equal_offline(din_server, world) -> None:  # noqa: F811
    url = din_server.url
    requests = [
        {"user_id": user, "candidate_items": candidates, "timestamp": NOW}
        for user, candidates in [
            (3, [5, 17, 3, 42, 59, 8, 23]),
            (2, [9]),
            (5, list(range(1, 41))),
            (3, [7, 8]),
        ]
    ]
    bad = {"user_id": 4, "candidate_items": [1, 60], "timestamp": NOW}  # 60 is outside the vocabulary

    def batched(body: dict) -> httpx.Response:
        return httpx.post(f"{url}/rank_batch", json={"requests": [body]}, timeout=30)

    with ThreadPoolExecutor(8) as pool:  # concurrent callers: the dispatcher may join their calls
        answers = list(pool.map(batched, requests * 3 + [bad]))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    *good, rejected = [answer.json() for answer in answers]
    assert len(rejected) == 1 and "candidate_items" in rejected[0]["error"] and "60" in rejected[0]["error"]
    for body, answer in zip(requests * 3, good, strict=True):
        assert len(answer) == 1 and "error" not in answer[0], answer
        served = {item["item_id"]: item["logit"] for item in answer[0]["items"]}
        expected = offline_logits(world, "din", body["user_id"], body["candidate_items"])
        np.testing.assert_allclose([served[c] for c in body["candidate_items"]], expected, atol=1e-5, rtol=0)
        single = httpx.post(f"{url}/rank", json=body, timeout=30).json()
        assert single == answer[0]  # /rank and /rank_batch answer alike
    assert httpx.post(f"{url}/rank", json=bad, timeout=30).status_code == 400
    # several requests in one call, in order
    both = httpx.post(f"{url}/rank_batch", json={"requests": requests[:2]}, timeout=30).json()
    assert [len(answer["items"]) for answer in both] == [7, 1]
    # the batch endpoint keeps /rank's guards: non-JSON 415, bad fields 4xx
    assert (
        httpx.post(
            f"{url}/rank_batch", content=b"\x80\x04", headers={"content-type": "application/octet-stream"}
        ).status_code
        == 415
    )
    assert (
        httpx.post(
            f"{url}/rank_batch", json={"requests": [{"user_id": 1, "candidate_items": []}]}
        ).status_code
        == 400
    )
