"""Evidently 0.7 reports for a rollout step: drift of the serving-time inputs against the training reference
(the alert), and the per-arm quality of outputs (candidate against control). HTML and JSON for each.

Inputs are what the ranker says its model saw (history length, recency), logged per request. The reference
is the same quantities over the validation period of the training pipeline's time split, shaped exactly as
the replay shapes requests: the most recent traffic the model was selected on. The training period itself
would be the wrong yardstick: early events have short histories by construction."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longrec.rollout.assignment import CANDIDATE, CONTROL

logger = logging.getLogger(__name__)

INPUT_COLUMNS = ("history_length", "recency_s")
# Population stability index, alert at 0.25 (the usual "significant shift" level). Evidently's default for
# large samples (normed Wasserstein at 0.1) already fires on ML-100k's ordinary validation -> test change
# of history lengths; tests/test_rollout_replay.py checks PSI stays quiet there and fires on cut histories.
INPUT_DRIFT = {"num_method": "psi", "num_threshold": 0.25}
OUTPUT_COLUMNS = ("top_score", "top_item_log_popularity", "latency_ms", "clicked", "ndcg")


def reference_frame(dataset, max_history_length: int = 50) -> pd.DataFrame:
    """Inputs of the validation-period interactions: history_length, recency_s."""
    from longrec.rollout.replay import replay_requests

    requests = replay_requests(dataset, n_negatives=1, max_history_length=max_history_length, period="valid")
    return pd.DataFrame(
        {
            "history_length": [r.history_length for r in requests],
            "recency_s": [np.nan if r.recency_s is None else r.recency_s for r in requests],
        }
    )


def item_popularity(dataset, train_fraction: float = 0.8) -> np.ndarray:
    """Interaction count of every item id over the training period of the time split."""
    events = dataset.events
    t_min, t_max = events["timestamp"].min(), events["timestamp"].max()
    train = events[events["timestamp"] < t_min + train_fraction * (t_max - t_min)]
    return np.bincount(train["item_id"].to_numpy(np.int64), minlength=dataset.n_items)


def serving_frame(requests: pd.DataFrame, popularity: np.ndarray | None = None) -> pd.DataFrame:
    """One row per successful logged request: arm, inputs and outputs."""
    ok = requests[requests["status"] == "ok"]
    top_item = ok["items"].map(lambda items: items[0] if items else None)

    def log_popularity(item):
        if popularity is None or item is None or not 0 <= int(item) < len(popularity):
            return np.nan
        return float(np.log1p(popularity[int(item)]))

    position = ok["position"].to_numpy(float)
    ndcg = np.where(position > 0, 1.0 / np.log2(np.maximum(position, 1) + 1), 0.0)
    return pd.DataFrame(
        {
            "arm": ok["arm"].to_numpy(),
            "history_length": pd.to_numeric(ok["history_length"], errors="coerce").to_numpy(float),
            "recency_s": pd.to_numeric(ok["recency_s"], errors="coerce").to_numpy(float),
            "top_score": ok["scores"].map(lambda scores: scores[0] if scores else np.nan).to_numpy(float),
            "top_item_log_popularity": top_item.map(log_popularity).to_numpy(float),
            "latency_ms": ok["latency_ms"].to_numpy(float),
            "clicked": ok["clicked"].to_numpy(float),
            "ndcg": np.where(np.isnan(position), np.nan, ndcg),
        }
    )


@dataclass
class DriftResult:
    """Per-column drift of the inputs, the alert, and where the reports are."""

    alert: bool
    columns: dict  # column -> {method, value, threshold, drifted}
    rows: int
    reference_rows: int
    html: str | None = None
    json: str | None = None
    quality_html: str | None = None
    quality_json: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _value_drift(snapshot: dict) -> dict:
    """{column: {method, value, threshold, drifted}} from a snapshot's ValueDrift metrics."""
    columns = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        method, value, threshold = config.get("method", ""), metric["value"], config.get("threshold")
        # p-value methods drift below the threshold, distance methods at or above it
        drifted = value < threshold if "p_value" in method else value >= threshold
        columns[config["column"]] = {
            "method": method,
            "value": value,
            "threshold": threshold,
            "drifted": bool(drifted),
        }
    return columns


def _run(columns: list[str], current: pd.DataFrame, reference: pd.DataFrame, **drift_options):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=columns)
    return Report([DataDriftPreset(columns=columns, **drift_options)]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )


def drift_reports(
    requests: pd.DataFrame,
    reference: pd.DataFrame,
    out_dir: str | Path,
    *,
    popularity: np.ndarray | None = None,
    min_rows: int = 30,
) -> DriftResult:
    """Write drift.html/.json (served inputs vs reference) and quality.html/.json (candidate vs control
    outputs) into `out_dir`; the alert is set when any input column drifts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    serving = serving_frame(requests, popularity)
    inputs = [
        c
        for c in INPUT_COLUMNS
        if serving[c].notna().sum() >= min_rows and reference[c].notna().sum() >= min_rows
    ]
    result = DriftResult(alert=False, columns={}, rows=len(serving), reference_rows=len(reference))
    if not inputs:
        result.note = f"too few served requests with logged inputs (need {min_rows}); no drift report"
        return result
    snapshot = _run(inputs, serving, reference, **INPUT_DRIFT)
    snapshot.save_html(str(out_dir / "drift.html"))
    (out_dir / "drift.json").write_text(snapshot.json())
    result.columns = _value_drift(snapshot.dict())
    result.alert = any(column["drifted"] for column in result.columns.values())
    result.html, result.json = str(out_dir / "drift.html"), str(out_dir / "drift.json")
    control, candidate = serving[serving["arm"] == CONTROL], serving[serving["arm"] == CANDIDATE]
    outputs = [
        c
        for c in OUTPUT_COLUMNS
        if control[c].notna().sum() >= min_rows and candidate[c].notna().sum() >= min_rows
    ]
    if outputs:
        # "drift" of the candidate's outputs from control's: how differently the two models serve
        quality = _run(outputs, candidate, control)
        quality.save_html(str(out_dir / "quality.html"))
        (out_dir / "quality.json").write_text(quality.json())
        result.quality_html, result.quality_json = (
            str(out_dir / "quality.html"),
            str(out_dir / "quality.json"),
        )
    (out_dir / "drift_summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result
