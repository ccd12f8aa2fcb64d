"""The rollout statistics: the mSPRT stays at alpha under peeking, a peeked fixed-horizon test does not, SRM
fires on a real mismatch only, and the uplift intervals hold their coverage."""

import numpy as np
import pytest
from scipy import stats

from longrec.rollout.stats import (
    always_valid_p,
    compare_rates,
    msprt_lambda,
    rate_ratio_upper,
    ratio_variance,
    srm_check,
    z_test_p,
)

ALPHA = 0.05


def _aa_runs(n_sims=1000, looks=40, batch=250, rate=0.2, seed=0):
    """Cumulative (clicks, impressions) of both arms of A/A tests, looked at after every batch."""
    rng = np.random.default_rng(seed)
    clicks_a = rng.binomial(batch, rate, size=(n_sims, looks)).cumsum(axis=1)
    clicks_b = rng.binomial(batch, rate, size=(n_sims, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    return clicks_a, clicks_b, np.broadcast_to(n, clicks_a.shape)


def test_msprt_false_positive_rate_stays_below_alpha_when_peeking_every_step():
    clicks_a, clicks_b, n = _aa_runs()
    p = always_valid_p(msprt_lambda(clicks_a, n, clicks_b, n, mixture_sd=0.05))
    false_positive_rate = (p[:, -1] <= ALPHA).mean()  # rejected at any of the 40 looks
    assert false_positive_rate <= ALPHA, false_positive_rate


def test_fixed_horizon_test_peeked_every_step_exceeds_alpha():
    clicks_a, clicks_b, n = _aa_runs()
    p = z_test_p(clicks_a, n, clicks_b, n)
    once = (p[:, -1] <= ALPHA).mean()  # looked at once, at the planned horizon: about alpha
    peeked = (p <= ALPHA).any(axis=1).mean()  # stopped at the first look that "worked"
    assert abs(once - ALPHA) < 0.025, once
    assert peeked > 2 * ALPHA, peeked


def test_msprt_detects_a_real_difference():
    rng = np.random.default_rng(1)
    looks, batch = 40, 250
    clicks_a = rng.binomial(batch, 0.20, size=(200, looks)).cumsum(axis=1)
    clicks_b = rng.binomial(batch, 0.24, size=(200, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    p = always_valid_p(msprt_lambda(clicks_a, n, clicks_b, n, mixture_sd=0.05))
    assert (p[:, -1] <= ALPHA).mean() > 0.9


def test_msprt_lambda_hand_value():
    # theta = 0.1, V = 0.25*... computed by hand: p_a = 0.4, p_b = 0.5, n = 100 each
    variance = 0.4 * 0.6 / 100 + 0.5 * 0.5 / 100
    tau2 = 0.05**2
    expected = np.sqrt(variance / (variance + tau2)) * np.exp(
        0.01 * tau2 / (2 * variance * (variance + tau2))
    )
    assert msprt_lambda(40, 100, 50, 100, 0.05) == pytest.approx(expected)


def test_srm_fires_on_52_48_at_100k_users_and_not_on_50_50():
    assert srm_check(48_000, 52_000, 0.5).fired
    assert not srm_check(50_000, 50_000, 0.5).fired
    rng = np.random.default_rng(0)
    candidate = int(rng.binomial(100_000, 0.5))
    assert not srm_check(100_000 - candidate, candidate, 0.5).fired
    # an unequal but correct split is not a mismatch
    assert not srm_check(95_000, 5_000, 0.05).fired
    assert srm_check(95_600, 4_400, 0.05).fired


def test_uplift_interval_covers_the_truth():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(300):
        clicks_a, clicks_b = rng.binomial(2000, 0.2), rng.binomial(2000, 0.25)
        result = compare_rates(clicks_a, 2000, clicks_b, 2000, alpha=ALPHA, mixture_sd=0.05)
        covered += result.ci_low <= 0.05 <= result.ci_high
        assert result.av_ci_low <= result.ci_low and result.av_ci_high >= result.ci_high
    assert covered / 300 > 0.9


def test_rate_ratio_upper_bound():
    assert rate_ratio_upper(500, 1000, 100, 1000) < 0.5  # candidate at a fifth of control
    assert rate_ratio_upper(500, 1000, 500, 1000) > 1.0
    assert rate_ratio_upper(0, 10, 5, 10) == float("inf")


def test_user_level_variance_keeps_a_clustered_aa_test_honest():
    """A/A with 40 users per arm, 50 impressions each, CTRs spread across users: a per-impression binomial
    variance rejects far more often than alpha; the variance over users does not."""
    rng = np.random.default_rng(3)
    sims, users, per_user = 500, 40, 50
    rates = rng.beta(2, 6, size=(sims, 2, users))
    clicks = rng.binomial(per_user, rates)
    impressions = np.full(users, per_user)
    binomial_p = z_test_p(clicks[:, 0].sum(1), users * per_user, clicks[:, 1].sum(1), users * per_user)
    user_level = []
    for sim in range(sims):
        v_a, v_b = ratio_variance(clicks[sim, 0], impressions), ratio_variance(clicks[sim, 1], impressions)
        difference = (clicks[sim, 1].sum() - clicks[sim, 0].sum()) / (users * per_user)
        user_level.append(2 * stats.norm.sf(abs(difference) / np.sqrt(v_a + v_b)))
    assert (binomial_p <= ALPHA).mean() > 3 * ALPHA
    assert (np.array(user_level) <= ALPHA).mean() <= ALPHA + 0.02
    # with one impression per user the two agree
    single = rng.binomial(1, 0.3, size=1000)
    assert ratio_variance(single, np.ones(1000)) == pytest.approx(
        single.mean() * (1 - single.mean()) / 999, rel=1e-9
    )


def test_sequential_curve_is_honest_on_clustered_aa_traffic():
    """A/A through the analysis itself: 40 users split 50/50 with spread CTRs and many impressions each,
    looked at every 100 impressions; the always-valid p rejects at most alpha of the time."""
    import pandas as pd

    from longrec.rollout.analysis import sequential_curve

    rng = np.random.default_rng(4)
    rejected = 0
    sims = 300
    for _ in range(sims):
        users = np.arange(40)
        rates = rng.beta(2, 6, size=40)
        user = rng.integers(0, 40, size=2000)
        frame = pd.DataFrame(
            {
                "ts": np.arange(2000.0),
                "user_id": user.astype(str),
                "arm": np.where(users[user] % 2 == 0, "candidate", "control"),
                "clicked": (rng.random(2000) < rates[user]).astype(float),
                "status": "ok",
            }
        )
        curve = sequential_curve(frame, mixture_sd=0.05)
        assert np.isfinite(curve["variance"].iloc[-1])  # the test did look
        rejected += curve["always_valid_p"].iloc[-1] <= ALPHA
    assert rejected / sims <= ALPHA


def test_an_arm_whose_first_users_never_clicked_is_not_called_worse():
    """A 5 % candidate that is truly better (0.3 vs 0.2) but whose first 8 users happened not to click: the
    variance over those users is exactly 0, and before the pooled-rate floor the mSPRT called the candidate
    significantly worse at that look and rolled it back for good (the running minimum keeps the p)."""
    import pandas as pd

    from longrec.rollout.analysis import floored_variance, sequential_curve

    rng = np.random.default_rng(0)
    arm = np.array(["control"] * 190 + ["candidate"] * 8)
    clicked = np.r_[(rng.random(190) < 0.2), np.zeros(8, bool)].astype(float)
    order = rng.permutation(len(arm))
    frame = pd.DataFrame(
        {
            "ts": np.arange(len(arm), dtype=float),
            "user_id": [f"u{i}" for i in range(len(arm))],
            "arm": arm[order],
            "clicked": clicked[order],
            "status": "ok",
        }
    )
    curve = sequential_curve(frame, mixture_sd=0.05)
    assert (curve["always_valid_p"] > ALPHA).all()
    # the floor: a zero estimate becomes the pooled binomial variance; a larger estimate is kept
    assert floored_variance(0.0, 8, 8, 0.2) == pytest.approx(0.2 * 0.8 / 8)
    assert floored_variance(0.5, 8, 8, 0.2) > 0.5
