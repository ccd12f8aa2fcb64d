"""The contracts that flow between stages: event frames, training-set columns, vocabulary sizes, batches.

Ids are remapped to contiguous integers starting at 1; 0 is reserved for padding / unknown in every
vocabulary. Histories are oldest-first and right-padded: valid events occupy positions 0..n-1 and
positions n..L-1 hold item 0 with mask False, so appending padding never moves a real event.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Canonical event frame (after ingest): one row per interaction.
EVENT_COLUMNS = ("user_id", "item_id", "timestamp")  # int64, int64, int64 unix seconds

# Side-feature frames. Every id column is int64 with 0 = unknown.
ITEM_FEATURE_COLUMNS = ("item_id", "genre_id")
USER_FEATURE_COLUMNS = ("user_id", "age_id", "gender_id", "occupation_id")

SPLITS = ("train", "valid", "test")

# Training-set frame: one row per (positive or sampled negative) sample.
SCALAR_SAMPLE_COLUMNS = {
    "user_id": "int64",
    "target_item": "int64",
    "target_timestamp": "int64",  # unix seconds of the positive event this sample was built from
    "label": "int64",  # 1 = the real next event, 0 = a sampled negative sharing the same history
    "split": "object",  # one of SPLITS
    "history_length": "int64",  # number of valid history events, 0 < n <= max_history_length
    "target_genre": "int64",
    "user_age": "int64",
    "user_gender": "int64",
    "user_occupation": "int64",
}
# Fixed-length (max_history_length) list columns, right-padded.
SEQUENCE_SAMPLE_COLUMNS = {
    "history_items": "int64",  # padding 0
    "history_timestamps": "int64",  # padding 0
    "history_mask": "bool",  # True on valid positions
}
SAMPLE_KEY = ("user_id", "target_timestamp", "target_item", "split")
# The long view (only with SampleConfig.memory_history_length > 0): each sample's last L_long events strictly
# before its target, as a window [start, start + length) of the training set's flat event log
# (LONG_HISTORY_LOG_FILE) rather than padded lists: O(samples + events) whatever L_long is. Training only:
# LMN writes its memory from it; nothing at serving time reads it.
LONG_HISTORY_COLUMNS = {
    "long_history_start": "int64",  # index of the window's first event in the flat log
    "long_history_length": "int64",  # events in the window, history_length <= n <= memory_history_length
    "long_history_last_timestamp": "int64",  # time of the window's newest event (0 if empty): < target
}
# In a batch, the long view is the rows' window bounds plus the log's items under this key, one tensor
# shared by every row (TensorSampleSet.shared); only training batches built with a long view carry it.
LONG_LOG_KEY = "long_history_log_items"

# Side features a model may use; every model must also run with use_side_features=False.
SIDE_FEATURES = ("target_genre", "user_age", "user_gender", "user_occupation")


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes (including the 0 slot) and the history length a model is built for."""

    n_users: int
    n_items: int
    n_genres: int = 1
    n_ages: int = 1
    n_genders: int = 1
    n_occupations: int = 1
    max_history_length: int = 50
    n_time_buckets: int = 40  # 1 + floor(log2(hours + 1)) stays < 40 for any realistic span
    extra: dict = field(default_factory=dict)

    def side_vocab(self) -> dict[str, int]:
        """Vocabulary size of each side feature column of a batch."""
        return {
            "target_genre": self.n_genres,
            "user_age": self.n_ages,
            "user_gender": self.n_genders,
            "user_occupation": self.n_occupations,
        }

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> FeatureSpec:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(**data)


# A batch is a dict of tensors with these keys (B = batch, L = max_history_length):
#   user_id [B] long, target_item [B] long, label [B] float,
#   history_items [B, L] long, history_time_buckets [B, L] long (0 = padding), history_mask [B, L] bool,
#   target_genre / user_age / user_gender / user_occupation [B] long.
BATCH_KEYS = (
    "user_id",
    "target_item",
    "label",
    "history_items",
    "history_time_buckets",
    "history_mask",
    *SIDE_FEATURES,
)
