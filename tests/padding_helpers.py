"""Batches and padding shared by the model tests (padding must never change a model's output)."""

import torch
from torch import Tensor

from longrec.data.schema import FeatureSpec
from longrec.data.tensors import synthetic_sample_set


def tiny_batch(spec: FeatureSpec, size: int, seed: int = 0) -> dict[str, Tensor]:
    """A batch with histories of different lengths (1..L valid positions)."""
    samples = synthetic_sample_set(spec, size, seed=seed, n_clusters=4)
    return {key: value.clone() for key, value in samples.tensors.items()}


def pad_more(spec: FeatureSpec, batch: dict[str, Tensor], extra: int, seed: int = 1) -> dict[str, Tensor]:
    """Append ``extra`` padded positions holding random items and buckets under mask False."""
    gen = torch.Generator().manual_seed(seed)
    size = batch["history_items"].shape[0]
    items = torch.randint(1, spec.n_items, (size, extra), generator=gen)
    buckets = torch.randint(1, spec.n_time_buckets, (size, extra), generator=gen)
    padded = dict(batch)
    padded["history_items"] = torch.cat([batch["history_items"], items], dim=1)
    padded["history_time_buckets"] = torch.cat([batch["history_time_buckets"], buckets], dim=1)
    padded["history_mask"] = torch.cat([batch["history_mask"], torch.zeros(size, extra, dtype=torch.bool)], 1)
    return padded


def one_item_history_batch():
    """The golden-value tests' input: user 1, target item 2, a history of item 1 (then padding), L = 3."""
    return {
        "user_id": torch.tensor([1]),
        "target_item": torch.tensor([2]),
        "label": torch.tensor([1.0]),
        "history_items": torch.tensor([[1, 0, 0]]),
        "history_time_buckets": torch.tensor([[3, 0, 0]]),
        "history_mask": torch.tensor([[True, False, False]]),
    }
