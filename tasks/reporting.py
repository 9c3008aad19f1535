"""Prefect artifacts (markdown summaries in the UI) and events (what automations react to)."""

from __future__ import annotations

import logging

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from recsys.tasks import tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.paths import tracking_uri

log = logging.getLogger(__name__)

PROMOTED_EVENT = "recsys.champion.promoted"


def emit_promoted(model_name: str, version: str, run_id: str | None, reason: str, actor: str = "promotion-gate"):
    """The event `batch-score-on-promotion` (prefect.yaml) reacts to: the champion alias now points at
    `version`. Emitted by the gate and by a manual `recsys promote` / `recsys rollback` alike."""
    return emit_event(event=PROMOTED_EVENT,
                      resource={"prefect.resource.id": f"recsys.model.{model_name}", "recsys.model": model_name},
                      payload={"version": str(version), "run_id": run_id or "", "reason": reason, "actor": actor})


def announce_champion_move(model_name: str, version: str, reason: str, actor: str) -> str:
    """Emit the promotion event for a manual alias move (outside a flow run); returns one line saying
    where it went. Without a Prefect server (PREFECT_API_URL) there is no automation to trigger: it says
    so instead of starting a throwaway server."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return (f"PREFECT_API_URL is not set: no {PROMOTED_EVENT} event sent; batch scores follow at the next "
                "scheduled batch-score run (or run `prefect deployment run batch-score/batch-score-on-promotion`)")
    try:
        run_id = tracking.client().get_model_version(model_name, version).run_id
    except Exception:  # the event matters more than its run id
        run_id = None
    event = emit_promoted(model_name, version, run_id, reason, actor)
    EventsWorker.drain_all(timeout=30)  # a CLI process exits right after: deliver the event first
    if event is None:
        return f"{PROMOTED_EVENT} not sent: this Prefect configuration does not emit events"
    return f"{PROMOTED_EVENT} event {event.id} sent to {api} (batch-score-on-promotion reacts to it)"


def mlflow_run_link(run_id: str) -> str:
    """A clickable link to the run when MLflow is a server; otherwise how to open it locally."""
    uri = tracking_uri()
    try:
        exp = tracking.client().get_run(run_id).info.experiment_id
    except Exception:  # the summary must not fail the run
        exp = None
    if uri.startswith(("http://", "https://")) and exp is not None:
        url = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
        return f"[{run_id}]({url})"
    return f"`{run_id}` (experiment {exp}; `mlflow ui --backend-store-uri {uri}`)"


def metric_rows(metrics: dict[str, float], k: int) -> list[dict]:
    """The model vs baselines table, one row per model: the one source of every rendering of it (the
    terminal's `rich` table, the Prefect table artifact, the markdown summary, the MLflow text artifact)."""
    names = ["ndcg", "map", "recall", "hitrate"]
    models = [("two-stage", "test.")] + [(b, f"baseline.{b}.") for b in
                                         sorted({key.split(".")[1] for key in metrics if key.startswith("baseline.")})]
    def value(key: str) -> float | None:  # None, not NaN: the table artifact is JSON
        v = metrics.get(key)
        return None if v is None or v != v else round(float(v), 4)

    return [{"model": label, **{f"{n}@{k}": value(f"{prefix}{n}_at_{k}") for n in names}}
            for label, prefix in models]


def _cell(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: list[dict], title: str | None = None) -> str:
    """A `rich` table rendered to plain text (for terminals, Prefect logs and text artifacts)."""
    import io

    from rich.console import Console
    from rich.table import Table

    cols = list(dict.fromkeys(c for r in rows for c in r))
    table = Table(title=title, box=None, pad_edge=False)
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(_cell(r.get(c, "")) for c in cols))
    out = io.StringIO()
    Console(file=out, width=160, no_color=True, highlight=False).print(table)
    return out.getvalue().rstrip("\n")


def summary_markdown(title: str, run_id: str | None, metrics: dict[str, float] | None, k: int,
                     model_name: str, version: str | None, gate: dict | None) -> str:
    lines = [f"# {title}", ""]
    if run_id:
        lines.append(f"**MLflow run:** {mlflow_run_link(run_id)}  ")
    if version:
        lines.append(f"**Model:** `{model_name}` version {version}  ")
    if gate is not None:
        decision = "promoted" if gate.get("promote") else "kept champion"
        lines.append(f"**Gate:** {decision} — {gate.get('reason', '')}  ")
        if gate.get("ci_low") is not None:
            lines.append(f"challenger {gate.get('challenger', float('nan')):.4f} vs champion "
                         f"{gate.get('champion') if gate.get('champion') is not None else 'none'}; "
                         f"CI of the difference [{gate['ci_low']:+.4f}, {gate['ci_high']:+.4f}] "
                         f"over {gate.get('n_users')} users  ")
        lin = gate.get("lineage") or {}
        if lin:
            scored = (f"{lin['window_start']} .. {lin['window_end']}" if lin.get("window_start")
                      else f"none ({lin.get('comparison')})")
            lines.append(f"**Window scored:** {scored}; challenger's test window {lin.get('test_start')} .. "
                         f"{lin.get('test_end')}; trained until: challenger {lin.get('challenger_train_end')}, "
                         f"champion {lin.get('champion_train_end') or 'n/a'}  ")
    if metrics:
        lines += ["", "## Metrics (same test window)", "", markdown_table(metric_rows(metrics, k))]
    return "\n".join(lines) + "\n"


@task(name="publish-summary", retries=1, retry_delay_seconds=[2], retry_condition_fn=retry_transient)
def publish_summary(title: str, run_id: str | None, metrics: dict[str, float] | None, k: int, model_name: str,
                    version: str | None, gate: dict | None, key: str = "train-summary") -> str:
    """A markdown artifact on the flow run; a `recsys.champion.promoted` event when the alias moved."""
    md = summary_markdown(title, run_id, metrics, k, model_name, version, gate)
    create_markdown_artifact(markdown=md, key=key, description=title)
    if metrics:  # the same rows as a table artifact: sortable in the UI, readable through the API
        create_table_artifact(table=metric_rows(metrics, k), key=f"{key}-metrics",
                              description=f"{title}: model vs baselines on the same test window")
    if gate is not None and gate.get("promote") and version:
        emit_promoted(model_name, str(version), run_id, gate.get("reason", ""))
    return md


@task(name="publish-table")
def publish_table(title: str, rows: list[dict], key: str) -> str:
    """A markdown table artifact (e.g. one row per backfill cutoff)."""
    md = f"# {title}\n\n" + markdown_table(rows)
    create_markdown_artifact(markdown=md, key=key, description=title)
    return md
