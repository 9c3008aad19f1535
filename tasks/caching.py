"""Resumable runs: cache keys built from the input data digest + the parameters that matter + the code,
and a result store under $RECSYS_HOME, so a rerun after a crash reuses every finished stage.

Keys are cheap to compute (no hashing of DataFrames): `LoadedData.digest` already fingerprints the
events, the model is identified by its ranker's serialized trees. Results are pickled (cloudpickle) by
Prefect into `$RECSYS_HOME/prefect/results/<task>-<hash>` (the trained model streamed into
`results/objects/`, `StreamedPickle`); delete that folder to drop the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path

from prefect.serializers import Serializer
from pydantic import Field

from recsys.tasks.paths import recsys_home

_ROOT = Path(__file__).resolve().parent.parent
# the code whose change must invalidate cached training/evaluation results
_CODE_DIRS = ("features", "models")


def results_dir() -> Path:
    return recsys_home() / "prefect" / "results"


class _ResultsPath(type(Path())):
    """`Path` to the result store resolved at run time from RECSYS_HOME, not at import: Prefect accepts a
    Path as task result storage (a LocalFileSystem on `str(path)` when results are read or written), and
    tests and workers set RECSYS_HOME after the task decorators ran."""

    def __str__(self) -> str:
        return str(results_dir())

    def __fspath__(self) -> str:
        return str(results_dir())

    def __repr__(self) -> str:
        return "ResultsPath($RECSYS_HOME/prefect/results)"


RESULTS = _ResultsPath("$RECSYS_HOME/prefect/results")


class StreamedPickle(Serializer):
    """Prefect result serializer for large results (the trained model): the object is pickled straight into
    its own file next to the result record (`objects/<uuid>.pkl`), and the record holds only that file's name.
    Prefect's `PickleSerializer` builds the whole pickle in memory and then its base64 text (at 3e7 events a
    2.8 GB pickle: ~6 GiB on top of the model at the end of training); streamed, arrays go to the file
    without a second copy. Same object back (cloudpickle, as Prefect's default)."""

    type: str = Field(default="recsys-streamed-pickle", frozen=True)

    def dumps(self, obj) -> bytes:
        import cloudpickle

        directory = results_dir() / "objects"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4().hex}.pkl"
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as f:
            cloudpickle.dump(obj, f, protocol=5)
        partial.replace(path)  # a crash mid-write leaves no file a record could point at
        return json.dumps({"file": path.name}).encode()

    def loads(self, blob: bytes):
        import cloudpickle

        with open(results_dir() / "objects" / json.loads(blob)["file"], "rb") as f:
            return cloudpickle.load(f)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Digest of the pure code (features/, models/): a code change retrains instead of reusing."""
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for path in sorted((_ROOT / d).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _plain(value):
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def make_key(stage: str, **parts) -> str:
    payload = json.dumps({k: _plain(v) for k, v in sorted(parts.items())}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256((payload + code_version()).encode()).hexdigest()[:24]}"


def data_fingerprint(data) -> dict:
    """Events digest + catalog size/ids hash of a `LoadedData`."""
    import pandas as pd

    catalog = data.catalog
    ids = pd.util.hash_pandas_object(catalog.iloc[:, 0], index=False).to_numpy() if len(catalog) else []
    return {"events": data.digest, "catalog_rows": len(catalog),
            "catalog_ids": hashlib.sha256(bytes(memoryview(ids))).hexdigest()[:16] if len(catalog) else ""}


def model_fingerprint(rec) -> str:
    """Identity of a trained two-stage model: its ranker trees (deterministic text) + its user/item index."""
    h = hashlib.sha256(rec.booster.model_to_string().encode())
    h.update(str(len(rec.data.users.ids)).encode() + str(len(rec.data.items.ids)).encode())
    return h.hexdigest()[:16]


def train_key(context, parameters: dict) -> str:
    """train-two-stage(data, split, config): same data, same window, same model params -> same model."""
    config = parameters["config"]
    # the Dask path trains its ranker with lightgbm.dask (equal within a tolerance, not bit for bit)
    runner = {"runner": "dask"} if getattr(config, "dask", None) is not None and config.dask.enabled else {}
    imp = parameters.get("impressions")
    feedback = {} if imp is None else {"feedback": getattr(config, "feedback", None),
                                       "impressions": impressions_fingerprint(imp)}
    return make_key("train-two-stage", data=data_fingerprint(parameters["data"]), split=parameters["split"],
                    model=config.model, **runner, **feedback)


def impressions_fingerprint(impressions) -> str:
    """Rows + a hash of what was shown to whom when (the training inputs of the exposure features)."""
    import pandas as pd

    cols = [c for c in ("request_id", "ts", "user_id", "item_id", "position") if c in impressions]
    h = pd.util.hash_pandas_object(impressions[cols], index=False).to_numpy() if len(impressions) else []
    return f"{len(impressions)}:" + hashlib.sha256(bytes(memoryview(h))).hexdigest()[:16]


def evaluate_key(context, parameters: dict) -> str:
    """evaluate(rec, data, split, k, params): the model's identity + the data + the window + k + the users."""
    return make_key("evaluate", model=model_fingerprint(parameters["rec"]), data=data_fingerprint(parameters["data"]),
                    split=parameters["split"], k=parameters["k"], users=parameters.get("params"))
