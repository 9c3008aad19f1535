"""Reading a raw input file without changing it: Parquet or CSV (plain or gzip, found by magic bytes), the
text encoding (UTF-8 when the whole file decodes, else Latin-1), the CSV delimiter (sniffed), a digest of
the bytes, and the rows as chunks numbered by their data row. Every problem is one `IngestError` line that
names the file and, where there is one, the row."""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.validation import SOURCE_ROW

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_DELIMITERS = ",;\t|"


class IngestError(ValueError):
    """The input cannot be ingested; the message is one line that says what and where."""


@dataclass(frozen=True)
class InputInfo:
    path: Path
    kind: str  # "csv" | "parquet"
    gzip: bool
    encoding: str
    delimiter: str
    digest: str


def _open_text_bytes(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _scan(path: Path, compressed: bool, want_utf8_check: bool) -> tuple[str, bool, bytes]:
    """(sha256 of the file bytes, decodes as UTF-8, first 64 KiB of content); reads the file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    head = b""
    utf8 = True
    try:
        with _open_text_bytes(path, compressed) as fh:
            decoder = codecs.getincrementaldecoder("utf-8")()
            first = True
            for block in iter(lambda: fh.read(1 << 20), b""):
                if first:
                    head, first = block[:1 << 16], False
                if want_utf8_check and utf8:
                    try:
                        decoder.decode(block)
                    except UnicodeDecodeError:
                        utf8 = False
                elif not want_utf8_check:
                    break
            if want_utf8_check and utf8:
                decoder.decode(b"", final=True)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IngestError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    except UnicodeDecodeError:
        utf8 = False
    return digest.hexdigest()[:16], utf8, head


def inspect_input(path: str | Path, encoding: str = "auto", delimiter: str | None = None) -> InputInfo:
    """Check the file exists and is non-empty; detect Parquet/gzip by magic bytes, the text encoding
    (auto: UTF-8 if the whole file decodes, else Latin-1) and the CSV delimiter (sniffed)."""
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{p}: no such file")
    if p.is_dir():
        raise IngestError(f"{p}: is a directory, expected a CSV, CSV.gz or Parquet file")
    if p.stat().st_size == 0:
        raise IngestError(f"{p}: the file is empty")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == _PARQUET_MAGIC:
        digest, _, _ = _scan(p, False, False)
        return InputInfo(p, "parquet", False, "utf-8", ",", digest)
    compressed = magic[:2] == _GZIP_MAGIC
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise IngestError(f"unknown encoding '{encoding}'") from None
    digest, utf8, head = _scan(p, compressed, encoding == "auto")
    if not head.strip():
        raise IngestError(f"{p}: the file is empty" + (" (after decompression)" if compressed else ""))
    enc = encoding if encoding != "auto" else ("utf-8" if utf8 else "latin-1")
    text = head.decode(enc, errors="replace")
    if delimiter is None:
        lines = text.splitlines()
        sample = "\n".join(lines[:50] if len(lines) > 1 else lines)
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
        except csv.Error:
            delimiter = ","
    return InputInfo(p, "csv", compressed, enc, delimiter, digest)


def _check_header(info: InputInfo, columns: list[str]) -> None:
    if len(columns) == 1:
        others = [d for d in _DELIMITERS if d != info.delimiter and d in columns[0]]
        if others:
            raise IngestError(f"{info.path}: only one column {columns[0][:60]!r} with delimiter "
                              f"{info.delimiter!r}; the file seems to use {others[0]!r} (pass --delimiter)")


def iter_chunks(info: InputInfo, chunk_rows: int, dtype: dict | str | None = "string") -> Iterator[pd.DataFrame]:
    """The file as DataFrames of at most `chunk_rows` rows (text columns as strings), each with
    SOURCE_ROW = the 0-based data row number (header excluded)."""
    start = 0
    try:
        if info.kind == "parquet":
            try:
                pf = pq.ParquetFile(info.path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise IngestError(f"{info.path}: unreadable Parquet file ({exc})") from None
            for batch in pf.iter_batches(batch_size=chunk_rows):
                frame = batch.to_pandas()
                frame[SOURCE_ROW] = np.arange(start, start + len(frame))
                start += len(frame)
                yield frame
            return
        reader = pd.read_csv(info.path, sep=info.delimiter, encoding=info.encoding, dtype=dtype,
                             compression="gzip" if info.gzip else None, chunksize=chunk_rows,
                             keep_default_na=False, na_values=[""], skipinitialspace=True)
        with reader:
            for frame in reader:
                if start == 0:
                    _check_header(info, list(frame.columns))
                frame = frame.reset_index(drop=True)
                frame[SOURCE_ROW] = np.arange(start, start + len(frame))
                start += len(frame)
                yield frame
    except pd.errors.EmptyDataError:
        raise IngestError(f"{info.path}: no header line / no columns") from None
    except pd.errors.ParserError as exc:
        raise IngestError(f"{info.path}: malformed CSV near data row {start}: "
                          f"{str(exc).strip().splitlines()[-1]}") from None
    except UnicodeDecodeError as exc:
        raise IngestError(f"{info.path}: not {info.encoding} text ({exc.reason} at byte {exc.start}); "
                          "try --encoding latin-1") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IngestError(f"{info.path}: truncated or corrupt gzip file ({exc})") from None
