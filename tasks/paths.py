"""Where things live. Everything defaults to RECSYS_HOME (./.recsys); nothing is created at import."""

from __future__ import annotations

import os
from pathlib import Path


def recsys_home() -> Path:
    return Path(os.environ.get("RECSYS_HOME", ".recsys")).expanduser().resolve()


def data_dir() -> Path:
    return recsys_home() / "data"


def events_dir(base: Path) -> Path:
    return Path(base) / "events"


def catalog_path(base: Path) -> Path:
    return Path(base) / "catalog.parquet"


def quarantine_dir(base: Path) -> Path:
    return Path(base) / "quarantine"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store inside RECSYS_HOME."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{recsys_home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Artifact location for experiments this project creates (sqlite's default is ./mlruns in the cwd)."""
    return os.environ.get("RECSYS_ARTIFACT_ROOT") or (recsys_home() / "mlartifacts").as_uri()


def lock_path(name: str) -> Path:
    return recsys_home() / "locks" / f"{name}.lock"


def prepare_environment() -> None:
    """Point Prefect's local state into RECSYS_HOME unless the user configured it (call from entry points)."""
    home = recsys_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # no network here: Prefect's telemetry would only log a failure
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary local API can take longer than Prefect's 20 s default to start on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
