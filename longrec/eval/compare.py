"""Evaluate trained models (and the production model) on one test split and compare them against DIN."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longrec.data.training_set import read_training_set, tensors_by_split
from longrec.eval.ctr import ctr_metrics, rela_impr
from longrec.registry.store import CHECKPOINT_FILE, EVALUATION_FILE, MODEL_META_FILE

logger = logging.getLogger(__name__)

BASELINE = "din"


@dataclass
class ModelScore:
    """One row of the comparison."""

    label: str  # model name, or "production (<tag>)"
    model_name: str
    valid_auc: float
    test_metrics: dict
    model_dir: Path | None = None


@dataclass
class ComparisonResult:
    """Every model's test metrics, the candidate chosen by validation AUC, and production's AUC."""

    rows: list[ModelScore]
    candidate_name: str
    candidate_auc: float
    candidate_metrics: dict
    production_auc: float  # -1 when there is no comparable production model
    test_set_fingerprint: str
    markdown: str = ""
    notes: list[str] = field(default_factory=list)


def test_set_fingerprint(arrays: dict) -> str:
    """Hash of the test samples, so two AUCs are only compared when they come from the same samples."""
    digest = hashlib.sha256()
    for key in ("user_id", "target_item", "label", "history_items"):
        digest.update(np.ascontiguousarray(arrays[key].numpy()).tobytes())
    return digest.hexdigest()[:16]


def _score(model_dir: Path, test) -> tuple[dict, dict]:
    from longrec.train.trainer import load_checkpoint, predict

    model, meta = load_checkpoint(model_dir / CHECKPOINT_FILE)
    logits = predict(model, test)
    metrics = ctr_metrics(test["user_id"].numpy(), test["label"].numpy(), logits)
    return metrics, meta


def _production_row(
    registry_dir: str | Path | None, dataset: str | None, spec, test
) -> tuple[ModelScore | None, str]:
    if registry_dir is None or dataset is None:
        return None, "no registry given: production not compared"
    from longrec.registry.store import ModelRegistry

    registry = ModelRegistry(registry_dir)
    pointer = registry.production(dataset)
    if pointer is None:
        return None, f"no production model for {dataset} yet"
    model_dir = registry.model_path(pointer["tag"])
    meta = json.loads((model_dir / MODEL_META_FILE).read_text())
    theirs = meta.get("feature_spec", {})
    ours = {
        k: getattr(spec, k)
        for k in ("n_users", "n_items", "n_genres", "n_ages", "n_genders", "n_occupations")
    }
    if any(theirs.get(k) != v for k, v in ours.items()):
        # Different vocabularies (another slice of the data): its AUC on these samples is meaningless.
        return None, f"production {pointer['tag']} was trained on other vocabularies: not comparable"
    metrics, _ = _score(model_dir, test)
    row = ModelScore(f"production ({pointer['tag']})", meta["model_name"], float("nan"), metrics, model_dir)
    return row, f"production {pointer['tag']} rescored on these test samples"


def render_markdown(rows: list[ModelScore], candidate: str, notes: list[str]) -> str:
    """The comparison table: AUC, GAUC, LogLoss and RelaImpr against DIN on the test split."""
    base = next((r for r in rows if r.model_name == BASELINE and not r.label.startswith("production")), None)
    lines = [
        "| model | valid AUC | test AUC | test GAUC | test LogLoss | RelaImpr vs DIN | test samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.test_metrics
        impr = f"{rela_impr(m['auc'], base.test_metrics['auc']):+.2f}%" if base else "n/a"
        valid = "" if math.isnan(row.valid_auc) else f"{row.valid_auc:.4f}"
        name = f"**{row.label}** (candidate)" if row.label == candidate else row.label
        lines.append(
            f"| {name} | {valid} | {m['auc']:.4f} | {m['gauc']:.4f} | {m['logloss']:.4f} | {impr} | {m['n_samples']} |"
        )
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def render_html(markdown: str, title: str = "longrec model comparison") -> str:
    """A standalone HTML page of the comparison table (for the KFP UI's HTML viewer)."""
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    notes = [line[2:] for line in markdown.splitlines() if line.startswith("- ")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    body = [[c.strip().replace("**", "") for c in line.strip("|").split("|")] for line in table_lines[2:]]
    head_html = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{head_html}</tr>{rows_html}</table><ul>{notes_html}</ul>"
        "</body></html>"
    )


def compare_models(
    training_set_dir: str | Path,
    model_dirs: list[str | Path],
    registry_dir: str | Path | None,
    comparison_md: str | Path | None = None,
    report_html: str | Path | None = None,
    metrics_json: str | Path | None = None,
    candidate_dir: str | Path | None = None,
) -> ComparisonResult:
    """Score every model on the test split, pick the candidate by validation AUC, rescore production.

    Writes the Markdown/HTML table, a metrics JSON and (with candidate_dir) a copy of the candidate's folder
    with its evaluation.json, ready to register.
    """
    frame, spec, meta = read_training_set(training_set_dir)
    splits = tensors_by_split(frame, spec)
    if "test" not in splits:
        raise ValueError(f"training set {training_set_dir} has no test split")
    test = splits["test"]
    fingerprint = test_set_fingerprint(
        {k: test[k] for k in ("user_id", "target_item", "label", "history_items")}
    )
    rows = []
    for model_dir in map(Path, model_dirs):
        metrics, ckpt_meta = _score(model_dir, test)
        model_meta = (
            json.loads((model_dir / MODEL_META_FILE).read_text())
            if (model_dir / MODEL_META_FILE).is_file()
            else {}
        )
        valid_auc = float(model_meta.get("valid_metrics", {}).get("auc", float("nan")))
        rows.append(
            ModelScore(ckpt_meta["model_name"], ckpt_meta["model_name"], valid_auc, metrics, model_dir)
        )
    if not rows:
        raise ValueError("no models to compare")
    # The candidate is chosen on validation AUC; choosing on test AUC would overfit the test split.
    candidate = max(rows, key=lambda r: -math.inf if math.isnan(r.valid_auc) else r.valid_auc)
    notes = [f"candidate chosen by validation AUC: {candidate.label}", f"test set fingerprint {fingerprint}"]
    production, note = _production_row(registry_dir, meta.get("dataset"), spec, test)
    notes.append(note)
    if production is not None:
        rows.append(production)
    sample_config = meta.get("sample_config", {})
    if sample_config:
        notes.append(
            "split={split}, L={max_history_length}, negatives train/eval={train_negatives}/{eval_negatives} "
            "({negative_sampling})".format(**sample_config)
        )
    markdown = render_markdown(rows, candidate.label, notes)
    result = ComparisonResult(
        rows=rows,
        candidate_name=candidate.model_name,
        candidate_auc=float(candidate.test_metrics["auc"]),
        candidate_metrics=candidate.test_metrics,
        production_auc=float(production.test_metrics["auc"]) if production else -1.0,
        test_set_fingerprint=fingerprint,
        markdown=markdown,
        notes=notes,
    )
    if comparison_md:
        Path(comparison_md).write_text(markdown)
    if report_html:
        Path(report_html).write_text(render_html(markdown))
    if metrics_json:
        payload = {
            "test_set_fingerprint": fingerprint,
            "candidate": candidate.model_name,
            "models": {r.label: {"valid_auc": r.valid_auc, **r.test_metrics} for r in rows},
            "notes": notes,
        }
        Path(metrics_json).write_text(json.dumps(payload, indent=2, default=float))
    if candidate_dir:
        candidate_dir = Path(candidate_dir)
        shutil.copytree(candidate.model_dir, candidate_dir, dirs_exist_ok=True)
        evaluation = {"test_metrics": candidate.test_metrics, "test_set_fingerprint": fingerprint}
        (candidate_dir / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=float))
    return result
