"""Every component's python_func on tiny inputs, chained the way the pipeline chains them."""

import json
import os

import numpy as np
import pytest
import torch
from kfp import dsl

from components.build_training_set import build_training_set
from components.evaluate_models import evaluate_models
from components.gate_promotion import gate_promotion
from components.ingest import ingest_dataset
from components.materialize_features import materialize_features
from components.register_model import register_model
from components.train_model import train_model
from components.validate_training_set import validate_training_set
from longrec.data.training_set import read_training_set, write_training_set
from longrec.validation import TrainingSetValidationError

L = 8


def artifact(kind, path):
    return kind(uri=str(path))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="module")
def events(work):
    out = artifact(dsl.Dataset, work / "events")
    ingest_dataset.python_func(dataset="ml-100k", max_events=600, events=out)
    return out


@pytest.fixture(scope="module")
def feature_repo(work, events):
    out = artifact(dsl.Artifact, work / "feature_repo")
    materialize_features.python_func(events=events, max_history_length=L, feature_repo=out)
    return out


@pytest.fixture(scope="module")
def training_set(work, events, feature_repo):
    out = artifact(dsl.Dataset, work / "training_set")
    build_training_set.python_func(
        events=events,
        feature_repo=feature_repo,
        max_history_length=L,
        split="time",
        train_negatives=1,
        eval_negatives=4,
        negative_sampling="uniform",
        seed=0,
        training_set=out,
    )
    return out


def train_din(work, training_set, name: str):
    """One DIN epoch through the train component's function: (model, metrics) artifacts."""
    model = artifact(dsl.Model, work / name)
    metrics = artifact(dsl.Metrics, work / f"{name}-metrics")
    train_model.python_func(
        training_set=training_set,
        model_name="din",
        epochs=1,
        batch_size=128,
        learning_rate=0.001,
        seed=0,
        device="auto",
        tuning_trials=0,
        tuning_time_limit_minutes=0.0,
        model_settings="",
        model=model,
        metrics=metrics,
    )
    return model, metrics


@pytest.fixture(scope="module")
def trained(work, training_set):
    return train_din(work, training_set, "model")


def evaluate_outputs(work, prefix: str) -> dict:
    """The evaluate component's output artifacts, as files under ``work`` named ``prefix + name``."""
    kinds = {
        "comparison": dsl.Markdown,
        "report": dsl.HTML,
        "metrics": dsl.Metrics,
        "roc": dsl.ClassificationMetrics,
        "metrics_json": dsl.Artifact,
        "gate_inputs": dsl.Artifact,
        "candidate": dsl.Model,
    }
    return {name: artifact(kind, work / f"{prefix}{name}") for name, kind in kinds.items()}


@pytest.fixture(scope="module")
def evaluated(work, training_set, trained):
    outs = evaluate_outputs(work, "")
    result = evaluate_models.python_func(
        training_set=training_set, models=[trained[0]], registry_dir=str(work / "registry"), **outs
    )
    return result, outs


def test_ingest_writes_dataset_folder(events):
    info = json.loads(open(events.path + "/dataset.json").read())
    assert info["name"] == "ml-100k" and info["n_events"] >= 600
    assert events.metadata["fingerprint"] == info["fingerprint"]


def test_materialize_features_applies_and_fills_online_store(feature_repo):
    from feast import FeatureStore

    from longrec.features.store import online_history

    store = FeatureStore(repo_path=feature_repo.path)
    assert {v.name for v in store.list_feature_views()} >= {"user_behavior_sequence", "user_side_features"}
    items, stamps = online_history(store, [1])[1]
    assert 0 < len(items) <= L and (np.diff(stamps) >= 0).all()
    assert feature_repo.metadata["max_history_length"] == L


def test_build_training_set_reads_histories_before_each_target(training_set):
    frame, spec, meta = read_training_set(training_set.path)
    assert spec.max_history_length == L and "feast" in meta["history_source"]
    stamps = np.stack(frame["history_timestamps"].to_numpy())
    mask = np.stack(frame["history_mask"].to_numpy())
    assert not ((stamps >= frame["target_timestamp"].to_numpy()[:, None]) & mask).any()
    assert set(frame["split"]) == {"train", "valid", "test"}


def test_validate_passes_and_writes_reports(work, training_set):
    report, results, docs = (
        artifact(dsl.HTML, work / "v_report.html"),
        artifact(dsl.Artifact, work / "v_results.json"),
        artifact(dsl.Artifact, work / "v_docs"),
    )
    validate_training_set.python_func(
        training_set=training_set,
        min_positive_rate=0.05,
        max_positive_rate=0.6,
        report=report,
        results=results,
        data_docs=docs,
    )
    saved = json.loads(open(results.path).read())
    assert saved["success"] is True
    assert "PASS" in open(report.path).read()
    assert os.path.isfile(docs.path + "/index.html")  # Great Expectations' own Data Docs site
    # The pipeline's training set uses the time split: the split-order rules ran (and passed).
    assert {"split_order_train_valid", "split_order_valid_test"} <= {
        e["rule_id"] for e in saved["expectations"]
    }


def test_validate_fails_on_corrupted_training_set_naming_the_expectation(work, training_set):
    frame, spec, meta = read_training_set(training_set.path)
    frame.loc[0, "label"] = 3
    stamps = frame.at[1, "history_timestamps"].copy()
    stamps[0] = frame.at[1, "target_timestamp"] + 10  # an event after its target
    frame.at[1, "history_timestamps"] = stamps
    corrupted = artifact(dsl.Dataset, work / "corrupted")
    write_training_set(frame, spec, corrupted.path, meta)
    report, results = (
        artifact(dsl.HTML, work / "c_report.html"),
        artifact(dsl.Artifact, work / "c_results.json"),
    )
    with pytest.raises(TrainingSetValidationError) as error:
        validate_training_set.python_func(
            training_set=corrupted,
            min_positive_rate=0.05,
            max_positive_rate=0.6,
            report=report,
            results=results,
            data_docs=artifact(dsl.Artifact, work / "c_docs"),
        )
    assert "label" in str(error.value) and "history_before_target" in str(error.value)
    assert "FAIL" in open(report.path).read()  # the report is written before the task fails


def test_train_model_writes_checkpoint_and_metrics(trained):
    model, metrics = trained
    assert os.path.isfile(model.path + "/model.pt") and os.path.isfile(model.path + "/model_meta.json")
    meta = json.loads(open(model.path + "/model_meta.json").read())
    # The logged metric is the validation AUC of the best epoch (early stopping keeps that checkpoint).
    assert metrics.metadata["valid_auc"] == pytest.approx(meta["valid_metrics"]["auc"])
    assert meta["valid_metrics"]["auc"] == max(record["valid"]["auc"] for record in meta["history"])
    assert model.metadata["model_name"] == "din"
    # device="auto" resolved here (no GPU) to the CPU, and the metadata says so and which kernels ran.
    assert model.metadata["device"] == "cpu" and model.metadata["triton_kernels_ran"] is False
    meta = json.loads(open(model.path + "/model_meta.json").read())
    assert meta["runtime"]["device"] == "cpu" and meta["train_config"]["device"] == "auto"


def test_train_model_is_reproducible_from_its_seed(work, training_set, trained):
    # A second training in the same process starts from a different global RNG state: only seeding
    # before the model is built makes the gate compare runs that can be reproduced.
    model, _ = trained
    again, _ = train_din(work, training_set, "model-again")
    first = torch.load(model.path + "/model.pt", weights_only=True)["state_dict"]
    second = torch.load(again.path + "/model.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_evaluate_models_compares_and_copies_candidate(evaluated):
    result, outs = evaluated
    assert result.candidate_name == "din"
    saved = json.loads(open(outs["metrics_json"].path).read())
    assert result.candidate_auc == pytest.approx(saved["models"]["din"]["auc"])
    assert result.production_tag == ""  # empty registry
    assert "| **din** (candidate)" in open(outs["comparison"].path).read()
    assert json.loads(open(outs["candidate"].path + "/evaluation.json").read())["test_metrics"][
        "auc"
    ] == pytest.approx(result.candidate_auc)
    inputs = json.loads(open(outs["gate_inputs"].path).read())
    assert inputs["production"]["status"] == "none" and inputs["track"] == "ml-100k@first-600-events"
    # The Kubeflow UI's ROC and confusion-matrix viewers read these.
    roc = outs["roc"].metadata
    assert roc["confidenceMetrics"][0]["falsePositiveRate"] == 0.0 and len(roc["confidenceMetrics"]) > 10
    assert roc["confusionMatrix"]["annotationSpecs"] == [
        {"displayName": "no click"},
        {"displayName": "click"},
    ]
    page = open(outs["report"].path).read()
    assert "<table>" in page and "data:image/png;base64," in page  # real tables and pictures, not Markdown


def run_gate(work, inputs: dict, name: str, **thresholds):
    path = work / f"gate-inputs-{name}.json"
    path.write_text(json.dumps(inputs))
    decision = artifact(dsl.Markdown, work / f"decision-{name}.md")
    decision_json = artifact(dsl.Artifact, work / f"decision-{name}.json")
    verdict = gate_promotion.python_func(
        gate_inputs=artifact(dsl.Artifact, path),
        auc_floor=thresholds.get("auc_floor", 0.7),
        min_auc_lift=thresholds.get("min_auc_lift", 0.0),
        max_logloss_increase=0.01,
        decision=decision,
        decision_json=decision_json,
        gate_metrics=artifact(dsl.Metrics, work / f"gate-metrics-{name}"),
    )
    assert verdict.upper() in open(decision.path).read()
    return verdict, json.loads(open(decision_json.path).read())


@pytest.mark.parametrize(("auc", "expected"), [(0.75, "promote"), (0.65, "reject")])
def test_gate_promotion_first_model_needs_the_floor(work, auc, expected):
    inputs = {
        "track": "t",
        "candidate": {"name": "din", "metrics": {"auc": auc}},
        "production": {"status": "none", "reason": "none yet"},
        "lift": None,
    }
    verdict, decision = run_gate(work, inputs, f"first-{auc}")
    assert verdict == expected and decision["production_tag"] is None


def test_register_model_moves_production_pointer(work, evaluated, events):
    from longrec.registry.store import ModelRegistry

    _, outs = evaluated
    verdict, _ = run_gate(work, json.loads(open(outs["gate_inputs"].path).read()), "register", auc_floor=0.0)
    assert verdict == "promote"
    tag = register_model.python_func(
        candidate=outs["candidate"],
        events=events,
        decision_json=artifact(dsl.Artifact, work / "decision-register.json"),
        registry_dir=str(work / "registry"),
    )
    registry = ModelRegistry(work / "registry")
    pointer = registry.production("ml-100k@first-600-events")
    assert pointer["tag"] == tag and tag.startswith("longrec-ml-100k-first-600-events-din:")
    assert (registry.model_path(tag) / "model.pt").is_file()
    assert registry.production("ml-100k") is None  # a slice never moves the full dataset's pointer


def test_production_from_other_samples_is_not_comparable_and_blocks_promotion(
    work, events, feature_repo, evaluated
):
    """Production trained at L=8 (registered above); this run's samples have L=6: not comparable."""
    from longrec.registry.store import ModelRegistry

    registry = ModelRegistry(work / "registry")
    if registry.production("ml-100k@first-600-events") is None:
        pytest.skip("needs test_register_model_moves_production_pointer to have promoted a model")
    before = registry.production("ml-100k@first-600-events")
    other = artifact(dsl.Dataset, work / "training_set_l6")
    build_training_set.python_func(
        events=events,
        feature_repo=feature_repo,
        max_history_length=6,
        split="time",
        train_negatives=1,
        eval_negatives=4,
        negative_sampling="uniform",
        seed=0,
        training_set=other,
    )
    outs = evaluate_outputs(work, "l6-")
    # The L=8 model scores L=6 histories fine: it is the samples that differ.
    model = artifact(dsl.Model, work / "model")
    evaluate_models.python_func(
        training_set=other, models=[model], registry_dir=str(work / "registry"), **outs
    )
    inputs = json.loads(open(outs["gate_inputs"].path).read())
    assert inputs["production"]["status"] == "not_comparable"
    assert "max_history_length 8 vs this run's 6" in inputs["production"]["reason"]
    verdict, decision = run_gate(work, inputs, "l6", auc_floor=0.0, min_auc_lift=-1.0)
    assert verdict == "reject"
    assert "exists but could not be compared" in " ".join(decision["reasons"])
    assert registry.production("ml-100k@first-600-events") == before


def test_train_next_item_and_summary(work):
    from components.summarize_next_item import summarize_next_item
    from components.train_next_item import train_next_item

    results = []
    for model_name in ("recblr", "sasrec"):
        metrics = artifact(dsl.Metrics, work / f"ni-metrics-{model_name}")
        result = artifact(dsl.Artifact, work / f"ni-result-{model_name}")
        train_next_item.python_func(
            dataset="ml-100k",
            model_name=model_name,
            max_history_length=8,
            epochs=1,
            seeds="0,1",
            min_core=5,
            max_users=40,
            metrics=metrics,
            result=result,
        )
        saved = json.loads(open(result.path + "/result.json").read())
        assert saved["model"] == model_name
        per_seed = [run["test"]["hr@10"] for run in saved["runs"]]
        assert metrics.metadata["test_hr@10_mean"] == pytest.approx(np.mean(per_seed))
        results.append(result)
    table = artifact(dsl.Markdown, work / "ni-table.md")
    summarize_next_item.python_func(results=results, table=table)
    text = open(table.path).read()
    assert "| recblr | 0,1 |" in text and "| sasrec | 0,1 |" in text
