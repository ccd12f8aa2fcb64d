"""Experiment state, sticky bucketing and the request log: durable, append-only, uniform and sticky."""

import sqlite3

import numpy as np
import pytest
from scipy import stats

from longrec.rollout.assignment import CANDIDATE, CONTROL, N_BUCKETS, Assigner, arm_of_bucket, bucket, buckets
from longrec.rollout.requestlog import RequestLogger, read_requests
from longrec.rollout.state import ExperimentStore, RolloutError


def test_buckets_are_uniform_over_100k_ids():
    ids = np.arange(100_000)
    counts = np.bincount(buckets("salt-1", ids), minlength=N_BUCKETS)
    assert counts.sum() == 100_000
    assert stats.chisquare(counts).pvalue > 0.001
    # coarser: the 100 percent-wide slices that traffic shares are made of
    assert stats.chisquare(counts.reshape(100, -1).sum(axis=1)).pvalue > 0.001
    # and the salt decorrelates experiments: a user's bucket in one tells nothing of the other
    other = buckets("salt-2", ids)
    assert abs(np.corrcoef(buckets("salt-1", ids), other)[0, 1]) < 0.02


def test_buckets_are_sticky_across_restarts(tmp_path):
    store = ExperimentStore(tmp_path)
    experiment = store.create(dataset="d", control_tag="a", candidate_tag="b", traffic=25, actor="t")
    before = {user: Assigner("d", tmp_path).assign(user) for user in range(2000)}
    store.close()
    # a new process: new store, new assigner, same answers
    reopened = Assigner("d", tmp_path)
    for user, assignment in before.items():
        again = reopened.assign(user)
        assert (again.arm, again.bucket, again.model_tag) == (
            assignment.arm,
            assignment.bucket,
            assignment.model_tag,
        )
    assert assignment.experiment_id == experiment.id
    share = np.mean([a.arm == CANDIDATE for a in before.values()])
    assert 0.2 < share < 0.3


def test_users_switch_only_when_the_share_grows_past_their_bucket():
    user_buckets = buckets("s", np.arange(20_000))
    for old_share, new_share in ((5, 25), (25, 50), (50, 100)):
        before, after = arm_of_bucket(user_buckets, old_share), arm_of_bucket(user_buckets, new_share)
        # nobody leaves the candidate, and exactly the buckets in [old, new) join it
        assert not np.any((before == CANDIDATE) & (after == CONTROL))
        joined = (before == CONTROL) & (after == CANDIDATE)
        assert np.array_equal(joined, (user_buckets >= old_share * 100) & (user_buckets < new_share * 100))
    assert bucket("s", 7) == bucket("s", "7")  # ids hash as text


def test_assigner_sees_ramp_and_rollback(tmp_path):
    store = ExperimentStore(tmp_path)
    experiment = store.create(dataset="d", control_tag="a", candidate_tag="b", traffic=5, actor="t")
    assigner = Assigner("d", tmp_path, refresh_s=0)
    users = range(5000)
    at_5 = {u for u in users if assigner.assign(u).arm == CANDIDATE}
    experiment = store.transition(experiment, action="ramp", actor="t", reason="r", traffic=50)
    at_50 = {u for u in users if assigner.assign(u).arm == CANDIDATE}
    assert at_5 < at_50
    assert assigner.tags() == {CONTROL: "a", CANDIDATE: "b"}
    store.transition(experiment, action="rollback", actor="t", reason="r", traffic=0, status="rolled_back")
    after = assigner.assign(1)
    assert (after.arm, after.model_tag, after.experiment_id) == (CONTROL, None, None)  # production serves
    assert assigner.tags() == {}


def test_audit_log_is_append_only_and_records_every_change(tmp_path):
    store = ExperimentStore(tmp_path)
    experiment = store.create(dataset="d", control_tag="a", candidate_tag="b", traffic=5, actor="alice")
    experiment = store.transition(
        experiment, action="ramp", actor="bob", reason="guardrails hold", traffic=25
    )
    rows = store.audit(experiment.id)
    assert [(r["action"], r["actor"], r["traffic_before"], r["traffic_after"]) for r in rows] == [
        ("start", "alice", None, 5.0),
        ("ramp", "bob", 5.0, 25.0),
    ]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_state_rejects_bad_input_and_stale_writers(tmp_path):
    store = ExperimentStore(tmp_path)
    with pytest.raises(RolloutError, match="percentage"):
        store.create(dataset="d", control_tag="a", candidate_tag="b", traffic=150, actor="t")
    with pytest.raises(RolloutError, match="schedule"):
        store.create(
            dataset="d", control_tag="a", candidate_tag="b", traffic=5, schedule=(50, 25, 100), actor="t"
        )
    experiment = store.create(dataset="d", control_tag="a", candidate_tag="b", traffic=5, actor="t")
    with pytest.raises(RolloutError, match="already running"):
        store.create(dataset="d", control_tag="a", candidate_tag="c", traffic=5, actor="t")
    store.transition(experiment, action="ramp", actor="t", reason="r", traffic=25)
    with pytest.raises(RolloutError, match="changed while"):  # a second writer acting on what it read before
        store.transition(experiment, action="ramp", actor="t", reason="r", traffic=50)
    assert store.get(experiment.id).traffic == 25
    assert len(store.audit(experiment.id)) == 2
    assert experiment.next_traffic() == 25 and store.get(experiment.id).next_traffic() == 50


def test_request_log_survives_restarts_and_ignores_duplicates(tmp_path):
    path = tmp_path / "requests.db"
    log = RequestLogger(path)
    log.log(request_id="r1", user_id=7, arm="candidate", model_tag="m:1", items=[np.int64(3), 1], scores=[0.9, 0.1],
            latency_ms=12.5, experiment_id=1, flags={"degraded": True}, history_length=50, recency_s=3600.0)  # fmt: skip
    log.close()
    log = RequestLogger(path)  # a restarted service
    log.log(
        request_id="r1",
        user_id=8,
        arm="control",
        model_tag="x",
        items=[],
        scores=[],
        latency_ms=1,
        experiment_id=1,
    )
    log.log(request_id="r2", user_id=9, arm="control", model_tag="m:0", items=[1], scores=[0.5], latency_ms=3,
            experiment_id=1)  # fmt: skip
    log.log_feedback(request_id="r1", target_item=3, position=1, clicked=True, top_k=2)
    frame = read_requests(path, experiment_id=1)
    assert list(frame["request_id"]) == ["r1", "r2"]
    first = frame.iloc[0]
    assert (first["user_id"], first["arm"], first["items"], first["flags"]) == (
        "7",
        "candidate",
        [3, 1],
        {"degraded": True},
    )
    assert (first["clicked"], first["position"]) == (1, 1)
    assert np.isnan(frame.iloc[1]["clicked"])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        log.db.execute("DELETE FROM requests")
