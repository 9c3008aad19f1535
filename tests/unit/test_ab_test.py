"""models/ab_test.py: known answers, and Monte-Carlo checks of the sequential decision under daily peeking."""

import math

import numpy as np
import pytest

from recsys.models.ab_test import (CHALLENGER, CHAMPION, PROMOTE, STOP_NOT_BETTER, STOP_SRM, VETOED,
                                   NOT_ENOUGH_DATA, CONTINUE, ABConfig, ArmStats, Guardrail, decide, msprt,
                                   rate_summary, srm_check)


def test_arm_stats_rate_and_variance_known_answers():
    s = ArmStats.from_users([1, 0, 0, 1, 0, 0, 0, 0, 1, 1])  # per-user Bernoulli, y = 1
    assert s.rate == pytest.approx(0.4)
    assert s.variance == pytest.approx(np.var([1, 0, 0, 1, 0, 0, 0, 0, 1, 1], ddof=1) / 10)
    # ratio metric, delta method by hand: x/y per user
    x, y = np.array([1, 0, 2, 1.0]), np.array([2, 1, 4, 3.0])
    r = x.sum() / y.sum()
    expected = np.var(x - r * y, ddof=1) / (len(x) * y.mean() ** 2)
    assert ArmStats.from_users(x, y).variance == pytest.approx(expected)
    # stats add up day by day
    both = ArmStats.from_users(x[:2], y[:2]) + ArmStats.from_users(x[2:], y[2:])
    assert both == ArmStats.from_users(x, y)
    lo = rate_summary(ArmStats.from_users(x, y), 0.95)
    assert lo.ci_low < r < lo.ci_high


def test_srm_check_flags_a_broken_split():
    assert srm_check({"a": 5000, "b": 5050}, {"a": 0.5, "b": 0.5}).passed
    bad = srm_check({"a": 5000, "b": 4500}, {"a": 0.5, "b": 0.5})
    assert not bad.passed and bad.p_value < 0.001
    assert srm_check({"a": 9000, "b": 1000}, {"a": 0.9, "b": 0.1}).passed


def _arms(p_a, p_b, n_a, n_b, seed=0, extra=None):
    rng = np.random.default_rng(seed)
    out = {CHAMPION: {"m": ArmStats.from_users(rng.random(n_a) < p_a)},
           CHALLENGER: {"m": ArmStats.from_users(rng.random(n_b) < p_b)}}
    for name, (ga, gb) in (extra or {}).items():
        out[CHAMPION][name] = ArmStats.from_users(rng.random(n_a) < ga)
        out[CHALLENGER][name] = ArmStats.from_users(rng.random(n_b) < gb)
    return out


def test_decide_outcomes():
    cfg = ABConfig(metric="m")
    assert decide(_arms(0.05, 0.10, 5000, 5000), cfg).outcome == PROMOTE
    d = decide(_arms(0.10, 0.05, 5000, 5000), cfg)
    assert d.outcome == STOP_NOT_BETTER and not d.promote and d.ci_high < 0
    assert decide(_arms(0.05, 0.05, 50, 50), cfg).outcome == NOT_ENOUGH_DATA
    assert decide(_arms(0.05, 0.051, 2000, 2000), cfg).outcome == CONTINUE
    srm = decide(_arms(0.05, 0.10, 5000, 4000), cfg)
    assert srm.outcome == STOP_SRM and not srm.promote and "sample ratio mismatch" in srm.reason
    # a margin the lift does not clear: no promotion
    assert not decide(_arms(0.05, 0.10, 5000, 5000), ABConfig(metric="m", min_lift=1.5)).promote
    # a guardrail that drops too far vetoes a winner
    g = ABConfig(metric="m", guardrails=(Guardrail("ctr", 0.05),))
    v = decide(_arms(0.05, 0.10, 5000, 5000, extra={"ctr": (0.30, 0.20)}), g)
    assert v.outcome == VETOED and not v.promote and "ctr" in v.reason
    assert decide(_arms(0.05, 0.10, 5000, 5000, extra={"ctr": (0.30, 0.30)}), g).promote


def test_confidence_sequence_matches_the_p_value():
    a, b = ArmStats.from_users(np.r_[np.ones(300), np.zeros(2700)]), ArmStats.from_users(np.r_[np.ones(380), np.zeros(2620)])
    r = msprt(a, b, 0.05)
    assert (r.p_value <= 0.05) == (r.ci_low > 0)
    assert r.ci_low < r.diff < r.ci_high
    assert r.diff == pytest.approx(380 / 3000 - 300 / 3000)


def _experiments(n_exp, days, users_per_day, p_a, p_b, cfg, seed):
    """Promote share and days to promotion when the decision is taken every day on cumulative stats."""
    rng = np.random.default_rng(seed)
    days_to = []
    for _ in range(n_exp):
        acc = {CHAMPION: ArmStats(0, 0, 0, 0, 0, 0), CHALLENGER: ArmStats(0, 0, 0, 0, 0, 0)}
        for day in range(days):
            n_b = rng.binomial(users_per_day, cfg.challenger_share)
            for arm, n, p in ((CHAMPION, users_per_day - n_b, p_a), (CHALLENGER, n_b, p_b)):
                impressions = rng.poisson(6, n) + 1  # a ratio metric: clicks / shown items, per user
                acc[arm] = acc[arm] + ArmStats.from_users(rng.binomial(impressions, p), impressions)
            if decide({k: {"m": v} for k, v in acc.items()}, cfg).outcome == PROMOTE:
                days_to.append(day + 1)
                break
    return len(days_to) / n_exp, days_to


def test_a_a_promotes_no_more_than_alpha_when_peeking_daily():
    cfg = ABConfig(metric="m")
    share, _ = _experiments(200, 20, 300, 0.04, 0.04, cfg, seed=1)
    # 200 experiments x 20 daily looks each
    assert share <= cfg.alpha


def test_power_a_better_challenger_is_promoted():
    cfg = ABConfig(metric="m", challenger_share=0.3)
    share, days = _experiments(40, 20, 400, 0.04, 0.052, cfg, seed=2)  # +30% relative
    assert share >= 0.8, share
    assert np.median(days) <= 15
