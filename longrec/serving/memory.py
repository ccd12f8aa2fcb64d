"""LMN's memory split across shard services: the shard side (one verified value file) and the ranker
side (a ``ShardedMemory`` whose ``gather`` asks the shard services, with a deadline and a fallback).

A shard that does not answer in time costs its slots, not the request: their value rows read as zero,
the response is flagged ``degraded_memory``, and the shard is skipped for ``retry_after_s`` before it is
asked again (so a dead shard adds no latency while it restarts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from longrec.memory import MemoryConfig
from longrec.memory.sharded import (
    MANIFEST_FILE,
    MemoryShardError,
    ShardedMemory,
    load_checked,
    manifest_config,
    read_manifest,
    sha256_file,
)
from longrec.serving.shard_transport import ShardCallError

__all__ = ["MemoryIndex", "RemoteShardedMemory", "ShardValues", "check_shard_files", "load_memory_index"]

logger = logging.getLogger(__name__)

ShardClient = Callable[[np.ndarray], np.ndarray]


class MemoryIndex:
    """The replicated part of a sharded memory: config, sub-keys and the slot range of every shard."""

    def __init__(self, config: MemoryConfig, row_keys: Tensor, col_keys: Tensor, entries: list[dict]):
        self.config = config
        self.row_keys = row_keys
        self.col_keys = col_keys
        self.entries = entries
        self.ranges = [(int(e["start"]), int(e["stop"])) for e in entries]


def load_memory_index(directory: str | Path) -> MemoryIndex:
    """Manifest and keys of a shard folder (keys checked against the manifest); values are not read."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config = manifest_config(manifest)
    keys = load_checked(directory, manifest["keys"], "memory keys")
    return MemoryIndex(config, keys["row_keys"], keys["col_keys"], list(manifest["shards"]))


def check_shard_files(shard_dirs: Sequence[str | Path]) -> None:
    """Check shard i's value file in ``shard_dirs[i]`` against its manifest; MemoryShardError names it.

    The ranker runs this at start-up so a corrupted shard keeps the ranker itself from becoming ready,
    with the file named in its /readyz answer (each shard service also refuses to load it).
    """
    for index, directory in enumerate(shard_dirs):
        directory = Path(directory)
        entries = {int(e["index"]): e for e in read_manifest(directory)["shards"]}
        if index not in entries:
            raise MemoryShardError(f"{directory}/{MANIFEST_FILE} has no shard {index}")
        entry = entries[index]
        path = directory / entry["file"]
        if not path.is_file():
            raise MemoryShardError(f"memory shard {index} ({entry['file']}) is missing from {directory}")
        if sha256_file(path) != entry["sha256"]:
            raise MemoryShardError(
                f"memory shard {index} ({entry['file']}) fails its checksum (file corrupted or replaced)"
            )


class ShardValues:
    """One shard's value rows, loaded from its file after the manifest's checksum and shape checks."""

    def __init__(self, directory: str | Path, index: int) -> None:
        directory = Path(directory)
        manifest = read_manifest(directory)
        entries = {int(e["index"]): e for e in manifest["shards"]}
        if index not in entries:
            raise MemoryShardError(f"{directory}/{MANIFEST_FILE} has no shard {index}")
        entry = entries[index]
        self.start, self.stop = int(entry["start"]), int(entry["stop"])
        values = load_checked(directory, entry, f"memory shard {index}").get("values")
        expected = (self.stop - self.start, int(manifest["value_dim"]))
        if values is None or tuple(values.shape) != expected:
            raise MemoryShardError(f"memory shard {index} ({entry['file']}) is not a {expected} tensor")
        self.index = index
        self.values = values.numpy()

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """Value rows [N, d_v] of global slot ids that must lie in this shard's range."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if slots.size and (slots.min() < self.start or slots.max() >= self.stop):
            raise ValueError(f"slots outside shard {self.index}'s range [{self.start}, {self.stop})")
        return self.values[slots - self.start]


class RemoteShardedMemory(ShardedMemory):
    """A ``ShardedMemory`` whose value rows live behind ``clients`` (one callable per shard).

    ``degraded`` is per thread: the ranker clears it before a request and reads it after.
    """

    def __init__(
        self,
        index: MemoryIndex,
        clients: Sequence[ShardClient],
        timeout_s: float = 1.0,
        retry_after_s: float = 1.0,
        on_shard_call: Callable[[int, float, bool], None] | None = None,
    ) -> None:
        if len(clients) != len(index.ranges):
            raise ValueError(f"{len(index.ranges)} shards in the manifest but {len(clients)} clients")
        self.config = index.config
        self.row_keys = index.row_keys
        self.col_keys = index.col_keys
        self.ranges = index.ranges
        self.shards = []  # values are remote
        self._bounds = torch.tensor([stop for _, stop in self.ranges[:-1]], dtype=torch.int64)
        self.clients = list(clients)
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.on_shard_call = on_shard_call
        self._down_until = [0.0] * len(clients)
        self._pool = ThreadPoolExecutor(max_workers=max(2, 2 * len(clients)), thread_name_prefix="shard")
        self._local = threading.local()

    @property
    def n_shards(self) -> int:
        return len(self.clients)

    @property
    def degraded(self) -> bool:
        return getattr(self._local, "degraded", False)

    @degraded.setter
    def degraded(self, value: bool) -> None:
        self._local.degraded = value

    def _call(self, shard: int, slots: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        ok = False
        try:
            try:
                rows = self.clients[shard](slots)
            except (TimeoutError, FutureTimeout, ShardCallError):  # late, or it answered: not again
                raise
            except Exception as error:  # e.g. a keep-alive connection the server just closed: once more
                logger.info("memory shard %d: %s; retrying once", shard, error)
                rows = self.clients[shard](slots)
            rows = np.asarray(rows, dtype=np.float32)
            ok = rows.shape == (len(slots), self.config.value_dim)
            if not ok:
                raise ValueError(f"shard {shard} answered shape {rows.shape}")
            return rows
        finally:
            if self.on_shard_call is not None:
                self.on_shard_call(shard, time.perf_counter() - started, ok)

    def fetch_distinct(self, distinct: Tensor) -> Tensor:
        """``ShardedMemory.fetch_distinct`` over the shard services: one call per shard (in parallel, under
        one deadline) with that shard's distinct slots; a shard that is down or late reads 0."""
        rows = torch.zeros(len(distinct), self.config.value_dim, dtype=torch.float32)
        now = time.monotonic()
        futures = {}
        for shard, begin, end in self.shard_pieces(distinct):
            if begin == end:
                continue
            if now < self._down_until[shard]:
                self.degraded = True
                continue
            future = self._pool.submit(self._call, shard, distinct[begin:end].numpy())
            futures[shard] = (begin, end, future)
        deadline = time.monotonic() + self.timeout_s
        for shard, (begin, end, future) in futures.items():
            left = max(deadline - time.monotonic(), 0.0)
            try:
                rows[begin:end].numpy()[...] = future.result(timeout=left)  # may be a read-only buffer
            except (FutureTimeout, Exception) as error:  # any failure of one shard degrades, never fails
                self.degraded = True
                self._down_until[shard] = time.monotonic() + self.retry_after_s
                logger.warning("memory shard %d unavailable (%s): its slots read as zero", shard, error)
        return rows
