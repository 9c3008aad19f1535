"""Online A/B analysis: sample-ratio check, per-arm rates with intervals, and a decision that stays valid
when it is looked at every day.

Unit of randomisation and of analysis is the user (the service hashes the user id into an arm). Every
metric is a ratio of per-user sums, sum(x) / sum(y): CTR@k = clicks / shown items, conversion = purchases /
shown items, revenue per impression = revenue / shown items; a per-user rate (purchased at all) has y = 1.
Its variance comes from the delta method over users (`ArmStats` keeps the five sums it needs), so the many
impressions of one shopper are not counted as independent.

**Why mSPRT.** The decision is an always-valid test: the mixture sequential probability ratio test of
Johari, Koomen, Pekelis, Walsh ("Always valid inference", Operations Research 2022; "Peeking at A/B tests",
KDD 2017), the one Optimizely's stats engine uses. For the normal approximation of the estimated
difference theta_hat (variance V) against H0: theta = theta0, mixing over theta ~ N(theta0, tau^2),

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta0)^2 / (2 V (V + tau^2)))

is a martingale under H0, so by Ville's inequality P(Lambda ever >= 1/alpha) <= alpha: the daily flow
may look as often as it likes and stop the first time the test clears, without inflating the error rate
(a t-test re-run daily would, ~20-30% false promotions after 30 looks at alpha 0.05). Inverting it gives
an always-valid confidence sequence for theta. A group-sequential design (alpha spending) would need the
number and timing of looks fixed in advance; the flow runs on a schedule that operators pause and rerun,
so the test that needs no plan was chosen. Cost: intervals are wider than a fixed-horizon test's at its
horizon (the price of peeking freely).

**What is tested.** theta = rate(challenger) - (1 + min_lift) * rate(champion): the challenger must beat the
champion by a relative `min_lift` margin. Promote when the lower end of the confidence sequence of theta is
above 0 (equivalently the always-valid p-value of theta <= 0 is below alpha); stop as "not better" when its
upper end is below 0; otherwise continue. A sample-ratio mismatch (chi-square of users per arm against the
configured share) stops the decision: the split is broken and no comparison is trusted. Guardrail metrics
veto a promotion when the challenger's point estimate drops more than their allowed relative drop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass, field

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"

PROMOTE = "promote"
CONTINUE = "continue"
STOP_NOT_BETTER = "stop_not_better"
STOP_SRM = "stop_srm"
VETOED = "vetoed"
NOT_ENOUGH_DATA = "not_enough_data"


@dataclass(frozen=True)
class ArmStats:
    """Per-user sums of one metric in one arm: users, sum x, sum y, sum x^2, sum y^2, sum x*y."""
    users: int
    x: float
    y: float
    xx: float
    yy: float
    xy: float

    @classmethod
    def from_users(cls, x, y=None) -> "ArmStats":
        """From per-user numerators `x` and denominators `y` (None: every user's denominator is 1)."""
        x = np.asarray(x, float)
        y = np.ones_like(x) if y is None else np.asarray(y, float)
        if x.shape != y.shape:
            raise ValueError("x and y must have one value per user")
        return cls(len(x), float(x.sum()), float(y.sum()), float(x @ x), float(y @ y), float(x @ y))

    def __add__(self, other: "ArmStats") -> "ArmStats":
        return ArmStats(*(a + b for a, b in zip(astuple(self), astuple(other))))

    @property
    def rate(self) -> float:
        return self.x / self.y if self.y > 0 else float("nan")

    @property
    def variance(self) -> float:
        """Delta-method variance of sum(x)/sum(y) over users (0 when fewer than 2 users)."""
        n = self.users
        if n < 2 or self.y <= 0:
            return 0.0
        mx, my, r = self.x / n, self.y / n, self.rate
        sxx = (self.xx - n * mx * mx) / (n - 1)
        syy = (self.yy - n * my * my) / (n - 1)
        sxy = (self.xy - n * mx * my) / (n - 1)
        return max(0.0, (sxx - 2 * r * sxy + r * r * syy) / (n * my * my))


@dataclass(frozen=True)
class RateSummary:
    rate: float
    ci_low: float
    ci_high: float
    users: int
    denominator: float


def rate_summary(stats: ArmStats, confidence: float = 0.95) -> RateSummary:
    """The arm's rate with a fixed-horizon normal (delta-method) interval, for reporting."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    half = z * math.sqrt(stats.variance)
    return RateSummary(stats.rate, stats.rate - half, stats.rate + half, stats.users, stats.y)


@dataclass(frozen=True)
class SrmResult:
    passed: bool
    p_value: float
    observed: dict
    expected_share: dict


def srm_check(users: dict[str, int], expected_share: dict[str, float], threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of users per arm against the configured shares; fails when p < threshold
    (0.001, the usual SRM threshold: the check runs every day, and a real mismatch gives p far below it)."""
    from scipy.stats import chisquare

    arms = list(expected_share)
    obs = np.array([users.get(a, 0) for a in arms], float)
    share = np.array([expected_share[a] for a in arms], float)
    if obs.sum() == 0 or (share <= 0).any():
        return SrmResult(True, 1.0, dict(zip(arms, obs.astype(int).tolist())), dict(expected_share))
    p = float(chisquare(obs, share / share.sum() * obs.sum()).pvalue)
    return SrmResult(p >= threshold, p, dict(zip(arms, obs.astype(int).tolist())), dict(expected_share))


@dataclass(frozen=True)
class Guardrail:
    """A metric the challenger may not make worse by more than `max_drop` (relative to the champion)."""
    name: str
    max_drop: float
    higher_is_better: bool = True


@dataclass(frozen=True)
class ABConfig:
    metric: str = "purchase_conversion"
    alpha: float = 0.05
    min_lift: float = 0.0  # relative margin the challenger must clear: rate_B > (1 + min_lift) * rate_A
    # mixing standard deviation of the mSPRT prior on theta, relative to the pooled rate: the effect size the
    # test is most sensitive to; an absolute value in `tau` overrides it. 0.2 measured best of 0.05/0.1/0.2/0.3
    # (tests/unit/test_ab_test.py scenario: +30% at 5% base, 400 users a day: power 0.15/0.67/0.78/0.76)
    mixture_lift: float = 0.20
    tau: float | None = None
    challenger_share: float = 0.5  # the share of users the service sends to the challenger (--ab-share)
    srm_threshold: float = 0.001
    min_users: int = 100  # per arm, before the normal approximation is trusted
    guardrails: tuple[Guardrail, ...] = ()


@dataclass(frozen=True)
class SequentialResult:
    diff: float  # theta_hat = rate_B - (1 + min_lift) * rate_A
    ci_low: float  # always-valid confidence sequence of theta at level 1 - alpha
    ci_high: float
    p_value: float  # always-valid p-value of theta = 0 (min over looks when a history is given)
    log_lr: float


def msprt(champion: ArmStats, challenger: ArmStats, alpha: float, min_lift: float = 0.0,
          tau: float | None = None, mixture_lift: float = 0.20) -> SequentialResult:
    """The normal-mixture SPRT of theta = rate_B - (1 + min_lift) rate_A = 0 on the current cumulative stats."""
    k = 1.0 + min_lift
    theta = challenger.rate - k * champion.rate
    v = challenger.variance + k * k * champion.variance
    if tau is None:
        pooled = (champion.x + challenger.x) / max(champion.y + challenger.y, 1e-12)
        tau = mixture_lift * abs(pooled)
    t2 = tau * tau
    if v <= 0 or t2 <= 0 or not math.isfinite(theta):
        return SequentialResult(theta, -math.inf, math.inf, 1.0, 0.0)
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * theta * theta / (2 * v * (v + t2))
    half = math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))
    return SequentialResult(theta, theta - half, theta + half, min(1.0, math.exp(-log_lr)), log_lr)


@dataclass(frozen=True)
class GuardrailCheck:
    name: str
    passed: bool
    champion: float
    challenger: float
    change: float  # relative change of the challenger (positive = better)
    max_drop: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str  # promote / continue / stop_not_better / stop_srm / vetoed / not_enough_data
    reason: str
    metric: str
    champion: RateSummary | None
    challenger: RateSummary | None
    lift: float | None  # relative: rate_B / rate_A - 1
    diff: float | None  # theta_hat (see SequentialResult)
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    srm_p: float
    alpha: float
    min_lift: float
    guardrails: tuple[GuardrailCheck, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return asdict(self)


def _guardrail(g: Guardrail, a: ArmStats, b: ArmStats) -> GuardrailCheck:
    ra, rb = a.rate, b.rate
    change = (rb / ra - 1.0) if ra else 0.0
    if not g.higher_is_better:
        change = -change
    ok = not (math.isfinite(change) and change < -g.max_drop)
    return GuardrailCheck(g.name, ok, ra, rb, change, g.max_drop)


def decide(arms: dict[str, dict[str, ArmStats]], config: ABConfig,
           history: list[dict[str, dict[str, ArmStats]]] | None = None) -> Decision:
    """`arms[arm][metric]` cumulative stats since the experiment started, arms `champion` and `challenger`
    (every metric's `users` = users in that arm). `history`: the same for earlier looks (oldest first); the
    always-valid p-value is the minimum over them and now, and a look that already cleared stays cleared."""
    a, b = arms[CHAMPION][config.metric], arms[CHALLENGER][config.metric]
    srm = srm_check({CHAMPION: a.users, CHALLENGER: b.users},
                    {CHAMPION: 1 - config.challenger_share, CHALLENGER: config.challenger_share},
                    config.srm_threshold)
    base = dict(metric=config.metric, srm_p=srm.p_value, alpha=config.alpha, min_lift=config.min_lift)
    if not srm.passed:
        return Decision(False, STOP_SRM,
                        f"sample ratio mismatch: {a.users} champion / {b.users} challenger users against a "
                        f"configured challenger share of {config.challenger_share:.0%} (chi-square p = "
                        f"{srm.p_value:.2g} < {config.srm_threshold}); the split is broken, no decision",
                        champion=None, challenger=None, lift=None, diff=None, ci_low=None, ci_high=None,
                        p_value=None, **base)
    sa, sb = rate_summary(a, 1 - config.alpha), rate_summary(b, 1 - config.alpha)
    lift = sb.rate / sa.rate - 1 if sa.rate else None
    if min(a.users, b.users) < config.min_users or a.y <= 0 or b.y <= 0:
        return Decision(False, NOT_ENOUGH_DATA,
                        f"not enough data: {a.users} champion / {b.users} challenger users, at least "
                        f"{config.min_users} per arm needed", champion=sa, challenger=sb, lift=lift, diff=None,
                        ci_low=None, ci_high=None, p_value=None, **base)
    res = msprt(a, b, config.alpha, config.min_lift, config.tau, config.mixture_lift)
    p_value = res.p_value
    for look in history or ():
        la, lb = look[CHAMPION][config.metric], look[CHALLENGER][config.metric]
        if min(la.users, lb.users) >= config.min_users:
            p_value = min(p_value, msprt(la, lb, config.alpha, config.min_lift, config.tau,
                                         config.mixture_lift).p_value)
    checks = tuple(_guardrail(g, arms[CHAMPION][g.name], arms[CHALLENGER][g.name]) for g in config.guardrails)
    nums = dict(champion=sa, challenger=sb, lift=lift, diff=res.diff, ci_low=res.ci_low, ci_high=res.ci_high,
                p_value=p_value, guardrails=checks, **base)
    margin = f"(1 + {config.min_lift:g}) x champion" if config.min_lift else "the champion"
    summary = (f"{config.metric}: challenger {sb.rate:.4g} vs champion {sa.rate:.4g}, lift "
               f"{(lift or 0):+.1%}; always-valid {1 - config.alpha:.0%} interval of challenger - {margin}: "
               f"[{res.ci_low:+.4g}, {res.ci_high:+.4g}], p = {p_value:.3g}")
    if p_value <= config.alpha and res.diff > 0:
        vetoes = [c for c in checks if not c.passed]
        if vetoes:
            why = "; ".join(f"{c.name} {c.change:+.1%} (allowed -{c.max_drop:.0%})" for c in vetoes)
            return Decision(False, VETOED, f"{summary}; vetoed by guardrails: {why}", **nums)
        return Decision(True, PROMOTE, f"{summary}; the challenger clears the margin: promote", **nums)
    if res.ci_high < 0:
        return Decision(False, STOP_NOT_BETTER, f"{summary}; the challenger does not clear the margin: keep "
                        "the champion", **nums)
    return Decision(False, CONTINUE, f"{summary}; not yet conclusive: keep collecting", **nums)


def stats_by_arm(per_user, metrics: dict[str, str], arm_col: str = "variant",
                 denominator: str = "shown") -> dict[str, dict[str, ArmStats]]:
    """`{arm: {metric: ArmStats}}` from a frame of one row per user and arm (`features.attribution.
    per_user_outcomes`): metric = sum(outcome column) / sum(`denominator`) over the arm's users."""
    out: dict[str, dict[str, ArmStats]] = {}
    for arm, rows in per_user.groupby(arm_col, sort=True):
        y = rows[denominator].to_numpy(float)
        out[str(arm)] = {m: ArmStats.from_users(rows[col].to_numpy(float), y) for m, col in metrics.items()}
    return out


def empty_stats() -> ArmStats:
    return ArmStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)


def summary_rows(per_user, metrics: dict[str, str], by: list[str], confidence: float = 0.95,
                 denominator: str = "shown") -> list[dict]:
    """One row per group of `by` and metric: rate with its fixed-horizon interval, users, shown items (for the
    report tables and the plots by day and arm)."""
    rows = []
    for key, part in per_user.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        y = part[denominator].to_numpy(float)
        for metric, col in metrics.items():
            s = rate_summary(ArmStats.from_users(part[col].to_numpy(float), y), confidence)
            rows.append({**dict(zip(by, map(str, key))), "metric": metric, "rate": s.rate, "ci_low": s.ci_low,
                         "ci_high": s.ci_high, "users": s.users, "shown": int(s.denominator)})
    return rows
