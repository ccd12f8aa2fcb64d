"""Trainer: early stopping, best-weight restore, determinism, checkpoints; tensors and time buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longrec.train.trainer as trainer
from longrec.data.schema import BATCH_KEYS, FeatureSpec
from longrec.data.tensors import TensorSampleSet, synthetic_sample_set, time_buckets
from longrec.models.registry import build_model
from longrec.train.trainer import TrainConfig, evaluate_model, load_checkpoint, predict, set_seed, train_model

SPEC = FeatureSpec(
    n_users=20, n_items=41, n_genres=4, n_ages=3, n_genders=3, n_occupations=5, max_history_length=6
)
TINY = {"embedding_dim": 4, "attention_hidden": (4,), "head_hidden": (8,), "side_embedding_dim": 2}


def tiny_model(seed: int = 0):
    set_seed(seed)
    return build_model("din", SPEC, TINY)


@pytest.fixture(scope="module")
def data() -> tuple[TensorSampleSet, TensorSampleSet]:
    return synthetic_sample_set(SPEC, 64, seed=0), synthetic_sample_set(SPEC, 32, seed=1)


def scripted_validation(monkeypatch: pytest.MonkeyPatch, aucs: list[float]) -> list[dict[str, torch.Tensor]]:
    """Make the trainer see ``aucs`` as validation AUCs, one per epoch; returns the weights at each epoch."""
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(model, samples, batch_size=4096):
        snapshots.append({key: value.clone() for key, value in model.state_dict().items()})
        return {"auc": aucs[len(snapshots) - 1], "gauc": 0.5, "logloss": 0.7, "n_samples": len(samples)}

    monkeypatch.setattr(trainer, "evaluate_model", fake_evaluate)
    return snapshots


@pytest.mark.parametrize(
    ("patience", "aucs", "epochs_run", "best_epoch"),
    [
        (1, [0.60, 0.70, 0.65, 0.90, 0.95], 3, 2),  # stops after the first non-improving epoch
        (2, [0.60, 0.70, 0.65, 0.66, 0.95], 4, 2),
        (2, [0.60, 0.70, 0.65, 0.80, 0.79], 5, 4),  # a recovery resets the counter; runs out of epochs
    ],
)
def test_early_stopping_and_best_weights_restored(
    monkeypatch: pytest.MonkeyPatch, data, patience: int, aucs: list[float], epochs_run: int, best_epoch: int
) -> None:
    snapshots = scripted_validation(monkeypatch, aucs)
    model = tiny_model()
    config = TrainConfig(epochs=5, batch_size=16, lr=1e-2, patience=patience, progress=False)
    result = train_model(model, *data, config=config)
    assert len(result.history) == epochs_run
    assert result.stopped_early == (epochs_run < 5)
    assert result.best_epoch == best_epoch
    assert result.best_valid_metrics["auc"] == aucs[best_epoch - 1]
    best = snapshots[best_epoch - 1]
    assert not all(torch.equal(best[k], v) for k, v in snapshots[-1].items()), "weights should have moved"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)


def test_best_checkpoint_written_and_loadable(monkeypatch: pytest.MonkeyPatch, data, tmp_path) -> None:
    snapshots = scripted_validation(monkeypatch, [0.6, 0.8, 0.7])
    model = tiny_model()
    config = TrainConfig(epochs=3, batch_size=16, patience=3, progress=False)
    result = train_model(model, *data, config=config, checkpoint_dir=tmp_path)
    assert result.best_checkpoint == tmp_path / "best.pt" and result.best_checkpoint.exists()
    loaded, meta = load_checkpoint(result.best_checkpoint)
    assert meta["extra"]["epoch"] == 2
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key], rtol=0, atol=0)
    assert result.to_dict()["best_checkpoint"] == str(tmp_path / "best.pt")


def test_same_seed_same_result_different_seed_differs(data) -> None:
    def run(seed: int) -> tuple[np.ndarray, float]:
        model = tiny_model(seed)
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=seed, patience=2, progress=False)
        result = train_model(model, *data, config=config)
        return predict(model, data[1]), result.history[-1]["train_loss"]

    first, second, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    assert not np.array_equal(first[0], other[0])


def test_max_steps_per_epoch_and_history(data) -> None:
    model = tiny_model()
    train_steps = []
    model.register_forward_hook(lambda module, args, out: train_steps.append(1) if module.training else None)
    config = TrainConfig(epochs=1, batch_size=8, max_steps_per_epoch=2, progress=False)
    result = train_model(model, *data, config=config)
    assert len(data[0]) > 2 * 8  # the cap, not the data, ends the epoch
    assert len(train_steps) == 2
    record = result.history[0]
    assert record["train_samples_per_second"] > 0
    assert record["valid"]["n_samples"] == len(data[1])
    assert 0.0 < record["train_loss"] < 5.0


def test_predict_keeps_order_and_mode(data) -> None:
    model = tiny_model()
    model.train()
    _, valid = data
    logits = predict(model, valid, batch_size=5)
    assert model.training, "predict must restore the previous mode"
    model.eval()
    with torch.no_grad():
        expected = model({key: value for key, value in valid.tensors.items()}).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    metrics = evaluate_model(model, valid)
    assert metrics["n_samples"] == len(valid)


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")


def test_time_buckets_golden_values() -> None:
    target = np.array([1_000_000, 1_000_000])
    hours_before = np.array([[0.0, 0.5, 1.0, 2.0, 3.0, 7.0], [1e9, 1.0, 0.0, 0.0, 0.0, 0.0]])
    history = (target[:, None] - hours_before * 3600).astype(np.int64)
    mask = np.array([[True] * 6, [True, True, False, False, False, False]])
    buckets = time_buckets(history, target, mask, n_time_buckets=8)
    unclipped = time_buckets(history, target, mask)
    # 1 + floor(log2(h + 1)): h=0 → 1, 0.5 → 1, 1 → 2, 2 → 2, 3 → 3, 7 → 4; 1e9 h → 30 (clipped to 7); pad → 0
    np.testing.assert_array_equal(buckets, [[1, 1, 2, 2, 3, 4], [7, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(unclipped[1], [30, 2, 0, 0, 0, 0])
    assert buckets.dtype == np.int64


def test_tensor_sample_set_batches_subset_and_validation() -> None:
    samples = synthetic_sample_set(SPEC, 10, seed=0)
    assert len(samples) == 10 and samples.history_length == SPEC.max_history_length
    assert samples["label"].dtype == torch.float32 and samples["history_mask"].dtype == torch.bool
    gen = torch.Generator().manual_seed(0)
    batches = list(samples.batches(4, shuffle=True, generator=gen))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    assert set(BATCH_KEYS) <= batches[0].keys()
    seen = torch.cat([b["user_id"] * 1000 + b["target_item"] for b in batches]).sort().values
    expected = (samples["user_id"] * 1000 + samples["target_item"]).sort().values
    assert torch.equal(seen, expected)
    in_order = torch.cat([b["target_item"] for b in samples.batches(3)])
    assert torch.equal(in_order, samples["target_item"])

    sub = samples.subset(np.array([1, 3]))
    assert len(sub) == 2 and torch.equal(sub["target_item"], samples["target_item"][[1, 3]])

    arrays = {key: value.numpy() for key, value in samples.tensors.items()}
    roundtrip = TensorSampleSet.from_arrays(arrays)
    assert torch.equal(roundtrip["history_items"], samples["history_items"])
    with pytest.raises(ValueError, match="missing batch keys"):
        TensorSampleSet.from_arrays({key: value for key, value in arrays.items() if key != "label"})
    with pytest.raises(ValueError, match="first dimension"):
        TensorSampleSet.from_arrays({**arrays, "label": arrays["label"][:3]})


def test_device_resolution(monkeypatch):
    """ "auto" follows the GPU the task got; asking for CUDA without one is a clear error, not a CPU run."""
    from longrec.train.trainer import TrainConfig, resolve_device

    assert TrainConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")


def test_runtime_record_says_which_kernels_ran():
    from longrec.kernels import backends_used, reset_backends_used
    from longrec.kernels.scan import linear_scan
    from longrec.train.trainer import runtime_record

    reset_backends_used()
    linear_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 3), backend="reference")
    record = runtime_record(torch.device("cpu"))
    assert backends_used() == {"linear_scan": ["reference"]}
    assert record["device"] == "cpu" and record["triton_kernels_ran"] is False
    linear_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 3), backend="triton")  # interpreter on CPU in tests
    assert runtime_record(torch.device("cpu"))["triton_kernels_ran"] is True
    reset_backends_used()
