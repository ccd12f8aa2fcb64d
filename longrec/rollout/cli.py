"""`longrec rollout ...`: start, status, step, promote, rollback, replay, report. Every command first
recovers a promotion a crashed process left half done; every invalid command prints one `error:` line,
exits 2 and changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from longrec.rollout.state import DEFAULT_SCHEDULE, Guardrails, RolloutError, StatsConfig

rollout_app = typer.Typer(
    no_args_is_help=True, help="A/B rollout of a candidate model: ramp, promote, roll back."
)

DatasetOpt = typer.Option(
    "ml-100k", "--dataset", help="Registry track (dataset name) the experiment runs on."
)
StateOpt = typer.Option(None, "--state-dir", help="Rollout state folder (default $LONGREC_HOME/rollout).")
RegistryOpt = typer.Option(None, "--registry", help="Registry root (default $LONGREC_HOME/registry).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _open(dataset: str, state_dir: Path | None, registry_dir: Path | None):
    from longrec.registry.store import ModelRegistry, RegistryError
    from longrec.rollout.decide import Rollout

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        rollout = Rollout(dataset, state_dir=state_dir, registry=ModelRegistry(registry_dir))
        for experiment in rollout.recover():
            typer.echo(f"recovered experiment {experiment.id}: {experiment.status}", err=True)
    except (RolloutError, RegistryError) as error:
        _fail(str(error))
    return rollout


def _status_lines(rollout, experiment) -> list[str]:
    analysis = rollout.analyse(experiment)
    lines = [
        f"experiment {experiment.id} on {experiment.dataset}: {experiment.status}, "
        f"candidate {experiment.candidate_tag} at {experiment.traffic:g} % (schedule "
        f"{' -> '.join(f'{s:g}' for s in experiment.schedule)} %), control {experiment.control_tag}",
        f"{'arm':<10}{'requests':>9}{'impr.':>8}{'clicks':>8}{'CTR':>8}{'HR@k':>8}{'NDCG@k':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}",
    ]
    for arm, m in analysis.arms.items():
        lines.append(
            f"{arm:<10}{m['requests']:>9}{m['impressions']:>8}{m['clicks']:>8}{_f(m['ctr'])}{_f(m['hr_at_k'])}"
            f"{_f(m['ndcg_at_k'])}{_f(m['latency_p50_ms'], 1)}{_f(m['latency_p99_ms'], 1)}{_f(m['error_rate'])}"
        )
    c = analysis.comparison
    if c:
        lines.append(
            f"CTR uplift {c['difference']:+.4f} (95 % CI {c['ci_low']:+.4f} .. {c['ci_high']:+.4f}; always-valid "
            f"{c['av_ci_low']:+.4f} .. {c['av_ci_high']:+.4f}), always-valid p={c['always_valid_p']:.3g}"
        )
    srm = analysis.srm
    if 0 < srm["expected_candidate_share"] < 1:
        lines.append(
            f"SRM this stage: {srm['control']} / {srm['candidate']} users, p={srm['p_value']:.3g}"
            + (" FIRED" if srm["fired"] else " ok")
        )
    else:
        lines.append(f"SRM: not applicable at {experiment.traffic:g} % (one arm)")
    breaches = [g["name"] for g in analysis.guardrails if g["breached"]]
    lines.append("guardrails: " + ("BREACHED " + ", ".join(breaches) if breaches else "ok"))
    return lines


def _f(value, digits: int = 4) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.{digits}f}"


@rollout_app.command()
def start(
    candidate: str = typer.Option(..., "--candidate", help="Registry tag of the candidate model."),
    traffic: float = typer.Option(5.0, "--traffic", help="Initial candidate share in percent."),
    control: str = typer.Option(None, "--control", help="Control tag (default: the production model)."),
    schedule: str = typer.Option(",".join(f"{s:g}" for s in DEFAULT_SCHEDULE), help="Ramp steps in percent."),
    max_error_rate: float = typer.Option(Guardrails.max_error_rate, help="Guardrail: candidate error rate."),
    max_p99_ms: float = typer.Option(Guardrails.max_p99_latency_ms, help="Guardrail: candidate p99 latency."),
    min_ctr_ratio: float = typer.Option(Guardrails.min_ctr_ratio, help="Guardrail: candidate/control CTR."),
    alpha: float = typer.Option(StatsConfig.alpha, help="Always-valid false-positive rate of the test."),
    min_impressions: int = typer.Option(StatsConfig.min_impressions_per_arm, help="Per arm and stage."),
    dataset: str = DatasetOpt,
    state_dir: Path = StateOpt,
    registry_dir: Path = RegistryOpt,
) -> None:
    """Start an A/B of a registered candidate against production."""
    try:
        steps = [float(s) for s in schedule.split(",") if s.strip()]
        guardrails = Guardrails(max_error_rate, max_p99_ms, min_ctr_ratio)
        test = StatsConfig(alpha=alpha, min_impressions_per_arm=min_impressions)
    except (ValueError, RolloutError) as error:
        _fail(f"invalid option: {error}")
    rollout = _open(dataset, state_dir, registry_dir)
    try:
        experiment = rollout.start(
            candidate, traffic=traffic, control=control, schedule=steps, guardrails=guardrails, test=test
        )
    except RolloutError as error:
        _fail(str(error))
    typer.echo(
        f"started experiment {experiment.id}: {experiment.candidate_tag} at {experiment.traffic:g} % against "
        f"{experiment.control_tag}"
    )


@rollout_app.command()
def status(
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the experiment and analysis as JSON."),
) -> None:  # fmt: skip
    """The current (or latest) experiment, per-arm metrics, the test, SRM and guardrails."""
    rollout = _open(dataset, state_dir, registry_dir)
    experiment = rollout.current()
    if experiment is None:
        _fail(f"no experiment on {dataset}: start one with `longrec rollout start --candidate TAG`")
    if as_json:
        analysis = rollout.analyse(experiment).to_dict()
        analysis.pop("curve")
        typer.echo(
            json.dumps({"experiment": experiment.summary(), "analysis": analysis}, indent=2, default=float)
        )
        return
    typer.echo("\n".join(_status_lines(rollout, experiment)))


@rollout_app.command()
def step(
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
    dataset_source: str = typer.Option(None, help="What load_dataset reads for the drift reference."),
    no_drift: bool = typer.Option(False, "--no-drift", help="Skip the Evidently reports."),
) -> None:  # fmt: skip
    """Check SRM and guardrails, then the test; ramp, hold, promote or roll back. Writes the step's reports."""
    from longrec.rollout.operate import step_with_reports

    rollout = _open(dataset, state_dir, registry_dir)
    try:
        result = step_with_reports(rollout, dataset_source=dataset_source, drift=not no_drift)
    except RolloutError as error:
        _fail(str(error))
    if result.drift:
        typer.echo(f"drift: {'ALERT' if result.drift['alert'] else 'ok'} ({result.folder})")
    typer.echo(f"{result.decision.action}: {result.decision.reason}")


@rollout_app.command()
def promote(
    reason: str = typer.Option("promoted by an operator", help="Recorded in the audit log and the registry."),
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
) -> None:  # fmt: skip
    """Make the candidate production now (compare-and-swap on the production pointer)."""
    rollout = _open(dataset, state_dir, registry_dir)
    try:
        experiment = rollout.promote(reason)
    except RolloutError as error:
        _fail(str(error))
    typer.echo(f"promoted: production for {dataset} is now {experiment.candidate_tag}")


@rollout_app.command()
def rollback(
    reason: str = typer.Option("rolled back by an operator", help="Recorded in the audit log."),
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
) -> None:  # fmt: skip
    """Send every user back to control (candidate to 0 %); production is unchanged."""
    rollout = _open(dataset, state_dir, registry_dir)
    try:
        experiment = rollout.rollback(reason)
    except RolloutError as error:
        _fail(str(error))
    typer.echo(f"rolled back: {experiment.candidate_tag} at 0 %, production stays {experiment.control_tag}")


@rollout_app.command()
def replay(
    url: str = typer.Option(..., "--url", help="Base URL of the ranker (POST {url}/rank)."),
    requests: int = typer.Option(1000, "--requests", help="Requests per step."),
    steps: int = typer.Option(1, "--steps", help="Replay-then-step rounds (stops at promote or rollback)."),
    top_k: int = typer.Option(10, "--top-k"),
    negatives: int = typer.Option(49, "--negatives", help="Sampled negatives per request."),
    click_model: str = typer.Option("shown", help="shown (click iff in top-k) or position (position-biased)."),
    dataset_source: str = typer.Option(None, help="What load_dataset reads (default: the dataset name)."),
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
) -> None:  # fmt: skip
    """Replay the dataset's test-period interactions against a running ranker, stepping after each batch."""
    from longrec.data.datasets import DatasetError, load_dataset
    from longrec.rollout.operate import replayed_ab
    from longrec.rollout.replay import CLICK_MODELS, replay_requests

    if click_model not in CLICK_MODELS:
        _fail(f"--click-model must be one of {', '.join(CLICK_MODELS)}")
    if requests < 1 or steps < 1 or top_k < 1 or negatives < 1:
        _fail("--requests, --steps, --top-k and --negatives must be at least 1")
    rollout = _open(dataset, state_dir, registry_dir)
    try:
        rollout.require_active()
        source = load_dataset(dataset_source or dataset.split("@")[0])
        run = replayed_ab(
            rollout, url, replay_requests(source, n_negatives=negatives), per_step=requests, max_steps=steps,
            top_k=top_k, click_model=click_model, dataset_source=dataset_source,
        )  # fmt: skip
    except (RolloutError, DatasetError) as error:
        _fail(str(error))
    for number, item in enumerate(run.steps, 1):
        arms = ", ".join(
            f"{arm} {v['requests']} req / {v['clicks']} clicks" for arm, v in item["replay"]["by_arm"].items()
        )
        typer.echo(
            f"step {number} at {item['traffic']:g} %: {arms}; drift {'ALERT' if item['drift_alert'] else 'ok'}; "
            f"{item['decision']['action']}: {item['decision']['reason']}"
        )
    typer.echo(f"experiment now {run.final_status} at {run.final_traffic:g} %")


@rollout_app.command()
def report(
    output: Path = typer.Option(None, "--output", help="HTML file (default: beside the experiment's reports)."),
    dataset: str = DatasetOpt, state_dir: Path = StateOpt, registry_dir: Path = RegistryOpt,
) -> None:  # fmt: skip
    """Write one HTML page: arms, uplift, the sequential test over time, SRM, guardrails, drift, decisions."""
    from longrec.rollout.report import write_report

    rollout = _open(dataset, state_dir, registry_dir)
    experiment = rollout.current()
    if experiment is None:
        _fail(f"no experiment on {dataset}")
    path = write_report(rollout, experiment, output)
    typer.echo(f"report: {path}")


@rollout_app.command("pipeline")
def pipeline_(
    output: Path = typer.Option(Path("rollout-pipeline"), "--output", help="Folder for the two YAML files."),
    cron: str = typer.Option("0 */30 * * * *", help="Six-field cron schedule of the recurring run."),
    dataset: str = DatasetOpt,
    state_dir: str = typer.Option("", "--state-dir", help="Rollout state folder inside the cluster."),
    registry_dir: str = typer.Option("", "--registry", help="Registry root inside the cluster."),
    ranker_url: str = typer.Option("", help="Ranker base URL, for replayed traffic."),
    replay_requests: int = typer.Option(0, help="Requests replayed per scheduled run (0 = live traffic)."),
) -> None:
    """Compile the rollout pipeline (collect -> analyse -> decide) and its recurring-run spec."""
    from pipelines.rollout_pipeline import compile_rollout_pipeline

    if replay_requests < 0:
        _fail("--replay-requests must be at least 0")
    arguments = {
        "dataset": dataset, "state_dir": state_dir, "registry_dir": registry_dir, "ranker_url": ranker_url,
        "replay_requests": replay_requests,
    }  # fmt: skip
    try:
        pipeline_path, recurring_path = compile_rollout_pipeline(output, cron=cron, arguments=arguments)
    except ValueError as error:
        _fail(str(error))
    typer.echo(f"pipeline: {pipeline_path}\nrecurring run ({cron}): {recurring_path}")
