"""Katib on a cluster: each model's Experiment checked against the kubeflow-katib SDK's models, its trial Job
against the Kubernetes schema, the committed manifests kept current, and the trial and pick commands run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kfp import dsl
from typer.testing import CliRunner

from components.train_model import train_model as train_component
from longrec.cli import app
from longrec.data.ingest import ingest_dataset
from longrec.data.samples import SampleConfig
from longrec.data.training_set import build_training_set_from_events
from longrec.models.registry import available_models
from longrec.pipeline.katib import KatibSettings, best_settings, katib_experiment, parameter_name
from longrec.pipeline.params import PipelineParams
from longrec.train.tuning import search_space

ROOT = Path(__file__).resolve().parents[1]
KATIB = ROOT / "infra" / "katib"
# The SDK pins protobuf<5, so `make setup` installs it apart from the environment (see the Makefile).
KATIB_SDK = Path(sys.prefix) / "katib-sdk"
runner = CliRunner()


@pytest.fixture(scope="module")
def katib_sdk():
    if not KATIB_SDK.is_dir():
        pytest.fail(f"the Katib SDK is missing at {KATIB_SDK}: run `make setup`")
    sys.path.insert(0, str(KATIB_SDK))
    try:
        import kubeflow.katib as katib

        yield katib
    finally:
        sys.path.remove(str(KATIB_SDK))


def through_sdk(katib, manifest: dict) -> dict:
    """The manifest read into the SDK's V1beta1Experiment and written back: unknown fields drop out and
    mistyped ones change, so the round trip equals the input only for a manifest the SDK's models accept."""
    client = katib.ApiClient()
    experiment = client._ApiClient__deserialize(manifest, "V1beta1Experiment")
    assert isinstance(experiment, katib.V1beta1Experiment)
    return client.sanitize_for_serialization(experiment)


@pytest.mark.parametrize("model_name", available_models())
def test_each_models_experiment_matches_the_katib_sdk_models(katib_sdk, model_name):
    manifest = katib_experiment(model_name)
    assert through_sdk(katib_sdk, manifest) == manifest
    spec = manifest["spec"]
    space = search_space(model_name).knobs()
    # The experiment searches exactly the local search's knobs and values.
    assert [p["name"] for p in spec["parameters"]] == [parameter_name(k) for k in space]
    for parameter, (knob, values) in zip(spec["parameters"], space.items(), strict=True):
        assert len(parameter["feasibleSpace"]["list"]) == len(values), knob
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "valid-auc",
        "additionalMetricNames": ["valid-logloss"],
    }
    references = {p["reference"] for p in spec["trialTemplate"]["trialParameters"]}
    assert references == {p["name"] for p in spec["parameters"]}
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert all(f"${{trialParameters.{name}}}" in " ".join(command) for name in references)


@pytest.mark.parametrize("model_name", available_models())
def test_the_trial_job_is_a_valid_kubernetes_job_on_a_gpu_node(model_name):
    job = katib_experiment(model_name)["spec"]["trialTemplate"]["trialSpec"]
    kubernetes_validate.validate({**job, "metadata": {"name": "trial"}}, "1.30.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"].endswith("-cuda")
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "longrec-datasets"
    cpu_only = katib_experiment(model_name, KatibSettings(gpus=0))["spec"]["trialTemplate"]["trialSpec"]
    assert "nodeSelector" not in cpu_only["spec"]["template"]["spec"]


def test_committed_manifests_are_current_and_render_with_kustomize():
    for model_name in available_models():
        committed = yaml.safe_load((KATIB / f"experiment-{model_name}.yaml").read_text())
        assert committed == katib_experiment(model_name), f"regenerate infra/katib/experiment-{model_name}.yaml"
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: infra/katib cannot be rendered")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KATIB)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    names = sorted(d["metadata"]["name"] for d in yaml.safe_load_all(rendered) if d)
    assert names == sorted(f"longrec-tune-{m}" for m in available_models())


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="datasets volume"):
        KatibSettings(training_set="/tmp/set")
    with pytest.raises(ValueError, match="trials"):
        KatibSettings(trials=0)
    result = runner.invoke(app, ["tune", "katib", "--model", "nope"])
    assert result.exit_code == 2 and "no search space for model 'nope'" in result.output


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("katib")
    ingest_dataset("ml-100k", root / "events", max_events=600)
    build_training_set_from_events(root / "events", SampleConfig(max_history_length=8, seed=0), root / "set")
    return root / "set"


def test_a_trial_trains_once_and_prints_metrics_for_katibs_collector(training_dir):
    args = ["tune", "trial", "--model", "din", "--training-set", str(training_dir), "--batch-size", "128"]
    sets = ["--set", "lr=0.005", "--set", "epochs=3", "--set", "weight_decay=1e-06", "--set", "activation=prelu"]
    result = runner.invoke(app, args + sets + ["--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert 0.0 < float(lines["valid-auc"]) < 1.0 and float(lines["valid-logloss"]) > 0
    settings = json.loads(lines["settings"])
    assert settings == {"lr": 0.005, "epochs": 3, "weight_decay": 1e-06, "activation": "prelu"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [("lr=0.7", "lr='0.7' is not in din's search space"), ("heads=2", "expected KNOB=VALUE with KNOB one of")],
)
def test_a_trial_with_a_setting_outside_the_space_fails_clearly(training_dir, setting, message):
    args = ["tune", "trial", "--model", "din", "--training-set", str(training_dir), "--set", setting]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output


def finished(model_name: str, assignments: dict) -> dict:
    experiment = katib_experiment(model_name)
    experiment["status"] = {
        "currentOptimalTrial": {
            "bestTrialName": f"longrec-tune-{model_name}-x7",
            "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
            "observation": {"metrics": [{"name": "valid-auc", "latest": "0.81", "max": "0.81", "min": "0.81"}]},
        }
    }
    return experiment


def test_the_best_trial_becomes_the_pipelines_model_settings(katib_sdk, training_dir, tmp_path):
    experiment = finished("din", {"lr": "0.005", "dropout": "0.1", "activation": "prelu", "weight-decay": "1e-05"})
    through_sdk(katib_sdk, experiment)  # a status the SDK can read
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    result = runner.invoke(app, ["tune", "best", str(path)])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)
    assert settings == {"din": {"lr": 0.005, "dropout": 0.1, "activation": "prelu", "weight_decay": 1e-05}}
    # The printed JSON is a valid pipeline parameter, and the train task trains with it.
    params = PipelineParams(model_settings=result.output.strip())
    model = dsl.Model(uri=str(tmp_path / "model"))
    train_component.python_func(
        training_set=dsl.Dataset(uri=str(training_dir)),
        model_name="din",
        epochs=1,
        batch_size=128,
        learning_rate=3e-3,
        seed=0,
        device="cpu",
        tuning_trials=0,
        tuning_time_limit_minutes=0.0,
        model_settings=params.model_settings,
        model=model,
        metrics=dsl.Metrics(uri=str(tmp_path / "metrics")),
    )
    meta = json.loads((tmp_path / "model" / "model_meta.json").read_text())
    assert meta["train_config"]["lr"] == 0.005 and meta["train_config"]["weight_decay"] == 1e-05
    assert meta["model_config"]["dropout"] == 0.1 and meta["model_config"]["activation"] == "prelu"


def test_an_unfinished_or_foreign_experiment_is_refused(tmp_path):
    unfinished = katib_experiment("din")
    with pytest.raises(ValueError, match="has no optimal trial yet"):
        best_settings(unfinished)
    foreign = {**unfinished, "metadata": {"name": "x"}}
    with pytest.raises(ValueError, match="not made by `longrec tune katib`"):
        best_settings(foreign)
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(unfinished))
    result = runner.invoke(app, ["tune", "best", str(path)])
    assert result.exit_code == 2 and "no optimal trial yet" in result.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "model settings are not JSON"),
        ('["din"]', "must be a JSON object"),
        ('{"din": {"heads": 2}}', "unknown setting(s) ['heads'] for din"),
        ('{"nope": {"lr": 0.1}}', "no search space for model 'nope'"),
        ('{"din": {"epochs": 0}}', "epochs must be >= 1"),
    ],
)
def test_bad_model_settings_are_refused_naming_the_problem(value, message):
    with pytest.raises(ValueError) as error:
        PipelineParams(model_settings=value)
    assert message in str(error.value)
