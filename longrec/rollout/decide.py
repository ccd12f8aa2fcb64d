"""Rollout decisions and the operations that carry them out: start, step (SRM -> guardrails -> sequential
test -> ramp / hold / promote / rollback), promote, rollback, and crash recovery.

A promotion is two durable writes in two stores: the experiment's status and the registry's production
pointer. It is made crash-consistent with an intent record: "promote decided" (status `promoting`, with the
pointer value it expects) commits first, then the registry moves the pointer by compare-and-swap, then
"promote completed" commits. `recover()` runs before every command and finishes a `promoting` experiment
whose process died: it completes it if the pointer moved (or still can move), and undoes it if someone else
moved the pointer meanwhile."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from longrec.rollout.analysis import Analysis, analyse
from longrec.rollout.assignment import CANDIDATE, CONTROL
from longrec.rollout.requestlog import read_requests
from longrec.rollout.state import (
    DEFAULT_SCHEDULE,
    PROMOTED,
    PROMOTING,
    ROLLED_BACK,
    RUNNING,
    Experiment,
    ExperimentStore,
    Guardrails,
    RolloutError,
    StatsConfig,
    default_actor,
    default_rollout_dir,
    validate_schedule,
    validate_traffic,
)

logger = logging.getLogger(__name__)

# Tests set this to "after_promote_decided" or "after_pointer_moved" to kill the process at that point.
CRASH_POINT_ENV = "LONGREC_ROLLOUT_CRASH_AT"
HOLD, RAMP, PROMOTE, ROLLBACK = "hold", "ramp", "promote", "rollback"


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_POINT_ENV) == name:
        os._exit(70)  # no cleanup, no commit: as if the machine died here


@dataclass(frozen=True)
class Decision:
    """What `step` does: hold, ramp (to `traffic`), promote or rollback, and why."""

    action: str
    reason: str
    traffic: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def decide(experiment: Experiment, analysis: Analysis, drift: dict | None = None) -> Decision:
    """The decision rule, in order: SRM blocks everything; a broken guardrail or a significantly worse
    candidate rolls back; a drift alert on the served inputs or too little data in the stage holds;
    otherwise ramp along the schedule, and at the last stage before 100 % promote once the always-valid
    test says the candidate is better."""
    current = experiment.traffic
    if analysis.srm["fired"]:
        srm = analysis.srm
        return Decision(
            HOLD,
            f"sample ratio mismatch: {srm['control']} control / {srm['candidate']} candidate users in this stage "
            f"against an expected {srm['expected_candidate_share']:.0%} candidate (p={srm['p_value']:.2g}); "
            "decisions are blocked until the assignment is fixed",
            current,
        )
    breaches = analysis.guardrail_breaches
    if breaches:
        return Decision(ROLLBACK, "guardrail: " + "; ".join(b["reason"] for b in breaches), 0.0)
    comparison = analysis.comparison
    if comparison and comparison["significant"] and comparison["difference"] < 0:
        return Decision(
            ROLLBACK,
            f"candidate CTR is significantly lower: {comparison['difference']:+.4f} "
            f"(always-valid p={comparison['always_valid_p']:.3g})",
            0.0,
        )
    if drift and drift.get("alert"):
        drifted = ", ".join(name for name, column in drift["columns"].items() if column["drifted"])
        # Broken inputs reach both arms: no evidence for either model, so no more exposure either.
        return Decision(
            HOLD, f"drift alert on served inputs ({drifted}): holding until the features are fixed", current
        )
    minimum = experiment.test.min_impressions_per_arm
    stage = analysis.stage_arms
    short = [arm for arm in (CONTROL, CANDIDATE) if stage[arm]["impressions"] < minimum]
    if short:
        counts = ", ".join(f"{arm} {stage[arm]['impressions']}" for arm in (CONTROL, CANDIDATE))
        return Decision(
            HOLD, f"collecting: {counts} impressions in this stage, need {minimum} per arm", current
        )
    ratio = next(g for g in analysis.guardrails if g["name"].startswith("CTR ratio"))
    if ratio["value"] is not None and ratio["value"] < experiment.guardrails.min_ctr_ratio:
        # Looks worse, but not (yet) clearly: no more exposure until the evidence says which.
        return Decision(
            HOLD,
            f"candidate CTR is {ratio['value']:.2f}x control's, under the {experiment.guardrails.min_ctr_ratio:g} "
            "guardrail but not conclusively (too few users or too wide an interval); not ramping",
            current,
        )
    following = experiment.next_traffic()
    if following is not None and following < 100:
        return Decision(RAMP, f"guardrails hold at {current:g} %: ramping to {following:g} %", following)
    if comparison and comparison["significant"] and comparison["difference"] > 0:
        return Decision(
            PROMOTE,
            f"candidate CTR is significantly higher: {comparison['difference']:+.4f} "
            f"(always-valid p={comparison['always_valid_p']:.3g}) at {current:g} %",
            100.0,
        )
    p_value = comparison["always_valid_p"] if comparison else 1.0
    return Decision(
        HOLD,
        f"no significant difference yet (always-valid p={p_value:.3g}); holding at {current:g} %",
        current,
    )


class Rollout:
    """The operations an operator, the CLI and the KFP rollout pipeline run on one dataset's experiments."""

    def __init__(
        self,
        dataset: str,
        *,
        state_dir: str | Path | None = None,
        request_log: str | Path | None = None,
        registry=None,
        actor: str | None = None,
    ):
        from longrec.rollout.requestlog import default_request_log_path

        self.dataset = dataset
        self.state_dir = Path(state_dir) if state_dir else default_rollout_dir()
        self.request_log = (
            Path(request_log) if request_log else self.state_dir / default_request_log_path().name
        )
        self._store: ExperimentStore | None = None  # opened (and created) on first use
        self._registry = registry
        self.actor = actor or default_actor()

    @property
    def store(self) -> ExperimentStore:
        if self._store is None:
            self._store = ExperimentStore(self.state_dir)
        return self._store

    def _has_state(self) -> bool:
        # Reads never create the database: a refused command leaves no trace.
        return self._store is not None or (self.state_dir / "rollout.db").is_file()

    @property
    def registry(self):
        if self._registry is None:
            from longrec.registry.store import ModelRegistry

            self._registry = ModelRegistry()
        return self._registry

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------------------------------ reads
    def current(self) -> Experiment | None:
        """The active experiment, else the latest one."""
        if not self._has_state():
            return None
        return self.store.active(self.dataset) or self.store.latest(self.dataset)

    def require_active(self) -> Experiment:
        experiment = self.store.active(self.dataset) if self._has_state() else None
        if experiment is None:
            raise RolloutError(
                f"no running experiment on {self.dataset}: start one with `longrec rollout start`"
            )
        return experiment

    def analyse(self, experiment: Experiment | None = None) -> Analysis:
        experiment = experiment or self.current()
        if experiment is None:
            raise RolloutError(f"no experiment on {self.dataset}")
        return analyse(experiment, read_requests(self.request_log, experiment.id))

    # ----------------------------------------------------------------------------------------- writes
    def start(
        self,
        candidate: str,
        *,
        traffic: float = 5.0,
        control: str | None = None,
        schedule=DEFAULT_SCHEDULE,
        guardrails: Guardrails | None = None,
        test: StatsConfig | None = None,
        salt: str | None = None,
    ) -> Experiment:
        """Start an A/B of `candidate` against production (or `control`). Checks everything first."""
        from longrec.registry.store import RegistryError

        if validate_traffic(traffic) >= 100:
            raise RolloutError("an experiment cannot start at 100 %: that is a promotion")
        validate_schedule(schedule)
        try:
            self.registry.model_path(candidate)
            if control is not None:
                self.registry.model_path(control)
            pointer = self.registry.production(self.dataset)
        except RegistryError as error:
            raise RolloutError(str(error)) from error
        production = pointer["tag"] if pointer else None
        control = control or production
        if control is None:
            raise RolloutError(
                f"{self.dataset} has no production model to compare against; pass --control TAG"
            )
        if control != production:
            # The promotion's compare-and-swap expects the pointer where it was at start.
            logger.warning("control %s is not production (%s)", control, production)
        if candidate == control:
            raise RolloutError(f"candidate {candidate} is the control model already")
        active = self.store.active(self.dataset) if self._has_state() else None
        if active is not None:
            raise RolloutError(
                f"experiment {active.id} is already running on {self.dataset}; promote or roll it back first"
            )
        experiment = self.store.create(
            dataset=self.dataset, control_tag=control, candidate_tag=candidate, traffic=traffic,
            schedule=schedule, guardrails=guardrails, test=test, salt=salt, actor=self.actor,
            reason=f"A/B of {candidate} against {control}; production pointer was {production}",
            inputs={"production": production},
        )  # fmt: skip
        return experiment

    def step(
        self, *, analysis: Analysis | None = None, drift: dict | None = None, artifacts: dict | None = None
    ) -> tuple[Decision, Analysis]:
        """Analyse the log (unless given), decide, and carry the decision out; the audit row holds the
        analysis, the drift summary and the paths of the step's reports."""
        experiment = self.require_active()
        if experiment.status == PROMOTING:
            raise RolloutError(f"experiment {experiment.id} is being promoted; run any command to recover it")
        analysis = analysis or self.analyse(experiment)
        decision = decide(experiment, analysis, drift)
        inputs = {
            "analysis": _summary(analysis),
            "drift": drift,
            "decision": decision.to_dict(),
            "artifacts": artifacts or {},
        }
        if decision.action == HOLD:
            self.store.note(
                experiment, action="hold", actor=self.actor, reason=decision.reason, inputs=inputs
            )
        elif decision.action == RAMP:
            self.store.transition(
                experiment, action="ramp", actor=self.actor, reason=decision.reason, inputs=inputs,
                traffic=decision.traffic,
            )  # fmt: skip
        elif decision.action == ROLLBACK:
            self._rollback(experiment, decision.reason, inputs)
        else:
            self._promote(experiment, decision.reason, inputs)
        return decision, analysis

    def promote(self, reason: str = "promoted by an operator") -> Experiment:
        """Promote the candidate now, whatever the test says (an operator's call, recorded as such)."""
        experiment = self.require_active()
        inputs = {"analysis": _summary(self.analyse(experiment)), "manual": True}
        return self._promote(experiment, reason, inputs)

    def rollback(self, reason: str = "rolled back by an operator") -> Experiment:
        """Send every user back to control; production is unchanged."""
        experiment = self.require_active()
        if experiment.status == PROMOTING:
            raise RolloutError(f"experiment {experiment.id} is being promoted; run any command to recover it")
        return self._rollback(experiment, reason, {"manual": True})

    def _rollback(self, experiment: Experiment, reason: str, inputs: dict) -> Experiment:
        return self.store.transition(
            experiment, action="rollback", actor=self.actor, reason=reason, inputs=inputs, traffic=0.0,
            status=ROLLED_BACK,
        )  # fmt: skip

    def _expected_pointer(self, experiment: Experiment):
        for row in self.store.audit(experiment.id):
            if row["action"] == "start" and "production" in row["inputs"]:
                return row["inputs"]["production"]
        return experiment.control_tag

    def _promote(self, experiment: Experiment, reason: str, inputs: dict) -> Experiment:
        self._require_compare_and_swap()
        expected = self._expected_pointer(experiment)
        pending = {"tag": experiment.candidate_tag, "expected_current": expected, "reason": reason}
        experiment = self.store.transition(
            experiment, action="promote_decided", actor=self.actor, reason=reason, inputs=inputs,
            status=PROMOTING, pending=pending,
        )  # fmt: skip
        _crash_point("after_promote_decided")
        return self._finish_promotion(experiment, self.actor)

    def _finish_promotion(self, experiment: Experiment, actor: str) -> Experiment:
        """Move the pointer (compare-and-swap) if it has not moved yet, then record completion; undo the
        promotion if the pointer went elsewhere. Idempotent."""
        from longrec.registry.store import PointerMoved, RegistryError

        pending = experiment.pending
        pointer = self.registry.production(experiment.dataset)
        if not (pointer and pointer["tag"] == pending["tag"]):
            try:
                self.registry.promote(
                    pending["tag"], experiment.dataset, expected_current=pending["expected_current"],
                    reason=f"rollout experiment {experiment.id}: {pending['reason']}", actor=actor,
                )  # fmt: skip
            except PointerMoved as error:
                self.store.transition(
                    experiment, action="promote_aborted", actor=actor, reason=str(error),
                    inputs={"pending": pending}, status=RUNNING, pending=None,
                )  # fmt: skip
                raise RolloutError(f"promotion undone: {error}") from error
            except RegistryError as error:
                raise RolloutError(f"promotion pending, the registry refused: {error}") from error
        _crash_point("after_pointer_moved")
        return self.store.transition(
            experiment, action="promote_completed", actor=actor, reason=f"production is now {pending['tag']}",
            inputs={"pending": pending}, traffic=100.0, status=PROMOTED, pending=None,
        )  # fmt: skip

    def recover(self) -> list[Experiment]:
        """Complete or undo any promotion a dead process left half done (every dataset). Idempotent."""
        recovered = []
        if not self._has_state():
            return recovered
        for experiment in self.store.in_status(PROMOTING):
            logger.warning("recovering the promotion of experiment %d", experiment.id)
            try:
                recovered.append(self._finish_promotion(experiment, "rollout-recovery"))
            except RolloutError as error:
                logger.warning("experiment %d: %s", experiment.id, error)
                recovered.append(self.store.get(experiment.id))
        return recovered

    def _require_compare_and_swap(self) -> None:
        import inspect

        if "expected_current" not in inspect.signature(self.registry.promote).parameters:
            raise RolloutError(
                "this registry has no compare-and-swap promote (ModelRegistry.promote(..., expected_current=...)); "
                "a rollout cannot promote safely without it"
            )


def _summary(analysis: Analysis) -> dict:
    """The analysis without its curve (kept in the step's analysis.json), for the audit row."""
    summary = analysis.to_dict()
    summary.pop("curve")
    return json.loads(json.dumps(summary, default=float))
