"""Full-ranking metrics against hand-computed values, and the leave-one-out data layout."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from longrec.data.datasets import _assemble
from longrec.data.nextitem import build_next_item_data, k_core_filter
from longrec.eval.ranking import ranking_metrics, target_ranks


def test_target_ranks_hand_computed():
    # Items 0..4; item 0 is padding and never counts. Ties count against the target.
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.3, 0.2],  # target 2 → best real item: rank 0
            [9.0, 0.4, 0.1, 0.4, 0.9],  # target 3: item 4 higher, item 1 tied → rank 2
            [0.0, 1.0, 1.0, 1.0, 1.0],  # target 1, all tied → rank 3
        ]
    )
    ranks = target_ranks(scores, torch.tensor([2, 3, 1]))
    assert ranks.tolist() == [0, 2, 3]
    # Excluding history item 4 from the candidates moves target 3 up one place.
    history = torch.tensor([[0, 0], [4, 0], [0, 0]])
    assert target_ranks(scores, torch.tensor([2, 3, 1]), history).tolist() == [0, 1, 3]


def test_ranking_metrics_hand_computed():
    ranks = np.array([0, 2, 9, 10, 25])
    metrics = ranking_metrics(ranks, ks=(10, 20))
    assert metrics["hr@10"] == pytest.approx(3 / 5)
    assert metrics["hr@20"] == pytest.approx(4 / 5)
    ndcg10 = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(11)) / 5
    assert metrics["ndcg@10"] == pytest.approx(ndcg10)
    assert metrics["ndcg@20"] == pytest.approx(ndcg10 + 1 / math.log2(12) / 5)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 10) / 5)
    assert metrics["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 11) / 5)


def _toy_dataset():
    # User 1: items 10..16 at times 1..7 (listed out of order); user 2: 3 events; user 3: 2 events.
    rows = [(1, 10 + k, 1 + k) for k in (3, 0, 1, 2, 6, 5, 4)] + [
        (2, 11, 5),
        (2, 12, 6),
        (2, 13, 7),
        (3, 10, 1),
        (3, 11, 2),
    ]
    users, items, times = map(np.array, zip(*rows, strict=True))
    return _assemble("toy", users, items, times, None, None)


def test_leave_one_out_layout():
    dataset = _toy_dataset()
    data = build_next_item_data(dataset, max_history_length=3, window_stride=3)
    # Items are re-packed, so compare in raw ids through the dataset's vocabulary.
    used = sorted({10, 11, 12, 13, 14, 15, 16})
    back = {k + 1: used[k] for k in range(len(used))}
    to_raw = np.vectorize(lambda i: back.get(int(i), 0))
    assert data.n_users == 2  # user 3 has only two events
    assert to_raw(data.test_target).tolist() == [16, 13]
    assert to_raw(data.valid_target).tolist() == [15, 12]
    assert to_raw(data.test_history).tolist() == [[13, 14, 15], [11, 12, 0]]
    assert to_raw(data.valid_history).tolist() == [[12, 13, 14], [11, 0, 0]]
    # User 1 trains on 10..14: inputs 10..13 → targets 11..14, windows of 3 with stride 3.
    windows = {
        tuple(to_raw(i).tolist()): tuple(to_raw(t).tolist())
        for i, t in zip(data.train_items, data.train_targets, strict=True)
    }
    assert windows[(11, 12, 13)] == (12, 13, 14)
    assert windows[(10, 0, 0)] == (11, 0, 0)
    assert sum(int((t > 0).sum()) for t in data.train_targets) == 4  # user 2 has one train event: none


def test_overlapping_windows_count_each_target_once():
    dataset = _toy_dataset()
    data = build_next_item_data(dataset, max_history_length=3, window_stride=1)
    assert int((data.train_targets > 0).sum()) == 4
    assert len(data.train_items) == 2  # [10,11,12]→ all three targets, then [11,12,13] → only the last


def test_five_core_filter_is_iterative():
    events = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 2, 3, 3],
            "item_id": [1, 2, 3, 1, 2, 3, 3, 9],
            "timestamp": np.arange(8),
        }
    )
    # Round 1 drops item 9 (one event); only then does user 3 fall below k = 2 and go in round 2.
    kept = k_core_filter(events, k=2)
    assert set(kept["user_id"]) == {1, 2}
    assert set(kept["item_id"]) == {1, 2, 3}
    assert k_core_filter(events, k=1).equals(events)
