"""Gate: promote only a candidate that clears the AUC floor and beats production by the minimum lift."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_promotion(
    candidate_name: str,
    candidate_auc: float,
    production_auc: float,
    auc_floor: float,
    min_auc_lift: float,
    decision: Output[Markdown],
) -> str:
    """Return "promote" or "reject" and write the reasons.

    Args:
        candidate_name: The candidate model's name.
        candidate_auc: The candidate's test AUC.
        production_auc: The production model's AUC on the same test samples (negative when there is none).
        auc_floor: Minimum test AUC for any promotion.
        min_auc_lift: Required AUC gain over production.
        decision: Output Markdown with the decision and its reasons.
    """
    from longrec.registry.gate import decide_promotion

    result = decide_promotion(
        candidate_auc,
        production_auc if production_auc >= 0 else None,
        auc_floor=auc_floor,
        min_auc_lift=min_auc_lift,
        candidate_name=candidate_name,
    )
    with open(decision.path, "w") as handle:
        handle.write(result.to_markdown())
    return result.verdict
