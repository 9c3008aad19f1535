"""Simulated shoppers: the synthetic world's own users (`recsys.features.synthetic.SyntheticWorld`: hidden
category tastes, price level, favourites, activity) reacting to the lists a service shows them.

A shopper looks at slot r of a list with probability r ** -position_decay (the position-bias curve of
cascade/examination click models), clicks a looked-at item with a chance that grows with the shopper's
taste for its category, its fit to their price level and whether it is a favourite, then carts and buys
with the generator's own chances (`cart_probability`, `BUY_AFTER_CART`). Nothing here does I/O: the
caller fetches the lists and sends the events (`recsys.tasks.simulation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.synthetic import (BUY_AFTER_CART, HOUR_SHARES, SEARCH_SHARE, SyntheticWorld, cart_probability,
                                       level_affinity, search_query)

CHAMPION, CHALLENGER = "champion", "challenger"
ARMS = (CHAMPION, CHALLENGER)


@dataclass(frozen=True)
class ShopperParams:
    position_decay: float = 1.0  # P(look at slot r) = r ** -position_decay, r = 1, 2, ...
    click_base: float = 0.02  # chance to click a looked-at item that matches nothing of the shopper's
    click_taste: float = 0.6  # added in proportion to taste share of the item's category x price-level fit
    click_favourite: float = 0.4  # added when the item is one of the shopper's favourites
    k: int = 10  # list length asked for

    def __post_init__(self) -> None:
        if self.position_decay < 0 or self.k < 1:
            raise ValueError("position_decay must be >= 0 and k >= 1")


@dataclass(frozen=True)
class Session:
    user: int  # world user index
    start_s: float  # seconds after midnight (UTC) of the simulated day
    query: str | None  # what a searching shopper types; None: they open their recommendations


@dataclass(frozen=True)
class Reaction:
    """What one shopper did with one list, per shown slot (1-based positions)."""

    positions: np.ndarray
    items: np.ndarray  # world item index, -1 for an id the world does not know
    clicked: np.ndarray
    carted: np.ndarray
    bought: np.ndarray
    quantity: np.ndarray


def plan_sessions(world: SyntheticWorld, day: int, n_sessions: int, rng: np.random.Generator) -> list[Session]:
    """The day's sessions: who (by the world's activity levels), when (its hour-of-day rhythm), and whether
    they search (its search share, with a query typed from an item of a category they like)."""
    users = rng.choice(world.p.n_users, n_sessions, p=world.user_activity)
    starts = np.sort(rng.choice(24, n_sessions, p=HOUR_SHARES) * 3600.0 + rng.uniform(0, 3000, n_sessions))
    searching = rng.random(n_sessions) < SEARCH_SHARE
    queries: list[str | None] = [None] * n_sessions
    idx = np.flatnonzero(searching)
    if len(idx):
        wanted = world.sample_items(users[idx], world.sample_categories(users[idx], rng), day, rng)
        picks = rng.integers(0, 3, len(idx))
        for i, item, pick in zip(idx, wanted, picks):
            queries[i] = search_query(world.item_title[item], int(pick))
    return [Session(int(u), float(s), q) for u, s, q in zip(users, starts, queries)]


def examination(positions: np.ndarray, decay: float) -> np.ndarray:
    """Chance that a shopper looks at each (1-based) slot."""
    return np.asarray(positions, dtype=float) ** -decay


def click_probability(world: SyntheticWorld, user: int, items: np.ndarray, params: ShopperParams) -> np.ndarray:
    """Chance to click each item once looked at (0 for items the world does not know)."""
    items = np.asarray(items, dtype=np.int64)
    known = items >= 0
    safe = np.where(known, items, 0)
    users = np.full(len(items), user)
    taste = world.user_taste[user, world.item_cat[safe]] * level_affinity(world.user_level[user], world.item_level[safe])
    p = params.click_base + params.click_taste * taste + params.click_favourite * world.is_favourite(users, safe)
    return np.where(known, np.minimum(p, 0.95), 0.0)


def react(world: SyntheticWorld, user: int, items: np.ndarray, params: ShopperParams,
          rng: np.random.Generator) -> Reaction:
    """Look, click, cart and buy on one shown list (in the order shown)."""
    items = np.asarray(items, dtype=np.int64)
    n = len(items)
    positions = np.arange(1, n + 1)
    looked = rng.random(n) < examination(positions, params.position_decay)
    clicked = looked & (rng.random(n) < click_probability(world, user, items, params))
    safe = np.where(items >= 0, items, 0)
    fav = world.is_favourite(np.full(n, user), safe)
    level_match = world.item_level[safe] == world.user_level[user]
    carted = clicked & (rng.random(n) < cart_probability(fav, level_match))
    bought = carted & (rng.random(n) < BUY_AFTER_CART)
    quantity = np.where(bought, 1 + (rng.random(n) < 0.15), 1)
    return Reaction(positions, items, clicked, carted, bought, quantity)


def reaction_events(world: SyntheticWorld, user: int, reaction: Reaction, request_id: str, session_id: str,
                    start: pd.Timestamp) -> list[dict]:
    """The behaviour events a storefront would post for a reaction: view on click, add_to_cart, purchase,
    each carrying the `request_id` of the list it came from. Times grow within the session."""
    events, t = [], start
    for pos in np.flatnonzero(reaction.clicked):
        item = int(reaction.items[pos])
        base = {S.USER_ID: world.user_ids[user], S.ITEM_ID: world.item_ids[item], S.SESSION_ID: session_id,
                "request_id": request_id}
        t = t + pd.Timedelta(seconds=5 + 10 * pos, microseconds=int(pos) + 1)
        events.append({**base, S.EVENT_TYPE: S.VIEW, S.TS: t.isoformat()})
        if reaction.carted[pos]:
            events.append({**base, S.EVENT_TYPE: S.ADD_TO_CART, S.TS: (t + pd.Timedelta(seconds=20)).isoformat(),
                           S.QUANTITY: 1})
        if reaction.bought[pos]:
            events.append({**base, S.EVENT_TYPE: S.PURCHASE, S.TS: (t + pd.Timedelta(seconds=40)).isoformat(),
                           S.QUANTITY: int(reaction.quantity[pos]), S.PRICE: float(world.item_price[item])})
    return events


def faulty_events(good: dict, n: int) -> list[dict]:
    """`n` events a buggy storefront might send, cycling through rules of the contract (an unknown event
    type, no user, an unreadable time, a negative quantity) and an exact repeat of `good` (accepted at
    the door, quarantined as a duplicate by ingest). Known bad, so quarantine is checked, not assumed."""
    makers = [lambda e: {**e, S.EVENT_TYPE: "teleport"},
              lambda e: {**e, S.USER_ID: None},
              lambda e: {**e, S.TS: "yesterday-ish"},
              lambda e: {**e, S.EVENT_TYPE: S.PURCHASE, S.QUANTITY: -1, S.PRICE: 1.0},
              lambda e: dict(e)]
    return [makers[i % len(makers)](good) for i in range(n)]


@dataclass
class ArmTally:
    """One arm's day: sessions, and per user the sums the A/B analysis needs (`recsys.models.ab_test`)."""

    sessions: int = 0
    versions: set = field(default_factory=set)
    # user -> [shown items, clicks, purchases, revenue]
    per_user: dict = field(default_factory=dict)

    def add(self, user: int, version: str, reaction: Reaction, prices: np.ndarray) -> None:
        self.sessions += 1
        self.versions.add(version)
        row = self.per_user.setdefault(user, [0, 0, 0, 0.0])
        row[0] += len(reaction.items)
        row[1] += int(reaction.clicked.sum())
        row[2] += int(reaction.bought.sum())
        row[3] += float((prices * reaction.quantity * reaction.bought).sum())

    def figures(self) -> dict:
        """CTR = clicks / shown items, conversion = purchases / shown items (the online metrics' definitions)."""
        shown, clicks, purchases, revenue = (np.array([r[i] for r in self.per_user.values()], float).sum()
                                             for i in range(4))
        return {"sessions": self.sessions, "users": len(self.per_user), "impressions": int(shown),
                "clicks": int(clicks), "purchases": int(purchases),
                "ctr": clicks / shown if shown else 0.0, "conversion": purchases / shown if shown else 0.0,
                "revenue_per_impression": revenue / shown if shown else 0.0, "versions": sorted(self.versions)}


def merge_user_sums(total: dict, day: dict) -> None:
    """Add one day's {arm: {user: [shown, clicks, purchases, revenue]}} into the running `total` (in place)."""
    for arm, users in day.items():
        into = total.setdefault(arm, {})
        for u, row in users.items():
            cur = into.setdefault(u, [0, 0, 0, 0.0])
            for i, v in enumerate(row):
                cur[i] += v
