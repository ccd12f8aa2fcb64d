"""The pipeline's training-set step: sample targets from events, read every history from Feast.

Histories come from the event-log view (`EventLog.from_store`, pulled once through the offline store) and
user side features from `get_historical_features`; the training set is assembled and written in chunks of
about `values_per_chunk` history values, so memory grows with the chunk, not with the training set.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from longrec.data.datasets import RecDataset
from longrec.data.samples import (
    LongHistoryLog,
    SampleConfig,
    assemble_training_set,
    build_targets,
    long_history_columns,
)
from longrec.data.schema import LONG_HISTORY_COLUMNS, SCALAR_SAMPLE_COLUMNS, SEQUENCE_SAMPLE_COLUMNS
from longrec.data.training_set import (
    META_FILE,
    SPEC_FILE,
    TRAINING_SET_FILE,
    stack_sequences,
    training_set_meta,
    write_long_history_log,
)
from longrec.features.store import EventLog, FeatureConsistencyError, fetch_user_features, iter_history_chunks

logger = logging.getLogger(__name__)

# History values (rows x L) per chunk: ~16M values is ~0.3 GB of int64 items, timestamps and mask.
VALUES_PER_CHUNK = 16_000_000
_USER_COLUMNS = (("user_age", "age_id"), ("user_gender", "gender_id"), ("user_occupation", "occupation_id"))


def _scalar_columns(long_view: bool) -> dict[str, str]:
    return {**SCALAR_SAMPLE_COLUMNS, **(LONG_HISTORY_COLUMNS if long_view else {})}


def _schema(length: int, long_view: bool = False) -> pa.Schema:
    """The layout of `longrec.data.training_set.write_training_set`: scalars, then fixed-size lists."""
    scalar = [
        (column, pa.string() if dtype == "object" else pa.from_numpy_dtype(np.dtype(dtype)))
        for column, dtype in _scalar_columns(long_view).items()
    ]
    sequence = [
        (column, pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), length))
        for column, dtype in SEQUENCE_SAMPLE_COLUMNS.items()
    ]
    return pa.schema(scalar + sequence)


def _chunk_table(frame, schema: pa.Schema, length: int) -> pa.Table:
    """One chunk of samples as a table of `schema`."""
    scalar = _scalar_columns("long_history_start" in schema.names)
    arrays = [pa.array(frame[column].to_numpy(), type=schema.field(column).type) for column in scalar]
    for column, dtype in SEQUENCE_SAMPLE_COLUMNS.items():
        values = stack_sequences(frame[column], np.dtype(dtype)).reshape(-1)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values), length))
    return pa.Table.from_arrays(arrays, schema=schema)


def build_training_set_from_features(
    dataset_dir: str | Path,
    repo_dir: str | Path,
    config: SampleConfig,
    output_dir: str | Path,
    values_per_chunk: int = VALUES_PER_CHUNK,
) -> dict:
    """Targets and negatives from events; histories and user features point-in-time from Feast. With
    ``config.memory_history_length`` > 0 also the long view: each sample's window of the same event log
    (the last L_long events strictly before the target) and the log itself, for training only."""
    dataset = RecDataset.load(dataset_dir)
    targets, _ = build_targets(dataset, config)
    length = config.max_history_length
    store = FeatureStore(repo_path=str(repo_dir))
    started = time.time()
    log = EventLog.from_store(store)
    # Static user features: one lookup per user, as of the user's latest target.
    latest = targets.groupby("user_id", sort=True)["target_timestamp"].max()
    side = fetch_user_features(store, latest.index.to_numpy(), latest.to_numpy() - 1).set_index("user_id")
    if len(side) != len(latest):
        raise FeatureConsistencyError(f"expected user features for {len(latest)} users, got {len(side)}")
    fetch_seconds = time.time() - started

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    n_samples = 0
    rows_per_chunk = max(1, values_per_chunk // length)
    long_view = bool(config.memory_history_length)
    schema = _schema(length, long_view)
    if long_view:
        long_log = LongHistoryLog(
            np.repeat(log.user_ids, np.diff(log.user_start)), log.item_ids, log.timestamps
        )
        long_start, long_length = log.history_bounds(
            targets["user_id"].to_numpy(np.int64),
            targets["target_timestamp"].to_numpy(np.int64),
            config.memory_history_length,
        )
        long_columns = long_history_columns(long_log, long_start, long_length)
        write_long_history_log(long_log, output_dir)
    with pq.ParquetWriter(output_dir / TRAINING_SET_FILE, schema) as writer:
        for rows, items, stamps in iter_history_chunks(log, targets, length, rows_per_chunk):
            chunk = assemble_training_set(targets.iloc[rows], items, stamps, dataset)
            # User side features as the feature store served them.
            for column, source in _USER_COLUMNS:
                chunk[column] = side[source].reindex(chunk["user_id"]).to_numpy(np.int64)
            if long_view:
                for column, values in long_columns.items():
                    chunk[column] = values[rows]
            writer.write_table(_chunk_table(chunk, schema, length))
            n_samples += len(chunk)
            for split, count in chunk["split"].value_counts().items():
                counts[split] = counts.get(split, 0) + int(count)
    if n_samples != len(targets):
        raise FeatureConsistencyError(f"wrote {n_samples} samples for {len(targets)} targets")
    build_seconds = time.time() - started

    spec = dataset.feature_spec(length)
    meta = training_set_meta(
        dataset,
        config,
        "feast offline store: event-log view, last L events strictly before target_timestamp"
        + (f"; long view: last {config.memory_history_length} such events" if long_view else ""),
        counts,
    )
    spec.to_json(output_dir / SPEC_FILE)
    (output_dir / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    logger.info(
        "training set: %d samples; histories read in %.1f s, built and written in %.1f s",
        n_samples,
        fetch_seconds,
        build_seconds,
    )
    return {
        **counts,
        "n_samples": n_samples,
        "fetch_seconds": round(fetch_seconds, 1),
        "build_seconds": round(build_seconds, 1),
    }
