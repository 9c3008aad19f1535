"""The model the service follows: `ModelHolder` loads the alias's version off the request path, checks it
(`warm_up_and_check`) and swaps it in atomically; what the service says about it (why a version is not
served, when a failed one is tried again) and error texts without the machine's absolute paths (they go to
the log, not to clients)."""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from recsys.serving.metrics import ServiceMetrics

log = logging.getLogger("recsys.serving")

# an absolute path, alone or in a file:/sqlite: URI; not the path part of an http(s) URL or `models:/name/1`
_ABS_PATH = re.compile(r"(?:\b(?:file|sqlite):/*|(?<![\w.:/~-]))/[^\s'\"()<>,;:]+")


def public_text(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last component (`.../MLmodel`)."""

    def short(m: re.Match) -> str:
        name = m.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f".../{name}" if name else "..."

    return _ABS_PATH.sub(short, text)


def describe_lookup_error(exc: BaseException, name: str, alias: str) -> str:
    """One line naming why the alias could not be read: nothing registered yet, or the registry is down."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return f"no '{alias}' alias for model '{name}' yet: the registry has no model of that name"
    if code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc):
        return f"no '{alias}' alias for model '{name}' yet: train and promote a version"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return public_text(f"model registry unreachable, cannot read '{name}@{alias}' "
                       f"({type(exc).__name__}: {first[:300]}); serving what is loaded, retrying every poll")


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after `attempts` failed loads of one version: base, 2*base, 4*base ... max."""
    return min(max_s, base_s * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class LoadFailure:
    version: str
    error: str
    attempts: int
    retry_at: float  # time.monotonic() when the version is tried again


@dataclass(frozen=True)
class LoadedModel:
    recommender: object
    index: object  # recsys.models.session.ServingIndex
    name: str
    version: str
    run_id: str | None
    loaded_at: float


def _registry_lookup(name: str, alias: str):
    from recsys.tasks import tracking

    mv = tracking.client().get_model_version_by_alias(name, alias)
    return str(mv.version), mv.run_id


def _registry_load(name: str, version: str):
    from recsys.tasks import tracking

    return tracking.load_recommender(name, version)


def warm_up_and_check(rec) -> object:
    """Build the per-model serving index, run every request kind once on a fixed sample, and fail
    loudly if any answer is empty: a model that cannot answer is never swapped in."""
    from recsys.models.search import search, similar_items
    from recsys.models.session import build_serving_index, recommend_session, recommend_user

    index = build_serving_index(rec)
    data = rec.data
    data.users.position("")  # build the id -> position maps now, not on the first request
    data.items.position("")
    sample_users = list(range(min(5, data.n_users))) + [-1]
    for u in sample_users:
        if len(recommend_user(rec, index, u, 10).items) == 0:
            raise RuntimeError(f"sanity check failed: no recommendations for user index {u}")
    pop = rec.cold_start(3)[0]
    pop = pop[pop >= 0]
    if len(pop) == 0:
        raise RuntimeError("sanity check failed: the popularity fallback is empty")
    if len(recommend_session(rec, index, -1, pop, ["view"] * len(pop), 10).items) == 0:
        raise RuntimeError("sanity check failed: no recommendations for a session")
    if len(similar_items(rec, index, int(pop[0]), 10).items) == 0:
        raise RuntimeError("sanity check failed: no similar items")
    words = re.findall(r"\w+", str(data.item_titles[pop[0]]) if len(data.item_titles) else "")
    if words and len(search(rec, index, words[0], 0 if data.n_users else -1, 10).items) == 0:
        raise RuntimeError(f"sanity check failed: search for '{words[0]}' found nothing")
    return index


class ModelHolder:
    """Holds the served model; `refresh` loads a new version off the request path, checks it, then
    swaps the reference (one assignment: a request sees the old or the new model, never a mix).

    A version that fails to load is tried again when the alias leaves it and comes back, and otherwise
    after an exponential backoff (`retry_base_s`, doubling up to `retry_max_s`): files repaired in place
    are picked up without a restart, and a broken version is not reloaded on every poll."""

    def __init__(self, name: str, alias: str = "champion", lookup: Callable = _registry_lookup,
                 loader: Callable = _registry_load, metrics: ServiceMetrics | None = None,
                 retry_base_s: float = 60.0, retry_max_s: float = 900.0, clock: Callable[[], float] = time.monotonic):
        self.name, self.alias = name, alias
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.failure: LoadFailure | None = None
        self.retry_base_s, self.retry_max_s, self._clock = retry_base_s, retry_max_s, clock
        self._lookup, self._loader, self._metrics = lookup, loader, metrics
        self._lock = threading.Lock()

    @property
    def failed_version(self) -> str | None:
        return self.failure.version if self.failure else None

    def retry_in_s(self) -> float | None:
        return None if self.failure is None else round(max(0.0, self.failure.retry_at - self._clock()), 1)

    def refresh(self) -> bool:
        """Load the alias's version if it changed; True when a swap happened. Never raises."""
        with self._lock:
            try:
                version, run_id = self._lookup(self.name, self.alias)
            except Exception as exc:  # no model / no alias yet / registry down: stay as we are
                self.last_error = describe_lookup_error(exc, self.name, self.alias)
                log.warning("%s", self.last_error)
                return False
            if self.failure is not None and self.failure.version != version:
                self.failure = None  # the alias left the failed version: coming back to it retries at once
            if self.current is not None and self.current.version == version:
                self.last_error = None
                return False
            if self.failure is not None and self._clock() < self.failure.retry_at:
                self.last_error = self.failure.error  # a known-bad version: not reloaded on every poll
                return False
            t0 = time.perf_counter()
            try:
                rec = self._loader(self.name, version)
                index = warm_up_and_check(rec)
            except Exception as exc:
                attempts = self.failure.attempts + 1 if self.failure else 1
                error = public_text(f"loading version {version} failed: {type(exc).__name__}: {exc}")
                self.failure = LoadFailure(version, error, attempts, self._clock() +
                                           retry_delay_s(attempts, self.retry_base_s, self.retry_max_s))
                self.last_error = error
                log.error("keeping version %s of %s@%s: loading version %s failed (attempt %d, next in %.0fs)",
                          self.current and self.current.version, self.name, self.alias, version, attempts,
                          self.retry_in_s(), exc_info=True)
                if self._metrics:
                    self._metrics.load_failures.labels(self.alias).inc()
                return False
            self.current = LoadedModel(rec, index, self.name, version, run_id, time.time())
            self.last_error, self.failure = None, None
            # the model's objects live until the next swap: keep them out of the cyclic GC's scans, whose
            # full collections would otherwise show up as latency spikes (unfreeze first, so that the
            # previous model's cycles are collected rather than kept forever)
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            if self._metrics:
                self._metrics.swaps.labels(self.alias).inc()
                self._metrics.model_version.labels(self.alias).set(float(version) if version.isdigit() else -1)
            log.warning("now serving %s@%s version %s (loaded and checked in %.1fs)", self.name, self.alias,
                        version, time.perf_counter() - t0)
            return True

    def poll_forever(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # refresh never raises; this is the last line of defence for the poller
                log.exception("alias poll failed")
