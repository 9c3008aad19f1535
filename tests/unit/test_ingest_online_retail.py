"""The Online Retail adapter: each kind of messy line gets its documented fate (known answers)."""

from pathlib import Path

import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.online_retail import (ANONYMOUS_UNITS, RAW_COLUMNS, STRING_COLUMNS, head_noun,
                                    transform_online_retail)
from recsys.features.validation import REJECT_RULE, SOURCE_ROW, split_valid_rows

import os

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """$RECSYS_SHARED_DATA, else the nearest `shared/data` beside the repo or one of its parents
    (../shared/data for a checkout at /work/main, ../../shared/data for a worktree in /work/wt/)."""
    if os.environ.get("RECSYS_SHARED_DATA"):
        return Path(os.environ["RECSYS_SHARED_DATA"])
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return REPO.parent / "shared" / "data"


REAL_FILE = shared_data() / "online_retail" / "online_retail.csv.gz"


def raw_lines(rows):
    return pd.DataFrame(rows, columns=list(RAW_COLUMNS)).astype({c: "string" for c in STRING_COLUMNS})


LINES = [
    # InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country
    ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26:00", 2.55, "17850.0", "UK"),  # 0 kept
    ("536365", "POST", "POSTAGE", 1, "2010-12-01 08:26:00", 18.0, "17850.0", "UK"),                              # 1 fee
    ("536366", "22633", "HAND WARMER UNION JACK", 6, "2010-12-01 08:28:00", 1.85, None, "UK"),                   # 2 anon
    ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26:00", 2.55, "17850.0", "UK"),  # 3 dup
    ("536370", "22728", "ALARM CLOCK BAKELIKE PINK", 24, "2010-12-01 08:45:00", 3.75, "12583.0", "FR"),          # 4 partly returned
    ("C536383", "22728", "ALARM CLOCK BAKELIKE PINK", -10, "2010-12-02 09:49:00", 3.75, "12583.0", "FR"),        # 5 applied
    ("536371", "21730", "GLASS STAR FROSTED T-LIGHT HOLDER", 6, "2010-12-01 09:00:00", 4.25, "13047.0", "UK"),   # 6 fully returned
    ("C536391", "21730", "GLASS STAR FROSTED T-LIGHT HOLDER", -6, "2010-12-03 10:24:00", 4.25, "13047.0", "UK"),  # 7 applied
    ("C536392", "22556", "PLASTERS IN TIN CIRCUS PARADE", -12, "2010-12-03 10:30:00", 1.65, "13047.0", "UK"),     # 8 unmatched
    ("536400", "22139", "damaged", -3, "2010-12-04 10:00:00", 0.0, "13047.0", "UK"),                              # 9 adjustment
    ("536401", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", 1, "2010-12-04 11:00:00", 0.0, "13047.0", "UK"),      # 10 free -> validation
    ("536402", "85123a", "WHITE HANGING HEART T-LIGHT HOLDER", 2, "2011-06-01 10:00:00", 2.95, "17850.0", "UK"),  # 11 kept, BST
    ("536403", "22633", "HAND WARMER UNION JACK", 4, "2011-06-02 10:00:00", 2.10, "17850.0", "UK"),               # 12 kept
]


@pytest.fixture(scope="module")
def result():
    return transform_online_retail(raw_lines(LINES))


def test_every_line_is_kept_or_rejected_with_its_documented_reason(result):
    reasons = dict(zip(result.rejected[SOURCE_ROW], result.rejected[REJECT_RULE]))
    assert reasons == {1: "non_product_code", 2: "anonymous_customer", 3: "duplicate_line",
                       5: "cancellation_applied", 6: "fully_cancelled", 7: "cancellation_applied",
                       8: "cancellation_unmatched", 9: "stock_adjustment"}
    assert sorted(result.events[SOURCE_ROW]) == [0, 4, 10, 11, 12]
    assert len(result.events) + len(result.rejected) == len(LINES)


def test_events_follow_the_contract(result):
    ev = result.events.set_index(SOURCE_ROW)
    assert (ev[S.EVENT_TYPE] == S.PURCHASE).all()
    assert ev.loc[0, S.USER_ID] == "17850"  # float print of CustomerID undone
    assert ev.loc[4, S.QUANTITY] == 14  # 24 bought, 10 returned
    assert ev.loc[11, S.ITEM_ID] == "85123A"  # lower-case suffix is the same product
    assert ev.loc[11, S.TS] == pd.Timestamp("2011-06-01 09:00", tz="UTC")  # BST wall clock -> UTC
    assert ev.loc[0, S.TS] == pd.Timestamp("2010-12-01 08:26", tz="UTC")  # GMT in winter
    assert ev.loc[4, S.SESSION_ID] == "536370"
    # the free line reaches contract validation and is rejected there, not by the adapter
    _, rejected = split_valid_rows(result.events, now=pd.Timestamp("2026-01-01", tz="UTC"))
    assert dict(zip(rejected[SOURCE_ROW], rejected[REJECT_RULE])) == {10: "non_positive_price"}
    assert result.notes == {"partially_cancelled_lines": 1, "units_returned": 16}


def test_catalog_counts_anonymous_sales_and_takes_the_median_price(result):
    cat = result.catalog.set_index(S.ITEM_ID)
    assert "POST" not in cat.index
    assert cat.loc["22633", ANONYMOUS_UNITS] == 6 and cat.loc["22633", S.PRICE] == pytest.approx((1.85 + 2.10) / 2)
    assert cat.loc["85123A", S.TITLE] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert cat.loc["85123A", S.PRICE] == pytest.approx((2.55 + 2.95) / 2)
    assert cat.loc["85123A", S.CREATED_AT] == pd.Timestamp("2010-12-01 08:26", tz="UTC")
    assert set(result.events[S.ITEM_ID]) <= set(cat.index)
    assert {S.ITEM_ID, S.TITLE, S.CATEGORY, S.PRICE} <= set(result.catalog.columns)


@pytest.mark.parametrize("description, noun", [
    ("WHITE HANGING HEART T-LIGHT HOLDER", "holder"), ("JUMBO BAG RED RETROSPOT", "bag"),
    ("SET OF 3 CAKE TINS PANTRY DESIGN", "pantry"), ("PACK OF 72 RETROSPOT CAKE CASES", "case"),
    ("HAND WARMER UNION JACK", "jack"), ("ASSORTED COLOUR BIRD ORNAMENT", "ornament"),
    ("LUNCH BOX WITH CUTLERY RETROSPOT", "cutlery"), ("PAPER CHAIN KIT 50'S CHRISTMAS", "kit"),
    ("SMALL RED", "unknown"), (None, "unknown"), ("FAIRY CAKE FLANNEL ASSORTED COLOUR", "flannel"),
    ("GLASS JAR DIGESTIVE BISCUITS", "biscuit"), ("RED TOADSTOOL LED NIGHT LIGHT", "light"),
    ("STRAWBERRY CERAMIC TRINKET BOXES", "box"), ("SET OF 6 SPICE TINS PANTRY DESIGN", "pantry"),
    ("LOVE BUILDING BLOCK WORD", "word"), ("CHILDRENS CUTLERY DOLLY GIRL", "cutlery"),
    ("SWEETHEART CERAMIC TRINKET BOX", "box"), ("DOORMAT FANCY FONT HOME SWEET HOME", "home"),
    ("PARTY BUNTING", "bunting"), ("STRAWBERRIES", "strawberry"),
])
def test_head_noun(description, noun):
    assert head_noun(description) == noun


def test_missing_column_is_a_schema_error():
    with pytest.raises(ValueError, match="CustomerID"):
        transform_online_retail(raw_lines(LINES).drop(columns=["CustomerID"]))


@pytest.mark.skipif(not REAL_FILE.exists(), reason=f"the real Online Retail file is not at {REAL_FILE}")
def test_the_real_file():
    raw = pd.read_csv(REAL_FILE, encoding="latin-1", dtype={c: "string" for c in STRING_COLUMNS},
                      keep_default_na=False, na_values=[""])
    assert len(raw) == 541_909
    result = transform_online_retail(raw)
    counts = result.rejected[REJECT_RULE].value_counts().to_dict()
    assert counts == {"anonymous_customer": 134_005, "cancellation_applied": 7_454, "duplicate_line": 5_220,
                      "non_product_code": 2_995, "fully_cancelled": 2_770, "cancellation_unmatched": 1_052}
    assert len(result.events) + len(result.rejected) == len(raw)
    assert not result.events[S.ITEM_ID].str.fullmatch(r"POST|DOT|M|C2|D|S|BANK CHARGES|AMAZONFEE").any()
    cancellations = raw["InvoiceNo"].str.startswith("C")
    assert cancellations.sum() == 9_288
    assert not result.events[SOURCE_ROW].isin(raw.index[cancellations]).any()
    assert result.events[S.USER_ID].nunique() == 4_325 and (result.events[S.QUANTITY] > 0).all()
    assert len(result.catalog) == 3_808 and result.catalog[S.ITEM_ID].is_unique
    assert result.catalog[S.CATEGORY].nunique() > 50
