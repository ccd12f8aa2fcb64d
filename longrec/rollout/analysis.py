"""Online analysis of an experiment from its request log: per-arm impressions, clicks, CTR, HR@k, NDCG@k,
latency p50/p99, error and degraded rates; the CTR uplift with intervals; the mSPRT over time; SRM on the
current stage; and the guardrails.

CTR is clicks over impressions (one served ranking with feedback), but the randomised unit is the user, and
one user's impressions are correlated (a replayed ML-100k user sends dozens). Variances are therefore taken
over users (delta method for a ratio of sums, `stats.ratio_variance`); a binomial variance per impression
would call an A/A test of two user samples significant. SRM is checked on users too."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from longrec.rollout.assignment import CANDIDATE, CONTROL
from longrec.rollout.state import Experiment
from longrec.rollout.stats import (
    compare_rates,
    msprt_lambda_from,
    rate_ratio_upper,
    ratio_variance,
    srm_check,
)

ARMS = (CONTROL, CANDIDATE)
# Guardrails on latency and errors need this many candidate requests before they can fire.
MIN_GUARDRAIL_REQUESTS = 50


# Flags that mean the request was served worse than the model could: the ranker's (memory shard late,
# online store unreadable) or a generic "degraded".
DEGRADED_FLAGS = ("degraded", "degraded_memory", "feature_fallback")


def is_degraded(flags: dict) -> bool:
    return any(bool(flags.get(name)) for name in DEGRADED_FLAGS)


def arm_metrics(frame: pd.DataFrame) -> dict:
    """Metrics of the requests of one arm (rows of `read_requests`)."""
    requests = len(frame)
    ok = frame[frame["status"] == "ok"]
    shown = ok[ok["clicked"].notna()]
    positions = shown["position"].to_numpy(float)
    top_k = shown["top_k"].to_numpy(float)
    hits = (positions > 0) & (positions <= top_k)
    ndcg = np.where(hits, 1.0 / np.log2(np.maximum(positions, 1) + 1), 0.0)
    latency = ok["latency_ms"].dropna().to_numpy(float)
    degraded = ok["flags"].map(is_degraded).to_numpy(bool) if len(ok) else np.array([])
    clicks = int(shown["clicked"].sum()) if len(shown) else 0
    impressions = len(shown)
    return {
        "requests": requests,
        "users": int(frame["user_id"].nunique()),
        "impressions": impressions,
        "clicks": clicks,
        "ctr": clicks / impressions if impressions else None,
        "hr_at_k": float(hits.mean()) if impressions else None,
        "ndcg_at_k": float(ndcg.mean()) if impressions else None,
        "latency_p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "latency_p99_ms": float(np.percentile(latency, 99)) if len(latency) else None,
        "errors": requests - len(ok),
        "error_rate": (requests - len(ok)) / requests if requests else None,
        "degraded_rate": float(degraded.mean()) if len(degraded) else None,
    }


LOOK_EVERY = 100  # impressions between the looks of the sequential curve (a fixed grid: looks never move)
# Users an arm needs before its variance is trusted. The variance over users is estimated from the users
# themselves; from a handful it can come out near zero by chance, and since the always-valid p keeps its
# running minimum, one such look would decide the test for good. Below this the test does not look, and
# above it the estimate is replaced by its upper 95 % confidence bound (`conservative_variance`).
MIN_USERS_FOR_TEST = 5


def conservative_variance(variance: float, users: int) -> float:
    """Upper 95 % bound of a variance estimated from `users` units: variance (m-1) / chi2_0.05(m-1). It
    multiplies the estimate by 3.7 at 7 users, 1.5 at 40, 1.3 at 100, 1.08 at 1,000."""
    if users < MIN_USERS_FOR_TEST or not np.isfinite(variance):
        return float("inf")
    return float(variance * (users - 1) / stats.chi2.ppf(0.05, users - 1))


def floored_variance(variance: float, users: int, impressions: float, pooled_rate: float) -> float:
    """`conservative_variance`, and never below the binomial variance of the pooled CTR (both arms) over this
    arm's impressions. An arm whose first few users happened not to click has a variance estimate of exactly
    0, which no upper bound scales up; the mSPRT then called a better candidate significantly worse and
    rolled it back (seen at 5 % traffic, ~150 candidate users). Under H0 the arms share one rate, so the
    pooled rate bounds what the arm's variance can plausibly be."""
    variance = conservative_variance(variance, users)
    if impressions <= 0 or not np.isfinite(variance):
        return variance
    return float(max(variance, pooled_rate * (1 - pooled_rate) / impressions))


def user_level(shown: pd.DataFrame) -> dict:
    """{arm: (clicks per user, impressions per user)} of impressions with feedback."""
    grouped = shown.groupby(["arm", "user_id"])["clicked"].agg(["sum", "count"])
    return {
        arm: (grouped.loc[arm, "sum"].to_numpy(float), grouped.loc[arm, "count"].to_numpy(float))
        for arm in ARMS
        if arm in grouped.index.get_level_values(0)
    }


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & frame["clicked"].notna() & frame["arm"].isin(ARMS)]


def sequential_curve(frame: pd.DataFrame, mixture_sd: float) -> pd.DataFrame:
    """The mSPRT at every LOOK_EVERY-th impression (in time order) and at the last one: columns impressions,
    ts, control_n, candidate_n, difference, variance, lambda, always_valid_p. The variance is over users
    (`ratio_variance`); the always-valid p is the running minimum over the looks."""
    shown = _shown(frame)
    columns = [
        "impressions",
        "ts",
        "control_n",
        "candidate_n",
        "difference",
        "variance",
        "lambda",
        "always_valid_p",
    ]
    if shown.empty:
        return pd.DataFrame(columns=columns)
    looks = np.unique(np.r_[np.arange(LOOK_EVERY, len(shown) + 1, LOOK_EVERY), len(shown)])
    is_candidate = (shown["arm"] == CANDIDATE).to_numpy()
    # one code per (arm, user); per look, clicks and impressions per code by bincount over the prefix
    user_codes, user_keys = pd.factorize(shown["user_id"].astype(str))
    codes = np.where(is_candidate, len(user_keys), 0) + user_codes  # candidate's users after control's
    keys = np.arange(2 * len(user_keys))
    key_is_candidate = keys >= len(user_keys)
    clicked = shown["clicked"].to_numpy(float)
    rows = []
    for look in looks:
        clicks = np.bincount(codes[:look], weights=clicked[:look], minlength=len(keys))
        impressions = np.bincount(codes[:look], minlength=len(keys)).astype(float)
        rates, variances = {}, {}
        pooled = clicks.sum() / max(impressions.sum(), 1)
        for arm, members in ((CANDIDATE, key_is_candidate), (CONTROL, ~key_is_candidate)):
            seen = members & (impressions > 0)
            rates[arm] = clicks[seen].sum() / max(impressions[seen].sum(), 1)
            variances[arm] = floored_variance(
                ratio_variance(clicks[seen], impressions[seen]),
                int(seen.sum()),
                impressions[seen].sum(),
                pooled,
            )
        rows.append((rates[CANDIDATE] - rates[CONTROL], variances[CANDIDATE] + variances[CONTROL]))
    difference, variance = np.array(rows).T
    lam = msprt_lambda_from(difference, variance, mixture_sd)
    return pd.DataFrame(
        {
            "impressions": looks,
            "ts": shown["ts"].to_numpy(float)[looks - 1],
            "control_n": np.cumsum(~is_candidate)[looks - 1],
            "candidate_n": np.cumsum(is_candidate)[looks - 1],
            "difference": difference,
            "variance": variance,
            "lambda": lam,
            "always_valid_p": np.minimum.accumulate(np.minimum(1.0, 1.0 / lam)),
        }
    )[columns]


@dataclass
class Analysis:
    """Everything a decision and the report need, JSON-able through `to_dict`."""

    experiment_id: int
    traffic_percent: float
    arms: dict  # arm -> arm_metrics over the whole experiment
    stage_arms: dict  # arm -> arm_metrics since the traffic last changed
    comparison: dict | None  # CTR of candidate vs control (stats.Comparison), None before both arms have data
    srm: dict
    guardrails: list[dict]  # {name, value, limit, breached, reason}
    curve: pd.DataFrame = field(repr=False)
    unassigned_errors: int = 0  # failed requests the client could not attribute to an arm

    @property
    def guardrail_breaches(self) -> list[dict]:
        return [g for g in self.guardrails if g["breached"]]

    def to_dict(self) -> dict:
        return {
            "experiment_id": self.experiment_id,
            "traffic_percent": self.traffic_percent,
            "arms": self.arms,
            "stage_arms": self.stage_arms,
            "comparison": self.comparison,
            "srm": self.srm,
            "guardrails": self.guardrails,
            "unassigned_errors": self.unassigned_errors,
            "curve": self.curve.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, payload: dict) -> Analysis:
        """Inverse of `to_dict` (after a JSON round trip)."""
        fields = {k: v for k, v in payload.items() if k != "curve"}
        return cls(**fields, curve=pd.DataFrame(payload["curve"]))


def analyse(experiment: Experiment, requests: pd.DataFrame) -> Analysis:
    """Analyse the logged requests of one experiment (rows of `read_requests(..., experiment.id)`)."""
    requests = requests[requests["experiment_id"] == experiment.id] if len(requests) else requests
    arms = {arm: arm_metrics(requests[requests["arm"] == arm]) for arm in ARMS}
    stage = requests[requests["ts"] >= experiment.stage_started_at]
    stage_arms = {arm: arm_metrics(stage[stage["arm"] == arm]) for arm in ARMS}
    a, b = arms[CONTROL], arms[CANDIDATE]
    comparison = None
    variances = _arm_variances(requests)
    if a["impressions"] and b["impressions"]:
        curve = sequential_curve(requests, experiment.test.mixture_sd)
        comparison = compare_rates(
            a["clicks"], a["impressions"], b["clicks"], b["impressions"],
            alpha=experiment.test.alpha, mixture_sd=experiment.test.mixture_sd,
            previous_p=float(curve["always_valid_p"].iloc[-1]), variances=variances,
        ).to_dict()  # fmt: skip
    else:
        curve = sequential_curve(requests.iloc[0:0], experiment.test.mixture_sd)
    srm = srm_check(
        stage_arms[CONTROL]["users"], stage_arms[CANDIDATE]["users"], experiment.traffic / 100,
        alpha=experiment.test.srm_alpha,
    ).to_dict()  # fmt: skip
    return Analysis(
        experiment_id=experiment.id,
        traffic_percent=experiment.traffic,
        arms=arms,
        stage_arms=stage_arms,
        comparison=comparison,
        srm=srm,
        guardrails=check_guardrails(experiment, arms, variances),
        curve=curve,
        unassigned_errors=int(((~requests["arm"].isin(ARMS)) & (requests["status"] != "ok")).sum()),
    )


def _arm_variances(requests: pd.DataFrame) -> tuple[float, float]:
    """User-level variances of the CTR of (control, candidate); inf for an arm with too few users."""
    users = user_level(_shown(requests)) if len(requests) else {}
    clicks = sum(users[arm][0].sum() for arm in users)
    impressions = sum(users[arm][1].sum() for arm in users)
    pooled = clicks / impressions if impressions else 0.0
    return tuple(
        floored_variance(ratio_variance(*users[arm]), len(users[arm][1]), users[arm][1].sum(), pooled)
        if arm in users
        else float("inf")
        for arm in ARMS
    )


def check_guardrails(
    experiment: Experiment, arms: dict, variances: tuple[float, float] | None = None
) -> list[dict]:
    """Each guardrail with its value and whether the candidate breaks it (only once there is enough data)."""
    limits = experiment.guardrails
    a, b = arms[CONTROL], arms[CANDIDATE]
    enough = b["requests"] >= MIN_GUARDRAIL_REQUESTS
    rows = [
        {
            "name": "error rate",
            "value": b["error_rate"],
            "limit": f"<= {limits.max_error_rate:.2%}",
            "breached": bool(enough and b["error_rate"] > limits.max_error_rate),
        },
        {
            "name": "p99 latency (ms)",
            "value": b["latency_p99_ms"],
            "limit": f"<= {limits.max_p99_latency_ms:g}",
            "breached": bool(enough and b["latency_p99_ms"] is not None and b["latency_p99_ms"] > limits.max_p99_latency_ms),
        },
    ]  # fmt: skip
    ratio = upper = None
    breached = False
    if a["impressions"] and b["impressions"] and a["clicks"]:
        ratio = b["ctr"] / a["ctr"]
        upper = rate_ratio_upper(
            a["clicks"], a["impressions"], b["clicks"], b["impressions"], variances=variances
        )
        # Both the estimate and its upper 95 % bound under the limit: a clear loss, not noise.
        breached = bool(
            b["impressions"] >= experiment.test.min_impressions_per_arm and upper < limits.min_ctr_ratio
        )
    rows.append(
        {
            "name": "CTR ratio candidate/control",
            "value": ratio,
            "upper_95": upper,
            "limit": f">= {limits.min_ctr_ratio:g}",
            "breached": breached,
        }
    )
    for row in rows:
        row["reason"] = f"{row['name']} {_fmt(row['value'])} breaks {row['limit']}" if row["breached"] else ""
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
