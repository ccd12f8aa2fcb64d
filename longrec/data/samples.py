"""The vectorised CTR sample builder of MODELS.md section 0.

For each event k of a user (sorted by time, ties kept in original row order) the positive sample has
target i_k, label 1, and the user's last L events whose timestamp is strictly earlier than t_k as history;
events that share t_k's second are never in its history (so "every history event is strictly earlier" holds
even on datasets with many same-second events). Negatives are items the user never interacted with and
share the positive's history. Events with no earlier event produce no sample.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from longrec.data.datasets import RecDataset
from longrec.data.schema import SPLITS
from longrec.seeding import derive_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleConfig:
    """How training samples are cut from events. Defaults follow MODELS.md section 0."""

    max_history_length: int = 50  # L: the last L strictly-earlier events form the history
    split: Literal["time", "leave_one_out"] = "time"  # global time split (IMN paper) or per-user LOO
    train_fraction: float = 0.8  # time split: first 80% of the time range trains
    valid_fraction: float = 0.1  # next 10% validates, the rest tests
    train_negatives: int = 1  # sampled negatives per positive in train
    eval_negatives: int = 4  # more in valid/test to cut metric variance
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    seed: int = 0
    # L_long: also keep each sample's last L_long strictly-earlier events as a long view (schema
    # LONG_HISTORY_COLUMNS) that only training reads (LMN writes its memory from it). 0 = no long view.
    memory_history_length: int = 0

    def __post_init__(self) -> None:
        if int(self.max_history_length) <= 0:
            raise ValueError(f"max_history_length must be a positive integer, got {self.max_history_length}")
        if self.split not in ("time", "leave_one_out"):
            raise ValueError(f"split must be 'time' or 'leave_one_out', got {self.split!r}")
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(
                f"negative_sampling must be 'uniform' or 'popularity', got {self.negative_sampling!r}"
            )
        if not (0 < self.train_fraction < 1 and 0 < self.valid_fraction < 1):
            raise ValueError("train_fraction and valid_fraction must lie in (0, 1)")
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError("train_fraction + valid_fraction must be < 1 so the test split is not empty")
        if self.train_negatives < 1 or self.eval_negatives < 1:
            raise ValueError("train_negatives and eval_negatives must be >= 1")
        if self.memory_history_length and int(self.memory_history_length) < int(self.max_history_length):
            raise ValueError(
                f"memory_history_length (L_long = {self.memory_history_length}) must be 0 (no long view) or "
                f">= max_history_length ({self.max_history_length}): the long view extends the short one"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LongHistoryLog:
    """The flat event log a training set's long view indexes: every event's user, item and time, sorted
    by (user, time, rank in the user's log). A sample's long history is rows [start, start + length)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def windows(self, start: np.ndarray, length: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded [N, max_length] items and timestamps of the windows (oldest first)."""
        start, length = np.asarray(start, np.int64), np.asarray(length, np.int64)
        return pad_histories(self.item_ids, self.timestamps, start, length, max_length)


def long_history_columns(log: LongHistoryLog, start: np.ndarray, length: np.ndarray) -> dict[str, np.ndarray]:
    """The LONG_HISTORY_COLUMNS of samples whose long windows are [start, start + length) of ``log``."""
    start, length = np.asarray(start, np.int64), np.asarray(length, np.int64)
    last = np.where(length > 0, log.timestamps[np.clip(start + length - 1, 0, max(len(log) - 1, 0))], 0)
    return {
        "long_history_start": np.where(length > 0, start, 0),
        "long_history_length": length,
        "long_history_last_timestamp": last.astype(np.int64),
    }


@dataclass
class SortedEvents:
    """Events in (user, time, original row) order with, per event, the bounds of its history."""

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    history_start: np.ndarray  # first index of the history in these arrays
    history_end: np.ndarray  # one past the last history event (= first event at the same second)
    user_start: np.ndarray  # index of the first event of each event's user (the long view starts there)

    @property
    def history_length(self) -> np.ndarray:
        return self.history_end - self.history_start


def sort_events(events: pd.DataFrame, max_history_length: int) -> SortedEvents:
    """Sort stably and locate each event's strictly-earlier history window of at most L events."""
    order = np.lexsort((np.arange(len(events)), events["timestamp"].to_numpy(), events["user_id"].to_numpy()))
    users = events["user_id"].to_numpy(np.int64)[order]
    items = events["item_id"].to_numpy(np.int64)[order]
    times = events["timestamp"].to_numpy(np.int64)[order]
    index = np.arange(len(users))
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_second = new_user | np.r_[True, times[1:] != times[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    history_end = np.maximum.accumulate(np.where(new_second, index, 0))
    history_start = np.maximum(user_start, history_end - max_history_length)
    return SortedEvents(users, items, times, history_start, history_end, user_start)


def assign_splits(events: SortedEvents, config: SampleConfig) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of every sorted event."""
    if config.split == "time":
        t_min, t_max = events.timestamp.min(), events.timestamp.max()
        span = float(t_max - t_min)
        train_end = t_min + config.train_fraction * span
        valid_end = t_min + (config.train_fraction + config.valid_fraction) * span
        return np.where(events.timestamp < train_end, 0, np.where(events.timestamp < valid_end, 1, 2))
    # Leave-one-out: last event of each user tests, the one before validates (users with >= 3 events).
    users = events.user_id
    last_of_user = np.r_[users[1:] != users[:-1], True]
    user_end = np.minimum.accumulate(np.where(last_of_user, np.arange(len(users)), len(users))[::-1])[::-1]
    rank_from_end = user_end - np.arange(len(users))
    counts = np.bincount(users)[users]
    split = np.zeros(len(users), dtype=np.int64)
    split[(rank_from_end == 0) & (counts >= 3)] = 2
    split[(rank_from_end == 1) & (counts >= 3)] = 1
    return split


def sample_negatives(
    user_ids: np.ndarray,
    n_negatives: int,
    n_items: int,
    interacted: np.ndarray,
    rng: np.random.Generator,
    popularity: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    max_rounds: int = 200,
) -> np.ndarray:
    """[len(user_ids), n_negatives] items each user never interacted with, distinct within a row and
    within each group of rows (rows of one group share a history, so a repeat would be a duplicate sample).

    `interacted` is the sorted array of keys user_id * n_items + item_id of every observed pair.
    """
    m = len(user_ids)
    negatives = np.zeros((m, n_negatives), dtype=np.int64)
    candidates_per_user = (n_items - 1) - np.bincount(
        interacted // n_items, minlength=user_ids.max(initial=0) + 1
    )
    if m and (candidates_per_user[user_ids] < n_negatives).any():
        raise ValueError(
            f"some users interacted with almost every item: cannot sample {n_negatives} negatives"
        )

    def draw(size: int) -> np.ndarray:
        if popularity is None:
            return rng.integers(1, n_items, size=size)
        return rng.choice(np.arange(1, n_items), size=size, p=popularity)

    def unseen(rows: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        keys = user_ids[rows] * n_items + candidate
        pos = np.searchsorted(interacted, keys)
        return ~((pos < len(interacted)) & (interacted[np.minimum(pos, len(interacted) - 1)] == keys))

    for column in range(n_negatives):
        todo = np.arange(m)
        for _ in range(max_rounds):
            if len(todo) == 0:
                break
            candidate = draw(len(todo))
            repeat = (negatives[todo, :column] == candidate[:, None]).any(axis=1)
            ok = unseen(todo, candidate) & ~repeat
            negatives[todo[ok], column] = candidate[ok]
            todo = todo[~ok]
        if len(todo):
            raise RuntimeError(f"negative sampling did not converge for {len(todo)} samples")
    if groups is None or m == 0:
        return negatives
    # Redraw repeats across rows of one group until every (group, item) pair is unique.
    for _ in range(max_rounds):
        keys = (groups[:, None] * n_items + negatives).reshape(-1)
        repeated = pd.Series(keys).duplicated().to_numpy().reshape(negatives.shape)
        if not repeated.any():
            return negatives
        rows, cols = np.nonzero(repeated)
        candidate = draw(len(rows))
        ok = unseen(rows, candidate)
        negatives[rows[ok], cols[ok]] = candidate[ok]
    raise RuntimeError("negative sampling could not make negatives distinct within same-second groups")


def build_targets(dataset: RecDataset, config: SampleConfig) -> tuple[pd.DataFrame, SortedEvents]:
    """Sample skeleton: user, target item, target time, label and split — histories come separately.

    Returns the frame (with `event_index` pointing into the sorted events) and the sorted events.
    """
    events = sort_events(dataset.events, config.max_history_length)
    split = assign_splits(events, config)
    has_history = events.history_length > 0
    positives = np.flatnonzero(has_history)
    rng = np.random.default_rng(derive_seed(config.seed, "negative-sampling"))
    n_items = dataset.n_items
    interacted = np.unique(events.user_id * n_items + events.item_id)
    popularity = None
    if config.negative_sampling == "popularity":
        # Counted over the training period only: valid/test popularity is the future at training time.
        in_train = split == SPLITS.index("train")
        counts = np.bincount(events.item_id[in_train], minlength=n_items)[1:].astype(np.float64)
        if counts.sum() == 0:
            raise ValueError("popularity sampling needs training events; the train split is empty")
        popularity = counts / counts.sum()

    parts = []
    for split_code, split_name in enumerate(SPLITS):
        rows = positives[split[positives] == split_code]
        n_neg = config.train_negatives if split_name == "train" else config.eval_negatives
        negatives = sample_negatives(
            events.user_id[rows], n_neg, n_items, interacted, rng, popularity, groups=events.history_end[rows]
        )
        event_index = np.repeat(rows, 1 + n_neg)
        items = np.concatenate([events.item_id[rows][:, None], negatives], axis=1).reshape(-1)
        labels = np.tile(np.r_[1, np.zeros(n_neg, dtype=np.int64)], len(rows))
        parts.append(
            pd.DataFrame(
                {
                    "user_id": events.user_id[event_index],
                    "target_item": items,
                    "target_timestamp": events.timestamp[event_index],
                    "label": labels.astype(np.int64),
                    "split": split_name,
                    "event_index": event_index,
                }
            )
        )
    targets = pd.concat(parts, ignore_index=True)
    logger.info(
        "built %d samples (%s) from %d events",
        len(targets),
        ", ".join(f"{s}={int((targets['split'] == s).sum())}" for s in SPLITS),
        len(dataset.events),
    )
    return targets, events


def histories_from_events(
    targets: pd.DataFrame, events: SortedEvents, max_history_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """[N, L] right-padded history items and timestamps read straight from the sorted events."""
    index = targets["event_index"].to_numpy()
    start = events.history_start[index]
    length = events.history_end[index] - start
    return pad_histories(events.item_id, events.timestamp, start, length, max_history_length)


def pad_histories(
    items: np.ndarray, timestamps: np.ndarray, start: np.ndarray, length: np.ndarray, max_history_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gather rows [start, start + length) of flat item/time arrays into right-padded [N, L] arrays."""
    offsets = np.arange(max_history_length)
    valid = offsets[None, :] < length[:, None]
    gather = np.minimum(start[:, None] + offsets[None, :], max(len(items) - 1, 0))
    history_items = np.where(valid, items[gather], 0).astype(np.int64)
    history_times = np.where(valid, timestamps[gather], 0).astype(np.int64)
    return history_items, history_times


def histories_from_sequences(
    sequences_items: list, sequences_timestamps: list, max_history_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [N, L] arrays from per-row variable-length sequences (e.g. Feast retrieval results).

    Keeps the newest L events of each sequence (sequences are oldest first).
    """
    lengths = np.fromiter((len(s) for s in sequences_items), dtype=np.int64, count=len(sequences_items))
    flat_items = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences_items])
        if len(lengths)
        else np.zeros(0, np.int64)
    )
    flat_times = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences_timestamps])
        if len(lengths)
        else np.zeros(0, np.int64)
    )
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, max_history_length)
    return pad_histories(flat_items, flat_times, ends - kept, kept, max_history_length)


def assemble_training_set(
    targets: pd.DataFrame,
    history_items: np.ndarray,
    history_timestamps: np.ndarray,
    dataset: RecDataset,
) -> pd.DataFrame:
    """The training-set frame of schema.py: scalar columns, side features and list columns."""
    frame = targets.drop(columns=["event_index"], errors="ignore").reset_index(drop=True)
    mask = history_items != 0
    frame["history_length"] = mask.sum(axis=1).astype(np.int64)
    genre = dataset.item_features.set_index("item_id")["genre_id"]
    frame["target_genre"] = genre.reindex(frame["target_item"]).fillna(0).to_numpy(np.int64)
    users = dataset.user_features.set_index("user_id")
    for column, source in (
        ("user_age", "age_id"),
        ("user_gender", "gender_id"),
        ("user_occupation", "occupation_id"),
    ):
        frame[column] = users[source].reindex(frame["user_id"]).fillna(0).to_numpy(np.int64)
    # One row view per sample: cheap, and parquet/GE read list columns from object columns of arrays.
    frame["history_items"] = list(history_items)
    frame["history_timestamps"] = list(history_timestamps)
    frame["history_mask"] = list(mask)
    return frame


def long_history_from_events(
    targets: pd.DataFrame, events: SortedEvents, memory_history_length: int
) -> tuple[LongHistoryLog, dict[str, np.ndarray]]:
    """The long view of every target: the sorted events as the flat log, and each sample's window of
    its last ``memory_history_length`` events strictly before the target (same rule as the history)."""
    index = targets["event_index"].to_numpy()
    end = events.history_end[index]
    start = np.maximum(events.user_start[index], end - memory_history_length)
    log = LongHistoryLog(events.user_id, events.item_id, events.timestamp)
    return log, long_history_columns(log, start, end - start)


def build_training_set_with_log(
    dataset: RecDataset, config: SampleConfig
) -> tuple[pd.DataFrame, LongHistoryLog | None]:
    """``build_training_set`` plus, when ``config.memory_history_length`` > 0, the long view: its columns
    in the frame and the flat log they index (None without a long view)."""
    targets, events = build_targets(dataset, config)
    items, times = histories_from_events(targets, events, config.max_history_length)
    frame = assemble_training_set(targets, items, times, dataset)
    if not config.memory_history_length:
        return frame, None
    log, columns = long_history_from_events(targets, events, config.memory_history_length)
    for name, values in columns.items():
        frame[name] = values
    return frame, log


def build_training_set(dataset: RecDataset, config: SampleConfig) -> pd.DataFrame:
    """Targets, negatives and histories straight from events (the reference path; the pipeline reads
    histories from Feast instead and must agree with this). The long view's log is dropped: use
    ``build_training_set_with_log`` to train from it."""
    return build_training_set_with_log(dataset, config)[0]
