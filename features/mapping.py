"""Typed ingest parameters and the generic column mapping: any event log -> contract columns.

A mapping file (TOML) looks like

    [columns]            # contract column = column in your file
    user_id = "visitorid"
    item_id = "itemid"
    ts = "timestamp"
    event_type = "event"        # or a constant below
    quantity = "qty"            # optional: quantity, price, query, session_id

    [event_types]        # optional: your value = contract value
    transaction = "purchase"
    addtocart = "add_to_cart"

    [options]
    event_type = "purchase"     # constant event type when the file has no such column
    ts_unit = "ms"              # numeric epoch timestamps: s, ms, us or ns
    timezone = "UTC"            # zone of naive timestamps

    [catalog]            # optional: contract catalog column = column in your catalogue file
    item_id = "product_id"
    title = "description"
    category = "department"     # also brand, price, created_at
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.features import schema as S
from recsys.features.validation import SOURCE_ROW, SchemaError

MAPPABLE = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.SESSION_ID, S.QUERY, S.QUANTITY, S.PRICE)


class SourceKind(str, Enum):
    synthetic = "synthetic"
    events = "events"
    online_retail = "online-retail"


class ColumnMapping(BaseModel):
    """Which input column feeds each contract column, plus value translations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, str] = Field(default_factory=dict, description="contract column -> input column")
    event_types: dict[str, str] = Field(default_factory=dict, description="input value -> contract event type")
    event_type: str | None = Field(None, description="constant event type for every row")
    ts_unit: Literal["s", "ms", "us", "ns"] | None = Field(None, description="numeric epoch timestamps")
    timezone: str = Field("UTC", description="zone of naive timestamps")
    catalog: dict[str, str] = Field(default_factory=dict, description="contract catalog column -> catalogue column")

    @model_validator(mode="after")
    def _check(self) -> "ColumnMapping":
        unknown = set(self.columns) - set(MAPPABLE)
        if unknown:
            raise ValueError(f"mapping names unknown contract column(s) {sorted(unknown)}; known: {list(MAPPABLE)}")
        unknown = set(self.catalog) - set(S.CATALOG_COLUMNS)
        if unknown:
            raise ValueError(f"[catalog] mapping names unknown catalog column(s) {sorted(unknown)}; "
                             f"known: {list(S.CATALOG_COLUMNS)}")
        bad = {v for v in [*self.event_types.values(), self.event_type] if v is not None} - set(S.EVENT_TYPES)
        if bad:
            raise ValueError(f"mapping uses unknown event type(s) {sorted(bad)}; known: {list(S.EVENT_TYPES)}")
        return self

    @classmethod
    def from_toml_dict(cls, data: dict) -> "ColumnMapping":
        options = data.get("options", {})
        extra = set(data) - {"columns", "event_types", "options", "catalog"}
        if extra:
            raise ValueError(f"mapping file: unknown section(s) {sorted(extra)}; use [columns], [event_types], "
                             "[options], [catalog]")
        return cls(columns=data.get("columns", {}), event_types=data.get("event_types", {}),
                   catalog=data.get("catalog", {}), **options)

    def source_column(self, contract_col: str) -> str | None:
        """The input column for a contract column (the same name when not mapped)."""
        return self.columns.get(contract_col, contract_col)

    def required_input_columns(self) -> list[str]:
        need = [S.USER_ID, S.ITEM_ID, S.TS] + ([] if self.event_type else [S.EVENT_TYPE])
        return [self.source_column(c) for c in need]


class IngestParams(BaseModel):
    """Parameters of one ingest flow run (Prefect validates them; deployments can set them)."""

    model_config = ConfigDict(extra="forbid")

    source: SourceKind = SourceKind.events
    input: str = Field(..., description="file to ingest (CSV, CSV.gz or Parquet); for synthetic: unused")
    data_dir: str | None = Field(None, description="event store; default $RECSYS_HOME/data")
    mapping: ColumnMapping = Field(default_factory=ColumnMapping)
    catalog: str | None = Field(None, description="optional catalog file (CSV/Parquet with item_id, title, category)")
    skip_missing_input: bool = Field(False, description="a scheduled run whose input file is absent ends "
                                                        "Completed with a log line instead of failing")
    max_rejected_share: float = Field(0.05, ge=0.0, le=1.0,
                                      description="fail when more than this share of rows breaks a contract rule")
    future_tolerance_hours: float = Field(1.0, ge=0.0)
    chunk_rows: int = Field(1_000_000, ge=1, description="rows per streamed chunk")
    encoding: str = Field("auto", description="auto (UTF-8, else Latin-1) or a Python codec name")
    delimiter: str | None = Field(None, description="CSV delimiter; default: sniffed")
    pseudonymise: bool = Field(False, description="replace user ids by a salted hash (salt from RECSYS_PSEUDONYM_SALT)")
    experiment: str = Field("recsys-ingest", min_length=1)
    source_timezone: str = Field("Europe/London", description="online-retail: zone of InvoiceDate")
    # synthetic source
    users: int = Field(3000, ge=1)
    items: int = Field(1500, ge=1)
    days: int = Field(56, ge=1)
    seed: int = 42


def map_columns(raw: pd.DataFrame, mapping: ColumnMapping, source: str) -> pd.DataFrame:
    """Contract-named columns (raw values, not yet validated) + SOURCE_ROW passed through."""
    missing = [c for c in mapping.required_input_columns() if c not in raw.columns]
    mapped_missing = [c for k, c in mapping.columns.items() if c not in raw.columns and k not in
                      (S.USER_ID, S.ITEM_ID, S.TS, S.EVENT_TYPE)]
    if missing or mapped_missing:
        raise SchemaError(f"{source}: required column(s) {missing + mapped_missing} not in the input "
                          f"(columns: {list(raw.columns)[:20]})")
    out = pd.DataFrame(index=raw.index)
    for col in MAPPABLE:
        src = mapping.source_column(col)
        if src in raw.columns:
            out[col] = raw[src]
    if mapping.event_type:
        out[S.EVENT_TYPE] = mapping.event_type
    elif mapping.event_types:
        values = out[S.EVENT_TYPE].astype("string").str.strip()
        translated = values.map(mapping.event_types)
        out[S.EVENT_TYPE] = values.where(translated.isna(), translated)
    if S.TS in out:
        out[S.TS] = to_utc(out[S.TS], mapping.ts_unit, mapping.timezone)
    if SOURCE_ROW in raw:
        out[SOURCE_ROW] = raw[SOURCE_ROW]
    return out


def map_catalog(raw: pd.DataFrame, mapping: ColumnMapping, source: str) -> pd.DataFrame:
    """Catalogue columns renamed to the contract by the [catalog] mapping; one SchemaError naming the file and
    every missing required column (as the contract and as the mapping expects it) when any is absent."""
    wanted = {c: mapping.catalog.get(c, c) for c in S.CATALOG_COLUMNS}
    missing = [c for c in S.REQUIRED_CATALOG_COLUMNS if wanted[c] not in raw.columns]
    mapped_missing = [src for c, src in mapping.catalog.items() if c not in S.REQUIRED_CATALOG_COLUMNS
                      and src not in raw.columns]
    if missing or mapped_missing:
        named = [c if wanted[c] == c else f"{c} (mapped from '{wanted[c]}')" for c in missing] + mapped_missing
        raise SchemaError(f"{source}: catalog lacks required column(s) {named}; found {list(raw.columns)[:20]}; "
                          "map yours with a [catalog] section in --mapping or --catalog-map item_id=<column>")
    renamed = raw.rename(columns={src: c for c, src in wanted.items() if src != c and src in raw.columns})
    # keep contract columns plus any extra ones the file has (never two columns of one name)
    return renamed.loc[:, ~renamed.columns.duplicated()]


def to_utc(values: pd.Series, unit: str | None, timezone: str) -> pd.Series:
    """Timestamps as UTC; epoch numbers with `unit`; naive text in `timezone`; unparseable -> NaT."""
    if unit is not None:
        num = pd.to_numeric(values, errors="coerce")
        return pd.to_datetime(num, unit=unit, utc=True, errors="coerce")
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.dt.tz is None:
            return values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
        return values.dt.tz_convert("UTC")
    if timezone == "UTC":
        return values  # validation parses text as UTC (explicit offsets are honoured)
    text = values.astype("string")
    parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    if getattr(parsed.dt, "tz", None) is not None:
        return parsed.dt.tz_convert("UTC")
    return parsed.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")


def pseudonymise(ids: pd.Series, salt: str) -> pd.Series:
    """HMAC-SHA256 of each id keyed by the salt (first 16 hex chars); the salt is never stored with the data.

    HMAC (`hmac` module) is the keyed hash made for this; the former sha256(salt + id) was open to
    length-extension and to ambiguity between salt and id bytes. Pseudonyms written by that scheme (before
    this change) differ: re-ingest the raw files with the same salt so old and new events share user ids."""
    if not salt:
        raise ValueError("pseudonymisation needs a non-empty salt")
    values = ids.astype("string")
    uniq, inverse = np.unique(values.fillna("").to_numpy(dtype=object), return_inverse=True)
    salt_b = salt.encode()
    hashed = np.array([hmac.new(salt_b, str(u).encode(), hashlib.sha256).hexdigest()[:16] if u != "" else ""
                       for u in uniq], dtype=object)
    out = pd.Series(hashed[inverse], index=ids.index, dtype="string")
    return out.mask(values.isna() | (values.str.strip() == ""))
