"""Online features for one ranking request, assembled by the same code that builds training batches.

Histories come from the Feast online store (the user's latest snapshot of the sequence view) and go
through ``longrec.data.samples.histories_from_sequences`` and ``longrec.data.tensors.time_buckets`` exactly
as a training sample's do; side features use the same columns and the same "0 = unknown".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from longrec.data.samples import histories_from_sequences
from longrec.data.schema import FeatureSpec
from longrec.data.tensors import time_buckets

__all__ = ["HISTORY_WIDTH_STEP", "OnlineFeatures", "UserFeatures", "build_batches", "trim_history_padding"]

logger = logging.getLogger(__name__)

# Trimmed histories are cut to a multiple of this many positions: few distinct shapes, and never the
# widths 0 and 1 that a torch.compile'd graph with dynamic shapes would specialise (and recompile) on.
HISTORY_WIDTH_STEP = 16

USER_SIDE = (("user_age", "age_id"), ("user_gender", "gender_id"), ("user_occupation", "occupation_id"))


@dataclass
class UserFeatures:
    """One user's history (oldest first) and side features, and how they were obtained."""

    items: np.ndarray
    timestamps: np.ndarray
    side: dict[str, int]
    found: bool  # the store had a history row for the user
    fallback: bool = False  # the store could not be read


def empty_user(fallback: bool = False) -> UserFeatures:
    empty = np.zeros(0, dtype=np.int64)
    return UserFeatures(empty, empty, {column: 0 for column, _ in USER_SIDE}, found=False, fallback=fallback)


class OnlineFeatures:
    """Reads users from a Feast repo's online store; item genres are static, read once and cached."""

    def __init__(self, repo_path: str | Path, n_items: int, fs_yaml_file: str | Path | None = None) -> None:
        from feast import FeatureStore

        self.repo_path = Path(repo_path)
        kwargs = {"fs_yaml_file": Path(fs_yaml_file)} if fs_yaml_file else {}
        self.store = FeatureStore(repo_path=str(self.repo_path), **kwargs)
        self.n_items = n_items
        self.item_genres: np.ndarray | None = None
        self.last_error: str | None = None
        self._user_views: list | None = None  # [(feature view, feature names)], read from the registry once
        self.load_item_genres()

    def load_item_genres(self) -> bool:
        """Fill the genre table of items 1..n_items-1; False (and the error kept) if the store is down."""
        from longrec.features.store import fetch_item_features

        try:
            frame = fetch_item_features(self.store, range(1, self.n_items))
        except Exception as error:  # any store failure: Redis down, file gone, ...
            self.last_error = f"item features: {type(error).__name__}: {error}"
            logger.warning("online store unreadable: %s", self.last_error)
            return False
        genres = np.zeros(self.n_items, dtype=np.int64)
        genres[frame["item_id"].to_numpy()] = frame["genre_id"].to_numpy()
        self.item_genres = genres
        return True

    def user(self, user_id: int) -> UserFeatures:
        """The user's latest history and side features; an empty, flagged fallback if the store fails."""
        from longrec.features.store import _as_int_array

        try:
            row = self.read_user_row(user_id)
        except Exception as error:
            self.last_error = f"user features: {type(error).__name__}: {error}"
            logger.warning("online store unreadable, empty-history fallback: %s", self.last_error)
            return empty_user(fallback=True)
        self.last_error = None
        if self.item_genres is None:
            self.load_item_genres()
        items = _as_int_array(row["sequence_items"])
        stamps = _as_int_array(row["sequence_timestamps"])
        side = {column: int(row[name] or 0) for column, name in USER_SIDE}
        return UserFeatures(items, stamps, side, found=len(items) > 0 or any(side.values()))

    def read_user_row(self, user_id: int) -> dict:
        """{feature name: value or None} of the user's sequence and side views, read with the online
        store's own ``online_read`` (SQLite, Redis, ...): the values ``get_online_features`` returns
        (tested), without its per-call planning of feature references, entity de-duplication and response
        protos, which cost more than the read itself (0.55 against 0.23 ms, benchmarks/serving_paths.py). The views
        are resolved from the registry once; a changed view definition needs a restart, as a new model
        does."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        if self._user_views is None:
            from longrec.features.definitions import (
                SEQUENCE_FEATURES,
                SEQUENCE_VIEW,
                USER_FEATURES,
                USER_VIEW,
            )

            self._user_views = [
                (self.store.get_feature_view(SEQUENCE_VIEW), list(SEQUENCE_FEATURES)),
                (self.store.get_feature_view(USER_VIEW), list(USER_FEATURES)),
            ]
        online_store = self.store._get_provider().online_store
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(user_id))])
        row: dict = {}
        for view, names in self._user_views:
            # A copy: the Redis store appends its "_ts:<view>" field to the list it is given.
            [(_, values)] = online_store.online_read(
                config=self.store.config, table=view, entity_keys=[key], requested_features=list(names)
            )
            values = values or {}
            for name in names:
                value = values.get(name)
                row[name] = None if value is None else feast_value_type_to_python_type(value)
        return row

    def genres(self, item_ids: np.ndarray) -> np.ndarray:
        """Genre ids of the items (0 where unknown or not loaded)."""
        if self.item_genres is None:
            return np.zeros(len(item_ids), dtype=np.int64)
        return self.item_genres[item_ids]

    @property
    def ready(self) -> bool:
        return self.item_genres is not None


def build_batches(
    spec: FeatureSpec,
    user_id: int,
    user: UserFeatures,
    candidates: np.ndarray,
    candidate_genres: np.ndarray,
    request_time: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(user batch of one row, candidate batch of C rows) in the batch contract of ``longrec.data.schema``.

    The history is cut to the model's L and padded as a training sample's; time buckets are measured
    against ``request_time`` (default now), as a sample's are against its target's time.
    """
    length = spec.max_history_length
    now = int(time.time()) if request_time is None else int(request_time)
    if len(user.items):
        items, stamps = histories_from_sequences([user.items], [user.timestamps], length)
    else:  # pad_histories cannot gather from an empty event array: an all-padding row
        items, stamps = np.zeros((1, length), np.int64), np.zeros((1, length), np.int64)
    mask = items != 0
    buckets = time_buckets(stamps, np.array([now]), mask, spec.n_time_buckets)
    model_user = user_id if 0 < user_id < spec.n_users else 0  # out of vocabulary: the unknown row
    side = {
        column: int(value) if 0 <= value < spec.side_vocab()[column] else 0
        for column, value in user.side.items()
    }
    user_batch = {
        "user_id": torch.tensor([model_user]),
        "history_items": torch.from_numpy(items),
        "history_time_buckets": torch.from_numpy(buckets),
        "history_mask": torch.from_numpy(mask),
        **{column: torch.tensor([value]) for column, value in side.items()},
    }
    count = len(candidates)
    candidate_batch = {
        "user_id": user_batch["user_id"].expand(count),
        "target_item": torch.as_tensor(candidates, dtype=torch.long),
        "target_genre": torch.as_tensor(candidate_genres, dtype=torch.long),
        **{column: torch.full((count,), value, dtype=torch.long) for column, value in side.items()},
    }
    return user_batch, candidate_batch


def trim_history_padding(user_batch: dict[str, Tensor], step: int = HISTORY_WIDTH_STEP) -> dict[str, Tensor]:
    """The one-user batch with its right padding cut: the history columns keep the user's valid events,
    rounded up to a multiple of ``step`` (at least ``step``, at most the model's L).

    Exact for every model: padded positions carry attention weight 0 (DIN, LMN's backbone), count no
    position (IMN's positions run from the newest valid event), are never read (LMN's memory reads, RecBLR's
    last valid state), and with right padding nothing valid comes after them. Most users' histories are far
    shorter than a long-sequence model's L (ML-100k's median user has about 65 events against L=1000), so
    the attention over candidates × L shrinks with them.
    """
    mask = user_batch["history_mask"]
    length = mask.shape[1]
    valid = int(mask.sum())
    width = min(length, max(step, -(-valid // step) * step))
    if width >= length:
        return user_batch
    # Fresh [1, width] tensors: a view (or a plain clone of one) keeps stride L, and a compiled graph guards
    # on strides, so it would compile and cache a second graph beside the full-width one.
    return {
        key: value[:, :width].clone(memory_format=torch.contiguous_format)
        if key.startswith("history_")
        else value
        for key, value in user_batch.items()
    }
