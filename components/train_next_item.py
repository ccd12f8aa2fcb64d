"""Train and rank one next-item model (RecBLR or SASRec) with time-ordered leave-one-out."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_next_item(
    dataset: str,
    model_name: str,
    max_history_length: int,
    epochs: int,
    seeds: str,
    min_core: int,
    max_users: int,
    metrics: Output[Metrics],
    result: Output[Artifact],
    device: str = "auto",
):
    """Train over seeds; log HR/NDCG/MRR@10/20 (mean over seeds, full ranking against all items).

    Args:
        dataset: Built-in dataset name or a user,item,timestamp file path.
        model_name: recblr or sasrec.
        max_history_length: History length L.
        epochs: Maximum epochs (early stopping on validation NDCG@10).
        seeds: Comma-separated training seeds.
        min_core: k-core filter on users and items (0 = off).
        max_users: Keep at most this many users (0 = all); for smoke runs.
        metrics: Mean test metrics over seeds.
        result: Output folder with result.json and summary.md.
        device: "auto" (CUDA when this task got a GPU), "cuda" or "cpu".
    """
    from pathlib import Path

    from longrec.experiments.nextitem_cli import run_nextitem_experiment
    from longrec.train.trainer import resolve_device

    outcome = run_nextitem_experiment(
        model_name,
        dataset,
        max_history_length,
        epochs,
        [int(s) for s in seeds.split(",") if s.strip()],
        output=Path(result.path),
        min_core=min_core,
        max_users=max_users or None,
        device=str(resolve_device(device)),
    )
    for name, values in outcome["test_summary"].items():
        metrics.log_metric(f"test_{name}_mean", float(values["mean"]))
        metrics.log_metric(f"test_{name}_std", float(values["std"]))
