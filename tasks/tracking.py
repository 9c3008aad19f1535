"""MLflow: experiment, runs, batched logging, the pyfunc model, the registry and its aliases."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from models.pyfunc import ARTIFACT_KEY, recommendations_frame
from models.two_stage import TwoStageRecommender
from tasks.paths import artifact_root, lock_path, tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
_BATCH = 900  # log_batch accepts at most 1000 entries per call
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def client() -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def ensure_experiment(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")
    except MlflowException:  # created concurrently
        return c.get_experiment_by_name(name).experiment_id


def start_run(experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    c = client()
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return c.create_run(ensure_experiment(experiment), run_name=run_name, tags=all_tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


def log_params(run_id: str, params: dict) -> None:
    entries = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(entries), 90):
        client().log_batch(run_id, params=entries[i:i + 90])


def log_tags(run_id: str, tags: dict) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
    for i in range(0, len(entries), _BATCH):
        client().log_batch(run_id, metrics=entries[i:i + _BATCH])


def log_history(run_id: str, history: dict[str, list[float]], prefix: str) -> None:
    """Per-iteration curves, one metric key per curve, `step` = iteration, batched."""
    now = int(time.time() * 1000)
    entries = [Metric(f"{prefix}.{name}", float(v), now, step)
               for name, values in history.items() for step, v in enumerate(values)]
    for i in range(0, len(entries), _BATCH):
        client().log_batch(run_id, metrics=entries[i:i + _BATCH])


def log_dict(run_id: str, payload: dict, artifact_file: str) -> None:
    client().log_dict(run_id, payload, artifact_file)


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    client().log_figure(run_id, figure, artifact_file)


def log_model(run_id: str, recommender: TwoStageRecommender, example_user_ids: list[str], k: int) -> str:
    """Log the recommender as a pyfunc (own formats, no pickled model state); returns the model URI."""
    client()
    example = pd.DataFrame({"user_id": [str(u) for u in example_user_ids[:3]]})
    output = recommendations_frame(recommender.recommend_ids(example["user_id"].tolist(), k))
    signature = infer_signature(example, output, params={"k": k})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "recommender"
        recommender.save(model_dir)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(_PROJECT_ROOT / "models" / "pyfunc_model.py"), artifacts={ARTIFACT_KEY: str(model_dir)},
                code_paths=[str(_PROJECT_ROOT / "models"), str(_PROJECT_ROOT / "features")],
                signature=signature, input_example=example, pip_requirements=_pip_requirements())
    return info.model_uri


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in
            ("mlflow", "implicit", "lightgbm", "pandas", "numpy", "scipy", "pyarrow", "threadpoolctl")]


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
    mv = mlflow.register_model(model_uri, name, tags={**tags, "run_id": run_id})
    return str(mv.version)


def alias_version(name: str, alias: str = CHAMPION) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_recommender(name: str, version: str) -> TwoStageRecommender:
    client()
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().recommender


def set_version_tags(name: str, version: str, tags: dict) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def move_champion(name: str, version: str, reason: str, actor: str | None = None) -> str | None:
    """Point `champion` at `version`, keep the old one as `previous`; returns the old version."""
    c = client()
    old = alias_version(name, CHAMPION)
    if old is not None and old != str(version):
        c.set_registered_model_alias(name, PREVIOUS, old)
    c.set_registered_model_alias(name, CHAMPION, str(version))
    set_version_tags(name, version, {"promoted_by": actor or getpass.getuser(), "promotion_reason": reason,
                                     "promoted_at": pd.Timestamp.now(tz="UTC").isoformat()})
    return old


@contextlib.contextmanager
def gate_lock(name: str, timeout_s: float = 600.0):
    """Serialise promotion decisions for one registered model across processes."""
    path = lock_path(f"gate-{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another run holds the promotion lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def dumps(payload) -> str:
    return json.dumps(payload, indent=2, default=str)
