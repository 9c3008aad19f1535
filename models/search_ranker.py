"""The learned, personalised search ranker. Pure (no I/O besides `save`/`load` of its own files).

Training data are search sessions of the event store: a `search` event with a query, followed by the
views, carts and purchases of the same session (up to the session's next search); each item's label is
its strongest event (view 1, cart 2, purchase 3). Candidates are the query's retrieval list (BM25, fused
with semantic neighbours when item embeddings exist); a LightGBM LambdaRank model, one query group per
search, learns from query-item features (BM25 score and rank, share of query terms in title / category /
brand, embedding cosine, the query's category affinity learned from earlier searches) and the user-item
pair features of the recommender (`recsys.features.ranking_features.PAIR_FEATURES`: popularity, price fit,
the user's category share, history with the item), so the same query ranks differently per shopper.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.interactions import InteractionData
from recsys.features.ranking_features import LABEL_OF_EVENT, PAIR_FEATURES, pair_features
from recsys.models.lexical import LexicalIndex
from recsys.models.metrics import discounts
from recsys.models.ranker import RankerParams, RankerResult, train_ranker
from recsys.models.semantic import load_encoder, why_not

QUERY_FEATURES = ("q_bm25", "q_bm25_rel", "q_bm25_rank", "q_n_terms", "q_match_title", "q_match_category",
                  "q_match_brand", "q_emb_sim", "q_sem_rank", "q_cat_affinity")
SEARCH_FEATURES = QUERY_FEATURES + PAIR_FEATURES
RRF_K = 60.0  # reciprocal rank fusion constant (Cormack et al. 2009)


@dataclass(frozen=True)
class SearchRankerParams:
    candidates: int = 100  # lexical candidates per query
    semantic_candidates: int = 50  # semantic candidates fused in (when item embeddings exist)
    # pseudo-counts of the global category mix added to a query term's clicked-category counts
    affinity_prior: float = 2.0
    # one thread: ~60k rows train in seconds; more threads on a busy machine spin (2 threads: 7x slower here)
    ranker: RankerParams = field(default_factory=lambda: RankerParams(n_estimators=300, min_child_samples=10,
                                                                      num_threads=1))
    # the ranker learns from a seeded sample of at most this many of the label window's searches (~2M
    # candidate rows), as the recommender's ranker from at most `max_train_users` users: its cost (one
    # retrieval per search, then LightGBM) stops growing with the events; None = every search
    max_train_searches: int | None = 20_000


# ---- search sessions -------------------------------------------------------------------------
@dataclass
class SearchSessions:
    """One row per search (`searches`: user_id, query, ts) and its graded items (`labels`: search, item_id,
    grade), where `search` is the row position in `searches`."""

    searches: pd.DataFrame
    labels: pd.DataFrame

    def __len__(self) -> int:
        return len(self.searches)

    def between(self, start, end) -> "SearchSessions":
        """The searches with start <= ts < end (None = open)."""
        ts = self.searches[S.TS]
        keep = np.ones(len(ts), dtype=bool)
        if start is not None:
            keep &= (ts >= start).to_numpy()
        if end is not None:
            keep &= (ts < end).to_numpy()
        return self.take(keep)

    def sample(self, n: int | None, seed: int) -> "SearchSessions":
        """At most `n` of the searches, a seeded sample in their order (all of them when None or fewer)."""
        if n is None or len(self) <= n:
            return self
        keep = np.zeros(len(self), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(self), n, replace=False)] = True
        return self.take(keep)

    def take(self, keep: np.ndarray) -> "SearchSessions":
        rows = np.flatnonzero(keep)
        remap = pd.Series(np.arange(len(rows)), index=rows)
        lab = self.labels.loc[self.labels["search"].isin(rows)].copy()
        lab["search"] = remap.reindex(lab["search"]).to_numpy()
        return SearchSessions(self.searches.iloc[rows].reset_index(drop=True), lab.reset_index(drop=True))


def search_sessions(events: pd.DataFrame) -> SearchSessions:
    """Searches with a query and a session id, and the item events that follow each in its session."""
    ev = events.loc[events[S.SESSION_ID].notna(), [S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.SESSION_ID, S.QUERY]]
    is_search = (ev[S.EVENT_TYPE] == S.SEARCH).to_numpy() & ev[S.QUERY].notna().to_numpy()
    ev = ev.assign(_search=is_search, _order=np.arange(len(ev)))
    # searches first at equal timestamps, so a view logged in the same second belongs to the search
    ev = ev.sort_values([S.SESSION_ID, S.TS, "_search", "_order"], ascending=[True, True, False, True],
                        kind="stable")
    nth = ev.groupby(S.SESSION_ID, sort=False)["_search"].cumsum().to_numpy()  # searches so far in session
    searches = ev.loc[ev["_search"].to_numpy(), [S.USER_ID, S.QUERY, S.TS, S.SESSION_ID]]
    key = pd.MultiIndex.from_arrays([searches[S.SESSION_ID].to_numpy(), nth[ev["_search"].to_numpy()]])
    pos = pd.Series(np.arange(len(searches)), index=key)
    item_rows = (nth > 0) & ev[S.EVENT_TYPE].isin(LABEL_OF_EVENT).to_numpy() & ev[S.ITEM_ID].notna().to_numpy()
    it = ev.loc[item_rows]
    search_of = pos.reindex(pd.MultiIndex.from_arrays([it[S.SESSION_ID].to_numpy(), nth[item_rows]])).to_numpy()
    labels = (pd.DataFrame({"search": search_of.astype(np.int64), S.ITEM_ID: it[S.ITEM_ID].to_numpy(),
                            "grade": it[S.EVENT_TYPE].map(LABEL_OF_EVENT).to_numpy(dtype=np.int64)})
              .groupby(["search", S.ITEM_ID], sort=True, as_index=False)["grade"].max())
    searches = searches.reset_index(drop=True).assign(**{S.QUERY: lambda d: d[S.QUERY].astype(str)})
    return SearchSessions(searches, labels)


# ---- the query's category affinity ------------------------------------------------------------
@dataclass
class CategoryAffinity:
    """P(category | query term) from clicked items of past searches, smoothed toward the global mix."""

    terms: dict[str, int]
    categories: list[str]
    counts: np.ndarray  # [n_terms, n_categories]
    prior: float

    @classmethod
    def fit(cls, sessions: SearchSessions, lexical: LexicalIndex, item_ids: np.ndarray, item_categories: np.ndarray,
            prior: float) -> "CategoryAffinity":
        categories = sorted({str(c) for c in item_categories})
        col = {c: j for j, c in enumerate(categories)}
        item_col = np.array([col[str(c)] for c in item_categories], dtype=np.int64)
        lab = sessions.labels
        pos = pd.Index(item_ids).get_indexer(lab[S.ITEM_ID].to_numpy(dtype=object))
        clicks = pd.DataFrame({"search": lab["search"].to_numpy()[pos >= 0], "cat": item_col[pos[pos >= 0]]})
        queries = sessions.searches[S.QUERY]
        terms_of = {q: sorted({lexical.terms[t] for t in lexical.term_ids(q)}) for q in queries.unique()}
        search_terms = pd.DataFrame({"search": np.arange(len(queries)), "term": queries.map(terms_of).to_numpy()}
                                    ).explode("term").dropna()
        pairs = search_terms.merge(clicks, on="search").groupby(["term", "cat"]).size()
        terms = {t: j for j, t in enumerate(pairs.index.get_level_values(0).unique())}
        counts = np.zeros((len(terms), len(categories)), dtype=np.float32)
        counts[[terms[t] for t in pairs.index.get_level_values(0)], pairs.index.get_level_values(1)] = pairs.to_numpy()
        return cls(terms, categories, counts, prior)

    def scores(self, query_terms: list[str], item_category_names: np.ndarray) -> np.ndarray:
        """Mean over the query's known terms of P(item's category | term); NaN if no term was searched before."""
        rows = [self.terms[t] for t in query_terms if t in self.terms]
        if not rows or not self.categories:
            return np.full(len(item_category_names), np.nan, dtype=np.float32)
        col = {c: j for j, c in enumerate(self.categories)}
        cols = np.array([col.get(str(c), -1) for c in item_category_names])
        total = self.counts.sum(axis=0)
        mix = total / max(float(total.sum()), 1.0)
        c = self.counts[rows]
        p = (c + self.prior * mix) / (c.sum(axis=1, keepdims=True) + self.prior)  # [rows, n_categories]
        p = p.mean(axis=0)
        return np.where(cols >= 0, p[np.maximum(cols, 0)], 0.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"terms": self.terms, "categories": self.categories, "counts": self.counts.tolist(),
                "prior": self.prior}

    @classmethod
    def from_dict(cls, d: dict) -> "CategoryAffinity":
        counts = np.asarray(d["counts"], dtype=np.float32).reshape(len(d["terms"]), len(d["categories"]))
        return cls(dict(d["terms"]), list(d["categories"]), counts, float(d["prior"]))


# ---- retrieval + features --------------------------------------------------------------------
@dataclass
class Retrieved:
    items: np.ndarray  # int64 item indices (the union of lexical and semantic candidates)
    bm25: np.ndarray  # BM25 score per candidate (0 = semantic only)
    lexical_rank: np.ndarray  # 1-based, NaN when not a lexical candidate
    emb_sim: np.ndarray  # cosine to the query embedding, NaN without embeddings
    semantic_rank: np.ndarray  # 1-based, NaN when not a semantic candidate
    terms: list[str]  # the analysed query terms (stems, typo-corrected)
    term_ids: np.ndarray

    def rrf(self) -> np.ndarray:
        """Reciprocal rank fusion of the lexical and semantic lists (hybrid retrieval, no learning)."""
        return (np.nan_to_num(1.0 / (RRF_K + self.lexical_rank)) + np.nan_to_num(1.0 / (RRF_K + self.semantic_rank)))


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    pos = np.flatnonzero(scores > 0)
    if len(pos) > n:
        pos = pos[np.argpartition(-scores[pos], n - 1)[:n]]
    return pos[np.argsort(-scores[pos], kind="stable")].astype(np.int64)


class SearchModel:
    """Retrieval index + learned ranker over one `InteractionData` state's item indices."""

    def __init__(self, lexical: LexicalIndex, item_category_names: np.ndarray, affinity: CategoryAffinity,
                 params: SearchRankerParams, booster: lgb.Booster | None = None, best_iteration: int | None = None,
                 embeddings: np.ndarray | None = None, encoder=None):
        self.lexical = lexical
        self.item_category_names = np.asarray(item_category_names, dtype=object)
        self.affinity = affinity
        self.params = params
        self.booster = booster
        self.best_iteration = best_iteration
        self.embeddings = embeddings  # [n_items, d] unit rows, or None
        self.encoder = encoder  # recsys.models.semantic.Encoder, or None (lexical only)
        self.semantic_note = f"no item embeddings: {why_not() or 'trained without the [semantic] extra'}"

    def __getstate__(self) -> dict:  # pickled (Prefect's result cache) without the torch model: reloaded
        return {**self.__dict__, "encoder": None, "_reload_encoder": self.encoder is not None}

    def __setstate__(self, state: dict) -> None:
        reload = state.pop("_reload_encoder", False)
        self.__dict__.update(state)
        if reload:
            self.encoder = load_encoder()

    @property
    def semantic(self) -> bool:
        return self.embeddings is not None and self.encoder is not None

    def describe(self) -> dict:
        hybrid = "hybrid (bm25 + embeddings, reciprocal rank fusion)"
        out = {"retrieval": hybrid if self.semantic else "lexical (bm25)",
               "ranker": "lambdarank" if self.booster is not None else "none",
               "semantic": "on" if self.semantic else f"off: {self.semantic_note}"}
        if self.semantic:  # how the query is embedded (models/semantic.py: onnx or torch)
            out["semantic_backend"] = getattr(self.encoder, "backend", "torch")
        return out

    def retrieve(self, query: str, semantic: bool = True) -> Retrieved:
        p = self.params
        term_ids, corrected = self.lexical.parse(query)
        bm25_all = self.lexical.scores(term_ids)
        lex = _top(bm25_all, p.candidates)
        emb_all = None
        sem = np.zeros(0, np.int64)
        if semantic and self.semantic:
            emb_all = self.embeddings @ self.encoder.encode_query(corrected)
            sem = _top(np.maximum(emb_all, 1e-9), p.semantic_candidates)
        items = np.concatenate([lex, np.setdiff1d(sem, lex)]).astype(np.int64)
        lex_rank = np.full(len(items), np.nan, np.float32)
        lex_rank[:len(lex)] = np.arange(1, len(lex) + 1)
        sem_rank = np.full(len(items), np.nan, np.float32)
        if len(sem):
            sem_rank[_positions(items, sem)] = np.arange(1, len(sem) + 1)
        return Retrieved(items, bm25_all[items], lex_rank,
                         emb_all[items].astype(np.float32) if emb_all is not None else np.full(len(items), np.nan,
                                                                                               np.float32),
                         sem_rank, [self.lexical.terms[t] for t in term_ids], term_ids)

    def query_features(self, r: Retrieved) -> np.ndarray:
        n = len(r.items)
        q = np.empty((n, len(QUERY_FEATURES)), dtype=np.float32)
        top = float(r.bm25.max()) if n else 0.0
        q[:, 0] = r.bm25
        q[:, 1] = r.bm25 / top if top > 0 else 0.0
        q[:, 2] = r.lexical_rank
        q[:, 3] = len(r.term_ids)
        q[:, 4:7] = self.lexical.field_matches(r.term_ids, r.items)
        q[:, 7] = r.emb_sim
        q[:, 8] = r.semantic_rank
        q[:, 9] = self.affinity.scores(r.terms, self.item_category_names[r.items])
        return q

    def features(self, data: InteractionData, user: int, r: Retrieved) -> np.ndarray:
        """[len(r.items), len(SEARCH_FEATURES)]: query-item features, then the user-item pair features."""
        pairs = pair_features(data, np.full(len(r.items), user, dtype=np.int64), r.items)
        return np.hstack([self.query_features(r), pairs])

    def rank(self, data: InteractionData, user: int, query: str, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) of the query's candidates, best first: the learned order (BM25 order without a ranker)."""
        r = self.retrieve(query)
        if len(r.items) == 0:
            return r.items, np.zeros(0, np.float32)
        if self.booster is None:
            scores = r.rrf()
        else:
            scores = self.booster.predict(self.features(data, user, r).astype(np.float64),
                                          num_iteration=self.best_iteration, num_threads=num_threads)
        order = np.argsort(-scores, kind="stable")
        return r.items[order], np.asarray(scores, dtype=np.float32)[order]

    # ---- persistence ------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lexical.save(directory / "lexical")
        if self.booster is not None:
            self.booster.save_model(str(directory / "ranker.txt"), num_iteration=self.best_iteration)
        if self.embeddings is not None:
            np.save(directory / "item_embeddings.npy", self.embeddings.astype(np.float16))
        meta = {"params": asdict(self.params), "affinity": self.affinity.to_dict(),
                "item_categories": self.item_category_names.astype(str).tolist(),
                "feature_names": list(SEARCH_FEATURES)}
        (directory / "search.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> "SearchModel":
        directory = Path(directory)
        meta = json.loads((directory / "search.json").read_text())
        p = dict(meta["params"])
        ranker = dict(p.pop("ranker"))
        ranker["label_gain"] = tuple(ranker["label_gain"])
        params = SearchRankerParams(**p, ranker=RankerParams(**ranker))
        booster = lgb.Booster(model_file=str(directory / "ranker.txt")) if (directory / "ranker.txt").exists() else None
        emb_path = directory / "item_embeddings.npy"
        embeddings = np.load(emb_path).astype(np.float32) if emb_path.exists() else None
        encoder = load_encoder() if embeddings is not None else None
        model = cls(LexicalIndex.load(directory / "lexical"), np.asarray(meta["item_categories"], dtype=object),
                    CategoryAffinity.from_dict(meta["affinity"]), params, booster, None, embeddings, encoder)
        if embeddings is not None and encoder is None:
            model.semantic_note = f"item embeddings stored, but {why_not()}"
        return model


def _positions(items: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Positions in `items` (unique) of each element of `sub` (all present)."""
    order = np.argsort(items, kind="stable")
    return order[np.searchsorted(items[order], sub)]


def item_text(data: InteractionData, catalog: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(titles, category names, brands) per item index of `data` (brand from the catalog, '' if absent)."""
    titles = data.item_titles if len(data.item_titles) == data.n_items else np.full(data.n_items, "", object)
    cats = np.asarray(data.categories, dtype=object)[data.item_category]
    brands = np.full(data.n_items, "", dtype=object)
    if S.BRAND in catalog.columns:
        b = catalog.set_index(S.ITEM_ID)[S.BRAND]
        b = b[~b.index.duplicated()].reindex(data.items.ids)
        brands = b.fillna("").astype(str).to_numpy(dtype=object)
    return titles.astype(str), cats.astype(str), brands


def build_search_model(data: InteractionData, catalog: pd.DataFrame, past: SearchSessions,
                       params: SearchRankerParams, encoder=None) -> SearchModel:
    """Index + category affinity (from `past` searches) over `data`'s items; no ranker yet."""
    titles, cats, brands = item_text(data, catalog)
    lexical = LexicalIndex.fit(titles, cats, brands)
    affinity = CategoryAffinity.fit(past, lexical, data.items.ids, cats, params.affinity_prior)
    embeddings = None
    if encoder is not None:
        embeddings = encoder.encode([f"{t} {c} {b}".strip() for t, c, b in zip(titles, cats, brands)])
    return SearchModel(lexical, cats, affinity, params, embeddings=embeddings, encoder=encoder)


# ---- training + evaluation -------------------------------------------------------------------
@dataclass
class SearchGroups:
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray


def grades_of(sessions: SearchSessions, data: InteractionData) -> list[dict[int, int]]:
    """Per search: {item index: grade} of the items known to `data`."""
    lab = sessions.labels
    idx = data.items.index_of(lab[S.ITEM_ID].to_numpy(dtype=object))
    out: list[dict[int, int]] = [{} for _ in range(len(sessions))]
    for s, i, g in zip(lab["search"].to_numpy(), idx, lab["grade"].to_numpy()):
        if i >= 0:
            out[s][int(i)] = int(g)
    return out


def ranking_groups(model: SearchModel, data: InteractionData, sessions: SearchSessions) -> SearchGroups:
    """Candidates of each search labelled by its session; searches without a labelled candidate dropped."""
    users = data.users.index_of(sessions.searches[S.USER_ID].to_numpy(dtype=object))
    grades = grades_of(sessions, data)
    qs, ys, us, its = [], [], [], []
    for s, query in enumerate(sessions.searches[S.QUERY].tolist()):
        r = model.retrieve(query)
        y = np.array([grades[s].get(int(i), 0) for i in r.items], dtype=np.int64)
        if len(r.items) == 0 or not (y > 0).any():
            continue
        qs.append(model.query_features(r))
        ys.append(y)
        us.append(np.full(len(y), users[s], dtype=np.int64))
        its.append(r.items)
    if not qs:
        return SearchGroups(np.zeros((0, len(SEARCH_FEATURES)), np.float32), np.zeros(0, np.int64),
                            np.zeros(0, np.int64))
    # the pair features of every search at once (one vectorised call, as in the recommender's training)
    x = np.hstack([np.vstack(qs), pair_features(data, np.concatenate(us), np.concatenate(its))])
    return SearchGroups(x, np.concatenate(ys), np.array([len(y) for y in ys], dtype=np.int64))


def fit_search_ranker(model: SearchModel, data: InteractionData, sessions: SearchSessions) -> RankerResult | None:
    """LambdaRank on `sessions` (at most `max_train_searches` of them, a seeded sample; features from `data`,
    the state before them); a random share of the searches validates (early stopping). None when no search
    has a clicked candidate."""
    p = model.params.ranker
    sessions = sessions.sample(model.params.max_train_searches, p.seed)
    is_val = np.random.default_rng(p.seed).random(len(sessions)) < p.validation_share
    train = ranking_groups(model, data, sessions.take(~is_val))
    val = ranking_groups(model, data, sessions.take(is_val))
    if len(train.groups) == 0:
        return None  # no search with a clicked candidate (e.g. a store without logged searches)
    return train_ranker(train.x, train.y, train.groups, val.x, val.y, val.groups, list(SEARCH_FEATURES), p)


def ranked_metrics(ranked: list[np.ndarray], grades: list[dict[int, int]], k: int,
                   label_gain: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Per search: NDCG@k (graded gains, ideal from every labelled item of the session) and MRR (reciprocal
    rank of the first labelled item in the whole ranked list, 0 if absent)."""
    ndcg = np.zeros(len(ranked))
    mrr = np.zeros(len(ranked))
    disc = discounts(k)
    for s, (items, g) in enumerate(zip(ranked, grades)):
        if not g:
            continue
        gains = np.array([label_gain[g.get(int(i), 0)] for i in items], dtype=float)
        ideal = np.sort(np.array([label_gain[v] for v in g.values()]))[::-1][:k]
        ndcg[s] = float(gains[:k] @ disc[:min(k, len(gains))]) / float(ideal @ disc[:len(ideal)])
        hit = np.flatnonzero(gains > 0)
        mrr[s] = 1.0 / (hit[0] + 1) if len(hit) else 0.0
    return {f"ndcg_at_{k}": ndcg, "mrr": mrr}


def evaluate_search(rank_fn, data: InteractionData, sessions: SearchSessions, k: int = 10,
                    label_gain: tuple[float, ...] = RankerParams().label_gain) -> dict[str, np.ndarray]:
    """Per-search metrics of `rank_fn(user index, query) -> ranked item indices` over searches with at
    least one labelled item known to `data`."""
    users = data.users.index_of(sessions.searches[S.USER_ID].to_numpy(dtype=object))
    grades = grades_of(sessions, data)
    keep = [s for s in range(len(sessions)) if grades[s]]
    queries = sessions.searches[S.QUERY].tolist()
    ranked = [np.asarray(rank_fn(int(users[s]), queries[s]), dtype=np.int64) for s in keep]
    return ranked_metrics(ranked, [grades[s] for s in keep], k, label_gain)


def train_search_model(events: pd.DataFrame, catalog: pd.DataFrame, data_train: InteractionData,
                       data_final: InteractionData, train_end, label_end, params: SearchRankerParams,
                       encoder=None) -> tuple[SearchModel, RankerResult | None]:
    """Learn from the searches of [train_end, label_end) with features from the state at `train_end`
    (category affinity from the searches before it); the returned model serves the state at `label_end`
    (affinity from every search before `label_end`) with the learned ranker. Without a search to learn
    from, the model keeps the unlearned order (BM25, fused with semantic candidates when available)."""
    sessions = search_sessions(events)
    final = build_search_model(data_final, catalog, sessions.between(None, label_end), params, encoder)
    same_items = np.array_equal(data_train.items.ids, data_final.items.ids)
    learner = build_search_model(data_train, catalog, sessions.between(None, train_end), params,
                                 encoder if not same_items else None)
    if same_items:
        learner.embeddings, learner.encoder = final.embeddings, final.encoder
    result = fit_search_ranker(learner, data_train, sessions.between(train_end, label_end))
    if result is not None:
        final.booster, final.best_iteration = result.booster, result.best_iteration
    return final, result
