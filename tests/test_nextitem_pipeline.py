"""The next-item pipeline compiles for the UI and runs through kfp.local on a tiny slice."""

import yaml
from kfp import compiler, local

from pipelines.nextitem_pipeline import nextitem_pipeline


def test_nextitem_pipeline_compiles_with_gpu_requests(tmp_path):
    compiler.Compiler().compile(nextitem_pipeline, str(tmp_path / "p.yaml"))
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["models"]["defaultValue"] == ["recblr", "sasrec"]
    train = spec["deploymentSpec"]["executors"]["exec-train-next-item"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_nextitem_pipeline_runs_locally(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    nextitem_pipeline(max_history_length=10, epochs=1, seeds="0", max_users=60)
    tables = list(tmp_path.rglob("summarize-next-item/table"))
    assert len(tables) == 1
    text = tables[0].read_text()
    assert "| recblr | 0 |" in text and "| sasrec | 0 |" in text and "hr@10" in text
