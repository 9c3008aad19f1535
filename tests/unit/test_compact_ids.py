"""Compact ids: events read from the store as categoricals give the same validation, feature state and
trained model as the same events read as strings; the model still answers with the string ids."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.interactions import IdIndex, build_interaction_data
from recsys.features.synthetic import SyntheticParams
from recsys.features.validation import split_valid_rows
from recsys.tasks.data import read_catalog, read_events, write_synthetic_dataset

NOW = pd.Timestamp("2026-06-01", tz="UTC")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("store")
    write_synthetic_dataset(base, SyntheticParams(n_users=300, n_items=150, n_days=28, seed=3))
    return base


def test_store_reads_ids_as_categoricals_with_sorted_categories(store):
    compact, plain = read_events(store), read_events(store, compact=False)
    for col in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.SESSION_ID, S.QUERY):
        assert isinstance(compact[col].dtype, pd.CategoricalDtype), col
        cats = compact[col].cat.categories
        assert list(cats) == sorted(cats), col
        assert compact[col].astype(object).where(compact[col].notna(), None).tolist() == \
            plain[col].astype(object).where(plain[col].notna(), None).tolist(), col
    assert compact.memory_usage(deep=True).sum() < 0.7 * plain.memory_usage(deep=True).sum()


def test_validation_of_categoricals_rejects_and_normalises_like_strings():
    raw = pd.DataFrame({S.USER_ID: [" u1", "u1", "", "u\x07", "u2", "u3"],
                        S.ITEM_ID: ["a", "a ", "b", "c", "cafe\u0301", None],
                        S.EVENT_TYPE: ["VIEW", "view", "view", "view", "purchase", "view"],
                        S.TS: pd.to_datetime(["2026-01-01"] * 6, utc=True), S.SESSION_ID: ["s"] * 6,
                        S.QUERY: [None] * 6, S.QUANTITY: [1, 2, 1, 1, 1, 1], S.PRICE: [1.0] * 6})
    cat = raw.astype({c: "category" for c in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.SESSION_ID, S.QUERY)})
    v1, r1 = split_valid_rows(raw, NOW)
    v2, r2 = split_valid_rows(cat, NOW)
    assert isinstance(v2[S.USER_ID].dtype, pd.CategoricalDtype)
    assert r1["reject_rule"].tolist() == r2["reject_rule"].tolist() == ["empty_user_id", "id_control_character",
                                                                        "empty_item_id"]
    for col in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE):
        assert v1[col].astype(object).tolist() == v2[col].astype(object).tolist() == \
            {S.USER_ID: ["u1", "u1", "u2"], S.ITEM_ID: ["a", "a", "café"],
             S.EVENT_TYPE: ["view", "view", "purchase"]}[col]


def test_id_index_reads_categorical_codes_like_strings():
    values = pd.Series(["b", "a", None, "c", "a"], dtype="category")
    index = IdIndex(values)
    assert list(index.ids) == list(IdIndex(np.array(["b", "a", "c", "a"], dtype=object)).ids) == ["b", "a", "c"]
    assert index.index_of(values).tolist() == [0, 1, -1, 2, 1]
    assert index.index_of(pd.Series(["c", "zz"], dtype="category")).tolist() == [2, -1]


def test_feature_state_and_trained_model_equal_the_string_path(store):
    from recsys.features.split import SplitParams, temporal_split
    from recsys.models.recall import ALSParams
    from recsys.models.ranker import RankerParams
    from recsys.models.two_stage import TwoStageParams
    from recsys.models.two_stage_training import train_two_stage

    catalog = read_catalog(store)
    runs = []
    for compact in (True, False):
        events, _ = split_valid_rows(read_events(store, compact=compact), NOW)
        split = temporal_split(events[S.TS].max(), SplitParams(label_days=7, test_days=7))
        data = build_interaction_data(events, catalog, split.train_end)
        params = TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu", num_threads=1),
                                ranker=RankerParams(n_estimators=20, num_threads=1), tune_baselines=False)
        rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end, params)
        users = events[S.USER_ID].astype(object).drop_duplicates().head(40).tolist()
        runs.append((data, rec.recommend_ids(users, 10)))
    (d1, recs1), (d2, recs2) = runs
    assert list(d1.users.ids) == list(d2.users.ids) and list(d1.items.ids) == list(d2.items.ids)
    assert (d1.weighted != d2.weighted).nnz == 0 and (d1.covis != d2.covis).nnz == 0
    assert recs1 == recs2
    assert all(isinstance(i, str) for r in recs1 for i in r["items"]) and any(r["items"] for r in recs1)
