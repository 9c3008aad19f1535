"""Feedback into training, measured in the simulation (issue 17): one world, one `recsys simulate` run with a
50/50 split in which every night trains two models on the same store, without feedback (-> `champion` arm)
and with it (-> `challenger` arm: exposure features + shown-and-ignored negatives, recsys.features.exposure).

    .venv/bin/python bench/feedback.py [--days 8] [--sessions-per-day 600] [--label-days 1] [--json]

A small world (--users 1000, --items 500, --world-days 35) is generated and trained once (v1, both arms on
day 1). Nightly training uses a short label / test window (--label-days, --test-days, default 1 / 1) so that
the simulated days' impressions reach the ranker within the run: with label window L the feedback model gets
ignored negatives from night L+1 and exposure features from night L+2 on. Reported: per day and arm,
purchase conversion (purchases / shown items) with 95% per-user delta-method intervals, and the pooled
challenger - champion difference over the days both arms served (and over the days after feedback was
fully active), each with its interval.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

MODEL = "bench-feedback"


def _fmt(v) -> str:
    return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--sessions-per-day", type=int, default=600)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--world-days", type=int, default=35)
    ap.add_argument("--label-days", type=int, default=1)
    ap.add_argument("--test-days", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-from-day", type=int, default=None,
                    help="first day of the pooled comparison (default: when feedback is fully active, "
                         "label days + 3)")
    ap.add_argument("--no-guard", action="store_true", help="train the feedback model without the monotone "
                                                            "constraints (to measure what the guard does)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = ap.parse_args()
    from ab import work_home  # bench/ab.py, next to this script

    home = work_home(args.keep, "recsys-bench-feedback-")
    from recsys.features.synthetic import SyntheticParams
    from recsys.flows.simulate import SimulateParams, format_day, format_pooled, simulate
    from recsys.flows.train import train
    from recsys.models.config import TrainConfig
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import TwoStageParams
    from recsys.tasks.data import write_synthetic_dataset

    t0 = time.time()
    wp = SyntheticParams(n_users=args.users, n_items=args.items, n_days=args.world_days, seed=42)
    data = home / "data"
    write_synthetic_dataset(data, wp)
    first = train(config=TrainConfig(data_dir=str(data), registered_model=MODEL, model=TwoStageParams(
        als=ALSParams(device="cpu"))))
    t_first = time.time() - t0
    split = {"label_days": args.label_days, "test_days": args.test_days}
    # exposure features reach the ranker from night label_days + 2, i.e. the lists of day label_days + 3
    full_from = args.label_days + 3
    args.pool_from_day = args.pool_from_day or full_from
    result = simulate(SimulateParams(days=args.days, sessions_per_day=args.sessions_per_day, seed=args.seed,
                                     users=args.users, items=args.items, world_days=args.world_days, world_seed=42,
                                     start=wp.start, ab_share=0.5, compare_feedback=True, model_name=MODEL,
                                     data_dir=str(data), collector_dir=str(home / "collector"),
                                     impressions_dir=str(home / "impressions"),
                                     train_overrides={"split": split,
                                                      **({"feedback": {"monotone": False}} if args.no_guard else {})},
                                     pool_from_day=args.pool_from_day))
    days = result["days"]
    out = {"settings": vars(args) | {"keep": str(args.keep) if args.keep else None}, "first_version": first["version"],
           "days": [{"day": n, "date": d["date"], "versions": d["versions"], "intervals": d["intervals"],
                     "trained": d.get("trained")} for n, d in enumerate(days, start=1)],
           "pooled": result["pooled"], "feedback_fully_active_from_day": full_from,
           "seconds": {"generate_and_first_train": round(t_first, 1), "total": round(time.time() - t0, 1)},
           "mlflow_run_id": result["mlflow_run_id"]}
    if args.json:
        print(json.dumps(out, default=str))
    else:
        for n, d in enumerate(days, start=1):
            print(format_day(n, d))
        print("\nday  arm         version  purchase conversion [95% CI]   ctr [95% CI]")
        for n, d in enumerate(days, start=1):
            for arm in ("champion", "challenger"):
                iv = d["intervals"].get(arm)
                if iv:
                    print(f"{n:>3}  {arm:<10}  v{d['versions'].get(arm)!s:<7} {_fmt(iv['purchase_conversion'])}  "
                          f"{_fmt(iv['ctr'])}")
        print("\n" + format_pooled(result["pooled"]) + f"  (days {args.pool_from_day}..{len(days)})")
        print(f"feedback fully active (exposure features + negatives) from day {full_from}")
        print(f"{out['seconds']['total']:.0f}s ({out['seconds']['generate_and_first_train']:.0f}s generating and "
              f"training v1); MLflow run {result['mlflow_run_id']} in {home}")
    (home / "feedback-bench.json").write_text(json.dumps(out, default=str, indent=1))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
