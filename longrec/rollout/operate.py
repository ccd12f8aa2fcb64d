"""A rollout step with its evidence (analysis.json, Evidently drift and quality reports), and the replayed
A/B loop (replay a batch at the current share, step, repeat) that `longrec rollout replay` and the tests run.

Reports live in `<rollout dir>/reports/experiment-<id>/step-<n>/`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from longrec.rollout.decide import PROMOTE, ROLLBACK, Decision, Rollout
from longrec.rollout.requestlog import RequestLogger, read_requests
from longrec.rollout.state import Experiment

logger = logging.getLogger(__name__)


def experiment_dir(rollout: Rollout, experiment: Experiment) -> Path:
    return rollout.state_dir / "reports" / f"experiment-{experiment.id}"


def load_reference(
    rollout: Rollout, experiment: Experiment, dataset_source: str | None = None, max_history_length: int = 50
) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The drift reference and item popularity of the experiment's dataset, built once and kept beside its
    reports. `dataset_source` is what `load_dataset` reads (default: the experiment's dataset name); None
    when it cannot be loaded (the step then runs without drift reports)."""
    from longrec.data.datasets import DatasetError, load_dataset
    from longrec.rollout.drift import item_popularity, reference_frame

    folder = experiment_dir(rollout, experiment)
    reference_path, popularity_path = folder / "reference.parquet", folder / "item_popularity.npy"
    if reference_path.is_file() and popularity_path.is_file():
        return pd.read_parquet(reference_path), np.load(popularity_path)
    source = dataset_source or experiment.dataset.split("@")[0]
    try:
        dataset = load_dataset(source)
    except (DatasetError, OSError, ValueError) as error:
        logger.warning("no drift reference: %s", error)
        return None
    reference, popularity = reference_frame(dataset, max_history_length), item_popularity(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(reference_path)
    np.save(popularity_path, popularity)
    return reference, popularity


@dataclass
class StepResult:
    """One step: the decision, its analysis, the drift summary and where the step's files are."""

    decision: Decision
    analysis: object
    drift: dict | None
    folder: Path


def step_with_reports(
    rollout: Rollout,
    *,
    reference: tuple[pd.DataFrame, np.ndarray] | None = None,
    dataset_source: str | None = None,
    drift: bool = True,
) -> StepResult:
    """Analyse, write the step's reports, decide and act (Rollout.step). `drift=False` skips Evidently."""
    from longrec.rollout.analysis import analyse
    from longrec.rollout.drift import drift_reports

    experiment = rollout.require_active()
    if drift and reference is None:
        reference = load_reference(rollout, experiment, dataset_source)
    done = sum(
        1
        for row in rollout.store.audit(experiment.id)
        if row["action"] in ("hold", "ramp", "rollback", "promote_decided")
    )
    folder = experiment_dir(rollout, experiment) / f"step-{done + 1:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    requests = read_requests(rollout.request_log, experiment.id)
    analysis = analyse(experiment, requests)
    (folder / "analysis.json").write_text(json.dumps(analysis.to_dict(), indent=2, default=float))
    summary = None
    if drift and reference is not None:  # (None: no dataset to build the reference from)
        # inputs of the current stage only: a fix shows up at the next ramp, old traffic does not mask it
        stage = requests[requests["ts"] >= experiment.stage_started_at]
        summary = drift_reports(stage, reference[0], folder, popularity=reference[1]).to_dict()
    artifacts = {"folder": str(folder), "analysis": str(folder / "analysis.json")}
    if summary:
        artifacts.update(
            {k: summary[k] for k in ("html", "json", "quality_html", "quality_json") if summary.get(k)}
        )
    decision, analysis = rollout.step(analysis=analysis, drift=summary, artifacts=artifacts)
    (folder / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2))
    logger.info("step %s: %s (%s)", folder.name, decision.action, decision.reason)
    return StepResult(decision, analysis, summary, folder)


@dataclass
class AbRun:
    """What a replayed A/B did, step by step."""

    steps: list[dict] = field(default_factory=list)
    final_status: str = ""
    final_traffic: float = 0.0


def replayed_ab(
    rollout: Rollout,
    base_url: str,
    requests: list,
    *,
    per_step: int = 1000,
    max_steps: int = 10,
    top_k: int = 10,
    click_model: str = "shown",
    dataset_source: str | None = None,
    progress: bool = True,
    seed: int = 0,
    drift: bool = True,
) -> AbRun:
    """Replay `per_step` requests (cycling through `requests`), step, and repeat until the experiment is
    promoted or rolled back, or `max_steps` steps were taken."""
    from longrec.rollout.replay import replay

    log = RequestLogger(rollout.request_log)
    run = AbRun()
    experiment = rollout.require_active()
    reference = load_reference(rollout, experiment, dataset_source) if drift else None
    cursor = 0
    try:
        for number in range(max_steps):
            experiment = rollout.require_active()
            batch = [requests[(cursor + i) % len(requests)] for i in range(per_step)]
            cursor += per_step
            summary = replay(
                base_url, batch, log, top_k=top_k, click_model=click_model, experiment_id=experiment.id,
                seed=seed + number, progress=progress,
            )  # fmt: skip
            result = step_with_reports(rollout, reference=reference, drift=drift)
            run.steps.append(
                {
                    "traffic": experiment.traffic,
                    "replay": summary.to_dict(),
                    "decision": result.decision.to_dict(),
                    "drift_alert": bool(result.drift and result.drift["alert"]),
                    "folder": str(result.folder),
                }
            )
            if result.decision.action in (PROMOTE, ROLLBACK):
                break
    finally:
        log.close()
    final = rollout.store.get(experiment.id)
    run.final_status, run.final_traffic = final.status, final.traffic
    return run


# --------------------------------------------------------------------- the KFP rollout pipeline's three steps
def collect(
    rollout: Rollout,
    out_path: str | Path,
    *,
    base_url: str = "",
    replay_count: int = 0,
    dataset_source: str | None = None,
    top_k: int = 10,
    seed: int = 0,
) -> int:
    """Optionally replay `replay_count` requests against `base_url` (traffic when there are no live users),
    then export the active experiment's request log as parquet. Returns the number of rows exported."""
    from longrec.data.datasets import load_dataset
    from longrec.rollout.replay import replay, replay_requests

    experiment = rollout.require_active()
    if replay_count > 0:
        if not base_url:
            raise ValueError("replay_count > 0 needs the ranker's base_url")
        source = load_dataset(dataset_source or experiment.dataset.split("@")[0])
        requests = replay_requests(source, seed=seed)
        # each scheduled run continues where the requests logged so far leave off
        offset = len(read_requests(rollout.request_log, experiment.id))
        batch = [requests[(offset + i) % len(requests)] for i in range(replay_count)]
        log = RequestLogger(rollout.request_log)
        try:
            replay(
                base_url,
                batch,
                log,
                top_k=top_k,
                experiment_id=experiment.id,
                seed=seed + offset,
                progress=False,
            )
        finally:
            log.close()
    frame = read_requests(rollout.request_log, experiment.id)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(**{c: frame[c].map(json.dumps) for c in ("items", "scores", "flags")}).to_parquet(out_path)
    return len(frame)


def read_collected(path: str | Path) -> pd.DataFrame:
    """A request log exported by `collect`."""
    frame = pd.read_parquet(path)
    for column in ("items", "scores", "flags"):
        frame[column] = frame[column].map(json.loads)
    return frame


def analyse_collected(
    rollout: Rollout, requests_path: str | Path, out_dir: str | Path, *, dataset_source: str | None = None,
    drift: bool = True,
) -> dict:  # fmt: skip
    """Analysis and drift reports of an exported log, written to `out_dir` (analysis.json, drift.*,
    quality.*); returns {"analysis": ..., "drift": ...} as written to `out_dir/step_inputs.json`."""
    from longrec.rollout.analysis import analyse
    from longrec.rollout.drift import drift_reports

    experiment = rollout.require_active()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = read_collected(requests_path)
    analysis = analyse(experiment, requests)
    summary = None
    reference = load_reference(rollout, experiment, dataset_source) if drift else None
    if reference is not None:
        stage = requests[requests["ts"] >= experiment.stage_started_at]
        summary = drift_reports(stage, reference[0], out_dir, popularity=reference[1]).to_dict()
    payload = {"analysis": analysis.to_dict(), "drift": summary, "updated_at": experiment.updated_at}
    (out_dir / "step_inputs.json").write_text(json.dumps(payload, indent=2, default=float))
    return payload


def decide_collected(rollout: Rollout, step_inputs_path: str | Path) -> Decision:
    """Decide and act on an analysis made by `analyse_collected`; refuses a stale one (the experiment
    changed since it was analysed)."""
    from longrec.rollout.analysis import Analysis
    from longrec.rollout.state import RolloutError

    payload = json.loads(Path(step_inputs_path).read_text())
    experiment = rollout.require_active()
    if (
        payload["analysis"]["experiment_id"] != experiment.id
        or payload["updated_at"] != experiment.updated_at
    ):
        raise RolloutError(
            f"the analysis is of experiment {payload['analysis']['experiment_id']} as it was before its last "
            "change; collect and analyse again"
        )
    analysis = Analysis.from_dict(payload["analysis"])
    drift = payload["drift"]
    artifacts = {
        k: drift[k] for k in ("html", "json", "quality_html", "quality_json") if drift and drift.get(k)
    }
    decision, _ = rollout.step(analysis=analysis, drift=drift, artifacts=artifacts)
    return decision
