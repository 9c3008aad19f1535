"""LightGBM LambdaRank on candidate pairs. Returns the booster and its evaluation history;
logging is the caller's job."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np

from recsys.models import progress

# LightGBM refuses query groups larger than this
MAX_GROUP_SIZE = 10_000
DEFAULT_LABEL_GAIN = (0.0, 1.0, 3.0, 7.0)


@dataclass(frozen=True)
class RankerParams:
    objective: str = "lambdarank"  # or "rank_xendcg"
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    # pairs per leaf: a user's candidate list is ~400 pairs, so 20 let a leaf fit a handful of users and the
    # ranker overfit small label windows (validation peaked after ~10 trees); 100 was better or equal on
    # three of the four bench data sets (bench/quality.py; see the README's quality section)
    min_child_samples: int = 100
    colsample_bytree: float = 0.9
    early_stopping_rounds: int = 30
    eval_at: int = 10
    validation_share: float = 0.2
    label_gain: tuple[float, ...] = DEFAULT_LABEL_GAIN
    seed: int = 42
    num_threads: int = 0


@dataclass
class RankerResult:
    booster: lgb.Booster
    best_iteration: int
    history: dict[str, list[float]] = field(default_factory=dict)  # e.g. {"valid.ndcg_at_10": [...]}


def check_groups(labels: np.ndarray, groups: np.ndarray, label_gain: tuple[float, ...]) -> None:
    """Clear errors for what LightGBM would otherwise reject deep inside C++."""
    if len(groups) and groups.max() > MAX_GROUP_SIZE:
        worst = int(np.argmax(groups))
        raise ValueError(f"query group {worst} has {int(groups.max())} candidates; LightGBM allows at most "
                         f"{MAX_GROUP_SIZE}. Lower the candidate budget per user.")
    if groups.sum() != len(labels):
        raise ValueError(f"group sizes sum to {int(groups.sum())} but there are {len(labels)} rows")
    if len(labels) and (labels.max() >= len(label_gain) or labels.min() < 0):
        raise ValueError(f"labels must lie in [0, {len(label_gain) - 1}] for label_gain {label_gain}; "
                         f"got [{labels.min()}, {labels.max()}]")


def _progress_callback(n_rows: int, evals: dict):
    """LightGBM callback: iteration i/n, rows/s (rows x iterations), ETA, the latest validation score."""
    def report(env) -> None:
        done = env.iteration + 1
        latest = ", ".join(f"{name} {value:.4f}" for _, name, value, *_ in env.evaluation_result_list or [])
        progress.step(f"ranker ({n_rows:,} rows)", done, env.end_iteration, "iterations",
                      rows=done * n_rows, extra=latest)

    report.order = 30  # after record_evaluation
    return report


def train_ranker(x: np.ndarray, y: np.ndarray, groups: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 groups_val: np.ndarray, feature_names: list[str], params: RankerParams,
                 monotone: list[int] | None = None) -> RankerResult:
    """Fit an `LGBMRanker` with early stopping on the validation groups; `monotone` (one of -1/0/+1 per
    feature) constrains the score's direction in those features."""
    check_groups(y, groups, params.label_gain)
    check_groups(y_val, groups_val, params.label_gain)
    model = lgb.LGBMRanker(
        objective=params.objective, n_estimators=params.n_estimators, learning_rate=params.learning_rate,
        num_leaves=params.num_leaves, min_child_samples=params.min_child_samples,
        colsample_bytree=params.colsample_bytree, label_gain=list(params.label_gain),
        random_state=params.seed, n_jobs=params.num_threads or None, verbose=-1,
        lambdarank_truncation_level=max(params.eval_at * 2, 20),
        **({"monotone_constraints": list(monotone)} if monotone is not None and any(monotone) else {}))
    evals: dict = {}
    has_val = len(groups_val) > 0
    model.fit(
        x, y, group=groups, feature_name=list(feature_names),
        eval_X=(x_val,) if has_val else None, eval_y=(y_val,) if has_val else None,
        eval_group=[groups_val] if has_val else None,
        eval_names=["valid"] if has_val else None, eval_at=[params.eval_at],
        callbacks=([lgb.early_stopping(params.early_stopping_rounds, verbose=False)] if has_val else [])
        + [lgb.record_evaluation(evals), _progress_callback(len(y), evals)])
    history = {f"{split}.{name.replace('@', '_at_')}": list(values)
               for split, metrics in evals.items() for name, values in metrics.items()}
    best = model.best_iteration_ or params.n_estimators
    return RankerResult(booster=model.booster_, best_iteration=int(best), history=history)
