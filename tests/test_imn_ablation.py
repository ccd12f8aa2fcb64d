"""Smoke tests of the IMN ablation command and the seed-study helpers on tiny data."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from longrec.data.samples import SampleConfig
from longrec.data.schema import FeatureSpec
from longrec.data.tensors import synthetic_sample_set
from longrec.experiments.imn_ablation import VARIANTS, ablate_app
from longrec.experiments.seed_study import seed_study, summarise, summary_markdown, write_seed_study
from longrec.train.trainer import TrainConfig


def test_seed_study_on_synthetic_splits(tmp_path) -> None:
    spec = FeatureSpec(n_users=20, n_items=41, n_genres=4, n_ages=3, n_genders=3, n_occupations=5,
                       max_history_length=6)  # fmt: skip
    splits = {
        name: synthetic_sample_set(spec, 128, seed=i) for i, name in enumerate(("train", "valid", "test"))
    }
    tiny = {"embedding_dim": 4, "head_hidden": (4,), "side_embedding_dim": 2}
    models = {
        "DIN": ("din", {**tiny, "attention_hidden": (4,)}),
        "IMN-1P": ("imn", {**tiny, "iterations": 1}),
    }
    config = TrainConfig(epochs=1, batch_size=64, progress=False)
    runs = seed_study("synthetic", models, SampleConfig(), config, [0, 1], splits=(splits, spec))
    assert len(runs) == 4 and set(runs["label"]) == {"DIN", "IMN-1P"}
    summary = summarise(runs)
    assert list(summary.index) == ["DIN", "IMN-1P"] and (summary["seeds"] == 2).all()
    for label, group in runs.groupby("label"):  # mean ± sample std (ddof 1) over the seeds
        assert summary.loc[label, "auc_mean"] == pytest.approx(group["test_auc"].mean())
        assert summary.loc[label, "auc_std"] == pytest.approx(group["test_auc"].std(ddof=1))
    table = summary_markdown(runs, "toy")
    assert "| DIN | 2 |" in table and "±" in table
    path = write_seed_study(runs, tmp_path, "toy")
    assert path.is_file() and (tmp_path / "toy.csv").is_file()
    with pytest.raises(ValueError, match="models is empty"):
        seed_study("synthetic", {}, SampleConfig(), config, [0], splits=(splits, spec))


def test_ablate_imn_command_writes_table_and_chart(tmp_path) -> None:
    result = CliRunner().invoke(
        ablate_app,
        ["imn", "--dataset", "ml-100k", "--max-events", "1500", "-L", "10", "--epochs", "1",
         "--max-steps-per-epoch", "2", "--batch-size", "128", "--seeds", "0",
         "--variants", "DIN,IMN-1P", "--variants", "IMN-3P+ late-cross", "--output", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = (tmp_path / "imn_ablation.md").read_text()
    for label in ("DIN", "IMN-1P", "IMN-3P+ late-cross"):
        assert f"| {label} | 1 |" in table
    assert (tmp_path / "imn_ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "imn_ablation.csv").is_file()


def test_ablate_imn_rejects_unknown_variant(tmp_path) -> None:
    result = CliRunner().invoke(ablate_app, ["imn", "--variants", "IMN-9P", "--output", str(tmp_path)])
    assert result.exit_code != 0
    assert not (tmp_path / "imn_ablation.md").exists()
    assert "IMN-3P+" in VARIANTS
