"""The online loop's commands: `recsys simulate` (simulated shoppers against the live service),
`recsys online-metrics`, `recsys ab-start` and `recsys ab-decision`. They register on the one `app` of
flows/cli.py, which imports this module, and share its one-line error handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from recsys.flows.cli import _check_date, _env, _fail, _guard, _one_line_errors, _ranges, app

@app.command()
@_one_line_errors
def simulate(
    days: int = typer.Option(2, min=1, help="simulated days"),
    sessions_per_day: int = typer.Option(300, min=1, help="shopping sessions per simulated day"),
    seed: int = typer.Option(0, help="seed of the shoppers' behaviour"),
    users: int = typer.Option(3000, min=1, help="the world: --users of `recsys generate`"),
    items: int = typer.Option(1500, min=1, help="the world: --items of `recsys generate`"),
    world_days: int = typer.Option(56, min=1, help="the world: --days of `recsys generate`"),
    world_seed: int = typer.Option(42, help="the world: --seed of `recsys generate`"),
    start: str = typer.Option("2026-01-05", help="the world: --start of `recsys generate`"),
    ab_share: float = typer.Option(0.0, min=0.0, max=0.99, help="share of users served by the `challenger` "
                                                                "alias; nightly versions become the challenger "
                                                                "and the online A/B decision promotes"),
    retrain: bool = typer.Option(True, help="retrain and gate every simulated night"),
    faulty_per_day: int = typer.Option(5, min=0, help="known-bad events posted per day (checks quarantine)"),
    position_decay: float = typer.Option(1.0, min=0.0, help="position bias: a shopper looks at slot r with "
                                                           "probability r ** -position_decay"),
    url: Optional[str] = typer.Option(None, help="use this running service (default: start one)"),
    model_name: str = typer.Option("recsys", help="registered model the service follows"),
    feedback: str = typer.Option("off", help="nightly training learns from the impressions (on / off)"),
    compare_feedback: bool = typer.Option(False, help="with --ab-share: each night trains without feedback "
                                                      "(champion arm) and with it (challenger arm)"),
    label_days: Optional[int] = typer.Option(None, min=1, help="nightly training's label window (default: "
                                                               "`recsys train`'s)"),
    test_days: Optional[int] = typer.Option(None, min=1, help="nightly training's test window"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Simulated shoppers (the synthetic world's users, by their hidden tastes) against the live service:
    each day they search, open recommendations, click and buy and POST their events; between days the
    events are collected, the model retrained and gated, and an A/B split decided. Per day: sessions,
    impressions, CTR and conversion per arm, champion version, events sent / stored / quarantined."""
    _check_date("--start", start)
    if feedback not in ("on", "off"):
        _fail(f"--feedback must be on or off, not '{feedback}'")
    if compare_feedback and not ab_share > 0:
        _fail("--compare-feedback needs --ab-share > 0 (one arm per model)")
    overrides: dict = {"feedback": {"enabled": True}} if feedback == "on" else {}
    split = {k_: v for k_, v in (("label_days", label_days), ("test_days", test_days)) if v is not None}
    if split:
        overrides["split"] = split
    _env()
    from recsys.flows.simulate import SimulateParams, simulate as simulate_flow

    params = SimulateParams(days=days, sessions_per_day=sessions_per_day, seed=seed, users=users, items=items,
                            world_days=world_days, world_seed=world_seed, start=start, ab_share=ab_share,
                            retrain=retrain, faulty_per_day=faulty_per_day, position_decay=position_decay, url=url,
                            model_name=model_name, train_overrides=overrides, compare_feedback=compare_feedback)
    _guard("simulate")
    result = simulate_flow(params=params)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    from recsys.flows.simulate import format_day, format_pooled

    for n, day in enumerate(result["days"], start=1):
        typer.echo(format_day(n, day))
    if result.get("pooled", {}).get("challenger"):
        typer.echo(format_pooled(result["pooled"]))
    typer.echo(f"MLflow run {result['mlflow_run_id']} (experiment simulate)")


def _online_options(model_name: str, days: int, k: int, attribution_hours: float,
                    impressions_dir: Optional[Path], data_dir: Optional[Path]) -> dict:
    """The flows' common parameters, directories checked before any work (call after _env)."""
    from recsys.tasks.paths import recsys_home

    imp = impressions_dir or recsys_home() / "impressions"
    if not imp.is_dir():
        _fail(f"--impressions-dir {imp}: no such directory; `recsys serve` logs every answer there (unless "
              "--no-impressions), so serve some traffic first or pass the service's --impressions-dir")
    if data_dir is not None and not data_dir.is_dir():
        _fail(f"--data-dir {data_dir}: no such directory")
    return dict(model_name=model_name, days=days, k=k, attribution_hours=attribution_hours,
                impressions_dir=str(impressions_dir) if impressions_dir else None,
                data_dir=str(data_dir) if data_dir else None)


# the options both online commands take (one OptionInfo may serve several commands)
_ONLINE = dict(
    days=typer.Option(14, min=1, max=366, help="impressions of the last N days (UTC)"),
    k=typer.Option(10, min=1, max=100, help="positions 1..k count as shown"),
    attribution_hours=typer.Option(24.0, min=0.001, help="an event counts for a shown item this many hours "
                                                         "after it was shown"),
    impressions_dir=typer.Option(None, help="the service's impressions; default $RECSYS_HOME/impressions"),
    data_dir=typer.Option(None, help="event store; default $RECSYS_HOME/data"))


@app.command("online-metrics")
@_one_line_errors
def online_metrics(
    model_name: str = typer.Option("recsys", help="registered model"),
    days: int = _ONLINE["days"], k: int = _ONLINE["k"], attribution_hours: float = _ONLINE["attribution_hours"],
    impressions_dir: Optional[Path] = _ONLINE["impressions_dir"], data_dir: Optional[Path] = _ONLINE["data_dir"],
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Online metrics per arm and model version (CTR@k, add-to-cart and purchase conversion, revenue per
    impression, 95% intervals, by day) from the impressions and the events that followed; MLflow experiment
    `online` (the `online-metrics` deployment runs it daily)."""
    _env()
    from recsys.flows.feedback import online_metrics as flow
    from recsys.models.online_config import OnlineParams

    _guard("online-metrics")
    report = flow(params=OnlineParams(**_online_options(model_name, days, k, attribution_hours, impressions_dir,
                                                        data_dir)))
    if as_json:
        typer.echo(json.dumps({k_: v for k_, v in report.items() if k_ != "by_day"}, default=str))
        return
    typer.echo(f"online metrics {report['window']}: {report['impressions']:,} shown items; users per arm "
               f"{report['users']}" + (f"; sample-ratio p = {report['srm_p']:.3g}" if report["srm_p"] is not None
                                        else ""))
    for r in report["rows"]:
        typer.echo(f"  {r['variant']:<10} v{r['model_version']:<4} {r['metric']:<24} {r['rate']:.4f} "
                   f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]  {r['users']:,} users, {r['shown']:,} shown")
    typer.echo(f"MLflow run {report['run_id']} (experiment online)")


@app.command("ab-start")
@_one_line_errors
def ab_start(
    version: str = typer.Option(..., help="model version to test against the champion (`newest`: the newest "
                                          "registered version)"),
    share: float = typer.Option(..., min=0.001, max=0.999, help="share of users it gets: the same value as "
                                                               "`recsys serve --ab-share`"),
    model_name: str = typer.Option("recsys"),
) -> None:
    """Start an A/B experiment: point the `challenger` alias at a version and record the start and the share."""
    if version != "newest" and (not version.isdigit() or int(version) < 1):
        _fail(f"--version must be a model version number such as 3 (or newest), not '{version}'")
    _env()
    from recsys.tasks import tracking
    from recsys.tasks.feedback import start_experiment

    versions = tracking.version_numbers(model_name)
    if version == "newest" and versions:
        version = versions[-1]
    if version not in versions:
        have = f"its versions are {_ranges(versions)}" if versions else "it has no versions (train one first)"
        _fail(f"model '{model_name}' has no version {version}: {have}")
    if tracking.alias_version(model_name) == version:
        _fail(f"v{version} is the champion of '{model_name}'; the challenger must be another version")
    old = start_experiment(model_name, version, share)
    typer.echo(f"{model_name}: challenger {old or 'none'} -> {version}, {share:.0%} of users; serve with "
               f"`recsys serve --ab-share {share:g}`, decide with `recsys ab-decision`")


@app.command("ab-decision")
@_one_line_errors
def ab_decision(
    model_name: str = typer.Option("recsys", help="registered model"),
    metric: str = typer.Option("purchase_conversion", help="primary metric: ctr, add_to_cart_conversion, "
                                                          "purchase_conversion or revenue_per_impression"),
    alpha: float = typer.Option(0.05, help="error rate of a promotion (valid when decided every day)"),
    min_lift: float = typer.Option(0.0, help="relative margin the challenger must clear, e.g. 0.02 = +2%"),
    share: Optional[float] = typer.Option(None, help="challenger's share of users; default: as `recsys "
                                                     "ab-start` recorded it"),
    min_users: int = typer.Option(100, help="users per arm before any decision"),
    promote: bool = typer.Option(True, help="move `champion` when the test clears (--no-promote: only report)"),
    days: int = _ONLINE["days"], k: int = _ONLINE["k"], attribution_hours: float = _ONLINE["attribution_hours"],
    impressions_dir: Optional[Path] = _ONLINE["impressions_dir"], data_dir: Optional[Path] = _ONLINE["data_dir"],
    as_json: bool = typer.Option(False, "--json", help="print the decision as JSON"),
) -> None:
    """Decide the running A/B experiment with an always-valid sequential test (mSPRT): promote the challenger
    when its lift clears the margin and no guardrail vetoes; a sample-ratio mismatch stops the decision."""
    from recsys.features.attribution import METRIC_OUTCOMES

    if metric not in METRIC_OUTCOMES:
        _fail(f"--metric '{metric}' is not an online metric: use one of {', '.join(METRIC_OUTCOMES)}")
    _env()
    from recsys.flows.feedback import ab_decision as flow
    from recsys.models.online_config import ABDecisionParams

    params = ABDecisionParams(metric=metric, alpha=alpha, min_lift=min_lift, challenger_share=share,
                              min_users=min_users, promote=promote,
                              **_online_options(model_name, days, k, attribution_hours, impressions_dir, data_dir))
    _guard("ab-decision")
    result = flow(params=params)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    typer.echo(f"{result['outcome']}: {result['reason']}")
