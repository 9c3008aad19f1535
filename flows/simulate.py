"""The simulate flow: the synthetic world's shoppers against the live service, one simulated day at a
time, with the nightly flows in between (collect, retrain + gate, the online A/B decision).

Per day: the service serves what the registry's aliases name; the shoppers search and open their
recommendations over HTTP, react by their hidden tastes and the position of what they see, and post
their events (plus a few known-bad ones); the collector's segments are sealed and `collect` brings them
into the event store; sent = stored + quarantined is checked exactly. Then (optionally) `train` retrains on
the grown store; with an A/B split the new version becomes the `challenger` and the online decision
(`recsys.models.ab_test.decide` on the arms' cumulative per-user figures) promotes it or not. A running
experiment is not cut short by the next night's version: that one becomes the challenger once the decision
is final (promote, not better, or a sample-ratio mismatch).
"""

from __future__ import annotations

import contextlib

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from recsys.flows.collect import CollectParams, collect
from recsys.models.ab_test import PROMOTE, STOP_NOT_BETTER, STOP_SRM
from recsys.models.shopper import ShopperParams, merge_user_sums

FINAL = (PROMOTE, STOP_NOT_BETTER, STOP_SRM)  # outcomes that end an experiment


class SimulateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(2, ge=1, description="simulated days")
    sessions_per_day: int = Field(300, ge=1, description="shopping sessions per simulated day")
    seed: int = Field(0, description="seed of the shoppers' behaviour (the world itself comes from world_seed)")
    # the world: the same settings `recsys generate` used for the data in the store
    users: int = Field(3000, ge=1)
    items: int = Field(1500, ge=1)
    world_days: int = Field(56, ge=1, description="days the store's generated data covers")
    world_seed: int = 42
    start: str = "2026-01-05"
    ab_share: float = Field(0.0, ge=0.0, lt=1.0, description="share of users on the `challenger` alias")
    retrain: bool = Field(True, description="retrain (and gate) every simulated night")
    decide: bool = Field(True, description="with an A/B split: the online decision every night")
    faulty_per_day: int = Field(5, ge=0, description="known-bad events posted each day (quarantine is checked)")
    position_decay: float = Field(1.0, ge=0.0, description="P(look at slot r) = r ** -position_decay")
    k: int = Field(10, ge=1, le=100, description="list length the shoppers ask for")
    url: str | None = Field(None, description="a running service to use (its collector must seal segments "
                                              "and be the only source of events); default: start one")
    model_name: str = "recsys"
    data_dir: str | None = None
    collector_dir: str | None = None
    impressions_dir: str | None = None
    train_overrides: dict = Field(default_factory=dict, description="TrainConfig fields for the nightly run")
    min_lift: float = Field(0.0, ge=0.0, description="online decision: relative lift the challenger must clear")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="online decision: error rate of the sequential test")
    pool_from_day: int = Field(1, ge=1, description="the pooled per-arm comparison counts this day and later")
    compare_feedback: bool = Field(False, description="with an A/B split: every night trains twice on the same "
                                                      "data, without feedback (-> champion) and with it "
                                                      "(-> challenger); no online decision moves them")


@flow(name="simulate", log_prints=True)
def simulate(params: SimulateParams = SimulateParams()) -> dict:
    """Simulated days of shoppers against the service, the nightly flows between them; per-day figures to
    MLflow (experiment `simulate`) and back to the caller."""
    from recsys.flows.train import train
    from recsys.models.config import TrainConfig
    from recsys.tasks import simulation as sim
    from recsys.tasks.paths import data_dir as default_data_dir, recsys_home

    data = params.data_dir or str(default_data_dir())
    collector = params.collector_dir or str(recsys_home() / "collector")
    impressions = params.impressions_dir or str(recsys_home() / "impressions")
    world, first_index, dates = sim.prepare_world(params.users, params.items, params.world_days, params.world_seed,
                                                  params.start, params.days, data)
    shopper = ShopperParams(position_decay=params.position_decay, k=params.k)
    ab = params.ab_share > 0
    if params.compare_feedback and not (ab and params.retrain):
        raise ValueError("compare_feedback needs an A/B split (ab_share > 0) and nightly retraining")
    run_id = sim.start_simulation_run({k: v for k, v in params.model_dump().items() if k != "train_overrides"})
    days: list[dict] = []
    per_user: dict = {}
    every_day: dict = {}  # per-user sums of the days both arms served, by arm (the pooled comparison)
    history: list = []
    running = ab and sim.alias_exists(params.model_name, "challenger")  # an experiment in progress
    with contextlib.ExitStack() as stack:
        try:
            url = params.url
            if url is None:
                port = sim.free_port()
                proc = sim.start_service(port, recsys_home() / "logs" / f"simulate-serve-{port}.log",
                                         params.model_name, params.ab_share, collector, impressions)
                stack.callback(sim.stop_service, proc)
                url = f"http://127.0.0.1:{port}"
            # what an earlier run left in the collector is brought in first and not counted
            sim.wait_until_sealed(collector)
            collect(CollectParams(collector_dir=collector, data_dir=data))
            for d in range(params.days):
                date = dates[d]
                versions = sim.wait_for_versions(url, params.model_name, ab)
                day = sim.shop_one_day(url, world, first_index + d, date, params.sessions_per_day, params.seed,
                                       shopper, params.faulty_per_day)
                today = day.pop("per_user")
                day["intervals"] = sim.arm_intervals(today)
                merge_user_sums(per_user, today)
                if day["arms"]["challenger"]["sessions"] and d + 1 >= params.pool_from_day:  # both arms served
                    merge_user_sums(every_day, today)
                sim.wait_until_sealed(collector)
                counts = sim.store_counts(collect(CollectParams(collector_dir=collector, data_dir=data)))
                day.update(versions=versions, stored=counts["stored"],
                           quarantined=day["door_rejected"] + counts["quarantined_at_ingest"],
                           already_stored=counts["already_stored"], ingest_rules=counts["ingest_rules"])
                if counts["collected"] != day["door_accepted"] or day["sent"] != day["stored"] + day["quarantined"]:
                    raise sim.SimulationError(
                        f"day {date}: {day['sent']} events sent, {day['stored']} stored + {day['quarantined']} "
                        f"quarantined ({counts['collected']} collected of {day['door_accepted']} accepted at the "
                        f"door, {counts['already_stored']} already stored): events were lost or added")
                if ab and params.decide and running and versions.get("challenger") and not params.compare_feedback:
                    day["decision"], look = sim.online_decision(per_user, history, params.model_name, params.ab_share,
                                                                params.alpha, params.min_lift,
                                                                versions.get("challenger"))
                    history.append(look)
                    if day["decision"]["outcome"] in FINAL:
                        running, per_user, history = False, {}, []
                if params.compare_feedback:
                    base = train(config=TrainConfig(**nightly_config(params, data, impressions, False)))
                    fed = train(config=TrainConfig(**nightly_config(params, data, impressions, True)))
                    sim.set_arms(params.model_name, base["version"], fed["version"])
                    day["trained"] = {"version": fed["version"], "base_version": base["version"], "promoted": False,
                                      "reason": "compare_feedback: without feedback -> champion, with -> challenger"}
                elif params.retrain:
                    result = train(config=TrainConfig(**nightly_config(params, data, impressions, None)))
                    day["trained"] = {"version": result["version"], "promoted": result["promoted"],
                                      "reason": result["reason"]}
                    if ab and not running:  # a running experiment is not cut short by a newer version
                        sim.set_challenger(params.model_name, result["version"])
                        running, per_user, history = True, {}, []  # a new challenger, a new experiment
                sim.log_day(run_id, d + 1, day)
                days.append(day)
                print(format_day(d + 1, day))
        except BaseException as exc:
            sim.finish_simulation_run(run_id, days, exc)
            raise
    pooled = sim.arm_intervals(every_day, compare=ab)
    sim.finish_simulation_run(run_id, days, pooled=pooled)
    return {"mlflow_run_id": run_id, "days": days, "url": params.url, "pooled": pooled}


def nightly_config(params: SimulateParams, data: str, impressions: str, feedback: bool | None) -> dict:
    """The nightly TrainConfig's fields: `feedback` True/False forces the switch (None: as configured), and
    a feedback run reads the impressions of the service this simulation serves with."""
    over = dict(params.train_overrides)
    fb = dict(over.pop("feedback", {}) or {})
    if feedback is not None:
        fb["enabled"] = feedback
    if fb.get("enabled"):
        fb.setdefault("impressions_dir", impressions)
    return {"data_dir": data, "registered_model": params.model_name, "promote": params.ab_share == 0,
            **over, **({"feedback": fb} if fb else {})}


def format_day(n: int, day: dict) -> str:
    arms = "  ".join(f"{arm} {f['sessions']} sessions {f['impressions']} shown ctr {f['ctr']:.3f} "
                     f"conv {f['conversion']:.4f} (v{','.join(f['versions']) or '-'})"
                     for arm, f in day["arms"].items() if f["sessions"])
    line = (f"day {n} {day['date']}: {day['sessions']} sessions; {arms}; champion v{day['versions']['champion']}; "
            f"events sent {day['sent']} = stored {day['stored']} + quarantined {day['quarantined']}")
    if "trained" in day and "base_version" in day["trained"]:
        line += f"; trained v{day['trained']['base_version']} (champion) and v{day['trained']['version']} (feedback)"
    elif "trained" in day:
        line += f"; trained v{day['trained']['version']} ({'promoted' if day['trained']['promoted'] else 'kept'})"
    if "decision" in day:
        line += f"; A/B: {day['decision']['outcome']}"
    return line


def format_pooled(pooled: dict) -> str:
    """Conversion per arm over the days both arms served, and challenger - champion, with 95% intervals."""
    def f(v: list) -> str:
        return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"

    parts = [f"{arm} {f(pooled[arm]['purchase_conversion'])} ({pooled[arm]['users']} users)"
             for arm in ("champion", "challenger") if arm in pooled]
    if "difference" in pooled:
        parts.append(f"challenger - champion {f(pooled['difference']['purchase_conversion'])}")
    return "pooled purchase conversion: " + "; ".join(parts) if parts else ""
