"""Search quality on held-out search sessions (the test window: days after everything the models learnt
from): NDCG@10 and MRR of
    (a) BM25 alone (bm25s, stemmed, typo-corrected),
    (b) the hand-set blend it replaced (0.6 x TF-IDF cosine + 0.4 x the recommendation ranker),
    (c) hybrid retrieval without learning (reciprocal rank fusion of BM25 and all-MiniLM-L6-v2
        embeddings; needs the [semantic] extra, else reported as skipped),
    (d) the learned personalised search ranker (LambdaRank on earlier search sessions),
with (d) / (a) and a paired 95% bootstrap interval of (d) - (a) over searches.

    .venv/bin/python bench/search.py            # table
    .venv/bin/python bench/search.py --json     # one JSON object
    .venv/bin/python bench/search.py --seed 7   # another synthetic world
    .venv/bin/python bench/search.py --retail '' # without the Online Retail new-item section

and on Online Retail's real product text: items first sold in the last 14 days, recommended to their
buyers by content similarity to each buyer's history, recall@10/20 with TF-IDF vs the embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.features import schema as S  # noqa: E402
from recsys.features.interactions import build_interaction_data  # noqa: E402
from recsys.features.split import SplitParams, temporal_split  # noqa: E402
from recsys.features.synthetic import SyntheticParams, SyntheticWorld  # noqa: E402
from recsys.models.gate import paired_bootstrap_ci  # noqa: E402
from recsys.models.search import blend_search  # noqa: E402
from recsys.models.search_ranker import (SearchRankerParams, evaluate_search, search_sessions,  # noqa: E402
                                  train_search_model)
from recsys.models.semantic import load_encoder, why_not  # noqa: E402
from recsys.models.session import build_serving_index  # noqa: E402
from recsys.models.two_stage import TwoStageParams  # noqa: E402
from recsys.models.two_stage_training import train_two_stage  # noqa: E402

TARGET = 1.15  # (d) / (a) on NDCG@10
RETAIL_CSV = Path(os.environ.get("RECSYS_SHARED", "/work/shared")) / "data/online_retail/online_retail.csv.gz"


def run(seed: int, k: int = 10) -> dict:
    t0 = time.perf_counter()
    world = SyntheticWorld(SyntheticParams(seed=seed))
    catalog = world.catalog()
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    split = temporal_split(events[S.TS].max(), SplitParams())
    rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end, TwoStageParams())
    t_rec = time.perf_counter() - t0
    data_train = build_interaction_data(events, catalog, split.train_end)
    encoder = load_encoder()
    t1 = time.perf_counter()
    model, result = train_search_model(events, catalog, data_train, rec.data, split.train_end, split.label_end,
                                       SearchRankerParams(), encoder=encoder)
    t_search = time.perf_counter() - t1
    sessions = search_sessions(events)
    test = sessions.between(split.label_end, split.test_end)
    data, index = rec.data, build_serving_index(rec)
    variants = {
        "a_bm25": lambda u, q: model.retrieve(q, semantic=False).items,
        "b_blend": lambda u, q: blend_search(rec, index, q, u, 100).items,
        "d_learned": lambda u, q: model.rank(data, u, q)[0],
    }
    if model.semantic:
        def hybrid(u, q):
            r = model.retrieve(q)
            return r.items[np.argsort(-r.rrf(), kind="stable")]
        variants["c_hybrid_rrf"] = hybrid
    per = {}
    timing = {}
    for name, fn in variants.items():
        t = time.perf_counter()
        per[name] = evaluate_search(fn, data, test, k)
        timing[name] = (time.perf_counter() - t) / max(len(per[name]["mrr"]), 1) * 1000
    a, b, d = (per[v][f"ndcg_at_{k}"] for v in ("a_bm25", "b_blend", "d_learned"))
    low, high = paired_bootstrap_ci(d - a, 0.95, 2000, 0)
    out = {
        "data": {"seed": seed, "events": len(events), "searches_train": int(len(sessions.between(split.train_end,
                                                                                                 split.label_end))),
                 "searches_test": len(test), "searches_scored": len(a),
                 "train_window": f"{split.train_end:%Y-%m-%d}..{split.label_end:%Y-%m-%d}",
                 "test_window": f"{split.label_end:%Y-%m-%d}..{split.test_end:%Y-%m-%d}"},
        "results": {name: {f"ndcg_at_{k}": float(m[f"ndcg_at_{k}"].mean()), "mrr": float(m["mrr"].mean()),
                           "ms_per_query": round(timing[name], 2)} for name, m in per.items()},
        "semantic": "on" if model.semantic else f"off: {why_not() or 'no encoder'}",
        "learned_vs_bm25": {"ratio": float(d.mean() / a.mean()), "diff": float((d - a).mean()),
                            "ci95": [low, high], "target_ratio": TARGET,
                            "met": bool(d.mean() >= TARGET * a.mean() and low > 0)},
        "learned_vs_blend": {"ratio": float(d.mean() / b.mean()), "diff": float((d - b).mean()),
                             "ci95": list(paired_bootstrap_ci(d - b, 0.95, 2000, 0))},
        "ranker_best_iteration": result.best_iteration if result else None,
        "seconds": {"recommender": round(t_rec, 1), "search_model": round(t_search, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    return out


def new_item_content_recall(path: Path, test_days: int = 30, ks: tuple[int, ...] = (10, 50)) -> dict:
    """Online Retail: items first sold in the last `test_days` (never bought before). Each buyer of one of
    them who bought before gets the whole catalogue (minus their history) ranked by content similarity to
    their history (mean of the history items' vectors); recall@k of the new items they bought, TF-IDF vs
    embeddings (a new item has no interactions: content is its only candidate path)."""
    from bench.quality import load_online_retail
    from recsys.models.text_index import TextIndex

    events, catalog = load_online_retail(path)
    buys = events.loc[events[S.EVENT_TYPE] == S.PURCHASE, [S.USER_ID, S.ITEM_ID, S.TS]]
    start = buys[S.TS].max().normalize() - pd.Timedelta(days=test_days - 1)
    first = buys.groupby(S.ITEM_ID)[S.TS].min()
    new_items = np.array(sorted(first.index[first >= start]), dtype=object)
    before, after = buys.loc[buys[S.TS] < start], buys.loc[buys[S.TS] >= start]
    history = before.groupby(S.USER_ID)[S.ITEM_ID].agg(lambda s: sorted(set(s)))
    bought_new = after.loc[after[S.ITEM_ID].isin(new_items)].groupby(S.USER_ID)[S.ITEM_ID].agg(set)
    users = [u for u in bought_new.index if u in history.index]
    cat = catalog.drop_duplicates(S.ITEM_ID).set_index(S.ITEM_ID)
    item_ids = np.array(sorted(set(cat.index)), dtype=object)
    pos = pd.Series(np.arange(len(item_ids)), index=item_ids)
    titles = cat.reindex(item_ids)[S.TITLE].fillna("").astype(str).to_numpy()
    cats = cat.reindex(item_ids)[S.CATEGORY].fillna("").astype(str).to_numpy() if S.CATEGORY in cat else \
        np.full(len(item_ids), "", object)
    tfidf = TextIndex.fit(titles, cats).matrix
    vectors = {"tfidf": lambda rows: tfidf[rows]}
    encoder = load_encoder()
    if encoder is not None:
        t = time.perf_counter()
        emb = encoder.encode([f"{a} {b}".strip() for a, b in zip(titles, cats)])
        encode_s = time.perf_counter() - t
        vectors["embedding"] = lambda rows: emb[rows]
    out: dict = {"new_items": len(new_items), "buyers": len(users), "test_days": test_days}
    for name, vec in vectors.items():
        cand = vec(np.arange(len(item_ids)))
        hits = {k: [] for k in ks}
        for u in users:
            hist = pos.reindex(history[u]).dropna().to_numpy(dtype=np.int64)
            prof = np.asarray(vec(hist).mean(axis=0)).ravel()
            sims = np.asarray(cand @ prof).ravel()
            sims[hist] = -np.inf
            order = item_ids[np.argsort(-sims, kind="stable")]
            for k in ks:
                hits[k].append(len(bought_new[u] & set(order[:k])) / len(bought_new[u]))
        out[name] = {f"recall_at_{k}": float(np.mean(v)) for k, v in hits.items()}
    if encoder is not None:
        out["embedding"]["encode_seconds"] = round(encode_s, 1)
    else:
        out["embedding"] = f"skipped: {why_not()}"
    return out


def table(out: dict, k: int = 10) -> str:
    names = {"a_bm25": "(a) BM25 alone", "b_blend": "(b) blend 0.6 TF-IDF + 0.4 ranker",
             "c_hybrid_rrf": "(c) hybrid BM25 + embeddings (RRF)", "d_learned": "(d) learned personalised"}
    lines = [f"{'variant':<38}{'NDCG@' + str(k):>10}{'MRR':>10}{'ms/query':>10}", "-" * 68]
    for key, label in names.items():
        r = out["results"].get(key)
        lines.append(f"{label:<38}" + (f"{r[f'ndcg_at_{k}']:>10.4f}{r['mrr']:>10.4f}{r['ms_per_query']:>10.2f}"
                                        if r else f"{'skipped: semantic ' + out['semantic']}"))
    v = out["learned_vs_bm25"]
    lines.append(f"\n(d)/(a) NDCG@{k} = {v['ratio']:.3f} (target >= {v['target_ratio']}), diff {v['diff']:+.4f}, "
                 f"paired 95% CI [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] -> {'MET' if v['met'] else 'NOT MET'}")
    b = out["learned_vs_blend"]
    lines.append(f"(d)/(b) NDCG@{k} = {b['ratio']:.3f}, diff {b['diff']:+.4f}, paired 95% CI "
                 f"[{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]")
    dd = out["data"]
    lines.append(f"{dd['searches_scored']} held-out searches ({dd['test_window']}), ranker learnt from "
                 f"{dd['searches_train']} searches of {dd['train_window']}; {dd['events']} events, seed {dd['seed']}")
    r = out.get("online_retail_new_items")
    if r:
        lines.append(f"\nOnline Retail new items ({r['new_items']} first sold in the last {r['test_days']} days, "
                     f"{r['buyers']} of their buyers with history): recall of the new items they bought "
                     f"when the whole catalogue is ranked by content similarity to their history")
        for name in ("tfidf", "embedding"):
            v = r[name]
            lines.append(f"  {name:<10}" + ("  ".join(f"{m} {x:.4f}" for m, x in v.items()) if isinstance(v, dict)
                                            else v))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--seed", type=int, default=SyntheticParams().seed, help="synthetic world seed")
    ap.add_argument("--retail", type=Path, default=RETAIL_CSV,
                    help="Online Retail CSV for the new-item content recall ('' skips it)")
    args = ap.parse_args(argv)
    out = run(args.seed)
    if str(args.retail) and Path(args.retail).exists():
        out["online_retail_new_items"] = new_item_content_recall(Path(args.retail))
    print(json.dumps(out, indent=2) if args.json else table(out))


if __name__ == "__main__":
    main()
