"""The new-user grid (recsys.models.cold_start) on an earlier window, to develop on without the reported
test window: trains with the `recsys train` defaults on data ending `--holdout-shift-days` before the last
day, then scores every grid point on that model's test window's new buyers (first event revealed) and times
`tune_cold_start` (what training adds).

    .venv/bin/python bench/cold_start.py --dataset online_retail    # RECSYS_SHARED=<folder holding data/>
    .venv/bin/python bench/cold_start.py --dataset synthetic --seed 42
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import RETAIL_CSV, SPLITS, load_online_retail, synthetic_data  # noqa: E402

from recsys.features import schema as S  # noqa: E402
from recsys.features.split import temporal_split, window  # noqa: E402
from recsys.models.cold_start import tune_cold_start  # noqa: E402
from recsys.models.config import TrainConfig  # noqa: E402
from recsys.models.session import build_serving_index  # noqa: E402
from recsys.models.two_stage_training import train_two_stage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="online_retail", choices=("online_retail", "synthetic"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--holdout-shift-days", type=int, default=28)
    args = ap.parse_args(argv)
    if args.dataset == "online_retail":
        if not RETAIL_CSV.exists():
            raise SystemExit(f"{RETAIL_CSV} is absent (set RECSYS_SHARED to the folder holding data/)")
        events, catalog = load_online_retail(RETAIL_CSV)
    else:
        events, catalog = synthetic_data(args.seed)
    split_params = SPLITS[args.dataset]
    end = temporal_split(events[S.TS].max(), split_params).test_end
    split_params = dataclasses.replace(split_params,
                                       cutoff=str((end - pd.Timedelta(days=args.holdout_shift_days)).date()))
    split = temporal_split(events[S.TS].max(), split_params)
    rec, _ = train_two_stage(events.loc[events[S.TS] < split.label_end], catalog, split.train_end,
                             split.label_end, TrainConfig(split=split_params).model)
    t0 = time.perf_counter()
    result = tune_cold_start(rec, build_serving_index(rec), window(events, split.label_end, split.test_end),
                             rec.params.cold_start)
    seconds = time.perf_counter() - t0
    print(f"{args.dataset}: window {split.label_end:%Y-%m-%d}..{split.test_end:%Y-%m-%d}, {rec.data.n_items:,} items")
    for point, value in result.scores:
        print(f"  NDCG@10 {value:.4f}  {point}")
    print(f"chosen: {result.params}; grid time {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
