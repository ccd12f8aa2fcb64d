"""`longrec rollout`: the operator's commands, and invalid ones failing with one `error:` line, exit 2 and no
change to the experiment state or the registry."""

import sqlite3

import pytest
from rollout_helpers import DATASET, registry_with_models
from typer.testing import CliRunner

from longrec.rollout.cli import rollout_app

runner = CliRunner()


@pytest.fixture()
def env(tmp_path):
    registry, tags = registry_with_models(tmp_path)
    common = [
        "--dataset",
        DATASET,
        "--state-dir",
        str(tmp_path / "rollout"),
        "--registry",
        str(registry.root),
    ]
    return registry, tags, common, tmp_path / "rollout"


def _invoke(args):
    return runner.invoke(rollout_app, args, catch_exceptions=False)


def _snapshot(registry, state_dir):
    """Everything a command could change: every table of the state database, and the production pointer."""
    tables = {}
    if (state_dir / "rollout.db").is_file():
        db = sqlite3.connect(state_dir / "rollout.db")
        tables = {t: db.execute(f"SELECT * FROM {t}").fetchall() for t in ("experiments", "audit")}
        db.close()
    return tables, registry.production(DATASET), len(registry.history(DATASET))


@pytest.mark.parametrize(
    "args, message",
    [
        (["promote"], "no running experiment"),
        (["rollback"], "no running experiment"),
        (["step", "--no-drift"], "no running experiment"),
        (
            ["start", "--candidate", "CANDIDATE", "--traffic", "150"],
            "traffic must be a percentage in [0, 100], got 150",
        ),
        (["start", "--candidate", "longrec-rollout-test-recblr:doesnotexist"], "is not in the registry"),
        (["start", "--candidate", "CONTROL"], "is the control model already"),
        (["start", "--candidate", "CANDIDATE", "--schedule", "50,25,100"], "strictly increasing"),
        (["start", "--candidate", "CANDIDATE", "--max-error-rate", "2"], "max error rate"),
        (["status"], "no experiment on"),
    ],
)
def test_invalid_commands_fail_cleanly_and_change_nothing(env, args, message):
    registry, (control, candidate), common, state_dir = env
    args = [{"CANDIDATE": candidate, "CONTROL": control}.get(a, a) for a in args]
    before = _snapshot(registry, state_dir)
    result = runner.invoke(rollout_app, [*args, *common])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert _snapshot(registry, state_dir) == before


def test_second_start_and_promote_after_rollback_are_refused(env):
    registry, (control, candidate), common, state_dir = env
    assert _invoke(["start", "--candidate", candidate, "--traffic", "5", *common]).exit_code == 0
    before = _snapshot(registry, state_dir)
    again = runner.invoke(rollout_app, ["start", "--candidate", candidate, *common])
    assert again.exit_code == 2 and "already running" in again.output
    assert _snapshot(registry, state_dir) == before
    assert _invoke(["rollback", "--reason", "checking", *common]).exit_code == 0
    before = _snapshot(registry, state_dir)
    late = runner.invoke(rollout_app, ["promote", *common])
    assert late.exit_code == 2 and "no running experiment" in late.output
    assert _snapshot(registry, state_dir) == before
    assert registry.production(DATASET)["tag"] == control


def test_operator_walkthrough(env):
    registry, (control, candidate), common, state_dir = env
    started = _invoke(["start", "--candidate", candidate, "--traffic", "5", *common])
    assert started.exit_code == 0 and f"{candidate} at 5 % against {control}" in started.output
    status = _invoke(["status", *common])
    assert "running" in status.output and "control" in status.output and "SRM" in status.output
    held = _invoke(["step", "--no-drift", *common])
    assert held.exit_code == 0 and held.output.startswith("hold: collecting")
    promoted = _invoke(["promote", "--reason", "signed off", *common])
    assert promoted.exit_code == 0 and registry.production(DATASET)["tag"] == candidate
    assert registry.history(DATASET)[-1]["reason"].endswith("signed off")
    report = _invoke(["report", *common])
    path = report.output.split("report: ")[1].strip()
    page = open(path).read()
    assert "promoted" in page and "Decision history" in page and "data:image/png;base64," in page


def test_rollout_is_mounted_on_the_main_cli():
    from longrec.cli import app

    result = runner.invoke(app, ["rollout", "--help"])
    assert result.exit_code == 0 and "promote" in result.output
