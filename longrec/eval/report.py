"""What a person sees of an evaluation: HTML tables, training curves and ROC curves (self-contained PNGs
inlined as data URIs, so the page works as a KFP HTML artifact and as a file in the run folder)."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from longrec.eval.ctr import rela_impr

__all__ = ["comparison_page", "comparison_table_html", "roc_points", "decision_html", "PAGE_STYLE"]

PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;color:#1a1a1a}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
    "th{background:#eef1f5}td:first-child,th:first-child{text-align:left}"
    "tr.candidate td{font-weight:bold;background:#eaf6ea}tr.production td{background:#f4f0fa}"
    ".promote{color:#0a6b0a}.reject{color:#a00000}img{max-width:100%}"
)


def roc_points(labels: np.ndarray, logits: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """False/true positive rates and thresholds of the ROC curve, thinned to about `max_points`."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    scores = np.asarray(logits, dtype=np.float64)[order]
    hits = labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each score
    tps = np.cumsum(hits)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    probs = 1.0 / (1.0 + np.exp(-scores[distinct]))
    thresholds = np.r_[1.0, probs]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "threshold": thresholds[keep].tolist()}


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def training_curves_png(rows) -> str | None:
    """Validation AUC and training loss by epoch for every trained model."""
    trained = [row for row in rows if getattr(row, "history", None)]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for row in trained:
        epochs = [record["epoch"] for record in row.history]
        left.plot(
            epochs,
            [record.get("valid", {}).get("auc", math.nan) for record in row.history],
            "o-",
            label=row.label,
        )
        right.plot(
            epochs, [record.get("train_loss", math.nan) for record in row.history], "o-", label=row.label
        )
    left.set(title="validation AUC by epoch", xlabel="epoch", ylabel="AUC")
    right.set(title="training loss by epoch", xlabel="epoch", ylabel="BCE (+ model terms)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 tick
    return _png(figure)


def roc_png(result) -> str | None:
    """ROC curves on the test split: the candidate and production (or every model when none)."""
    if result.labels is None or not result.logits:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels_to_plot = [result.candidate_label] + ([result.production_label] if result.production_label else [])
    if not result.production_label:
        labels_to_plot = list(result.logits)
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    for label in labels_to_plot:
        points = roc_points(result.labels, result.logits[label], max_points=400)
        auc = next(r.test_metrics["auc"] for r in result.rows if r.label == label)
        role = " (candidate)" if label == result.candidate_label else ""
        axis.plot(points["fpr"], points["tpr"], label=f"{label}{role}: AUC {auc:.4f}")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(title="ROC, test split", xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    return _png(figure)


def comparison_table_html(result) -> str:
    """The comparison as an HTML table (candidate and production rows marked)."""
    base = next(
        (r for r in result.rows if r.model_name == "din" and not r.label.startswith("production")), None
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "model",
            "valid AUC",
            "test AUC",
            "test GAUC",
            "test LogLoss",
            "RelaImpr vs DIN",
            "test samples",
        )
    )
    body = []
    for row in result.rows:
        m = row.test_metrics
        css = (
            "candidate"
            if row.label == result.candidate_label
            else ("production" if row.label == result.production_label else "")
        )
        impr = f"{rela_impr(m['auc'], base.test_metrics['auc']):+.2f}%" if base else "n/a"
        valid = "" if math.isnan(row.valid_auc) else f"{row.valid_auc:.4f}"
        name = html.escape(row.label) + (" (candidate)" if css == "candidate" else "")
        body.append(
            f"<tr class='{css}'><td>{name}</td><td>{valid}</td><td>{m['auc']:.4f}</td><td>{m['gauc']:.4f}</td>"
            f"<td>{m['logloss']:.4f}</td><td>{impr}</td><td>{m['n_samples']}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def lift_html(lift: dict | None, production_tag: str | None) -> str:
    if not lift:
        return ""
    return (
        f"<h3>Candidate vs production <code>{html.escape(str(production_tag))}</code></h3>"
        f"<table><tr><th>lift (candidate − production)</th><th>estimate</th><th>{lift['confidence']:.0%} interval</th></tr>"
        f"<tr><td>AUC</td><td>{lift['auc_lift']:+.4f}</td>"
        f"<td>[{lift['auc_lift_low']:+.4f}, {lift['auc_lift_high']:+.4f}]</td></tr>"
        f"<tr><td>LogLoss (&gt; 0 is worse)</td><td>{lift['logloss_lift']:+.4f}</td>"
        f"<td>[{lift['logloss_lift_low']:+.4f}, {lift['logloss_lift_high']:+.4f}]</td></tr>"
        f"<tr><td>GAUC</td><td>{lift['gauc_lift']:+.4f}</td><td></td></tr></table>"
        f"<p>Paired bootstrap over {lift['n_users']} users, {lift['n_bootstrap']} replicates.</p>"
    )


def decision_html(decision: dict | None) -> str:
    """The gate's verdict and reasons as HTML."""
    if not decision:
        return "<p>(no decision: the run stopped before the gate)</p>"
    verdict = decision["verdict"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.get("reasons", []))
    return (
        f"<p class='{verdict}'><b>{verdict.upper()}</b> {html.escape(decision.get('candidate_name', ''))}</p>"
        f"<ul>{reasons}</ul>" + lift_html(decision.get("lift"), decision.get("production_tag"))
    )


def comparison_sections(result) -> str:
    """Table, notes, lift, curves: the body shared by the evaluation page and the run page."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    lift = lift_html(result.lift, result.production.get("tag"))
    # Marked so the run page, which shows the lift with the decision, can leave this copy out.
    parts = [comparison_table_html(result), f"<ul>{notes}</ul>", f"<!--lift-->{lift}<!--/lift-->"]
    roc = roc_png(result)
    if roc:
        parts.append(f"<h3>ROC curves</h3><img alt='ROC curves' src='{roc}'>")
    curves = training_curves_png(result.rows)
    if curves:
        parts.append(f"<h3>Training curves</h3><img alt='training curves' src='{curves}'>")
    return "".join(parts)


def comparison_page(result, title: str = "longrec model comparison") -> str:
    """A standalone HTML page of the evaluation (the KFP UI shows it as the evaluate task's HTML artifact)."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{comparison_sections(result)}</body></html>"
    )
