"""SASRec: causality, padding invariance, and the next-item trainer end to end on a toy dataset."""

import numpy as np
import pytest
import torch

from longrec.data.datasets import _assemble
from longrec.data.nextitem import build_next_item_data
from longrec.models.sasrec import SASRec, SASRecConfig
from longrec.train.nextitem import NextItemTrainConfig, run_next_item


def test_sasrec_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    model = SASRec(20, 12, SASRecConfig(embedding_dim=8, n_heads=2, inner_dim=16, dropout=0.0)).eval()
    items = torch.tensor([[3, 5, 7, 9, 0, 0], [2, 4, 0, 0, 0, 0]])
    mask = items > 0
    hidden = model.encode(items, mask)
    changed = items.clone()
    changed[0, 3] = 11  # a later item must not move earlier states
    torch.testing.assert_close(model.encode(changed, changed > 0)[0, :3], hidden[0, :3])
    padded = torch.cat([items, torch.zeros(2, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(
        model.user_state(padded, padded > 0), model.user_state(items, mask), rtol=1e-5, atol=1e-6
    )
    assert torch.isfinite(hidden).all()


def test_recbole_init_and_validation():
    torch.manual_seed(0)
    model = SASRec(500, 12, SASRecConfig(init="recbole"))
    block = model.blocks[0]
    for linear in (block.qkv, block.out, block.ffn[0], block.ffn[3]):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1) and torch.all(linear.bias == 0)
    assert SASRec(500, 12).blocks[0].ffn[3].weight.std().item() > 0.03  # PyTorch's ±1/√256 uniform
    with pytest.raises(ValueError, match="init"):
        SASRecConfig(init="xavier")


def test_next_item_trainer_runs_over_seeds():
    users = np.repeat(np.arange(1, 31), 12)
    items = (np.tile(np.arange(12), 30) + users) % 15 + 1  # each user walks the item ring
    times = np.tile(np.arange(12), 30)
    dataset = _assemble("toy", users, items, times, None, None)
    data = build_next_item_data(dataset, max_history_length=6)
    config = NextItemTrainConfig(epochs=2, batch_size=16, patience=1)
    result = run_next_item(
        "sasrec", data, [0, 1], config, {"embedding_dim": 8, "n_heads": 1, "inner_dim": 16}
    )
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    assert set(result["test_summary"]) == {"hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "mrr@20"}
    per_seed = [run["test"]["hr@10"] for run in result["runs"]]
    assert result["test_summary"]["hr@10"]["mean"] == pytest.approx(np.mean(per_seed))
    assert result["test_summary"]["hr@10"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    # Every user walks a fixed ring of 15 items: after 2 epochs the next item is ranked far above chance.
    assert result["test_summary"]["hr@10"]["mean"] > 10 / 15


def test_nextitem_command_writes_results(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from longrec.experiments.nextitem_cli import nextitem_app

    users = np.repeat(np.arange(1, 21), 8)
    events = pd.DataFrame({"user_id": users, "item_id": (np.tile(np.arange(8), 20) + users) % 12 + 1})
    events["timestamp"] = np.tile(np.arange(8), 20) * 60
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    runner = CliRunner()
    args = ["--model", "recblr", "--dataset", str(path), "-L", "5", "--epochs", "1", "--seeds", "0,1"]
    result = runner.invoke(nextitem_app, [*args, "--min-core", "0", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output and (tmp_path / "out" / "summary.md").exists()
    assert runner.invoke(nextitem_app, ["--model", "gru4rec"]).exit_code == 2
