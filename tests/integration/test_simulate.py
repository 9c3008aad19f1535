"""`simulate` against the real service process: two simulated days of the tiny world's shoppers on an A/A
split, events collected into (a copy of) the event store; sent = stored + quarantined exactly, the known-bad
events quarantined, and per-arm figures logged to MLflow."""

import json
import shutil

import pandas as pd
import pytest

from tests.integration.conftest import TINY

pytestmark = pytest.mark.integration
MODEL = "sim-aa"


def test_two_simulated_days_keep_every_event_and_log_both_arms(first_run, tmp_path):
    from recsys.flows.simulate import SimulateParams, simulate
    from recsys.tasks import tracking
    from recsys.tasks.paths import data_dir

    c = tracking.client()
    mv = c.get_model_version("recsys", first_run["version"])
    c.create_registered_model(MODEL)
    same = c.create_model_version(MODEL, mv.source, mv.run_id).version
    for alias in ("champion", "challenger"):  # two identical arms
        c.set_registered_model_alias(MODEL, alias, same)
    data = tmp_path / "data"
    shutil.copytree(data_dir(), data)
    generated = sorted(p.name for p in (data / "events").glob("day=*"))
    # a storefront's event of today (the README posts one with curl) does not move the world's clock
    (data / "events" / f"day={pd.Timestamp.now(tz='UTC'):%Y-%m-%d}").mkdir()

    params = SimulateParams(days=2, sessions_per_day=120, seed=3, users=TINY.n_users, items=TINY.n_items,
                            world_days=TINY.n_days, world_seed=TINY.seed, start=TINY.start, ab_share=0.5,
                            retrain=False, faulty_per_day=5, model_name=MODEL, data_dir=str(data),
                            collector_dir=str(tmp_path / "collector"), impressions_dir=str(tmp_path / "imp"))
    result = simulate(params)

    days = result["days"]
    assert len(days) == 2
    for day in days:
        assert day["sent"] == day["stored"] + day["quarantined"]
        # 4 break a rule at the door, 1 repeats an event and is quarantined by ingest as a duplicate
        assert day["door_rejected"] == 4 and day["ingest_rules"] == {"duplicate": 1} and day["quarantined"] == 5
        assert day["already_stored"] == 0
        for arm in ("champion", "challenger"):
            fig = day["arms"][arm]
            assert fig["sessions"] > 10 and fig["impressions"] > 0 and fig["versions"] == [str(same)]
            assert 0 < fig["ctr"] < 1
        assert day["arms"]["champion"]["sessions"] + day["arms"]["challenger"]["sessions"] == 120
        assert day["decision"]["outcome"] in ("not_enough_data", "continue", "stop_not_better", "promote")

    # the event store holds exactly the stored events, on the simulated days after the generated ones
    first = pd.Timestamp(generated[-1].removeprefix("day="), tz="UTC") + pd.Timedelta(days=1)
    assert [d["date"] for d in days] == [f"{first:%Y-%m-%d}", f"{first + pd.Timedelta(days=1):%Y-%m-%d}"]
    new_days = [data / "events" / f"day={d['date']}" for d in days]
    stored = sum(len(pd.read_parquet(f)) for p in new_days for f in p.glob("*.parquet"))
    assert stored == sum(d["stored"] for d in days)
    # per day and pooled: conversion per arm with its 95% interval, and challenger - champion
    for day in days:
        for arm in ("champion", "challenger"):
            rate, low, high = day["intervals"][arm]["purchase_conversion"]
            assert low <= rate <= high and day["intervals"][arm]["users"] > 0
    diff, low, high = result["pooled"]["difference"]["purchase_conversion"]
    assert low <= diff <= high
    # the impressions carry the world's clock (X-Event-Time) next to the service's own
    from recsys.tasks.impressions import on_event_clock, read_impressions

    shown = on_event_clock(read_impressions(tmp_path / "imp"))
    assert set(shown["ts"].dt.strftime("%Y-%m-%d")) == {d["date"] for d in days}
    # the rejected-at-the-door events are kept, with their rule
    failed = [json.loads(line) for p in (tmp_path / "collector" / "failed").glob("*.jsonl")
              for line in p.read_text().splitlines()]
    assert len(failed) == sum(d["door_rejected"] for d in days)
    assert {f["reject_rule"] for f in failed} == {"unknown_event_type", "empty_user_id", "unparseable_timestamp",
                                                  "non_positive_quantity"}

    run = c.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for key in ("champion.ctr", "challenger.ctr", "champion.conversion", "challenger.conversion", "events.sent",
                "events.stored", "events.quarantined", "champion_version"):
        history = c.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    sent = c.get_metric_history(run.info.run_id, "events.sent")
    assert [m.value for m in sent] == [d["sent"] for d in days]
    ctr = c.get_metric_history(run.info.run_id, "challenger.ctr")
    assert [round(m.value, 9) for m in ctr] == [round(d["arms"]["challenger"]["ctr"], 9) for d in days]
