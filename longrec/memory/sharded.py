"""Sharded memory: the value table split by slot range into N shards, read by gathering each slot from
its shard, and the shard files (safetensors + a checked manifest) that training writes and serving loads.

The small sub-key tables are replicated in every reader (``keys.safetensors``); only the value table is
split. A read computes the two-axis activation from the keys, then fetches each selected slot from the
shard whose range holds it — what a memory parameter server does over the network, done here in process.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from longrec.kernels.pkm import combine_distinct_rows, select_slots, unique_ids
from longrec.memory.product_keys import MemoryConfig, ProductKeyMemory, axis_topk

__all__ = [
    "MANIFEST_FILE",
    "MemoryShardError",
    "ShardedMemory",
    "load_memory_shards",
    "save_memory_shards",
    "shard_ranges",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
KEYS_FILE = "keys.safetensors"
FORMAT = "longrec-pkm-shards/1"


class MemoryShardError(ValueError):
    """A memory shard folder that does not match its manifest (missing, corrupted or mismatched file)."""


def shard_ranges(slots: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slot ranges of near-equal size covering 0..slots."""
    if not 1 <= n_shards <= slots:
        raise ValueError(f"n_shards must lie in [1, {slots}], got {n_shards}")
    bounds = [slots * i // n_shards for i in range(n_shards + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class ShardedMemory:
    """Inference-time view of a product-key memory whose value table lives in per-range shards."""

    def __init__(
        self, config: MemoryConfig, row_keys: Tensor, col_keys: Tensor, shards: list[Tensor], ranges
    ) -> None:
        ranges = [tuple(map(int, item)) for item in ranges]
        if len(shards) != len(ranges) or not shards:
            raise ValueError("need one range per shard and at least one shard")
        expected = 0
        for (start, stop), shard in zip(ranges, shards, strict=True):
            if start != expected or stop <= start or shard.shape != (stop - start, config.value_dim):
                raise ValueError(
                    f"shard range [{start}, {stop}) does not fit its tensor {tuple(shard.shape)}"
                )
            expected = stop
        if expected != config.slots:
            raise ValueError(f"shard ranges cover {expected} slots, the memory has {config.slots}")
        self.config = config
        self.row_keys = row_keys
        self.col_keys = col_keys
        self.shards = shards
        self.ranges = ranges
        # Upper bounds of all shards but the last: bucketize maps a slot to its shard's index.
        self._bounds = torch.tensor([stop for _, stop in ranges[:-1]], dtype=torch.int64)

    @classmethod
    def from_memory(cls, memory: ProductKeyMemory, n_shards: int) -> ShardedMemory:
        """Split ``memory``'s value table into ``n_shards`` range shards (copies, detached)."""
        weight = memory.values.weight.detach().cpu()
        ranges = shard_ranges(memory.config.slots, n_shards)
        shards = [weight[start:stop].clone() for start, stop in ranges]
        keys = (memory.row_keys.detach().cpu().clone(), memory.col_keys.detach().cpu().clone())
        return cls(memory.config, *keys, shards, ranges)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_pieces(self, distinct: Tensor) -> list[tuple[int, int, int]]:
        """(shard, begin, end) for sorted distinct slot ids: shards hold contiguous ranges, so each shard's
        slots are one run ``distinct[begin:end]`` of the sorted ids (empty runs included)."""
        edges = [0, *torch.searchsorted(distinct, self._bounds).tolist(), len(distinct)]
        return [(shard, edges[shard], edges[shard + 1]) for shard in range(len(edges) - 1)]

    def gather_distinct(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """(rows [U, d_v] of the U distinct slot ids, in sorted id order; inverse, shaped like ``slots``:
        each slot's row in ``rows``). Each distinct slot is fetched once, from the shard holding it."""
        distinct, inverse = unique_ids(slots.reshape(-1))
        return self.fetch_distinct(distinct), inverse.view(slots.shape)

    def fetch_distinct(self, distinct: Tensor) -> Tensor:
        """Value rows [U, d_v] of sorted distinct slot ids, each shard's run copied in as one block."""
        rows = distinct.new_empty((len(distinct), self.config.value_dim), dtype=self.shards[0].dtype)
        for shard, begin, end in self.shard_pieces(distinct):
            start = self.ranges[shard][0]
            rows[begin:end] = self.shards[shard].index_select(0, distinct[begin:end] - start)
        return rows

    def gather(self, slots: Tensor) -> Tensor:
        """Value rows for any-shaped slot ids: [..., d_v], each fetched from the shard holding it."""
        rows, inverse = self.gather_distinct(slots)
        return rows.index_select(0, inverse.reshape(-1)).view(*slots.shape, self.config.value_dim)

    @torch.no_grad()
    def read_topk(
        self, row_top: Tensor, row_idx: Tensor, col_top: Tensor, col_idx: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Same contract as ``ProductKeyMemory.read_topk``: (reads [N, d_v], slots, weights [N, H, K])."""
        weights, slots = select_slots(row_top, row_idx, col_top, col_idx, self.config.n_rows)
        rows, inverse = self.gather_distinct(slots)  # each distinct slot once, from its shard
        return combine_distinct_rows(weights, rows, inverse), slots, weights

    @torch.no_grad()
    def row_topk(self, row_query: Tensor) -> tuple[Tensor, Tensor]:
        return axis_topk(row_query, self.row_keys, self.config.top_k)

    @torch.no_grad()
    def col_topk(self, col_query: Tensor) -> tuple[Tensor, Tensor]:
        return axis_topk(col_query, self.col_keys, self.config.top_k)

    @torch.no_grad()
    def __call__(self, row_query: Tensor, col_query: Tensor) -> Tensor:
        """Reads [N, d_v] for query halves, as ``ProductKeyMemory.forward``."""
        row_top, row_idx = self.row_topk(row_query)
        col_top, col_idx = self.col_topk(col_query)
        return self.read_topk(row_top, row_idx, col_top, col_idx)[0]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_memory_shards(
    memory: ProductKeyMemory | ShardedMemory, directory: str | Path, n_shards: int
) -> Path:
    """Write keys, ``n_shards`` value shards and ``manifest.json`` into ``directory``; returns the manifest."""
    sharded = memory if isinstance(memory, ShardedMemory) else ShardedMemory.from_memory(memory, n_shards)
    if sharded.n_shards != n_shards:
        sharded = ShardedMemory(
            sharded.config,
            sharded.row_keys,
            sharded.col_keys,
            [torch.cat(sharded.shards)[a:b].clone() for a, b in shard_ranges(sharded.config.slots, n_shards)],
            shard_ranges(sharded.config.slots, n_shards),
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"row_keys": sharded.row_keys.contiguous(), "col_keys": sharded.col_keys.contiguous()},
              directory / KEYS_FILE)  # fmt: skip
    entries = []
    for index, ((start, stop), shard) in enumerate(zip(sharded.ranges, sharded.shards, strict=True)):
        name = f"values-{index:05d}-of-{n_shards:05d}.safetensors"
        save_file({"values": shard.contiguous()}, directory / name)
        entries.append(
            {
                "index": index,
                "file": name,
                "start": start,
                "stop": stop,
                "sha256": sha256_file(directory / name),
            }
        )
    config = sharded.config
    manifest = {
        "format": FORMAT,
        "slots": config.slots,
        "n_rows": config.n_rows,
        "key_dim": config.key_dim,
        "value_dim": config.value_dim,
        "top_k": config.top_k,
        "heads": config.heads,
        "dtype": str(sharded.shards[0].dtype).removeprefix("torch."),
        "keys": {"file": KEYS_FILE, "sha256": sha256_file(directory / KEYS_FILE)},
        "shards": entries,
    }
    path = directory / MANIFEST_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)  # the manifest last: a folder without one was never completely written
    logger.info("wrote %d memory shards (%d slots) to %s", n_shards, config.slots, directory)
    return path


def load_checked(directory: Path, entry: dict, what: str) -> dict[str, Tensor]:
    """The tensors of one manifest entry's file, after its checksum; MemoryShardError names the file."""
    path = directory / entry["file"]
    if not path.is_file():
        raise MemoryShardError(f"{what} ({entry['file']}) is missing from {directory}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise MemoryShardError(
            f"{what} ({entry['file']}) fails its checksum: sha256 {digest[:12]}… but the manifest says "
            f"{entry['sha256'][:12]}… (file corrupted or from another memory)"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise MemoryShardError(f"{what} ({entry['file']}) is unreadable: {error}") from error


def read_manifest(directory: Path) -> dict:
    """A shard folder's manifest.json, checked to be readable and of this format."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise MemoryShardError(f"no {MANIFEST_FILE} in {directory}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MemoryShardError(f"{path} is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT:
        raise MemoryShardError(f"{path}: unsupported format {manifest.get('format')!r}")
    return manifest


def manifest_config(manifest: dict) -> MemoryConfig:
    """The MemoryConfig a manifest describes."""
    return MemoryConfig(
        slots=manifest["slots"],
        key_dim=manifest["key_dim"],
        value_dim=manifest["value_dim"],
        top_k=manifest["top_k"],
        heads=manifest["heads"],
    )


def load_memory_shards(directory: str | Path) -> ShardedMemory:
    """Load a shard folder written by ``save_memory_shards``, checking every file against the manifest."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    manifest = read_manifest(directory)
    config = manifest_config(manifest)
    keys = load_checked(directory, manifest["keys"], "memory keys")
    half_shape = (config.heads, config.n_rows, config.key_dim // 2)
    for name in ("row_keys", "col_keys"):
        if name not in keys or tuple(keys[name].shape) != half_shape:
            raise MemoryShardError(f"memory keys ({KEYS_FILE}): {name} is not a {half_shape} tensor")
    shards, ranges, expected = [], [], 0
    for entry in manifest["shards"]:
        what = f"memory shard {entry['index']}"
        start, stop = int(entry["start"]), int(entry["stop"])
        if start != expected or stop <= start:
            raise MemoryShardError(
                f"{what} ({entry['file']}): range [{start}, {stop}) leaves a gap or overlap"
            )
        tensors = load_checked(directory, entry, what)
        values = tensors.get("values")
        if values is None or tuple(values.shape) != (stop - start, config.value_dim):
            shape = None if values is None else tuple(values.shape)
            raise MemoryShardError(
                f"{what} ({entry['file']}) holds values of shape {shape}, the manifest expects "
                f"{(stop - start, config.value_dim)} for slots [{start}, {stop})"
            )
        shards.append(values)
        ranges.append((start, stop))
        expected = stop
    if expected != config.slots:
        raise MemoryShardError(f"{manifest_path}: shards cover {expected} of {config.slots} slots")
    return ShardedMemory(config, keys["row_keys"], keys["col_keys"], shards, ranges)
