"""Id maps, interaction matrices and the feature state built from events before a cutoff.

`InteractionData` is everything the recall sources and the ranker features need, as
numpy arrays and CSR matrices, so the same object serves training and per-request
scoring without pandas.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.features import schema as S
from recsys.features.covisitation import (CovisitationParams, covisitation_from_pairs, covisitation_pairs, strided_rows,
                                          unstride_rows)

DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class InteractionParams:
    """How events become implicit-feedback confidence."""

    view_weight: float = 1.0
    add_to_cart_weight: float = 4.0
    purchase_weight: float = 8.0
    half_life_days: float = 30.0
    covisitation: CovisitationParams = field(default_factory=CovisitationParams)

    def weight_of(self, event_type: str) -> float:
        return {S.VIEW: self.view_weight, S.ADD_TO_CART: self.add_to_cart_weight,
                S.PURCHASE: self.purchase_weight}.get(event_type, 0.0)


def _is_categorical(values) -> bool:
    return isinstance(getattr(values, "dtype", None), pd.CategoricalDtype)


def first_seen_ids(values) -> np.ndarray:
    """Distinct ids of `values` in order of first appearance (nulls left out of a categorical); a
    categorical (compact ids) is read by its integer codes, never as one string per row."""
    if _is_categorical(values):
        codes = np.asarray(values.cat.codes if isinstance(values, pd.Series) else values.codes)
        cats = values.cat.categories if isinstance(values, pd.Series) else values.categories
        return np.asarray(cats, dtype=object)[pd.unique(codes[codes >= 0])]
    return pd.unique(np.asarray(values, dtype=object))


class IdIndex:
    """Bidirectional map between external string ids and dense integer indices."""

    def __init__(self, ids):
        self.ids = np.asarray(pd.Index(first_seen_ids(ids)).astype(str), dtype=object)
        self._index = pd.Index(self.ids)
        self._positions: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, value: str) -> int:
        """Index of one id (-1 if unknown) without pandas, for the per-request path."""
        if self._positions is None:
            self._positions = {v: i for i, v in enumerate(self.ids)}
        return self._positions.get(value, -1)

    def index_of(self, values) -> np.ndarray:
        """Indices of `values`; -1 for ids not in the map (and for nulls). A categorical is mapped
        category by category, then read through its codes."""
        if _is_categorical(values):
            values = pd.Series(values)
            per_category = self._index.get_indexer(values.cat.categories.to_numpy(dtype=object))
            return np.append(per_category, -1)[values.cat.codes.to_numpy()]
        return self._index.get_indexer(np.asarray(values, dtype=object))


@dataclass
class InteractionData:
    """Feature state of one cutoff: all arrays are indexed by the maps in `users`/`items`."""

    users: IdIndex
    items: IdIndex
    ref_time: pd.Timestamp
    weighted: sp.csr_matrix  # users x items, confidence (event weight x recency decay)
    views: sp.csr_matrix
    carts: sp.csr_matrix
    purchases: sp.csr_matrix
    last_seen: sp.csr_matrix  # 1 + days between the last touch and ref_time
    item_category: np.ndarray  # int code per item
    categories: np.ndarray  # code -> category name
    item_price: np.ndarray
    item_age_days: np.ndarray
    item_pop_7d: np.ndarray
    item_pop_28d: np.ndarray
    item_buys_28d: np.ndarray
    user_cat_share: sp.csr_matrix  # users x categories, share of the user's confidence
    user_mean_log_price: np.ndarray
    user_days_since_last: np.ndarray
    item_titles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    covis: sp.csr_matrix | None = None  # items x items co-visitation (features/covisitation.py)
    user_type_counts: np.ndarray | None = None  # users x 3: views, carts, purchases (all time)
    user_events_7d: np.ndarray | None = None
    user_cat_entropy: np.ndarray | None = None  # category spread of the user's confidence
    item_buyers: np.ndarray | None = None  # distinct buyers, all time
    item_repeat_rate: np.ndarray | None = None  # share of buyers who bought it more than once
    item_pop_all: np.ndarray | None = None  # confidence-weighted events, all time (no decay)
    item_price_pct: np.ndarray | None = None  # price percentile inside the item's category, [0, 1]
    user_price_pct: np.ndarray | None = None  # the user's confidence-weighted mean of item_price_pct
    item_cat_pop_share: np.ndarray | None = None  # the item's share of its category's 28-day weight
    user_cat_events: sp.csr_matrix | None = None  # users x categories, item events (no decay, no type weight)
    category_share: np.ndarray | None = None  # share of all item events per category
    item_buys_7d: np.ndarray | None = None  # purchase events in the last 7 days

    def __post_init__(self) -> None:
        # sorted column indices let a one-user lookup binary-search its row (csr_lookup)
        for name in self._SPARSE:
            m = getattr(self, name)
            if m is not None and not m.has_sorted_indices:
                setattr(self, name, m.sorted_indices())

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    # ---- persistence (npz + npy; no pickle) ----------------------------------------
    _SPARSE = ("weighted", "views", "carts", "purchases", "last_seen", "user_cat_share", "covis", "user_cat_events")
    _DENSE = ("item_category", "item_price", "item_age_days", "item_pop_7d", "item_pop_28d",
              "item_buys_28d", "user_mean_log_price", "user_days_since_last", "user_type_counts",
              "user_events_7d", "user_cat_entropy", "item_buyers", "item_repeat_rate", "item_pop_all",
              "item_price_pct", "user_price_pct", "item_cat_pop_share",
              "category_share", "item_buys_7d")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in self._SPARSE:
            if getattr(self, name) is not None:
                sp.save_npz(directory / f"{name}.npz", getattr(self, name))
        np.savez(directory / "arrays.npz", **{n: getattr(self, n) for n in self._DENSE
                                              if getattr(self, n) is not None},
                 user_ids=self.users.ids.astype(str), item_ids=self.items.ids.astype(str),
                 categories=self.categories.astype(str), item_titles=self.item_titles.astype(str),
                 ref_time=np.array([self.ref_time.value], dtype=np.int64))

    @classmethod
    def load(cls, directory: Path) -> "InteractionData":
        arrays = np.load(directory / "arrays.npz", allow_pickle=False)
        kwargs = {n: sp.load_npz(directory / f"{n}.npz").tocsr() for n in cls._SPARSE
                  if (directory / f"{n}.npz").exists()}
        kwargs.update({n: arrays[n] for n in cls._DENSE if n in arrays.files})
        return cls(users=IdIndex(arrays["user_ids"]), items=IdIndex(arrays["item_ids"]),
                   ref_time=pd.Timestamp(int(arrays["ref_time"][0]), tz="UTC"),
                   categories=arrays["categories"].astype(object),
                   item_titles=arrays["item_titles"].astype(object), **kwargs)


def event_type_array(values: pd.Series) -> np.ndarray:
    """Event types as an object array for comparisons (a categorical via its few categories)."""
    if _is_categorical(values):
        return np.append(values.cat.categories.to_numpy(dtype=object), None)[values.cat.codes.to_numpy()]
    return values.to_numpy(dtype=object)


def item_events_before(events: pd.DataFrame, ref_time: pd.Timestamp) -> pd.DataFrame:
    """The events a state at `ref_time` is built from: item events (with an item) strictly before it."""
    return events.loc[(events[S.TS] < ref_time) & events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES)
                      & events[S.ITEM_ID].notna(), [S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS]]


def state_ids(events: pd.DataFrame, ref_time: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of the state's events in order of first appearance. Of consecutive blocks of
    the events, the first-seen order of the concatenated per-block ids is that of the whole."""
    ev = item_events_before(events, pd.Timestamp(ref_time))
    return first_seen_ids(ev[S.USER_ID]), first_seen_ids(ev[S.ITEM_ID])


def state_maps(catalog: pd.DataFrame, user_ids: list[np.ndarray], item_ids: list[np.ndarray]) -> tuple[IdIndex, IdIndex]:
    """(users, items) maps from the per-block first-seen ids in block order; items start with the catalog."""
    items = IdIndex(np.concatenate([catalog[S.ITEM_ID].to_numpy(dtype=object), *item_ids]))
    users = IdIndex(np.concatenate([np.zeros(0, dtype=object), *user_ids]))
    return users, items


def _coo(rows, cols, values, shape) -> sp.csr_matrix:
    # float64 sums (cast to float32 once, in the finished state) so that summing blocks in any grouping
    # gives the one-block answer; duplicates summed without dropping explicit zeros
    m = sp.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=shape)
    m.sum_duplicates()
    return m


def _add_keep_zeros(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """a + b keeping explicit zeros (scipy's + drops them; a one-block build keeps them)."""
    a, b = a.tocoo(), b.tocoo()
    return _coo(np.r_[a.row, b.row], np.r_[a.col, b.col], np.r_[a.data, b.data], a.shape)


@dataclass
class InteractionSums:
    """The additive part of a state, from one block of events (maps fixed beforehand): counts and weights
    summed, last touches maxed. Blocks combine with `+`; `finish_interaction_data` turns the total into
    the state. Users x items and item arrays only: no event rows."""

    weighted: sp.csr_matrix
    views: sp.csr_matrix
    carts: sp.csr_matrix
    purchases: sp.csr_matrix
    events_any: sp.csr_matrix
    recency: sp.csr_matrix  # max over events of 1e6 - age_days
    item_first_age: np.ndarray  # max age_days per item (-inf: no event)
    user_last_age: np.ndarray  # min age_days per user (inf: no event)
    item_pop_7d: np.ndarray
    item_pop_28d: np.ndarray
    item_pop_all: np.ndarray
    item_buys_28d: np.ndarray
    item_buys_7d: np.ndarray
    user_type_counts: np.ndarray  # users x 3
    user_events_7d: np.ndarray
    covis_pairs: sp.csr_matrix | None = None  # covisitation_pairs of the block (blocks split by user)

    def __add__(self, other: "InteractionSums") -> "InteractionSums":
        return combine_sums([self, other])


def combine_sums(parts: list[InteractionSums]) -> InteractionSums:
    """The sums of several blocks in one pass (each matrix's entries concatenated once, then summed)."""
    if len(parts) == 1:
        return parts[0]

    def coo(name):
        ms = [getattr(p, name).tocoo() for p in parts]
        return (np.concatenate([m.row for m in ms]), np.concatenate([m.col for m in ms]),
                np.concatenate([m.data for m in ms]), ms[0].shape)

    out = {name: _coo(*coo(name)) for name in ("weighted", "views", "carts", "purchases", "events_any")}
    out["recency"] = _max_duplicates(*coo("recency"))
    out["item_first_age"] = np.maximum.reduce([p.item_first_age for p in parts])
    out["user_last_age"] = np.minimum.reduce([p.user_last_age for p in parts])
    for name in ("item_pop_7d", "item_pop_28d", "item_pop_all", "item_buys_28d", "item_buys_7d",
                 "user_type_counts", "user_events_7d"):
        out[name] = sum(getattr(p, name) for p in parts[1:]) + getattr(parts[0], name)
    covis = [p.covis_pairs for p in parts if p.covis_pairs is not None]
    return InteractionSums(covis_pairs=sum(covis[1:], covis[0]) if covis else None, **out)


_USER_ROWS = ("weighted", "views", "carts", "purchases", "events_any", "recency", "user_last_age",
              "user_type_counts", "user_events_7d")
_ITEM_ARRAYS = ("item_first_age", "item_pop_7d", "item_pop_28d", "item_pop_all", "item_buys_28d", "item_buys_7d")


def sums_parts(sums: InteractionSums, parts: int) -> list[InteractionSums]:
    """A block's sums split by user (`strided_rows`: part p holds users p, p + parts, ...), so each part is
    summed over the blocks on its own and no worker holds the whole users x items total. The item arrays
    travel in part 0 only (empty in the others)."""
    empty = {name: getattr(sums, name)[:0] for name in _ITEM_ARRAYS}
    return [replace(sums, covis_pairs=None, **{name: strided_rows(getattr(sums, name), p, parts) for name in _USER_ROWS},
                    **({} if p == 0 else empty)) for p in range(parts)]


def sums_from_parts(parts: list[InteractionSums]) -> InteractionSums:
    """The summed parts of `sums_parts` as one total (users back in order)."""
    return replace(parts[0], covis_pairs=None,
                   **{name: unstride_rows([getattr(p, name) for p in parts]) for name in _USER_ROWS})


def _state_arrays(ev: pd.DataFrame, users: IdIndex, items: IdIndex, ref_time: pd.Timestamp,
                  params: InteractionParams):
    u = users.index_of(ev[S.USER_ID])
    i = items.index_of(ev[S.ITEM_ID])
    if len(u) and (u.min() < 0 or i.min() < 0):
        raise ValueError("an event's user or item is not in the state's maps (maps built from other events)")
    etype = event_type_array(ev[S.EVENT_TYPE])
    age_days = ((ref_time - ev[S.TS]).dt.total_seconds().to_numpy() / DAY_SECONDS)
    type_w = np.select([etype == S.VIEW, etype == S.ADD_TO_CART, etype == S.PURCHASE],
                       [params.view_weight, params.add_to_cart_weight, params.purchase_weight], 0.0)
    return u, i, etype, age_days, type_w


def covisitation_inputs(events: pd.DataFrame, users: IdIndex, items: IdIndex, ref_time: pd.Timestamp,
                        params: InteractionParams = InteractionParams()) -> pd.DataFrame:
    """(user, item, seconds before ref_time, type weight) of a block's state events: what
    `covisitation_pairs` reads, as a small numeric frame that can be split by user."""
    ref_time = pd.Timestamp(ref_time)
    ev = item_events_before(events, ref_time)
    u, i, _, _, type_w = _state_arrays(ev, users, items, ref_time, params)
    return pd.DataFrame({"u": u, "i": i, "t": (ev[S.TS] - ref_time).dt.total_seconds().to_numpy(), "w": type_w})


def covisitation_pairs_of(inputs: pd.DataFrame, n_items: int, params: InteractionParams) -> sp.csr_matrix:
    return covisitation_pairs(inputs["u"].to_numpy(), inputs["i"].to_numpy(), inputs["t"].to_numpy(),
                              inputs["w"].to_numpy(), n_items, params.covisitation)


def interaction_sums(events: pd.DataFrame, users: IdIndex, items: IdIndex, ref_time: pd.Timestamp,
                     params: InteractionParams = InteractionParams(), covisitation: bool = True) -> InteractionSums:
    """The additive state of one block of events (all of a state's events when it is the only block).
    `covisitation`: also the block's co-visitation pairs (right only when no user spans two blocks)."""
    ref_time = pd.Timestamp(ref_time)
    ev = item_events_before(events, ref_time)
    u, i, etype, age_days, type_w = _state_arrays(ev, users, items, ref_time, params)
    shape = n_u, n_i = (len(users), len(items))
    covis = None
    if covisitation:
        ts_sec = (ev[S.TS] - ref_time).dt.total_seconds().to_numpy()
        covis = covisitation_pairs(u, i, ts_sec, type_w, n_i, params.covisitation)
    first_age = np.full(n_i, -np.inf)
    np.maximum.at(first_age, i, age_days)
    last_age = np.full(n_u, np.inf)
    np.minimum.at(last_age, u, age_days)

    def windowed(mask) -> np.ndarray:
        return np.bincount(i[mask], weights=type_w[mask], minlength=n_i)

    return InteractionSums(
        weighted=_coo(u, i, type_w * np.power(0.5, age_days / params.half_life_days), shape),
        views=_coo(u, i, etype == S.VIEW, shape), carts=_coo(u, i, etype == S.ADD_TO_CART, shape),
        purchases=_coo(u, i, etype == S.PURCHASE, shape), events_any=_coo(u, i, np.ones(len(u)), shape),
        recency=_max_duplicates(u, i, 1e6 - age_days, shape), item_first_age=first_age, user_last_age=last_age,
        item_pop_7d=windowed(age_days < 7), item_pop_28d=windowed(age_days < 28),
        item_pop_all=np.bincount(i, weights=type_w, minlength=n_i),
        item_buys_28d=np.bincount(i[(age_days < 28) & (etype == S.PURCHASE)], minlength=n_i),
        item_buys_7d=np.bincount(i[(age_days < 7) & (etype == S.PURCHASE)], minlength=n_i),
        user_type_counts=np.stack([np.bincount(u[etype == t], minlength=n_u) for t in
                                   (S.VIEW, S.ADD_TO_CART, S.PURCHASE)], axis=1),
        user_events_7d=np.bincount(u[age_days < 7], minlength=n_u), covis_pairs=covis)


def build_interaction_data(events: pd.DataFrame, catalog: pd.DataFrame, ref_time: pd.Timestamp,
                           params: InteractionParams = InteractionParams()) -> InteractionData:
    """Build the feature state from events strictly before `ref_time`.

    The item map covers the whole catalog (so new items can be scored); the user map
    covers users with at least one item event before `ref_time`. The same three steps
    (maps, sums, finish) run per partition on a Dask cluster (recsys.tasks.cluster_events).
    """
    ref_time = pd.Timestamp(ref_time)
    user_ids, item_ids = state_ids(events, ref_time)
    # compact ids (categoricals) are mapped through their codes: no string per event is materialised
    users, items = state_maps(catalog, [user_ids], [item_ids])
    return finish_interaction_data(interaction_sums(events, users, items, ref_time, params), users, items,
                                   catalog, ref_time, params)


def finish_interaction_data(sums: InteractionSums, users: IdIndex, items: IdIndex, catalog: pd.DataFrame,
                            ref_time: pd.Timestamp, params: InteractionParams = InteractionParams(),
                            covis: sp.csr_matrix | None = None) -> InteractionData:
    """The state from the summed blocks of its events (`sums.covis_pairs` summed over user-disjoint blocks,
    or `covis`: `covisitation_from_pairs` of them, computed elsewhere)."""
    ref_time = pd.Timestamp(ref_time)
    f32 = np.float32
    if covis is None:
        covis = covisitation_from_pairs(sums.covis_pairs if sums.covis_pairs is not None
                                        else sp.csr_matrix((len(items), len(items))), params.covisitation)
    weighted, views, carts, purchases = (m.astype(f32) for m in (sums.weighted, sums.views, sums.carts, sums.purchases))
    recency = sums.recency.copy()
    recency.data = (1e6 - recency.data + 1.0).astype(np.float32)

    cat = catalog.set_index(S.ITEM_ID).reindex(items.ids)
    categories = IdIndex(cat[S.CATEGORY].fillna("unknown").astype(str).to_numpy(dtype=object))
    item_category = categories.index_of(cat[S.CATEGORY].fillna("unknown").astype(str).to_numpy(dtype=object))
    item_price = np.array(cat[S.PRICE], dtype=float) if S.PRICE in cat else np.full(len(items), np.nan)
    if S.CREATED_AT in cat:
        created = pd.to_datetime(cat[S.CREATED_AT], utc=True)
        item_age = ((ref_time - created).dt.total_seconds() / DAY_SECONDS).to_numpy(dtype=float)
    else:
        item_age = np.full(len(items), np.nan)
    # items without a catalog date: the age of their first event
    item_age = np.array(item_age, dtype=float)
    fill = np.isnan(item_age) & np.isfinite(sums.item_first_age)
    item_age[fill] = sums.item_first_age[fill]

    item_pop_7d, item_pop_28d = sums.item_pop_7d.astype(f32), sums.item_pop_28d.astype(f32)
    item_buys_28d, item_buys_7d = sums.item_buys_28d.astype(f32), sums.item_buys_7d.astype(f32)

    onehot = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (np.arange(len(items)), item_category)),
                           shape=(len(items), len(categories)))
    user_cat = (weighted @ onehot).tocsr()
    totals = np.asarray(user_cat.sum(axis=1)).ravel()
    user_cat_share = sp.diags(1.0 / np.maximum(totals, 1e-9)).dot(user_cat).tocsr().astype(np.float32)

    log_price = np.log1p(np.nan_to_num(item_price, nan=0.0))
    w_sum = np.asarray(weighted.sum(axis=1)).ravel()
    user_mean_log_price = (weighted @ log_price) / np.maximum(w_sum, 1e-9)
    user_days_since_last = sums.user_last_age.copy()

    n_i = len(items)
    user_type_counts = sums.user_type_counts.astype(f32)
    user_events_7d = sums.user_events_7d.astype(f32)
    share = user_cat_share.copy()
    share.data = -share.data * np.log(np.maximum(share.data, 1e-12))
    user_cat_entropy = np.asarray(share.sum(axis=1)).ravel().astype(np.float32)
    bought = purchases.copy()
    bought.eliminate_zeros()
    item_buyers = np.bincount(bought.indices, minlength=n_i).astype(np.float32)
    item_repeaters = np.bincount(bought.indices[bought.data > 1], minlength=n_i).astype(np.float32)
    item_repeat_rate = (item_repeaters / np.maximum(item_buyers, 1.0)).astype(np.float32)
    item_pop_all = sums.item_pop_all.astype(f32)

    # price level relative to the category (a cheap phone case and a cheap sofa are both "cheap")
    price_pct = (pd.Series(np.nan_to_num(item_price, nan=0.0)).groupby(item_category).rank(pct=True)
                 .to_numpy(dtype=np.float32))
    user_price_pct = ((weighted @ price_pct) / np.maximum(w_sum, 1e-9)).astype(np.float32)
    cat_pop = np.bincount(item_category, weights=item_pop_28d + 1e-3, minlength=len(categories))
    item_cat_pop_share = ((item_pop_28d + 1e-3) / cat_pop[item_category]).astype(np.float32)

    user_cat_events = (sums.events_any.astype(f32) @ onehot).tocsr().astype(np.float32)
    category_share = np.asarray(user_cat_events.sum(axis=0)).ravel()
    category_share = (category_share / max(category_share.sum(), 1e-9)).astype(np.float32)

    return InteractionData(
        user_cat_events=user_cat_events, category_share=category_share, item_price_pct=price_pct, user_price_pct=user_price_pct, item_cat_pop_share=item_cat_pop_share,
        covis=covis, user_type_counts=user_type_counts, user_events_7d=user_events_7d,
        user_cat_entropy=user_cat_entropy, item_buyers=item_buyers, item_repeat_rate=item_repeat_rate,
        item_pop_all=item_pop_all,
        users=users, items=items, ref_time=ref_time, weighted=weighted, views=views, carts=carts,
        purchases=purchases, last_seen=recency, item_category=item_category.astype(np.int64),
        categories=categories.ids, item_price=np.nan_to_num(item_price, nan=0.0),
        item_age_days=np.nan_to_num(item_age, nan=0.0), item_pop_7d=item_pop_7d,
        item_pop_28d=item_pop_28d, item_buys_28d=item_buys_28d, item_buys_7d=item_buys_7d, user_cat_share=user_cat_share,
        user_mean_log_price=user_mean_log_price, user_days_since_last=user_days_since_last,
        item_titles=cat[S.TITLE].fillna("").astype(str).to_numpy(dtype=object) if S.TITLE in cat
        else np.full(len(items), "", dtype=object),
    )


def _max_duplicates(rows, cols, values, shape) -> sp.csr_matrix:
    """CSR where duplicate (row, col) entries keep their maximum instead of their sum."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    order = np.lexsort((cols, rows))
    key = rows[order] * max(shape[1], 1) + cols[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=np.int64)
    best = np.maximum.reduceat(values[order], start) if len(key) else np.zeros(0)
    return sp.csr_matrix((best, (rows[order][start], cols[order][start])), shape=shape)
