"""Ranker features for (user, item) pairs, computed only from an `InteractionData` state.

One vectorised function serves training (millions of pairs) and a single request
(a few hundred pairs), so training and serving cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.csr_rows import (DENSE_BLOCK_CELLS, csr_lookup, csr_row, row_blocks, row_totals, single_row,
                                      weighted_rows_sum)
from recsys.features.interactions import IdIndex, InteractionData

PAIR_FEATURES = (
    "u_log_events", "u_days_since_last", "u_n_items",
    "i_pop_7d", "i_pop_28d", "i_buys_28d", "i_trend", "i_price", "i_age_days",
    "ui_views", "ui_carts", "ui_purchases", "ui_weight", "ui_days_since",
    "u_cat_share", "price_vs_user",
    "u_views", "u_carts", "u_buys", "u_events_7d", "u_cat_entropy", "u_log_price",
    "i_buyers", "i_repeat_rate", "i_pop_all", "ui_covis", "ui_buy_share",
    "i_price_pct", "ui_price_pct_gap", "i_cat_pop_share", "ui_cat_expect",
    "u_cat_events", "u_cat_smoothed",
)
# pseudo-events of the global category mix added to each user's own (taste estimate for light users)
CATEGORY_PRIOR_EVENTS = 5.0
# the graded relevance of a pair in a label window
LABEL_OF_EVENT = {S.VIEW: 1, S.ADD_TO_CART: 2, S.PURCHASE: 3}


def pair_features(data: InteractionData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Feature matrix [n_pairs, len(PAIR_FEATURES)]; `users` may hold -1 for unknown users."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n = len(users)
    known = users >= 0
    uk, ik = users[known], items[known]
    out = np.zeros((n, len(PAIR_FEATURES)), dtype=np.float32)
    all_known = bool(known.all())  # the usual case (and every request of a known user): no masking

    def put(col: str, values_known: np.ndarray, default: float = 0.0) -> None:
        j = PAIR_FEATURES.index(col)
        if all_known:
            out[:, j] = values_known
            return
        out[:, j] = default
        out[known, j] = values_known

    indptr = data.weighted.indptr
    put("u_log_events", np.log1p(row_totals(data.weighted, uk)))
    put("u_days_since_last", data.user_days_since_last[uk], default=999.0)
    put("u_n_items", indptr[uk + 1] - indptr[uk])
    pop7, pop28 = data.item_pop_7d[items], data.item_pop_28d[items]
    out[:, PAIR_FEATURES.index("i_pop_7d")] = np.log1p(pop7)
    out[:, PAIR_FEATURES.index("i_pop_28d")] = np.log1p(pop28)
    out[:, PAIR_FEATURES.index("i_buys_28d")] = data.item_buys_28d[items]
    out[:, PAIR_FEATURES.index("i_trend")] = (pop7 + 1.0) / (pop28 / 4.0 + 1.0)
    out[:, PAIR_FEATURES.index("i_price")] = data.item_price[items]
    out[:, PAIR_FEATURES.index("i_age_days")] = data.item_age_days[items]
    put("ui_views", csr_lookup(data.views, uk, ik))
    put("ui_carts", csr_lookup(data.carts, uk, ik))
    put("ui_purchases", csr_lookup(data.purchases, uk, ik))
    put("ui_weight", csr_lookup(data.weighted, uk, ik))
    last = csr_lookup(data.last_seen, uk, ik)
    put("ui_days_since", np.where(last > 0, last - 1.0, 999.0), default=999.0)
    put("u_cat_share", csr_lookup(data.user_cat_share, uk, data.item_category[ik]))
    log_price = np.log1p(data.item_price[ik])
    put("price_vs_user", log_price - data.user_mean_log_price[uk])
    if data.user_type_counts is not None:
        counts = np.log1p(data.user_type_counts[uk])
        put("u_views", counts[:, 0])
        put("u_carts", counts[:, 1])
        put("u_buys", counts[:, 2])
        put("u_events_7d", np.log1p(data.user_events_7d[uk]))
        put("u_cat_entropy", data.user_cat_entropy[uk])
        out[:, PAIR_FEATURES.index("i_buyers")] = np.log1p(data.item_buyers[items])
        out[:, PAIR_FEATURES.index("i_repeat_rate")] = data.item_repeat_rate[items]
        out[:, PAIR_FEATURES.index("i_pop_all")] = np.log1p(data.item_pop_all[items])
        buys = data.user_type_counts[uk, 2]
        put("ui_buy_share", csr_lookup(data.purchases, uk, ik) / np.maximum(buys, 1.0))
    put("u_log_price", data.user_mean_log_price[uk])
    if data.item_price_pct is not None:
        out[:, PAIR_FEATURES.index("i_price_pct")] = data.item_price_pct[items]
        put("ui_price_pct_gap", np.abs(data.item_price_pct[ik] - data.user_price_pct[uk]), default=0.5)
        out[:, PAIR_FEATURES.index("i_cat_pop_share")] = data.item_cat_pop_share[items]
        put("ui_cat_expect", out[known, PAIR_FEATURES.index("u_cat_share")] * data.item_cat_pop_share[ik])
    if data.user_cat_events is not None:
        cat_events = csr_lookup(data.user_cat_events, uk, data.item_category[ik])
        totals = row_totals(data.user_cat_events, uk)
        prior = CATEGORY_PRIOR_EVENTS * data.category_share[data.item_category[ik]]
        put("u_cat_events", np.log1p(cat_events))
        put("u_cat_smoothed", (cat_events + prior) / (totals + CATEGORY_PRIOR_EVENTS))
    if data.covis is not None:
        put("ui_covis", history_scores(data.weighted, data.covis, uk, ik))
    return out


def history_scores(user_items, item_item, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(user_items[u] @ item_item)[i] for each pair: how strongly the user's history points at i.

    One user (a request): the history's item rows summed straight from the CSR arrays; many users
    (training, evaluation): a sparse product per block of distinct users, read densely. The product
    fills most of a row once the data is large, and scipy's pair lookup into it cost more than the
    product itself (10M events: half of evaluation)."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.float32)
    user = single_row(users)
    if user is not None:
        history, weights = csr_row(user_items, user)
        return weighted_rows_sum(item_item, history, weights)[np.asarray(items)].astype(np.float32)
    items = np.asarray(items, dtype=np.int64)
    uniq, inverse = np.unique(users, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sorted_inverse = inverse[order]
    out = np.empty(len(users), dtype=np.float32)
    for lo, hi in row_blocks(len(uniq), item_item.shape[1], DENSE_BLOCK_CELLS):
        pairs = order[np.searchsorted(sorted_inverse, lo):np.searchsorted(sorted_inverse, hi)]
        block = (user_items[uniq[lo:hi]] @ item_item).toarray()
        out[pairs] = block[inverse[pairs] - lo, items[pairs]]
    return out


def pair_labels(label_events: pd.DataFrame, users: IdIndex, items: IdIndex,
                pair_users: np.ndarray, pair_items: np.ndarray) -> np.ndarray:
    """Graded label of each pair: the strongest event in the label window (0 = none)."""
    ev = label_events.loc[label_events[S.EVENT_TYPE].isin(LABEL_OF_EVENT) & label_events[S.ITEM_ID].notna()]
    u = users.index_of(ev[S.USER_ID])
    i = items.index_of(ev[S.ITEM_ID])
    grade = ev[S.EVENT_TYPE].map(LABEL_OF_EVENT).to_numpy(dtype=np.int64)
    ok = (u >= 0) & (i >= 0)
    key = u[ok] * len(items) + i[ok]
    best = pd.Series(grade[ok]).groupby(key).max()
    pair_key = np.asarray(pair_users, dtype=np.int64) * len(items) + np.asarray(pair_items, dtype=np.int64)
    return best.reindex(pair_key).fillna(0).to_numpy(dtype=np.int64)
