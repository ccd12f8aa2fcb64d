"""The rollout hooks wired into the real serving `Ranker` (longrec/serving/ranker.py), in process: two DIN
versions (random weights) as the control and candidate arms, `arm_for` answered by `RolloutHooks.assign`,
every request recorded by `RolloutHooks.record`. This is the wiring the BentoML service still lacks (it
serves one arm); the test shows the hooks fit the ranker as it is, not a quality comparison."""

import time

import numpy as np
import torch

from longrec.models.registry import build_model
from longrec.rollout.assignment import CANDIDATE, CONTROL, arm_of_bucket, bucket
from longrec.rollout.decide import Rollout
from longrec.rollout.hooks import RolloutHooks
from longrec.rollout.requestlog import read_requests
from longrec.serving.demo import demo_spec, write_model_dir
from longrec.serving.ranker import ModelScorer, Ranker
from longrec.serving.schemas import RankRequest

DATASET = "demo"


class _Registry:
    """The two tags as a registry would report them (the rollout reads tags and the pointer only)."""

    def __init__(self, tags):
        self.tags, self.pointer = tags, {"tag": tags[0]}

    def model_path(self, tag):
        assert tag in self.tags
        return tag

    def production(self, dataset):
        return self.pointer


class RolloutRanker(Ranker):
    """The serving Ranker with its one-arm `arm_for` replaced by the experiment's sticky assignment."""

    def __init__(self, scorers, hooks):
        super().__init__(scorers, features=None)
        self.hooks = hooks
        self.last = None

    def arm_for(self, user_id):
        self.last = self.hooks.assign(user_id)
        return self.last.arm if self.last.experiment_id is not None else CONTROL

    def rank_and_record(self, request):
        started = time.perf_counter()
        response = self.rank(request)
        request_id = self.hooks.record(
            self.last, user_id=request.user_id, model_tag=response.model_tag,
            items=[item.item_id for item in response.items], scores=[item.score for item in response.items],
            latency_ms=(time.perf_counter() - started) * 1000, history_length=response.history_length,
            flags={"degraded_memory": response.degraded_memory, "feature_fallback": response.feature_fallback},
        )  # fmt: skip
        return {**response.model_dump(), "arm": self.last.arm, "experiment_id": self.last.experiment_id,
                "request_id": request_id}  # fmt: skip


def test_real_ranker_serves_each_user_from_their_arm(tmp_path):
    spec = demo_spec(n_users=400, n_items=60)
    scorers = {}
    for seed, arm in ((1, CONTROL), (2, CANDIDATE)):
        torch.manual_seed(seed)
        model_dir = write_model_dir(build_model("din", spec, {}), tmp_path / arm)
        scorers[arm] = ModelScorer(model_dir, f"longrec-demo-din:{arm}")
    rollout = Rollout(
        DATASET,
        state_dir=tmp_path / "rollout",
        registry=_Registry([s.tag for s in scorers.values()]),
        actor="t",
    )
    experiment = rollout.start(scorers[CANDIDATE].tag, traffic=25, salt="ranker-test")
    ranker = RolloutRanker(scorers, RolloutHooks(DATASET, tmp_path / "rollout", refresh_s=0))

    candidates = list(range(1, 21))
    responses = {user: ranker.rank_and_record(RankRequest(user_id=user, candidate_items=candidates, top_k=5))
                 for user in range(1, 400)}  # fmt: skip
    for user, response in responses.items():
        expected = arm_of_bucket(bucket("ranker-test", user), 25)
        assert response["arm"] == expected
        assert response["model_tag"] == scorers[expected].tag  # served by that arm's model
        assert len(response["items"]) == 5 and response["experiment_id"] == experiment.id
    share = np.mean([r["arm"] == CANDIDATE for r in responses.values()])
    assert 0.18 < share < 0.32

    log = read_requests(rollout.request_log, experiment.id)
    assert len(log) == 399 and set(log["source"]) == {"service"}
    assert (log.set_index("request_id").loc[[r["request_id"] for r in responses.values()], "arm"].to_numpy()
            == [r["arm"] for r in responses.values()]).all()  # fmt: skip
    # the same two model versions score differently: the arms are really different models
    one = RankRequest(user_id=1, candidate_items=candidates)
    control_scores, candidate_scores = (
        [item.score for item in Ranker({"main": scorers[arm]}, None).rank(one).items]
        for arm in (CONTROL, CANDIDATE)
    )
    assert not np.allclose(control_scores, candidate_scores)

    rollout.rollback("test")
    after = ranker.rank_and_record(RankRequest(user_id=1, candidate_items=candidates, top_k=5))
    assert after["arm"] == CONTROL and after["model_tag"] == scorers[CONTROL].tag
