"""The promotion gate (paired lift interval, calibration guardrail, comparability) and the model registry
(BentoML store, compare-and-swap production pointer, locked history, crash recovery, operator CLI)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from longrec.cli import app
from longrec.data.schema import FeatureSpec
from longrec.eval.paired import paired_lift, weighted_auc_rows
from longrec.models.registry import build_model
from longrec.registry.gate import GateConfig, decide_promotion
from longrec.registry.store import CRASH_POINT_ENV, ModelRegistry, PointerMoved, RegistryError
from longrec.train.trainer import save_checkpoint


# ------------------------------------------------------------------------------------------- gate
def scored_samples(n_users=300, per_user=5, seed=0):
    """One positive and `per_user - 1` negatives per user, and a production model's logits."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    labels = np.tile(np.r_[1, np.zeros(per_user - 1, dtype=int)], n_users)
    production = 1.0 * labels + rng.normal(0, 1.0, len(labels)) - 1.0
    return users, labels, production, rng


def gate_inputs(users, labels, candidate, production, auc_floor_metrics=None):
    from longrec.eval.ctr import ctr_metrics

    lift = paired_lift(users, labels, candidate, production, n_bootstrap=400)
    return {
        "track": "ml-100k",
        "candidate": {"name": "imn", "metrics": auc_floor_metrics or ctr_metrics(users, labels, candidate)},
        "production": {
            "status": "comparable",
            "tag": "longrec-ml-100k-din:old",
            "reason": "rescored",
            "metrics": ctr_metrics(users, labels, production),
        },
        "lift": lift.to_dict(),
    }


def test_weighted_auc_matches_the_rank_auc_with_ties():
    from longrec.eval.ctr import auc

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    assert weighted_auc_rows(labels, scores, np.ones((1, 500)))[0] == pytest.approx(auc(labels, scores))
    # Integer weights = repeating samples.
    weights = rng.integers(0, 3, 500)
    repeated = np.repeat(np.arange(500), weights)
    expected = auc(labels[repeated], scores[repeated])
    assert weighted_auc_rows(labels, scores, weights[None].astype(float))[0] == pytest.approx(expected)


def test_candidate_identical_to_production_is_not_promoted():
    users, labels, production, _ = scored_samples()
    inputs = gate_inputs(users, labels, production.copy(), production)
    assert inputs["lift"]["auc_lift"] == 0 and inputs["lift"]["auc_lift_low"] == 0
    decision = decide_promotion(inputs, GateConfig(auc_floor=0.5, min_auc_lift=0.0))
    assert not decision.promote
    assert "lower bound <= min lift" in " ".join(decision.reasons)


def test_clearly_better_candidate_is_promoted_with_its_interval_reported():
    users, labels, production, rng = scored_samples()
    better = 2.5 * labels + rng.normal(0, 1.0, len(labels)) - 1.0
    inputs = gate_inputs(users, labels, better, production)
    decision = decide_promotion(inputs, GateConfig(auc_floor=0.5))
    assert decision.promote, decision.reasons
    lift = inputs["lift"]
    assert 0 < lift["auc_lift_low"] < lift["auc_lift"] < lift["auc_lift_high"]
    markdown = decision.to_markdown()
    assert "95% interval" in markdown and f"{lift['auc_lift_low']:+.4f}" in markdown
    assert decision.production_tag == "longrec-ml-100k-din:old"  # the compare-and-swap base


def test_better_auc_but_far_worse_calibration_is_held():
    users, labels, production, rng = scored_samples()
    better = 2.5 * labels + rng.normal(0, 1.0, len(labels)) - 1.0
    overconfident = 12.0 * better + 6.0  # same ranking, wildly miscalibrated probabilities
    inputs = gate_inputs(users, labels, overconfident, production)
    assert inputs["lift"]["auc_lift_low"] > 0
    decision = decide_promotion(inputs, GateConfig(auc_floor=0.5, max_logloss_increase=0.01))
    assert not decision.promote
    assert "LogLoss worse than tolerance" in " ".join(decision.reasons)


def test_production_that_could_not_be_compared_is_never_replaced():
    users, labels, production, rng = scored_samples()
    inputs = gate_inputs(users, labels, 3 * labels + rng.normal(0, 1, len(labels)), production)
    inputs["production"] = {
        "status": "not_comparable",
        "tag": "longrec-ml-100k-recblr:abc",
        "reason": "production longrec-ml-100k-recblr:abc was evaluated on other samples (max_history_length 50 vs 20)",
        "metrics": None,
    }
    inputs["lift"] = None
    decision = decide_promotion(inputs, GateConfig(auc_floor=0.5))
    assert not decision.promote
    text = " ".join(decision.reasons)
    assert "exists but could not be compared" in text and "max_history_length 50 vs 20" in text
    assert "no production model" not in text


@pytest.mark.parametrize(("auc", "promote"), [(0.80, True), (0.69, False), (float("nan"), False)])
def test_first_model_needs_only_the_floor(auc, promote):
    inputs = {
        "track": "ml-100k",
        "candidate": {"name": "din", "metrics": {"auc": auc}},
        "production": {"status": "none", "reason": "no production model for ml-100k yet"},
        "lift": None,
    }
    decision = decide_promotion(inputs, GateConfig(auc_floor=0.70))
    assert decision.promote is promote
    assert decision.to_markdown().startswith(f"## Promotion decision: **{decision.verdict.upper()}**")


# ------------------------------------------------------------------------------------------- registry
def make_model_dir(path, auc=0.75):
    spec = FeatureSpec(n_users=5, n_items=7, max_history_length=4)
    model = build_model("din", spec, {"embedding_dim": 4})
    path.mkdir(parents=True)
    save_checkpoint(path / "model.pt", model, model_name="din", spec=spec)
    (path / "model_meta.json").write_text(
        json.dumps({"model_name": "din", "model_config": {"x": None}, "valid_metrics": {"auc": auc}})
    )
    (path / "evaluation.json").write_text(
        json.dumps({"test_metrics": {"auc": auc}, "test_set_fingerprint": "f"})
    )
    return path


def make_dataset_dir(path, name="ml-100k", track=None):
    path.mkdir(parents=True)
    (path / "dataset.json").write_text(
        json.dumps({"name": name, "track": track or name, "fingerprint": "abc"})
    )
    return path


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A registry holding two registered (not promoted) DIN versions of ml-100k."""
    root = tmp_path_factory.mktemp("reg")
    registry = ModelRegistry(root / "registry")
    dataset = make_dataset_dir(root / "ds")
    tags = [registry.register(make_model_dir(root / f"m{i}", 0.75 + i / 100), dataset) for i in range(2)]
    return root / "registry", tags


def fresh_copy(two_versions, tmp_path):
    import shutil

    root, tags = two_versions
    shutil.copytree(root, tmp_path / "registry")
    return ModelRegistry(tmp_path / "registry"), tags


def test_register_and_promote_moves_the_pointer_and_keeps_history(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.production("ml-100k") is None
    dataset = make_dataset_dir(tmp_path / "ds")
    first = registry.register_and_promote(
        make_model_dir(tmp_path / "m1", 0.75), dataset, expected_current=None
    )
    second = registry.register_and_promote(
        make_model_dir(tmp_path / "m2", 0.78), dataset, expected_current=first
    )
    pointer = registry.production("ml-100k")
    assert pointer["tag"] == second and pointer["previous"] == first
    assert pointer["test_metrics"]["auc"] == 0.78 and pointer["actor"]
    assert [e["tag"] for e in registry.history("ml-100k")] == [first, second]
    stored = registry.model_path(second)
    assert torch.load(stored / "model.pt", weights_only=True)["model_name"] == "din"
    # Stored in BentoML's own layout: a Bento built with BENTOML_HOME=<root> finds it by tag.
    assert (stored / "model.yaml").is_file() and stored.parent.parent == registry.root / "models"
    stages = {m["tag"]: m["stage"] for m in registry.list_models()}
    assert stages == {first: "retired", second: "production"}
    assert not list((tmp_path / "registry" / "production").glob("*.tmp"))  # no torn pointer files


def test_smoke_slice_is_keyed_apart_from_the_full_dataset(two_versions, tmp_path):
    registry, tags = fresh_copy(two_versions, tmp_path)
    registry.promote(tags[1], "ml-100k", expected_current=None)
    smoke = registry.register_and_promote(
        make_model_dir(tmp_path / "smoke", 0.54),
        make_dataset_dir(tmp_path / "smoke-ds", track="ml-100k@first-1500-events"),
        expected_current=None,
    )
    assert registry.production("ml-100k")["tag"] == tags[1]  # untouched by the smoke run
    assert registry.production("ml-100k@first-1500-events")["tag"] == smoke
    assert smoke.startswith("longrec-ml-100k-first-1500-events-din:")


def test_compare_and_swap_rejects_a_stale_expectation(two_versions, tmp_path):
    registry, (a, b) = fresh_copy(two_versions, tmp_path)
    registry.promote(a, "ml-100k", expected_current=None)
    with pytest.raises(PointerMoved, match="not None as this run saw it"):
        registry.promote(b, "ml-100k", expected_current=None)
    assert registry.production("ml-100k")["tag"] == a
    assert len(registry.history("ml-100k")) == 1


PROMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from longrec.registry.store import ModelRegistry, PointerMoved
    root, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    registry = ModelRegistry(root)
    while time.time() < start:
        time.sleep(0.001)
    try:
        registry.promote(tag, "ml-100k", expected_current=None, reason="race", actor=tag)
    except PointerMoved as error:
        print(error)
        sys.exit(3)
    """
)


def test_two_concurrent_promotions_one_wins_the_other_rejects(two_versions, tmp_path):
    import time

    registry, tags = fresh_copy(two_versions, tmp_path)
    start = time.time() + 2.0  # both processes wait for the same instant, then race for the pointer
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTE_SCRIPT, str(registry.root), tag, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for tag in tags
    ]
    codes = [proc.wait(timeout=60) for proc in procs]
    assert sorted(codes) == [0, 3], codes
    winner = tags[codes.index(0)]
    loser_output = procs[codes.index(3)].stdout.read()
    assert "another run or operator moved it" in loser_output
    assert registry.production("ml-100k")["tag"] == winner
    assert [e["tag"] for e in registry.history("ml-100k")] == [winner]


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from longrec.registry.store import ModelRegistry
    ModelRegistry(sys.argv[1]).promote(sys.argv[2], "ml-100k", expected_current=sys.argv[3], reason="gate")
    """
)


@pytest.mark.parametrize("crash_at", ["after_intent", "after_pointer"])
def test_a_process_killed_mid_promotion_leaves_a_consistent_registry(two_versions, tmp_path, crash_at):
    registry, (old, new) = fresh_copy(two_versions, tmp_path)
    registry.promote(old, "ml-100k", expected_current=None)
    env = {**os.environ, CRASH_POINT_ENV: crash_at}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(registry.root), new, old], env=env, check=False
    )
    assert proc.returncode == -9  # really killed (SIGKILL), mid-move
    reopened = ModelRegistry(registry.root)
    pointer = reopened.production("ml-100k")  # recovery runs here
    history = reopened.history("ml-100k")
    assert not list((registry.root / "production").glob("*.intent.json"))
    if (
        crash_at == "after_intent"
    ):  # decided, pointer not moved: production stays, the move is recorded as abandoned
        assert pointer["tag"] == old
        assert [e.get("event") for e in history] == ["promote", "abandoned"]
        assert reopened.stage(new) == "candidate"
        reopened.promote(new, "ml-100k", expected_current=old)  # and a retry goes through
        assert reopened.production("ml-100k")["tag"] == new
    else:  # pointer moved, history line lost with the process: recovery writes it
        assert pointer["tag"] == new
        assert [e["tag"] for e in history] == [old, new]
        assert history[-1]["note"] == "recorded after a crash"


def test_rollback_moves_back_and_is_recorded(two_versions, tmp_path):
    registry, (a, b) = fresh_copy(two_versions, tmp_path)
    registry.promote(a, "ml-100k")
    registry.promote(b, "ml-100k", expected_current=a)
    pointer = registry.rollback("ml-100k", reason="CTR dropped", actor="alice")
    assert pointer["tag"] == a and pointer["previous"] == b and pointer["event"] == "rollback"
    assert registry.history("ml-100k")[-1]["actor"] == "alice"
    with pytest.raises(RegistryError, match="already"):
        registry.rollback("ml-100k", to=a, reason="x")


def test_incomplete_model_folder_registers_nothing(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    broken = make_model_dir(tmp_path / "m")
    (broken / "evaluation.json").unlink()
    with pytest.raises(RegistryError, match="evaluation.json"):
        registry.register_and_promote(broken, make_dataset_dir(tmp_path / "ds"))
    assert registry.list_models() == [] and registry.production("ml-100k") is None


def test_corrupt_pointer_is_a_clear_error(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.pointer_path("ml-100k").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        registry.production("ml-100k")


def test_unknown_tag_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="not in the registry"):
        ModelRegistry(tmp_path).model_path("longrec-x-din:doesnotexist")


def test_registry_cli_list_show_history_rollback(two_versions, tmp_path):
    registry, (a, b) = fresh_copy(two_versions, tmp_path)
    registry.promote(a, "ml-100k", reason="first")
    registry.promote(b, "ml-100k", reason="better")
    runner = CliRunner()
    root = ["--registry-dir", str(registry.root)]
    listed = runner.invoke(app, ["registry", "list", "--dataset", "ml-100k", *root])
    assert listed.exit_code == 0 and a in listed.output and "production" in listed.output
    shown = runner.invoke(app, ["registry", "show", b, *root])
    assert shown.exit_code == 0 and json.loads(shown.output)["stage"] == "production"
    rolled = runner.invoke(
        app, ["registry", "rollback", "ml-100k", "--reason", "bad CTR", "--actor", "bob", *root]
    )
    assert rolled.exit_code == 0 and f"production for ml-100k: {a}" in rolled.output
    history = runner.invoke(app, ["registry", "history", "ml-100k", *root])
    assert (
        history.output.count("\n") == 3
        and "rollback" in history.output
        and "by bob: bad CTR" in history.output
    )
    missing = runner.invoke(app, ["registry", "show", "longrec-x:nope", *root])
    assert missing.exit_code == 2 and "not in the registry" in missing.output
    wrong_track = runner.invoke(app, ["registry", "promote", a, "--track", "other", "--reason", "x", *root])
    assert wrong_track.exit_code == 2 and "not other" in wrong_track.output
    assert ModelRegistry(registry.root).production("ml-100k")["tag"] == a  # failed commands changed nothing


def test_serving_sidecars_and_shard_models_are_not_tracks_or_versions(two_versions, tmp_path):
    registry, (a, _) = fresh_copy(two_versions, tmp_path)
    registry.promote(a, "ml-100k")
    (registry.root / "production" / "ml-100k.bento.json").write_text(json.dumps({"bento_tag": "x:y"}))
    assert registry.tracks() == ["ml-100k"]
    shard_dir = registry.root / "models" / "longrec-ml-100k-lmn-memory-shard0-of-2" / "v1"
    shard_dir.mkdir(parents=True)
    (shard_dir / "model.yaml").write_text(
        "name: longrec-ml-100k-lmn-memory-shard0-of-2\nversion: v1\nlabels:\n  role: memory-shard\n"
        "metadata: {}\ncreation_time: '2026-01-01T00:00:00+00:00'\n"
    )
    assert all("memory-shard" not in row["tag"] for row in registry.list_models())


def test_the_ab_demo_registers_this_runs_din_once(tmp_path):
    """`make run`'s A/B demo tests a first production model against the run's DIN, which it registers;
    calling the demo again on the same run reuses that version instead of adding duplicates."""
    from longrec.pipeline.ab_demo import _control_for

    def registry_with_candidate(root):
        registry = ModelRegistry(root)
        candidate_dir = make_model_dir(root.parent / f"{root.name}-imn", 0.8)
        meta = json.loads((candidate_dir / "model_meta.json").read_text())
        (candidate_dir / "model_meta.json").write_text(json.dumps({**meta, "model_name": "imn"}))
        return registry, registry.register_and_promote(candidate_dir, dataset, expected_current=None)

    dataset = make_dataset_dir(tmp_path / "ds")
    make_model_dir(tmp_path / "kfp" / "train-din" / "train-model" / "model")
    registry, candidate = registry_with_candidate(tmp_path / "registry")
    said: list[str] = []
    first, again = (
        _control_for(registry, "ml-100k", candidate, tmp_path / "kfp", dataset, said.append) for _ in range(2)
    )
    assert first == again != candidate and len(said) == 2
    assert [m["tag"] for m in registry.list_models("ml-100k") if m["model_name"] == "din"] == [first]
    # Another registry does not hold the marked version: the demo registers the DIN there.
    other, other_candidate = registry_with_candidate(tmp_path / "other")
    there = _control_for(other, "ml-100k", other_candidate, tmp_path / "kfp", dataset, said.append)
    assert other.stored(there).metadata["model_name"] == "din"
    assert [m["tag"] for m in other.list_models("ml-100k") if m["model_name"] == "din"] == [there]
