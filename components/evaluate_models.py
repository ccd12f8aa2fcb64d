"""Evaluate every trained model (and the production model) on the same test samples, against DIN."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_models(
    training_set: Input[Dataset],
    models: Input[list[Model]],
    registry_dir: str,
    comparison: Output[Markdown],
    report: Output[HTML],
    metrics: Output[Metrics],
    metrics_json: Output[Artifact],
    candidate: Output[Model],
) -> NamedTuple("Evaluation", candidate_name=str, candidate_auc=float, production_auc=float):
    """Score the test split with each model, write the comparison table, and pick the candidate by
    validation AUC (never by test AUC).

    Args:
        training_set: The validated training-set folder.
        models: The trained model folders (fan-in of the train tasks).
        registry_dir: Model registry root; its production model for this dataset is rescored on the same
            test samples. Empty means the default location.
        comparison: Output Markdown table (AUC, GAUC, LogLoss, RelaImpr vs DIN).
        report: Output HTML version of the table.
        metrics: The candidate's test metrics.
        metrics_json: Output JSON with every model's metrics.
        candidate: Output copy of the chosen model folder.
    """
    from collections import namedtuple

    from longrec.eval.compare import compare_models

    result = compare_models(
        training_set.path,
        [m.path for m in models],
        registry_dir or None,
        comparison_md=comparison.path,
        report_html=report.path,
        metrics_json=metrics_json.path,
        candidate_dir=candidate.path,
    )
    for key, value in result.candidate_metrics.items():
        metrics.log_metric(f"test_{key}", float(value))
    candidate.metadata.update({"model_name": result.candidate_name})
    outputs = namedtuple("Evaluation", ["candidate_name", "candidate_auc", "production_auc"])
    return outputs(result.candidate_name, result.candidate_auc, result.production_auc)
