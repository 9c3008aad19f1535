"""MLflow: experiment, runs, batched logging, the pyfunc model, the registry and its aliases."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from recsys.models.pyfunc import ARTIFACT_KEY, recommendations_frame
from recsys.models.two_stage import TwoStageRecommender
from recsys.tasks.paths import artifact_root, lock_path, tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
_BATCH = 900  # log_batch accepts at most 1000 entries per call
# the `recsys` package's folder when installed (site-packages/recsys); the checkout's root otherwise
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SUBPACKAGES = ("features", "models", "tasks", "flows", "serving")


def client() -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def ensure_experiment(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # a tracking server decides where artifacts go (its --artifacts-destination, proxied); a local store
    # would put them under the current directory, so point it into RECSYS_HOME
    remote = tracking_uri().startswith(("http://", "https://", "databricks"))
    location = None if remote and not os.environ.get("RECSYS_ARTIFACT_ROOT") else f"{artifact_root()}/{name}"
    try:
        return c.create_experiment(name, artifact_location=location)
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


STAGES = ("data", "recall", "rank", "evaluate", "gate")


def start_child_run(parent_run_id: str, stage: str, tags: dict[str, str] | None = None,
                    run_name: str | None = None) -> str:
    """A child run for one stage, in the parent's experiment; named `<n> <stage>` so the UI lists them in order."""
    c = client()
    parent = c.get_run(parent_run_id)
    order = STAGES.index(stage) + 1 if stage in STAGES else len(STAGES) + 1
    all_tags = {"mlflow.parentRunId": parent_run_id, "stage": stage,
                **{k: v for k, v in parent.data.tags.items() if k in _INHERITED_TAGS}, **(tags or {})}
    return c.create_run(parent.info.experiment_id, run_name=run_name or f"{order} {stage}", tags=all_tags).info.run_id


_INHERITED_TAGS = ("flow", "data_window", "dataset_digest", "code_version", "config_hash", "prefect.flow_run_id")


@contextlib.contextmanager
def child_run(parent_run_id: str, stage: str, tags: dict[str, str] | None = None):
    """Yield a child run id; FINISHED on success, FAILED with the reason on error."""
    run_id = start_child_run(parent_run_id, stage, tags)
    try:
        yield run_id
    except BaseException as exc:
        close_failed(run_id, exc)
        raise
    end_run(run_id, "FINISHED")


def close_failed(run_id: str, error: BaseException, attempts: int = 3) -> bool:
    """Mark a run FAILED with the reason, without raising over `error` (a full disk or a store outage can
    make these writes fail too): the status first, the tag when it fits. False if the run stays open."""
    ended = False
    for attempt in range(attempts):
        try:
            end_run(run_id, "FAILED")
            ended = True
            break
        except Exception as exc:  # noqa: BLE001 - report below, never mask `error`
            last = exc
            time.sleep(0.5 * (attempt + 1))
    if not ended:
        log.error("could not mark MLflow run %s FAILED (%s); it shows RUNNING until it is closed", run_id, last)
        return False
    try:
        log_tags(run_id, {"failure": f"{type(error).__name__}: {error}"[:4000]})
    except Exception as exc:  # noqa: BLE001
        log.warning("run %s: could not record the failure reason: %s", run_id, exc)
    return True


def log_dataset_inputs(run_id: str, datasets: list[dict]) -> None:
    """Dataset inputs (name, digest, source, schema, profile, context) for the run's Datasets panel.

    Each entry: name, context ("train"/"label"/"test"), sample (a small frame: only its schema is used),
    digest (of the real data), source (a path or URI), profile (a small dict: rows, users, ...)."""
    import mlflow.data
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.utils import _infer_schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    import warnings

    inputs = []
    for d in datasets:
        with warnings.catch_warnings():  # the integer-column hint is about model signatures, not lineage
            warnings.simplefilter("ignore")
            schema = _infer_schema(d["sample"])
        meta = MetaDataset(source=_dataset_source(d["source"]), name=d["name"], digest=d["digest"], schema=schema)
        entity = meta._to_mlflow_entity()
        entity = Dataset(name=entity.name, digest=d["digest"], source_type=entity.source_type, source=entity.source,
                         schema=entity.schema, profile=json.dumps(d.get("profile") or {}, default=str))
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]))
    client().log_inputs(run_id, datasets=inputs)


def _dataset_source(source: str):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # a local path matches several equivalent resolvers
        warnings.simplefilter("ignore")
        return resolve_dataset_source(source)


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


def log_series(run_id: str, series: dict[str, list[tuple[int, float]]]) -> None:
    """Curves with an explicit step per point (e.g. metric@k with step = k), batched."""
    now = int(time.time() * 1000)
    entries = [Metric(key, float(v), now, int(step)) for key, points in series.items() for step, v in points
               if np.isfinite(v)]
    for i in range(0, len(entries), _BATCH):
        client().log_batch(run_id, metrics=entries[i:i + _BATCH])


def log_dict(run_id: str, payload: dict, artifact_file: str) -> None:
    client().log_dict(run_id, payload, artifact_file)


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    client().log_figure(run_id, figure, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def rename_run(run_id: str, name: str) -> None:
    client().update_run(run_id, name=name)


def run_name(run_id: str) -> str:
    return client().get_run(run_id).info.run_name


def set_note(run_id: str, markdown: str) -> None:
    """The run's description in the UI (Overview tab)."""
    client().set_tag(run_id, "mlflow.note.content", markdown[:5000])


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
                name="model", python_model=str(_PACKAGE_DIR / "models" / "pyfunc_model.py"), artifacts={ARTIFACT_KEY: str(model_dir)},
                code_paths=[str(_package_copy(Path(tmp) / "code"))],
                signature=signature, input_example=example, pip_requirements=_pip_requirements())
    return info.model_uri


def _package_copy(dest: Path) -> Path:
    """The model's code: the whole `recsys` package (.py files only), laid out as installed. MLflow copies it to
    <model>/code/recsys and puts <model>/code first on sys.path at load, so `recsys.models.pyfunc` imports in a
    fresh process with or without this package installed, and the code that trained the model serves it. All
    subpackages, not only the pure ones the pyfunc needs: a `recsys` without `tasks` would shadow the installed
    one in that process."""
    pkg = dest / "recsys"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""recsys, as logged with an MLflow model (models from code)."""\n')
    for sub in _SUBPACKAGES:
        shutil.copytree(_PACKAGE_DIR / sub, pkg / sub, ignore=lambda d, names: [
            n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])
    return pkg


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in
            ("mlflow", "implicit", "lightgbm", "pandas", "numpy", "scipy", "pyarrow", "threadpoolctl")]


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
    mv = mlflow.register_model(model_uri, name, tags={**tags, "run_id": run_id})
    return str(mv.version)


def version_numbers(name: str) -> list[str]:
    """Every version of a registered model, oldest first ([] when the model does not exist)."""
    versions = client().search_model_versions(f"name = '{name}'")
    return sorted((str(v.version) for v in versions), key=int)


MODEL_DESCRIPTION = (
    "Two-stage e-commerce recommender: recall by implicit ALS, co-visitation, popularity, trending, repeat and "
    "TF-IDF text candidates, ranked by LightGBM LambdaRank. Alias `champion` is what `recsys serve` serves; "
    "the promotion gate moves it only when a challenger wins on the same fresh data (`previous` keeps the "
    "old one for `recsys rollback`). Each version's description gives its metrics and the gate's verdict.")


def describe_version(name: str, version: str, description: str) -> None:
    """Descriptions the registry UI shows: the version's own, and the model's (set once if empty)."""
    c = client()
    c.update_model_version(name, version, description=description[:5000])
    if not (c.get_registered_model(name).description or "").strip():
        c.update_registered_model(name, description=MODEL_DESCRIPTION)


def alias_version(name: str, alias: str = CHAMPION) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_recommender(name: str, version: str) -> TwoStageRecommender:
    client()
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().recommender


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def set_version_tags(name: str, version: str, tags: dict) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


class ChampionMoved(RuntimeError):
    """The champion alias changed between the gate's decision and the move (another promoter won)."""


_ANY = object()


def move_champion(name: str, version: str, reason: str, actor: str | None = None,
                  expected_champion: str | None | object = _ANY) -> str | None:
    """Point `champion` at `version`, keep the old one as `previous`; returns the old version.

    `expected_champion` makes the move a compare-and-set: the alias is re-read from the registry right
    before moving and the move is refused (ChampionMoved) if it no longer points where the decision saw
    it. MLflow has no server-side CAS, so this narrows the race across machines to the few milliseconds
    between that read and the write; the gate's file lock removes it on one machine."""
    c = client()
    old = alias_version(name, CHAMPION)
    if expected_champion is not _ANY and old != expected_champion:
        raise ChampionMoved(f"{name}: champion is now v{old}, the decision was made against "
                            f"v{expected_champion}; not moving the alias")
    # one write is the promotion: `champion` moves; `previous` is bookkeeping for rollback
    c.set_registered_model_alias(name, CHAMPION, str(version))
    if old is not None and old != str(version):
        c.set_registered_model_alias(name, PREVIOUS, old)
    set_version_tags(name, version, {"promoted_by": actor or getpass.getuser(), "promotion_reason": reason,
                                     "promoted_at": pd.Timestamp.now(tz="UTC").isoformat()})
    return old


@contextlib.contextmanager
def gate_lock(name: str, timeout_s: float = 600.0):
    """Serialise promotion decisions for one registered model across processes (`filelock`: an OS lock
    released when the holder dies, so a killed gate never leaves a stale lock)."""
    from filelock import FileLock, Timeout

    path = lock_path(f"gate-{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout_s, poll_interval=0.2):
            yield
    except Timeout:
        raise TimeoutError(f"another run has held the promotion lock {path} for {timeout_s:g} s; wait for it "
                           "to finish (or find it: fuser on that file) and rerun") from None


def gate_and_promote(name: str, version: str, decide: Callable[[str | None], tuple[bool, str, Any]],
                     actor: str = "promotion-gate", attempts: int = 3) -> tuple[str | None, bool, Any]:
    """Serialized promotion: under the gate lock read the champion, `decide(champion)` -> (promote, reason,
    result), and move the alias with a compare-and-set against the champion that decision saw. If the
    alias moved meanwhile (a promoter on another machine), decide again against the new champion.
    Returns (champion the final decision was made against, promoted, result)."""
    with gate_lock(name):
        for _ in range(attempts):
            champion = alias_version(name, CHAMPION)
            promote, reason, result = decide(champion)
            if not promote:
                return champion, False, result
            try:
                move_champion(name, version, reason, actor=actor, expected_champion=champion)
                return champion, True, result
            except ChampionMoved as exc:
                log.warning("%s; deciding again", exc)
        raise ChampionMoved(f"{name}: champion kept moving during {attempts} gate attempts; giving up")


def dumps(payload) -> str:
    return json.dumps(payload, indent=2, default=str)
