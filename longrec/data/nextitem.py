"""Next-item data: time-ordered leave-one-out sequences from a ``RecDataset``, with optional k-core filter.

Per user (events sorted by time, ties in original row order): the last item is the test target, the
one before it the validation target, everything earlier trains. The validation history is the last L
training items, the test history the last L items before the test target (it includes the validation
item). Training uses every prefix: sequences are cut into windows of L inputs with next-item targets,
consecutive windows overlapping by L − stride so each target after the first window sees at least
L − stride earlier items; every training target is counted exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from longrec.data.datasets import RecDataset

__all__ = ["NextItemData", "build_next_item_data", "k_core_filter", "user_sequences"]

logger = logging.getLogger(__name__)


def k_core_filter(events: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` events, repeatedly, until every one has at least k."""
    if k <= 1:
        return events
    current = events
    while True:
        user_counts = current["user_id"].map(current["user_id"].value_counts())
        item_counts = current["item_id"].map(current["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return current
        current = current[keep]


def user_sequences(events: pd.DataFrame) -> list[np.ndarray]:
    """Item sequences per user (ascending user id), time-ordered with ties in original row order."""
    order = np.lexsort((np.arange(len(events)), events["timestamp"].to_numpy(), events["user_id"].to_numpy()))
    users = events["user_id"].to_numpy()[order]
    items = events["item_id"].to_numpy(np.int64)[order]
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, int)
    return np.split(items, boundaries[1:]) if len(users) else []


def _right_padded(rows: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    items = np.zeros((len(rows), length), dtype=np.int64)
    for index, row in enumerate(rows):
        items[index, : len(row)] = row
    return items, items > 0


@dataclass
class NextItemData:
    """Leave-one-out arrays; items remapped to 1..n_items−1 (0 = padding)."""

    n_items: int
    max_history_length: int
    train_items: np.ndarray  # [W, L] input windows, right-padded
    train_targets: np.ndarray  # [W, L] next item at each position, 0 = no loss there
    valid_history: np.ndarray  # [U, L]
    valid_target: np.ndarray  # [U]
    test_history: np.ndarray  # [U, L]
    test_target: np.ndarray  # [U]
    n_users: int
    n_events: int

    @property
    def train_mask(self) -> np.ndarray:
        return self.train_items > 0

    def summary(self) -> dict[str, int]:
        """Sizes, for logs and result files."""
        return {
            "users": self.n_users,
            "items": self.n_items - 1,
            "events": self.n_events,
            "train_windows": len(self.train_items),
            "train_targets": int((self.train_targets > 0).sum()),
            "max_history_length": self.max_history_length,
        }


def _training_windows(sequence: np.ndarray, length: int, stride: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows over one training sequence; see the module docstring."""
    inputs, targets = sequence[:-1], sequence[1:]
    windows = []
    end = len(inputs)
    while end > 0:
        start = max(0, end - length)
        loss_from = start if start == 0 else end - stride
        window_targets = targets[start:end].copy()
        window_targets[: loss_from - start] = 0  # positions already trained by the later window
        windows.append((inputs[start:end], window_targets))
        end = loss_from
    return windows


def build_next_item_data(
    dataset: RecDataset,
    max_history_length: int = 50,
    min_core: int | None = None,
    window_stride: int | None = None,
    max_users: int | None = None,
) -> NextItemData:
    """Leave-one-out next-item data from ``dataset``; ``min_core=5`` applies the 5-core filter first.

    ``window_stride`` defaults to L // 2 (each training target sees ≥ L/2 earlier items); ``max_users``
    keeps the first users in id order (for quick runs). Users with fewer than 3 events are dropped.
    """
    if max_history_length <= 0:
        raise ValueError(f"max_history_length must be positive, got {max_history_length}")
    stride = window_stride or max(1, max_history_length // 2)
    if not 1 <= stride <= max_history_length:
        raise ValueError(f"window_stride must be in [1, L], got {stride}")
    events = dataset.events
    if min_core:
        events = k_core_filter(events, min_core)
    if max_users is not None:
        keep = np.sort(events["user_id"].unique())[:max_users]
        events = events[events["user_id"].isin(keep)]
    sequences = [s for s in user_sequences(events) if len(s) >= 3]
    # Re-pack item ids so the softmax only covers items that occur.
    used = np.unique(np.concatenate(sequences)) if sequences else np.zeros(0, np.int64)
    remap = np.zeros(int(used.max()) + 1 if len(used) else 1, dtype=np.int64)
    remap[used] = np.arange(1, len(used) + 1)
    sequences = [remap[s] for s in sequences]

    length = max_history_length
    window_inputs, window_targets = [], []
    valid_rows, test_rows, valid_target, test_target = [], [], [], []
    for sequence in sequences:
        train = sequence[:-2]
        for inputs, targets in _training_windows(train, length, stride):
            window_inputs.append(inputs)
            window_targets.append(targets)
        valid_rows.append(train[-length:])
        valid_target.append(sequence[-2])
        test_rows.append(sequence[:-1][-length:])
        test_target.append(sequence[-1])
    train_items, _ = _right_padded(window_inputs, length)
    train_targets, _ = _right_padded(window_targets, length)
    valid_history, _ = _right_padded(valid_rows, length)
    test_history, _ = _right_padded(test_rows, length)
    data = NextItemData(
        n_items=len(used) + 1,
        max_history_length=length,
        train_items=train_items,
        train_targets=train_targets,
        valid_history=valid_history,
        valid_target=np.asarray(valid_target, dtype=np.int64),
        test_history=test_history,
        test_target=np.asarray(test_target, dtype=np.int64),
        n_users=len(sequences),
        n_events=int(sum(len(s) for s in sequences)),
    )
    logger.info("next-item data %s (min_core=%s, stride=%d)", data.summary(), min_core, stride)
    return data
