"""Training sets on disk (parquet with fixed-size list columns) and their conversion to model batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from longrec.data.schema import (
    LONG_HISTORY_COLUMNS,
    LONG_LOG_KEY,
    SCALAR_SAMPLE_COLUMNS,
    SEQUENCE_SAMPLE_COLUMNS,
    SIDE_FEATURES,
    FeatureSpec,
)

TRAINING_SET_FILE = "samples.parquet"
SPEC_FILE = "feature_spec.json"
META_FILE = "training_set.json"
# The flat event log the long view indexes (item_id, timestamp), written only with a long view.
LONG_HISTORY_LOG_FILE = "long_history_log.parquet"


def training_set_meta(dataset, config, history_source: str, counts: dict[str, int] | None = None) -> dict:
    """training_set.json: what the samples are (dataset, track, fingerprint, sample config) and how they
    were built; the same for the pipeline's Feast build and the direct build from events."""
    meta = {
        "dataset": dataset.name,
        "dataset_track": dataset.track,
        "dataset_fingerprint": dataset.fingerprint(),
        "sample_config": config.to_dict(),
        "history_source": history_source,
    }
    if counts is not None:
        meta["n_samples"] = int(sum(counts.values()))
        meta["n_samples_by_split"] = {str(k): int(v) for k, v in counts.items()}
    return meta


def build_training_set_from_events(dataset_dir: str | Path, config, output_dir: str | Path) -> dict:
    """The build step without a feature store: an ingested dataset folder (as the pipeline's ingest step
    writes it) to a training-set folder, histories cut straight from the events."""
    from longrec.data.datasets import RecDataset
    from longrec.data.samples import build_training_set_with_log

    dataset = RecDataset.load(dataset_dir)
    frame, long_log = build_training_set_with_log(dataset, config)
    counts = frame["split"].value_counts().to_dict()
    meta = training_set_meta(dataset, config, "events (last L events strictly before the target)", counts)
    write_training_set(frame, dataset.feature_spec(config.max_history_length), output_dir, meta, long_log)
    return meta


def read_training_meta(directory: str | Path) -> dict:
    """training_set.json alone (what the samples are), without reading the samples."""
    return json.loads((Path(directory) / META_FILE).read_text())


def stack_sequences(column: pd.Series, dtype=np.int64) -> np.ndarray:
    """Object column of equal-length 1-d arrays -> 2-d array."""
    if len(column) == 0:
        return np.zeros((0, 0), dtype=dtype)
    return np.stack(column.to_numpy()).astype(dtype, copy=False)


def long_view_columns(frame_or_names) -> list[str]:
    """The long-view columns present (all of LONG_HISTORY_COLUMNS, or none: a partial view is an error)."""
    names = set(frame_or_names.columns if hasattr(frame_or_names, "columns") else frame_or_names)
    present = [column for column in LONG_HISTORY_COLUMNS if column in names]
    if present and len(present) != len(LONG_HISTORY_COLUMNS):
        missing = sorted(set(LONG_HISTORY_COLUMNS) - set(present))
        raise ValueError(f"training set has a partial long view: missing columns {missing}")
    return present


def write_long_history_log(log, directory: str | Path) -> Path:
    """LONG_HISTORY_LOG_FILE: the flat (user_id, item_id, timestamp) log of a ``LongHistoryLog``."""
    path = Path(directory) / LONG_HISTORY_LOG_FILE
    table = pa.table(
        {
            "user_id": np.asarray(log.user_ids, np.int64),
            "item_id": np.asarray(log.item_ids, np.int64),
            "timestamp": np.asarray(log.timestamps, np.int64),
        }
    )
    pq.write_table(table, path)
    return path


def read_long_history_log(directory: str | Path):
    """The ``LongHistoryLog`` of a training-set folder, or None when it was built without a long view."""
    from longrec.data.samples import LongHistoryLog

    path = Path(directory) / LONG_HISTORY_LOG_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return LongHistoryLog(*(table.column(c).to_numpy().astype(np.int64) for c in ("user_id", "item_id", "timestamp")))


def write_training_set(
    frame: pd.DataFrame, spec: FeatureSpec, directory: str | Path, meta: dict, long_log=None
) -> Path:
    """Write samples.parquet (list columns as fixed-size lists), the feature spec and the build metadata;
    with a long view, its columns and the flat log (``long_log``) it indexes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    length = spec.max_history_length
    long_columns = long_view_columns(frame)
    if bool(long_columns) != (long_log is not None):
        raise ValueError("a long view needs both its columns in the frame and the event log they index")
    arrays, names = [], []
    for column in [*SCALAR_SAMPLE_COLUMNS, *long_columns]:
        arrays.append(pa.array(frame[column].to_numpy()))
        names.append(column)
    for column, dtype in SEQUENCE_SAMPLE_COLUMNS.items():
        values = stack_sequences(frame[column], np.dtype(dtype)).reshape(-1)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values), length))
        names.append(column)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), directory / TRAINING_SET_FILE)
    if long_log is not None:
        write_long_history_log(long_log, directory)
    spec.to_json(directory / SPEC_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def read_training_set(directory: str | Path) -> tuple[pd.DataFrame, FeatureSpec, dict]:
    """Inverse of write_training_set: (frame with list columns as arrays, spec, metadata)."""
    directory = Path(directory)
    path = directory / TRAINING_SET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training set at {directory} (expected {TRAINING_SET_FILE})")
    spec = FeatureSpec.from_json(directory / SPEC_FILE)
    table = pq.read_table(path)
    scalar_columns = [*SCALAR_SAMPLE_COLUMNS, *long_view_columns(table.column_names)]
    frame = pd.DataFrame({c: table.column(c).to_numpy() for c in scalar_columns if c in table.column_names})
    for column in SEQUENCE_SAMPLE_COLUMNS:
        if column in table.column_names:
            flat = table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            frame[column] = list(flat.reshape(len(frame), -1))
    meta = json.loads((directory / META_FILE).read_text()) if (directory / META_FILE).is_file() else {}
    return frame, spec, meta


def batch_arrays(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Numpy arrays of the batch contract (schema.BATCH_KEYS) for every row of the frame."""
    from longrec.data.tensors import time_buckets

    items = stack_sequences(frame["history_items"])
    stamps = stack_sequences(frame["history_timestamps"])
    mask = stack_sequences(frame["history_mask"], np.bool_)
    targets = frame["target_timestamp"].to_numpy(np.int64)
    arrays = {
        "user_id": frame["user_id"].to_numpy(np.int64),
        "target_item": frame["target_item"].to_numpy(np.int64),
        "label": frame["label"].to_numpy(np.float32),
        "history_items": items,
        "history_time_buckets": time_buckets(stamps, targets, mask, spec.n_time_buckets),
        "history_mask": mask,
    }
    for column in SIDE_FEATURES:
        arrays[column] = frame[column].to_numpy(np.int64)
    for column in ("long_history_start", "long_history_length"):
        if column in frame.columns:
            arrays[column] = frame[column].to_numpy(np.int64)
    return arrays


def tensors_by_split(frame: pd.DataFrame, spec: FeatureSpec, long_log=None) -> dict:
    """{split: TensorSampleSet} ready for training and evaluation. With ``long_log`` (the training set's
    ``LongHistoryLog``) every batch also carries the long view: per-row window bounds and the log's items
    as the shared tensor LONG_LOG_KEY."""
    from longrec.data.tensors import TensorSampleSet

    shared = {}
    if long_log is not None:
        if not long_view_columns(frame):
            raise ValueError("a long-history log was given but the samples have no long-view columns")
        shared[LONG_LOG_KEY] = np.asarray(long_log.item_ids, np.int64)
    return {
        split: TensorSampleSet.from_arrays(batch_arrays(part, spec), shared=shared)
        for split, part in frame.groupby("split", sort=False)
    }
