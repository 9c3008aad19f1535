"""HTTP service for the registry's champion. Follows the alias by polling and swaps atomically."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Path, Query

log = logging.getLogger("recsys.serving")

MAX_ID_LENGTH = 128
MAX_K = 100


@dataclass(frozen=True)
class LoadedModel:
    recommender: object
    name: str
    version: str
    run_id: str | None
    loaded_at: float


class ModelHolder:
    """Holds the served model; `refresh` loads a new champion off the request path, then swaps."""

    def __init__(self, name: str, alias: str = "champion"):
        self.name, self.alias = name, alias
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the alias's version if it changed; True when a swap happened."""
        from tasks import tracking

        with self._lock:
            try:
                mv = tracking.client().get_model_version_by_alias(self.name, self.alias)
            except Exception as exc:  # no model / no alias yet: stay as we are
                self.last_error = f"no '{self.alias}' alias for model '{self.name}' yet ({type(exc).__name__})"
                return False
            if self.current is not None and self.current.version == str(mv.version):
                return False
            try:
                rec = tracking.load_recommender(self.name, str(mv.version))
                sample = rec.data.users.ids[:5].tolist() + ["__unknown_user__"]
                check = rec.recommend_ids(sample, 10)  # warm-up and sanity check on a fixed sample
                if not all(r["items"] for r in check):
                    raise RuntimeError("sanity check failed: empty recommendations on the warm-up sample")
            except Exception as exc:
                self.last_error = f"loading version {mv.version} failed: {type(exc).__name__}: {exc}"
                log.exception("keeping version %s: %s", self.current and self.current.version, self.last_error)
                return False
            self.current = LoadedModel(rec, self.name, str(mv.version), mv.run_id, time.time())
            self.last_error = None
            log.info("now serving %s version %s", self.name, mv.version)
            return True

    def poll_forever(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            self.refresh()


def create_app(model_name: str = "recsys", alias: str = "champion", poll_interval_s: float = 30.0) -> FastAPI:
    holder = ModelHolder(model_name, alias)
    stop = threading.Event()

    async def lifespan(app: FastAPI):
        threading.Thread(target=holder.refresh, daemon=True, name="initial-load").start()
        if poll_interval_s > 0:
            threading.Thread(target=holder.poll_forever, args=(poll_interval_s, stop), daemon=True,
                             name="alias-poller").start()
        yield
        stop.set()

    app = FastAPI(title="recsys", description="Recommendations from the MLflow registry's champion.",
                  lifespan=lifespan)
    app.state.holder = holder

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict:
        if holder.current is None:
            raise HTTPException(503, detail=f"not ready: {holder.last_error or 'loading the champion'}")
        return {"status": "ready", "version": holder.current.version}

    @app.get("/version")
    def version() -> dict:
        cur = holder.current
        return {"model_name": model_name, "alias": alias, "version": cur and cur.version,
                "run_id": cur and cur.run_id, "loaded_at": cur and time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(cur.loaded_at)), "last_error": holder.last_error}

    @app.get("/recommendations/{user_id}")
    def recommendations(user_id: str = Path(..., min_length=1, max_length=MAX_ID_LENGTH),
                        k: int = Query(10, ge=1, le=MAX_K, description="number of items")) -> dict:
        cur = holder.current
        if cur is None:
            raise HTTPException(503, detail="no model loaded yet: train and promote a champion first")
        rec = cur.recommender.recommend_ids([user_id], k)[0]
        return {"request_id": uuid.uuid4().hex, "user_id": user_id, "model_version": cur.version,
                "strategy": rec["strategy"],
                "items": [{"item_id": i, "score": round(s, 6), "strategy": rec["strategy"]}
                          for i, s in zip(rec["items"], rec["scores"])]}

    return app
