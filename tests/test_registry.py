"""The promotion gate and the model registry (BentoML store + atomic production pointer)."""

import json

import pytest
import torch

from longrec.data.schema import FeatureSpec
from longrec.models.registry import build_model
from longrec.registry.gate import decide_promotion
from longrec.registry.store import ModelRegistry, RegistryError
from longrec.train.trainer import save_checkpoint


@pytest.mark.parametrize(
    ("auc", "production", "floor", "lift", "promote"),
    [
        (0.80, None, 0.70, 0.0, True),  # first model, clears the floor
        (0.69, None, 0.70, 0.0, False),  # below the floor
        (0.80, 0.79, 0.70, 0.005, True),  # beats production by more than the lift
        (0.80, 0.797, 0.70, 0.005, False),  # better, but not by the required lift
        (0.80, 0.85, 0.70, 0.0, False),  # worse than production
        (0.65, 0.60, 0.70, 0.0, False),  # beats production but below the floor
        (float("nan"), None, 0.0, 0.0, False),  # unscorable candidate
    ],
)
def test_gate_both_ways(auc, production, floor, lift, promote):
    decision = decide_promotion(auc, production, auc_floor=floor, min_auc_lift=lift, candidate_name="din")
    assert decision.promote is promote
    assert decision.verdict == ("promote" if promote else "reject")
    assert decision.to_markdown().startswith(f"## Promotion decision: **{decision.verdict.upper()}**")


def make_model_dir(path, auc=0.75):
    spec = FeatureSpec(n_users=5, n_items=7, max_history_length=4)
    model = build_model("din", spec, {"embedding_dim": 4})
    path.mkdir(parents=True)
    save_checkpoint(path / "model.pt", model, model_name="din", spec=spec)
    (path / "model_meta.json").write_text(
        json.dumps({"model_name": "din", "model_config": {"x": None}, "valid_metrics": {"auc": auc}})
    )
    (path / "evaluation.json").write_text(
        json.dumps({"test_metrics": {"auc": auc}, "test_set_fingerprint": "f"})
    )
    return path


def make_dataset_dir(path, name="ml-100k"):
    path.mkdir(parents=True)
    (path / "dataset.json").write_text(json.dumps({"name": name, "fingerprint": "abc"}))
    return path


def test_register_and_promote_moves_the_pointer_and_keeps_history(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.production("ml-100k") is None
    dataset = make_dataset_dir(tmp_path / "ds")
    first = registry.register_and_promote(make_model_dir(tmp_path / "m1", 0.75), dataset)
    second = registry.register_and_promote(make_model_dir(tmp_path / "m2", 0.78), dataset)
    pointer = registry.production("ml-100k")
    assert pointer["tag"] == second and pointer["previous"] == first
    assert pointer["test_metrics"]["auc"] == 0.78
    assert len((tmp_path / "registry" / "production" / "history.jsonl").read_text().splitlines()) == 2
    stored = registry.model_path(second)
    assert torch.load(stored / "model.pt", weights_only=True)["model_name"] == "din"
    assert {m["tag"] for m in registry.list_models()} == {first, second}
    assert not list((tmp_path / "registry" / "production").glob("*.tmp"))  # no torn pointer files


def test_incomplete_model_folder_registers_nothing(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    broken = make_model_dir(tmp_path / "m")
    (broken / "evaluation.json").unlink()
    with pytest.raises(RegistryError, match="evaluation.json"):
        registry.register_and_promote(broken, make_dataset_dir(tmp_path / "ds"))
    assert registry.list_models() == [] and registry.production("ml-100k") is None


def test_corrupt_pointer_is_a_clear_error(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.pointer_path("ml-100k").parent.mkdir(parents=True)
    registry.pointer_path("ml-100k").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        registry.production("ml-100k")


def test_unknown_tag_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="not in the registry"):
        ModelRegistry(tmp_path).model_path("longrec-x-din:doesnotexist")
