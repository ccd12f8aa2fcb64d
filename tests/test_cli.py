"""The `longrec` CLI: clear one-line errors on bad input, compile, and submit to a fake KFP API server."""

import socket

import pytest
import typer
import yaml
from kfp_fake import FakeKFP
from typer.testing import CliRunner

from longrec.cli import app
from longrec.pipeline.params import PipelineParams
from longrec.pipeline.submit import PIPELINE_SERVICE_ACCOUNT

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "din,transformer9000"], "unknown model 'transformer9000'; choose from din"),
        (["--max-history-length", "0"], "max history length must be a positive integer, got 0"),
        (["--max-history-length", "-5"], "max history length must be a positive integer, got -5"),
        (["--dataset", "/no/such/file.csv"], "neither a built-in dataset"),
        (["--epochs", "0"], "epochs"),
    ],
)
def test_run_rejects_bad_input_with_one_line(tmp_path, args, message):
    result = run_cli("run", *args, "--runs-dir", tmp_path / "runs", "--registry-dir", tmp_path / "registry")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    # Nothing half-written: no run folder, no registry content.
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "registry" / "production").exists()


def test_run_rejects_a_malformed_dataset_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\n1,2\n")
    result = run_cli(
        "run", "--dataset", bad, "--runs-dir", tmp_path / "runs", "--registry-dir", tmp_path / "reg"
    )
    assert result.exit_code == 2
    assert "no user column" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_pipeline_compile_writes_ir_yaml(tmp_path):
    out = tmp_path / "p.yaml"
    result = run_cli("pipeline", "compile", "--output", out)
    assert result.exit_code == 0, result.output
    spec, platform = yaml.safe_load_all(out.read_text())  # IR, then the Kubernetes platform spec
    assert spec["pipelineInfo"]["name"] == "longrec-training"
    assert "kubernetes" in platform["platforms"]


def submit(fake, *args):
    return run_cli("pipeline", "submit", "--host", fake.url if fake else "http://127.0.0.1:9", *args)


def test_submit_exposes_every_pipeline_parameter():
    from longrec.pipeline.params import PipelineParams

    command = typer.main.get_command(app).commands["pipeline"].commands["submit"]
    options = {param.name for param in command.params}
    assert set(PipelineParams.model_fields) <= options


def test_pipeline_submit_creates_a_run_on_the_kfp_api(tmp_path):
    with FakeKFP() as fake:
        result = submit(
            fake, "--models", "din", "--dataset", "s3-mounted/events.parquet", "--epochs", 2,
            "--learning-rate", 0.001, "--train-negatives", 3, "--service-account", PIPELINE_SERVICE_ACCOUNT,
            "--token", "secret-token",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"submitted run run-123 to {fake.url} (experiment exp-1)" in result.output
    # The client asked the server's mode, looked for the experiment by name, created it, then the run in it.
    paths = [(c.method, c.path) for c in fake.calls]
    assert paths == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    assert fake.posted("/apis/v2beta1/experiments")[0]["display_name"] == "longrec"
    assert all(c.headers.get("authorization") == "Bearer secret-token" for c in fake.calls)
    (run,) = fake.posted("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1" and run["service_account"] == PIPELINE_SERVICE_ACCOUNT
    arguments = run["runtime_config"]["parameters"]
    assert arguments["epochs"] == 2 and arguments["learning_rate"] == 0.001
    assert arguments["train_negatives"] == 3
    assert arguments["dataset"] == "s3-mounted/events.parquet"  # a cluster path, not checked here
    assert arguments["models"] == ["din"]
    assert set(arguments) == set(PipelineParams.model_fields)
    # The whole compiled pipeline travels with the run: the IR and its Kubernetes platform spec.
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "longrec-training"
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    executors = platform["deploymentSpec"]["executors"]
    assert "nodeSelector" in executors["exec-train-model"] and "pvcMount" in executors["exec-register-model"]


def test_pipeline_submit_reuses_the_experiment_and_schedules_a_recurring_run():
    with FakeKFP(experiments=[{"experiment_id": "exp-9", "display_name": "nightly"}]) as fake:
        result = submit(fake, "--experiment", "nightly", "--cron", "0 0 3 * * *", "--models", "din,lmn")
    assert result.exit_code == 0, result.output
    assert "submitted recurring run recurring-7" in result.output and "(experiment exp-9)" in result.output
    assert not fake.posted("/apis/v2beta1/experiments") and not fake.posted("/apis/v2beta1/runs")
    (recurring,) = fake.posted("/apis/v2beta1/recurringruns")
    assert recurring["experiment_id"] == "exp-9"
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
    assert recurring["runtime_config"]["parameters"]["models"] == ["din", "lmn"]


def test_pipeline_submit_rejects_a_five_field_cron_before_calling_kfp():
    with FakeKFP() as fake:
        result = submit(fake, "--cron", "0 3 * * *")
    assert result.exit_code == 2 and "KFP wants 6" in result.output
    assert not fake.calls


def test_pipeline_submit_reports_api_errors_in_one_line():
    with FakeKFP(fail_runs=True) as fake:
        result = submit(fake)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: could not submit to {fake.url}: (500)")
    assert "Traceback" not in result.output


def test_pipeline_submit_reports_connection_errors_in_one_line():
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli("pipeline", "submit", "--host", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"error: could not submit to http://127.0.0.1:{port}:" in result.output
    assert "Connection refused" in result.output and "Traceback" not in result.output


def test_evaluate_rejects_missing_folders(tmp_path):
    result = run_cli("evaluate", tmp_path / "nope", "--training-set", tmp_path)
    assert result.exit_code == 2 and "does not exist" in result.output


def test_train_then_evaluate_without_the_pipeline(tmp_path):
    out = tmp_path / "out"
    result = run_cli("train", "--model", "din", "--max-events", 600, "--epochs", 1, "-L", 8, "--output", out)
    assert result.exit_code == 0, result.output
    assert (out / "din" / "model.pt").is_file() and (out / "validation_report.html").is_file()
    assert '"auc"' in result.output
    result = run_cli(
        "evaluate", out / "din", "--training-set", out / "training_set", "--output", tmp_path / "ev"
    )
    assert result.exit_code == 0, result.output
    assert "| **din** (candidate)" in result.output
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_train_rejects_an_unknown_model(tmp_path):
    result = run_cli("train", "--model", "nope", "--output", tmp_path)
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
