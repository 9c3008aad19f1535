import pandas as pd

from recsys.features import schema as S
from recsys.features.synthetic import SyntheticParams, SyntheticWorld


def _events(params):
    return pd.concat([d for _, d in SyntheticWorld(params).iter_days()], ignore_index=True)


def test_same_seed_same_data_and_other_seed_differs():
    p = SyntheticParams(n_users=200, n_items=150, n_days=5, seed=7)
    a, b = _events(p), _events(p)
    pd.testing.assert_frame_equal(a, b)
    c = _events(SyntheticParams(n_users=200, n_items=150, n_days=5, seed=8))
    assert not a[S.ITEM_ID].equals(c[S.ITEM_ID])


def test_contract_and_funnel():
    p = SyntheticParams(n_users=300, n_items=200, n_days=14, seed=1)
    world = SyntheticWorld(p)
    cat = world.catalog()
    ev = pd.concat([d for _, d in world.iter_days()], ignore_index=True)
    assert list(ev.columns) == list(S.EVENT_COLUMNS)
    assert set(ev[S.EVENT_TYPE]) == set(S.EVENT_TYPES)
    assert str(ev[S.TS].dt.tz) == "UTC"
    counts = ev[S.EVENT_TYPE].value_counts()
    assert counts[S.VIEW] > counts[S.ADD_TO_CART] > counts[S.PURCHASE] > 0
    # every purchase follows an add-to-cart of the same item in the same session
    carts = set(zip(*[ev.loc[ev[S.EVENT_TYPE] == S.ADD_TO_CART, c] for c in (S.SESSION_ID, S.ITEM_ID)]))
    buys = set(zip(*[ev.loc[ev[S.EVENT_TYPE] == S.PURCHASE, c] for c in (S.SESSION_ID, S.ITEM_ID)]))
    assert buys <= carts
    # search queries are made of title words
    vocab = {w for t in cat[S.TITLE] for w in t.split()}
    queries = ev.loc[ev[S.EVENT_TYPE] == S.SEARCH, S.QUERY]
    assert len(queries) and all(set(q.split()) <= vocab for q in queries)
    assert set(ev[S.ITEM_ID].dropna()) <= set(cat[S.ITEM_ID])


def test_popularity_is_skewed_and_weekends_busier():
    p = SyntheticParams(n_users=1000, n_items=500, n_days=28, seed=3)
    ev = _events(p)
    views = ev.loc[ev[S.EVENT_TYPE] == S.VIEW, S.ITEM_ID].value_counts()
    top_share = views.iloc[: len(views) // 10].sum() / views.sum()
    assert top_share > 0.3  # top 10% of items get far more than 10% of views
    per_day = ev.groupby(ev[S.TS].dt.dayofweek).size()
    assert per_day.loc[[5, 6]].mean() > per_day.loc[[0, 1, 2]].mean()


def test_new_items_appear_over_time():
    p = SyntheticParams(n_users=300, n_items=300, n_days=30, seed=2)
    world = SyntheticWorld(p)
    cat = world.catalog()
    start = pd.Timestamp(p.start, tz="UTC")
    assert (cat[S.CREATED_AT] > start).mean() > 0.1
    ev = pd.concat([d for _, d in world.iter_days()], ignore_index=True)
    created = cat.set_index(S.ITEM_ID)[S.CREATED_AT]
    first_seen = ev.dropna(subset=[S.ITEM_ID]).groupby(S.ITEM_ID)[S.TS].min()
    assert (first_seen >= created.reindex(first_seen.index).dt.normalize()).all()


def test_generated_events_pass_validation_untouched():
    from recsys.features.validation import split_valid_rows

    # many sessions per day, so late-night sessions (which once spilled past midnight) are plenty
    ev = _events(SyntheticParams(n_users=3000, n_items=200, n_days=3, seed=5, sessions_per_user_day=3.0))
    valid, rejected = split_valid_rows(ev, now=pd.Timestamp("2030-01-01", tz="UTC"))
    assert len(rejected) == 0, rejected["reject_rule"].value_counts().to_dict()
    assert len(valid) == len(ev)
