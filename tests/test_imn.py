"""IMN: shapes, padding, positions, decomposed attention, ablation switches, training, multi-hop reads."""

from __future__ import annotations

import copy

import numpy as np
import padding_helpers
import pytest
import torch
from torch import Tensor

from longrec.data.schema import SIDE_FEATURES, FeatureSpec
from longrec.data.tensors import TensorSampleSet, synthetic_sample_set
from longrec.models.imn import IMN, IMNConfig, MultiWayAttention, history_positions
from longrec.models.registry import build_model
from longrec.train.trainer import TrainConfig, evaluate_model, load_checkpoint, save_checkpoint, train_model

SPEC = FeatureSpec(
    n_users=20, n_items=41, n_genres=4, n_ages=3, n_genders=3, n_occupations=5, max_history_length=6
)
TINY = {"embedding_dim": 8, "attention_hidden": 8, "head_hidden": (8, 4), "side_embedding_dim": 4}


def tiny_batch(size: int = 4, seed: int = 0) -> dict[str, Tensor]:
    return padding_helpers.tiny_batch(SPEC, size, seed)


def pad_more(batch: dict[str, Tensor], extra: int, seed: int = 1) -> dict[str, Tensor]:
    return padding_helpers.pad_more(SPEC, batch, extra, seed)


def scramble_padding(batch: dict[str, Tensor], seed: int = 2) -> dict[str, Tensor]:
    """Replace items and time buckets at padded positions with random ids."""
    gen = torch.Generator().manual_seed(seed)
    mask = batch["history_mask"]
    items = torch.randint(1, SPEC.n_items, mask.shape, generator=gen)
    buckets = torch.randint(1, SPEC.n_time_buckets, mask.shape, generator=gen)
    return dict(
        batch,
        history_items=torch.where(mask, batch["history_items"], items),
        history_time_buckets=torch.where(mask, batch["history_time_buckets"], buckets),
    )


def make_imn(**overrides: object) -> IMN:
    torch.manual_seed(0)
    model = build_model("imn", SPEC, {**TINY, **overrides})
    assert isinstance(model, IMN)
    return model


ABLATIONS = [
    {},
    {"iterations": 1},
    {"iterations": 4},
    {"memory_enhancement": True},
    {"euclidean_terms": False},
    {"late_cross": True},
    {"weight_normalisation": "valid_length"},
    {"use_side_features": False, "use_positions": False, "use_time_buckets": False},
]


def test_forward_shape_and_finite() -> None:
    batch = tiny_batch(4)
    logits = make_imn()(batch)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()
    assert not batch["history_mask"].all(), "the fixture should contain padding"


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("training", [False, True])
def test_padding_never_changes_logits(overrides: dict, training: bool) -> None:
    model = make_imn(**overrides).train(training)
    batch = tiny_batch(6)
    state = copy.deepcopy(model.state_dict())  # train-mode Dice moves running stats on every call
    reference = model(batch)
    for variant in (pad_more(batch, 5), scramble_padding(batch), scramble_padding(pad_more(batch, 3))):
        model.load_state_dict(state)
        torch.testing.assert_close(model(variant), reference, atol=1e-6, rtol=1e-5)


def test_positions_count_from_newest_valid_event() -> None:
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True] * 4])
    expected = torch.tensor([[2, 1, 0, 0], [0, 0, 0, 0], [3, 2, 1, 0]])
    assert torch.equal(history_positions(mask), expected)


def test_attention_weights_are_zero_on_padding_and_in_unit_interval() -> None:
    model = make_imn()
    batch = tiny_batch(6)
    history = model.embed_history(batch)
    target = model.item_embedding(batch["target_item"])
    _, weights = model.read_memory(history, target, batch["history_mask"])
    assert len(weights) == model.config.iterations
    for w in weights:
        assert torch.all(w[~batch["history_mask"]] == 0)
        valid = w[batch["history_mask"]]
        assert torch.all((valid > 0) & (valid < 1))


@pytest.mark.parametrize("euclidean_terms", [True, False])
@pytest.mark.parametrize("use_target", [True, False])
def test_decomposed_attention_equals_explicit_features(euclidean_terms: bool, use_target: bool) -> None:
    torch.manual_seed(0)
    attention = MultiWayAttention(8, 16, euclidean_terms, use_target)
    history, memory, target = torch.randn(3, 5, 8), torch.randn(3, 8), torch.randn(3, 8)
    features = attention.explicit_features(history, memory, target)
    assert features.shape == (3, 5, 8 * len(attention.terms))
    hidden = torch.sigmoid(attention.input_layer(features))
    explicit = torch.sigmoid(attention.output_layer(hidden)).squeeze(-1)
    torch.testing.assert_close(attention(history, memory, target), explicit)


def test_term_layout_of_each_switch() -> None:
    assert MultiWayAttention.term_names(True, True) == ("e-m", "e-v", "e*m", "e*v")
    assert MultiWayAttention.term_names(False, True) == ("e*m", "e*v")
    assert MultiWayAttention.term_names(True, False) == ("e-m", "e*m")


@pytest.mark.parametrize(
    "switch",
    [{"iterations": 1}, {"iterations": 2}, {"iterations": 4}, {"weight_normalisation": "valid_length"}],
)
def test_switches_with_same_parameters_change_the_output(switch: dict) -> None:
    base, other = make_imn().eval(), make_imn(**switch).eval()
    other.load_state_dict(base.state_dict())  # same weights: only the computation differs
    batch = tiny_batch(4)
    assert not torch.allclose(base.user_interest(batch), other.user_interest(batch))
    assert not torch.equal(base(batch), other(batch))


def test_enhancement_switch_removes_exactly_the_enhancement_gru() -> None:
    full, plain = make_imn(memory_enhancement=True).eval(), make_imn(memory_enhancement=False).eval()
    missing, unexpected = plain.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(key.startswith("enhance_") for key in unexpected) and unexpected
    batch = tiny_batch(4)
    assert not torch.allclose(full.user_interest(batch), plain.user_interest(batch))
    target = full.item_embedding(batch["target_item"])
    memory, _ = full.read_memory(full.embed_history(batch), target, batch["history_mask"])
    torch.testing.assert_close(plain.enhance(memory, target), memory)


def test_hadamard_only_equals_full_model_with_euclidean_blocks_zeroed() -> None:
    full, hadamard = make_imn().eval(), make_imn(euclidean_terms=False).eval()
    state = full.state_dict()
    weight = state["attention.input_layer.weight"]  # blocks e−m, e−v, e⊙m, e⊙v
    d = full.config.embedding_dim
    hadamard_state = dict(state, **{"attention.input_layer.weight": weight[:, 2 * d :].clone()})
    hadamard.load_state_dict(hadamard_state)
    batch = tiny_batch(4)
    assert not torch.allclose(full.user_interest(batch), hadamard.user_interest(batch))
    with torch.no_grad():
        full.attention.input_layer.weight[:, : 2 * d] = 0.0
    torch.testing.assert_close(full.user_interest(batch), hadamard.user_interest(batch))
    torch.testing.assert_close(full(batch), hadamard(batch))


def test_late_cross_keeps_the_target_out_of_the_history_read() -> None:
    model = make_imn(late_cross=True).eval()
    assert model.attention.terms == ("e-m", "e*m")
    batch = tiny_batch(4)
    history = model.embed_history(batch)
    target = model.item_embedding(batch["target_item"])
    other_target = torch.randn_like(target)
    memory, _ = model.read_memory(history, target, batch["history_mask"])
    memory_other, _ = model.read_memory(history, other_target, batch["history_mask"])
    torch.testing.assert_close(memory, memory_other)  # the read never looks at v
    early = make_imn().eval()
    early_memory, _ = early.read_memory(history, target, batch["history_mask"])
    early_other, _ = early.read_memory(history, other_target, batch["history_mask"])
    assert not torch.allclose(early_memory, early_other)


def test_valid_length_normalisation_divides_the_pooled_sum() -> None:
    model = make_imn(iterations=1, weight_normalisation="valid_length").eval()
    batch = tiny_batch(4)
    history = model.embed_history(batch)
    target = model.item_embedding(batch["target_item"])
    mask = batch["history_mask"]
    weights = model.attention(history, target, target) * mask
    pooled = torch.bmm(weights.unsqueeze(1), history).squeeze(1) / mask.sum(1, keepdim=True)
    memory, _ = model.read_memory(history, target, mask)
    torch.testing.assert_close(memory, model.memory_cell(pooled, target))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="iterations"):
        IMNConfig(iterations=0)
    with pytest.raises(ValueError, match="weight_normalisation"):
        IMNConfig(weight_normalisation="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_activation"):
        IMNConfig(head_activation="relu")
    with pytest.raises(ValueError, match="learning_rate_scale"):
        IMNConfig(learning_rate_scale=0.0)


def test_learning_rate_scale_multiplies_the_trainer_lr() -> None:
    (optimizer,) = make_imn(learning_rate_scale=3.0).build_optimizers(1e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)
    (default,) = make_imn().build_optimizers(1e-3)
    assert default.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_runs_without_side_features() -> None:
    model = make_imn(use_side_features=False)
    assert not any(name.startswith("side.") for name, _ in model.named_parameters())
    batch = {key: value for key, value in tiny_batch(3).items() if key not in SIDE_FEATURES}
    assert model(batch).shape == (3,)


def test_gradients_reach_every_parameter() -> None:
    model = make_imn(head_activation="prelu").train()
    batch = tiny_batch(8)
    logits = model(batch)
    model.loss(batch, logits).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_one_epoch_lowers_the_loss() -> None:
    spec = FeatureSpec(
        n_users=30, n_items=61, n_genres=4, n_ages=3, n_genders=3, n_occupations=5, max_history_length=8
    )
    train = synthetic_sample_set(spec, 1024, seed=0, n_clusters=4)
    model = build_model("imn", spec, TINY)
    before = torch.nn.functional.binary_cross_entropy_with_logits(
        model.eval()(train.tensors), train["label"]
    ).item()
    result = train_model(model, train, None, TrainConfig(epochs=1, batch_size=64, lr=5e-3, progress=False))
    after = result.history[0]["train_loss"]
    final = torch.nn.functional.binary_cross_entropy_with_logits(model.eval()(train.tensors), train["label"])
    assert after < before and final.item() < before


def test_checkpoint_round_trip(tmp_path) -> None:
    model = make_imn(iterations=2, euclidean_terms=False).eval()
    path = save_checkpoint(tmp_path / "imn.pt", model)
    loaded, meta = load_checkpoint(path)
    assert meta["model_name"] == "imn" and loaded.config.iterations == 2
    batch = tiny_batch(4)
    torch.testing.assert_close(loaded(batch), model(batch))


def chain_samples(n: int, seed: int, bridges_per_target: int = 10, length: int = 8) -> TensorSampleSet:
    """The rum–lime–mint task: items relevant to the target only through another history item.

    Two targets ("mint"), each with its own bridges ("lime"); every bridge has one partner key ("rum").
    A history holds one bridge of the target and keys; the label is 1 iff the bridge's partner key is
    among them. Negatives always hold a key of a *different* bridge of the same target, so one read
    guided by the target alone cannot tell them apart: it must first find the bridge, then its partner.
    """
    rng = np.random.default_rng(seed)
    n_targets = 2
    n_bridges = n_targets * bridges_per_target
    bridge_ids = 1 + n_targets + np.arange(n_bridges)
    key_ids = bridge_ids + n_bridges  # key of bridge i
    target = rng.integers(0, n_targets, n)
    bridge = target * bridges_per_target + rng.integers(0, bridges_per_target, n)
    label = rng.integers(0, 2, n)
    history = np.zeros((n, length), dtype=np.int64)
    for row in range(n):
        others = np.setdiff1d(np.arange(n_bridges), [bridge[row]])
        siblings = np.setdiff1d(
            target[row] * bridges_per_target + np.arange(bridges_per_target), [bridge[row]]
        )
        keys = list(rng.choice(others, length - 2, replace=False))
        if not np.isin(keys, siblings).any():
            keys[0] = rng.choice(siblings)
        last = bridge[row] if label[row] else rng.choice(np.setdiff1d(others, keys))
        history[row] = rng.permutation([bridge_ids[bridge[row]], *key_ids[keys], key_ids[last]])
    zeros = np.zeros(n, dtype=np.int64)
    arrays = {
        "user_id": rng.integers(1, 10, n),
        "target_item": 1 + target,
        "label": label.astype(np.float32),
        "history_items": history,
        "history_time_buckets": np.ones((n, length), dtype=np.int64),
        "history_mask": np.ones((n, length), dtype=bool),
        **{column: zeros for column in SIDE_FEATURES},
    }
    return TensorSampleSet.from_arrays(arrays)


def test_multi_hop_relevance_is_learned_better_with_three_reads() -> None:
    bridges_per_target, length = 10, 8
    spec = FeatureSpec(n_users=10, n_items=3 + 4 * bridges_per_target, max_history_length=length)
    train, test = (
        chain_samples(6000, 0, bridges_per_target, length),
        chain_samples(2000, 1, bridges_per_target, length),
    )
    # Only the memory reads differ: no time, position or side features, no enhancement GRU.
    base = {
        "embedding_dim": 8,
        "attention_hidden": 16,
        "head_hidden": (32, 16),
        "head_activation": "prelu",
        "memory_enhancement": False,
        "use_side_features": False,
        "use_time_buckets": False,
        "use_positions": False,
        "embedding_init_std": 0.3,
    }
    aucs = {}
    for iterations in (1, 3):
        model = build_model("imn", spec, {**base, "iterations": iterations})
        train_model(
            model, train, None, TrainConfig(epochs=20, batch_size=128, lr=1e-2, seed=1, progress=False)
        )
        aucs[iterations] = evaluate_model(model, test)["auc"]
    assert aucs[3] > aucs[1] + 0.01, aucs


def test_golden_value_one_item_history() -> None:
    """d = 1, N = 1 read, no enhancement, sigmoid units, hand-set weights; history e = 1, target v = 0.5.

    Attention: m⁰ = v = 0.5; features [e − m, e − v, e·m, e·v] = [0.5, 0.5, 0.5, 0.5]; hidden
    σ(1·0.5 − 0.5) = 0.5; weight a = σ(2·0.5 − 1) = 0.5; pooled c = a·e = 0.5.
    GRU (only W_in = 2): r = z = σ(0) = 0.5, n = tanh(2·0.5) = tanh 1 = 0.7615941560,
    m¹ = (1 − z)·n + z·m⁰ = 0.5·0.7615941560 + 0.25 = 0.6307970780.
    Head on [m¹, v, m¹·v]: h = σ(m¹) = 0.6526701752, logit = 4·h − 1 = 1.6106807009.
    """
    spec = FeatureSpec(n_users=2, n_items=3, max_history_length=3)
    config = IMNConfig(
        embedding_dim=1,
        iterations=1,
        attention_hidden=1,
        memory_enhancement=False,
        use_time_buckets=False,
        use_positions=False,
        head_hidden=(1,),
        head_activation="sigmoid",
        use_side_features=False,
    )
    model = IMN(spec, config).eval()
    with torch.no_grad():
        model.item_embedding.weight.copy_(torch.tensor([[0.0], [1.0], [0.5]]))
        model.attention.input_layer.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        model.attention.input_layer.bias.fill_(-0.5)
        model.attention.output_layer.weight.fill_(2.0)
        model.attention.output_layer.bias.fill_(-1.0)
        for parameter in model.memory_cell.parameters():
            parameter.zero_()
        model.memory_cell.weight_ih[2, 0] = 2.0  # gates in (r, z, n) order
        model.head.linears[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        model.head.linears[0].bias.zero_()
        model.head.output.weight.fill_(4.0)
        model.head.output.bias.fill_(-1.0)
    batch = padding_helpers.one_item_history_batch()
    assert model(batch).item() == pytest.approx(1.6106807009, abs=1e-6)


@pytest.mark.parametrize("overrides", ABLATIONS)
@pytest.mark.parametrize("fused", [False, True])
@torch.no_grad()
def test_serving_split_equals_forward_for_every_switch(overrides: dict, fused: bool) -> None:
    """Serving's split (one user's history read against C candidates, ``read_shared_history``), on the
    torch path and through the fused CPU kernel, gives ``forward``'s logits for every ablation switch."""
    model = make_imn(**overrides).eval()
    if fused:
        assert model.attention.enable_fused_cpu_scoring()
    user = {key: value[:1] for key, value in tiny_batch(1, seed=4).items()}
    candidates = torch.tensor([3, 7, 11, 19, 40])
    count = len(candidates)
    rows = {key: value.expand(count, *value.shape[1:]) for key, value in user.items()}
    rows["target_item"] = candidates
    rows["target_genre"] = candidates % SPEC.n_genres
    expected = model(rows)
    candidate_batch = {key: rows[key] for key in ("target_item", *SIDE_FEATURES)}
    got = model.score_candidates(model.encode_user(user), candidate_batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
