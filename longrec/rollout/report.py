"""One HTML page per experiment, for a person: the arms, the uplift with its intervals, the sequential test
over time (a plot), SRM, guardrails, the drift of every step with links to its Evidently reports, and the
decision history from the audit log."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from longrec.rollout.analysis import Analysis
from longrec.rollout.state import Experiment

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}
.box{padding:.6em 1em;border-radius:6px;background:#f6f6f6;margin:1em 0}
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{h}</th>" if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def sequential_plot(analysis: Analysis, audit: list[dict], alpha: float) -> str:
    """PNG (base64) of the CTR difference and the always-valid p-value against impressions, with the
    decisions marked where they were taken."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curve = analysis.curve
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    if len(curve):
        x = curve["impressions"].to_numpy()
        top.plot(x, curve["difference"], color="tab:blue")
        top.axhline(0, color="grey", lw=0.8)
        bottom.semilogy(x, np.maximum(curve["always_valid_p"].to_numpy(float), 1e-12), color="tab:purple")
        bottom.axhline(alpha, color="tab:red", ls="--", lw=1, label=f"alpha = {alpha:g}")
        times = curve["ts"].to_numpy(float)
        for row in audit:
            if row["action"] in ("ramp", "hold", "rollback", "promote_decided") and len(times):
                at = x[min(np.searchsorted(times, row["ts"]), len(x) - 1)]
                for axis in (top, bottom):
                    axis.axvline(at, color="grey", ls=":", lw=0.8)
                top.annotate(row["action"].replace("_decided", ""), (at, 1), xycoords=("data", "axes fraction"),
                             rotation=90, va="top", ha="right", fontsize=7)  # fmt: skip
        bottom.legend(loc="lower left")
    else:
        top.text(0.5, 0.5, "no impressions in both arms yet", ha="center", transform=top.transAxes)
    top.set_ylabel("CTR candidate − control")
    bottom.set_ylabel("always-valid p (mSPRT)")
    bottom.set_xlabel("impressions (both arms, in time order)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def render(experiment: Experiment, analysis: Analysis, audit: list[dict], link_base: Path) -> str:
    """The report's HTML; links to step reports are relative to `link_base` (the page's folder)."""

    def link(path: str | None, text: str) -> str:
        if not path:
            return "–"
        return f"<a href='{html.escape(os.path.relpath(path, link_base))}'>{text}</a>"

    status_class = {"promoted": "ok", "rolled_back": "bad"}.get(experiment.status, "")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Rollout {experiment.id}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Rollout experiment {experiment.id} — {html.escape(experiment.dataset)}</h1>",
        f"<div class='box'>Candidate <b>{html.escape(experiment.candidate_tag)}</b> against control "
        f"<b>{html.escape(str(experiment.control_tag))}</b>. Status <span class='{status_class}'>"
        f"<b>{experiment.status}</b></span>, candidate traffic <b>{experiment.traffic:g} %</b> (schedule "
        f"{' → '.join(f'{s:g}' for s in experiment.schedule)} %). Sticky bucketing: sha256(salt:user) mod "
        f"10,000, salt <code>{experiment.salt}</code>. Started {experiment.summary()['created_at']}.</div>",
        "<h2>Arms</h2>",
    ]
    rows = []
    for arm, m in analysis.arms.items():
        rows.append([arm, m["users"], m["requests"], m["impressions"], m["clicks"], _fmt(m["ctr"]), _fmt(m["hr_at_k"]),
                     _fmt(m["ndcg_at_k"]), _fmt(m["latency_p50_ms"], 1), _fmt(m["latency_p99_ms"], 1),
                     _fmt(m["error_rate"]), _fmt(m["degraded_rate"])])  # fmt: skip
    parts.append(
        _table(
            [
                "arm",
                "users",
                "requests",
                "impressions",
                "clicks",
                "CTR",
                "HR@k",
                "NDCG@k",
                "p50 ms",
                "p99 ms",
                "error rate",
                "degraded rate",
            ],
            rows,
        )  # fmt: skip
    )
    parts.append("<h2>Uplift and the sequential test</h2>")
    c = analysis.comparison
    if c:
        relative = (
            f"; relative {c['relative_uplift']:+.1%} (95 % CI {c['relative_ci_low']:+.1%} .. {c['relative_ci_high']:+.1%})"
            if c["relative_uplift"] is not None else ""
        )  # fmt: skip
        parts.append(
            f"<div class='box'>CTR candidate − control: <b>{c['difference']:+.4f}</b> (95 % fixed-horizon CI "
            f"{c['ci_low']:+.4f} .. {c['ci_high']:+.4f}; always-valid {1 - experiment.test.alpha:.0%} CI "
            f"{c['av_ci_low']:+.4f} .. {c['av_ci_high']:+.4f}){relative}. mSPRT (normal mixture, τ = "
            f"{experiment.test.mixture_sd:g}): Λ = {c['msprt_lambda']:.3g}, always-valid p = "
            f"<b>{c['always_valid_p']:.3g}</b> — {'significant' if c['significant'] else 'not significant'} at "
            f"α = {experiment.test.alpha:g}. The always-valid p may be read at every step without inflating the "
            "false-positive rate; the fixed-horizon interval is valid only at a sample size fixed in advance.</div>"
        )
    else:
        parts.append("<p>No impressions in both arms yet.</p>")
    parts.append(f"<img alt='sequential test over time' src='data:image/png;base64,"
                 f"{sequential_plot(analysis, audit, experiment.test.alpha)}'>")  # fmt: skip
    srm = analysis.srm
    parts += [
        "<h2>Sample ratio mismatch (current stage)</h2>",
        (
            f"<p class='{'bad' if srm['fired'] else 'ok'}'>{srm['control']} control / {srm['candidate']} candidate "
            f"users against an expected {srm['expected_candidate_share']:.0%} candidate: χ² = {srm['chi2']:.2f}, p = "
            f"{srm['p_value']:.3g} — {'FIRED: decisions blocked' if srm['fired'] else 'no mismatch'} "
            f"(level {experiment.test.srm_alpha:g}).</p>"
            if 0 < srm["expected_candidate_share"] < 1
            else f"<p>Not applicable: the candidate serves {experiment.traffic:g} % of users (one arm only).</p>"
        ),
        "<h2>Guardrails (candidate)</h2>",
        _table(
            ["guardrail", "value", "limit", "status"],
            [
                [
                    g["name"],
                    _fmt(g["value"]),
                    html.escape(g["limit"]),
                    "<span class='bad'>BREACHED</span>" if g["breached"] else "<span class='ok'>ok</span>",
                ]
                for g in analysis.guardrails
            ],
        ),  # fmt: skip
        "<h2>Drift of served inputs, per step</h2>",
    ]
    drift_rows = []
    for row in audit:
        drift = row["inputs"].get("drift") if isinstance(row["inputs"], dict) else None
        if not drift:
            continue
        columns = ", ".join(
            f"{name} {col['method']} {col['value']:.3g}{' DRIFT' if col['drifted'] else ''}"
            for name, col in drift["columns"].items()
        ) or html.escape(drift.get("note", ""))
        drift_rows.append([row["time"], f"{row['traffic_before']:g} %",
                           "<span class='bad'>ALERT</span>" if drift["alert"] else "<span class='ok'>ok</span>",
                           html.escape(columns), link(drift.get("html"), "drift"),
                           link(drift.get("quality_html"), "per-arm quality")])  # fmt: skip
    parts.append(
        _table(
            ["step", "traffic", "alert", "columns (vs the training reference)", "Evidently", "Evidently"],
            drift_rows,
            left=4,
        )
        if drift_rows
        else "<p>No drift reports yet (steps run with drift reports write them).</p>"
    )
    parts.append("<h2>Decision history (audit log)</h2>")
    history = []
    for row in audit:
        before = "" if row["traffic_before"] is None else f"{row['traffic_before']:g}"
        traffic = f"{before} → {row['traffic_after']:g} %"
        reason = html.escape(row["reason"])
        history.append(
            [
                row["seq"],
                row["time"],
                html.escape(row["actor"]),
                row["action"],
                traffic,
                row["status_after"],
                reason,
            ]
        )
    parts.append(_table(["#", "time", "actor", "action", "traffic", "status", "reason"], history, left=7))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(rollout, experiment: Experiment, output: str | Path | None = None) -> Path:
    """Write the experiment's report (default `<rollout dir>/reports/experiment-<id>/report.html`)."""
    from longrec.rollout.operate import experiment_dir

    output = Path(output) if output else experiment_dir(rollout, experiment) / "report.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    analysis = rollout.analyse(experiment)
    output.write_text(
        render(experiment, analysis, rollout.store.audit(experiment.id), output.parent.resolve())
    )
    return output
