"""LMN's global memory: product-key memory, user-aware queries, sharded reads and shard files."""

from longrec.memory.product_keys import (
    QUERY_VARIANTS,
    MemoryConfig,
    ProductKeyMemory,
    UserAwareQuery,
    axis_topk,
)
from longrec.memory.sharded import (
    MemoryShardError,
    ShardedMemory,
    load_memory_shards,
    save_memory_shards,
    shard_ranges,
)

__all__ = [
    "QUERY_VARIANTS",
    "MemoryConfig",
    "MemoryShardError",
    "ProductKeyMemory",
    "ShardedMemory",
    "UserAwareQuery",
    "axis_topk",
    "load_memory_shards",
    "save_memory_shards",
    "shard_ranges",
]
