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
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        prefix = "test." if model == "two-stage" else f"baseline.{model}."
        vals = [metrics.get(f"{prefix}{n}_at_{k}", 0.0) for n in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=model)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [f"{n}@{k}" for n in names])
    ax.set_title("Two-stage model vs baselines (same test window)")
    fig.legend(loc="outside right upper", fontsize=8)  # beside the bars, never over them
    return fig


def history_figure(history: dict[str, list[float]]):
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    for name, values in history.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("boosting iteration")
    ax.set_title("Ranker validation curve")
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def metric_at_k_figure(curves):
    """One panel per metric, one line per model, k = 1..max on the x axis (a long frame: model, metric, k, value)."""
    names = list(dict.fromkeys(curves["metric"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names) + 1.5, 3.6), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        part = curves[curves["metric"] == name]
        for model, g in part.groupby("model", sort=False):
            ax.plot(g["k"], g["value"], marker="o", markersize=2.5, label=model,
                    linewidth=2.2 if model == "two-stage" else 1.2)
        ax.set_title(f"{name}@k")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)  # one legend, outside the panels
    fig.suptitle("Metric@k: two-stage model vs baselines (same test window)")
    return fig


def recall_by_source_figure(recall: dict[str, float]):
    names = sorted(recall, key=recall.get)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(names))))
    ax.barh(names, [recall[n] for n in names], color="#5aa469")
    for y, n in enumerate(names):
        ax.text(recall[n], y, f" {recall[n]:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, min(1.0, max(recall.values(), default=0) * 1.25 + 0.05))
    ax.set_xlabel("share of test purchases among the candidates")
    ax.set_title("Candidate recall by source")
    fig.tight_layout()
    return fig


def gate_figure(report: dict):
    """Challenger vs champion on the primary metric (with the CI of the difference) and each guardrail."""
    rows = [(report["metric"], report.get("challenger"), report.get("champion"))]
    units = {"latency_p95": "latency_p95 (ms)"}
    rows += [(units.get(g["name"], g["name"]), g.get("challenger"), g.get("champion"))
             for g in report.get("guardrails", [])
             if g.get("challenger") is not None and g["name"] != "latency_ratio"]  # same numbers as latency_p95
    fig, axes = plt.subplots(1, len(rows), figsize=(3.0 * len(rows), 3.4), squeeze=False)
    for ax, (name, chal, champ) in zip(axes[0], rows):
        vals = [v if v is not None else 0.0 for v in (champ, chal)]
        bars = ax.bar(["champion", "challenger"], vals, color=["#999999", "#3b7dd8" if report["promote"] else "#d8553b"])
        for b, v in zip(bars, (champ, chal)):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), "n/a" if v is None else f"{v:.4g}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(name, fontsize=9)
    verdict = "PROMOTED" if report["promote"] else "KEPT CHAMPION"
    ci = "" if report.get("ci_low") is None else f", CI of diff [{report['ci_low']:+.4f}, {report['ci_high']:+.4f}]"
    fig.suptitle(f"Gate: {verdict} (challenger v{report.get('challenger_version')} vs champion "
                 f"v{report.get('champion_version')}{ci})", fontsize=10)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)


def simulation_figure(days: list[dict]):
    """Simulated days: CTR and purchase conversion per arm (95% binomial intervals over shown items, which
    ignore that one shopper sees many items: a little narrow), and the champion version."""
    x = np.arange(1, len(days) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, key, count, title in ((axes[0], "ctr", "clicks", "CTR (clicks / shown items)"),
                                  (axes[1], "conversion", "purchases", "purchase conversion (purchases / shown items)")):
        for shift, arm in ((-0.08, "champion"), (0.08, "challenger")):
            shown = np.array([d["arms"][arm]["impressions"] for d in days], float)
            if not shown.any():
                continue
            rate = np.divide([d["arms"][arm][count] for d in days], shown, out=np.full(len(days), np.nan),
                             where=shown > 0)
            half = 1.96 * np.sqrt(np.divide(rate * (1 - rate), shown, out=np.full(len(days), np.nan), where=shown > 0))
            ax.errorbar(x + shift, rate, yerr=half, marker="o", capsize=3, label=arm)
        ax.set_title(title)
        ax.set_xlabel("simulated day")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    champions = [int(d["versions"]["champion"] or 0) for d in days]
    axes[2].step(x, champions, where="mid")
    axes[2].set_yticks(sorted(set(champions)))
    axes[2].set_title("champion version")
    axes[2].set_xlabel("simulated day")
    return fig
