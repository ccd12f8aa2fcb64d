"""Parquet sources of the longrec feature views, read from `feature_repo/data/`.

Fill that folder with `python -m longrec.features.export ml-100k` (or `export_repo_data`) before
`feast apply`. The objects come from `longrec.features.definitions`, the same code the library applies.
On a cluster, swap these for the offline store's own sources (SparkSource, BigQuerySource, ...): the
views in features.py take whatever sources this module defines.
"""

from pathlib import Path

from longrec.features.definitions import build_sources

# Resolved from this file, so imports work whatever the working directory.
DATA_DIR = Path(__file__).resolve().parent / "data"

(
    user_behavior_events_source,
    user_behavior_sequence_source,
    item_side_features_source,
    user_side_features_source,
) = build_sources(DATA_DIR)
