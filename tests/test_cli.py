"""The `longrec` CLI: clear one-line errors on bad input, compile, and submit with the KFP client mocked."""

from unittest import mock

import pytest
import yaml
from typer.testing import CliRunner

from longrec.cli import app

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


def test_pipeline_submit_uses_the_kfp_client(tmp_path):
    with mock.patch("kfp.Client") as client_class:
        client_class.return_value.create_run_from_pipeline_package.return_value.run_id = "run-123"
        result = run_cli(
            "pipeline",
            "submit",
            "--host",
            "http://kfp.example:8888",
            "--models",
            "din",
            "--dataset",
            "s3-mounted/events.parquet",
            "--epochs",
            "2",
        )
    assert result.exit_code == 0, result.output
    assert "submitted run run-123" in result.output
    client_class.assert_called_once_with(host="http://kfp.example:8888", namespace=None, existing_token=None)
    call = client_class.return_value.create_run_from_pipeline_package.call_args
    assert call.kwargs["arguments"]["epochs"] == 2
    assert (
        call.kwargs["arguments"]["dataset"] == "s3-mounted/events.parquet"
    )  # a cluster path, not checked here
    assert call.kwargs["experiment_name"] == "longrec"
    assert call.args[0].endswith(".yaml")


def test_pipeline_submit_reports_connection_errors_in_one_line():
    with mock.patch("kfp.Client", side_effect=ConnectionError("connection refused")):
        result = run_cli("pipeline", "submit", "--host", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "could not submit to http://127.0.0.1:9: connection refused" in result.output


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
