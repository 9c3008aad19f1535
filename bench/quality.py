"""Offline ranking quality with the defaults a user gets: the two-stage model as `recsys train` builds
it (no settings of this bench's own) against every baseline, strong ones included (EASE and RP3beta
tuned on the label window, tuned popularity, ALS, item-kNN, ...), on the synthetic data (three seeds)
and on UCI Online Retail, each on a temporal holdout. Prints NDCG/MAP/Recall/HitRate@k, coverage,
the ratio of the two-stage NDCG to the best baseline's and the 95% paired-bootstrap interval of the
difference (over test users), the `new`/`returning` segments, and the settings tuning chose. New users are
also scored with context (recsys.models.cold_start): their first test-window event revealed (`new_context`)
or only its category (`new_category`), the rest of their test-window purchases to find.

    .venv/bin/python bench/quality.py                       # tables
    .venv/bin/python bench/quality.py --json                # one JSON object
    .venv/bin/python bench/quality.py --datasets synthetic --seeds 42 --holdout-shift-days 7
                                                            # an earlier window: develop there, not on
                                                            # the reported test window
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

from recsys.features import schema as S  # noqa: E402
from recsys.features.split import SplitParams, temporal_split, window  # noqa: E402
from recsys.features.synthetic import SyntheticParams, SyntheticWorld  # noqa: E402
from recsys.models.config import TrainConfig  # noqa: E402
from recsys.models.evaluation import BASELINES, evaluate  # noqa: E402
from recsys.models.gate import paired_bootstrap_ci  # noqa: E402
from recsys.models.tuning import SearchParams, search_settings, tuned_params  # noqa: E402
from recsys.models.two_stage_training import train_two_stage  # noqa: E402

# the shared data next to the repository (../shared, as the README says) unless RECSYS_SHARED points elsewhere
SHARED = Path(os.environ.get("RECSYS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
RETAIL_CSV = SHARED / "data/online_retail/online_retail.csv.gz"
TARGET = 1.05  # two-stage NDCG / best baseline NDCG, with the CI of the difference above zero
METRICS = ("ndcg", "map", "recall", "hitrate", "coverage")
POPULARITY_STYLE = ("popularity", "trending")  # what a new user can get from a baseline
# the evaluation protocol per data set (which days are held out), as `recsys train` options; the model
# settings are the CLI's defaults. Online Retail is a year of purchases with weekly rhythm: 4-week windows.
SPLITS = {"synthetic": SplitParams(), "online_retail": SplitParams(label_days=28, test_days=28)}
CLI_SPLIT_OPTIONS = {"synthetic": "", "online_retail": "--label-days 28 --test-days 28"}


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
    from recsys.features.online_retail import STRING_COLUMNS, transform_online_retail

    raw = pd.read_csv(path, encoding="latin-1", dtype={c: "string" for c in STRING_COLUMNS})
    result = transform_online_retail(raw)
    events = result.events.loc[result.events[S.PRICE] > 0, list(S.EVENT_COLUMNS)].reset_index(drop=True)
    return events, result.catalog


def run_dataset(name: str, events: pd.DataFrame, catalog: pd.DataFrame, split_params: SplitParams,
                k: int, tuning: SearchParams = SearchParams(), item_item: tuple[str, ...] | None = None) -> dict:
    t0 = time.time()
    config = TrainConfig(split=split_params, tuning=tuning)  # the CLI's defaults (and its --tune options)
    split = temporal_split(events[S.TS].max(), split_params)
    model, search = config.model, None
    if item_item is not None:  # as `recsys train --item-item-sources`
        model = dataclasses.replace(model, item_item_sources=item_item)
    if tuning.mode == "full":  # what the flow's tune-settings task does, without MLflow (never the test window)
        search = search_settings(events, catalog, split.train_end, split.label_end, model, tuning)
        model = tuned_params(model, search.settings)
    tune_s = time.time() - t0
    rec, result = train_two_stage(events, catalog, split.train_end, split.label_end, model)
    train_s = time.time() - t0
    test = window(events, split.label_end, split.test_end)
    ev = evaluate(rec, test, k, curve_max_k=0, params=config.evaluation)
    m = ev.metrics
    rows = {"two-stage": {x: m.get(f"test.{x}_at_{k}") for x in METRICS}}
    for b in BASELINES:
        rows[b] = {x: m.get(f"baseline.{b}.{x}_at_{k}") for x in METRICS}
    rows = {name: row for name, row in rows.items() if row["ndcg"] is not None}  # absent sources
    best = max((b for b in BASELINES if b in rows), key=lambda b: rows[b]["ndcg"])
    key = f"ndcg_at_{k}"
    diff = ev.per_user[key] - ev.baseline_per_user[best][key]
    low, high = paired_bootstrap_ci(diff, 0.95, 1000, 0)
    ratio = rows["two-stage"]["ndcg"] / max(rows[best]["ndcg"], 1e-12)
    segments = {}
    for seg in ("returning", "new"):
        vals = {"two-stage": m.get(f"test.{seg}.{key}")}
        for b in BASELINES:
            if m.get(f"baseline.{b}.{seg}.{key}") is not None:
                vals[b] = m[f"baseline.{b}.{seg}.{key}"]
        segments[seg] = vals
    new = segments["new"]
    best_pop_new = max((new[b] for b in POPULARITY_STYLE if new.get(b) is not None), default=None)
    new_users = new_user_table(rec, ev, k)
    return {"dataset": name, "k": k, "n_test_users": int(m["test.n_users"]),
            "new_user_share": m["test.new_user_share"], "split": split.as_dict(),
            "cli": f"recsys train {CLI_SPLIT_OPTIONS[name.split('@')[0]]}".strip(),
            "rows": rows, "best_baseline": best, "ratio": ratio, "diff": float(diff.mean()),
            "ci": [low, high], "target": TARGET, "meets_target": bool(ratio >= TARGET and low > 0),
            "new_vs_best_popularity": (None if new["two-stage"] is None or best_pop_new is None
                                       else new["two-stage"] - best_pop_new),
            "segments": segments, "new_users": new_users, "best_iteration": result.best_iteration,
            "tuned": {n: dataclasses.asdict(t.params) for n, t in rec.baseline_tuning.items()},
            "seen_items": rec.params.seen_items, "text_source": "text" in rec.sources,
            "item_item_sources": list(rec.params.item_item_sources),
            "recall": {key_: v for key_, v in m.items() if key_.startswith("recall.")},
            "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1),
            "tune": tuning.mode, "tune_seconds": round(tune_s, 1),
            "search": None if search is None else {"settings": search.settings, "validation_ndcg": search.value,
                                                   "start_validation_ndcg": search.start_value,
                                                   "trials": len(search.trials)}}


def new_user_table(rec, ev, k: int) -> dict:
    """The new users by protocol (no context: `new`; first test-window event revealed: `new_context`; only its
    category: `new_category`): two-stage vs the best popularity-style baseline on the same users and truth,
    NDCG@k with the 95% paired-bootstrap interval of the difference (None below 2 users)."""
    m, key = ev.metrics, f"ndcg_at_{k}"
    is_new = rec.data.users.index_of(ev.user_ids) < 0
    out = {}
    for protocol in ("new", "new_context", "new_category"):
        base = "new" if protocol == "new" else "new_context"  # the baselines ignore context: one truth, one list
        pops = {b: m[f"baseline.{b}.{base}.{key}"] for b in POPULARITY_STYLE if f"baseline.{b}.{base}.{key}" in m}
        model = m.get(f"test.{protocol}.{key}")
        if model is None or not pops:
            out[protocol] = {"n_users": 0}
            continue
        best = max(pops, key=pops.get)
        if protocol == "new":
            diff = ev.per_user[key][is_new] - ev.baseline_per_user[best][key][is_new]
        else:
            diff = ev.context_per_user[f"test.{protocol}"] - ev.context_per_user[f"baseline.{best}.new_context"]
        ci = list(paired_bootstrap_ci(diff, 0.95, 1000, 0)) if len(diff) >= 2 else None
        out[protocol] = {"n_users": int(len(diff)), "two-stage": model, "best_popularity": best,
                         "popularity_ndcg": pops[best], "diff": float(diff.mean()), "ci": ci}
    return out


def table(res: dict) -> str:
    k = res["k"]
    head = f"{'model':<12}" + "".join(f"{x + '@' + str(k) if x != 'coverage' else x:>13}" for x in METRICS)
    lines = [f"== {res['dataset']}: {res['n_test_users']} test users ({res['new_user_share']:.0%} new), "
             f"test {res['split']['label_end'][:10]}..{res['split']['test_end'][:10]}, `{res['cli']}`, "
             f"{res['seconds']}s", head, "-" * len(head)]
    for name, row in res["rows"].items():
        lines.append(f"{name:<12}" + "".join(f"{(row[x] if row[x] is not None else float('nan')):>13.4f}"
                                             for x in METRICS))
    lines.append(f"two-stage / best baseline ({res['best_baseline']}) NDCG@{k}: {res['ratio']:.3f}x, "
                 f"difference {res['diff']:+.4f} (95% CI [{res['ci'][0]:+.4f}, {res['ci'][1]:+.4f}]); "
                 f"target >= {res['target']:.2f}x with CI above 0: {'met' if res['meets_target'] else 'NOT met'}")
    for seg, vals in res["segments"].items():
        if vals["two-stage"] is not None:
            lines.append(f"segment {seg}: two-stage {vals['two-stage']:.4f}, "
                         + ", ".join(f"{b} {v:.4f}" for b, v in vals.items() if b != "two-stage" and v is not None))
    for protocol, row in res.get("new_users", {}).items():
        if row["n_users"]:
            ci = f"[{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]" if row["ci"] else "n/a"
            lines.append(f"new users, {protocol} ({row['n_users']} users): two-stage {row['two-stage']:.4f} vs "
                         f"{row['best_popularity']} {row['popularity_ndcg']:.4f}, difference {row['diff']:+.4f} "
                         f"(95% CI {ci})")
    lines.append("tuned on the label window: " + "; ".join(f"{n} {p}" for n, p in res["tuned"].items())
                 + f"; seen items: {res['seen_items']}; text source: {'on' if res['text_source'] else 'off'}"
                 + f"; item-item sources: {','.join(res['item_item_sources']) or 'none'}")
    if res.get("search"):
        lines.append(f"--tune full: {res['search']['trials']} trials in {res['tune_seconds']}s, validation NDCG@10 "
                     f"{res['search']['validation_ndcg']:.4f} (configured {res['search']['start_validation_ndcg']}); "
                     f"chosen {res['search']['settings']}")
    lines.append("recall: " + ", ".join(f"{key[7:]}={v:.3f}" for key, v in res["recall"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--datasets", default="synthetic,online_retail")
    ap.add_argument("--seeds", default="42,7,13", help="synthetic worlds to draw (42 = the `recsys generate` one)")
    ap.add_argument("--holdout-shift-days", type=int, default=0,
                    help="end the data this many days before the last day (an earlier test window)")
    ap.add_argument("--tune", default="quick", choices=("off", "quick", "full"), help="as `recsys train --tune`")
    ap.add_argument("--tune-budget-s", type=float, default=SearchParams().budget_s, help="as `recsys train`")
    ap.add_argument("--tune-trials", type=int, default=SearchParams().max_trials, help="as `recsys train`")
    ap.add_argument("--item-item-sources", default=None,
                    help="as `recsys train --item-item-sources` (ease,rp3beta | ease | rp3beta | none; default: the CLI's)")
    args = ap.parse_args(argv)
    tuning = SearchParams(mode=args.tune, budget_s=args.tune_budget_s, max_trials=args.tune_trials)
    item_item = (None if args.item_item_sources is None else
                 tuple(n for n in args.item_item_sources.split(",") if n and n != "none"))
    out: dict = {}
    runs = []
    for name in args.datasets.split(","):
        if name == "synthetic":
            runs += [(f"synthetic@seed{s}", name, int(s)) for s in args.seeds.split(",") if s]
        elif name == "online_retail":
            runs.append((name, name, None))
        else:
            raise SystemExit(f"unknown data set {name!r}")
    for label, name, seed in runs:
        if name == "online_retail":
            if not RETAIL_CSV.exists():
                out[label] = {"skipped": f"skipping online_retail: {RETAIL_CSV} is absent (set RECSYS_SHARED to the "
                                                  "folder holding data/)"}
                print(out[label]["skipped"], file=sys.stderr)
                continue
            events, catalog = load_online_retail(RETAIL_CSV)
        else:
            events, catalog = synthetic_data(seed)
        split_params = SPLITS[name]
        if args.holdout_shift_days:
            end = temporal_split(events[S.TS].max(), split_params).test_end
            split_params = dataclasses.replace(
                split_params, cutoff=str((end - pd.Timedelta(days=args.holdout_shift_days)).date()))
        out[label] = run_dataset(label, events, catalog, split_params, args.k, tuning, item_item)
        if not args.json:
            print(table(out[label]), flush=True)
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
