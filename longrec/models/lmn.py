"""LMN: Large Memory Network (WWW 2025 companion) on a DIN backbone, docs/MODELS.md section 4.

One global product-key memory shared by all users. A user-aware query per item (item half → rows, user
half → columns) selects K slots by the two-axis activation; reads m_j for the last history items and m_t
for the target go into the DIN head as [m_t, pool(m_j)]. A Smooth-L1 memory loss pulls each m_j towards
the stop-gradient target τ_j = T([e_j ; g(user)]), writing the history with user information into the
value slots. Loss = BCE + λ·L_mem. Dense parameters train with Adam, the value table with SparseAdam.

Choices the paper leaves open (each a switch): T is a fixed orthogonal projection (a stop-gradient target
gives T no gradient, so it would stay at its initialisation anyway); ``memory_history_reads`` can cap the
reads to the last n valid history items (reads cost B·n grid lookups per batch; default None = all).

Two horizons (what the memory is for): the backbone and the head read the last L_short items, while the
memory loss may write from a longer window. When a batch carries the training set's long view
(``SampleConfig.memory_history_length`` = L_long > L_short), each sample writes ``memory_write_samples``
events drawn (stratified, uniformly) from its last L_long events strictly before the target, instead of
its short-history reads. Inference never reads the long view: the head's inputs are the short history,
the target and memory reads for those items.

The write target τ (``memory_target``):
- "projection": τ_j = T([e_j ; g(user)]). Everything in it is an input the model also has at inference
  (the item's and user's embeddings), so the memory can add only where writes landed, not what they say.
- "interest": τ_j = T([ē ; g(user)]), ē the mean embedding of the events the sample writes (its long
  window when there is one). Every write of a sample stores the user's long-horizon taste, which the
  short history does not contain; a read at (user, item) then returns the taste of the users who
  consumed items like it.
The default stays "projection": in the two-horizon study (dslabs, S=50, L_long=200, 3 seeds; README
"Two horizons") "interest" scored 0.7808 / 0.7820 test AUC at 64K / 1M slots against 0.7894 / 0.7731,
all inside the seed spread, so nothing supports changing the spec's target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.schema import LONG_LOG_KEY, FeatureSpec
from longrec.kernels.pkm import take, unique_ids
from longrec.memory import (
    QUERY_VARIANTS,
    MemoryConfig,
    ProductKeyMemory,
    ShardedMemory,
    UserAwareQuery,
    load_memory_shards,
    save_memory_shards,
)
from longrec.model_files import MEMORY_DIR  # sub-folder of a model folder holding the memory shards
from longrec.models.base import ACTIVATIONS, MLP, CTRModel
from longrec.models.din import DINBackbone, DINConfig, UsesDINBackbone

__all__ = ["LMN", "LMNConfig", "UserFeatures", "MEMORY_DIR"]

logger = logging.getLogger(__name__)

USER_FEATURE_MODES = ("id+side", "id", "side")
ITEM_ROWS_MAX_BYTES = 256 * 2**20  # cache_item_rows: the largest per-item row table a ranker builds
MEMORY_POOLS = ("mean", "attention")
MEMORY_TARGETS = ("projection", "interest")


@dataclass
class LMNConfig:
    """LMN hyper-parameters; defaults train one ML-100k (L=50) epoch in about a minute on 2 cores."""

    # DIN backbone (same meaning and defaults as DINConfig)
    embedding_dim: int = 32
    attention_hidden: tuple[int, ...] = (80, 40)
    head_hidden: tuple[int, ...] = (200, 80)
    activation: str = "dice"
    use_side_features: bool = True  # genre / age / gender / occupation embeddings into the head
    side_embedding_dim: int = 8
    embedding_init_std: float = 0.05
    dropout: float = 0.0
    # memory
    memory_slots: int = 65_536  # n = r² slots (r = 256); 1,048,576 for the paper-scale run
    memory_top_k: int = 16  # K slots per read (and per axis); the paper's scale uses 32
    memory_key_dim: int = 64  # d_k; each sub-key half is d_k/2
    memory_value_dim: int = 32  # d_v
    memory_heads: int = 1
    query_variant: str = "split"  # "split": q = [W_i e ; W_u g]; "joint": W [e ; g] cut in two
    user_features: str = "id+side"  # g(user): "id+side" | "id" | "side" (age, gender, occupation)
    user_embedding_dim: int = 16  # width of each user-feature embedding in g
    memory_loss_weight: float = 0.1  # λ in BCE + λ·L_mem (the paper does not give it)
    # Read the last n valid history items; None = every one, as the spec has it. Per-axis top-K runs once
    # per distinct item and batch row; every read pays the K×K grid (cost: benchmarks/results/lmn_*.md).
    memory_history_reads: int | None = None
    memory_pool: str = "mean"  # pool of m_j into the head: masked "mean" or DIN "attention" weights
    memory_lr: float | None = None  # SparseAdam lr of the value table; None = the trainer's lr
    memory_backend: str = "auto"  # "auto" (Triton on CUDA, torch on CPU) | "reference" | "triton"
    memory_shards: int = 4  # shards written by export_artifacts
    # Two horizons: events each sample writes from its long window when the batch has a long view (a
    # training set with memory_history_length > 0); the short history reads are written otherwise.
    memory_write_samples: int = 64
    memory_target: str = "projection"  # τ: "projection" T([e_j ; g]) | "interest" T([ē ; g]) (module doc)

    def __post_init__(self) -> None:
        self.attention_hidden = tuple(self.attention_hidden)
        self.head_hidden = tuple(self.head_hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.query_variant not in QUERY_VARIANTS:
            raise ValueError(f"query_variant must be one of {QUERY_VARIANTS}, got {self.query_variant!r}")
        if self.user_features not in USER_FEATURE_MODES:
            raise ValueError(f"user_features must be one of {USER_FEATURE_MODES}, got {self.user_features!r}")
        if self.memory_pool not in MEMORY_POOLS:
            raise ValueError(f"memory_pool must be one of {MEMORY_POOLS}, got {self.memory_pool!r}")
        if self.memory_history_reads is not None and self.memory_history_reads < 1:
            raise ValueError("memory_history_reads must be >= 1 or None (all)")
        if self.memory_loss_weight < 0:
            raise ValueError("memory_loss_weight must be >= 0")
        if self.memory_shards < 1:
            raise ValueError("memory_shards must be >= 1")
        if self.memory_write_samples < 1:
            raise ValueError("memory_write_samples must be >= 1")
        if self.memory_target not in MEMORY_TARGETS:
            raise ValueError(f"memory_target must be one of {MEMORY_TARGETS}, got {self.memory_target!r}")
        self.memory_config()  # validates slots / K / widths

    def backbone_config(self) -> DINConfig:
        """The DIN backbone these settings describe (raw attention weights, no time buckets: the paper's)."""
        return DINConfig(
            embedding_dim=self.embedding_dim,
            attention_hidden=self.attention_hidden,
            head_hidden=self.head_hidden,
            activation=self.activation,
            use_side_features=self.use_side_features,
            side_embedding_dim=self.side_embedding_dim,
            dropout=self.dropout,
            embedding_init_std=self.embedding_init_std,
        )

    def memory_config(self) -> MemoryConfig:
        """The ``MemoryConfig`` these settings describe."""
        return MemoryConfig(
            slots=self.memory_slots,
            key_dim=self.memory_key_dim,
            value_dim=self.memory_value_dim,
            top_k=self.memory_top_k,
            heads=self.memory_heads,
        )


class UserFeatures(nn.Module):
    """g(user): concatenated embeddings of user_id and/or age, gender, occupation: [B, output_dim]."""

    SIDE = ("user_age", "user_gender", "user_occupation")

    def __init__(self, spec: FeatureSpec, dim: int, mode: str) -> None:
        super().__init__()
        vocab = {**spec.side_vocab(), "user_id": spec.n_users}
        self.features = (("user_id",) if "id" in mode else ()) + (self.SIDE if "side" in mode else ())
        self.tables = nn.ModuleDict({name: nn.Embedding(vocab[name], dim) for name in self.features})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.output_dim = dim * len(self.features)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.tables[name](batch[name]) for name in self.features], dim=-1)


class LMN(UsesDINBackbone, CTRModel):
    """A DIN backbone plus a memory head: a million-slot-capable product-key memory read for the history
    items and the target, pooled and fed with the backbone's features to the prediction MLP."""

    name: ClassVar[str] = "lmn"
    config_class: ClassVar[type] = LMNConfig
    reads_long_view: ClassVar[bool] = True

    def __init__(self, spec: FeatureSpec, config: LMNConfig | None = None) -> None:
        config = config if config is not None else LMNConfig()
        super().__init__(spec, config)
        d = config.embedding_dim
        self.backbone = DINBackbone(spec, config.backbone_config())
        self.user = UserFeatures(spec, config.user_embedding_dim, config.user_features)
        memory_config = config.memory_config()
        self.memory = ProductKeyMemory(memory_config, sparse=True, backend=config.memory_backend)  # type: ignore[arg-type]
        self.query = UserAwareQuery(
            d, self.user.output_dim, config.memory_key_dim, config.memory_heads, config.query_variant
        )
        # τ = T([e; g]); fixed because the loss stops its gradient (a buffer: no optimiser state).
        projection = torch.empty(config.memory_value_dim, d + self.user.output_dim)
        nn.init.orthogonal_(projection)
        self.register_buffer("memory_target_projection", projection)
        dv = config.memory_value_dim
        self.head = MLP(
            self.backbone.output_dim + 2 * dv,
            config.head_hidden,
            config.activation,
            output_dim=1,
            dropout=config.dropout,
        )
        self.sharded_memory: ShardedMemory | None = None
        self._memory_loss: Tensor | None = None
        self._item_rows: tuple[Tensor, Tensor] | None = None  # cache_item_rows(): every item's row top-K
        self._accept_pre_backbone_checkpoints()

    # -- memory reads ---------------------------------------------------------------------------------
    def read_positions(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Positions [B, n] of the last n valid history items and their validity (histories right-padded)."""
        length = mask.shape[1]
        n = (
            length
            if self.config.memory_history_reads is None
            else min(self.config.memory_history_reads, length)
        )
        lengths = mask.sum(1, keepdim=True)
        positions = lengths - n + torch.arange(n, device=mask.device)
        valid = positions >= 0
        positions = positions.clamp_min(0)
        return positions, valid & mask.gather(1, positions)

    def _memory(self) -> ProductKeyMemory | ShardedMemory:
        # A deployed (sharded) memory serves eval-mode reads; training always uses the trainable table.
        if self.sharded_memory is not None and not self.training:
            return self.sharded_memory
        return self.memory

    def read_memory(self, items: Tensor, owners: Tensor, item_vectors: Tensor, users: Tensor) -> Tensor:
        """Reads [N, d_v] for item ids [N] of batch rows ``owners`` [N], given their embeddings and g."""
        memory = self._memory()
        if self.config.query_variant == "split":
            # The row half depends on the item alone and the column half on the user alone: take each
            # axis' top-K once per distinct item / per batch row, then index (B·n reads share them).
            unique_items, inverse = unique_ids(items)
            if self._item_rows is not None and not self.training:  # serving: looked up, not computed
                row_top, row_idx = (take(part, 0, unique_items) for part in self._item_rows)
            else:
                row_top, row_idx = memory.row_topk(self.query.row_query(self.item_embedding(unique_items)))
            col_top, col_idx = memory.col_topk(self.query.col_query(users))
            return memory.read_topk(
                take(row_top, 0, inverse),
                take(row_idx, 0, inverse),
                take(col_top, 0, owners),
                take(col_idx, 0, owners),
            )[0]
        row_query, col_query = self.query(item_vectors, users[owners])
        return memory(row_query, col_query)

    @torch.no_grad()
    def cache_item_rows(self, chunk: int = 4096, max_bytes: int = ITEM_ROWS_MAX_BYTES) -> int:
        """Serving: compute the row axis' top-K of every item id once (the split query's row half is a
        function of the item alone, so with frozen weights it is a table, [n_items, H, K] scores and
        row ids), and look reads' rows up in it instead of scoring each request's distinct items
        against the r row sub-keys. Exact: the same computation, batched differently. Dropped when
        the model goes back to training (``train()``). Returns the table's bytes: 0 for the joint query,
        whose row half also depends on the user, and for a vocabulary whose table would exceed
        ``max_bytes`` (12 bytes per item and slot read: 192 MB for a million items at K=16), which keeps
        computing rows per request."""
        if self.config.query_variant != "split":
            return 0
        per_item = self.config.memory_heads * self.config.memory_top_k * (4 + 8)  # float32 score, int64 id
        if self.spec.n_items * per_item > max_bytes:
            logger.info(
                "LMN row table skipped: %d items x %d B > %d B; rows are computed per request",
                self.spec.n_items, per_item, max_bytes,
            )  # fmt: skip
            return 0
        memory = self._memory()
        tops, ids = [], []
        for start in range(0, self.spec.n_items, chunk):
            items = torch.arange(start, min(start + chunk, self.spec.n_items))
            top, idx = memory.row_topk(self.query.row_query(self.item_embedding(items)))
            tops.append(top)
            ids.append(idx)
        self._item_rows = (torch.cat(tops), torch.cat(ids))
        return sum(t.numel() * t.element_size() for t in self._item_rows)

    def train(self, mode: bool = True) -> LMN:
        if mode:
            self._item_rows = None  # the weights will change: the table would go stale
        return super().train(mode)

    # -- model ----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["history_mask"]
        backbone = self.backbone(batch)
        history, target, weights = backbone["history"], backbone["target"], backbone["weights"]
        users = self.user(batch)  # g(user): [B, d_g]

        positions, read_valid = self.read_positions(mask)  # [B, n]
        rows, cols = read_valid.nonzero(as_tuple=True)  # only valid reads are computed
        read_items = batch["history_items"].gather(1, positions)[rows, cols]
        read_vectors = history.gather(1, positions.unsqueeze(-1).expand(-1, -1, history.shape[-1]))[
            rows, cols
        ]
        size = target.shape[0]
        batch_rows = torch.arange(size, device=target.device)
        reads = self.read_memory(
            torch.cat([read_items, batch["target_item"]]),
            torch.cat([rows, batch_rows]),
            torch.cat([read_vectors, target]),
            users,
        )
        history_reads, target_read = reads[: len(rows)], reads[len(rows) :]

        dv = self.config.memory_value_dim
        if self.config.memory_pool == "mean":
            pool_weight = torch.ones(len(rows), device=target.device, dtype=reads.dtype)
            count = read_valid.sum(1).clamp_min(1).to(reads.dtype)
            pool_weight = pool_weight / count[rows]
        else:
            pool_weight = weights.gather(1, positions)[rows, cols]
        pooled = reads.new_zeros(size, dv).index_add_(0, rows, history_reads * pool_weight.unsqueeze(-1))

        # Kept for loss(): the trainer calls loss(batch, logits) right after this forward.
        self._memory_loss = None
        if self.training:
            if LONG_LOG_KEY in batch:  # two horizons: write events of the long window
                write_items, write_rows = self.long_view_writes(batch)
                write_vectors = self.item_embedding(write_items)
                writes = self.read_memory(write_items, write_rows, write_vectors, users)
                self._memory_loss = self._memory_objective(writes, write_vectors, write_rows, users)
            else:
                self._memory_loss = self._memory_objective(history_reads, read_vectors, rows, users)
        return self.head(torch.cat([backbone["features"], target_read, pooled], -1)).squeeze(-1)

    # -- serving: history reads, attention's user half and g(user) once; then every candidate ---------
    def encode_user(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What scoring needs from one user (a batch of one row): history, g(user) and the history reads."""
        encoded = self.backbone.encode_user(batch)
        history = encoded["history"]
        users = self.user(batch)
        read_items, read_vectors, read_positions = self._history_read_inputs(batch, history)
        if len(read_items):
            owners = torch.zeros_like(read_items)  # one user: every read belongs to row 0
            history_reads = self.read_memory(read_items, owners, read_vectors, users)
        else:  # no history: nothing to read (the pool is then zero, as in forward)
            history_reads = history.new_zeros(0, self.config.memory_value_dim)
        return {**encoded, "users": users, "read_positions": read_positions, "history_reads": history_reads}

    def _history_read_inputs(
        self, batch: dict[str, Tensor], history: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One user's history reads: item ids [n], their embeddings [n, d] and their positions [n]."""
        positions, read_valid = self.read_positions(batch["history_mask"])
        rows, cols = read_valid.nonzero(as_tuple=True)
        read_positions = positions[rows, cols]
        return batch["history_items"][rows, read_positions], history[rows, read_positions], read_positions

    def score_candidates(self, user: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Logits [C] of the C targets in ``batch`` for the user of ``encode_user``; equals ``forward``."""
        backbone = self.backbone.score_candidates(user, batch)
        target = backbone["target"]
        owners = torch.zeros(target.shape[0], dtype=torch.long, device=target.device)
        target_reads = self.read_memory(batch["target_item"], owners, target, user["users"])
        return self.score_from_reads(backbone, user["history_reads"], user["read_positions"], target_reads)

    def request_reads(self, user_batch: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every memory read of one request (the user's history reads and the C targets' reads) in one
        memory call, so a sharded memory costs one round trip per shard. Independent of the backbone's
        attention: serving runs it beside that computation (``longrec.serving.ranker.ModelScorer``)."""
        history = self.backbone.embed_history(user_batch)
        read_items, read_vectors, read_positions = self._history_read_inputs(user_batch, history)
        targets = batch["target_item"]
        items = torch.cat([read_items, targets])
        reads = self.read_memory(
            items,
            torch.zeros_like(items),
            torch.cat([read_vectors, self.item_embedding(targets)]),
            self.user(user_batch),
        )
        n = len(read_items)
        return {"history_reads": reads[:n], "read_positions": read_positions, "target_reads": reads[n:]}

    def score_from_reads(
        self, backbone: dict[str, Tensor], history_reads: Tensor, read_positions: Tensor, target_reads: Tensor
    ) -> Tensor:
        """Logits [C] from the backbone's ``score_candidates`` outputs and the request's memory reads."""
        count = target_reads.shape[0]
        if self.config.memory_pool == "mean":
            pooled = (history_reads / max(len(history_reads), 1)).sum(0, keepdim=True).expand(count, -1)
        else:
            pooled = backbone["weights"][:, read_positions] @ history_reads
        return self.head(torch.cat([backbone["features"], target_reads, pooled], -1)).squeeze(-1)

    def long_view_writes(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Items [N] and batch rows [N] of the memory writes from the long view. A window of at most
        ``memory_write_samples`` (W) events is written whole; a longer one as W draws, one uniform draw
        from each of W equal strata of the window, so every part of it is written. Only positions in
        [start, start + length) are drawn: the window holds the sample's events strictly before its target."""
        start, length = batch["long_history_start"], batch["long_history_length"]
        log = batch[LONG_LOG_KEY]
        size, draws = start.shape[0], self.config.memory_write_samples
        strata = torch.arange(draws, device=start.device)
        fraction = (strata.to(torch.float32) + torch.rand(size, draws, device=start.device)) / draws
        drawn = (fraction * length.unsqueeze(1).to(torch.float32)).long()
        drawn = torch.minimum(drawn, (length - 1).clamp_min(0).unsqueeze(1))
        whole = length.unsqueeze(1) <= draws
        offsets = torch.where(whole, strata.expand(size, -1), drawn)
        keep = torch.where(whole, strata < length.unsqueeze(1), (length > 0).unsqueeze(1))
        rows = torch.arange(size, device=start.device).unsqueeze(1).expand(-1, draws)[keep]
        return log[(start.unsqueeze(1) + offsets)[keep]], rows

    def _memory_objective(self, reads: Tensor, item_vectors: Tensor, owners: Tensor, users: Tensor) -> Tensor:
        """Mean Smooth-L1 between reads [N, d_v] of items (embeddings [N, d]) for batch rows ``owners`` and
        their stop-gradient targets τ (``memory_target``), given g(user) [B, d_g] of every row."""
        if reads.shape[0] == 0:
            return reads.sum() * 0.0
        if self.config.memory_target == "interest":  # ē: mean embedding of each row's written events
            sums = item_vectors.new_zeros(users.shape[0], item_vectors.shape[-1]).index_add_(
                0, owners, item_vectors
            )
            counts = torch.bincount(owners, minlength=users.shape[0]).clamp_min(1).to(sums.dtype)
            item_part = (sums / counts.unsqueeze(-1))[owners]
        else:
            item_part = item_vectors
        goal = F.linear(torch.cat([item_part, users[owners]], dim=-1), self.memory_target_projection)
        return F.smooth_l1_loss(reads, goal.detach())

    def memory_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """L_mem = mean Smooth-L1(m_j, stop_grad(τ_j)) over the events ``batch`` writes (the valid history
        reads, or draws from the long view when the batch has one)."""
        if self._memory_loss is not None:
            return self._memory_loss
        # No cached term (an eval-mode forward came last): read the written events again, without the head.
        users = self.user(batch)
        if LONG_LOG_KEY in batch:
            items, rows = self.long_view_writes(batch)
        else:
            positions, read_valid = self.read_positions(batch["history_mask"])
            rows, cols = read_valid.nonzero(as_tuple=True)
            items = batch["history_items"].gather(1, positions)[rows, cols]
        vectors = self.item_embedding(items)
        reads = self.read_memory(items, rows, vectors, users)
        return self._memory_objective(reads, vectors, rows, users)

    def loss(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        """BCE + λ·L_mem (the memory term from the training forward that produced ``logits``)."""
        bce = super().loss(batch, logits)
        if self.config.memory_loss_weight == 0:
            return bce
        return bce + self.config.memory_loss_weight * self.memory_loss(batch)

    def build_optimizers(self, lr: float, weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """Adam on the dense parameters, SparseAdam on the value table (only read rows get updates)."""
        values = self.memory.values.weight
        dense = [p for p in self.parameters() if p is not values]
        memory_lr = self.config.memory_lr if self.config.memory_lr is not None else lr
        return [
            torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay),
            torch.optim.SparseAdam([values], lr=memory_lr),
        ]

    # -- deployment -----------------------------------------------------------------------------------
    def export_artifacts(self, model_dir: str | Path, n_shards: int | None = None) -> Path:
        """Write the memory as shard files + manifest under ``model_dir/memory``; returns the manifest."""
        shards = n_shards if n_shards is not None else self.config.memory_shards
        return save_memory_shards(self.memory, Path(model_dir) / MEMORY_DIR, shards)

    def attach_memory_shards(self, directory: str | Path) -> ShardedMemory:
        """Serve eval-mode reads from the shard folder ``directory`` (checked against its manifest)."""
        sharded = load_memory_shards(directory)
        if sharded.config != self.memory.config:
            raise ValueError(
                f"memory shards in {directory} have {sharded.config}, model has {self.memory.config}"
            )
        self.sharded_memory = sharded
        return sharded

    def memory_bytes(self) -> int:
        """Bytes of the value table (the part that is sharded)."""
        weight = self.memory.values.weight
        return weight.numel() * weight.element_size()
