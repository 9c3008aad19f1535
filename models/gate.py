"""Promotion decision: challenger vs champion, both scored on the same users of one window."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GateParams:
    metric: str = "ndcg_at_10"
    # the lower bound of (challenger - champion) must exceed this (absolute metric units)
    margin: float = 0.0
    confidence: float = 0.90
    n_bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    n_users: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap_ci(diff: np.ndarray, confidence: float, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of per-user differences, resampling users."""
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        means[b] = diff[rng.integers(0, n, n)].mean()
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def decide_promotion(challenger: np.ndarray, champion: np.ndarray | None, params: GateParams) -> GateDecision:
    """Per-user metric arrays in the same user order; no champion -> promote."""
    chal_mean = float(np.mean(challenger)) if len(challenger) else 0.0
    if champion is None:
        return GateDecision(True, "no champion yet: the first model is promoted", params.metric,
                            chal_mean, None, None, None, None, len(challenger))
    if len(challenger) != len(champion):
        raise ValueError("challenger and champion must be scored on the same users")
    if len(challenger) == 0:
        return GateDecision(False, "no users in the evaluation window: nothing to compare", params.metric,
                            chal_mean, None, None, None, None, 0)
    diff = np.asarray(challenger, float) - np.asarray(champion, float)
    low, high = paired_bootstrap_ci(diff, params.confidence, params.n_bootstrap, params.seed)
    champ_mean = float(np.mean(champion))
    promote = low > params.margin
    verdict = "promoted" if promote else "kept champion"
    reason = (f"{verdict}: {params.metric} challenger {chal_mean:.4f} vs champion {champ_mean:.4f}, "
              f"diff {diff.mean():+.4f}, {params.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] "
              f"{'>' if promote else '<='} margin {params.margin:+.4f} over {len(diff)} users")
    return GateDecision(promote, reason, params.metric, chal_mean, champ_mean, float(diff.mean()),
                        low, high, len(diff))
