import numpy as np
import pytest

from recsys.models.gate import GateParams, decide_promotion


def test_first_model_is_promoted():
    d = decide_promotion(np.array([0.1, 0.2]), None, GateParams())
    assert d.promote and "first model" in d.reason


def test_clear_improvement_promotes_and_noise_does_not():
    rng = np.random.default_rng(0)
    champion = rng.random(500)
    better = champion + 0.05
    assert decide_promotion(better, champion, GateParams(margin=0.01)).promote
    noisy = champion + rng.normal(0, 0.2, 500)  # no real gain: the interval straddles 0
    d = decide_promotion(noisy, champion, GateParams(margin=0.0))
    assert not d.promote
    assert d.ci_low < d.diff < d.ci_high and d.ci_low < 0  # this draw's mean is -0.014 (SE 0.009)


def test_margin_is_respected():
    champion = np.full(200, 0.3)
    challenger = np.full(200, 0.32)
    assert decide_promotion(challenger, champion, GateParams(margin=0.01)).promote
    assert not decide_promotion(challenger, champion, GateParams(margin=0.05)).promote


def test_mismatched_users_rejected():
    with pytest.raises(ValueError, match="same users"):
        decide_promotion(np.ones(3), np.ones(4), GateParams())


# guardrails: a primary win can be vetoed, never forced
from recsys.models.gate import GuardrailMeasures, check_guardrails, decide_with_guardrails, latency_p95_ms  # noqa: E402

CHAMP = np.full(300, 0.30)
WIN = np.full(300, 0.35)
OK = GuardrailMeasures(coverage=0.40, new_user_ndcg=0.10, p95_latency_ms=10.0)


def test_guardrails_pass_and_primary_decides():
    d = decide_with_guardrails(WIN, CHAMP, GateParams(), OK, OK)
    assert d.promote and d.vetoed_by == []
    assert {g.name for g in d.guardrails} == {"latency_p95", "latency_ratio", "coverage", "new_user_ndcg"}


def test_coverage_drop_vetoes_a_winner():
    worse = GuardrailMeasures(coverage=0.30, new_user_ndcg=0.10, p95_latency_ms=10.0)
    d = decide_with_guardrails(WIN, CHAMP, GateParams(max_coverage_drop=0.05), worse, OK)
    assert not d.promote and d.vetoed_by == ["coverage"]
    assert d.reason.startswith("vetoed by guardrail coverage") and "primary: promoted" in d.reason
    # within the allowed drop: passes
    assert decide_with_guardrails(WIN, CHAMP, GateParams(max_coverage_drop=0.2), worse, OK).promote


def test_new_user_segment_drop_vetoes_and_missing_segment_is_not_checked():
    cold = GuardrailMeasures(coverage=0.40, new_user_ndcg=0.05, p95_latency_ms=10.0)
    assert decide_with_guardrails(WIN, CHAMP, GateParams(max_new_user_ndcg_drop=0.02), cold, OK).vetoed_by == [
        "new_user_ndcg"]
    none = GuardrailMeasures(coverage=0.40, new_user_ndcg=None, p95_latency_ms=10.0)
    assert decide_with_guardrails(WIN, CHAMP, GateParams(), none, none).promote


def test_latency_cap_and_ratio_with_slack():
    slow = GuardrailMeasures(coverage=0.40, new_user_ndcg=0.10, p95_latency_ms=40.0)
    d = decide_with_guardrails(WIN, CHAMP, GateParams(max_latency_ratio=2.0, latency_slack_ms=5.0), slow, OK)
    assert d.vetoed_by == ["latency_ratio"]
    # 4x slower but only 3 ms apart: timer noise, not a regression
    fast = GuardrailMeasures(coverage=0.40, new_user_ndcg=0.10, p95_latency_ms=1.0)
    tiny = GuardrailMeasures(coverage=0.40, new_user_ndcg=0.10, p95_latency_ms=4.0)
    assert decide_with_guardrails(WIN, CHAMP, GateParams(), tiny, fast).promote
    capped = decide_with_guardrails(WIN, CHAMP, GateParams(max_p95_latency_ms=20.0, max_latency_ratio=None), slow, OK)
    assert capped.vetoed_by == ["latency_p95"]


def test_guardrails_never_force_a_loser_and_first_model_only_has_the_absolute_cap():
    bad = GuardrailMeasures(coverage=0.0, new_user_ndcg=0.0, p95_latency_ms=10.0)
    assert not decide_with_guardrails(CHAMP, WIN, GateParams(), OK, bad).promote
    first = decide_with_guardrails(WIN, None, GateParams(), bad, None)
    assert first.promote and [g.name for g in first.guardrails] == ["latency_p95"]
    off = GateParams(max_coverage_drop=None, max_new_user_ndcg_drop=None, max_p95_latency_ms=None,
                     max_latency_ratio=None)
    assert check_guardrails(bad, OK, off) == ()


def test_latency_p95_in_ms():
    assert latency_p95_ms(np.full(100, 0.002)) == pytest.approx(2.0)
    assert latency_p95_ms(np.array([])) == 0.0


def test_bootstrap_interval_is_scipy_bca_for_small_windows_percentile_for_large_and_seeded():
    from scipy.stats import bootstrap

    from recsys.models.gate import BCA_MAX_USERS, paired_bootstrap_ci

    rng = np.random.default_rng(3)
    for n, method in ((400, "BCa"), (BCA_MAX_USERS + 500, "percentile")):
        diff = np.where(rng.random(n) < 0.7, 0.0, rng.normal(0.05, 0.2, n))  # skewed: mostly zeros
        low, high = paired_bootstrap_ci(diff, 0.9, 1000, seed=1)
        assert low < diff.mean() < high and (low, high) == paired_bootstrap_ci(diff, 0.9, 1000, seed=1)
        ref = bootstrap((diff,), np.mean, confidence_level=0.9, n_resamples=1000, method=method,
                        random_state=np.random.default_rng(1)).confidence_interval
        assert np.allclose((low, high), (ref.low, ref.high), atol=3e-3), method
        # the textbook percentile interval by hand has the same width within resampling noise
        means = diff[rng.integers(0, n, (1000, n))].mean(axis=1)
        assert abs((high - low) - (np.quantile(means, 0.95) - np.quantile(means, 0.05))) < 0.25 * (high - low)
    assert paired_bootstrap_ci(np.full(50, 0.02), 0.9, 100, 0) == (0.02, 0.02)
