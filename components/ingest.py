"""Ingest: load a dataset (built-in name or file path) into a versioned events artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_dataset(dataset: str, max_events: int, events: Output[Dataset]):
    """Load interactions and side features, remap ids, and write them as parquet.

    Args:
        dataset: A built-in dataset name (ml-100k, dslabs-movielens) or a user,item,timestamp CSV/parquet path.
        max_events: Keep whole users until this many events (0 keeps everything); for quick runs.
        events: Output folder with events, side features, vocabularies and dataset.json.
    """
    from longrec.data.ingest import ingest_dataset as ingest

    info = ingest(dataset, events.path, max_events=max_events or None)
    events.metadata.update(info)
