"""Gate: promote only a candidate that clears the AUC floor and beats a comparable production model with
statistical confidence, without getting worse calibrated."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_promotion(
    gate_inputs: Input[Artifact],
    auc_floor: float,
    min_auc_lift: float,
    max_logloss_increase: float,
    decision: Output[Markdown],
    decision_json: Output[Artifact],
    gate_metrics: Output[Metrics],
) -> str:
    """Return "promote" or "reject" and write the reasons.

    Args:
        gate_inputs: The evaluation's JSON: candidate metrics, production comparability, paired lift.
        auc_floor: Minimum test AUC for any promotion.
        min_auc_lift: The lower bound of the AUC-lift interval over production must exceed this.
        max_logloss_increase: Largest tolerated LogLoss increase over production.
        decision: Output Markdown with the decision, its reasons and the lift interval.
        decision_json: The same as JSON, with the production tag the decision was made against.
        gate_metrics: The lift and its interval, for the Kubeflow UI.
    """
    import json

    from longrec.registry.gate import GateConfig, decide_promotion

    with open(gate_inputs.path) as handle:
        inputs = json.load(handle)
    config = GateConfig(
        auc_floor=auc_floor, min_auc_lift=min_auc_lift, max_logloss_increase=max_logloss_increase
    )
    result = decide_promotion(inputs, config)
    with open(decision.path, "w") as handle:
        handle.write(result.to_markdown())
    with open(decision_json.path, "w") as handle:
        json.dump(result.to_dict(), handle, indent=2, default=float)
    gate_metrics.log_metric("promote", float(result.promote))
    for key, value in (result.lift or {}).items():
        if key.startswith(("auc_lift", "logloss_lift", "gauc_lift")):
            gate_metrics.log_metric(key, float(value))
    return result.verdict
