"""In-memory tensors of one split, batched for training, plus the time-bucket feature.

A ``TensorSampleSet`` is a dict of tensors keyed by ``BATCH_KEYS`` (extra keys ride along) that all share
their first dimension, plus optional ``shared`` tensors that every batch carries whole (the long view's
flat event log, which rows index by window bounds). Batches are produced by indexing with a permutation:
the whole split fits in memory at the sizes this project uses, so no DataLoader or worker processes are
needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from longrec.data.schema import BATCH_KEYS, FeatureSpec

__all__ = ["TensorSampleSet", "time_buckets", "synthetic_sample_set"]

# Dtypes the models expect; keys not listed keep the dtype they came with.
_BATCH_DTYPES: dict[str, torch.dtype] = {key: torch.long for key in BATCH_KEYS}
_BATCH_DTYPES["label"] = torch.float32
_BATCH_DTYPES["history_mask"] = torch.bool


class TensorSampleSet:
    """The batch tensors of one split: every value has the same first dimension (the sample count)."""

    def __init__(self, tensors: Mapping[str, Tensor], shared: Mapping[str, Tensor] | None = None) -> None:
        missing = [key for key in BATCH_KEYS if key not in tensors]
        if missing:
            raise ValueError(f"TensorSampleSet is missing batch keys {missing}")
        lengths = {key: int(value.shape[0]) for key, value in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all tensors must share their first dimension, got {lengths}")
        self.tensors: dict[str, Tensor] = {
            key: value.to(_BATCH_DTYPES[key]) if key in _BATCH_DTYPES else value
            for key, value in tensors.items()
        }
        history_shape = self.tensors["history_items"].shape
        for key in ("history_time_buckets", "history_mask"):
            if self.tensors[key].shape != history_shape:
                raise ValueError(
                    f"{key} has shape {tuple(self.tensors[key].shape)}, expected {tuple(history_shape)}"
                )
        self._length = lengths["label"]
        self.shared: dict[str, Tensor] = dict(shared or {})
        clash = sorted(set(self.shared) & set(self.tensors))
        if clash:
            raise ValueError(f"keys {clash} are both per-row and shared tensors")

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], shared: Mapping[str, np.ndarray] | None = None
    ) -> TensorSampleSet:
        """Build from numpy arrays (same keys as a batch); copies only where a dtype changes."""
        return cls(
            {key: torch.as_tensor(np.asarray(value)) for key, value in arrays.items()},
            {key: torch.as_tensor(np.asarray(value)) for key, value in (shared or {}).items()},
        )

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    @property
    def history_length(self) -> int:
        """L, the padded history length of this split."""
        return int(self.tensors["history_items"].shape[1])

    def subset(self, idx: np.ndarray | Tensor | slice) -> TensorSampleSet:
        """A new set holding the rows selected by ``idx`` (indices, a boolean mask or a slice)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
        return TensorSampleSet({key: value[idx] for key, value in self.tensors.items()}, self.shared)

    def to(self, device: torch.device | str) -> TensorSampleSet:
        """A copy with every tensor moved to ``device``."""
        return TensorSampleSet(
            {key: value.to(device) for key, value in self.tensors.items()},
            {key: value.to(device) for key, value in self.shared.items()},
        )

    def with_shared_on(self, device: torch.device | str) -> TensorSampleSet:
        """The same rows, with the shared tensors moved to ``device`` once. Every batch carries them whole
        (the long view's log is every training event), so moving them with each batch would copy the whole
        log to the GPU once per step."""
        if all(value.device == torch.device(device) for value in self.shared.values()):
            return self
        return TensorSampleSet(self.tensors, {key: value.to(device) for key, value in self.shared.items()})

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """Yield dict batches of at most ``batch_size`` rows; the last batch may be smaller."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield {**{key: value[idx] for key, value in self.tensors.items()}, **self.shared}
        else:
            # Slices are views: no copy when reading in order (evaluation).
            for start in range(0, n, batch_size):
                yield {
                    **{key: value[start : start + batch_size] for key, value in self.tensors.items()},
                    **self.shared,
                }


def time_buckets(
    history_timestamps: np.ndarray,
    target_timestamp: np.ndarray,
    mask: np.ndarray,
    n_time_buckets: int = 40,
) -> np.ndarray:
    """Log2 time-gap buckets: 1 + floor(log2(hours + 1)) per valid event, 0 on padding.

    ``history_timestamps`` and ``mask`` are [N, L], ``target_timestamp`` is [N] (unix seconds). Gaps are
    clipped below at 0 (an event never counts as later than its target) and buckets above at
    ``n_time_buckets - 1`` so they always index the bucket embedding.
    """
    history = np.asarray(history_timestamps, dtype=np.int64)
    target = np.asarray(target_timestamp, dtype=np.int64)
    valid = np.asarray(mask, dtype=bool)
    if history.shape != valid.shape or history.shape[:-1] != target.shape:
        raise ValueError(
            f"shape mismatch: history {history.shape}, mask {valid.shape}, target {target.shape}"
        )
    hours = np.maximum(target[..., None] - history, 0).astype(np.float64) / 3600.0
    buckets = 1 + np.floor(np.log2(hours + 1.0)).astype(np.int64)
    buckets = np.minimum(buckets, n_time_buckets - 1)
    return np.where(valid, buckets, 0).astype(np.int64)


def synthetic_sample_set(
    spec: FeatureSpec, n_samples: int, seed: int = 0, n_clusters: int = 8, min_history: int = 1
) -> TensorSampleSet:
    """Random samples with a learnable signal, for smoke tests and throughput benchmarks.

    Items are split into ``n_clusters`` clusters by ``item_id % n_clusters``; each user's history mostly
    comes from one cluster. Positives (label 1) take their target from that cluster, negatives from
    another one, so a model that compares the target with the history can beat AUC 0.5.
    """
    if spec.n_items <= n_clusters:
        raise ValueError("synthetic_sample_set needs more items than clusters")
    rng = np.random.default_rng(seed)
    length = spec.max_history_length
    user_cluster = rng.integers(0, n_clusters, size=n_samples)

    def items_in(cluster: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        # Pick ids in 1..n_items-1 congruent to the cluster (mod n_clusters).
        per_cluster = (spec.n_items - 1 - cluster) // n_clusters
        offset = rng.integers(0, np.maximum(per_cluster, 1)[..., None], size=size)
        ids = cluster[..., None] + n_clusters * offset
        return np.where(ids == 0, n_clusters, ids).clip(1, spec.n_items - 1)

    history = items_in(user_cluster, (n_samples, length))
    noise = rng.random((n_samples, length)) < 0.2
    history = np.where(noise, rng.integers(1, spec.n_items, size=(n_samples, length)), history)
    n_valid = rng.integers(min(min_history, length), length + 1, size=n_samples)
    mask = np.arange(length)[None, :] < n_valid[:, None]
    history = np.where(mask, history, 0)

    label = rng.integers(0, 2, size=n_samples)
    other_cluster = (user_cluster + rng.integers(1, n_clusters, size=n_samples)) % n_clusters
    target = items_in(np.where(label == 1, user_cluster, other_cluster), (n_samples, 1))[:, 0]

    target_time = rng.integers(1_600_000_000, 1_700_000_000, size=n_samples)
    gaps = np.cumsum(rng.integers(60, 86_400 * 7, size=(n_samples, length))[:, ::-1], axis=1)[:, ::-1]
    history_time = np.where(mask, target_time[:, None] - gaps, 0)
    arrays: dict[str, np.ndarray] = {
        "user_id": rng.integers(1, max(spec.n_users, 2), size=n_samples),
        "target_item": target,
        "label": label.astype(np.float32),
        "history_items": history,
        "history_time_buckets": time_buckets(history_time, target_time, mask, spec.n_time_buckets),
        "history_mask": mask,
    }
    for column, vocab in spec.side_vocab().items():
        arrays[column] = rng.integers(0, vocab, size=n_samples)
    return TensorSampleSet.from_arrays(arrays)
