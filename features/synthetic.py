"""Seeded synthetic e-commerce data with structure a recommender can learn.

Users have latent tastes over categories and a preferred price level, a small set of
favourite items that drifts over time, and an activity level. Items have power-law
popularity, a category, a price, a brand and a title. Sessions go view -> add_to_cart ->
purchase; some start with a search whose words come from the title of the item looked
at. New items appear during the period (and get a novelty boost), weekends are busier.

Generation is per day, so memory stays flat however many days or events are asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.features import schema as S

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "shoes": ("sneakers", "boots", "sandals", "loafers"),
    "kitchen": ("pan", "knife", "kettle", "blender"),
    "lighting": ("lamp", "lantern", "candle", "bulb"),
    "garden": ("planter", "hose", "shovel", "birdhouse"),
    "toys": ("puzzle", "robot", "doll", "blocks"),
    "books": ("novel", "cookbook", "atlas", "journal"),
    "audio": ("headphones", "speaker", "earbuds", "radio"),
    "bags": ("backpack", "tote", "wallet", "suitcase"),
    "tops": ("shirt", "sweater", "hoodie", "blouse"),
    "bottoms": ("jeans", "shorts", "skirt", "trousers"),
    "bath": ("towel", "soap", "robe", "mat"),
    "office": ("notebook", "pen", "stapler", "desk"),
    "sports": ("ball", "racket", "helmet", "gloves"),
    "beauty": ("lipstick", "serum", "perfume", "brush"),
    "pets": ("leash", "bowl", "collar", "bed"),
    "tools": ("drill", "hammer", "wrench", "saw"),
    "decor": ("vase", "frame", "clock", "mirror"),
    "baby": ("stroller", "bib", "rattle", "blanket"),
    "jewelry": ("ring", "necklace", "bracelet", "earrings"),
    "games": ("chess", "cards", "dice", "console"),
    "phones": ("case", "charger", "cable", "stand"),
    "outdoor": ("tent", "stove", "flashlight", "compass"),
    "bedding": ("pillow", "duvet", "sheet", "quilt"),
    "snacks": ("chocolate", "tea", "coffee", "cookies"),
}
_COLORS = ("red", "blue", "green", "black", "white", "grey", "pink", "yellow", "navy", "beige")
_ADJECTIVES = ("classic", "modern", "vintage", "compact", "deluxe", "eco", "smart", "soft",
               "wooden", "metal", "cotton", "leather", "glass", "mini", "large", "retro")
_BRANDS = tuple(f"brand{b:02d}" for b in range(30))
_LEVEL_AFFINITY = np.array([[1.0, 0.3, 0.08], [0.3, 1.0, 0.3], [0.08, 0.3, 1.0]])
_WEEKDAY_FACTOR = np.array([1.0, 0.95, 1.0, 1.05, 1.1, 1.35, 1.25])  # Mon..Sun
# hour-of-day weights: quiet nights, a lunchtime bump, busy evenings; no session starts after 23:00,
# so sessions end the day they start (a day's events stay in that day's partition)
_HOUR_WEIGHTS = np.array([1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 7, 6, 5, 5, 6, 7, 9, 10, 10, 8, 5, 0],
                         dtype=float)
HOUR_SHARES = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
SEARCH_SHARE = 0.25  # sessions that start with a search
BUY_AFTER_CART = 0.55  # chance a carted item is bought


def cart_probability(is_favourite: np.ndarray, level_match: np.ndarray) -> np.ndarray:
    """Chance that a shopper who looks at an item puts it in the cart: favourites and items at the
    shopper's own price level are carted more often."""
    return 0.06 + 0.22 * is_favourite + 0.08 * level_match


def level_affinity(user_level: np.ndarray, item_level: np.ndarray) -> np.ndarray:
    """How much a shopper of one price level likes items of another (1 on the diagonal)."""
    return _LEVEL_AFFINITY[user_level, item_level]


def search_query(title: str, pick: int) -> str:
    """The query a searching shopper types for an item: adjective or colour + noun (pick 0/1), or the noun."""
    w = title.split()
    return " ".join((w[1 + pick], w[3]) if pick < 2 else (w[3],))


@dataclass(frozen=True)
class SyntheticParams:
    n_users: int = 3000
    n_items: int = 1500
    n_days: int = 56
    seed: int = 42
    start: str = "2026-01-05"  # a Monday
    sessions_per_user_day: float = 0.12
    favorites_per_user: int = 8
    new_item_share: float = 0.2

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_days", "favorites_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sessions_per_user_day <= 0:
            raise ValueError("sessions_per_user_day must be > 0")


def events_per_day_estimate(p: SyntheticParams) -> float:
    """Rough mean events per day (used to size a data set for a target event count)."""
    return p.n_users * p.sessions_per_user_day * 1.1 * 4.4


class SyntheticWorld:
    """The latent state (items, users) from which days of events are drawn."""

    def __init__(self, params: SyntheticParams):
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self.start = pd.Timestamp(params.start, tz="UTC").normalize()
        self._make_items()
        self._make_users()

    # ---- items -------------------------------------------------------------------
    def _make_items(self) -> None:
        p, rng = self.p, self.rng
        cat_names = list(_CATEGORIES)
        n_cats = min(len(cat_names), max(4, p.n_items // 40))
        self.cat_names = np.array(cat_names[:n_cats], dtype=object)
        self.n_cats = n_cats
        self.item_cat = rng.integers(0, n_cats, p.n_items)
        cat_base = np.exp(rng.uniform(1.5, 4.5, n_cats))
        self.item_price = np.round(cat_base[self.item_cat] * np.exp(rng.normal(0, 0.45, p.n_items)), 2)
        self.item_price = np.maximum(self.item_price, 0.5)
        # price level = tercile of price within the category
        self.item_level = np.zeros(p.n_items, dtype=np.int64)
        for c in range(n_cats):
            idx = np.flatnonzero(self.item_cat == c)
            if len(idx):
                ranks = self.item_price[idx].argsort().argsort()
                self.item_level[idx] = np.minimum(2, (3 * ranks) // max(1, len(idx)))
        self.item_pop = (rng.permutation(p.n_items) + 1.0) ** -0.9
        created_day = np.full(p.n_items, -1, dtype=np.int64)
        new = rng.random(p.n_items) < p.new_item_share
        created_day[new] = rng.integers(1, max(2, p.n_days), new.sum())
        self.item_created_day = created_day
        self.item_brand = rng.integers(0, len(_BRANDS), p.n_items)
        adj = rng.integers(0, len(_ADJECTIVES), p.n_items)
        color = rng.integers(0, len(_COLORS), p.n_items)
        noun_pick = rng.integers(0, 4, p.n_items)
        self.item_title = np.array(
            [f"{_BRANDS[b]} {_ADJECTIVES[a]} {_COLORS[c]} {_CATEGORIES[self.cat_names[k]][n]}"
             for b, a, c, k, n in zip(self.item_brand, adj, color, self.item_cat, noun_pick)],
            dtype=object)
        self.item_ids = np.array([f"i{i:06d}" for i in range(p.n_items)], dtype=object)

    def catalog(self) -> pd.DataFrame:
        created = np.where(self.item_created_day < 0,
                           -self.rng.integers(30, 400, self.p.n_items), self.item_created_day)
        return pd.DataFrame({
            S.ITEM_ID: self.item_ids,
            S.TITLE: self.item_title,
            S.CATEGORY: self.cat_names[self.item_cat],
            S.BRAND: np.array(_BRANDS, dtype=object)[self.item_brand],
            S.PRICE: self.item_price,
            S.CREATED_AT: self.start + pd.to_timedelta(created, unit="D"),
        })

    # ---- users -------------------------------------------------------------------
    def _make_users(self) -> None:
        p, rng = self.p, self.rng
        self.user_taste = rng.dirichlet(np.full(self.n_cats, 0.2), p.n_users)  # share of interest per category
        self.user_taste_cdf = np.cumsum(self.user_taste, axis=1)
        self.user_level = rng.choice(3, p.n_users, p=[0.35, 0.4, 0.25])
        act = rng.lognormal(0, 0.9, p.n_users)
        self.user_activity = act / act.sum()
        self.user_ids = np.array([f"u{u:06d}" for u in range(p.n_users)], dtype=object)
        users = np.repeat(np.arange(p.n_users), p.favorites_per_user)
        self.favorites = self.sample_items(users, self.sample_categories(users), day=0).reshape(
            p.n_users, p.favorites_per_user)

    def sample_categories(self, users: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One category per user, drawn from the user's tastes."""
        u = (rng or self.rng).random(len(users))[:, None]
        return np.minimum((self.user_taste_cdf[users] < u).sum(axis=1), self.n_cats - 1)

    def sample_items(self, users: np.ndarray, cats: np.ndarray, day: int,
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw one item per (user, category) from items available on `day`."""
        rng = rng or self.rng
        available = self.item_created_day <= day
        age = day - self.item_created_day
        novelty = np.where((self.item_created_day >= 0) & (age < 14), 4.0, 1.0)
        out = np.empty(len(users), dtype=np.int64)
        levels = self.user_level[users]
        key = cats * 3 + levels
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for grp in np.split(order, bounds):
            if len(grp) == 0:
                continue
            c, lvl = divmod(int(key[grp[0]]), 3)
            cand = np.flatnonzero((self.item_cat == c) & available)
            if len(cand) == 0:
                cand = np.flatnonzero(available)
            w = self.item_pop[cand] * level_affinity(lvl, self.item_level[cand]) * novelty[cand]
            out[grp] = rng.choice(cand, size=len(grp), p=w / w.sum())
        return out

    # ---- events ------------------------------------------------------------------
    def day_events(self, day: int) -> pd.DataFrame:
        p, rng = self.p, self.rng
        date = self.start + pd.Timedelta(days=day)
        factor = _WEEKDAY_FACTOR[date.dayofweek] * (1 + 0.003 * day)
        n_sessions = max(1, rng.poisson(p.n_users * p.sessions_per_user_day * factor))
        s_user = rng.choice(p.n_users, n_sessions, p=self.user_activity)
        s_cat = self.sample_categories(s_user)
        s_len = np.minimum(1 + rng.geometric(0.4, n_sessions) - 1 + rng.integers(0, 2, n_sessions), 12)
        s_len = np.maximum(s_len, 1)
        hours = rng.choice(24, n_sessions, p=HOUR_SHARES)
        s_start = hours * 3600 + rng.integers(0, 3600, n_sessions)

        ev_session = np.repeat(np.arange(n_sessions), s_len)
        ev_user = s_user[ev_session]
        n_ev = len(ev_session)
        from_fav = rng.random(n_ev) < 0.3
        items = self.sample_items(ev_user, s_cat[ev_session], day)
        fav_pick = self.favorites[ev_user, rng.integers(0, p.favorites_per_user, n_ev)]
        fav_ok = self.item_created_day[fav_pick] <= day
        items = np.where(from_fav & fav_ok, fav_pick, items)
        is_fav = self.is_favourite(ev_user, items)
        level_match = self.item_level[items] == self.user_level[ev_user]
        offs = np.cumsum(rng.exponential(50, n_ev)) + 1
        # restart the offset clock at each session
        first = np.r_[0, np.cumsum(s_len)[:-1]]
        offs = offs - np.repeat(offs[first] - 1, s_len)
        secs = s_start[ev_session] + offs

        cart = rng.random(n_ev) < cart_probability(is_fav, level_match)
        buy = cart & (rng.random(n_ev) < BUY_AFTER_CART)
        qty = np.where(buy, 1 + (rng.random(n_ev) < 0.15), 1)

        searching = rng.random(n_sessions) < SEARCH_SHARE
        s_first_item = items[first]
        s_idx = np.flatnonzero(searching)
        pick = rng.integers(0, 3, len(s_idx))
        queries = np.array([search_query(self.item_title[i], k) for i, k in zip(s_first_item[s_idx], pick)],
                           dtype=object)

        def frame(mask_rows, etype, sec_shift, q=None, with_item=True, quantity=None):
            n = len(mask_rows)
            return {
                S.USER_ID: self.user_ids[ev_user[mask_rows]] if with_item else self.user_ids[s_user[mask_rows]],
                S.ITEM_ID: self.item_ids[items[mask_rows]] if with_item else np.full(n, None, dtype=object),
                S.EVENT_TYPE: np.full(n, etype, dtype=object),
                "_sec": (secs[mask_rows] if with_item else s_start[mask_rows].astype(float)) + sec_shift,
                S.SESSION_ID: (np.char.add(f"s{day}-", (ev_session[mask_rows] if with_item else mask_rows)
                                           .astype(str)).astype(object)),
                S.QUERY: q if q is not None else np.full(n, None, dtype=object),
                S.QUANTITY: quantity if quantity is not None else np.ones(n, dtype=np.int64),
                S.PRICE: self.item_price[items[mask_rows]] if with_item else np.full(n, np.nan),
            }

        all_rows = np.arange(n_ev)
        cart_rows = np.flatnonzero(cart)
        buy_rows = np.flatnonzero(buy)
        parts = [
            frame(s_idx, S.SEARCH, 0.0, q=queries, with_item=False),
            frame(all_rows, S.VIEW, 0.0),
            frame(cart_rows, S.ADD_TO_CART, 20.0),
            frame(buy_rows, S.PURCHASE, 40.0 + rng.exponential(60, len(buy_rows)), quantity=qty[buy_rows]),
        ]
        df = pd.concat([pd.DataFrame(part) for part in parts], ignore_index=True)
        df[S.TS] = date + pd.to_timedelta(np.minimum(df.pop("_sec"), 86399.0), unit="s")
        df[S.TS] = df[S.TS].astype("datetime64[us, UTC]")
        df = df.sort_values(S.TS, kind="stable", ignore_index=True)
        self._drift_favorites(day)
        return df[list(S.EVENT_COLUMNS)]

    def _drift_favorites(self, day: int) -> None:
        """Tastes move: a few users swap one favourite for a fresh (often new) item each day."""
        p, rng = self.p, self.rng
        movers = np.flatnonzero(rng.random(p.n_users) < 0.03)
        if len(movers):
            fresh = self.sample_items(movers, self.sample_categories(movers), day + 1)
            self.favorites[movers, rng.integers(0, p.favorites_per_user, len(movers))] = fresh

    def is_favourite(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair is among the user's current favourites."""
        return (self.favorites[users] == np.asarray(items)[:, None]).any(axis=1)

    def advance(self, days: int) -> None:
        """Live through the first `days` days (their events are drawn and dropped), so that the world's
        state (drifted favourites, random stream) is where it was after a data set of that many days."""
        for d in range(days):
            self.day_events(d)

    def iter_days(self) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
        for d in range(self.p.n_days):
            yield self.start + pd.Timedelta(days=d), self.day_events(d)
