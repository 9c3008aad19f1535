"""Figures for the MLflow UI (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def feature_importance_figure(names: list[str], gains: np.ndarray):
    order = np.argsort(gains)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(names))))
    ax.barh(np.array(names)[order], gains[order], color="#3b7dd8")
    ax.set_xlabel("total gain")
    ax.set_title("Ranker feature importance")
    fig.tight_layout()
    return fig


def model_vs_baselines_figure(metrics: dict[str, float], k: int):
    names = ["ndcg", "map", "recall", "hitrate"]
    models = ["two-stage"] + sorted({key.split(".")[1] for key in metrics if key.startswith("baseline.")})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        prefix = "test." if model == "two-stage" else f"baseline.{model}."
        vals = [metrics.get(f"{prefix}{n}_at_{k}", 0.0) for n in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=model)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [f"{n}@{k}" for n in names])
    ax.set_title("Two-stage model vs baselines (same test window)")
    ax.legend()
    fig.tight_layout()
    return fig


def history_figure(history: dict[str, list[float]]):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in history.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("boosting iteration")
    ax.set_title("Ranker validation curve")
    ax.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
