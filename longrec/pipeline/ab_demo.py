"""The end of `make run`: a short replayed A/B of the newly promoted model against the model it replaced
(or, on a first run, against this run's DIN), through the real ranker service — both versions loaded,
users routed by the experiment's sticky buckets, test-period interactions replayed as requests, the
rollout stepping (ramp / hold / promote / roll back) after each batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["replayed_ab_after_run"]


AB_CONTROL_MARKER = "ab_control_tag.txt"


def _control_for(registry, track: str, candidate: str, kfp_root: Path, events_dir: Path, echo) -> str | None:
    """The model the candidate is tested against: the one it replaced, else this run's DIN (registered)."""
    pointer = registry.production(track)
    if pointer and pointer.get("previous") and pointer["previous"] != candidate:
        return pointer["previous"]
    if registry.stored(candidate).metadata.get("model_name") == "din":
        return None
    for model_dir in sorted(kfp_root.rglob("train-model/model")):
        meta = model_dir / "model_meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("model_name") == "din":
            if not (model_dir / "evaluation.json").is_file():  # the registry stores evaluated models
                (model_dir / "evaluation.json").write_text(json.dumps({"test_metrics": {}}))
            tag = _registered_once(registry, model_dir, events_dir)
            echo(f"A/B: first production model for {track}: testing it against this run's DIN ({tag})")
            return tag
    return None


def _registered_once(registry, model_dir: Path, events_dir: Path) -> str:
    """This run's DIN as a registry version, registered on the demo's first call only: a marker beside the
    model keeps its tag, so running the demo again on the same run adds no duplicate versions."""
    from longrec.registry.store import RegistryError

    marker = model_dir / AB_CONTROL_MARKER
    if marker.is_file():
        tag = marker.read_text().strip()
        try:
            registry.stored(tag)
            return tag
        except RegistryError:  # another registry, or the version was removed: register again
            pass
    tag = registry.register(model_dir, events_dir)
    marker.write_text(tag + "\n")
    return tag


def replayed_ab_after_run(
    run_dir: str | Path,
    registry_root: str | Path,
    port: int = 3972,
    traffic: float = 25.0,
    per_step: int = 300,
    max_steps: int = 6,
    echo=print,
) -> dict | None:
    """Start an experiment (candidate = production), serve both arms, replay, step; print every decision."""
    import logging

    from longrec.data.datasets import RecDataset
    from longrec.registry.store import ModelRegistry
    from longrec.rollout.decide import Rollout, RolloutError
    from longrec.rollout.operate import replayed_ab
    from longrec.rollout.replay import replay_requests
    from longrec.rollout.state import default_rollout_dir
    from longrec.serving.run import resolve_target

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per replayed request otherwise
    kfp_root = Path(run_dir) / "kfp"
    events = sorted(kfp_root.rglob("ingest-dataset/events/dataset.json"))
    if not events:
        echo("A/B: the run left no dataset; skipped")
        return None
    events_dir = events[0].parent
    dataset = RecDataset.load(events_dir)
    registry = ModelRegistry(registry_root)
    pointer = registry.production(dataset.track)
    if pointer is None:
        echo(f"A/B: no production model for {dataset.track}; skipped")
        return None
    candidate = pointer["tag"]
    control = _control_for(registry, dataset.track, candidate, kfp_root, events_dir, echo)
    if control is None:
        echo(f"A/B: {candidate} has no earlier model or DIN to be tested against; skipped")
        return None
    state_dir = default_rollout_dir().resolve()
    rollout = Rollout(dataset.track, state_dir=state_dir, registry=registry, actor="make run")
    try:
        # A salt fixed by the pair tested: the same models on the same replay split users the same way,
        # so a rerun of `make run` prints the same A/B (a random salt moved its outcome between runs).
        salt = hashlib.sha256(f"make-run:{control}:{candidate}".encode()).hexdigest()[:16]
        # The control is the replaced model (or this run's DIN), never production: start() warns a CLI
        # user about exactly that, which here is the demo's design and said in its first line.
        decide_log = logging.getLogger("longrec.rollout.decide")
        level = decide_log.level
        decide_log.setLevel(logging.ERROR)
        try:
            experiment = rollout.start(candidate, control=control, traffic=traffic, salt=salt)
        finally:
            decide_log.setLevel(level)
    except RolloutError as error:
        echo(f"A/B: not started: {error}")
        return None
    echo(f"A/B experiment {experiment.id} on {dataset.track}: control {control} vs candidate {candidate}, "
         f"{traffic:g} % of users to the candidate, ramp {list(experiment.schedule)}")  # fmt: skip
    sample = json.loads(
        sorted(kfp_root.rglob("build-training-set/training_set/training_set.json"))[0].read_text()
    )
    length = sample["sample_config"]["max_history_length"]
    requests = replay_requests(dataset, max_history_length=length, period="test")
    target = resolve_target(registry.root, dataset=dataset.track, rollout_dir=state_dir)
    with target.process(registry.root, port) as server:
        run = replayed_ab(
            rollout, server.url, requests, per_step=per_step, max_steps=max_steps, progress=False, drift=False
        )
    for number, step in enumerate(run.steps, 1):
        decision = step["decision"]
        by_arm = step["replay"]["by_arm"]
        clicks = ", ".join(f"{arm} {v['clicks']}/{v['requests']}" for arm, v in sorted(by_arm.items()))
        echo(f"  step {number} at {step['traffic']:g} %: clicks {clicks} -> {decision['action'].upper()}: "
             f"{decision['reason']}")  # fmt: skip
    echo(f"A/B result: experiment {experiment.id} is {run.final_status} at {run.final_traffic:g} % "
         f"(report: longrec rollout report --dataset {dataset.track})")  # fmt: skip
    if rollout.store.active(dataset.track) is not None:
        # A demo must not leave an experiment running on the production track (the next run could not
        # start one): end it without a verdict; production stays where it is.
        rollout.rollback(f"make run's replayed A/B ended after {max_steps} steps without a decision")
        echo(
            f"  no decision within {max_steps} step{'s' if max_steps != 1 else ''}: "
            f"experiment {experiment.id} rolled back, production unchanged"
        )
    return {"experiment_id": experiment.id, "status": run.final_status, "traffic": run.final_traffic,
            "steps": run.steps}  # fmt: skip
