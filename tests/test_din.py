"""DIN: shapes, padding invariance, golden values, Dice, smoke training, checkpoints, registry."""

from __future__ import annotations

import copy
import math

import numpy as np
import padding_helpers
import pytest
import torch
from torch import Tensor

from longrec.data.schema import SIDE_FEATURES, FeatureSpec
from longrec.data.tensors import synthetic_sample_set
from longrec.models.base import MLP, Dice, _DiceBatchStats
from longrec.models.din import DIN, DINConfig
from longrec.models.registry import available_models, build_model, model_config_from_dict
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
TINY = {"embedding_dim": 8, "attention_hidden": (8, 4), "head_hidden": (8, 4), "side_embedding_dim": 4}


def tiny_batch(size: int = 4, seed: int = 0) -> dict[str, Tensor]:
    return padding_helpers.tiny_batch(SPEC, size, seed)


def pad_more(batch: dict[str, Tensor], extra: int, seed: int = 1) -> dict[str, Tensor]:
    return padding_helpers.pad_more(SPEC, batch, extra, seed)


def scramble_padding(batch: dict[str, Tensor], seed: int = 2) -> dict[str, Tensor]:
    """Replace items and time buckets at padded positions with random ids."""
    gen = torch.Generator().manual_seed(seed)
    scrambled = dict(batch)
    mask = batch["history_mask"]
    random_items = torch.randint(1, SPEC.n_items, mask.shape, generator=gen)
    random_buckets = torch.randint(1, SPEC.n_time_buckets, mask.shape, generator=gen)
    scrambled["history_items"] = torch.where(mask, batch["history_items"], random_items)
    scrambled["history_time_buckets"] = torch.where(mask, batch["history_time_buckets"], random_buckets)
    return scrambled


def make_din(**overrides: object) -> DIN:
    torch.manual_seed(0)
    model = build_model("din", SPEC, {**TINY, **overrides})
    assert isinstance(model, DIN)
    return model


def test_forward_shape_and_finite() -> None:
    batch = tiny_batch(4)
    logits = make_din()(batch)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()
    assert not batch["history_mask"].all(), "the fixture should contain padding"


@pytest.mark.parametrize("activation", ["dice", "prelu", "sigmoid"])
@pytest.mark.parametrize("softmax_attention", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_padding_never_changes_logits(activation: str, softmax_attention: bool, training: bool) -> None:
    model = make_din(activation=activation, softmax_attention=softmax_attention, use_time_buckets=True)
    model.train(training)
    batch = tiny_batch(6)
    # Train-mode Dice updates running stats on every call; run each variant from the same state.
    state = copy.deepcopy(model.state_dict())
    reference = model(batch)
    for variant in (pad_more(batch, 5), scramble_padding(batch), scramble_padding(pad_more(batch, 3))):
        model.load_state_dict(state)
        torch.testing.assert_close(model(variant), reference, atol=1e-6, rtol=1e-5)


def test_training_mode_dice_stats_ignore_padding() -> None:
    model = make_din(activation="dice")
    model.train()
    batch = tiny_batch(6)
    model(batch)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model2 = make_din(activation="dice")
    model2.train()
    model2(scramble_padding(pad_more(batch, 4)))
    for key, value in model2.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(value, stats[key], atol=1e-6, rtol=1e-5)


def test_softmax_switch_changes_output() -> None:
    plain = make_din()
    softmax = make_din(softmax_attention=True)
    softmax.load_state_dict(plain.state_dict())  # identical weights, only the switch differs
    plain.eval()
    softmax.eval()
    batch = tiny_batch(4)
    assert not torch.allclose(plain(batch), softmax(batch))
    weights = softmax.attention_weights(
        softmax.item_embedding(batch["history_items"]),
        softmax.item_embedding(batch["target_item"]),
        batch["history_mask"],
    )
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


def test_runs_without_side_features() -> None:
    model = make_din(use_side_features=False)
    assert not any(name.startswith("side.") for name, _ in model.named_parameters())
    batch = {key: value for key, value in tiny_batch(3).items() if key not in SIDE_FEATURES}
    assert model(batch).shape == (3,)


def test_side_features_change_logits() -> None:
    model = make_din().eval()
    batch = tiny_batch(3)
    other = dict(batch, user_age=(batch["user_age"] + 1) % SPEC.n_ages)
    assert not torch.allclose(model(batch), model(other))


def test_activation_unit_equals_explicit_concat_mlp() -> None:
    model = make_din(activation="prelu")
    unit = model.attention
    batch = tiny_batch(4)
    history = model.item_embedding(batch["history_items"])
    target = model.item_embedding(batch["target_item"])
    v = target.unsqueeze(1).expand_as(history)
    features = torch.cat([history, v, history - v, history * v], dim=-1)
    hidden = unit.input_activation(unit.input_layer(features))
    explicit = unit.rest(hidden).squeeze(-1)
    torch.testing.assert_close(unit(history, target, batch["history_mask"]), explicit)


def _set_linear(layer: torch.nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


@pytest.mark.parametrize("softmax_attention", [False, True])
def test_golden_value_one_item_history(softmax_attention: bool) -> None:
    """d = 2, one history item e = [1, 2], target v = [0.5, -1], sigmoid units, hand-set weights.

    Attention: h = σ(e_0 − 1) = σ(0) = 0.5, w = 2·h = 1 (softmax over one item is 1 as well), so u = e.
    Head: s = Σ(u ⊙ v) = 0.5 − 2 = −1.5, h = σ(−1.5) = 0.1824255238, logit = 4·h − 1 = −0.2702979047.
    """
    spec = FeatureSpec(n_users=2, n_items=3, max_history_length=3)
    config = DINConfig(
        embedding_dim=2,
        attention_hidden=(1,),
        head_hidden=(1,),
        activation="sigmoid",
        use_side_features=False,
        softmax_attention=softmax_attention,
    )
    model = DIN(spec, config).eval()
    with torch.no_grad():
        model.item_embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, -1.0]]))
    _set_linear(model.attention.input_layer, [[1, 0, 0, 0, 0, 0, 0, 0]], [-1.0])
    _set_linear(model.attention.rest.output, [[2.0]], [0.0])
    _set_linear(model.head.linears[0], [[0, 0, 0, 0, 1, 1]], [0.0])
    _set_linear(model.head.output, [[4.0]], [-1.0])
    batch = padding_helpers.one_item_history_batch()
    expected = 4.0 / (1.0 + math.exp(1.5)) - 1.0
    assert expected == pytest.approx(-0.2702979047)
    assert model(batch).item() == pytest.approx(expected, abs=1e-6)


def _dice_reference(x: Tensor, weight: Tensor, alpha: Tensor, eps: float) -> Tensor:
    """Dice written as the spec formula, differentiated by autograd."""
    count = weight.sum()
    mean = (x * weight[:, None]).sum(0) / count
    var = ((x - mean) ** 2 * weight[:, None]).sum(0) / count
    p = torch.sigmoid((x - mean) / torch.sqrt(var + eps))
    return p * x + (1 - p) * alpha * x


def test_dice_batch_stats_gradients_match_autograd() -> None:
    torch.manual_seed(0)
    x = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(13) > 0.3).to(torch.float64)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def fused(x: Tensor, alpha: Tensor) -> Tensor:
        return _DiceBatchStats.apply(x, weight, alpha, 1e-8)[0]

    assert torch.autograd.gradcheck(fused, (x, alpha))
    grad_out = torch.randn(13, 5, dtype=torch.float64)
    expected = torch.autograd.grad(_dice_reference(x, weight, alpha, 1e-8), (x, alpha), grad_out)
    actual = torch.autograd.grad(fused(x, alpha), (x, alpha), grad_out)
    torch.testing.assert_close(fused(x, alpha), _dice_reference(x, weight, alpha, 1e-8))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_dice_eval_uses_running_stats() -> None:
    dice = Dice(3, momentum=1.0)  # momentum 1: running stats become the last batch's stats
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [100.0, 100.0, 100.0]])
    mask = torch.tensor([True, True, False])
    dice.train()
    train_out = dice(x, mask)
    torch.testing.assert_close(dice.running_mean, torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(dice.running_var, torch.tensor([2.0, 0.0, 2.0]))  # unbiased over 2 rows
    # Training used the biased variance of the two valid rows (1, 0, 1) and ignored the 100s.
    p_train = torch.sigmoid((x[:2] - 2.0) / torch.sqrt(torch.tensor([1.0, 0.0, 1.0]) + 1e-8))
    torch.testing.assert_close(train_out[:2], p_train * x[:2])  # α = 0 at init
    dice.eval()
    with torch.no_grad():
        dice.alpha.fill_(0.25)
    p_eval = torch.sigmoid((x - 2.0) / torch.sqrt(torch.tensor([2.0, 0.0, 2.0]) + 1e-8))
    torch.testing.assert_close(dice(x), p_eval * x + (1 - p_eval) * 0.25 * x)


def test_mlp_passes_mask_to_dice() -> None:
    torch.manual_seed(0)
    mlp = MLP(4, (6,), "dice", output_dim=1).train()
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    noisy = torch.where(mask[..., None], x, torch.randn(2, 5, 4) * 50)
    out, out_noisy = mlp(x, mask), mlp(noisy, mask)
    torch.testing.assert_close(out[mask], out_noisy[mask])


def test_l2_embedding_penalises_only_rows_in_batch() -> None:
    model = make_din(l2_embedding=0.1)
    batch = tiny_batch(4)
    logits = model(batch)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    loss = model.loss(batch, logits)
    assert loss.item() > plain.item()
    model.zero_grad()
    model.embedding_l2(batch).backward()
    seen = torch.cat([batch["target_item"], batch["history_items"][batch["history_mask"]]]).unique()
    touched = model.item_embedding.weight.grad.abs().sum(-1).nonzero().squeeze(-1)
    assert set(touched.tolist()) == set(seen.tolist()) - {0}


def test_one_epoch_smoke_training_learns() -> None:
    """Label = whether the target shares the history's cluster; one epoch must cut loss and beat AUC 0.5."""
    train = synthetic_sample_set(SPEC, 1024, seed=0, n_clusters=4)
    valid = synthetic_sample_set(SPEC, 256, seed=100, n_clusters=4)
    set_seed(0)
    # A wide init and a high lr so 64 steps suffice; the defaults are tuned for real data sizes.
    model = build_model("din", SPEC, {**TINY, "embedding_init_std": 0.5})
    before = evaluate_model(model, train)
    result = train_model(model, train, valid, TrainConfig(epochs=1, batch_size=16, lr=3e-2, progress=False))
    after = evaluate_model(model, train)
    assert after["logloss"] < before["logloss"] - 0.05
    assert result.history[0]["valid"]["auc"] > 0.6


def test_checkpoint_roundtrip_weights_only(tmp_path) -> None:
    model = make_din(use_time_buckets=True)
    model.train()
    model(tiny_batch(8))  # move Dice running stats away from their initial values
    model.eval()
    batch = tiny_batch(4, seed=3)
    path = save_checkpoint(tmp_path / "din.pt", model, "din", model.config, SPEC, extra={"note": "test"})
    payload = torch.load(path, weights_only=True)  # must be loadable without unpickling code
    assert payload["model_name"] == "din"
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, DIN) and not loaded.training
    assert meta["spec"] == SPEC and meta["extra"] == {"note": "test"}
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


def test_registry_errors_and_config_parsing() -> None:
    assert "din" in available_models()
    with pytest.raises(ValueError, match=r"unknown model 'x'; choose from din"):
        build_model("x", SPEC)
    with pytest.raises(ValueError, match="unknown din config keys"):
        build_model("din", SPEC, {"embeding_dim": 8})
    with pytest.raises(ValueError, match="unknown activation"):
        build_model("din", SPEC, {"activation": "relu6"})
    config = model_config_from_dict("din", {"attention_hidden": [4, 2]})
    assert config.attention_hidden == (4, 2)


def test_embedding_padding_row_stays_zero() -> None:
    model = make_din()
    assert np.allclose(model.item_embedding.weight[0].detach().numpy(), 0.0)


def test_checkpoints_from_before_the_backbone_module_still_load() -> None:
    """Registered models saved when DIN's parameters had no `backbone.` prefix load unchanged."""
    spec = FeatureSpec(n_users=5, n_items=7, max_history_length=4)
    model = DIN(spec, DINConfig(embedding_dim=4, attention_hidden=(4,), head_hidden=(4,)))
    old_layout = {key.removeprefix("backbone."): value for key, value in model.state_dict().items()}
    assert "item_embedding.weight" in old_layout and "head.output.weight" in old_layout
    again = DIN(spec, DINConfig(embedding_dim=4, attention_hidden=(4,), head_hidden=(4,)))
    again.load_state_dict(old_layout)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in model.state_dict().items())
