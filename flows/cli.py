"""`recsys`: generate data, train (a Prefect flow run), serve, and operate the registry aliases."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Two-stage e-commerce recommender: implicit ALS recall + LightGBM LambdaRank, run by Prefect, "
         "tracked in MLflow, served over HTTP. State lives in $RECSYS_HOME (default ./.recsys).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _env() -> None:
    from recsys.tasks.paths import prepare_environment

    prepare_environment()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command()
def generate(
    users: int = typer.Option(3000, min=1, help="number of shoppers"),
    items: int = typer.Option(1500, min=1, help="catalog size"),
    days: int = typer.Option(56, min=1, help="days of events (at least label+test+1 days to train on)"),
    seed: int = typer.Option(42, help="random seed: same seed, same data"),
    start: str = typer.Option("2026-01-05", help="first day (UTC), YYYY-MM-DD"),
    sessions_per_user_day: float = typer.Option(0.12, min=0.001, help="activity level (events scale with it)"),
    out: Optional[Path] = typer.Option(None, help="data directory; default $RECSYS_HOME/data"),
) -> None:
    """Generate the synthetic e-commerce data set (events partitioned by day + catalog)."""
    _env()
    from recsys.features.synthetic import SyntheticParams
    from recsys.tasks.data import write_synthetic_dataset
    from recsys.tasks.paths import data_dir

    target = out or data_dir()
    params = SyntheticParams(n_users=users, n_items=items, n_days=days, seed=seed, start=start,
                             sessions_per_user_day=sessions_per_user_day)
    t0 = time.time()
    step = max(1, days // 10)

    def progress(done: int, total: int, n_events: int) -> None:
        if done % step == 0 or done == total:
            typer.echo(f"  day {done}/{total}: {n_events:,} events", err=True)

    summary = write_synthetic_dataset(target, params, progress)
    typer.echo(f"generated {summary['events']:,} events, {users:,} users, {items:,} items over {days} days "
               f"into {target} in {time.time() - t0:.1f}s")


_LOG: list[Path] = []  # this command's log file, once opened by _guard
_AS_PROCESS: list[bool] = []  # set by main(): the `recsys` process, not an in-process CliRunner


def _one_line_errors(fn):
    """Any exception of the command: one `error:` line (cause, what to do, log file), exit 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            from click import ClickException

            if isinstance(exc, ClickException):
                raise
            from recsys.flows.cli_errors import fail, open_run_log

            fail(exc, _LOG[-1] if _LOG else open_run_log(fn.__name__))

    return wrapper


def _guard(command: str) -> None:
    """For commands that run flows: a log file (full tracebacks, Prefect run logs), no tracebacks on the
    terminal, and a watchdog that stops the temporary Prefect server if this process is killed."""
    from recsys.flows.cli_errors import defer_error_line, open_run_log, quiet_console_tracebacks, start_orphan_watchdog

    _LOG.append(open_run_log(command))
    if _AS_PROCESS:
        defer_error_line()
    quiet_console_tracebacks()
    start_orphan_watchdog()


@app.command()
@_one_line_errors
def ingest(
    source: str = typer.Option("events", help="events (a CSV/Parquet event log + column mapping), "
                                              "online-retail (UCI Online Retail CSV) or synthetic (the generator)"),
    input: Optional[Path] = typer.Option(None, "--input", help="file to ingest: .csv, .csv.gz or .parquet"),
    out: Optional[Path] = typer.Option(None, help="data directory; default $RECSYS_HOME/data"),
    mapping: Optional[Path] = typer.Option(None, help="TOML mapping file ([columns], [event_types], [options])"),
    map_: list[str] = typer.Option([], "--map", help="contract=input column, e.g. --map user_id=visitorid "
                                                     "(repeatable; overrides the mapping file)"),
    event_type: Optional[str] = typer.Option(None, help="constant event type for every row, e.g. purchase"),
    ts_unit: Optional[str] = typer.Option(None, help="numeric epoch timestamps: s, ms, us or ns"),
    timezone: Optional[str] = typer.Option(None, help="zone of naive timestamps (default UTC)"),
    catalog: Optional[Path] = typer.Option(None, help="catalog file (item_id, title, category[, brand, price])"),
    catalog_map: list[str] = typer.Option([], "--catalog-map", help="catalog column=your column, e.g. "
                                          "--catalog-map item_id=product_id (repeatable; overrides [catalog])"),
    max_rejected_share: float = typer.Option(0.05, min=0.0, max=1.0,
                                             help="fail (commit nothing) above this share of rule-breaking rows"),
    encoding: str = typer.Option("auto", help="auto (UTF-8, else Latin-1) or a codec name"),
    delimiter: Optional[str] = typer.Option(None, help="CSV delimiter (default: sniffed)"),
    chunk_rows: int = typer.Option(1_000_000, min=1, help="rows per streamed chunk"),
    pseudonymise: bool = typer.Option(False, help="hash user ids with the salt in $RECSYS_PSEUDONYM_SALT"),
    future_tolerance_hours: float = typer.Option(1.0, min=0.0, help="accepted clock skew for future timestamps"),
    users: int = typer.Option(3000, min=1, help="synthetic: shoppers"),
    items: int = typer.Option(1500, min=1, help="synthetic: catalog size"),
    days: int = typer.Option(56, min=1, help="synthetic: days"),
    seed: int = typer.Option(42, help="synthetic: seed"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Ingest a data set: validate every row, quarantine rejects with their rule and source row,
    write day partitions idempotently, log counts and a data profile to MLflow (experiment recsys-ingest)."""
    import tomllib

    from recsys.features.mapping import ColumnMapping, IngestParams, SourceKind

    try:
        kind = SourceKind(source)
    except ValueError:
        _fail(f"--source must be one of {[k.value for k in SourceKind]}, not '{source}'")
    if kind != SourceKind.synthetic and input is None:
        _fail("--input is required for --source events / online-retail")
    if input is not None and kind != SourceKind.synthetic and not input.exists():
        _fail(f"{input}: no such file")  # before the heavy imports below
    try:
        raw_map: dict = {}
        if mapping is not None:
            raw_map = tomllib.loads(mapping.read_text())
        mp = ColumnMapping.from_toml_dict(raw_map)
        columns, catalog_columns = dict(mp.columns), dict(mp.catalog)
        for flag, pairs, target in (("--map", map_, columns), ("--catalog-map", catalog_map, catalog_columns)):
            for item in pairs:
                if "=" not in item:
                    _fail(f"{flag} expects contract=column, got '{item}'")
                k_, v_ = item.split("=", 1)
                target[k_.strip()] = v_.strip()
        overrides = {k_: v_ for k_, v_ in (("event_type", event_type), ("ts_unit", ts_unit),
                                            ("timezone", timezone)) if v_ is not None}
        mp = ColumnMapping(**{**mp.model_dump(), "columns": columns, "catalog": catalog_columns, **overrides})
        params = IngestParams(source=kind, input=str(input or ""), data_dir=str(out) if out else None, mapping=mp,
                              catalog=str(catalog) if catalog else None, max_rejected_share=max_rejected_share,
                              encoding=encoding, delimiter=delimiter, chunk_rows=chunk_rows, pseudonymise=pseudonymise,
                              future_tolerance_hours=future_tolerance_hours, users=users, items=items, days=days,
                              seed=seed)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(f"mapping file {mapping}: {exc}")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        _fail(" ".join(str(exc).split()))
    _env()
    from recsys.flows.ingest import ingest as ingest_flow
    from recsys.tasks.ingest import format_summary, preflight

    _guard("ingest")
    preflight(params)
    summary = ingest_flow(params=params)
    typer.echo(json.dumps(summary, default=str) if as_json else format_summary(summary))


@app.command()
@_one_line_errors
def collect(
    collector_dir: Optional[Path] = typer.Option(None, help="the service's collected events; default "
                                                            "$RECSYS_HOME/collector"),
    out: Optional[Path] = typer.Option(None, help="event store; default $RECSYS_HOME/data"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Bring the events the service collected (POST /events) into the event store, exactly once: sealed
    log segments through the ingest flow (the `collect-events` deployment runs this every 10 minutes)."""
    _env()
    from recsys.flows.collect import CollectParams, collect as collect_flow

    _guard("collect")
    summary = collect_flow(params=CollectParams(collector_dir=str(collector_dir) if collector_dir else None,
                                                data_dir=str(out) if out else None))
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    typer.echo(f"collected {summary['events']:,} events in {len(summary['batches'])} batch(es); "
               f"{summary['orphans_sealed']} segment(s) of stopped services sealed")
    for b in summary["batches"]:
        typer.echo(f"  batch {b['batch']}: {b['segments']} segment(s), {b['events']:,} events, "
                   f"{b.get('accepted', 0):,} stored" + (f", MLflow run {b['mlflow_run_id']}" if b.get("mlflow_run_id")
                                                          else ""))


@app.command()
@_one_line_errors
def train(
    data_dir: Optional[Path] = typer.Option(None, help="event store; default $RECSYS_HOME/data"),
    cutoff: Optional[str] = typer.Option(None, help="end of the data this run sees (UTC date, exclusive); "
                                                    "default: the day after the last event"),
    label_days: int = typer.Option(7, min=1, help="days after the training window whose events label the ranker"),
    test_days: int = typer.Option(7, min=1, help="newest days, held out for evaluation and the gate"),
    device: str = typer.Option("auto", help="ALS device: auto (GPU when implicit has CUDA), cpu or gpu"),
    factors: int = typer.Option(64, min=1, help="ALS latent factors"),
    iterations: int = typer.Option(15, min=1, help="ALS iterations"),
    gate_metric: Optional[str] = typer.Option(None, help="per-user metric the promotion gate compares: "
                                                         "ndcg/map/recall/hitrate/mrr _at_<k> (default ndcg_at_<k>)"),
    gate_margin: float = typer.Option(0.0, help="the lower CI bound of challenger-champion must exceed this"),
    promote: bool = typer.Option(True, help="move the champion alias if the gate passes"),
    experiment: str = typer.Option("recsys", help="MLflow experiment"),
    model_name: str = typer.Option("recsys", "--model-name", "--registered-model",
                                   help="registered model name (one per data set: the gate never compares "
                                        "models of different data sets)"),
    k: int = typer.Option(10, min=1, max=200, help="list length for metrics@k"),
    eval_max_users: int = typer.Option(20_000, min=0, help="evaluation and the gate score a seeded sample of at "
                                                          "most this many test-window users (0: all)"),
    tune: str = typer.Option("quick", help="quick: pick the popularity list, the new-user path and the "
                                           "EASE/RP3beta baselines' settings on the label window; full: also an "
                                           "Optuna search on earlier windows over ALS, ranker, candidate "
                                           "budgets, half-life, popularity and seen items (reused by the next "
                                           "run while the data fits); off: use the settings as given"),
    tune_budget_s: float = typer.Option(600.0, help="--tune full: seconds after which no trial starts"),
    tune_trials: int = typer.Option(40, help="--tune full: at most this many trials"),
    tune_reuse: bool = typer.Option(True, help="--tune full: reuse the previous full run's settings while the "
                                               "data changed little (sizes, dates, user/item overlap)"),
    popularity_days: int = typer.Option(7, help="new users' popularity list: last 7 or 28 days (tuning may change it)"),
    popularity_purchases_only: bool = typer.Option(False, help="popularity counts purchases only"),
    half_life_days: float = typer.Option(30.0, min=0.1, help="recency half-life of the interaction confidence"),
    train_windows: int = typer.Option(2, min=1, max=8, help="label windows the ranker learns from (the newest and "
                                                            "earlier ones, sharing one user budget)"),
    seen_items: str = typer.Option("auto", help="items a user already touched: keep, drop, or auto (drop when "
                                                "the label window shows almost no re-purchases)"),
    item_item_sources: str = typer.Option(
        "ease,rp3beta",
        help="EASE / RP3beta (settings tuned on the label window) as candidate sources and ranker features: "
             "ease,rp3beta, one of them, or none (evaluation-only baselines)"),
    dask_workers: int = typer.Option(0, min=0, max=64, help="train on a throwaway local Dask cluster of this many "
                                                            "worker processes (0: one process)"),
    dask_address: Optional[str] = typer.Option(None, help="train on the Dask cluster of this scheduler, e.g. "
                                                          "tcp://scheduler:8786"),
    feedback: str = typer.Option("off", help="on: learn from the service's impressions (exposure features, "
                                             "shown-and-ignored items as negatives); no impressions: no effect"),
    impressions_dir: Optional[Path] = typer.Option(None, help="--feedback on: the service's impressions; "
                                                              "default $RECSYS_HOME/impressions"),
) -> None:
    """Run the training flow (Prefect) end to end: data -> recall -> ranker -> evaluation -> MLflow -> gate."""
    # argument errors fail here, before Prefect, MLflow or the data are touched
    if device not in ("auto", "cpu", "gpu"):
        _fail(f"--device must be auto, cpu or gpu, not '{device}'")
    if cutoff is not None:
        _check_date("--cutoff", cutoff)
    from recsys.models.metrics import gate_metric_problem

    gate_metric = gate_metric or f"ndcg_at_{k}"
    problem = gate_metric_problem(gate_metric, k)
    if problem:
        _fail(f"--gate-metric {problem}")
    if data_dir is not None and not data_dir.is_dir():
        _fail(f"--data-dir {data_dir}: no such directory (create it with `recsys generate --out` or `recsys ingest`)")
    if tune not in ("off", "quick", "full"):
        _fail(f"--tune must be off, quick or full, not '{tune}'")
    if tune == "full" and (dask_workers or dask_address):
        _fail("--tune full with --dask-workers/--dask-address: its trials refit the model on earlier windows from "
              "the events in one process; use --tune quick (the default) or off on Dask, or tune in one process")
    if not tune_budget_s > 0 or tune_trials < 1:
        _fail(f"--tune-budget-s must be > 0 (not {tune_budget_s}) and --tune-trials >= 1 (not {tune_trials})")
    if popularity_days not in (7, 28) or seen_items not in ("auto", "keep", "drop"):
        _fail(f"--popularity-days must be 7 or 28 (not {popularity_days}), "
              f"--seen-items auto, keep or drop (not '{seen_items}')")
    if feedback not in ("on", "off"):
        _fail(f"--feedback must be on or off, not '{feedback}'")
    item_item = tuple(n.strip() for n in item_item_sources.split(",") if n.strip() and n.strip() != "none")
    if any(n not in ("ease", "rp3beta") for n in item_item):
        _fail(f"--item-item-sources must be ease, rp3beta, both comma-separated, or none (not '{item_item_sources}')")
    _env()
    from recsys.features.exposure import ExposureParams
    from recsys.features.split import SplitParams
    from recsys.flows.train import train as train_flow
    from recsys.models.config import TrainConfig
    from recsys.models.dask_options import DaskOptions
    from recsys.models.evaluation import EvaluationParams
    from recsys.models.gate import GateParams
    from recsys.features.interactions import InteractionParams
    from recsys.models.cold_start import ColdStartParams
    from recsys.models.recall import ALSParams, PopularityParams
    from recsys.models.tuning import SearchParams
    from recsys.models.two_stage import TwoStageParams

    config = TrainConfig(
        data_dir=str(data_dir) if data_dir else None, experiment=experiment, registered_model=model_name, k=k,
        split=SplitParams(label_days=label_days, test_days=test_days, cutoff=cutoff),
        model=TwoStageParams(als=ALSParams(factors=factors, iterations=iterations, device=device),
                             popularity=PopularityParams(popularity_days, popularity_purchases_only),
                             interactions=InteractionParams(half_life_days=half_life_days),
                             tune_popularity=tune != "off", tune_baselines=tune != "off",
                             cold_start=ColdStartParams(tune=tune != "off"),
                             seen_items=seen_items, train_windows=train_windows,
                             item_item_sources=item_item),
        evaluation=EvaluationParams(max_users=eval_max_users or None),
        tuning=SearchParams(mode=tune, budget_s=tune_budget_s, max_trials=tune_trials, reuse=tune_reuse),
        gate=GateParams(metric=gate_metric, margin=gate_margin), promote=promote,
        feedback=ExposureParams(enabled=feedback == "on", impressions_dir=str(impressions_dir) if impressions_dir
                                else None),
        dask=DaskOptions(address=dask_address, local_workers=dask_workers, processes=True))
    _guard("train")
    result = train_flow(config=config)
    typer.echo(json.dumps({k_: v for k_, v in result.items() if k_ != "metrics"}))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, min=1, max=65535),
    model_name: str = typer.Option("recsys", help="registered model to follow"),
    alias: str = typer.Option("champion", help="registry alias to serve"),
    poll_interval: float = typer.Option(30.0, min=0, help="seconds between alias checks (0 = never)"),
    impressions: bool = typer.Option(True, help="log every response to $RECSYS_HOME/impressions/ (JSON lines)"),
    impressions_dir: Optional[Path] = typer.Option(None, help="impressions directory; default "
                                                              "$RECSYS_HOME/impressions"),
    ab_share: float = typer.Option(0.0, min=0.0, max=1.0, help="share of users (stable hash) served by the "
                                                              "`challenger` alias when it exists"),
    challenger_alias: str = typer.Option("challenger", help="alias of the A/B challenger"),
    log_level: str = typer.Option("info"),
    access_log: bool = typer.Option(False, help="uvicorn access log (costs latency under load)"),
    workers: int = typer.Option(1, min=1, help="worker processes (each loads the model and follows the alias; "
                                               "/metrics is per worker)"),
    events: bool = typer.Option(True, help="POST /events: collect behaviour into $RECSYS_HOME/collector and "
                                           "feed the real-time user state"),
    collector_dir: Optional[Path] = typer.Option(None, help="collected events; default $RECSYS_HOME/collector"),
    collector_rotate_s: float = typer.Option(60.0, min=0.5, help="seconds before a collected-events segment "
                                                                 "is sealed and ready for `recsys collect`"),
    state_store: Optional[str] = typer.Option(None, help="real-time user state shared by the workers: "
                                                         "redis://HOST:PORT/DB for several machines; default "
                                                         "sqlite:///$RECSYS_HOME/collector/user_state.sqlite"),
    pseudonymise: bool = typer.Option(False, help="user ids -> the ingest pseudonym (salt from "
                                                  "RECSYS_PSEUDONYM_SALT) before anything is written or looked up"),
) -> None:
    """Serve the champion over HTTP (FastAPI): /recommendations/{user_id}?k=, POST /recommendations (session),
    /search?q=, /similar/{item_id}, /health, /ready, /version, /metrics."""
    _env()
    import logging

    import uvicorn

    from recsys.serving.app import create_app
    from recsys.tasks.paths import recsys_home

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    imp_dir = str(impressions_dir or recsys_home() / "impressions") if impressions else None
    collector = (collector_dir or recsys_home() / "collector").resolve()
    kwargs = dict(model_name=model_name, alias=alias, poll_interval_s=poll_interval, impressions_dir=imp_dir,
                  ab_share=ab_share, challenger_alias=challenger_alias,
                  collector_dir=str(collector) if events else None, pseudonymise=pseudonymise,
                  collector_rotate_s=collector_rotate_s,
                  state_store=state_store or f"sqlite:///{collector / 'user_state.sqlite'}")
    if events:  # an unreachable or malformed store: one line now, not a traceback from every worker's startup
        from recsys.serving.user_state import open_user_state

        try:
            open_user_state(kwargs["state_store"]).close()
        except Exception as exc:
            _fail(f"--state-store {kwargs['state_store']}: {type(exc).__name__}: {exc}")
    if workers > 1:
        import os

        from recsys.serving.app import CONFIG_ENV

        os.environ[CONFIG_ENV] = json.dumps(kwargs)
        uvicorn.run("recsys.serving.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=access_log)
    else:
        uvicorn.run(create_app(**kwargs), host=host, port=port, log_level=log_level, access_log=access_log)


@app.command()
@_one_line_errors
def promote(
    version: str = typer.Option(..., help="model version to make champion"),
    reason: str = typer.Option(..., help="why (recorded on the version)"),
    model_name: str = typer.Option("recsys"),
    who: Optional[str] = typer.Option(None, help="operator name; default the OS user"),
) -> None:
    """Manually point `champion` at a version (the old one keeps `previous`)."""
    if not version.isdigit() or int(version) < 1:
        _fail(f"--version must be a model version number such as 3, not '{version}'")
    _env()
    from recsys.tasks import tracking
    from recsys.tasks.reporting import announce_champion_move

    versions = tracking.version_numbers(model_name)
    if version not in versions:
        have = f"its versions are {_ranges(versions)}" if versions else "it has no versions (train one first)"
        _fail(f"model '{model_name}' has no version {version}: {have}")
    with tracking.gate_lock(model_name):
        old = tracking.move_champion(model_name, version, f"manual: {reason}", actor=who)
    typer.echo(f"{model_name}: champion {old} -> {version}")
    typer.echo(announce_champion_move(model_name, version, f"manual: {reason}", who or "recsys promote"))


@app.command()
@_one_line_errors
def rollback(model_name: str = typer.Option("recsys"),
             reason: str = typer.Option("rollback", help="why (recorded on the version)")) -> None:
    """Restore the `previous` champion in one step."""
    _env()
    from recsys.tasks import tracking
    from recsys.tasks.reporting import announce_champion_move

    with tracking.gate_lock(model_name):
        prev = tracking.alias_version(model_name, tracking.PREVIOUS)
        if prev is None:
            _fail(f"model '{model_name}' has no 'previous' alias to roll back to")
        old = tracking.move_champion(model_name, prev, f"rollback: {reason}")
    typer.echo(f"{model_name}: champion {old} -> {prev}")
    typer.echo(announce_champion_move(model_name, prev, f"rollback: {reason}", "recsys rollback"))


def _check_date(flag: str, value: str) -> None:
    import datetime as dt

    try:
        dt.date.fromisoformat(value)
    except ValueError:
        _fail(f"{flag} '{value}' is not a date: use YYYY-MM-DD, e.g. 2026-03-01")


def _ranges(versions: list[str]) -> str:
    nums = sorted(int(v) for v in versions)
    if nums == list(range(nums[0], nums[-1] + 1)):
        return f"{nums[0]}..{nums[-1]}" if len(nums) > 1 else str(nums[0])
    return ", ".join(map(str, nums[:20])) + (", ..." if len(nums) > 20 else "")


# the online loop's commands (simulate, online-metrics, ab-start, ab-decision) live in their own module and
# register themselves on `app` when imported
from recsys.flows import cli_online  # noqa: E402,F401


def main() -> None:
    _AS_PROCESS.append(True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # one line on the terminal, the traceback in the log file
        from recsys.flows.cli_errors import fail, open_run_log

        try:
            fail(exc, _LOG[-1] if _LOG else open_run_log(Path(sys.argv[0]).name if len(sys.argv) < 2
                                                         else sys.argv[1]))
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
