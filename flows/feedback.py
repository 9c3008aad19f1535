"""Online feedback flows: `online-metrics` (per arm and model version, by day) and `ab-decision` (the
sequential A/B test that may promote the challenger). Both read the service's impressions joined with the
events that followed them (recsys.features.attribution)."""

from __future__ import annotations

from prefect import flow

from recsys.models.online_config import ABDecisionParams, OnlineParams
from recsys.tasks.feedback import ab_decision as ab_decision_task
from recsys.tasks.feedback import load_attributed, report_online_metrics


@flow(name="online-metrics", log_prints=True)
def online_metrics(params: OnlineParams = OnlineParams()) -> dict:
    """CTR@k, add-to-cart and purchase conversion, revenue per impression per arm and model version, with
    intervals, by day; logged to MLflow (experiment `online`) and as the `online-metrics` artifact."""
    attributed = load_attributed(params)
    report = report_online_metrics(attributed, params)
    print(f"online metrics {report['window']}: {report['impressions']} shown items, users per arm "
          f"{report['users']}, MLflow run {report['run_id']}")
    return report


@flow(name="ab-decision", log_prints=True)
def ab_decision(params: ABDecisionParams = ABDecisionParams()) -> dict:
    """Challenger vs champion on the experiment's impressions: promote only when the always-valid test clears
    the margin, no guardrail vetoes and the split passes the sample-ratio check."""
    attributed = load_attributed(params)
    result = ab_decision_task(attributed, params)
    print(f"ab-decision: {result['outcome']}: {result['reason']}")
    return result
