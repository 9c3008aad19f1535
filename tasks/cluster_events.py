"""The event store read, validated and reduced on the Dask workers: the driver never holds the events.

Blocks of consecutive whole days of the store (all of a day's files in one block, so the duplicate rule sees
every copy of an event: its key includes the timestamp, so copies never span days), read by the worker from the local directory or
the object store with the same filesystem options as `recsys.tasks.data` (the workers need the AWS_*
variables of an S3 store). Each block is validated where it was read; its rejected rows (small, bounded by
the run's threshold) and a few counts come back. A feature state at a cutoff is built in three steps, as the
one-process `build_interaction_data` builds it in one block:

1. ids: each block's first-seen user and item ids come back; concatenated in block order they give the maps
   of the single-process build (first-seen order over the whole store);
2. sums: with the maps broadcast, each block's counts and weights (`InteractionSums`: sparse users x items
   and item/user arrays) are split into interleaved user row parts and each part is summed over the blocks on
   the workers; co-visitation pairs never cross users, so each block's (user, item, time, weight) rows are
   split into user buckets, each bucket's pairs are counted where its pieces meet, split into the item row
   parts of the symmetric matrix, and each part summed over the buckets and normalised on its own (every
   item's mass goes through the driver: one float per item). No worker holds a whole users x items or
   items x items total;
3. finish: only the reduced state's parts (sparse matrices, covis) reach the driver, which puts them back in
   row order and derives the rest.

Label and test windows (a few days of events) are gathered on the driver: the ranker's labels need them.
What the flow logs about the events (counts, time range, data profile, digests) is reduced from per-block
partials (`recsys.features.event_stats`) on the workers; the search model gathers the events of the sessions
with a search only, and the gate asks which of its window's users were seen before (`seen_before`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from recsys.features import schema as S
from recsys.features.covisitation import (normalised_rows, pair_parts, row_mass, sum_pair_parts, symmetric_part,
                                          unstride_rows)
from recsys.features.event_stats import (WindowNumbers, combine_partials, digest_of, in_sessions,
                                         search_session_hashes, users_seen_before, window_counts, window_numbers,
                                         window_partials, window_sample_hashes)
from recsys.features.interactions import (IdIndex, InteractionData, InteractionParams, InteractionSums, combine_sums,
                                          covisitation_inputs,
                                          covisitation_pairs_of, finish_interaction_data, interaction_sums,
                                          state_ids, state_maps, sums_from_parts, sums_parts)
from recsys.features.split import window
from recsys.features.validation import REJECT_RULE, SOURCE_ROW, split_valid_rows
from recsys.tasks.data import COMPACT_ARROW_SCHEMA, COMPACT_COLUMNS, compact_frame, event_dataset, is_remote, store_location
from recsys.tasks.paths import events_dir


def _events_path(base) -> tuple[object, str]:
    if is_remote(base):
        fs, root = store_location(base)
        return fs, f"{root}/events"
    return None, str(events_dir(base))


# Parquet bytes per block: ~19 bytes an event in the synthetic store, so ~3.5M events (a few hundred MiB
# in memory with compact ids) per task; fewer, larger blocks than days cut the per-task overhead
BLOCK_BYTES = 64 << 20
# events per co-visitation bucket (its pairs are counted in one task: ~0.2 KiB per event at the peak)
BUCKET_EVENTS = 2_000_000


def day_files(base) -> list[tuple[str, list[str], int]]:
    """(day, files, bytes) of the store in the single-process read order (the dataset's file order)."""
    fs, path = _events_path(base)
    try:
        files = event_dataset(path, filesystem=fs).files
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as exc:
        raise FileNotFoundError(f"no event store at {path}: run `recsys generate` or `recsys ingest` first "
                                f"({' '.join(str(exc).split())[:200]})") from exc
    sizes = ([Path(f).stat().st_size for f in files] if fs is None else [i.size for i in fs.get_file_info(files)])
    out: list[tuple[str, list[str], int]] = []
    for f, size in zip(files, sizes):
        day = next((p.split("=", 1)[1] for p in f.split("/") if p.startswith(f"{S.DAY}=")), "")
        if out and out[-1][0] == day:
            out[-1][1].append(f)
            out[-1] = (day, out[-1][1], out[-1][2] + size)
        else:
            out.append((day, [f], size))
    return out


def day_blocks(days: list[tuple[str, list[str], int]], workers: int, block_bytes: int = BLOCK_BYTES) -> list[list[str]]:
    """Consecutive whole days grouped into blocks of at most `block_bytes` (a day is never split: the
    duplicate rule needs all of its files), at least two blocks per worker where there are enough days."""
    target = min(block_bytes, max(1, sum(d[2] for d in days) // max(1, 2 * workers)))
    blocks: list[list[str]] = []
    size = 0
    for _, files, nbytes in days:
        if blocks and size + nbytes <= target:
            blocks[-1].extend(files)
            size += nbytes
        else:
            blocks.append(list(files))
            size = nbytes
    return blocks


def read_day(base, files: list[str], end: pd.Timestamp | None, now: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid events, rejected rows) of whole days' files, read on the worker (compact ids)."""
    fs, _ = _events_path(base)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(COMPACT_COLUMNS)))
    flt = ds.field(S.TS) < pa.scalar(end.to_pydatetime(), pa.timestamp("us", tz="UTC")) if end is not None else None
    try:
        table = ds.dataset(files, format=fmt, schema=COMPACT_ARROW_SCHEMA, filesystem=fs).to_table(
            columns=list(S.EVENT_COLUMNS), filter=flt)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"unreadable file in the event store among {files[0]}..: move it out of the store, or "
                         f"re-ingest its source, and rerun: {' '.join(str(exc).split())[:300]}") from exc
    return split_valid_rows(compact_frame(table), now=now)


@dataclass
class BlockInfo:
    rows: int
    rejected: pd.DataFrame
    ts_min: pd.Timestamp | None
    ts_max: pd.Timestamp | None


def _info(read: tuple[pd.DataFrame, pd.DataFrame]) -> BlockInfo:
    valid, rejected = read
    ts = valid[S.TS]
    return BlockInfo(len(valid), rejected, ts.min() if len(ts) else None, ts.max() if len(ts) else None)


def _head(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    return frame.head(n)


def _valid(read: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return read[0]


def _buckets(inputs: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    key = inputs["u"].to_numpy() % n
    return [inputs.loc[key == b] for b in range(n)]


def _bucket(pieces: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(pieces, ignore_index=True)


def concat_compact(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Blocks of compact events as one frame, each categorical column with one sorted dictionary (as the
    single-process read gives it)."""
    frames = [f for f in frames if len(f)] or frames[:1]
    if not frames:
        return pd.DataFrame(columns=list(S.EVENT_COLUMNS))
    out = {}
    for col in frames[0].columns:
        if isinstance(frames[0][col].dtype, pd.CategoricalDtype):
            out[col] = pd.api.types.union_categoricals([f[col] for f in frames], sort_categories=True)
        else:
            out[col] = np.concatenate([f[col].to_numpy() for f in frames])
    frame = pd.DataFrame(out)
    for col in frames[0].columns:
        if not isinstance(frames[0][col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(frames[0][col].dtype)
    return frame


def as_sent(sums: InteractionSums) -> InteractionSums:
    """The summed state as the driver needs it: what `finish_interaction_data` casts to float32 cast here
    (the same values, half the bytes); the last-touch matrix and the ages stay float64 (derived before the cast)."""
    f32 = np.float32
    cast = {name: getattr(sums, name).astype(f32) for name in
            ("weighted", "views", "carts", "purchases", "events_any", "item_pop_7d", "item_pop_28d", "item_pop_all",
             "item_buys_28d", "item_buys_7d", "user_type_counts", "user_events_7d")}
    return replace(sums, covis_pairs=None, **cast)


def _plain_sum(parts: list):
    return sum(parts[1:], parts[0])


def tree_sum(client, futures: list, combine=None, fan_in: int = 8):
    """The sum of the futures' values, `fan_in` at a time on the workers (one future). `combine` adds a list
    in one pass (default: `sum`)."""
    combine = combine or _plain_sum
    futures = list(futures)
    while len(futures) > 1:
        futures = [client.submit(combine, futures[lo:lo + fan_in], pure=False) for lo in range(0, len(futures), fan_in)]
    return futures[0]


class ClusterEvents:
    """The store's events held by the workers, validated blocks of whole days (futures)."""

    def __init__(self, client, blocks: list, infos: list[BlockInfo], catalog: pd.DataFrame):
        self.client, self.blocks, self.infos, self.catalog = client, blocks, infos, catalog

    @classmethod
    def load(cls, client, base, catalog: pd.DataFrame, end: pd.Timestamp | None = None,
             now: pd.Timestamp | None = None, block_bytes: int = BLOCK_BYTES) -> "ClusterEvents":
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        workers = len(client.scheduler_info()["workers"])
        reads = [client.submit(read_day, base, files, end, now, pure=False)
                 for files in day_blocks(day_files(base), workers, block_bytes)]
        blocks = [client.submit(_valid, r, pure=False) for r in reads]
        infos = client.gather([client.submit(_info, r, pure=False) for r in reads])
        del reads  # the (valid, rejected) pairs: the workers keep the valid blocks only
        return cls(client, blocks, infos, catalog)

    @property
    def n_events(self) -> int:
        return sum(i.rows for i in self.infos)

    @property
    def ts_max(self) -> pd.Timestamp:
        return max(i.ts_max for i in self.infos if i.ts_max is not None)

    @property
    def ts_min(self) -> pd.Timestamp:
        return min(i.ts_min for i in self.infos if i.ts_min is not None)

    def rejected(self) -> pd.DataFrame:
        """Every block's rejected rows with their rule (what the single-process run quarantines), their
        `source_row` the row's position in the whole read (as the single-process read numbers them)."""
        parts, offset = [], 0
        for i in self.infos:
            if len(i.rejected):
                parts.append(i.rejected.assign(**{SOURCE_ROW: i.rejected[SOURCE_ROW].to_numpy() + offset}))
            offset += i.rows + len(i.rejected)
        return pd.concat(parts, ignore_index=True) if parts else self.infos[0].rejected.iloc[:0]

    def rejected_counts(self) -> dict[str, int]:
        rej = self.rejected()
        return {str(k): int(v) for k, v in rej[REJECT_RULE].value_counts().items()} if len(rej) else {}

    def _before(self, ref_time: pd.Timestamp) -> list:
        return [b for b, i in zip(self.blocks, self.infos) if i.ts_min is not None and i.ts_min < ref_time]

    def maps(self, ref_time: pd.Timestamp) -> tuple[IdIndex, IdIndex]:
        ids = self.client.gather([self.client.submit(state_ids, b, ref_time, pure=False) for b in self._before(ref_time)])
        return state_maps(self.catalog, [u for u, _ in ids], [i for _, i in ids])

    def state(self, ref_time: pd.Timestamp, params: InteractionParams = InteractionParams(),
              n_buckets: int | None = None) -> InteractionData:
        """`build_interaction_data(events, catalog, ref_time, params)` built on the workers."""
        ref_time = pd.Timestamp(ref_time)
        client, blocks = self.client, self._before(ref_time)
        users, items = self.maps(ref_time)
        if not blocks:  # no event before the cutoff: an empty state (no users)
            return finish_interaction_data(interaction_sums(self.window(None, ref_time), users, items, ref_time, params),
                                           users, items, self.catalog, ref_time, params)
        users_f, items_f = client.scatter([users, items], broadcast=True, hash=False)
        n_events = sum(i.rows for i in self.infos if i.ts_min is not None and i.ts_min < ref_time)
        n_buckets = n_buckets or max(2 * len(client.scheduler_info()["workers"]), -(-n_events // BUCKET_EVENTS))
        parts = n_buckets  # the totals are reduced in this many row parts: no worker holds a whole matrix

        def part(futures: list, p: int) -> list:
            return [client.submit(operator.getitem, f, p, pure=False) for f in futures]

        # users x items sums: each block's split by user; part p summed over the blocks (in block order)
        split = [client.submit(sums_parts, client.submit(interaction_sums, b, users_f, items_f, ref_time, params, False,
                                                         pure=False), parts, pure=False) for b in blocks]
        totals = [client.submit(as_sent, tree_sum(client, part(split, p), combine_sums), pure=False)
                  for p in range(parts)]
        del split
        pieces = [client.submit(_buckets, client.submit(covisitation_inputs, b, users_f, items_f, ref_time, params,
                                                        pure=False), n_buckets, pure=False) for b in blocks]
        # bucket b meets its piece of every block (in block order: each user's events keep the store's order);
        # its pairs are split into the row parts of the symmetric matrix, each part summed over the buckets
        pairs = [client.submit(pair_parts, client.submit(
            covisitation_pairs_of, client.submit(_bucket, part(pieces, b), pure=False), len(items), params,
            pure=False), parts, pure=False) for b in range(n_buckets)]
        del pieces
        sym = [client.submit(symmetric_part, tree_sum(client, part(pairs, p), sum_pair_parts), pure=False)
               for p in range(parts)]
        del pairs
        # normalising needs every item's mass: gathered (one float per item), then each part finished where it is
        mass = unstride_rows(client.gather([client.submit(row_mass, m, pure=False) for m in sym]))
        mass_f = client.scatter(mass, broadcast=True, hash=False)
        n_items = len(items)
        finished = [client.submit(normalised_rows, m, np.arange(p, n_items, parts), mass_f, params.covisitation,
                                  pure=False) for p, m in enumerate(sym)]
        covis = unstride_rows(client.gather(finished))
        del finished, sym
        total = sums_from_parts(client.gather(totals))
        del totals
        return finish_interaction_data(total, users, items, self.catalog, ref_time, params, covis=covis)

    def stats(self, windows: dict[str, tuple]) -> tuple[dict[str, WindowNumbers], dict[str, str]]:
        """Each window's (name -> (start or None, end or None)) numbers and digest, reduced on the workers:
        the same values as `event_stats.window_numbers` / `events_digest` of the whole frame's window."""
        client = self.client
        partials = [client.submit(window_partials, b, windows, pure=False) for b in self.blocks]
        counts = client.gather([client.submit(window_counts, p, pure=False) for p in partials])
        numbers_f = client.submit(window_numbers, tree_sum(client, partials, combine_partials), pure=False)
        totals = {name: sum(c[name] for c in counts) for name in windows}
        samples: dict[str, list] = {name: [] for name in windows}
        for name, (start, end) in windows.items():
            offset = 0
            for block, c in zip(self.blocks, counts):
                if c[name]:
                    samples[name].append(client.submit(window_sample_hashes, block, start, end, offset, totals[name],
                                                       pure=False))
                offset += c[name]
        numbers = numbers_f.result()
        samples = client.gather(samples)
        digests = {name: digest_of(totals[name], numbers[name].ts_min, numbers[name].ts_max,
                                   np.concatenate(samples[name]) if samples[name] else np.empty(0, np.uint64))
                   for name in windows}
        return numbers, digests

    def head(self, n: int) -> pd.DataFrame:
        """The first `n` events (a schema sample)."""
        return self.client.submit(_head, self.blocks[0], n, pure=False).result()

    def search_events(self) -> pd.DataFrame:
        """The events of the sessions with a search, gathered in store order: all that `search_sessions`
        reads (its result on them equals its result on every event)."""
        client = self.client
        hashes = client.submit(np.unique, client.submit(
            np.concatenate, [client.submit(search_session_hashes, b, pure=False) for b in self.blocks], pure=False),
            pure=False)
        return concat_compact(client.gather([client.submit(in_sessions, b, hashes, pure=False) for b in self.blocks]))

    def seen_before(self, user_ids: list[str], start: pd.Timestamp) -> np.ndarray:
        """Which of `user_ids` have an event before `start` (a mask)."""
        ids = pd.Series(user_ids, dtype=object)
        hashes = pd.util.hash_pandas_object(ids, index=False).to_numpy()
        wanted = np.unique(hashes)
        keep = [b for b, i in zip(self.blocks, self.infos) if i.ts_min is not None and i.ts_min < start]
        if not keep or not len(wanted):
            return np.zeros(len(user_ids), dtype=bool)
        wanted_f = self.client.scatter(wanted, broadcast=True, hash=False)
        seen = self.client.gather([self.client.submit(users_seen_before, b, start, wanted_f, pure=False) for b in keep])
        return np.isin(hashes, np.concatenate(seen))

    def close(self) -> None:
        """Release the blocks and the connection."""
        self.client.cancel(self.blocks)
        self.blocks = []
        self.client.close()

    def window(self, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
        """Events with start <= ts < end gathered on the driver (a label or test window: a few days)."""
        keep = [b for b, i in zip(self.blocks, self.infos) if i.ts_min is not None and i.ts_min < end
                and (start is None or i.ts_max >= start)] or self.blocks[:1]
        return concat_compact(self.client.gather([self.client.submit(window, b, start, end, pure=False) for b in keep]))
