"""The promotion gate as a Prefect task: champion and challenger loaded from the registry, scored on the
same users of a fair window (`recsys.models.gate.fair_window`), guardrails, the serialised alias move, and the
record of the decision (gate child run, parent run, both model versions, the Prefect artifact)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.lineage import Lineage
from recsys.features.split import Split
from recsys.models.config import TrainConfig
from recsys.models.evaluation import evaluation_truth
from recsys.models.gate import (NO_FAIR_WINDOW, GateDecision, GuardrailMeasures, data_identity_mismatch,
                                decide_with_guardrails, fair_window, latency_p95_ms, no_fair_window)
from recsys.models.metrics import catalog_coverage, per_user_metrics
from recsys.models.search import search_quality
from recsys.models.search_ranker import search_sessions
from recsys.models.distributed import recommend_ids_on_cluster
from recsys.models.two_stage import TwoStageRecommender
from recsys.tasks import plots, tracking
from recsys.tasks.cluster import cluster_client
from recsys.tasks.logs import run_logger
from recsys.tasks.run_record import run_title, version_description
from recsys.tasks.training import LoadedData, data_identity_message

@dataclass
class _Scored:
    per_user: dict[str, np.ndarray]
    coverage: float
    new_user_ndcg: float | None


def _score(rec: TwoStageRecommender, user_ids: list[str], relevant: list[set], new_mask: np.ndarray, k: int,
           n_items: int, client=None) -> _Scored:
    """Per-user metrics, catalog coverage and new-user NDCG of one model, through `recommend_ids` (as served);
    with a Dask `client` the same lists scored on its workers."""
    lists = (recommend_ids_on_cluster(client, rec, user_ids, k) if client is not None
             else [r["items"] for r in rec.recommend_ids(user_ids, k)])
    per_user = per_user_metrics(lists, relevant, k)
    ndcg = per_user[f"ndcg_at_{k}"]
    return _Scored(per_user, catalog_coverage(lists, n_items),
                   float(ndcg[new_mask].mean()) if new_mask.any() else None)


def _search_ndcg(rec: TwoStageRecommender, searches) -> float | None:
    """Mean search NDCG@10 of a model as served on the window's searches (None: no search to score)."""
    ndcg = search_quality(rec, searches, 10)["ndcg_at_10"]
    return float(ndcg.mean()) if len(ndcg) else None


def _latencies(models: list[TwoStageRecommender], user_ids: list[str], k: int) -> list[np.ndarray]:
    """Seconds per one-user `recommend_ids` call on a fixed sample, models interleaved so load hits both alike."""
    for m in models:  # warm caches / lazy state once
        m.recommend_ids(user_ids[:1], k)
    out = [np.empty(len(user_ids)) for _ in models]
    for i, u in enumerate(user_ids):
        for j, m in enumerate(models):
            t0 = time.perf_counter()
            m.recommend_ids([u], k)
            out[j][i] = time.perf_counter() - t0
    return out


def gate_report_markdown(report: dict) -> str:
    verdict = "PROMOTED" if report["promoted"] else "NOT PROMOTED"
    w = report["window"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    scored = (f"{w.get('start')} .. {w.get('end')} ({report['n_users']} of the window's {report['users_in_window']} "
              "users scored, both models on the same users)" if w.get("start") else "none: not compared")
    lines = [f"# Promotion gate: {verdict}", "",
             f"**Reason:** {report['reason']}", "",
             f"- model: `{report['model']}`, challenger v{report['challenger_version']}, "
             f"champion before: {('v' + report['champion_version']) if report['champion_version'] else 'none'}",
             f"- training end (exclusive): challenger {report.get('challenger_train_end') or 'unknown'}, champion "
             f"{report.get('champion_train_end') or ('n/a' if not report['champion_version'] else 'unknown')}",
             f"- challenger's test window: {w.get('label_end')} .. {w.get('test_end')}",
             f"- window scored: {scored}",
             f"- comparison: {report.get('comparison', 'compared')}",
             f"- primary metric `{report['metric']}`: challenger {fmt(report.get('challenger'))}"
             + (f", champion {report['champion']:.4f}, diff {report['diff']:+.4f}, "
                f"CI [{report['ci_low']:+.4f}, {report['ci_high']:+.4f}], margin {report['margin']:+.4f}"
                if report.get("champion") is not None else ""), ""]
    if report.get("guardrails"):
        lines += ["| guardrail | passed | challenger | champion | limit | detail |", "|---|---|---|---|---|---|"]
    for g in report.get("guardrails", []):
        lines.append(f"| {g['name']} | {'yes' if g['passed'] else '**VETO**'} | {fmt(g['challenger'])} | "
                     f"{fmt(g['champion'])} | {fmt(g['limit'])} | {g['detail']} |")
    return "\n".join(lines) + "\n"


@dataclass
class _GateWindow:
    """One scoring window of the gate: its users, what they bought, who is new, the challenger's scores."""
    start: pd.Timestamp
    end: pd.Timestamp
    user_ids: list[str]
    relevant: list[set]
    new_mask: np.ndarray
    n_window: int
    latency_users: list[str]
    searches: object  # the window's search sessions (recsys.models.search_ranker.SearchSessions)
    challenger: _Scored | None = None
    challenger_search: float | None = None


def _gate_window(data: LoadedData, start: pd.Timestamp, end: pd.Timestamp, config: TrainConfig) -> _GateWindow:
    events = data.window(start, end)  # on Dask the window alone is gathered
    truth, n_window = evaluation_truth(events, config.evaluation)
    user_ids, relevant = truth.index.astype(str).tolist(), truth.tolist()
    new_mask = ~np.asarray(data.seen_before(user_ids, start), dtype=bool)
    latency_users = user_ids[:config.gate.latency_users] or [str(u) for u in data.head(5)[S.USER_ID]]
    return _GateWindow(start, end, user_ids, relevant, new_mask, n_window, latency_users, search_sessions(events))


def _ts(value: pd.Timestamp | None) -> str | None:
    return value.isoformat() if value is not None else None


# tag: a Prefect tag concurrency limit `promotion-gate` = 1 (scripts/prefect_up.sh) serialises gates across
# runs and machines, on top of the file lock below
@task(name="promotion-gate", tags=["promotion-gate"], cache_policy=NO_CACHE)
def promotion_gate(run_id: str, version: str, data: LoadedData, split: Split, config: TrainConfig,
                   dask_address: str | None = None) -> GateDecision:
    """Champion and challenger, both loaded from the registry, scored on the same users of a fair window: it
    starts at or after both models' training ends (no model is scored on events it learnt from); without such
    a window, or when the champion was trained on another data set, they are not compared and the champion
    stays. Otherwise: primary metric by paired bootstrap, then guardrails (coverage, new users, latency) that
    can veto. The decision is serialized (gate lock + compare-and-set of the alias) and recorded in a `gate`
    child run, on the parent run and on both model versions. With a Dask cluster at `dask_address` both
    models' window lists are scored on its workers (the latency guardrail stays on the driver: as served)."""
    name, metric, params = config.registered_model, config.gate.metric, config.gate
    chal_lineage = Lineage.from_tags(tracking.version_tags(name, version))
    windows: dict[pd.Timestamp, _GateWindow] = {}
    seen: dict = {}

    own_address = dask_address if data.cluster is None else None  # the data's own connection when it has one
    with cluster_client(own_address) as own, \
            tracking.child_run(run_id, "gate", {"gate.challenger_version": version}) as gate_run:
        client = data.cluster.client if data.cluster is not None else own
        challenger_rec = tracking.load_recommender(name, version)
        n_items = challenger_rec.data.n_items  # the newest catalog: one denominator for both models

        def scored_window(start: pd.Timestamp) -> _GateWindow:
            if start not in windows:
                w = _gate_window(data, start, split.test_end, config)
                w.challenger = _score(challenger_rec, w.user_ids, w.relevant, w.new_mask, config.k, n_items, client)
                w.challenger_search = _search_ndcg(challenger_rec, w.searches)
                if metric not in w.challenger.per_user:
                    raise ValueError(f"gate metric '{metric}' is not one of {sorted(w.challenger.per_user)}")
                windows[start] = w
            return windows[start]

        def decide(champion: str | None):
            champ_lineage = (Lineage.from_tags(tracking.version_tags(name, champion))
                             if champion is not None and champion != version else None)
            seen.update(champion_lineage=champ_lineage, window=None, comparison="compared")
            if champ_lineage is not None:
                why = data_identity_mismatch(chal_lineage, champ_lineage, params.min_catalog_overlap)
                if why:
                    seen["comparison"] = "different data set"
                    reason = (f"different data set, not compared: "
                              f"{data_identity_message(name, champion, why, chal_lineage.dataset)}; kept champion")
                    return False, reason, GateDecision(False, reason, metric, None, None, None, None, None, 0)
            span = fair_window(split.label_end, split.test_end, chal_lineage.train_end,
                               champ_lineage.train_end if champ_lineage else None)
            if span is None and champ_lineage is not None:
                seen["comparison"] = NO_FAIR_WINDOW
                decision = no_fair_window(params, champion, split.label_end, split.test_end, champ_lineage.train_end)
                return False, decision.reason, decision
            w = scored_window(span[0] if span else split.label_end)
            seen["window"] = w
            chal, chal_search, champ, champ_rec, champ_search = w.challenger, w.challenger_search, None, None, None
            if champ_lineage is not None:
                champ_rec = tracking.load_recommender(name, champion)
                champ = _score(champ_rec, w.user_ids, w.relevant, w.new_mask, config.k, n_items, client)
                champ_search = _search_ndcg(champ_rec, w.searches)
            lat = _latencies([challenger_rec] + ([champ_rec] if champ_rec is not None else []), w.latency_users,
                             config.k)
            chal_m = GuardrailMeasures(chal.coverage, chal.new_user_ndcg, latency_p95_ms(lat[0]), chal_search)
            champ_m = GuardrailMeasures(champ.coverage, champ.new_user_ndcg, latency_p95_ms(lat[1]),
                                        champ_search) if champ else None
            decision = decide_with_guardrails(chal.per_user[metric], champ.per_user[metric] if champ else None,
                                              params, chal_m, champ_m)
            promoted = decision.promote and config.promote
            if decision.promote and not config.promote:
                decision = replace(decision, reason=f"{decision.reason} (promotion disabled for this run)")
            return promoted, decision.reason, replace(decision, promote=promoted)

        champion, promoted, decision = tracking.gate_and_promote(name, version, decide)
        w: _GateWindow | None = seen["window"]
        champ_lineage: Lineage | None = seen["champion_lineage"]
        compared = seen["comparison"] == "compared"
        report = {**decision.as_dict(), "model": name, "champion_version": champion, "challenger_version": version,
                  "promoted": promoted, "margin": params.margin, "params": asdict(params),
                  "comparison": seen["comparison"],
                  "challenger_train_end": _ts(chal_lineage.train_end),
                  "champion_train_end": _ts(champ_lineage.train_end) if champ_lineage else None,
                  "challenger_data": chal_lineage.identity,
                  "champion_data": champ_lineage.identity if champ_lineage else None,
                  "window": {**{k_: str(v) for k_, v in split.as_dict().items()},
                             "start": _ts(w.start) if w else None, "end": _ts(w.end) if w else None},
                  "users_in_window": w.n_window if w else 0,
                  "new_users_scored": int(w.new_mask.sum()) if w else 0,
                  "latency_users": len(w.latency_users) if w else 0}
        decision = replace(decision, lineage={
            "comparison": seen["comparison"], "window_start": report["window"]["start"],
            "window_end": report["window"]["end"], "test_start": _ts(split.label_end), "test_end": _ts(split.test_end),
            "challenger_train_end": report["challenger_train_end"], "champion_train_end": report["champion_train_end"]})
        report["lineage"] = decision.lineage
        gate_metrics = {f"gate.{k_}": v for k_, v in decision.as_dict().items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
        gate_metrics["gate.promoted"] = float(promoted)
        for g in decision.guardrails:
            for side in ("challenger", "champion"):
                if getattr(g, side) is not None:
                    gate_metrics[f"gate.guardrail.{g.name}.{side}"] = getattr(g, side)
            gate_metrics[f"gate.guardrail.{g.name}.passed"] = float(g.passed)
        outcome = ("promoted" if promoted else "rejected") if compared else seen["comparison"].replace(" ", "_")
        gate_tags = {"gate.decision": outcome, "gate.reason": decision.reason, "gate.comparison": seen["comparison"],
                     "gate.champion_version": champion or "none", "gate.challenger_version": version,
                     "gate.window": f"{w.start.isoformat()}..{w.end.isoformat()}" if w else "none",
                     "gate.vetoed_by": ",".join(decision.vetoed_by) or "none"}
        md = gate_report_markdown(report)
        fig = plots.gate_figure(report)
        for target in (gate_run, run_id):
            tracking.log_metrics(target, gate_metrics)
            tracking.log_tags(target, gate_tags)
            tracking.log_dict(target, report, "gate_report.json")
            tracking.log_text(target, md, "gate_report.md")
            tracking.log_figure(target, fig, "plots/gate.png")
        plots.close(fig)
        tracking.set_note(run_id, md)
        summary = {"0_summary.gate.promoted": float(promoted)}
        for field in ("diff", "ci_low", "ci_high"):
            if getattr(decision, field) is not None:
                summary[f"0_summary.gate.{field}"] = getattr(decision, field)
        tracking.log_metrics(run_id, summary)
        # the outcome first in the name: the runs table reads "v3 champion (cutoff ...)" / "v4 rejected, v3 kept" /
        # "v5 no fair window, v3 kept"
        verdict = (f"v{version} champion" if promoted
                   else f"v{version} {seen['comparison']}, v{champion} kept" if champion and not compared
                   else f"v{version} rejected, v{champion} kept" if champion else f"v{version} not promoted")
        tracking.rename_run(run_id, run_title(verdict, split))
        evaluated = tracking.client().get_run(run_id).data.metrics
        tracking.describe_version(name, version, version_description(evaluated, config.k, split, run_id,
                                                                     decision.reason))
        tracking.set_version_tags(name, version, {"gate.decision": gate_tags["gate.decision"],
                                                  "gate.reason": decision.reason[:5000], "gate.run_id": gate_run,
                                                  "gate.window": gate_tags["gate.window"],
                                                  "gate.vs_champion": (champion or "none") if compared else "none"})
        # only a real comparison is written on the champion: no `vs` numbers from an unfair window
        if compared and champion is not None and champion != version:
            tracking.set_version_tags(name, champion, {f"gate.vs_v{version}": "replaced" if promoted else "kept",
                                                       f"gate.vs_v{version}.reason": decision.reason[:5000]})
    run_logger().info("gate: %s", decision.reason)
    return decision


__all__ = ["promotion_gate", "gate_report_markdown"]
