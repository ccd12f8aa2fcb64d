"""Replayed A/B tests on MovieLens-100k through the real ranker: `bentoml serve` of serving/service.py
(started by `resolve_target(...).process(...)` exactly as `longrec serve --dataset` and `make run` start it)
with the experiment's control as "main" and its candidate beside it, histories read from a Feast repo
materialized from the dataset, users routed by the experiment's sticky buckets, every request logged by the
service to the rollout's request log. The traffic is ML-100k's test period (`replay_requests`, 8,838
interactions of 150 users, true item + 49 sampled negatives, click when the true item is in the top 10).

The two models are registered DIN checkpoints over ML-100k's whole vocabulary (no training: the test must
stay fast, and it needs one model that truly ranks better and one that scores at random):
- "popular": DIN with a one-unit PReLU head that reads only the first component of the target item's
  embedding, set to log(1 + the item's training-period count): a real, weak recommender (popularity).
- "random": DIN with its random initial weights (Dice activations): scores unrelated to the true item.

Each test prints its figures (run with `-s`); the README's "With the real ranker" quotes them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longrec.serving.process import free_port

pytestmark = pytest.mark.slow

TRACK = "ml-100k"
L = 50  # the models' history length, and the replay's
SALT = "served-ab"
# Eager scoring (no torch.compile warm-up) and quiet OpenMP: quick test servers on shared cores.
SERVE_ENV = {"LONGREC_SERVING_COMPILE": "0", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def popularity_din(spec, popularity: np.ndarray):
    """A DIN whose logit is log(1 + training-period count) of the target item (history ignored)."""
    from longrec.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("din", spec, {"head_hidden": (1,), "activation": "prelu"})
    d = model.config.embedding_dim
    with torch.no_grad():
        model.item_embedding.weight[:, 0] = torch.from_numpy(np.log1p(popularity).astype(np.float32))
        model.item_embedding.weight[0].zero_()  # padding row stays zero
        first = model.head.linears[0]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, d] = 1.0  # head features are [interest (d), target (d), interest*target, side]
        model.head.output.weight.fill_(1.0)
        model.head.output.bias.zero_()
    return model.eval()


def random_din(spec):
    from longrec.models.registry import build_model

    torch.manual_seed(1)
    return build_model("din", spec, {}).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """ML-100k saved as the pipeline saves it, the two model folders, a materialized Feast repo (histories
    of length L, each user's latest), the training-period popularity and the test-period replay."""
    from longrec.data.datasets import load_dataset
    from longrec.features.store import create_feature_repo, materialize
    from longrec.rollout.drift import item_popularity
    from longrec.rollout.replay import replay_requests
    from longrec.serving.demo import write_model_dir

    root = tmp_path_factory.mktemp("served-ab")
    dataset = load_dataset(TRACK)
    dataset.save(root / "dataset")
    spec = dataset.feature_spec(L)
    popularity = item_popularity(dataset)
    models = {}
    for name, model in (("popular", popularity_din(spec, popularity)), ("random", random_din(spec))):
        folder = write_model_dir(model, root / f"model-{name}")
        (folder / "evaluation.json").write_text(json.dumps({"test_metrics": {}}))
        models[name] = folder
    store = create_feature_repo(
        root / "repo", dataset.events, dataset.item_features, dataset.user_features, L
    )
    materialize(store)
    requests = replay_requests(dataset, max_history_length=L, period="test")
    return {"root": root, "dataset": dataset, "dataset_dir": root / "dataset", "models": models,
            "repo": root / "repo", "popularity": popularity, "requests": requests}  # fmt: skip


def experiment(world, tmp_path: Path, control: str, candidate: str, traffic: float = 25.0):
    """A fresh registry holding both models, production = control, an experiment of candidate at
    `traffic` % (fixed salt, 150 impressions per arm per stage)."""
    from longrec.registry.store import ModelRegistry
    from longrec.rollout.decide import Rollout
    from longrec.rollout.state import StatsConfig

    registry = ModelRegistry(tmp_path / "registry")
    tags = {
        name: registry.register(world["models"][name], world["dataset_dir"]) for name in (control, candidate)
    }
    registry.promote(tags[control], TRACK, reason="test baseline")
    rollout = Rollout(TRACK, state_dir=tmp_path / "rollout", registry=registry, actor="test")
    rollout.start(tags[candidate], traffic=traffic, test=StatsConfig(min_impressions_per_arm=150), salt=SALT)
    return registry, rollout, tags[control], tags[candidate]


def serve(registry, rollout, feature_repo):
    from longrec.serving.run import resolve_target

    target = resolve_target(
        registry.root, dataset=TRACK, rollout_dir=rollout.state_dir, feature_repo=feature_repo
    )
    return target.process(registry.root, free_port(), extra_env=SERVE_ENV)


def print_steps(title: str, run, seconds: float) -> None:
    print(f"\n{title} ({seconds:.0f} s)")
    for number, step in enumerate(run.steps, 1):
        by_arm = step["replay"]["by_arm"]
        arms = ", ".join(f"{arm} {v['clicks']}/{v['requests']} clicks" for arm, v in sorted(by_arm.items()))
        decision = step["decision"]
        print(
            f"  step {number} at {step['traffic']:g} %: {arms} -> {decision['action']}: {decision['reason']}"
        )
    print(f"  final: {run.final_status} at {run.final_traffic:g} %")


def check_log(rollout, experiment_id: int, tags: dict, replayed: int) -> pd.DataFrame:
    """Every replayed request was logged by the service, each served by its arm's model."""
    from longrec.rollout.requestlog import read_requests

    log = read_requests(rollout.request_log, experiment_id)
    assert len(log) == replayed and set(log["source"]) == {"service"}
    assert (log["status"] == "ok").all()
    assert (log["model_tag"] == log["arm"].map(tags)).all()
    return log


def ctr_by_arm(log: pd.DataFrame) -> dict:
    return {arm: float(group["clicked"].mean()) for arm, group in log.groupby("arm")}


def test_better_candidate_ramps_and_is_promoted(world, tmp_path):
    """Control "random", candidate "popular", starting at 25 %: the served candidate's CTR is far higher,
    the rollout ramps 25 -> 50 % and promotes at 50 %, and the registry's production pointer names the
    candidate (moved by the rollout's promote, with its reason in the pointer history)."""
    from longrec.rollout.assignment import CANDIDATE, CONTROL, arm_of_bucket, buckets
    from longrec.rollout.operate import replayed_ab

    registry, rollout, control, candidate = experiment(world, tmp_path, "random", "popular")
    experiment_id = rollout.current().id
    started = time.perf_counter()
    with serve(registry, rollout, world["repo"]) as server:
        run = replayed_ab(
            rollout, server.url, world["requests"], per_step=600, max_steps=6, progress=False, drift=False
        )
    print_steps("better candidate (popularity DIN vs random DIN)", run, time.perf_counter() - started)
    actions = [(step["traffic"], step["decision"]["action"]) for step in run.steps]
    assert run.final_status == "promoted", actions
    assert (25.0, "ramp") in actions and actions[-1] == (50.0, "promote")
    assert registry.production(TRACK)["tag"] == candidate
    log = check_log(rollout, experiment_id, {CONTROL: control, CANDIDATE: candidate}, 600 * len(run.steps))
    ctr = ctr_by_arm(log)
    print(f"  CTR control {ctr[CONTROL]:.3f}, candidate {ctr[CANDIDATE]:.3f}")
    assert ctr[CANDIDATE] > ctr[CONTROL] + 0.2
    # sticky routing: users below 25 % were candidate throughout, users at or above 50 % never were
    bucketed = arm_of_bucket(buckets(SALT, log["user_id"].tolist()), 25.0) == CANDIDATE
    assert (log.loc[bucketed, "arm"] == CANDIDATE).all()
    never = arm_of_bucket(buckets(SALT, log["user_id"].tolist()), 50.0) == CONTROL
    assert (log.loc[never, "arm"] == CONTROL).all()


def test_random_candidate_is_rolled_back_before_full_traffic(world, tmp_path):
    """Control "popular", candidate "random" at 25 %: rolled back (CTR-ratio guardrail or significantly
    worse) before 100 %, production unchanged."""
    from longrec.rollout.assignment import CANDIDATE, CONTROL
    from longrec.rollout.operate import replayed_ab

    registry, rollout, control, candidate = experiment(world, tmp_path, "popular", "random")
    experiment_id = rollout.current().id
    started = time.perf_counter()
    with serve(registry, rollout, world["repo"]) as server:
        run = replayed_ab(
            rollout, server.url, world["requests"], per_step=600, max_steps=6, progress=False, drift=False
        )
    print_steps("random candidate (random DIN vs popularity DIN)", run, time.perf_counter() - started)
    assert run.final_status == "rolled_back", [s["decision"] for s in run.steps]
    assert run.steps[-1]["traffic"] < 100
    assert registry.production(TRACK)["tag"] == control
    log = check_log(rollout, experiment_id, {CONTROL: control, CANDIDATE: candidate}, 600 * len(run.steps))
    ctr = ctr_by_arm(log)
    print(f"  CTR control {ctr[CONTROL]:.3f}, candidate {ctr[CANDIDATE]:.3f}")
    assert ctr[CANDIDATE] < ctr[CONTROL]


def test_truncated_served_histories_raise_the_drift_alert(world, tmp_path):
    """The same 400 requests served twice by one running ranker: first from a healthy Feast repo, then after
    the repo is re-materialized with histories cut to each user's last 5 events (a feature-pipeline fault:
    the same job run with max_history_length=5). What shifts is the `history_length` the ranker reports
    (the valid history it read from the store, logged per request): 50 for most users, then 5.

    The reference is the healthy store's own history lengths for the replayed requests (read from the Feast
    online store), not the library's default (the validation period's point-in-time history lengths):
    the served store holds each user's *latest* snapshot, not the history as of the replayed request's
    time, so against the point-in-time reference even healthy serving reads PSI ~1.7 (and a store
    refreshed every 100 replayed requests still ~1); a static store cannot reproduce a replay's
    point-in-time histories. The ranker logs no recency (only the history length), so only
    `history_length` is compared."""
    from longrec.features.definitions import SEQUENCE_FILE
    from longrec.features.store import (
        DATA_SUBDIR,
        create_feature_repo,
        materialize,
        online_history,
        write_latest_snapshots,
    )
    from longrec.rollout.operate import step_with_reports
    from longrec.rollout.replay import replay
    from longrec.rollout.requestlog import RequestLogger, read_requests

    dataset = world["dataset"]
    store = create_feature_repo(
        tmp_path / "repo", dataset.events, dataset.item_features, dataset.user_features, L
    )
    materialize(store)
    registry, rollout, _, _ = experiment(world, tmp_path, "random", "popular")
    experiment_id = rollout.current().id
    requests = world["requests"][:400]
    histories = online_history(store, sorted({r.user_id for r in requests}))
    reference = pd.DataFrame(
        {
            "history_length": [float(min(L, len(histories[r.user_id][0]))) for r in requests],
            "recency_s": np.nan,
        }
    )
    log = RequestLogger(rollout.request_log)
    started = time.perf_counter()
    try:
        with serve(registry, rollout, tmp_path / "repo") as server:
            replay(server.url, requests, log, experiment_id=experiment_id, progress=False)
            healthy = step_with_reports(rollout, reference=(reference, world["popularity"]))
            # the fault: the feature job re-runs with histories cut to 5 and overwrites the online store
            write_latest_snapshots(dataset.events, tmp_path / "repo" / DATA_SUBDIR / SEQUENCE_FILE, 5)
            materialize(store)
            replay(server.url, requests, log, experiment_id=experiment_id, seed=1, progress=False)
            broken = step_with_reports(rollout, reference=(reference, world["popularity"]))
    finally:
        log.close()
    served = read_requests(rollout.request_log, experiment_id)["history_length"].to_numpy()
    first, second = served[:400], served[400:]
    column = "history_length"
    print(f"\ntruncated served histories ({time.perf_counter() - started:.0f} s)")
    print(f"  healthy: mean served history {first.mean():.1f}, PSI {healthy.drift['columns'][column]['value']:.3f}"
          f" -> {healthy.decision.action}: {healthy.decision.reason}")  # fmt: skip
    print(f"  cut to 5: mean served history {second.mean():.1f}, PSI {broken.drift['columns'][column]['value']:.2f}"
          f" -> {broken.decision.action}: {broken.decision.reason}")  # fmt: skip
    assert np.array_equal(first, reference[column].to_numpy())  # the ranker served what the store holds
    assert second.max() <= 5 and first.mean() > 30
    assert healthy.drift is not None and not healthy.drift["alert"], healthy.drift
    assert "drift" not in healthy.decision.reason
    assert broken.drift["alert"] and broken.drift["columns"][column]["drifted"]
    assert broken.decision.action == "hold" and "drift alert" in broken.decision.reason
    for name in ("drift.html", "drift.json", "quality.html", "quality.json", "analysis.json"):
        assert (broken.folder / name).stat().st_size > 0
    assert rollout.store.audit(experiment_id)[-1]["inputs"]["drift"]["alert"]
