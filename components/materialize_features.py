"""Materialize features: write a Feast repo for the dataset, apply it and fill the online store."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def materialize_features(events: Input[Dataset], max_history_length: int, feature_repo: Output[Artifact]):
    """Build the behaviour-sequence and side-feature views, `feast apply` them and materialize online.

    Args:
        events: The ingested dataset folder.
        max_history_length: Length L of the stored sequence snapshots.
        feature_repo: Output Feast repo folder (feature_store.yaml, parquet offline data, SQLite online store).
    """
    from longrec.features.materialize import materialize_dataset

    info = materialize_dataset(events.path, feature_repo.path, max_history_length=max_history_length)
    feature_repo.metadata.update(info)
