"""The rollout pipeline compiles (with its recurring-run spec), and its three components, called through
`.python_func`, take one real step of an experiment from the request log to a decision."""

import json

import pytest
import yaml
from kfp import compiler
from rollout_helpers import DATASET, log_synthetic_requests, registry_with_models
from typer.testing import CliRunner

from components.rollout_analyse import rollout_analyse
from components.rollout_collect import rollout_collect
from components.rollout_decide import rollout_decide
from longrec.rollout.assignment import CANDIDATE, CONTROL
from longrec.rollout.cli import rollout_app
from longrec.rollout.decide import Rollout
from longrec.rollout.requestlog import RequestLogger
from longrec.rollout.state import RolloutError, StatsConfig
from pipelines.rollout_pipeline import rollout_pipeline


def test_rollout_pipeline_compiles(tmp_path):
    compiler.Compiler().compile(rollout_pipeline, str(tmp_path / "p.yaml"))
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "dataset", "state_dir", "registry_dir", "ranker_url", "replay_requests",
    }  # fmt: skip
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"rollout-collect", "rollout-analyse", "rollout-decide"}
    assert tasks["rollout-analyse"]["dependentTasks"] == ["rollout-collect"]
    assert tasks["rollout-decide"]["dependentTasks"] == ["rollout-analyse"]
    assert all(
        task["cachingOptions"] == {} or not task["cachingOptions"].get("enableCache")
        for task in tasks.values()
    )


def test_recurring_run_spec_from_the_cli(tmp_path):
    result = CliRunner().invoke(
        rollout_app,
        ["pipeline", "--output", str(tmp_path), "--cron", "0 0 * * * *", "--replay-requests", "500"],
    )
    assert result.exit_code == 0, result.output
    recurring = yaml.safe_load((tmp_path / "rollout-recurring-run.yaml").read_text())
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 * * * *"}}
    assert recurring["max_concurrency"] == "1" and recurring["no_catchup"] and recurring["mode"] == "ENABLE"
    assert recurring["pipeline_spec"]["pipelineInfo"]["name"] == "longrec-rollout"
    assert recurring["runtime_config"]["parameters"]["replay_requests"] == 500
    bad = CliRunner().invoke(
        rollout_app, ["pipeline", "--output", str(tmp_path / "x"), "--cron", "* * * * *"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and not (tmp_path / "x").exists()


class _Out:
    def __init__(self, path):
        self.path = str(path)
        self.metrics = {}

    def log_metric(self, name, value):
        self.metrics[name] = value


def test_components_take_one_step(tmp_path):
    registry, (control, candidate) = registry_with_models(tmp_path)
    state = tmp_path / "rollout"
    rollout = Rollout(DATASET, state_dir=state, registry=registry, actor="t")
    experiment = rollout.start(
        candidate, traffic=25, test=StatsConfig(min_impressions_per_arm=100), salt="pipeline-test"
    )
    log_synthetic_requests(
        RequestLogger(rollout.request_log), experiment, 2000, {CONTROL: 0.2, CANDIDATE: 0.2}, seed=0
    )

    requests = _Out(tmp_path / "requests.parquet")
    assert rollout_collect.python_func(DATASET, str(state), "", 0, requests) == 2000
    step_inputs, metrics, html = _Out(tmp_path / "step"), _Out(tmp_path / "m.json"), _Out(tmp_path / "d.html")
    alert = rollout_analyse.python_func(DATASET, str(state), requests, step_inputs, metrics, html)
    assert alert is False  # no reference for this synthetic track: no drift report, said so
    assert "No drift report" in open(html.path).read()
    assert metrics.metrics["control_impressions"] + metrics.metrics["candidate_impressions"] == 2000
    decision = _Out(tmp_path / "decision.md")
    action = rollout_decide.python_func(DATASET, str(state), str(registry.root), step_inputs, decision)
    assert action == "ramp" and "ramp" in open(decision.path).read()
    assert rollout.store.get(experiment.id).traffic == 50
    # the same analysis again is stale now: refused, nothing changes
    with pytest.raises(RolloutError, match="collect and analyse again"):
        rollout_decide.python_func(DATASET, str(state), str(registry.root), step_inputs, decision)
    assert rollout.store.get(experiment.id).traffic == 50
    assert (
        json.loads((tmp_path / "step" / "step_inputs.json").read_text())["analysis"]["experiment_id"]
        == experiment.id
    )


def test_rollout_pipeline_runs_locally(tmp_path):
    from kfp import local

    registry, (control, candidate) = registry_with_models(tmp_path)
    state = tmp_path / "rollout"
    rollout = Rollout(DATASET, state_dir=state, registry=registry, actor="t")
    experiment = rollout.start(
        candidate, traffic=50, test=StatsConfig(min_impressions_per_arm=100), salt="pipeline-test"
    )
    log_synthetic_requests(
        RequestLogger(rollout.request_log), experiment, 3000, {CONTROL: 0.2, CANDIDATE: 0.3}, seed=1
    )
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    rollout_pipeline(dataset=DATASET, state_dir=str(state), registry_dir=str(registry.root))
    assert rollout.store.get(experiment.id).status == "promoted"
    assert registry.production(DATASET)["tag"] == candidate
    assert registry.history(DATASET)[-1]["actor"].startswith("longrec-rollout pipeline")
    [decision] = list((tmp_path / "kfp").rglob("rollout-decide/decision"))
    assert decision.read_text().startswith("**promote**")
