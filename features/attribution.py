"""Attribution: which shown items led to a click, an add-to-cart or a purchase, and per-user outcomes.

Input: impressions (one row per shown item, `recsys.tasks.impressions.read_impressions`) and events (the
event contract, with an optional `request_id`: the response that led to the event). Each item event is
credited to at most one shown item, within `window` after it was shown:

1. an event whose `request_id` names a response that showed its item goes to that slot;
2. any other event goes to the latest earlier impression of the same item to the same user (last touch),
   so an item shown twice is credited once, to the showing the shopper saw last before acting.

Per shown item: `clicked` (any attributed view, add-to-cart or purchase: acting on an item needs a click
first, also when the storefront only reports the purchase), `carted`, `bought`, `revenue`
(price x quantity of attributed purchases, quantity 1 when missing), and `match` (request_id / user_item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.features import schema as S

CLICKED, CARTED, BOUGHT, REVENUE, MATCH = "clicked", "carted", "bought", "revenue", "match"
SHOWN = "shown"
POSITION, VARIANT, MODEL_VERSION, ENDPOINT = "position", "variant", "model_version", "endpoint"
BY_REQUEST, BY_USER_ITEM = "request_id", "user_item"
# the outcome column behind each online metric; every metric is sum(outcome) / shown items at positions <= k
METRIC_OUTCOMES = {"ctr": CLICKED, "add_to_cart_conversion": CARTED, "purchase_conversion": BOUGHT,
                   "revenue_per_impression": REVENUE}
RECOMMENDATION_ENDPOINTS = ("recommendations", "session")


@dataclass(frozen=True)
class AttributionParams:
    window: pd.Timedelta = pd.Timedelta(hours=24)
    # an event may carry a client time a little before the response it names (clock skew): tolerated for
    # request_id matches only (a user+item match needs the order to say which showing came first)
    clock_skew: pd.Timedelta = pd.Timedelta(seconds=5)


def attribute(impressions: pd.DataFrame, events: pd.DataFrame,
              params: AttributionParams = AttributionParams()) -> pd.DataFrame:
    """The impressions with `clicked`, `carted`, `bought`, `revenue`, `match` per shown item."""
    imp = impressions.reset_index(drop=True)
    # one time unit on both sides (the event store keeps microseconds, impressions read back in nanoseconds)
    imp_ts = pd.to_datetime(imp[S.TS], utc=True).astype("datetime64[ns, UTC]")
    ev = events[events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES) & events[S.ITEM_ID].notna()].reset_index(drop=True)
    ev_ts = pd.to_datetime(ev[S.TS], utc=True).astype("datetime64[ns, UTC]")
    credit = []  # (event row, impression row, match)

    if S.REQUEST_ID in ev and len(imp):
        has = ev[S.REQUEST_ID].notna()
        left = pd.DataFrame({"ev": np.flatnonzero(has), S.REQUEST_ID: ev.loc[has, S.REQUEST_ID].astype(str).values,
                             S.ITEM_ID: ev.loc[has, S.ITEM_ID].astype(str).values, "ets": ev_ts[has].values})
        right = pd.DataFrame({"imp": np.arange(len(imp)), S.REQUEST_ID: imp[S.REQUEST_ID].astype(str).values,
                              S.ITEM_ID: imp[S.ITEM_ID].astype(str).values, "its": imp_ts.values,
                              POSITION: imp[POSITION].values})
        m = left.merge(right, on=[S.REQUEST_ID, S.ITEM_ID])
        delay = m["ets"] - m["its"]
        m = m[(delay >= -params.clock_skew) & (delay <= params.window)]
        m = m.sort_values(["ev", POSITION]).drop_duplicates("ev")  # an item twice in one list: its top slot
        credit.append(pd.DataFrame({"ev": m["ev"].values, "imp": m["imp"].values, MATCH: BY_REQUEST}))
    done = set(credit[0]["ev"]) if credit else set()

    rest = np.array([i for i in range(len(ev)) if i not in done], dtype=np.int64)
    known = imp[S.USER_ID].notna()
    if len(rest) and known.any():
        left = pd.DataFrame({"ev": rest, S.USER_ID: ev[S.USER_ID].astype(str).values[rest],
                             S.ITEM_ID: ev[S.ITEM_ID].astype(str).values[rest], "t": ev_ts.values[rest]})
        right = pd.DataFrame({"imp": np.flatnonzero(known), S.USER_ID: imp.loc[known, S.USER_ID].astype(str).values,
                              S.ITEM_ID: imp.loc[known, S.ITEM_ID].astype(str).values, "t": imp_ts[known].values})
        m = pd.merge_asof(left.sort_values("t"), right.sort_values("t"), on="t", by=[S.USER_ID, S.ITEM_ID],
                          direction="backward", tolerance=params.window, allow_exact_matches=True)
        m = m.dropna(subset=["imp"])
        credit.append(pd.DataFrame({"ev": m["ev"].values, "imp": m["imp"].astype(np.int64).values,
                                    MATCH: BY_USER_ITEM}))

    out = imp.copy()
    for col in (CLICKED, CARTED, BOUGHT):
        out[col] = False
    out[REVENUE] = 0.0
    out[MATCH] = pd.Series(pd.NA, index=out.index, dtype="string")
    if not credit:
        return out
    c = pd.concat(credit, ignore_index=True)
    if c.empty:
        return out
    etype = ev[S.EVENT_TYPE].values[c["ev"].values]
    price = pd.to_numeric(ev.get(S.PRICE, pd.Series(np.nan, index=ev.index)), errors="coerce").fillna(0.0).values
    qty = pd.to_numeric(ev.get(S.QUANTITY, pd.Series(np.nan, index=ev.index)), errors="coerce").fillna(1.0).values
    c[CARTED] = etype == S.ADD_TO_CART
    c[BOUGHT] = etype == S.PURCHASE
    c[REVENUE] = np.where(c[BOUGHT], price[c["ev"].values] * qty[c["ev"].values], 0.0)
    # request_id sorts before user_item: the stronger evidence names the match of a slot credited both ways
    agg = c.sort_values(MATCH).groupby("imp").agg(carted=(CARTED, "any"), bought=(BOUGHT, "any"),
                                                   revenue=(REVENUE, "sum"), match=(MATCH, "first"))
    idx = agg.index.values
    out.loc[idx, CLICKED] = True
    out.loc[idx, CARTED] = agg[CARTED].values
    out.loc[idx, BOUGHT] = agg[BOUGHT].values
    out.loc[idx, REVENUE] = agg[REVENUE].values
    out.loc[idx, MATCH] = agg[MATCH].values
    return out


def per_user_outcomes(attributed: pd.DataFrame, k: int = 10,
                      endpoints: tuple[str, ...] = RECOMMENDATION_ENDPOINTS,
                      by: tuple[str, ...] = (VARIANT, MODEL_VERSION)) -> pd.DataFrame:
    """One row per (`by`..., user): items shown at positions <= k on `endpoints` and how many of them were
    clicked, carted, bought, and their revenue. Anonymous impressions (no user id) are left out: the user
    is the unit the arms are split by."""
    a = attributed[(attributed[POSITION] <= k) & attributed[ENDPOINT].isin(endpoints) & attributed[S.USER_ID].notna()]
    keys = [*by, S.USER_ID]
    if a.empty:
        return pd.DataFrame(columns=[*keys, SHOWN, CLICKED, CARTED, BOUGHT, REVENUE])
    return (a.groupby(keys, observed=True, sort=True)
            .agg(shown=(S.ITEM_ID, "size"), clicked=(CLICKED, "sum"), carted=(CARTED, "sum"),
                 bought=(BOUGHT, "sum"), revenue=(REVENUE, "sum"))
            .reset_index())


LINK_KEY = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS)


def request_links(collected: pd.DataFrame) -> pd.DataFrame:
    """From events as the collector took them (text columns, `request_id`): the event's key in the event store
    (ids, type and time normalised as ingest does) and its `request_id`; rows without one are left out."""
    from recsys.features.validation import normalise_ids, parse_timestamps

    if S.REQUEST_ID not in collected or collected.empty:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in (*LINK_KEY, S.REQUEST_ID)}).astype(
            {S.TS: "datetime64[us, UTC]"})
    out = pd.DataFrame({S.USER_ID: normalise_ids(collected[S.USER_ID]), S.ITEM_ID: normalise_ids(collected[S.ITEM_ID]),
                        S.EVENT_TYPE: collected[S.EVENT_TYPE].astype("string").str.strip().str.lower(),
                        S.TS: parse_timestamps(collected[S.TS]),
                        S.REQUEST_ID: collected[S.REQUEST_ID].astype("string").str.strip()})
    out = out.dropna()
    return out[out[S.REQUEST_ID] != ""].drop_duplicates(list(LINK_KEY), keep="last").reset_index(drop=True)


def link_request_ids(events: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """`events` with a `request_id` column from the side table (null where the event had none)."""
    ev = events.drop(columns=[S.REQUEST_ID], errors="ignore")
    if links.empty:
        return ev.assign(**{S.REQUEST_ID: pd.Series(pd.NA, index=ev.index, dtype="string")})
    right = links.drop_duplicates(list(LINK_KEY), keep="last").astype(
        {S.USER_ID: "string", S.ITEM_ID: "string", S.EVENT_TYPE: "string"})
    left = ev.astype({S.USER_ID: "string", S.ITEM_ID: "string", S.EVENT_TYPE: "string"})
    right = right.assign(**{S.TS: pd.to_datetime(right[S.TS], utc=True).astype(left[S.TS].dtype)})
    return left.merge(right, on=list(LINK_KEY), how="left")
