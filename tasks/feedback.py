"""Online feedback as Prefect tasks: the request_id side table, impressions joined with later events, the
online metrics report (MLflow experiment `online` + Prefect artifact) and the A/B decision with its record.

**Where `request_id` lives.** The event store's partitions keep the event contract's columns only (ingest,
validation, deduplication and training all read that schema). The collect flow instead writes, per batch,
`<data>/request_links/<batch>.parquet`: the stored event's key (user, item, type, time, normalised as ingest
does) and the `request_id` the storefront sent. The batch name makes a rerun replace the file, so it is as
exactly-once as the batch itself, and attribution joins it back to the stored events (`link_request_ids`).
Events that ingest quarantined (duplicates of a retried batch) find no stored event to link to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.attribution import (METRIC_OUTCOMES, AttributionParams, attribute, link_request_ids,
                                         per_user_outcomes, request_links)
from recsys.models.ab_test import (CHALLENGER, CHAMPION, PROMOTE, STOP_NOT_BETTER, Decision, decide, empty_stats,
                                   srm_check, stats_by_arm, summary_rows)
from recsys.models.online_config import ABDecisionParams, OnlineParams
from recsys.tasks import plots, tracking
from recsys.tasks.data import read_events
from recsys.tasks.impressions import on_event_clock, read_impressions
from recsys.tasks.logs import run_logger
from recsys.tasks.paths import data_dir, recsys_home
from recsys.tasks.reporting import emit_promoted, markdown_table, mlflow_run_link

LINKS = "request_links"
DAY = "day"
# tags on the challenger version written by `recsys ab-start`
STARTED_AT, SHARE = "ab.started_at", "ab.share"


def _base(data: str | None) -> Path:
    return Path(data) if data else data_dir()


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


@task(name="store-request-links", cache_policy=NO_CACHE)
def store_request_links(batch_input: str, data: str | None = None) -> int:
    """The batch's request_ids, keyed like the stored events, into `<data>/request_links/<batch>.parquet`."""
    links = request_links(pd.read_parquet(batch_input))
    _atomic_parquet(links, _base(data) / LINKS / Path(batch_input).name)
    return len(links)


def read_links(base: Path) -> pd.DataFrame:
    files = sorted((base / LINKS).glob("*.parquet")) if (base / LINKS).exists() else []
    frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else request_links(pd.DataFrame())


@task(name="attribute-impressions", cache_policy=NO_CACHE)
def load_attributed(params: OnlineParams, now: str | None = None) -> pd.DataFrame:
    """Impressions of the last `days` days, each shown item with clicked / carted / bought / revenue."""
    end = pd.Timestamp(now) if now else pd.Timestamp.now(tz="UTC")
    since = (end - pd.Timedelta(days=params.days)).normalize()
    directory = Path(params.impressions_dir) if params.impressions_dir else recsys_home() / "impressions"
    if not directory.exists():
        raise FileNotFoundError(f"no impressions at {directory}: run `recsys serve` (it logs every response "
                                "there unless --no-impressions) or pass --impressions-dir")
    # on the events' clock: a replaying client (`recsys simulate`) sends it with each request, as training reads it
    imp = on_event_clock(read_impressions(directory, since=f"{since:%Y-%m-%d}"))
    imp = imp[imp[S.TS] >= since]
    base = _base(params.data_dir)
    try:
        events = read_events(base, start=since)
    except ValueError as exc:
        if "has no events" not in str(exc):
            raise
        events = pd.DataFrame({c: pd.Series(dtype=object) for c in S.EVENT_COLUMNS})
    events = link_request_ids(events, read_links(base))
    att = attribute(imp, events, AttributionParams(window=pd.Timedelta(hours=params.attribution_hours)))
    att[DAY] = att[S.TS].dt.strftime("%Y-%m-%d")
    run_logger().info("attribution: %d shown items in %d responses since %s, %d events (%d with a request_id); "
                      "%d clicked, %d bought", len(att), att["request_id"].nunique(), since.date(), len(events),
                      int(events[S.REQUEST_ID].notna().sum()), int(att["clicked"].sum()), int(att["bought"].sum()))
    return att


def _figure_by_day(rows: list[dict]):
    frame = pd.DataFrame(rows)
    metrics = list(METRIC_OUTCOMES)
    fig, axes = plots.plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False,
                                   layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        part = frame[frame["metric"] == metric] if len(frame) else frame
        for (variant, version), g in (part.groupby(["variant", "model_version"]) if len(part) else []):
            x = pd.to_datetime(g[DAY])
            line, = ax.plot(x, g["rate"], marker="o", markersize=3, label=f"{variant} v{version}")
            ax.fill_between(x, g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle("Online metrics by day and arm (95% intervals)")
    return fig


def _fmt_rows(rows: list[dict]) -> list[dict]:
    return [{**r, "rate": f"{r['rate']:.4f}", "ci": f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"}
            for r in rows]


@task(name="online-metrics-report", cache_policy=NO_CACHE)
def report_online_metrics(att: pd.DataFrame, params: OnlineParams) -> dict:
    """Per model version and arm, over the window and by day: CTR@k, add-to-cart and purchase conversion,
    revenue per impression with 95% intervals, users per arm and the sample-ratio check when an experiment
    runs; an MLflow run in `params.experiment` (metrics, tables, plot) and a Prefect markdown artifact."""
    by_day = per_user_outcomes(att, params.k, params.endpoints, by=(DAY, "variant", "model_version"))
    total = per_user_outcomes(att, params.k, params.endpoints, by=("variant", "model_version"))
    rows_day = summary_rows(by_day, METRIC_OUTCOMES, [DAY, "variant", "model_version"])
    rows = summary_rows(total, METRIC_OUTCOMES, ["variant", "model_version"])
    days = sorted(att[DAY].unique().tolist())
    users = {str(v): int(n) for v, n in total.groupby("variant")[S.USER_ID].nunique().items()}
    srm = None
    challenger = tracking.alias_version(params.model_name, CHALLENGER)
    share = tracking.version_tags(params.model_name, challenger).get(SHARE) if challenger else None
    if share:
        srm = srm_check(users, {CHAMPION: 1 - float(share), CHALLENGER: float(share)})
    window = f"{days[0]}..{days[-1]}" if days else "no impressions"
    run_id = tracking.start_run(params.experiment, f"online metrics {window}",
                                {"flow": "online-metrics", "model": params.model_name, "window": window})
    metrics = {f"online.{r['variant']}.v{r['model_version']}.{r['metric']}{suffix}": r[key]
               for r in rows for suffix, key in (("", "rate"), (".ci_low", "ci_low"), (".ci_high", "ci_high"))}
    metrics.update({f"online.{arm}.users": n for arm, n in users.items()})
    metrics["online.impressions"] = float(len(att))
    if srm is not None:
        metrics["online.srm_p"] = srm.p_value
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None and np.isfinite(v)})
    tracking.log_series(run_id, {f"daily.{r['variant']}.{r['metric']}": [(int(r[DAY].replace("-", "")), r["rate"])]
                                 for r in rows_day})
    tracking.log_params(run_id, params.model_dump(mode="json"))
    tracking.log_dict(run_id, {"by_arm": rows, "by_day": rows_day}, "online_metrics.json")
    fig = _figure_by_day(rows_day)
    tracking.log_figure(run_id, fig, "plots/online_by_day.png")
    plots.close(fig)
    srm_line = ("no experiment running (no `challenger` alias with a recorded share)" if srm is None else
                f"users per arm {srm.observed} vs challenger share {float(share):.0%}: chi-square p = "
                f"{srm.p_value:.3g} ({'ok' if srm.passed else 'SAMPLE RATIO MISMATCH: decisions stop'})")
    md = (f"# Online metrics {window}\n\n**MLflow run:** {mlflow_run_link(run_id)}  \n"
          f"positions 1..{params.k} of {', '.join(params.endpoints)}; events within "
          f"{params.attribution_hours:g} h of the showing  \n**Sample ratio:** {srm_line}\n\n"
          + (markdown_table(_fmt_rows(rows)) if rows else "no shown items in the window") + "\n")
    tracking.log_text(run_id, md, "online_metrics.md")
    tracking.end_run(run_id)
    create_markdown_artifact(markdown=md, key="online-metrics", description=f"online metrics {window}")
    return {"run_id": run_id, "window": window, "rows": rows, "by_day": rows_day, "users": users,
            "srm_p": None if srm is None else srm.p_value, "impressions": len(att)}


def _arm_stats(att: pd.DataFrame, params: ABDecisionParams) -> dict:
    per_user = per_user_outcomes(att, params.k, params.endpoints, by=("variant",))
    stats = stats_by_arm(per_user, METRIC_OUTCOMES)
    return {arm: stats.get(arm, {m: empty_stats() for m in METRIC_OUTCOMES}) for arm in (CHAMPION, CHALLENGER)}


def experiment_rows(att: pd.DataFrame, champion: str, challenger: str, start: pd.Timestamp) -> pd.DataFrame:
    """The impressions of this experiment: champion arm served by the champion version, challenger arm by the
    challenger version, both since the experiment started (and since the champion became champion)."""
    keep = ((att["variant"] == CHAMPION) & (att["model_version"].astype(str) == str(champion))) | \
           ((att["variant"] == CHALLENGER) & (att["model_version"].astype(str) == str(challenger)))
    return att[keep & (att[S.TS] >= start)]


def _start(name: str, champion: str, challenger: str) -> pd.Timestamp:
    tags_ch, tags_champ = tracking.version_tags(name, challenger), tracking.version_tags(name, champion)
    times = [pd.Timestamp(t) for t in (tags_ch.get(STARTED_AT), tags_champ.get("promoted_at")) if t]
    if not times:
        created = tracking.client().get_model_version(name, challenger).creation_timestamp
        times = [pd.Timestamp(created, unit="ms", tz="UTC")]
    return max(t.tz_localize("UTC") if t.tzinfo is None else t for t in times)


def _decision_figure(history: list[dict], decision: Decision):
    fig, ax = plots.plt.subplots(figsize=(7, 3.6), layout="constrained")
    if history:
        x = pd.to_datetime([h[DAY] for h in history])
        ax.plot(x, [h["diff"] for h in history], marker="o", label="challenger - (1+margin) x champion")
        ax.fill_between(x, [h["ci_low"] for h in history], [h["ci_high"] for h in history], alpha=0.2,
                        label=f"always-valid {1 - decision.alpha:.0%} interval")
        ax.legend(fontsize=8)
    ax.axhline(0, color="#555555", linewidth=1)
    ax.set_title(f"A/B {decision.metric}: {decision.outcome}", fontsize=10)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return fig


@task(name="ab-decision", tags=["promotion-gate"], cache_policy=NO_CACHE)
def ab_decision(att: pd.DataFrame, params: ABDecisionParams) -> dict:
    """The always-valid test of challenger vs champion on this experiment's impressions; promotes (alias
    compare-and-set under the gate lock, `challenger` alias removed) only when it clears the margin and no
    guardrail vetoes; a sample-ratio mismatch stops it. Recorded on both versions, in an MLflow run of
    `params.experiment` and as a Prefect artifact."""
    name = params.model_name
    challenger = tracking.alias_version(name, CHALLENGER)
    if challenger is None:
        reason = f"model '{name}' has no `challenger` alias: no experiment runs (start one with `recsys ab-start`)"
        run_logger().info(reason)
        return {"outcome": "no_experiment", "promoted": False, "reason": reason}
    share = params.challenger_share or tracking.version_tags(name, challenger).get(SHARE)
    if share is None:
        raise ValueError(f"{name} v{challenger}: the challenger's traffic share is unknown (no `{SHARE}` tag); "
                         "pass --share with the value `recsys serve --ab-share` uses")
    config = params.ab_config(float(share))
    seen: dict = {}

    def decide_now(champion: str | None):
        if champion is None or champion == challenger:
            raise ValueError(f"{name}: the challenger v{challenger} is "
                             + ("the champion" if champion else "there but no champion is") +
                             "; point `challenger` at another version (`recsys ab-start`)")
        start = _start(name, champion, challenger)
        rows = experiment_rows(att, champion, challenger, start)
        history, looks = [], []
        for day in sorted(rows[DAY].unique()):
            arms = _arm_stats(rows[rows[DAY] <= day], params)
            looks.append(arms)
            d = decide(arms, config, history=looks[:-1])
            history.append({DAY: day, "outcome": d.outcome, "diff": d.diff, "ci_low": d.ci_low,
                            "ci_high": d.ci_high, "p_value": d.p_value, "srm_p": d.srm_p})
        decision = decide(_arm_stats(rows, params), config, history=looks[:-1])
        promote = decision.promote and params.promote
        seen.update(start=start, history=[h for h in history if h["diff"] is not None], decision=decision)
        reason = decision.reason + ("" if promote or not decision.promote else " (promotion disabled for this run)")
        return promote, reason, decision

    champion, promoted, decision = tracking.gate_and_promote(name, challenger, decide_now, actor="ab-decision")
    ended = promoted or (decision.outcome == STOP_NOT_BETTER and params.end_on_loss)
    if ended:
        tracking.client().delete_registered_model_alias(name, CHALLENGER)
    report = {**decision.as_dict(), "model": name, "champion_version": champion, "challenger_version": challenger,
              "promoted": promoted, "challenger_alias_removed": ended, "started_at": seen["start"].isoformat(),
              "history": seen["history"], "challenger_share": float(share)}
    run_id = tracking.start_run(params.experiment, f"ab v{challenger} vs v{champion}: "
                                f"{'promoted' if promoted else decision.outcome}",
                                {"flow": "ab-decision", "model": name, "ab.outcome": decision.outcome,
                                 "ab.champion_version": champion, "ab.challenger_version": challenger})
    nums = {f"ab.{k}": v for k, v in (("lift", decision.lift), ("diff", decision.diff), ("ci_low", decision.ci_low),
                                      ("ci_high", decision.ci_high), ("p_value", decision.p_value),
                                      ("srm_p", decision.srm_p)) if v is not None and np.isfinite(v)}
    for side in (CHAMPION, CHALLENGER):
        s = getattr(decision, side)
        if s is not None:
            nums.update({f"ab.{side}.rate": s.rate, f"ab.{side}.users": float(s.users)})
    nums["ab.promoted"] = float(promoted)
    for g in decision.guardrails:
        nums[f"ab.guardrail.{g.name}.change"] = g.change
        nums[f"ab.guardrail.{g.name}.passed"] = float(g.passed)
    tracking.log_metrics(run_id, {k: v for k, v in nums.items() if np.isfinite(v)})
    tracking.log_params(run_id, params.model_dump(mode="json"))
    tracking.log_dict(run_id, report, "ab_decision.json")
    fig = _decision_figure(seen["history"], decision)
    tracking.log_figure(run_id, fig, "plots/ab_decision.png")
    plots.close(fig)
    verdict = "PROMOTED" if promoted else decision.outcome.upper().replace("_", " ")
    md = (f"# A/B decision: {verdict}\n\n**Reason:** {decision.reason}\n\n"
          f"- model `{name}`: challenger v{challenger} vs champion v{champion}, since {seen['start']:%Y-%m-%d %H:%M} "
          f"UTC, challenger share {float(share):.0%}\n- test: mSPRT (always valid under daily looks), alpha "
          f"{decision.alpha}, margin {decision.min_lift:+.1%} relative; SRM p = {decision.srm_p:.3g}\n"
          f"- MLflow run: {mlflow_run_link(run_id)}\n")
    tracking.log_text(run_id, md, "ab_decision.md")
    tracking.end_run(run_id)
    tags = {"ab.decision": "promoted" if promoted else decision.outcome, "ab.reason": decision.reason[:5000],
            "ab.run_id": run_id, "ab.vs_champion": champion, "ab.decided_at": pd.Timestamp.now(tz="UTC").isoformat(),
            **{k: f"{v:.6g}" for k, v in nums.items() if k in ("ab.lift", "ab.p_value", "ab.ci_low", "ab.ci_high",
                                                                  "ab.srm_p")}}
    tracking.set_version_tags(name, challenger, tags)
    tracking.set_version_tags(name, champion, {
        f"ab.vs_v{challenger}": "replaced" if promoted else decision.outcome,
        f"ab.vs_v{challenger}.reason": decision.reason[:5000], f"ab.vs_v{challenger}.run_id": run_id})
    create_markdown_artifact(markdown=md, key="ab-decision", description=f"A/B decision {name}")
    if promoted:
        emit_promoted(name, challenger, run_id, decision.reason, actor="ab-decision")
    run_logger().info("ab-decision: %s", decision.reason)
    return {"outcome": "promoted" if promoted else decision.outcome, "promoted": promoted, "reason": decision.reason,
            "champion_version": champion, "challenger_version": challenger, "run_id": run_id,
            "challenger_alias_removed": ended, "lift": decision.lift, "p_value": decision.p_value,
            "ci_low": decision.ci_low, "ci_high": decision.ci_high, "srm_p": decision.srm_p}


def start_experiment(name: str, version: str, share: float) -> str | None:
    """Point `challenger` at `version` and record when and with which traffic share the experiment started;
    returns the version the alias pointed at before (None)."""
    old = tracking.alias_version(name, CHALLENGER)
    tracking.client().set_registered_model_alias(name, CHALLENGER, str(version))
    tracking.set_version_tags(name, version, {STARTED_AT: pd.Timestamp.now(tz="UTC").isoformat(), SHARE: f"{share:g}"})
    return old
