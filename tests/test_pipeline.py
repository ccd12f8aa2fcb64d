"""The training pipeline: compiled IR YAML for the Kubeflow UI, and whole local runs through kfp.local."""

import json

import pytest
import yaml
from conftest import TINY_MAX_EVENTS

from components.base import BASE_IMAGE
from longrec.pipeline.local import compile_pipeline, run_local
from longrec.registry.store import ModelRegistry

TINY_TRACK = f"ml-100k@first-{TINY_MAX_EVENTS}-events"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("yaml") / "pipeline.yaml")
    # The IR is the first document; the second holds the Kubernetes platform spec (kfp-kubernetes).
    return next(yaml.safe_load_all(path.read_text()))


def test_compiled_yaml_exposes_parameters_for_the_ui(compiled):
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    for name in (
        "dataset",
        "models",
        "max_history_length",
        "epochs",
        "auc_floor",
        "min_auc_lift",
        "max_logloss_increase",
        "device",
    ):
        assert name in parameters, name
    assert parameters["models"]["parameterType"] == "LIST"
    assert parameters["models"]["defaultValue"] == ["din", "imn", "recblr", "lmn"]
    assert parameters["dataset"]["defaultValue"] == "ml-100k"
    assert parameters["max_history_length"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["device"]["defaultValue"] == "auto"
    # The tuning budget: 0 (the fixed settings) unless a run asks for a search.
    assert parameters["tuning_trials"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["tuning_trials"]["defaultValue"] == 0
    assert parameters["tuning_time_limit_minutes"]["parameterType"] == "NUMBER_DOUBLE"
    # LMN's long horizon: off unless a run sets it.
    assert parameters["memory_history_length"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["memory_history_length"]["defaultValue"] == 0


def _all_tasks(compiled) -> dict:
    tasks = dict(compiled["root"]["dag"]["tasks"])
    for component in compiled["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_only_training_reads_the_long_horizon(compiled):
    tasks = _all_tasks(compiled)
    # The online store's snapshots (what serving reads) are cut at L; L_long reaches the training set only.
    materialize = tasks["materialize-features"]["inputs"]["parameters"]
    assert materialize["max_history_length"]["componentInputParameter"] == "max_history_length"
    assert "memory_history_length" not in materialize
    samples = tasks["build-training-set"]["inputs"]["parameters"]
    assert samples["memory_history_length"]["componentInputParameter"] == "memory_history_length"


def test_registry_tasks_never_come_from_cache_and_training_retries(compiled):
    tasks = _all_tasks(compiled)
    # A cached evaluate/gate/register would replay a decision made against an older production model.
    for name in ("evaluate-models", "gate-promotion", "register-model"):
        assert not tasks[name].get("cachingOptions", {}).get("enableCache", False), name
    assert tasks["ingest-dataset"]["cachingOptions"]["enableCache"] is True
    assert tasks["train-model"]["retryPolicy"]["maxRetryCount"] == 2
    train_inputs = tasks["train-model"]["inputs"]["parameters"]
    assert train_inputs["device"]["componentInputParameter"].endswith("device")
    assert train_inputs["tuning_trials"]["componentInputParameter"].endswith("tuning_trials")


def test_train_tasks_request_a_gpu(compiled):
    executors = compiled["deploymentSpec"]["executors"]
    train = executors["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    others = [e for name, e in executors.items() if name != "exec-train-model"]
    assert all("accelerator" not in e["container"].get("resources", {}) for e in others)
    # Every other component runs from the one base image; train runs its CUDA build.
    assert {e["container"]["image"] for e in others} == {BASE_IMAGE}
    assert train["image"] == f"{BASE_IMAGE}-cuda"


def test_register_runs_only_when_the_gate_says_promote(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    condition = next(t for t in tasks.values() if "triggerPolicy" in t)
    assert "gate-promotion-Output" in condition["triggerPolicy"]["condition"]
    assert "'promote'" in condition["triggerPolicy"]["condition"]
    inner = compiled["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert sorted(inner) == ["package-bento", "register-model"]  # the Bento is built after register
    assert inner["package-bento"]["dependentTasks"] == ["register-model"]
    # Training waits for validation, fanned out over the models parameter.
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert (
        loop["dependentTasks"] == ["validate-training-set"]
        or "validate-training-set" in loop["dependentTasks"]
    )


@pytest.mark.slow
def test_local_run_trains_evaluates_gates_and_registers(local_pipeline_run):
    summary, registry = local_pipeline_run
    assert summary.status == "succeeded", summary.failure
    run_dir = summary.run_dir
    for name in (
        "index.html",
        "pipeline.yaml",
        "validation_report.html",
        "metrics.json",
        "comparison.md",
        "decision.md",
        "registered_model.json",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Every default model trained on the same samples and scored on the same test split.
    assert set(metrics["models"]) == {"din", "imn", "recblr", "lmn"}
    # Four different models give four different test AUCs on the same samples (one shared count).
    assert len({m["n_samples"] for m in metrics["models"].values()}) == 1
    assert len({round(m["auc"], 6) for m in metrics["models"].values()}) == 4
    best_valid = max(metrics["models"], key=lambda name: metrics["models"][name]["valid_auc"])
    assert metrics["candidate"] == best_valid  # chosen on validation, not test
    assert "RelaImpr" in (run_dir / "comparison.md").read_text()
    # LMN's trained model carries its memory as shard files with a manifest.
    lmn_dirs = [p for p in (run_dir / "kfp").rglob("train-model/model") if (p / "memory").is_dir()]
    assert len(lmn_dirs) == 1 and (lmn_dirs[0] / "memory" / "manifest.json").is_file()
    # Two horizons: the run's memory_history_length reached LMN's training (and only LMN's).
    for model_dir in (run_dir / "kfp").rglob("train-model/model"):
        meta = json.loads((model_dir / "model_meta.json").read_text())
        assert meta["training_set"]["sample_config"]["memory_history_length"] == 120
        assert meta["summary"]["trained_with_long_view"] == (meta["model_name"] == "lmn"), meta["model_name"]
    assert summary.decision == "promote"
    pointer = ModelRegistry(registry).production(TINY_TRACK)
    assert pointer["tag"] == summary.production_tag
    index = (run_dir / "index.html").read_text()
    for name in ("validation_report.html", "metrics.json", "pipeline.yaml", "registered_model.json"):
        assert f'href="{name}"' in index
    # The run page shows real tables and pictures, not Markdown in a grey box.
    assert "<pre>" not in index and "<table>" in index and index.count("data:image/png;base64,") == 2


@pytest.mark.slow
def test_second_run_is_compared_against_production(local_pipeline_run, tiny_params, tmp_path):
    """A second run on the same slice, one pipeline run (each costs about a minute) checking three things:

    - the gate compares against production: a lift no model can reach is rejected, production stays;
    - the issue's repro: with production also on the full ml-100k, a slice run (`--max-events 1500`) is
      compared against the slice's production, never the full dataset's, and never claims there is none
      (that a promotable slice never replaces the full model: tests/test_registry.py);
    - a tuning budget of 2 trials shows its trials and pick on the run page.
    """
    import shutil

    summary, registry = local_pipeline_run
    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    store = ModelRegistry(root)
    before = store.production(TINY_TRACK)
    dataset_dir = tmp_path / "full-ds"
    dataset_dir.mkdir()
    (dataset_dir / "dataset.json").write_text(
        json.dumps({"name": "ml-100k", "track": "ml-100k", "fingerprint": "x"})
    )
    full_tag = store.register_and_promote(store.model_path(summary.production_tag), dataset_dir, expected_current=None)
    params = tiny_params.model_copy(update={"min_auc_lift": 0.5, "models": ["din"], "tuning_trials": 2})
    second = run_local(params, tmp_path / "runs", registry_dir=root)
    assert second.status == "succeeded" and second.decision == "reject", second.failure
    assert "production" in second.comparison_md and "rescored" in second.comparison_md
    assert "interval" in second.decision_md and "lower bound <= min lift +0.5000" in second.decision_md
    # The lift table stands once on the run page (with the decision), and on the evaluation's own page.
    assert (second.run_dir / "index.html").read_text().count("lift (candidate − production)") == 1
    assert "lift (candidate − production)" in (second.run_dir / "comparison.html").read_text()
    assert ModelRegistry(root).production(TINY_TRACK) == before
    assert not (second.run_dir / "registered_model.json").exists()
    # The slice was compared against its own production; the full dataset's is untouched.
    assert before["tag"] in second.comparison_md and full_tag not in second.comparison_md
    assert ModelRegistry(root).production("ml-100k")["tag"] == full_tag
    assert "no production model for this dataset yet" not in second.decision_md
    assert f"no production model for {TINY_TRACK} yet" not in second.decision_md
    # The tuning budget: every trial and the pick on the run page, and in tuning.json.
    tuning = json.loads((second.run_dir / "tuning.json").read_text())
    assert list(tuning) == ["din"] and len(tuning["din"]["trials"]) == 2
    page = (second.run_dir / "index.html").read_text()
    assert "Tuning (validation split only)" in page and "valid AUC" in page
    chosen = tuning["din"]["trials"][tuning["din"]["chosen_trial"]]
    assert f"{chosen['valid_auc']:.4f}" in page


@pytest.mark.slow
def test_failed_validation_stops_the_run_before_training(tiny_params, tmp_path):
    # A positive-rate floor no split can meet: the GE suite fails on real data.
    params = tiny_params.model_copy(update={"min_positive_rate": 0.9, "max_positive_rate": 1.0})
    summary = run_local(params, tmp_path / "runs", registry_dir=tmp_path / "registry")
    assert summary.status == "failed"
    assert "validation failed" in summary.failure and "positive rate" in summary.failure
    assert (summary.run_dir / "validation_report.html").is_file()
    assert "FAIL" in (summary.run_dir / "validation_report.html").read_text()
    # Nothing downstream ran: no trained model, no comparison, nothing in the registry.
    assert not list((summary.run_dir / "kfp").rglob("train-model"))
    assert not (summary.run_dir / "comparison.md").exists()
    assert ModelRegistry(tmp_path / "registry").list_models() == []
