"""The serving `Ranker` (longrec/serving/ranker.py) with the rollout's hooks, in process: two DIN versions
(random weights) as the production ("main", the control arm) and candidate models, users routed by the
experiment's sticky assignment, every request recorded in the rollout's request log. The BentoML service
builds the same Ranker (`longrec.serving.service_support.build_ranker`) when its config names a candidate
and a rollout folder; the test shows the routing and logging, not a quality comparison."""


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
    hooks = RolloutHooks(DATASET, tmp_path / "rollout", refresh_s=0)
    ranker = Ranker({"main": scorers[CONTROL], CANDIDATE: scorers[CANDIDATE]}, None, hooks=hooks)

    def rank_and_record(request):
        return ranker.rank(request).model_dump()

    candidates = list(range(1, 21))
    responses = {user: rank_and_record(RankRequest(user_id=user, candidate_items=candidates, top_k=5))
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
    after = rank_and_record(RankRequest(user_id=1, candidate_items=candidates, top_k=5))
    # No experiment any more: everyone gets production, answered (and logged) as "main".
    assert after["arm"] == "main" and after["experiment_id"] is None
    assert after["model_tag"] == scorers[CONTROL].tag and after["request_id"]
