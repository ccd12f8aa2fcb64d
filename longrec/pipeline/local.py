"""Run the training pipeline locally with kfp.local and turn its outputs into a browsable run folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from longrec.pipeline.params import PipelineParams
from longrec.registry.store import dataset_slug

logger = logging.getLogger(__name__)


class PipelineFailed(RuntimeError):
    """A pipeline task failed; the message says which and why (e.g. the failed expectations)."""


@dataclass
class RunSummary:
    """What a local run produced, with paths inside its run folder."""

    run_dir: Path
    status: str  # "succeeded" or "failed"
    decision: str | None = None  # "promote" / "reject"
    comparison_md: str = ""
    decision_md: str = ""
    production_tag: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    wall_seconds: float = 0.0


def compile_pipeline(output: str | Path) -> Path:
    """Compile the training pipeline to KFP IR YAML."""
    from kfp import compiler

    from pipelines.training_pipeline import training_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(output))
    return output


def new_run_dir(runs_dir: str | Path, dataset: str) -> Path:
    """A fresh, time-stamped run folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{stamp}-{dataset_slug(Path(dataset).stem if os.sep in dataset else dataset)}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def run_local(
    params: PipelineParams, runs_dir: str | Path, registry_dir: str | Path | None = None
) -> RunSummary:
    """Compile, run every task through kfp.local's SubprocessRunner, and collect the outputs."""
    from kfp import local

    from longrec.registry.store import default_registry_root
    from pipelines.training_pipeline import training_pipeline

    started = time.time()
    registry = Path(registry_dir or params.registry_dir or default_registry_root()).resolve()
    params = params.model_copy(update={"registry_dir": str(registry)})
    run_dir = new_run_dir(runs_dir, params.dataset)
    compile_pipeline(run_dir / "pipeline.yaml")
    (run_dir / "parameters.json").write_text(json.dumps(params.arguments(), indent=2))
    pipeline_root = run_dir / "kfp"
    # Tasks run as subprocesses of this interpreter; spinning OpenMP threads would fight over 2 cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    summary = RunSummary(run_dir=run_dir, status="succeeded")
    try:
        training_pipeline(**params.arguments())
    except Exception as error:  # kfp.local raises RuntimeError naming the failed task
        summary.status = "failed"
        summary.failure = describe_failure(pipeline_root, error)
    collect_outputs(summary, pipeline_root, registry, params)
    summary.wall_seconds = time.time() - started
    write_index(summary, params)
    return summary


TASK_NAMES = (
    "ingest-dataset",
    "materialize-features",
    "build-training-set",
    "validate-training-set",
    "train-model",
    "evaluate-models",
    "gate-promotion",
    "register-model",
)


def _task_dirs(pipeline_root: Path) -> dict[str, list[Path]]:
    """Task folders under pipeline_root by task name; loop iterations and conditions nest them deeper."""
    tasks: dict[str, list[Path]] = {}
    for path in sorted(pipeline_root.rglob("*")):
        if path.is_dir() and path.name in TASK_NAMES:
            tasks.setdefault(path.name, []).append(path)
    return tasks


def describe_failure(pipeline_root: Path, error: Exception) -> str:
    """A readable reason: failed expectations if validation failed, else kfp's message."""
    if pipeline_root.is_dir():
        for task in _task_dirs(pipeline_root).get("validate-training-set", []):
            results = task / "results"
            if results.is_file():
                data = json.loads(results.read_text())
                if not data.get("success", True):
                    failed = "; ".join(data.get("failed_expectations", []))
                    return f"training-set validation failed: {failed}"
    return str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)


def collect_outputs(summary: RunSummary, pipeline_root: Path, registry: Path, params: PipelineParams) -> None:
    """Copy the artifacts a person looks at to the top of the run folder."""
    if not pipeline_root.is_dir():
        return
    tasks = _task_dirs(pipeline_root)
    wanted = {
        ("validate-training-set", "report"): "validation_report.html",
        ("validate-training-set", "results"): "validation_results.json",
        ("evaluate-models", "comparison"): "comparison.md",
        ("evaluate-models", "report"): "comparison.html",
        ("evaluate-models", "metrics_json"): "metrics.json",
        ("gate-promotion", "decision"): "decision.md",
        ("gate-promotion", "decision_json"): "decision.json",
        ("evaluate-models", "gate_inputs"): "gate_inputs.json",
    }
    for task in tasks.get("validate-training-set", []):  # GE's Data Docs: a folder, copied whole
        if (task / "data_docs" / "index.html").is_file():
            shutil.copytree(task / "data_docs", summary.run_dir / "validation_docs", dirs_exist_ok=True)
            summary.artifacts["validation_docs/index.html"] = "validation_docs/index.html"
    for (task_name, output), target in wanted.items():
        for task in tasks.get(task_name, []):
            source = task / output
            if source.is_file():
                shutil.copy2(source, summary.run_dir / target)
                summary.artifacts[target] = target
    tuning = {}
    for task in tasks.get("train-model", []):  # every model's search, when the run had a budget
        for meta_path in task.rglob("model_meta.json"):
            meta = json.loads(meta_path.read_text())
            if meta.get("tuning"):
                tuning[meta["model_name"]] = meta["tuning"]
    if tuning:
        (summary.run_dir / "tuning.json").write_text(json.dumps(tuning, indent=2))
        summary.artifacts["tuning.json"] = "tuning.json"
    if "comparison.md" in summary.artifacts:
        summary.comparison_md = (summary.run_dir / "comparison.md").read_text()
    if "decision.md" in summary.artifacts:
        summary.decision_md = (summary.run_dir / "decision.md").read_text()
    if "decision.json" in summary.artifacts:
        summary.decision = json.loads((summary.run_dir / "decision.json").read_text())["verdict"]
    if tasks.get("register-model") and summary.status == "succeeded":
        from longrec.registry.store import ModelRegistry

        dataset = json.loads(
            next(iter(tasks["ingest-dataset"])).joinpath("events", "dataset.json").read_text()
        )
        pointer = ModelRegistry(registry).production(dataset.get("track", dataset["name"]))
        if pointer:
            summary.production_tag = pointer["tag"]
            (summary.run_dir / "registered_model.json").write_text(json.dumps(pointer, indent=2))
            summary.artifacts["registered_model.json"] = "registered_model.json"
    (summary.run_dir / "summary.json").write_text(
        json.dumps(
            {
                "status": summary.status,
                "decision": summary.decision,
                "production_tag": summary.production_tag,
                "failure": summary.failure,
                "registry": str(registry),
                "artifacts": summary.artifacts,
            },
            indent=2,
        )
    )
    summary.artifacts["summary.json"] = "summary.json"


def _body_of(page: str) -> str:
    """The inside of <body> of an HTML page written by longrec (its first <h1> dropped)."""
    import re

    match = re.search(r"<body>(.*)</body>", page, re.S)
    body = match.group(1) if match else ""
    body = re.sub(r"<!--lift-->.*?<!--/lift-->", "", body, flags=re.S)
    return re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)


def tuning_html(path: Path) -> str:
    """Per model, its tuning trials (settings, validation AUC, epochs, seconds) with the pick in bold."""
    import html

    if not path.is_file():
        return ""
    parts = ["<h2>Tuning (validation split only)</h2>"]
    for model_name, record in json.loads(path.read_text()).items():
        knobs = list(record["space"])
        stopped = ", stopped by its time limit" if record.get("stopped_by_time_limit") else ""
        parts.append(
            f"<h3>{html.escape(model_name)}: {len(record['trials'])} of {record['budget']} trial(s), "
            f"seed {record['seed']}, {record['seconds']:.0f} s{stopped}</h3>"
        )
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["trial", *knobs, "valid AUC", "epochs", "s"])
        rows = []
        for trial in record["trials"]:
            cells = [trial["trial"] + 1, *(trial["params"][k] for k in knobs)]
            cells += [f"{trial['valid_auc']:.4f}", trial["epochs_run"], f"{trial['seconds']:.0f}"]
            row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            style = ' style="font-weight:bold"' if trial["trial"] == record["chosen_trial"] else ""
            rows.append(f"<tr{style}>{row}</tr>")
        parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    return "\n".join(parts)


def write_index(summary: RunSummary, params: PipelineParams) -> Path:
    """index.html: the comparison table, lift interval, ROC and training curves, the decision, and links."""
    import html

    from longrec.eval.report import PAGE_STYLE, decision_html

    labels = {
        "comparison.html": "Model comparison (tables, ROC and training curves)",
        "metrics.json": "Metrics of every model (JSON)",
        "decision.md": "Promotion decision (Markdown)",
        "decision.json": "Promotion decision (JSON)",
        "gate_inputs.json": "What the gate decided on (JSON)",
        "tuning.json": "Tuning: every trial's settings and validation AUC (JSON)",
        "validation_docs/index.html": "Great Expectations Data Docs: every expectation and its result",
        "validation_report.html": "Validation summary (pass/fail and failed expectations)",
        "validation_results.json": "Validation results (JSON)",
        "registered_model.json": "Registered production model",
        "summary.json": "Run summary (JSON)",
    }
    rows = [
        '<li><a href="pipeline.yaml">Compiled pipeline (KFP IR YAML)</a></li>',
        '<li><a href="parameters.json">Pipeline parameters</a></li>',
    ]
    rows += [
        f'<li><a href="{html.escape(name)}">{html.escape(labels.get(name, name))}</a></li>'
        for name in labels
        if name in summary.artifacts
    ]
    rows.append('<li><a href="kfp/">Raw kfp.local task outputs</a></li>')
    status = "FAILED: " + html.escape(summary.failure or "") if summary.status == "failed" else "succeeded"
    comparison_path = summary.run_dir / "comparison.html"
    comparison = (
        _body_of(comparison_path.read_text())
        if comparison_path.is_file()
        else "<p>(no comparison: the run stopped early)</p>"
    )
    decision_path = summary.run_dir / "decision.json"
    decision = json.loads(decision_path.read_text()) if decision_path.is_file() else None
    production = (
        f"&mdash; production model <code>{html.escape(summary.production_tag)}</code>"
        if summary.production_tag
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>longrec run {html.escape(summary.run_dir.name)}</title>
<style>{PAGE_STYLE}</style>
</head><body>
<h1>longrec training run <code>{html.escape(summary.run_dir.name)}</code></h1>
<p>Status: <b>{status}</b>. Dataset <code>{html.escape(params.dataset)}</code>, models
<code>{html.escape(", ".join(params.models))}</code>, L={params.max_history_length}, wall time
{summary.wall_seconds:.0f} s.</p>
<h2>Decision {production}</h2>{decision_html(decision)}
<h2>Comparison</h2>{comparison}
{tuning_html(summary.run_dir / "tuning.json")}
<h2>Files</h2><ul>{"".join(rows)}</ul>
</body></html>
"""
    path = summary.run_dir / "index.html"
    path.write_text(page)
    return path
