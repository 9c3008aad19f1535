"""Online A/B decisions on simulated shoppers (issue 17, "Done means"), against the real service process.

    .venv/bin/python bench/ab.py [--json] [--aa 20] [--repeats 5] [--days 14] [--sessions-per-day 300]

A small world (--users 1000, --items 500, --world-days 35) is generated and two models are trained on it
(the Prefect train flow, one MLflow registry model): the normal two-stage model, and a popularity-only one
(trained on the same events under other user ids, so no shopper is known to it and every recommendation
list is its popularity fallback; search still matches the query). One `recsys serve --ab-share 0.5` process
serves them; registry aliases pick the arms per experiment. Each simulated day, --sessions-per-day shoppers
of the world (by activity) search or open their recommendations over HTTP and react by their hidden tastes
and the slot (`recsys.models.shopper`); every night `recsys.models.ab_test.decide` (the feedback work's
sequential test, default `ABConfig`: purchase conversion per shown item, alpha 0.05, no margin) looks at
the cumulative per-user figures; an experiment ends at the first promote / stop, or after --days days.

No retraining and no POST /events here (the A/A mode the issue allows on 2 cores): the lists a user gets
then depend only on the user, query and model version, so each is fetched once from the service and reused
by later days and experiments (the shoppers' behaviour is drawn fresh every time). `recsys simulate` runs
the full loop with events, collection and retraining.

Experiments: A/A (the same version on both arms) --aa times: how many promote; an A/A run in which 30% of
the challenger's sessions are lost (a sample-ratio mismatch): the decision must stop; the popularity-only
challenger against the two-stage champion --repeats times: never promoted; the two-stage challenger against
the popularity-only champion --repeats times: promoted within how many days.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-ab"


def _setup_env(home: Path) -> None:
    os.environ["RECSYS_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    from recsys.tasks.paths import prepare_environment

    prepare_environment()


def work_home(keep: Path | None, prefix: str) -> Path:
    """The bench's RECSYS_HOME (`keep`, else a temp dir) with its own MLflow and Prefect state."""
    home = keep or Path(tempfile.mkdtemp(prefix=prefix))
    home.mkdir(parents=True, exist_ok=True)
    _setup_env(home)
    return home


def train_models(home: Path, world_params) -> dict:
    """Generate the world, train the two-stage model (champion) and the popularity-only one."""
    import pandas as pd

    from recsys.flows.train import train
    from recsys.models.config import TrainConfig
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import TwoStageParams
    from recsys.tasks.data import write_synthetic_dataset

    data = home / "data"
    write_synthetic_dataset(data, world_params)
    model = TwoStageParams(als=ALSParams(device="cpu"))
    full = train(config=TrainConfig(data_dir=str(data), registered_model=MODEL, model=model))
    # the same events under ids no shopper has: every shopper is new to this model
    pop = home / "popularity" / "data"  # same data set name and catalogue: the same data identity
    shutil.copytree(data, pop)
    for f in (pop / "events").glob("day=*/*.parquet"):
        frame = pd.read_parquet(f)
        frame["user_id"] = "anon-" + frame["user_id"].astype(str)
        frame.to_parquet(f, index=False)
    popular = train(config=TrainConfig(data_dir=str(pop), registered_model=MODEL, model=model, promote=False))
    return {"two_stage": full["version"], "popularity": popular["version"]}


class Lists:
    """GET answers of the live service, fetched once per (path, params) while the aliases stay put."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=30)
        self.memo: dict = {}
        self.fetched = 0

    def get(self, path: str, **params) -> dict:
        key = (path, tuple(sorted(params.items())))
        if key not in self.memo:
            r = self.client.get(path, params=params)
            r.raise_for_status()
            self.memo[key] = r.json()
            self.fetched += 1
        return self.memo[key]


def run_experiment(lists: Lists, world, first_day: int, days: int, sessions: int, seed: int,
                   lose_challenger: float = 0.0) -> dict:
    """Days of shoppers until the decision promotes or stops; `lose_challenger`: share of the challenger's
    sessions that never reach the analysis (an injected sample-ratio mismatch)."""
    from recsys.models.ab_test import ABConfig, decide
    from recsys.models.shopper import ARMS, ArmTally, ShopperParams, merge_user_sums, plan_sessions
    from recsys.tasks.simulation import fetch_list, item_index, per_user_stats, shop_list

    rng = np.random.default_rng(seed)
    index = item_index(world)
    params, config = ShopperParams(), ABConfig(challenger_share=0.5)
    per_user: dict = {}
    history: list = []
    strategies = {arm: {} for arm in ARMS}
    decision = None
    for d in range(days):
        tallies = {arm: ArmTally() for arm in ARMS}
        for s in plan_sessions(world, first_day + d, sessions, rng):
            answer, items = fetch_list(lists.get, world, index, s, params.k)
            if answer["variant"] == "challenger" and rng.random() < lose_challenger:
                continue
            shop_list(world, s, answer, items, params, rng, tallies)
            st = strategies[answer["variant"]]
            st[answer["strategy"]] = st.get(answer["strategy"], 0) + 1
        merge_user_sums(per_user, {arm: t.per_user for arm, t in tallies.items()})
        arms = per_user_stats(per_user)
        decision = decide(arms, config, history)
        history.append(arms)
        if decision.outcome in ("promote", "stop_not_better", "stop_srm"):
            break
    conv = {arm: arms[arm]["purchase_conversion"].rate for arm in ARMS}
    return {"outcome": decision.outcome, "days": d + 1, "lift": decision.lift, "p_value": decision.p_value,
            "srm_p": decision.srm_p, "conversion": conv, "users": {a: arms[a]["purchase_conversion"].users for a in ARMS},
            "strategies": strategies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aa", type=int, default=20, help="A/A experiments")
    ap.add_argument("--repeats", type=int, default=5, help="experiments with a worse / a better challenger")
    ap.add_argument("--days", type=int, default=14, help="longest experiment, days")
    ap.add_argument("--sessions-per-day", type=int, default=300)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--world-days", type=int, default=35)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = ap.parse_args()
    home = work_home(args.keep, "recsys-bench-ab-")
    from recsys.features.synthetic import SyntheticParams, SyntheticWorld
    from recsys.models.ab_test import ABConfig
    from recsys.tasks import simulation as sim
    from recsys.tasks import tracking

    t0 = time.time()
    world_params = SyntheticParams(n_users=args.users, n_items=args.items, n_days=args.world_days, seed=42)
    versions = train_models(home, world_params)
    t_train = time.time() - t0
    world = SyntheticWorld(world_params)
    world.advance(world_params.n_days)
    port = sim.free_port()
    proc = sim.start_service(port, home / "serve.log", MODEL, 0.5, home / "collector", home / "impressions")
    url = f"http://127.0.0.1:{port}"
    out: dict = {"settings": {"users": args.users, "items": args.items, "world_days": args.world_days,
                              "sessions_per_day": args.sessions_per_day, "max_days": args.days, "ab_share": 0.5,
                              "ab_config": {k: v for k, v in vars(ABConfig()).items() if k != "guardrails"},
                              "versions": versions}}
    try:
        def experiments(champion: str, challenger: str, n: int, seed0: int, **kw) -> list[dict]:
            c = tracking.client()
            c.set_registered_model_alias(MODEL, "champion", champion)
            c.set_registered_model_alias(MODEL, "challenger", challenger)
            sim.wait_for_versions.fn(url, MODEL, True)
            lists = Lists(url)
            return [run_experiment(lists, world, world_params.n_days, args.days, args.sessions_per_day,
                                   seed0 + i, **kw) for i in range(n)]

        two, pop = versions["two_stage"], versions["popularity"]
        aa = experiments(two, two, args.aa, 1000)
        srm = experiments(two, two, 1, 2000, lose_challenger=0.3)[0]
        worse = experiments(two, pop, args.repeats, 3000)
        better = experiments(pop, two, args.repeats, 4000)
    finally:
        sim.stop_service(proc)
    promote_days = [e["days"] for e in better if e["outcome"] == "promote"]
    out.update({
        "aa": {"experiments": len(aa), "promoted": sum(e["outcome"] == "promote" for e in aa),
               "allowed_by_alpha": ABConfig().alpha * len(aa),
               "outcomes": {o: sum(e["outcome"] == o for e in aa) for o in sorted({e["outcome"] for e in aa})},
               "runs": aa},
        "srm": {"stopped": srm["outcome"] == "stop_srm", "run": srm},
        "worse_challenger": {"experiments": len(worse), "promoted": sum(e["outcome"] == "promote" for e in worse),
                             "runs": worse},
        "better_challenger": {"experiments": len(better), "promoted": len(promote_days),
                              "days_to_promote": promote_days, "max_days": max(promote_days, default=None),
                              "traffic_share": 0.5, "runs": better},
        "seconds": {"generate_and_train": round(t_train, 1), "total": round(time.time() - t0, 1)},
    })
    if args.json:
        print(json.dumps(out, default=str))
    else:
        r = out
        print(f"world {args.users} users / {args.items} items; {args.sessions_per_day} sessions a day, "
              f"at most {args.days} days, challenger share 0.5, alpha {ABConfig().alpha}")
        print(f"A/A: {r['aa']['promoted']} of {r['aa']['experiments']} promoted "
              f"(alpha allows {r['aa']['allowed_by_alpha']:.1f}); outcomes {r['aa']['outcomes']}")
        print(f"SRM injected (30% of challenger sessions lost): {srm['outcome']} on day {srm['days']} "
              f"(p = {srm['srm_p']:.2g})")
        lists = [e["strategies"]["challenger"] for e in worse]
        popular = sum(s_.get("popular", 0) for s_ in lists) / max(1, sum(sum(s_.values()) for s_ in lists))
        print(f"worse challenger (popularity only; {popular:.0%} of its lists were the popularity fallback, the "
              f"rest searches): {r['worse_challenger']['promoted']} of {len(worse)} promoted; "
              f"outcomes {[e['outcome'] + '@' + str(e['days']) for e in worse]}")
        print(f"better challenger (two-stage vs popularity champion): {len(promote_days)} of {len(better)} promoted, "
              f"days {promote_days}")
        print(f"{r['seconds']['total']:.0f}s ({r['seconds']['generate_and_train']:.0f}s generating and training)")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
