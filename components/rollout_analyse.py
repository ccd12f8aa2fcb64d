"""Rollout pipeline, step 2: per-arm metrics, the sequential test, SRM, guardrails and Evidently drift."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rollout_analyse(
    dataset: str,
    state_dir: str,
    requests: Input[Dataset],
    step_inputs: Output[Artifact],
    metrics: Output[Metrics],
    drift_report: Output[HTML],
) -> bool:
    """Analyse the collected requests; return whether the drift alert is raised.

    Args:
        dataset: Registry track the experiment runs on.
        state_dir: Rollout state folder; empty means the default.
        requests: The collected request log (rollout-collect).
        step_inputs: Output folder: step_inputs.json (analysis + drift summary) and the Evidently files.
        metrics: Output per-arm CTR, the uplift and the always-valid p-value.
        drift_report: Output Evidently drift report of the served inputs (HTML).
    """
    import shutil
    from pathlib import Path

    from longrec.rollout.decide import Rollout
    from longrec.rollout.operate import analyse_collected

    payload = analyse_collected(
        Rollout(dataset, state_dir=state_dir or None), requests.path, step_inputs.path
    )
    for arm, values in payload["analysis"]["arms"].items():
        metrics.log_metric(f"{arm}_impressions", values["impressions"])
        if values["ctr"] is not None:
            metrics.log_metric(f"{arm}_ctr", values["ctr"])
    comparison = payload["analysis"]["comparison"]
    if comparison:
        metrics.log_metric("ctr_uplift", comparison["difference"])
        metrics.log_metric("always_valid_p", comparison["always_valid_p"])
    drift = payload["drift"]
    html = Path(step_inputs.path) / "drift.html"
    if html.is_file():
        shutil.copy(html, drift_report.path)
    else:
        Path(drift_report.path).write_text(
            f"<p>No drift report: {drift['note'] if drift else 'no reference'}</p>"
        )
    return bool(drift and drift["alert"])
