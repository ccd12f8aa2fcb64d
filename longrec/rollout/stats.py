"""The statistics behind rollout decisions: an always-valid mixture SPRT on the CTR difference, the
fixed-horizon z-test it replaces (kept to show what peeking does to it), uplift intervals and the
sample-ratio-mismatch check. Everything takes counts and works elementwise on numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def _variance(clicks_a, n_a, clicks_b, n_b):
    """Plug-in variance of p_b - p_a (binomial), and the two rates."""
    n_a, n_b = np.maximum(n_a, 1), np.maximum(n_b, 1)
    p_a, p_b = clicks_a / n_a, clicks_b / n_b
    return p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b, p_a, p_b


def ratio_variance(clicks, impressions) -> float:
    """Variance of CTR = sum(clicks) / sum(impressions) over units (users) that each contribute several
    impressions (delta method): Var = sum((c_i - CTR n_i)^2) / (m (m - 1) mean(n)^2), m units. Impressions
    of one user are correlated; treating them as independent Bernoulli draws understates the variance."""
    clicks, impressions = np.asarray(clicks, float), np.asarray(impressions, float)
    m = len(impressions)
    if m < 2 or impressions.sum() == 0:
        return float("inf")
    rate = clicks.sum() / impressions.sum()
    residual = clicks - rate * impressions
    return float((residual**2).sum() / (m * (m - 1)) / impressions.mean() ** 2)


def msprt_lambda_from(difference, variance, mixture_sd: float):
    """The mixture likelihood ratio from an estimated difference and its variance (see `msprt_lambda`)."""
    difference, variance = np.asarray(difference, float), np.asarray(variance, float)
    tau2 = mixture_sd**2
    degenerate = ~np.isfinite(variance) | (variance <= 0)
    variance = np.where(degenerate, 1.0, variance)
    log_lambda = 0.5 * np.log(variance / (variance + tau2)) + difference**2 * tau2 / (
        2 * variance * (variance + tau2)
    )
    return np.where(degenerate, 1.0, np.exp(np.minimum(log_lambda, 700)))


def msprt_lambda(clicks_a, n_a, clicks_b, n_b, mixture_sd: float):
    """Mixture likelihood ratio of H1: p_b != p_a against H0: p_b = p_a, with a N(0, tau^2) mixture over the
    difference (Johari et al., "Peeking at A/B tests", KDD 2017, normal approximation):

        Lambda_n = sqrt(V / (V + tau^2)) * exp(theta^2 tau^2 / (2 V (V + tau^2)))

    with theta the observed difference and V its variance. Rejecting the first time Lambda >= 1/alpha keeps
    the false-positive rate at most alpha however often one looks."""
    variance, p_a, p_b = _variance(np.asarray(clicks_a, float), n_a, np.asarray(clicks_b, float), n_b)
    return msprt_lambda_from(p_b - p_a, variance, mixture_sd)


def always_valid_p(lambdas) -> np.ndarray:
    """Always-valid p-values along the last axis (successive looks): p_n = min(1, min_{m<=n} 1/Lambda_m)."""
    return np.minimum.accumulate(np.minimum(1.0, 1.0 / np.asarray(lambdas, float)), axis=-1)


def confidence_sequence_halfwidth(variance, mixture_sd: float, alpha: float):
    """Half-width of the always-valid (1 - alpha) interval for the difference: the thetas0 the mSPRT of
    H0: difference = theta0 does not reject at this look."""
    tau2 = mixture_sd**2
    variance = np.asarray(variance, float)
    finite = np.isfinite(variance)
    variance = np.where(finite, np.maximum(variance, 1e-12), 1.0)
    half = np.sqrt(
        variance * (variance + tau2) / tau2 * (2 * np.log(1 / alpha) + np.log((variance + tau2) / variance))
    )
    return np.where(finite, half, np.inf)


def z_test_p(clicks_a, n_a, clicks_b, n_b):
    """Two-sided p-value of the fixed-horizon two-proportion z-test (pooled variance). Valid once, at a
    sample size fixed in advance; looking at it every step inflates its false-positive rate."""
    clicks_a, clicks_b = np.asarray(clicks_a, float), np.asarray(clicks_b, float)
    n_a, n_b = np.maximum(n_a, 1), np.maximum(n_b, 1)
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = np.where(se > 0, (clicks_b / n_b - clicks_a / n_a) / np.where(se > 0, se, 1), 0.0)
    return 2 * stats.norm.sf(np.abs(z))


@dataclass(frozen=True)
class SrmResult:
    """Sample ratio mismatch: observed units per arm against the configured split."""

    control: int
    candidate: int
    expected_candidate_share: float
    chi2: float
    p_value: float
    fired: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def srm_check(n_control: int, n_candidate: int, candidate_share: float, alpha: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of (control, candidate) counts to (1 - share, share). Fires when p < alpha.
    No test (never fires) with no units or a share of 0 or 1."""
    total = n_control + n_candidate
    if total == 0 or not 0 < candidate_share < 1:
        return SrmResult(n_control, n_candidate, candidate_share, 0.0, 1.0, False)
    expected = np.array([1 - candidate_share, candidate_share]) * total
    chi2, p_value = stats.chisquare([n_control, n_candidate], f_exp=expected)
    return SrmResult(
        n_control, n_candidate, candidate_share, float(chi2), float(p_value), bool(p_value < alpha)
    )


@dataclass(frozen=True)
class Comparison:
    """Candidate (b) against control (a) on one rate: uplift with fixed-horizon and always-valid intervals,
    the mSPRT statistic and its always-valid p-value at this look."""

    control_rate: float
    candidate_rate: float
    difference: float
    ci_low: float  # 95 % fixed-horizon (Wald) interval of the difference
    ci_high: float
    av_ci_low: float  # (1 - alpha) always-valid interval of the difference
    av_ci_high: float
    relative_uplift: float | None
    relative_ci_low: float | None
    relative_ci_high: float | None
    msprt_lambda: float
    always_valid_p: float
    significant: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def compare_rates(
    clicks_a: int,
    n_a: int,
    clicks_b: int,
    n_b: int,
    *,
    alpha: float,
    mixture_sd: float,
    previous_p: float = 1.0,
    variances: tuple[float, float] | None = None,
) -> Comparison:
    """Compare candidate (b) to control (a). `previous_p` is the always-valid p of earlier looks (it only
    falls). `variances` of the two rates replace the binomial ones (e.g. `ratio_variance` over users)."""
    variance, p_a, p_b = _variance(float(clicks_a), n_a, float(clicks_b), n_b)
    variance, p_a, p_b = float(variance), float(p_a), float(p_b)
    var_a, var_b = (
        variances if variances is not None else (p_a * (1 - p_a) / max(n_a, 1), p_b * (1 - p_b) / max(n_b, 1))
    )
    if variances is not None:
        variance = var_a + var_b
    difference = p_b - p_a
    half = 1.959964 * np.sqrt(variance)
    av_half = float(confidence_sequence_halfwidth(variance, mixture_sd, alpha))
    lam = float(msprt_lambda_from(difference, variance, mixture_sd))
    p_value = min(previous_p, 1.0, 1.0 / lam)
    relative = relative_low = relative_high = None
    if p_a > 0:
        relative = difference / p_a
        # delta method for p_b / p_a - 1
        rel_se = np.sqrt(var_b / p_a**2 + p_b**2 * var_a / p_a**4)
        relative_low, relative_high = relative - 1.959964 * rel_se, relative + 1.959964 * rel_se
    return Comparison(
        control_rate=p_a,
        candidate_rate=p_b,
        difference=difference,
        ci_low=difference - half,
        ci_high=difference + half,
        av_ci_low=difference - av_half,
        av_ci_high=difference + av_half,
        relative_uplift=relative,
        relative_ci_low=None if relative_low is None else float(relative_low),
        relative_ci_high=None if relative_high is None else float(relative_high),
        msprt_lambda=lam,
        always_valid_p=p_value,
        significant=p_value <= alpha,
    )


def rate_ratio_upper(
    clicks_a: int,
    n_a: int,
    clicks_b: int,
    n_b: int,
    z: float = 1.959964,
    variances: tuple[float, float] | None = None,
) -> float:
    """Upper bound of the 95 % interval of p_b / p_a (log-ratio delta method); inf when undefined.
    `variances` of the two rates replace the binomial ones."""
    if clicks_a == 0 or n_a == 0 or n_b == 0:
        return float("inf")
    if clicks_b == 0:
        return 0.0
    p_a, p_b = clicks_a / n_a, clicks_b / n_b
    var_a, var_b = variances if variances is not None else (p_a * (1 - p_a) / n_a, p_b * (1 - p_b) / n_b)
    if not (np.isfinite(var_a) and np.isfinite(var_b)):
        return float("inf")
    se = np.sqrt(var_a / p_a**2 + var_b / p_b**2)
    return float(np.exp(np.log(p_b / p_a) + z * se))
