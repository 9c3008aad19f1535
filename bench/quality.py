"""Offline ranking quality: every baseline and the two-stage model on the synthetic data and on
UCI Online Retail (temporal holdout), NDCG/MAP/Recall/HitRate@k, coverage, novelty, diversity,
and the two-stage / best-baseline NDCG ratio.

    .venv/bin/python bench/quality.py            # table
    .venv/bin/python bench/quality.py --json     # one JSON object
    .venv/bin/python bench/quality.py --datasets synthetic --holdout-shift-days 7 --synthetic-seed 7
                                                 # a development window/world: tune there, not on the
                                                 # reported test window
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features import schema as S  # noqa: E402
from features.covisitation import CovisitationParams  # noqa: E402
from features.interactions import InteractionParams  # noqa: E402
from features.split import SplitParams, temporal_split, window  # noqa: E402
from features.synthetic import SyntheticParams, SyntheticWorld  # noqa: E402
from models.evaluation import BASELINES, evaluate, list_metrics, relevant_items  # noqa: E402
from models.recall import ALSParams, PopularityParams  # noqa: E402
from models.two_stage import RecallParams, TwoStageParams, train_two_stage  # noqa: E402

# the shared data next to the repository (../shared, as the README says) unless RECSYS_SHARED points elsewhere
SHARED = Path(os.environ.get("RECSYS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
RETAIL_CSV = SHARED / "data/online_retail/online_retail.csv.gz"
TARGETS = {"synthetic": 1.20, "online_retail": 1.10}
METRICS = ("ndcg", "map", "recall", "hitrate", "coverage", "novelty", "diversity")


def synthetic_data(seed: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The default `recsys generate` data set (or the same world drawn with another seed), in memory."""
    world = SyntheticWorld(SyntheticParams() if seed is None else SyntheticParams(seed=seed))
    catalog = world.catalog()  # first: the generator draws catalog dates before the days
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    return events, catalog


def load_online_retail(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw file -> contract events + catalog through the ingestion adapter (features/online_retail.py).

    Zero-price lines are left by the adapter to contract validation (rule non_positive_price),
    which rejects them; the bench drops them the same way."""
    from features.online_retail import STRING_COLUMNS, transform_online_retail

    raw = pd.read_csv(path, encoding="latin-1", dtype={c: "string" for c in STRING_COLUMNS})
    result = transform_online_retail(raw)
    events = result.events.loc[result.events[S.PRICE] > 0, list(S.EVENT_COLUMNS)].reset_index(drop=True)
    return events, result.catalog


def synthetic_setup() -> tuple[SplitParams, TwoStageParams]:
    """The `recsys train` defaults, plus ranking sets stacked from 5 weekly label windows."""
    return SplitParams(), TwoStageParams(train_windows=5)


def retail_setup() -> tuple[SplitParams, TwoStageParams]:
    """Purchases only, repeat buying dominates: slow decay, long popularity window, holdout 4 weeks."""
    return (SplitParams(label_days=28, test_days=28),
            TwoStageParams(interactions=InteractionParams(half_life_days=90.0,
                                                          covisitation=CovisitationParams(max_lag=20)),
                           als=ALSParams(factors=64, iterations=15, device="cpu"),
                           popularity=PopularityParams(window_days=28), train_windows=2,
                           recall=RecallParams(als=100, popular=50, repeat=100, covis=100, trending=30, text=50)))


def run_dataset(name: str, events: pd.DataFrame, catalog: pd.DataFrame, split_params: SplitParams,
                params: TwoStageParams, k: int, diversity: tuple[float, ...]) -> dict:
    t0 = time.time()
    split = temporal_split(events[S.TS].max(), split_params)
    rec, result = train_two_stage(events, catalog, split.train_end, split.label_end, params)
    test = window(events, split.label_end, split.test_end)
    ev = evaluate(rec, test, k)
    m = ev.metrics
    rows = {"two-stage": {x: m.get(f"test.{x}_at_{k}") for x in METRICS}}
    for b in BASELINES:
        rows[b] = {x: m.get(f"baseline.{b}.{x}_at_{k}") for x in METRICS}
    best = max(BASELINES, key=lambda b: rows[b]["ndcg"])
    ratio = rows["two-stage"]["ndcg"] / max(rows[best]["ndcg"], 1e-12)
    # MMR over categories: what it costs in NDCG and buys in diversity
    mmr = {}
    idx = rec.data.users.index_of(ev.user_ids)
    truth = relevant_items(test).tolist()
    common = dict(relevant=truth, ids=rec.data.items.ids, k=k,
                  item_share=np.diff(rec.data.weighted.tocsc().indptr) / max(rec.data.n_users, 1),
                  n_users=rec.data.n_users, item_category=rec.data.item_category, segments={})
    for d in diversity:
        rec.params = dataclasses.replace(params, diversity=d)
        items, _ = rec.recommend(idx, k)
        mm = list_metrics(items, prefix="", **common)[0]
        mmr[str(d)] = {x: mm[f"{x}_at_{k}"] for x in ("ndcg", "diversity", "novelty", "coverage")}
    rec.params = params
    return {"dataset": name, "k": k, "n_test_users": int(m["test.n_users"]),
            "new_user_share": m["test.new_user_share"], "split": split.as_dict(),
            "rows": rows, "best_baseline": best, "ratio": ratio, "target": TARGETS[name],
            "meets_target": ratio >= TARGETS[name], "best_iteration": result.best_iteration,
            "segments": {seg: {"two-stage": m.get(f"test.{seg}.ndcg_at_{k}"),
                               best: m.get(f"baseline.{best}.{seg}.ndcg_at_{k}")}
                         for seg in ("returning", "new")},
            "recall": {key: v for key, v in m.items() if key.startswith("recall.")},
            "mmr": mmr, "seconds": round(time.time() - t0, 1)}


def table(res: dict) -> str:
    k = res["k"]
    head = f"{'model':<12}" + "".join(f"{x + '@' + str(k) if x not in ('coverage',) else x:>13}" for x in METRICS)
    lines = [f"== {res['dataset']}: {res['n_test_users']} test users ({res['new_user_share']:.0%} new), "
             f"test {res['split']['label_end'][:10]}..{res['split']['test_end'][:10]}, {res['seconds']}s", head,
             "-" * len(head)]
    for name, row in res["rows"].items():
        lines.append(f"{name:<12}" + "".join(f"{(row[x] if row[x] is not None else float('nan')):>13.4f}"
                                             for x in METRICS))
    lines.append(f"two-stage / best baseline ({res['best_baseline']}) NDCG@{k}: {res['ratio']:.3f}x "
                 f"(target {res['target']:.2f}x: {'met' if res['meets_target'] else 'NOT met'})")
    lines.append("segments NDCG: " + "; ".join(f"{seg}: " + ", ".join(f"{n} {v:.4f}" for n, v in vals.items()
                                                                      if v is not None)
                                               for seg, vals in res["segments"].items()))
    lines.append("recall: " + ", ".join(f"{key[7:]}={v:.3f}" for key, v in res["recall"].items()))
    lines.append("MMR diversity knob: " + "; ".join(
        f"{d}: ndcg {v['ndcg']:.4f} div {v['diversity']:.3f}" for d, v in res["mmr"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--datasets", default="synthetic,online_retail")
    ap.add_argument("--diversity", default="0,0.3,0.6", help="MMR knob values to report")
    ap.add_argument("--synthetic-seed", type=int, default=None, help="draw the synthetic world with this seed")
    ap.add_argument("--holdout-shift-days", type=int, default=0,
                    help="end the data this many days before the last day (an earlier test window)")
    args = ap.parse_args(argv)
    diversity = tuple(float(x) for x in args.diversity.split(",") if x)
    out: dict = {}
    for name in args.datasets.split(","):
        if name == "synthetic":
            events, catalog = synthetic_data(args.synthetic_seed)
            split_params, params = synthetic_setup()
        elif name == "online_retail":
            if not RETAIL_CSV.exists():
                msg = f"skipping online_retail: {RETAIL_CSV} is absent (set RECSYS_SHARED to the folder holding data/)"
                out[name] = {"skipped": msg}
                print(msg, file=sys.stderr)
                continue
            events, catalog = load_online_retail(RETAIL_CSV)
            split_params, params = retail_setup()
        else:
            raise SystemExit(f"unknown data set {name!r}")
        if args.holdout_shift_days:
            end = temporal_split(events[S.TS].max(), split_params).test_end
            split_params = dataclasses.replace(
                split_params, cutoff=str((end - pd.Timedelta(days=args.holdout_shift_days)).date()))
        out[name] = run_dataset(name, events, catalog, split_params, params, args.k, diversity)
        if not args.json:
            print(table(out[name]), flush=True)
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
