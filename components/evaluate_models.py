"""Evaluate every trained model (and the production model) on the same test samples, against DIN."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_models(
    training_set: Input[Dataset],
    models: Input[list[Model]],
    registry_dir: str,
    comparison: Output[Markdown],
    report: Output[HTML],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    metrics_json: Output[Artifact],
    gate_inputs: Output[Artifact],
    candidate: Output[Model],
) -> NamedTuple("Evaluation", candidate_name=str, candidate_auc=float, production_tag=str):
    """Score the test split with each model, pick the candidate by validation AUC (never by test AUC),
    rescore production on the same samples when they are comparable, and measure the paired lift.

    Args:
        training_set: The validated training-set folder.
        models: The trained model folders (fan-in of the train tasks).
        registry_dir: Model registry root; its production model for this dataset track is rescored on the
            same test samples. Empty means the default location.
        comparison: Output Markdown table (AUC, GAUC, LogLoss, RelaImpr vs DIN).
        report: Output HTML page: tables, lift interval, ROC and training curves.
        metrics: The candidate's test metrics and the lift over production.
        roc: The candidate's ROC curve and confusion matrix at threshold 0.5 (Kubeflow UI visualisation).
        metrics_json: Output JSON with every model's metrics.
        gate_inputs: Output JSON the gate decides on (candidate, production comparability, paired lift).
        candidate: Output copy of the chosen model folder.
    """
    from collections import namedtuple

    import numpy as np

    from longrec.data.training_set import read_training_meta
    from longrec.eval.compare import compare_models
    from longrec.eval.report import roc_points
    from longrec.registry.store import ModelRegistry

    meta = read_training_meta(training_set.path)
    track = meta.get("dataset_track", meta.get("dataset"))
    production = ModelRegistry(registry_dir or None).production_model(track)
    result = compare_models(
        training_set.path,
        [m.path for m in models],
        production,
        comparison_md=comparison.path,
        report_html=report.path,
        metrics_json=metrics_json.path,
        candidate_dir=candidate.path,
        gate_inputs_json=gate_inputs.path,
    )
    for key, value in result.candidate_metrics.items():
        metrics.log_metric(f"test_{key}", float(value))
    for key, value in (result.lift or {}).items():
        if key.startswith(("auc_lift", "logloss_lift", "gauc_lift")):
            metrics.log_metric(f"vs_production_{key}", float(value))
    logits = result.logits[result.candidate_label]
    points = roc_points(result.labels, logits)
    roc.log_roc_curve(points["fpr"], points["tpr"], points["threshold"])
    predicted = (logits > 0).astype(int)
    labels = result.labels.astype(int)
    matrix = [[int(np.sum((labels == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)]
    roc.log_confusion_matrix(["no click", "click"], matrix)
    candidate.metadata.update({"model_name": result.candidate_name})
    outputs = namedtuple("Evaluation", ["candidate_name", "candidate_auc", "production_tag"])
    return outputs(result.candidate_name, result.candidate_auc, result.production.get("tag") or "")
