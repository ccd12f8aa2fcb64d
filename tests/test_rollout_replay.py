"""Replayed A/B tests on MovieLens-100k against a stub ranker over HTTP (tests/rollout_stub.py stands in for
the BentoML service of serving/): a better ranker ramps and is promoted, a random one is rolled back before
full traffic, and served histories cut short raise the drift alert."""

import json

import httpx
import numpy as np
import pytest
from rollout_helpers import DATASET, registry_with_models
from rollout_stub import StubRanker, serve

from longrec.data.datasets import load_dataset
from longrec.rollout.decide import Rollout
from longrec.rollout.operate import replayed_ab, step_with_reports
from longrec.rollout.replay import click_position, replay, replay_requests
from longrec.rollout.requestlog import RequestLogger, read_requests
from longrec.rollout.state import StatsConfig

FAST = StatsConfig(min_impressions_per_arm=150)


@pytest.fixture(scope="module")
def movielens():
    dataset = load_dataset("ml-100k")
    return dataset, replay_requests(dataset, n_negatives=49)


@pytest.fixture()
def setup(tmp_path, movielens):
    dataset, requests = movielens
    registry, (control, candidate) = registry_with_models(tmp_path)
    rollout = Rollout(DATASET, state_dir=tmp_path / "rollout", registry=registry, actor="test")

    def start_service(scorers, **options):
        ranker = StubRanker(
            dataset, dataset_key=DATASET, state_dir=tmp_path / "rollout", log_path=rollout.request_log,
            production_tag=control, scorers={control: scorers[0], candidate: scorers[1]}, **options,
        )  # fmt: skip
        server, url = serve(ranker)
        servers.append(server)
        return ranker, url

    servers = []
    yield rollout, control, candidate, start_service, requests
    for server in servers:
        server.shutdown()
    rollout.close()


def test_replay_requests_are_test_period_interactions_with_sampled_negatives(movielens):
    dataset, requests = movielens
    assert len(requests) > 8000
    assert all(len(r.candidate_items) == 50 and r.target_item in r.candidate_items for r in requests[:500])
    assert len({tuple(sorted(r.candidate_items)) for r in requests[:500]}) == 500
    times = [r.as_of for r in requests]
    assert times == sorted(times)
    events = dataset.events
    cutoff = events["timestamp"].min() + 0.9 * (events["timestamp"].max() - events["timestamp"].min())
    assert min(times) >= cutoff
    # the true item sits at a random slot, not always first
    slots = [r.candidate_items.index(r.target_item) for r in requests[:1000]]
    assert 15 < np.mean(slots) < 35
    assert click_position([5, 3, 9], 3, 2) == 2 and click_position([5, 3, 9], 9, 2) == 0


def test_replay_logs_every_request_and_click(setup, tmp_path):
    rollout, control, candidate, start_service, requests = setup
    experiment = rollout.start(candidate, traffic=50)
    ranker, url = start_service(("popularity", "random"))
    log = RequestLogger(rollout.request_log)
    summary = replay(url, requests[:300], log, top_k=10, experiment_id=experiment.id, progress=False)
    frame = read_requests(rollout.request_log, experiment.id)
    assert summary.requests == len(frame) == 300 and summary.errors == 0
    assert set(frame["source"]) == {"service"}  # the service logged first; the replay's copies were ignored
    assert frame["clicked"].notna().all() and int(frame["clicked"].sum()) == summary.clicks
    assert (frame["history_length"] <= 50).all() and frame["latency_ms"].gt(0).all()
    # a service that is down: every request is logged as an error, nothing crashes
    down = replay(
        "http://127.0.0.1:9", requests[:5], log, experiment_id=experiment.id, progress=False, timeout_s=1
    )
    assert down.errors == 5
    assert (read_requests(rollout.request_log, experiment.id)["status"] == "error").sum() == 5


def test_better_ranker_ramps_and_is_promoted(setup):
    rollout, control, candidate, start_service, requests = setup
    rollout.start(candidate, traffic=5, test=FAST, salt="replay-test")
    _, url = start_service(("random", "popularity"))
    run = replayed_ab(rollout, url, requests, per_step=1500, max_steps=10, progress=False, drift=False)
    actions = [(s["traffic"], s["decision"]["action"]) for s in run.steps]
    assert run.final_status == "promoted", actions
    assert {traffic for traffic, action in actions if action == "ramp"} == {5.0, 25.0}
    assert actions[-1] == (50.0, "promote")
    assert rollout.registry.production(DATASET)["tag"] == candidate


def test_random_ranker_is_rolled_back_before_full_traffic(setup):
    rollout, control, candidate, start_service, requests = setup
    rollout.start(candidate, traffic=5, test=FAST, salt="replay-test")
    _, url = start_service(("popularity", "random"))
    run = replayed_ab(rollout, url, requests, per_step=1500, max_steps=10, progress=False, drift=False)
    assert run.final_status == "rolled_back", run.steps
    assert run.steps[-1]["traffic"] < 100
    assert rollout.registry.production(DATASET)["tag"] == control


def test_truncated_histories_raise_the_drift_alert(setup):
    rollout, control, candidate, start_service, requests = setup
    rollout.start(candidate, traffic=25, test=FAST, salt="replay-test")
    ranker, url = start_service(("popularity", "popularity"))
    log = RequestLogger(rollout.request_log)
    replay(url, requests[:1500], log, progress=False)
    healthy = step_with_reports(rollout, dataset_source="ml-100k")
    assert healthy.drift is not None and not healthy.drift["alert"], healthy.drift
    assert "drift" not in healthy.decision.reason
    ranker.truncate_history = 5  # a feature-serving bug: histories cut to their last 5 items
    replay(url, requests[1500:3000], log, progress=False)
    broken = step_with_reports(rollout)
    assert broken.drift["alert"] and broken.drift["columns"]["history_length"]["drifted"]
    assert not broken.drift["columns"]["recency_s"]["drifted"]
    assert broken.decision.action == "hold" and "drift alert" in broken.decision.reason
    for name in ("drift.html", "drift.json", "quality.html", "quality.json", "analysis.json"):
        assert (broken.folder / name).stat().st_size > 0
    assert json.loads((broken.folder / "drift.json").read_text())["metrics"]
    assert rollout.store.audit(rollout.current().id)[-1]["inputs"]["drift"]["alert"]


def test_stub_speaks_the_contract(setup):
    rollout, control, candidate, start_service, requests = setup
    _, url = start_service(("popularity", "random"))
    request = requests[0]
    body = {"user_id": request.user_id, "candidate_items": request.candidate_items, "top_k": 5}
    response = httpx.post(f"{url}/rank", json=body).json()
    assert len(response["items"]) == 5 and set(response["items"][0]) == {"item_id", "score", "logit"}
    assert response["arm"] == "control" and response["model_tag"] == control  # no experiment: production
    refused = httpx.post(f"{url}/rank", json={**body, "as_of": 1})  # extra fields: refused like the service
    assert refused.status_code == 400


def test_position_biased_clicks_fall_with_the_position(setup):
    rollout, control, candidate, start_service, requests = setup
    _, url = start_service(("popularity", "random"))
    log = RequestLogger(rollout.request_log)
    replay(url, requests[:600], log, click_model="position", seed=1, progress=False)
    frame = read_requests(rollout.request_log)
    shown = frame[frame["position"] > 0]
    assert len(shown) > 100
    # clicks only where the item was shown, and at about the examination probability 1/log2(1 + position)
    assert not frame.loc[frame["position"] == 0, "clicked"].any()
    expected = (1 / np.log2(shown["position"] + 1)).mean()
    assert abs(shown["clicked"].mean() - expected) < 0.08
    assert shown["clicked"].mean() < 1.0
