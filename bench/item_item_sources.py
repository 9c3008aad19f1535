"""Paired with/without comparison of the EASE / RP3beta candidate sources and pair features: both models
trained in one process on the same split (the `recsys train` defaults otherwise), the per-user NDCG@10
difference on the test window with its 95% paired-bootstrap interval, union recall and the ranker's gain share
of the new columns. The README's "with minus without" column.

    .venv/bin/python bench/item_item_sources.py online_retail            # the test window
    .venv/bin/python bench/item_item_sources.py 7 --shift-days 7 --variants none,both,features
                                                                         # synthetic seed 7, an earlier window
    .venv/bin/python bench/item_item_sources.py 1e6 --time-only          # train_two_stage CPU/wall s per variant
                                                                         # on bench/pipeline.py's 1M-event world
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as Q  # noqa: E402

from recsys.features import schema as S  # noqa: E402
from recsys.features.split import temporal_split, window  # noqa: E402
from recsys.models.config import TrainConfig  # noqa: E402
from recsys.models.evaluation import evaluate  # noqa: E402
from recsys.models.gate import paired_bootstrap_ci  # noqa: E402
from recsys.models.two_stage_training import train_two_stage  # noqa: E402

VARIANTS = {"none": {"item_item_sources": ()}, "both": {"item_item_sources": ("ease", "rp3beta")},
            "features": {"item_item_sources": ("ease", "rp3beta"), "recall": {"ease": 0, "rp3beta": 0}},
            "ease": {"item_item_sources": ("ease",)}, "rp3beta": {"item_item_sources": ("rp3beta",)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="online_retail or a synthetic seed (42, 7, 13)")
    ap.add_argument("--shift-days", type=int, default=0, help="end the data this many days earlier")
    ap.add_argument("--variants", default="none,both", help=f"first = reference; of {', '.join(VARIANTS)}")
    ap.add_argument("--time-only", action="store_true",
                    help="dataset = an event count: time train_two_stage on bench/pipeline.py's world of that size")
    args = ap.parse_args()
    if args.time_only:
        from pipeline import synthetic_params
        from recsys.features.synthetic import SyntheticWorld

        world = SyntheticWorld(synthetic_params(float(args.dataset)))
        catalog = world.catalog()
        events, split_params = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True), Q.SPLITS["synthetic"]
    elif args.dataset == "online_retail":
        (events, catalog), split_params = Q.load_online_retail(Q.RETAIL_CSV), Q.SPLITS["online_retail"]
    else:
        (events, catalog), split_params = Q.synthetic_data(int(args.dataset)), Q.SPLITS["synthetic"]
    if args.shift_days:
        end = temporal_split(events[S.TS].max(), split_params).test_end
        split_params = dataclasses.replace(split_params,
                                           cutoff=str((end - pd.Timedelta(days=args.shift_days)).date()))
    split = temporal_split(events[S.TS].max(), split_params)
    config = TrainConfig(split=split_params)
    test = window(events, split.label_end, split.test_end)
    reference = None
    for name in args.variants.split(","):
        v = dict(VARIANTS[name])
        model = dataclasses.replace(config.model, item_item_sources=v["item_item_sources"])
        if "recall" in v:
            model = dataclasses.replace(model, recall=dataclasses.replace(model.recall, **v["recall"]))
        cpu, wall = time.process_time(), time.time()
        rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end, model)
        cpu, wall = time.process_time() - cpu, time.time() - wall
        if args.time_only:
            print(json.dumps({"events": len(events), "variant": name, "train_two_stage_cpu_s": round(cpu, 1),
                              "wall_s": round(wall, 1)}), flush=True)
            continue
        ev = evaluate(rec, test, 10, curve_max_k=0, params=config.evaluation)
        per_user = ev.per_user["ndcg_at_10"]
        gains = dict(zip(rec.feature_names, rec.booster.feature_importance(importance_type="gain")))
        line = {"data": args.dataset, "variant": name, "ndcg_at_10": round(ev.metrics["test.ndcg_at_10"], 4),
                "union_recall": {k: round(x, 3) for k, x in ev.metrics.items() if k.startswith("recall.union")},
                "gain_share": {k: round(g / max(sum(gains.values()), 1e-12), 3) for k, g in gains.items()
                               if "ease" in k or "rp3beta" in k}}
        if reference is None:
            reference = per_user
        else:
            diff = per_user - reference
            low, high = paired_bootstrap_ci(diff, 0.95, 1000, 0)
            line["minus_first"] = [round(float(diff.mean()), 4), round(low, 4), round(high, 4)]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
