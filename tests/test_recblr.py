"""RecBLR: padding invariance, causal conv, decay init, CTR and next-item training smoke tests."""

import math

import pytest
import torch

from longrec.data.schema import FeatureSpec
from longrec.data.tensors import synthetic_sample_set
from longrec.models.recblr import (
    BDLRULayer,
    RecBLR,
    RecBLRConfig,
    RecBLRNextItem,
    RecBLRNextItemConfig,
    decay_parameter_init,
)
from longrec.models.registry import build_model
from longrec.train.trainer import TrainConfig, evaluate_model, set_seed, train_model

SPEC = FeatureSpec(
    n_users=20, n_items=40, n_genres=4, n_ages=3, n_genders=3, n_occupations=5, max_history_length=6
)
SMALL = {"embedding_dim": 8, "head_hidden": (16, 8), "side_embedding_dim": 4}


def _pad(batch, extra):
    """The same samples with ``extra`` more padded positions appended (right padding)."""
    padded = dict(batch)
    for key in ("history_items", "history_time_buckets"):
        padded[key] = torch.cat([batch[key], batch[key].new_zeros(batch[key].shape[0], extra)], dim=1)
    padded["history_mask"] = torch.cat(
        [batch["history_mask"], torch.zeros(batch["history_mask"].shape[0], extra, dtype=torch.bool)], dim=1
    )
    return padded


def _garbage_in_padding(batch):
    """Padded positions filled with real item ids: a leaky model would change its output."""
    garbage = dict(batch)
    garbage["history_items"] = torch.where(
        batch["history_mask"], batch["history_items"], torch.full_like(batch["history_items"], 7)
    )
    return garbage


@pytest.mark.parametrize("training", (False, True))
@pytest.mark.parametrize("time_buckets", (False, True))
def test_ctr_padding_invariance(training, time_buckets):
    torch.manual_seed(0)
    model = RecBLR(
        SPEC, RecBLRConfig(**SMALL, dropout=0.0, use_time_buckets=time_buckets, activation="prelu")
    )
    model.train(training)
    batch = next(synthetic_sample_set(SPEC, 4, seed=1).batches(4))
    base = model(batch)
    torch.testing.assert_close(model(_pad(batch, 5)), base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(_garbage_in_padding(batch)), base, rtol=1e-5, atol=1e-6)


def test_official_leaky_reading_does_depend_on_padding_contents():
    torch.manual_seed(0)
    layer = BDLRULayer(4, mask_padding=False, dropout=0.0)
    x = torch.randn(6, 2, 4)
    mask = torch.tensor([[True, True]] * 3 + [[False, False]] * 3)
    left_padded = torch.cat([torch.randn(3, 2, 4), x[:3]])  # padding first, as the official code pads
    left_mask = mask.flip(0)
    masked = BDLRULayer(4, mask_padding=True, dropout=0.0)
    masked.load_state_dict(layer.state_dict())
    ours = masked(left_padded, left_mask)[-1]
    torch.testing.assert_close(ours, masked(x[:3], mask[:3])[-1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(layer(left_padded, left_mask)[-1], layer(x[:3], mask[:3])[-1], atol=1e-4)


def test_causal_conv_never_sees_the_future():
    torch.manual_seed(0)
    layer = BDLRULayer(4, dropout=0.0)
    x = torch.randn(9, 2, layer.inner)
    changed = x.clone()
    changed[5:] = torch.randn(4, 2, layer.inner)
    out, out_changed = layer.causal_conv(x), layer.causal_conv(changed)
    torch.testing.assert_close(out[:5], out_changed[:5])
    assert not torch.allclose(out[5], out_changed[5])
    # Each output depends on exactly the K = 4 most recent inputs.
    earlier = x.clone()
    earlier[0] = 100.0
    torch.testing.assert_close(layer.causal_conv(earlier)[4:], out[4:])


def test_whole_layer_is_causal():
    torch.manual_seed(0)
    layer = BDLRULayer(4, dropout=0.0).eval()
    x = torch.randn(8, 3, 4)
    mask = torch.ones(8, 3, dtype=torch.bool)
    changed = x.clone()
    changed[6:] += 1.0
    torch.testing.assert_close(layer(x, mask)[:6], layer(changed, mask)[:6])


def test_decay_init_spans_the_paper_range():
    decay = torch.exp(-torch.nn.functional.softplus(decay_parameter_init(128)))
    assert decay.min().item() == pytest.approx(0.9, abs=1e-5)
    assert decay.max().item() == pytest.approx(0.999, abs=1e-5)
    assert torch.all(decay[1:] >= decay[:-1])
    layer = BDLRULayer(64)
    a = layer.decay(torch.ones(128))
    assert 0.9 - 1e-5 <= a.min().item() and a.max().item() <= 0.999 + 1e-5
    with pytest.raises(ValueError):
        decay_parameter_init(8, 0.5, 1.0)


def test_registry_and_config_validation():
    model = build_model("recblr", SPEC, {"embedding_dim": 8, "head_hidden": [16]})
    assert isinstance(model, RecBLR) and model.config.head_hidden == (16,)
    with pytest.raises(ValueError):
        RecBLRConfig(scan_backend="cuda-magic")
    batch = next(synthetic_sample_set(SPEC, 3, seed=2).batches(3))
    assert model.user_state(batch).shape == (3, 8)
    no_side = RecBLR(SPEC, RecBLRConfig(**SMALL, use_side_features=False))
    assert no_side(batch).shape == (3,)


def test_ctr_one_epoch_loss_decreases():
    """Label = whether the target shares the history's cluster; one epoch must cut the loss."""
    spec = FeatureSpec(n_users=50, n_items=64, max_history_length=8)
    train = synthetic_sample_set(spec, 2048, seed=0, n_clusters=4)
    valid = synthetic_sample_set(spec, 256, seed=100, n_clusters=4)
    set_seed(0)
    # A wide init and a high lr so 128 steps suffice; the defaults are tuned for real data sizes.
    config = RecBLRConfig(
        embedding_dim=16, head_hidden=(16, 8), use_side_features=False, embedding_init_std=0.5
    )
    model = RecBLR(spec, config)
    before = evaluate_model(model, train)
    result = train_model(model, train, valid, TrainConfig(epochs=1, batch_size=16, lr=1e-2, progress=False))
    after = evaluate_model(model, train)
    assert after["logloss"] < before["logloss"] - 0.05
    assert result.history[0]["valid"]["auc"] > 0.6


def _next_item_batch(n_items=30, batch=16, length=10, seed=0):
    # A learnable rule: the next item is the current one + 1 (mod n_items − 1, skipping 0).
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(1, n_items, (batch, 1), generator=generator)
    sequence = (start + torch.arange(length + 1)) % (n_items - 1) + 1
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    valid = torch.arange(length)[None] < lengths[:, None]
    items = torch.where(valid, sequence[:, :-1], 0)
    targets = torch.where(valid, sequence[:, 1:], 0)
    return items, targets


def test_next_item_padding_invariance_and_state():
    torch.manual_seed(0)
    model = RecBLRNextItem(30, 16, RecBLRNextItemConfig(embedding_dim=8, dropout=0.0))
    items, _ = _next_item_batch()
    mask = items > 0
    state = model.user_state(items, mask)
    padded = torch.cat([items, torch.zeros(items.shape[0], 6, dtype=torch.long)], 1)
    torch.testing.assert_close(model.user_state(padded, padded > 0), state, rtol=1e-5, atol=1e-6)
    assert model.score_all(state).shape == (items.shape[0], 30)


@pytest.mark.parametrize("name", ("recblr", "sasrec"))
def test_next_item_one_epoch_loss_decreases(name):
    from longrec.models.registry import build_sequential_model

    torch.manual_seed(0)
    model = build_sequential_model(name, 30, 10, {"embedding_dim": 16, "dropout": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        items, targets = _next_item_batch(seed=step)
        loss = model.next_item_loss(items, items > 0, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(29), rel=0.2)  # ≈ uniform over the real items at init
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_checkpoint_roundtrip(tmp_path):
    from longrec.train.trainer import load_checkpoint, save_checkpoint

    model = build_model("recblr", SPEC, SMALL).eval()
    batch = next(synthetic_sample_set(SPEC, 4, seed=3).batches(4))
    path = save_checkpoint(tmp_path / "recblr.pt", model)
    loaded, meta = load_checkpoint(path)
    assert meta["model_name"] == "recblr"
    torch.testing.assert_close(loaded(batch), model(batch))


@pytest.mark.parametrize("backend", ["reference", "cpu", "torch"])
def test_golden_value_of_the_recurrence(backend: str) -> None:
    """One BD-LRU block, d = E = 1, conv kernel 2 passing x_t through, hand-set weights; inputs 1, 2.

    Branch x' = SiLU(x): 0.7310585786, 1.7615941560. Gates r = i = σ(0) = 0.5; softplus(Λ) = ln 4 (Λ = ln 3),
    so a = exp(−ln 4 · 0.5) = 0.5 and b = √(1 − a² + 1e-8) · i = 0.4330127048.
    h₁ = b·x'₁ = 0.3165576525; h₂ = a·h₁ + b·x'₂ = 0.9210714764.
    Output-projection input SiLU(z)·h with z = x: 0.2314221875, 1.6225541301.
    """
    from longrec.kernels.scan import cpu_kernel_available
    from longrec.models.recblr import BDLRULayer

    if backend == "cpu" and not cpu_kernel_available():
        pytest.skip("the C++ scan kernel could not be built here")
    layer = BDLRULayer(1, expansion=1, conv_kernel=2, dropout=0.0, scan_backend=backend).eval()
    with torch.no_grad():
        layer.in_proj.weight.copy_(torch.tensor([[1.0], [1.0]]))  # branch = gate = x
        layer.conv_weight.copy_(torch.tensor([[0.0, 1.0]]))  # y_t = 0·x_{t−1} + 1·x_t
        layer.conv_bias.zero_()
        layer.gates.weight.zero_()
        layer.gates.bias.zero_()
        layer.decay_logit.fill_(math.log(3.0))
        layer.out_proj.weight.fill_(1.0)
    seen = []
    layer.out_proj.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    layer(torch.tensor([[[1.0]], [[2.0]]]), torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(
        seen[0].flatten(), torch.tensor([0.2314221875, 1.6225541301]), atol=1e-6, rtol=0
    )


OFFICIAL = {"decay_init": "official", "init": "official", "layer_norm_eps": 1e-12}


def test_official_decay_init_is_long_memory_heavy():
    """The official code spaces Λ evenly, not the decays: same range, far more slow channels."""
    uniform = torch.exp(-torch.nn.functional.softplus(decay_parameter_init(128)))
    official = torch.exp(-torch.nn.functional.softplus(decay_parameter_init(128, spacing="official")))
    assert official.min().item() == pytest.approx(0.9, abs=1e-5)
    assert official.max().item() == pytest.approx(0.999, abs=1e-5)
    assert torch.all(official[1:] >= official[:-1])
    assert (official > 0.99).float().mean() > 0.45 and (uniform > 0.99).float().mean() < 0.15
    with pytest.raises(ValueError, match="decay init"):
        decay_parameter_init(8, spacing="log")


def test_official_init_and_validation():
    torch.manual_seed(0)
    model = RecBLRNextItem(500, 16, RecBLRNextItemConfig(embedding_dim=64, **OFFICIAL))
    layer = model.encoder.layers[0]
    for linear in (layer.in_proj, layer.gates, layer.out_proj, layer.ffn[0], layer.ffn[3]):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert linear.bias is None or torch.all(linear.bias == 0)
    assert 0 < layer.conv_bias.abs().max().item() <= 0.5  # PyTorch's Conv1d bias init, ±1/√K
    assert layer.norm.eps == 1e-12 and model.encoder.embedding_norm.eps == 1e-12
    default = RecBLRNextItem(500, 16, RecBLRNextItemConfig(embedding_dim=64)).encoder.layers[0]
    assert default.in_proj.weight.std().item() > 0.05 and torch.all(default.conv_bias == 0)
    for bad in ({"init": "xavier"}, {"decay_init": "log"}, {"layer_norm_eps": 0.0}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            RecBLRNextItemConfig(**bad)


def test_official_settings_keep_padding_invariance_and_gradients():
    torch.manual_seed(0)
    model = RecBLRNextItem(30, 16, RecBLRNextItemConfig(embedding_dim=8, dropout=0.0, **OFFICIAL))
    items, targets = _next_item_batch()
    mask = items > 0
    state = model.user_state(items, mask)
    padded = torch.cat([items, torch.zeros(items.shape[0], 6, dtype=torch.long)], 1)
    torch.testing.assert_close(model.user_state(padded, padded > 0), state, rtol=1e-5, atol=1e-6)
    model.next_item_loss(items, mask, targets).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    ctr = RecBLR(SPEC, RecBLRConfig(**SMALL, **OFFICIAL)).eval()
    batch = next(synthetic_sample_set(SPEC, 4, seed=1).batches(4))
    torch.testing.assert_close(ctr(_pad(batch, 5)), ctr(batch), rtol=1e-5, atol=1e-6)


def test_pow2_left_pad_is_the_official_zero_prefix():
    """pow2_left_pad = running the layer on zeros-then-sequence (the official code's power-of-two pad) and
    dropping the prefix: the conv bias's silu enters the state, so outputs differ from the unpadded ones."""
    torch.manual_seed(0)
    official = BDLRULayer(4, dropout=0.0, pow2_left_pad=True, mask_padding=False).eval()
    plain = BDLRULayer(4, dropout=0.0, mask_padding=False).eval()
    plain.load_state_dict(official.state_dict())
    with torch.no_grad():
        official.conv_bias.uniform_(-0.5, 0.5)
        plain.conv_bias.copy_(official.conv_bias)
    x = torch.randn(6, 2, 4)  # L = 6: two zero steps up to 8
    mask = torch.ones(6, 2, dtype=torch.bool)
    prefixed = torch.cat([torch.zeros(2, 2, 4), x])  # in_proj has no bias: zero rows give a zero branch
    expected = plain(prefixed, torch.ones(8, 2, dtype=torch.bool))[2:]
    torch.testing.assert_close(official(x, mask), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(official(x, mask), plain(x, mask), atol=1e-4)
    power = torch.randn(8, 2, 4)  # already a power of two: nothing added
    torch.testing.assert_close(
        official(power, torch.ones(8, 2, dtype=torch.bool)), plain(power, torch.ones(8, 2, dtype=torch.bool))
    )


@pytest.mark.parametrize("model_name", ["recblr", "sasrec"])
def test_padding_in_softmax_is_the_official_loss_over_every_item_row(model_name):
    """RecBole's cross-entropy runs over the whole item table, padding row included; ours leaves row 0 out."""
    from longrec.models.registry import build_sequential_model

    items, targets = _next_item_batch()
    mask = items > 0
    losses = {}
    for official in (False, True):
        torch.manual_seed(0)
        model = build_sequential_model(model_name, 30, 16, {"dropout": 0.0, "padding_in_softmax": official})
        hidden = model.encode(items, mask)[targets > 0]
        logits = model.score_all(hidden)
        expected = torch.nn.functional.cross_entropy(
            logits if official else logits[:, 1:], targets[targets > 0] - (0 if official else 1)
        )
        losses[official] = model.next_item_loss(items, mask, targets)
        torch.testing.assert_close(losses[official], expected)
    assert losses[True] > losses[False]  # the padding row only ever takes probability mass
