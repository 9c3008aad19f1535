"""UCI Online Retail (invoice lines of a UK gift wholesaler, 2010-12 .. 2011-12) -> purchase events + catalog.

What each kind of raw line means for a recommender, in the order the rules are applied (a line
gets the first reason that fits; every line ends up either in `events` or in `rejected`):

1. `non_product_code`: StockCode is not a product (POST postage, DOT dotcom postage, M manual,
   BANK CHARGES, C2 carriage, D discount, S samples, AMAZONFEE, PADS, CRUK donations, B bad-debt
   adjustments, gift_* vouchers, DCGS* ...). Products are 5 digits + an optional letter suffix;
   fees and vouchers say nothing about taste.
2. `anonymous_customer`: no CustomerID. These lines cannot form a user history, and lumping them
   into one pseudo user would create a giant fake shopper that dominates ALS and evaluation. They
   still count toward the catalog: item existence, title, median price, first-seen date and the
   `anonymous_units` popularity column.
3. `duplicate_line`: an exact repeat of an earlier line (all eight fields equal). We cannot tell a
   double record from a second identical scan in the same minute; dropping costs at most a
   quantity under-count, keeping risks double-counting.
4. `cancellation_applied` / `cancellation_unmatched`: InvoiceNo starting with C (negative
   Quantity). A return is negative feedback, so it removes units from the same customer's most
   recent earlier purchases of the same item (newest first). A cancellation with no earlier
   purchase in the data (bought before Dec 2010) is kept in quarantine as unmatched.
5. `fully_cancelled`: a purchase line whose units were all returned; a partly returned line stays
   with its net quantity.
6. `stock_adjustment`: a non-C line with Quantity <= 0 (damages, write-offs).

The rest become `purchase` events: user = CustomerID without the float's `.0`, item = upper-cased
StockCode (`15056bl` and `15056BL` are one product), ts = InvoiceDate read as UK wall-clock time
(`source_timezone`) converted to UTC, session = InvoiceNo, quantity, price = UnitPrice (GBP).
Zero-price lines are left to the contract validation (rule `non_positive_price`).

Catalog: every product sold at least once (anonymous sales included); title = the most frequent
description; price = median positive unit price; category = the description's head noun (see
`head_noun`); created_at = first sale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.validation import REJECT_RULE, SOURCE_ROW, SchemaError

INVOICE, STOCK, DESCRIPTION, QTY, DATE, UNIT_PRICE, CUSTOMER, COUNTRY = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
RAW_COLUMNS = (INVOICE, STOCK, DESCRIPTION, QTY, DATE, UNIT_PRICE, CUSTOMER, COUNTRY)
# read as text: stock codes like 85123A and invoice numbers like C536379 are not numbers
STRING_COLUMNS = (INVOICE, STOCK, DESCRIPTION, CUSTOMER, COUNTRY, DATE)
PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,3}$")
ANONYMOUS_UNITS = "anonymous_units"

NON_PRODUCT_CODE = "non_product_code"
ANONYMOUS_CUSTOMER = "anonymous_customer"
DUPLICATE_LINE = "duplicate_line"
CANCELLATION_APPLIED = "cancellation_applied"
CANCELLATION_UNMATCHED = "cancellation_unmatched"
FULLY_CANCELLED = "fully_cancelled"
STOCK_ADJUSTMENT = "stock_adjustment"
ADAPTER_RULES = (NON_PRODUCT_CODE, ANONYMOUS_CUSTOMER, DUPLICATE_LINE, CANCELLATION_APPLIED,
                 CANCELLATION_UNMATCHED, FULLY_CANCELLED, STOCK_ADJUSTMENT)

# Trailing words that describe rather than name the product (colours, patterns, themes, sizes):
# skipped when looking for the head noun.
MODIFIERS = frozenset("""
RED BLUE PINK GREEN WHITE BLACK CREAM IVORY GOLD SILVER PURPLE ORANGE YELLOW BROWN GREY GRAY
NATURAL PASTEL TURQUOISE LILAC COPPER CHROME CLEAR ASSORTED COLOUR COLOURS COLOURED MULTI
DESIGN DESIGNS RETROSPOT POLKADOT SPOT SPOTS SPOTTY STRIPE STRIPES PAISLEY FLORAL FLOCK VINTAGE
RETRO ANTIQUE ZINC METAL WOOD WOODEN GLASS ENAMEL LONDON CHRISTMAS WOODLAND SPACEBOY SKULLS SKULL
DOLLY GIRL BOY LARGE SMALL MEDIUM MINI JUMBO GIANT BIG TINY SET OF AND THE WITH IN FOR ON
""".split())


@dataclass
class RetailResult:
    events: pd.DataFrame  # contract columns + SOURCE_ROW, not yet contract-validated
    catalog: pd.DataFrame
    rejected: pd.DataFrame  # raw columns + SOURCE_ROW + REJECT_RULE
    notes: dict[str, int] = field(default_factory=dict)


def head_noun(description: str | None) -> str:
    """The category of a product: the last word of its description that is not a modifier, singular.

    English noun phrases put the head noun last ("WHITE HANGING HEART T-LIGHT HOLDER" -> holder),
    except when a colour or pattern trails ("JUMBO BAG RED RETROSPOT" -> bag). Honest and
    explainable, not a taxonomy: rare nouns are later folded into "other".
    """
    if not isinstance(description, str):
        return "unknown"
    words = [w for w in re.findall(r"[A-Z]+", description.upper()) if len(w) > 2 and w not in MODIFIERS]
    if not words:
        return "unknown"
    w = words[-1]
    if w.endswith("IES") and len(w) > 4:
        w = w[:-3] + "Y"
    elif w.endswith(("XES", "SHES", "CHES")):
        w = w[:-2]
    elif w.endswith("S") and not w.endswith(("SS", "US", "IS")) and len(w) > 3:
        w = w[:-1]
    return w.lower()


def check_raw(raw: pd.DataFrame, source: str) -> None:
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise SchemaError(f"{source}: not the Online Retail layout, missing column(s) {missing}; "
                          f"found {list(raw.columns)}")


def customer_ids(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.str.replace(r"\.0+$", "", regex=True).mask(text == "")


def _net_cancellations(cust: np.ndarray, item: np.ndarray, ts: np.ndarray, qty: np.ndarray,
                       is_cancel: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(net quantity per line, matched flag per line). Returns remove units from the same
    customer's newest earlier purchases of the item; only `live` lines take part."""
    net = np.where(live & ~is_cancel, qty, 0).astype(np.int64)
    matched = np.zeros(len(qty), dtype=bool)
    cancels = np.flatnonzero(live & is_cancel)
    wanted = set(zip(cust[cancels].tolist(), item[cancels].tolist()))
    buys: dict[tuple, list[int]] = {}
    candidates = np.flatnonzero(live & ~is_cancel)
    for i in candidates[np.argsort(ts[candidates], kind="stable")].tolist():
        key = (cust[i], item[i])
        if key in wanted:
            buys.setdefault(key, []).append(i)
    for c in cancels[np.argsort(ts[cancels], kind="stable")]:
        todo = -int(qty[c])
        for i in reversed(buys.get((cust[c], item[c]), [])):
            if todo <= 0:
                break
            if ts[i] > ts[c] or net[i] <= 0:
                continue
            take = min(todo, int(net[i]))
            net[i] -= take
            todo -= take
            matched[c] = True
    return net, matched


def _fold_rare(categories: pd.Series, min_items: int) -> pd.Series:
    counts = categories.value_counts()
    return categories.where(categories.map(counts) >= min_items, "other")


def transform_online_retail(raw: pd.DataFrame, source_timezone: str = "Europe/London",
                            min_category_items: int = 5, source: str = "online_retail") -> RetailResult:
    """Raw invoice lines (text columns as read, numbers parsed) -> purchase events, catalog, rejected rows."""
    check_raw(raw, source)
    n = len(raw)
    src_row = raw[SOURCE_ROW].to_numpy() if SOURCE_ROW in raw else np.arange(n)
    invoice = raw[INVOICE].astype("string").str.strip().fillna("")
    code = raw[STOCK].astype("string").str.strip().fillna("")
    qty = pd.to_numeric(raw[QTY], errors="coerce").fillna(0).astype(np.int64).to_numpy()
    price = pd.to_numeric(raw[UNIT_PRICE], errors="coerce").to_numpy(dtype=float)
    cust = customer_ids(raw[CUSTOMER])
    text = raw[DATE].astype("string")
    local = pd.to_datetime(text, errors="coerce", format="ISO8601")
    retry = local.isna() & text.notna()
    if retry.any():  # other layouts (e.g. 12/1/2010 8:26 in the Excel export)
        local = local.where(~retry, pd.to_datetime(text[retry], errors="coerce", format="mixed"))
    ts = local.dt.tz_localize(source_timezone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
    ts = ts.astype("datetime64[us, UTC]")
    is_product = code.str.match(PRODUCT_CODE.pattern).fillna(False).to_numpy(dtype=bool)
    is_cancel = invoice.str.upper().str.startswith("C").to_numpy(dtype=bool)
    anonymous = cust.isna().to_numpy()
    duplicate = raw[list(RAW_COLUMNS)].duplicated(keep="first").to_numpy()
    item = code.str.upper().to_numpy(dtype=object)

    reason = np.full(n, None, dtype=object)

    def assign(mask: np.ndarray, rule: str) -> None:
        reason[(reason == None) & mask] = rule  # noqa: E711 (elementwise)

    assign(~is_product, NON_PRODUCT_CODE)
    assign(anonymous, ANONYMOUS_CUSTOMER)
    assign(duplicate, DUPLICATE_LINE)
    live = reason == None  # noqa: E711
    ts_ns = ts.to_numpy(dtype="datetime64[us]").astype("int64")
    ts_ns = np.where(ts.isna().to_numpy(), np.iinfo(np.int64).max, ts_ns)
    net, matched = _net_cancellations(cust.fillna("").to_numpy(dtype=object), item, ts_ns, qty,
                                      is_cancel, live & (qty != 0))
    assign(is_cancel & matched, CANCELLATION_APPLIED)
    assign(is_cancel, CANCELLATION_UNMATCHED)
    assign(~is_cancel & (qty > 0) & (net <= 0), FULLY_CANCELLED)
    assign(~is_cancel & (qty <= 0), STOCK_ADJUSTMENT)
    keep = reason == None  # noqa: E711

    events = pd.DataFrame({
        S.USER_ID: cust.to_numpy()[keep], S.ITEM_ID: item[keep], S.EVENT_TYPE: S.PURCHASE,
        S.TS: ts.iloc[np.flatnonzero(keep)].to_numpy(dtype="datetime64[us]"), S.SESSION_ID: invoice.to_numpy()[keep], S.QUERY: None,
        S.QUANTITY: net[keep], S.PRICE: price[keep], SOURCE_ROW: src_row[keep]})
    events[S.TS] = pd.to_datetime(events[S.TS], utc=True)
    rejected = raw.loc[~keep].copy()
    rejected[SOURCE_ROW] = src_row[~keep]
    rejected[REJECT_RULE] = reason[~keep].astype(str)

    sale = is_product & ~is_cancel & (qty > 0) & ~duplicate
    catalog = build_catalog(raw.loc[sale], item[sale], ts[sale], qty[sale], price[sale], anonymous[sale],
                            min_category_items)
    notes = {"partially_cancelled_lines": int((keep & (net < qty)).sum()),
             "units_returned": int((qty - net)[live & ~is_cancel & (qty > 0)].sum())}
    return RetailResult(events, catalog, rejected, notes)


def build_catalog(lines: pd.DataFrame, item: np.ndarray, ts: pd.Series, qty: np.ndarray, price: np.ndarray,
                  anonymous: np.ndarray, min_category_items: int = 5) -> pd.DataFrame:
    """One row per product from its sale lines (anonymous ones included)."""
    frame = pd.DataFrame({S.ITEM_ID: item, "desc": lines[DESCRIPTION].astype("string").str.strip().to_numpy(),
                          S.TS: ts.to_numpy(), "qty": qty, S.PRICE: np.where(price > 0, price, np.nan),
                          ANONYMOUS_UNITS: np.where(anonymous, qty, 0)})
    g = frame.groupby(S.ITEM_ID, sort=True)
    titles = (frame.dropna(subset=["desc"]).groupby([S.ITEM_ID, "desc"]).size().rename("n").reset_index()
              .sort_values([S.ITEM_ID, "n", "desc"], ascending=[True, False, True])
              .drop_duplicates(S.ITEM_ID).set_index(S.ITEM_ID)["desc"])
    catalog = pd.DataFrame({S.PRICE: g[S.PRICE].median(), S.CREATED_AT: g[S.TS].min(),
                            ANONYMOUS_UNITS: g[ANONYMOUS_UNITS].sum().astype(np.int64)})
    catalog[S.TITLE] = titles.reindex(catalog.index)
    catalog[S.TITLE] = catalog[S.TITLE].fillna(pd.Series(catalog.index, index=catalog.index))
    catalog[S.CATEGORY] = _fold_rare(catalog[S.TITLE].map(head_noun), min_category_items)
    catalog[S.BRAND] = None
    catalog = catalog.reset_index()
    catalog[S.CREATED_AT] = pd.to_datetime(catalog[S.CREATED_AT], utc=True)
    return catalog[[S.ITEM_ID, S.TITLE, S.CATEGORY, S.BRAND, S.PRICE, S.CREATED_AT, ANONYMOUS_UNITS]]
