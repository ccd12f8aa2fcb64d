"""LMN: shapes, padding invariance, memory loss, optimisers, smoke training, checkpoints and shards."""

from __future__ import annotations

import math

import padding_helpers
import pytest
import torch
from torch import Tensor

from longrec.data.schema import FeatureSpec
from longrec.data.tensors import synthetic_sample_set
from longrec.memory import MemoryShardError
from longrec.models.lmn import LMN, MEMORY_DIR
from longrec.models.registry import available_models, build_model
from longrec.train.trainer import (
    TrainConfig,
    evaluate_model,
    load_checkpoint,
    save_checkpoint,
    set_seed,
    train_model,
)

SPEC = FeatureSpec(
    n_users=20, n_items=41, n_genres=4, n_ages=3, n_genders=3, n_occupations=5, max_history_length=6
)
TINY = {
    "embedding_dim": 8,
    "attention_hidden": (8, 4),
    "head_hidden": (8, 4),
    "side_embedding_dim": 4,
    "user_embedding_dim": 4,
    "memory_slots": 64,
    "memory_top_k": 3,
    "memory_key_dim": 8,
    "memory_value_dim": 6,
    "memory_history_reads": 4,
}


def tiny_batch(size: int = 6, seed: int = 0) -> dict[str, Tensor]:
    return padding_helpers.tiny_batch(SPEC, size, seed)


def pad_more(batch: dict[str, Tensor], extra: int, seed: int = 1) -> dict[str, Tensor]:
    return padding_helpers.pad_more(SPEC, batch, extra, seed)


def scramble_padding(batch: dict[str, Tensor], seed: int = 2) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scrambled = dict(batch)
    mask = batch["history_mask"]
    scrambled["history_items"] = torch.where(
        mask, batch["history_items"], torch.randint(1, SPEC.n_items, mask.shape, generator=gen)
    )
    return scrambled


def make_lmn(**overrides: object) -> LMN:
    torch.manual_seed(0)
    model = build_model("lmn", SPEC, {**TINY, **overrides})
    assert isinstance(model, LMN)
    return model


@pytest.mark.parametrize("variant", ["split", "joint"])
@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_forward_shape_and_finite(variant: str, pool: str) -> None:
    batch = tiny_batch()
    logits = make_lmn(query_variant=variant, memory_pool=pool)(batch)
    assert logits.shape == (6,) and torch.isfinite(logits).all()
    assert not batch["history_mask"].all()


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(("variant", "reads"), [("split", 4), ("joint", None), ("split", None)])
def test_padding_never_changes_output(training: bool, variant: str, reads: int | None) -> None:
    model = make_lmn(query_variant=variant, memory_history_reads=reads)
    model.train(training)
    batch = tiny_batch()
    with torch.no_grad():
        base = model(batch)
        loss = model.loss(batch, base) if training else None
        padded = pad_more(batch, 5)
        torch.testing.assert_close(model(padded), base)
        if training:
            torch.testing.assert_close(model.loss(padded, base), loss)
        torch.testing.assert_close(model(scramble_padding(batch)), base)


def test_reads_cover_last_valid_items() -> None:
    model = make_lmn(memory_history_reads=2)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    positions, valid = model.read_positions(mask)
    assert positions[0].tolist() == [1, 2] and valid[0].tolist() == [True, True]
    assert valid[1].tolist() == [False, True] and positions[1, 1] == 0


def test_memory_loss_moves_only_the_selected_value_rows() -> None:
    model = make_lmn()
    model.train()
    selected: list[Tensor] = []
    read_topk = model.memory.read_topk

    def recording(*args: Tensor):
        out = read_topk(*args)
        selected.append(out[1])
        return out

    model.memory.read_topk = recording  # type: ignore[method-assign]
    batch = tiny_batch()
    model(batch)
    n_history_reads = int(model.read_positions(batch["history_mask"])[1].sum())
    history_slots = set(selected[0][:n_history_reads].flatten().tolist())
    model.memory_loss(batch).backward()
    grad = model.memory.values.weight.grad.coalesce()
    rows = grad.indices()[0][grad.values().abs().sum(-1) > 0]
    assert set(rows.tolist()) == history_slots
    assert len(history_slots) < model.config.memory_slots  # the test means something
    # Stop-gradient target: the fixed projection T is a buffer and gets nothing.
    assert "memory_target_projection" in dict(model.named_buffers())

    # One optimiser step on the memory loss changes exactly those value rows.
    model = make_lmn()
    model.train()
    before = model.memory.values.weight.detach().clone()
    optimizers = model.build_optimizers(1e-2)
    for optimizer in optimizers:
        optimizer.zero_grad()
    model(batch)
    model.memory_loss(batch).backward()
    optimizers[1].step()
    changed = (model.memory.values.weight.detach() != before).any(-1).nonzero().squeeze(-1)
    assert set(changed.tolist()) == history_slots


def test_loss_is_bce_plus_lambda_memory_loss() -> None:
    model = make_lmn(memory_loss_weight=0.5)
    model.train()
    batch = tiny_batch()
    logits = model(batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    torch.testing.assert_close(model.loss(batch, logits), bce + 0.5 * model.memory_loss(batch))


def test_optimizers_split_dense_and_sparse() -> None:
    model = make_lmn()
    adam, sparse = model.build_optimizers(1e-3)
    assert isinstance(adam, torch.optim.Adam) and isinstance(sparse, torch.optim.SparseAdam)
    dense_ids = {id(p) for group in adam.param_groups for p in group["params"]}
    assert id(model.memory.values.weight) not in dense_ids
    assert len(dense_ids) + 1 == len(list(model.parameters()))


def test_one_epoch_smoke_training_learns() -> None:
    train = synthetic_sample_set(SPEC, 1024, seed=0, n_clusters=4)
    valid = synthetic_sample_set(SPEC, 256, seed=100, n_clusters=4)
    set_seed(0)
    model = build_model("lmn", SPEC, {**TINY, "embedding_init_std": 0.5})
    before = evaluate_model(model, train)
    result = train_model(model, train, valid, TrainConfig(epochs=1, batch_size=16, lr=3e-2, progress=False))
    after = evaluate_model(model, train)
    assert after["logloss"] < before["logloss"] - 0.05
    assert result.history[0]["valid"]["auc"] > 0.6


def test_checkpoint_and_memory_shards_roundtrip(tmp_path) -> None:
    model = make_lmn()
    model.train()
    model(tiny_batch(8))  # move Dice running statistics
    model.eval()
    batch = tiny_batch(4, seed=3)
    path = save_checkpoint(tmp_path / "model.pt", model)
    torch.load(path, weights_only=True)
    loaded, _ = load_checkpoint(path)
    expected = model(batch)
    torch.testing.assert_close(loaded(batch), expected, rtol=0, atol=0)

    manifest = model.export_artifacts(tmp_path, n_shards=3)
    assert manifest.parent == tmp_path / MEMORY_DIR
    loaded.attach_memory_shards(tmp_path / MEMORY_DIR)
    assert loaded.sharded_memory is not None and loaded.sharded_memory.n_shards == 3
    torch.testing.assert_close(loaded(batch), expected)
    (tmp_path / MEMORY_DIR / "values-00000-of-00003.safetensors").write_bytes(b"junk")
    with pytest.raises(MemoryShardError, match="memory shard 0"):
        loaded.attach_memory_shards(tmp_path / MEMORY_DIR)


def test_cached_item_rows_read_as_computed_rows_and_go_stale_in_training() -> None:
    model = make_lmn(memory_history_reads=None)
    model.train()
    model(tiny_batch(8))  # move Dice running statistics
    model.eval()
    batch = tiny_batch(6, seed=4)
    expected = model(batch)
    user = model.encode_user({k: v[:1] for k, v in batch.items()})
    expected_scores = model.score_candidates(user, batch)
    assert model.cache_item_rows(chunk=16) > 0  # chunks smaller than the vocabulary: their seams too
    rows, ids = model._item_rows
    assert rows.shape[0] == ids.shape[0] == SPEC.n_items
    torch.testing.assert_close(model(batch), expected, rtol=0, atol=1e-6)
    user = model.encode_user({k: v[:1] for k, v in batch.items()})
    torch.testing.assert_close(model.score_candidates(user, batch), expected_scores, rtol=0, atol=1e-6)
    model.train()  # weights are about to change: the table must not outlive them
    assert model._item_rows is None
    assert make_lmn(query_variant="joint").cache_item_rows() == 0  # its row half depends on the user
    too_big = make_lmn().eval()
    assert too_big.cache_item_rows(max_bytes=SPEC.n_items * 3 * 12 - 1) == 0 and too_big._item_rows is None
    assert too_big.cache_item_rows(max_bytes=SPEC.n_items * 3 * 12) == SPEC.n_items * 3 * 12


def test_registry_and_config_validation() -> None:
    assert "lmn" in available_models()
    with pytest.raises(ValueError, match="perfect square"):
        build_model("lmn", SPEC, {**TINY, "memory_slots": 65})
    with pytest.raises(ValueError, match="query_variant"):
        build_model("lmn", SPEC, {**TINY, "query_variant": "x"})
    with pytest.raises(ValueError, match="memory_history_reads"):
        build_model("lmn", SPEC, {**TINY, "memory_history_reads": 0})


@pytest.mark.parametrize("mode", ["id", "side"])
def test_user_feature_switch_and_no_side_features(mode: str) -> None:
    model = make_lmn(user_features=mode, use_side_features=False)
    assert torch.isfinite(model(tiny_batch())).all()


def test_memory_loss_is_masked_smooth_l1_against_the_documented_target() -> None:
    """L_mem = mean over the last `memory_history_reads` VALID history items j and the value dimensions of
    Smooth-L1(m_j, T·[e_j ; g(user)]) — computed here item by item, independently of the batched code."""
    model = make_lmn().eval()
    batch = tiny_batch()
    mask = batch["history_mask"]
    n_reads = TINY["memory_history_reads"]
    with torch.no_grad():
        users = model.user(batch)
        terms = []
        for row in range(mask.shape[0]):
            valid = mask[row].nonzero().flatten().tolist()[-n_reads:]  # padding is never read
            for position in valid:
                item = batch["history_items"][row, position].reshape(1)
                vector = model.item_embedding(item)
                read = model.read_memory(item, torch.zeros(1, dtype=torch.long), vector, users[row : row + 1])
                target = model.memory_target_projection @ torch.cat([vector[0], users[row]])
                terms.append(torch.nn.functional.smooth_l1_loss(read[0], target, reduction="none"))
        expected = torch.cat(terms).mean()
        assert len(terms) == int(mask.sum(1).clamp(max=n_reads).sum())
        torch.testing.assert_close(model.memory_loss(batch), expected)
        # The target is fixed (a buffer) and orthogonal, as documented.
        projection = model.memory_target_projection
        assert not projection.requires_grad
        torch.testing.assert_close(
            projection @ projection.T, torch.eye(projection.shape[0]), atol=1e-5, rtol=0
        )


def test_golden_value_one_item_history() -> None:
    """d = 1, g(user) = user id embedding 1, 4 slots (r = 2), K = 2, d_k = 2, d_v = 1, sigmoid units.

    Queries: row half = item embedding (target v = 0.5, history e = 1), column half = g = 1.
    Row keys (1, −1), column keys (1, 0.25); values of slots 0..3: (2, −1, 10, 10).
    Target read: grid scores s(0) = 0.5 + 1 = 1.5, s(1) = 0.5 + 0.25 = 0.75, s(2) = 0.5, s(3) = −0.25 →
    slots 0 and 1, softmax weights σ(0.75) = 0.6791786992 and 0.3208213008, read = 2·0.6792 − 0.3208 =
    1.0375360975. History read: s = (2, 1.25, 0, −0.75) → the same two slots, same gap, same read;
    pooled (mean of one read) = 1.0375360975.
    Head on [interest, v, interest·v, target read, pooled] with weights (0, 0, 0, 1, 0.5):
    σ(1.5 · 1.0375360975) = σ(1.5563041463), logit = 4·σ − 1 = 2.3032895288.
    """
    spec = FeatureSpec(n_users=2, n_items=3, max_history_length=3)
    model = build_model(
        "lmn",
        spec,
        {
            "embedding_dim": 1,
            "attention_hidden": (1,),
            "head_hidden": (1,),
            "activation": "sigmoid",
            "use_side_features": False,
            "memory_slots": 4,
            "memory_top_k": 2,
            "memory_key_dim": 2,
            "memory_value_dim": 1,
            "user_features": "id",
            "user_embedding_dim": 1,
            "memory_backend": "reference",
        },
    ).eval()
    with torch.no_grad():
        model.item_embedding.weight.copy_(torch.tensor([[0.0], [1.0], [0.5]]))
        model.user.tables["user_id"].weight.copy_(torch.tensor([[0.0], [1.0]]))
        for projection in (model.query.item_projection, model.query.user_projection):
            projection.weight.fill_(1.0)
            projection.bias.zero_()
        model.memory.row_keys.copy_(torch.tensor([[[1.0], [-1.0]]]))
        model.memory.col_keys.copy_(torch.tensor([[[1.0], [0.25]]]))
        model.memory.values.weight.copy_(torch.tensor([[2.0], [-1.0], [10.0], [10.0]]))
        model.head.linears[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.5]]))
        model.head.linears[0].bias.zero_()
        model.head.output.weight.fill_(4.0)
        model.head.output.bias.fill_(-1.0)
    batch = padding_helpers.one_item_history_batch()
    top = 1 / (1 + math.exp(-0.75))  # softmax weight of slot 0 over slots 0 and 1
    read = 2.0 * top - 1.0 * (1 - top)
    expected = 4.0 / (1.0 + math.exp(-1.5 * read)) - 1
    assert expected == pytest.approx(2.3032895288)
    assert model(batch).item() == pytest.approx(2.3032895288, abs=1e-6)
