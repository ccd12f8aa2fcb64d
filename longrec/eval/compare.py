"""Evaluate trained models (and the production model) on one test split and compare them against DIN."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longrec.data.training_set import read_training_set, tensors_by_split
from longrec.eval.ctr import ctr_metrics, rela_impr
from longrec.model_files import CHECKPOINT_FILE, EVALUATION_FILE, MODEL_META_FILE, ProductionModel

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
    history: list = field(default_factory=list)  # per-epoch training record (train loss, valid metrics)


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
    production: dict = field(default_factory=dict)  # ProductionComparison.to_dict()
    lift: dict | None = None  # PairedLift.to_dict() when production was comparable
    logits: dict = field(default_factory=dict)  # row label -> test logits (for ROC curves)
    labels: np.ndarray | None = None
    candidate_label: str = ""
    production_label: str | None = None
    identity: dict = field(default_factory=dict)

    def gate_inputs(self) -> dict:
        """Everything the promotion gate decides on, as one JSON-able dict."""
        return {
            "track": self.identity.get("track"),
            "sample_identity": self.identity,
            "test_set_fingerprint": self.test_set_fingerprint,
            "candidate": {"name": self.candidate_name, "metrics": self.candidate_metrics},
            "production": self.production,
            "lift": self.lift,
        }


def test_set_fingerprint(arrays: dict) -> str:
    """Hash of the test samples, so two AUCs are only compared when they come from the same samples."""
    digest = hashlib.sha256()
    for key in ("user_id", "target_item", "label", "history_items"):
        digest.update(np.ascontiguousarray(arrays[key].numpy()).tobytes())
    return digest.hexdigest()[:16]


def _score(model_dir: Path, test) -> tuple[dict, dict, np.ndarray]:
    from longrec.eval.predict import predict
    from longrec.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(model_dir / CHECKPOINT_FILE)
    logits = predict(model, test)
    metrics = ctr_metrics(test["user_id"].numpy(), test["label"].numpy(), logits)
    return metrics, meta, logits


# What makes two test sets the same samples: a production model is compared only when all of these match.
IDENTITY_KEYS = ("dataset_fingerprint", "split", "max_history_length", "eval_negatives", "negative_sampling")


def sample_identity(training_set_meta: dict) -> dict:
    """The comparability key of a training set: dataset content, split, L and evaluation negatives."""
    config = training_set_meta.get("sample_config", {})
    return {
        "track": training_set_meta.get("dataset_track", training_set_meta.get("dataset")),
        "dataset_fingerprint": training_set_meta.get("dataset_fingerprint"),
        "split": config.get("split"),
        "max_history_length": config.get("max_history_length"),
        "eval_negatives": config.get("eval_negatives"),
        "negative_sampling": config.get("negative_sampling"),
    }


def identity_mismatches(ours: dict, theirs: dict) -> list[str]:
    """Human-readable differences between two sample identities (empty when comparable)."""
    return [
        f"{key} {theirs.get(key)!r} vs this run's {ours.get(key)!r}"
        for key in IDENTITY_KEYS
        if theirs.get(key) != ours.get(key)
    ]


@dataclass
class ProductionComparison:
    """What the gate needs to know of production: none, comparable (with its scores) or not, and why."""

    status: str  # "none" | "comparable" | "not_comparable"
    tag: str | None = None
    reason: str = ""
    row: ModelScore | None = None
    logits: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "tag": self.tag,
            "reason": self.reason,
            "metrics": self.row.test_metrics if self.row else None,
        }


def _production(
    production: ProductionModel | None, identity: dict, test, given: bool
) -> ProductionComparison:
    track = identity.get("track")
    if not given:
        return ProductionComparison("none", reason="no registry given: production not compared")
    if production is None:
        return ProductionComparison("none", reason=f"no production model for {track} yet")
    tag = production.tag
    if production.unavailable:
        return ProductionComparison(
            "not_comparable", tag, f"production {tag} is unavailable: {production.unavailable}"
        )
    try:
        meta = production.metadata
        theirs = meta.get("sample_identity") or sample_identity(meta.get("training_set", {}))
        mismatches = identity_mismatches(identity, theirs)
        if mismatches:
            return ProductionComparison(
                "not_comparable",
                tag,
                f"production {tag} was evaluated on other samples ({'; '.join(mismatches)}): its AUC on "
                "these samples would not be a fair comparison",
            )
        metrics, ckpt_meta, logits = _score(production.path, test)
    except Exception as error:  # unreadable files: never promote over what could not be scored
        return ProductionComparison(
            "not_comparable", tag, f"production {tag} could not be rescored: {type(error).__name__}: {error}"
        )
    row = ModelScore(f"production ({tag})", ckpt_meta["model_name"], float("nan"), metrics, production.path)
    return ProductionComparison(
        "comparable", tag, f"production {tag} rescored on these test samples", row, logits
    )


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


_NOT_GIVEN = object()


def compare_models(
    training_set_dir: str | Path,
    model_dirs: list[str | Path],
    production: ProductionModel | None = _NOT_GIVEN,
    comparison_md: str | Path | None = None,
    report_html: str | Path | None = None,
    metrics_json: str | Path | None = None,
    candidate_dir: str | Path | None = None,
    gate_inputs_json: str | Path | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
) -> ComparisonResult:
    """Score every model on the test split, pick the candidate by validation AUC, rescore production.

    ``production`` is what the registry handed over for this training set's track (``None``: the track
    has no production model yet; left out: no registry, nothing compared). The evaluation decides
    whether it is comparable; it never reads the registry itself.

    Writes the Markdown/HTML table, a metrics JSON, the gate's inputs (candidate metrics, production's
    comparability and the paired lift with its interval) and (with candidate_dir) a copy of the candidate's
    folder with its evaluation.json, ready to register.
    """
    from longrec.eval.paired import paired_lift

    frame, spec, meta = read_training_set(training_set_dir)
    splits = tensors_by_split(frame, spec)
    if "test" not in splits:
        raise ValueError(f"training set {training_set_dir} has no test split")
    test = splits["test"]
    fingerprint = test_set_fingerprint(
        {k: test[k] for k in ("user_id", "target_item", "label", "history_items")}
    )
    identity = sample_identity(meta)
    user_ids, labels = test["user_id"].numpy(), test["label"].numpy()
    rows, logits_by_label = [], {}
    for model_dir in map(Path, model_dirs):
        metrics, ckpt_meta, logits = _score(model_dir, test)
        model_meta = (
            json.loads((model_dir / MODEL_META_FILE).read_text())
            if (model_dir / MODEL_META_FILE).is_file()
            else {}
        )
        valid_auc = float(model_meta.get("valid_metrics", {}).get("auc", float("nan")))
        row = ModelScore(ckpt_meta["model_name"], ckpt_meta["model_name"], valid_auc, metrics, model_dir)
        row.history = model_meta.get("history", [])
        rows.append(row)
        logits_by_label[row.label] = logits
    if not rows:
        raise ValueError("no models to compare")
    # The candidate is chosen on validation AUC; choosing on test AUC would overfit the test split.
    candidate = max(rows, key=lambda r: -math.inf if math.isnan(r.valid_auc) else r.valid_auc)
    notes = [f"candidate chosen by validation AUC: {candidate.label}", f"test set fingerprint {fingerprint}"]
    production = _production(
        None if production is _NOT_GIVEN else production, identity, test, production is not _NOT_GIVEN
    )
    notes.append(production.reason)
    lift = None
    if production.row is not None:
        rows.append(production.row)
        logits_by_label[production.row.label] = production.logits
        lift = paired_lift(
            user_ids, labels, logits_by_label[candidate.label], production.logits, n_bootstrap, confidence
        )
        notes.append(
            f"AUC lift over production {lift.auc_lift:+.4f}, {confidence:.0%} interval "
            f"[{lift.auc_lift_low:+.4f}, {lift.auc_lift_high:+.4f}] (paired bootstrap over "
            f"{lift.n_users} users, {lift.n_bootstrap} replicates); LogLoss lift {lift.logloss_lift:+.4f}, "
            f"GAUC lift {lift.gauc_lift:+.4f}"
        )
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
        production_auc=float(production.row.test_metrics["auc"]) if production.row else -1.0,
        test_set_fingerprint=fingerprint,
        markdown=markdown,
        notes=notes,
        production=production.to_dict(),
        lift=lift.to_dict() if lift else None,
        logits=logits_by_label,
        labels=labels,
        candidate_label=candidate.label,
        production_label=production.row.label if production.row else None,
        identity=identity,
    )
    if comparison_md:
        Path(comparison_md).write_text(markdown)
    if report_html:
        from longrec.eval.report import comparison_page

        Path(report_html).write_text(comparison_page(result))
    if metrics_json:
        payload = {
            "test_set_fingerprint": fingerprint,
            "sample_identity": identity,
            "candidate": candidate.model_name,
            "models": {r.label: {"valid_auc": r.valid_auc, **r.test_metrics} for r in rows},
            "production": production.to_dict(),
            "lift": result.lift,
            "notes": notes,
        }
        Path(metrics_json).write_text(json.dumps(payload, indent=2, default=float))
    if gate_inputs_json:
        Path(gate_inputs_json).write_text(json.dumps(result.gate_inputs(), indent=2, default=float))
    if candidate_dir:
        candidate_dir = Path(candidate_dir)
        shutil.copytree(candidate.model_dir, candidate_dir, dirs_exist_ok=True)
        evaluation = {
            "test_metrics": candidate.test_metrics,
            "test_set_fingerprint": fingerprint,
            "sample_identity": identity,
        }
        (candidate_dir / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=float))
    return result
