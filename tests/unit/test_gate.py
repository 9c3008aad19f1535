import numpy as np
import pytest

from models.gate import GateParams, decide_promotion


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
    assert d.ci_low < 0 < d.ci_high


def test_margin_is_respected():
    champion = np.full(200, 0.3)
    challenger = np.full(200, 0.32)
    assert decide_promotion(challenger, champion, GateParams(margin=0.01)).promote
    assert not decide_promotion(challenger, champion, GateParams(margin=0.05)).promote


def test_mismatched_users_rejected():
    with pytest.raises(ValueError, match="same users"):
        decide_promotion(np.ones(3), np.ones(4), GateParams())
