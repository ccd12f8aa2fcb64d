"""The promotion gate: a candidate must clear an absolute AUC floor and beat production by a lift."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    @property
    def verdict(self) -> str:
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def to_markdown(self) -> str:
        lines = [f"## Promotion decision: **{self.verdict.upper()}** ({self.candidate_name})", ""]
        lines += [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines) + "\n"


def decide_promotion(
    candidate_auc: float,
    production_auc: float | None,
    auc_floor: float,
    min_auc_lift: float,
    candidate_name: str = "candidate",
) -> GateDecision:
    """Promote iff candidate_auc >= auc_floor and (no production model or candidate_auc >= production + lift)."""
    if candidate_auc != candidate_auc:  # NaN: a model that could not be scored is never promoted
        return GateDecision(
            False,
            candidate_name,
            candidate_auc,
            production_auc,
            auc_floor,
            min_auc_lift,
            ["candidate AUC is NaN"],
        )
    reasons = []
    clears_floor = candidate_auc >= auc_floor
    reasons.append(f"test AUC {candidate_auc:.4f} {'>=' if clears_floor else '<'} floor {auc_floor:.4f}")
    beats_production = True
    if production_auc is None:
        reasons.append("no production model for this dataset yet")
    else:
        required = production_auc + min_auc_lift
        beats_production = candidate_auc >= required
        reasons.append(
            f"test AUC {candidate_auc:.4f} {'>=' if beats_production else '<'} production {production_auc:.4f}"
            f" + lift {min_auc_lift:.4f} = {required:.4f} (same test samples)"
        )
    return GateDecision(
        clears_floor and beats_production,
        candidate_name,
        candidate_auc,
        production_auc,
        auc_floor,
        min_auc_lift,
        reasons,
    )
