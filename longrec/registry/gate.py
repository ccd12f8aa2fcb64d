"""The promotion gate. A candidate is promoted only when

1. its test AUC is a number and clears the absolute floor;
2. production, if the track has one, could be rescored on the same test samples — a production model that
   could not be compared (other samples, unreadable files) is never replaced automatically;
3. the lower bound of the paired AUC-lift interval (bootstrap over users) is strictly above
   `min_auc_lift` — so a candidate identical to production (lift exactly 0) is not promoted;
4. its LogLoss is not worse than production's by more than `max_logloss_increase` (calibration guardrail).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GateConfig", "GateDecision", "decide_promotion"]


class GateConfig(BaseModel):
    """The gate's thresholds (pipeline parameters of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auc_floor: float = Field(0.70, ge=0, le=1)
    min_auc_lift: float = Field(0.0, ge=-1, le=1)
    max_logloss_increase: float = Field(0.01, ge=0)


@dataclass(frozen=True)
class GateDecision:
    """The verdict and every reason behind it, for logs, the KFP UI and the registry."""

    promote: bool
    candidate_name: str
    candidate_auc: float
    production_auc: float | None
    auc_floor: float
    min_auc_lift: float
    reasons: list[str] = field(default_factory=list)
    production_tag: str | None = None  # what production was when evaluated (the compare-and-swap base)
    production_status: str = "none"
    lift: dict | None = None
    track: str | None = None

    @property
    def verdict(self) -> str:
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def to_markdown(self) -> str:
        lines = [f"## Promotion decision: **{self.verdict.upper()}** ({self.candidate_name})", ""]
        lines += [f"- {reason}" for reason in self.reasons]
        if self.lift:
            lift = self.lift
            lines += [
                "",
                f"| vs production `{self.production_tag}` | estimate | {lift['confidence']:.0%} interval |",
                "|---|---|---|",
                f"| AUC lift | {lift['auc_lift']:+.4f} | [{lift['auc_lift_low']:+.4f}, {lift['auc_lift_high']:+.4f}] |",
                f"| LogLoss lift (> 0 is worse) | {lift['logloss_lift']:+.4f} | "
                f"[{lift['logloss_lift_low']:+.4f}, {lift['logloss_lift_high']:+.4f}] |",
                f"| GAUC lift | {lift['gauc_lift']:+.4f} | |",
                "",
                f"Paired bootstrap over {lift['n_users']} users ({lift['n_bootstrap']} replicates, "
                f"{lift['n_samples']} test samples scored by both models).",
            ]
        return "\n".join(lines) + "\n"


def decide_promotion(gate_inputs: dict, config: GateConfig | None = None) -> GateDecision:
    """Decide on the evaluation's gate inputs (`ComparisonResult.gate_inputs()`)."""
    config = config or GateConfig()
    candidate = gate_inputs["candidate"]
    name = candidate["name"]
    metrics = candidate["metrics"]
    auc = float(metrics.get("auc", math.nan))
    production = gate_inputs.get("production") or {"status": "none", "reason": "no production model"}
    lift = gate_inputs.get("lift")
    track = gate_inputs.get("track")
    status = production.get("status", "none")
    production_auc = (production.get("metrics") or {}).get("auc")

    def decision(promote: bool, reasons: list[str]) -> GateDecision:
        return GateDecision(
            promote,
            name,
            auc,
            production_auc,
            config.auc_floor,
            config.min_auc_lift,
            reasons,
            production.get("tag"),
            status,
            lift,
            track,
        )

    if math.isnan(auc):  # a model that could not be scored is never promoted
        return decision(False, ["candidate AUC is NaN: the candidate could not be scored"])
    reasons = []
    clears_floor = auc >= config.auc_floor
    reasons.append(f"test AUC {auc:.4f} {'>=' if clears_floor else '<'} floor {config.auc_floor:.4f}")
    if status == "none":
        reasons.append(f"no production model for {track} yet")
        return decision(clears_floor, reasons)
    if status != "comparable" or not lift:
        reasons.append(
            f"production {production.get('tag')} exists but could not be compared: {production.get('reason')}. "
            "The gate never replaces a production model it could not compare; promote by hand with "
            f"`longrec registry promote TAG --track {track}` if intended"
        )
        return decision(False, reasons)
    beats = lift["auc_lift_low"] > config.min_auc_lift
    reasons.append(
        f"AUC lift over production {production.get('tag')}: {lift['auc_lift']:+.4f}, "
        f"{lift['confidence']:.0%} interval [{lift['auc_lift_low']:+.4f}, {lift['auc_lift_high']:+.4f}]; "
        f"lower bound {'>' if beats else '<='} min lift {config.min_auc_lift:+.4f}"
    )
    calibrated = lift["logloss_lift"] <= config.max_logloss_increase
    reasons.append(
        f"LogLoss {'within' if calibrated else 'worse than'} tolerance: {lift['logloss_lift']:+.4f} vs "
        f"production (tolerance +{config.max_logloss_increase:.4f})"
    )
    return decision(clears_floor and beats and calibrated, reasons)
