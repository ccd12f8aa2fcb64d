"""Build the training set: sample targets and negatives, read histories point-in-time from Feast."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_training_set(
    events: Input[Dataset],
    feature_repo: Input[Artifact],
    max_history_length: int,
    split: str,
    train_negatives: int,
    eval_negatives: int,
    negative_sampling: str,
    seed: int,
    training_set: Output[Dataset],
    memory_history_length: int = 0,
):
    """Cut CTR samples (MODELS.md section 0) and read each history point-in-time from Feast, in chunks.

    Args:
        events: The ingested dataset folder.
        feature_repo: The materialized Feast repo.
        max_history_length: History length L.
        split: "time" (global 80/10/10 time split) or "leave_one_out".
        train_negatives: Sampled negatives per positive in train.
        eval_negatives: Sampled negatives per positive in valid and test.
        negative_sampling: "uniform" or "popularity".
        seed: Seed of negative sampling.
        training_set: Output folder with samples.parquet, feature_spec.json and training_set.json (and,
            with a long view, long_history_log.parquet).
        memory_history_length: L_long of the long view LMN writes its memory from (0 = none).
    """
    from longrec.data.samples import SampleConfig
    from longrec.features.training_set import build_training_set_from_features

    config = SampleConfig(
        max_history_length=max_history_length,
        memory_history_length=memory_history_length,
        split=split,
        train_negatives=train_negatives,
        eval_negatives=eval_negatives,
        negative_sampling=negative_sampling,
        seed=seed,
    )
    info = build_training_set_from_features(events.path, feature_repo.path, config, training_set.path)
    training_set.metadata.update(info)
