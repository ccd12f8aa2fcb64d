"""Product-key memory, user-aware queries, sharded reads and shard files."""

from __future__ import annotations

import json

import pytest
import torch

from longrec.memory import (
    MemoryConfig,
    MemoryShardError,
    ProductKeyMemory,
    ShardedMemory,
    UserAwareQuery,
    load_memory_shards,
    save_memory_shards,
    shard_ranges,
)

CONFIG = MemoryConfig(slots=49, key_dim=6, value_dim=5, top_k=3, heads=2)


def make_memory(seed: int = 0, config: MemoryConfig = CONFIG) -> ProductKeyMemory:
    torch.manual_seed(seed)
    return ProductKeyMemory(config)


def queries(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    half = CONFIG.key_dim // 2
    return torch.randn(n, CONFIG.heads, half, generator=gen), torch.randn(
        n, CONFIG.heads, half, generator=gen
    )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="perfect square"):
        MemoryConfig(slots=50)
    with pytest.raises(ValueError, match="even"):
        MemoryConfig(slots=49, key_dim=5, top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        MemoryConfig(slots=49, top_k=8)
    assert MemoryConfig(slots=1_048_576).n_rows == 1024


def test_read_equals_dense_search_over_full_keys() -> None:
    """A dense lookup with the r² concatenated keys [K_row[i]; K_col[j]] selects the same slots."""
    memory = make_memory()
    row_q, col_q = queries()
    out = memory(row_q, col_q)
    r = CONFIG.n_rows
    expected = torch.zeros_like(out)
    for head in range(CONFIG.heads):
        keys = torch.cat(
            [
                memory.row_keys[head].repeat_interleave(r, dim=0),  # slot i·r + j → row i
                memory.col_keys[head].repeat(r, 1),  # → column j
            ],
            dim=1,
        )
        full = torch.cat([row_q[:, head], col_q[:, head]], dim=1) @ keys.T  # [N, r²]
        best, slots = full.topk(CONFIG.top_k, dim=-1)
        expected += (torch.softmax(best, -1).unsqueeze(-1) * memory.values.weight[slots]).sum(1)
    torch.testing.assert_close(out, expected.detach())


def test_values_get_sparse_gradients_on_selected_rows_only() -> None:
    memory = make_memory()
    row_q, col_q = queries()
    row_top, row_idx = memory.row_topk(row_q)
    col_top, col_idx = memory.col_topk(col_q)
    out, slots, _ = memory.read_topk(row_top, row_idx, col_top, col_idx)
    out.square().sum().backward()
    grad = memory.values.weight.grad
    assert grad.is_sparse
    touched = grad.coalesce().indices()[0]
    assert set(touched.tolist()) == set(slots.flatten().tolist())


def test_user_aware_query_variants() -> None:
    item, user = torch.randn(4, 8), torch.randn(4, 3)
    split = UserAwareQuery(8, 3, key_dim=6, heads=2, variant="split")
    row, col = split(item, user)
    assert row.shape == col.shape == (4, 2, 3)
    other_user = split(item, torch.randn(4, 3))
    torch.testing.assert_close(other_user[0], row)  # split: rows are addressed by the item alone
    joint = UserAwareQuery(8, 3, key_dim=6, heads=2, variant="joint")
    row_j, _ = joint(item, user)
    assert not torch.allclose(joint(item, torch.randn(4, 3))[0], row_j)
    with pytest.raises(ValueError, match="unknown query variant"):
        UserAwareQuery(8, 3, 6, 1, variant="both")


def test_shard_ranges_cover_all_slots() -> None:
    assert shard_ranges(49, 3) == [(0, 16), (16, 32), (32, 49)]
    with pytest.raises(ValueError):
        shard_ranges(4, 5)


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_sharded_reads_equal_unsharded(n_shards: int) -> None:
    memory = make_memory()
    row_q, col_q = queries(7)
    sharded = ShardedMemory.from_memory(memory, n_shards)
    assert sharded.n_shards == n_shards
    with torch.no_grad():
        expected = memory(row_q, col_q)
    torch.testing.assert_close(sharded(row_q, col_q), expected)
    slots = torch.arange(49).view(7, 7)
    torch.testing.assert_close(sharded.gather(slots), memory.values.weight.detach()[slots])


def test_remote_reads_fetch_each_slot_once_and_read_a_failed_shard_as_zero() -> None:
    """The served memory (value rows behind shard clients) reads what the local shards read; with a shard
    down, exactly its slots read as zero rows and the read is flagged degraded."""
    import numpy as np

    from longrec.serving.memory import MemoryIndex, RemoteShardedMemory

    local = ShardedMemory.from_memory(make_memory(), 2)
    index = MemoryIndex(
        local.config, local.row_keys, local.col_keys, [{"start": a, "stop": b} for a, b in local.ranges]
    )
    asked: list[np.ndarray] = []

    def client(shard: int):
        def gather(slots: np.ndarray) -> np.ndarray:
            asked.append(slots)
            return local.shards[shard].numpy()[slots - local.ranges[shard][0]]

        return gather

    def dead(slots: np.ndarray) -> np.ndarray:
        raise ConnectionError("shard 1 is down")

    row_q, col_q = queries(7)
    healthy = RemoteShardedMemory(index, [client(0), client(1)], timeout_s=5.0)
    torch.testing.assert_close(healthy(row_q, col_q), local(row_q, col_q))
    assert not healthy.degraded and len(asked) == 2  # one call per shard
    for slots in asked:  # each distinct slot once, in its shard's range
        assert len(np.unique(slots)) == len(slots)
    assert {int(s) for a in asked for s in a} == {int(s) for s in local.read_topk(
        *local.row_topk(row_q), *local.col_topk(col_q))[1].reshape(-1)}  # fmt: skip

    degraded = RemoteShardedMemory(index, [client(0), dead], timeout_s=5.0)
    zeroed = ShardedMemory(
        local.config, local.row_keys, local.col_keys,
        [local.shards[0], torch.zeros_like(local.shards[1])], local.ranges,
    )  # fmt: skip
    reads = degraded(row_q, col_q)
    torch.testing.assert_close(reads, zeroed(row_q, col_q))
    assert degraded.degraded and not torch.allclose(reads, local(row_q, col_q))  # shard 1 was read from


def test_shard_files_roundtrip(tmp_path) -> None:
    memory = make_memory()
    manifest_path = save_memory_shards(memory, tmp_path / "mem", 3)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["slots"] == 49 and [s["stop"] for s in manifest["shards"]] == [16, 32, 49]
    loaded = load_memory_shards(tmp_path / "mem")
    row_q, col_q = queries()
    with torch.no_grad():
        torch.testing.assert_close(loaded(row_q, col_q), memory(row_q, col_q))
    # Re-sharding a sharded memory into another count keeps the reads.
    save_memory_shards(loaded, tmp_path / "mem2", 2)
    torch.testing.assert_close(load_memory_shards(tmp_path / "mem2")(row_q, col_q), loaded(row_q, col_q))


def test_corrupted_shard_fails_naming_the_shard(tmp_path) -> None:
    save_memory_shards(make_memory(), tmp_path / "mem", 3)
    shard = tmp_path / "mem" / "values-00001-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(
        MemoryShardError, match=r"memory shard 1 \(values-00001-of-00003.safetensors\).*checksum"
    ):
        load_memory_shards(tmp_path / "mem")


def test_mismatched_or_missing_shard_fails_naming_the_shard(tmp_path) -> None:
    save_memory_shards(make_memory(seed=0), tmp_path / "a", 3)
    save_memory_shards(make_memory(seed=1), tmp_path / "b", 3)
    # A shard from another memory: checksum mismatch, named.
    name = "values-00002-of-00003.safetensors"
    (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(MemoryShardError, match="memory shard 2 .*checksum"):
        load_memory_shards(tmp_path / "a")
    # A manifest whose ranges do not match the shard's shape (checksum updated): shape error, named.
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["stop"] = 15
    manifest["shards"][1]["start"] = 15
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MemoryShardError, match=r"memory shard 0 .*shape \(16, 5\)"):
        load_memory_shards(tmp_path / "b")
    (tmp_path / "a" / "values-00000-of-00003.safetensors").unlink()
    with pytest.raises(MemoryShardError, match="memory shard 0 .*missing"):
        load_memory_shards(tmp_path / "a")
    with pytest.raises(MemoryShardError, match="no manifest.json"):
        load_memory_shards(tmp_path / "nowhere")
