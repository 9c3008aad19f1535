"""What a model was trained on: data identity (the event store's name and a fingerprint of its catalogue) and
its training end. Recorded as registry version tags; the gate reads them back to decide whether two models
may be compared at all, and on which window (recsys.models.gate.fair_window)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SKETCH_SIZE = 64  # bottom-k MinHash sketch of the catalogue's item ids (a Jaccard estimate within ~0.06)
_PREFIX = "lineage."


def catalog_fingerprint(item_ids: Iterable) -> str:
    """SHA-256 (16 hex) of the sorted distinct item ids: equal iff the catalogues hold the same ids."""
    ids = np.unique(np.asarray([str(i) for i in item_ids], dtype=object).astype(str))
    return hashlib.sha256("\n".join(ids.tolist()).encode()).hexdigest()[:16]


def catalog_sketch(item_ids: Iterable, size: int = SKETCH_SIZE) -> tuple[int, ...]:
    """The `size` smallest 64-bit hashes of the distinct item ids (bottom-k MinHash)."""
    ids = pd.Series(list(item_ids), dtype=object).astype(str).unique()
    hashes = np.unique(pd.util.hash_array(np.asarray(ids, dtype=object)))
    return tuple(int(h) for h in hashes[:size])


def sketch_similarity(a: tuple[int, ...], b: tuple[int, ...], size: int = SKETCH_SIZE) -> float:
    """Estimated Jaccard similarity of two catalogues from their bottom-k sketches."""
    if not a or not b:
        return 0.0
    union = sorted(set(a) | set(b))[:size]
    both = set(a) & set(b)
    return sum(h in both for h in union) / len(union)


@dataclass(frozen=True)
class Lineage:
    """Data identity + training end of one registered version (None where an old version did not record it)."""

    dataset: str | None = None  # the event store's name: its data directory's name
    data_dir: str | None = None
    catalog_fingerprint: str | None = None
    catalog_items: int | None = None
    catalog_sketch: tuple[int, ...] = ()
    train_end: pd.Timestamp | None = None  # exclusive end of every event the model learnt from (labels included)

    @property
    def identity(self) -> str | None:
        return f"{self.dataset}:{self.catalog_fingerprint}" if self.dataset and self.catalog_fingerprint else None

    def as_tags(self) -> dict[str, str]:
        tags = {"dataset": self.dataset, "data_dir": self.data_dir, "catalog_fingerprint": self.catalog_fingerprint,
                "catalog_items": self.catalog_items, "data_identity": self.identity,
                "catalog_sketch": ",".join(f"{h:x}" for h in self.catalog_sketch) or None,
                "train_end": self.train_end.isoformat() if self.train_end is not None else None}
        return {_PREFIX + k: str(v) for k, v in tags.items() if v is not None}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "Lineage":
        def get(key: str) -> str | None:
            return tags.get(_PREFIX + key) or None

        end = get("train_end") or tags.get("train_cutoff")  # versions registered before lineage tags
        sketch = tuple(int(h, 16) for h in get("catalog_sketch").split(",")) if get("catalog_sketch") else ()
        return cls(dataset=get("dataset"), data_dir=get("data_dir"), catalog_fingerprint=get("catalog_fingerprint"),
                   catalog_items=int(get("catalog_items")) if get("catalog_items") else None, catalog_sketch=sketch,
                   train_end=_utc(end) if end else None)

    @classmethod
    def of(cls, data_dir: str | Path, catalog_item_ids: Iterable, train_end: pd.Timestamp) -> "Lineage":
        ids = list(catalog_item_ids)
        if "://" in str(data_dir):  # an object-store location (s3://bucket/shop): its last segment names it
            location = str(data_dir).rstrip("/")
            name = location.rsplit("/", 1)[-1]
        else:
            path = Path(data_dir).expanduser().resolve()
            location, name = str(path), path.name
        return cls(dataset=name, data_dir=location, catalog_fingerprint=catalog_fingerprint(ids),
                   catalog_items=len(set(map(str, ids))), catalog_sketch=catalog_sketch(ids),
                   train_end=_utc(train_end))


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
