"""Real Prefect (one throwaway backend per test session) and a throwaway sqlite MLflow in a temp dir."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from recsys.features.synthetic import SyntheticParams

TINY = SyntheticParams(n_users=500, n_items=300, n_days=35, seed=11)


@pytest.fixture(scope="session")
def recsys_home(tmp_path_factory):
    """RECSYS_HOME with the tiny synthetic data set and its own MLflow store; Prefect harness running."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("recsys_home")
    saved = {k: os.environ.get(k) for k in ("RECSYS_HOME", "MLFLOW_TRACKING_URI", "PREFECT_HOME")}
    os.environ["RECSYS_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    from recsys.tasks.data import write_synthetic_dataset
    from recsys.tasks.paths import data_dir

    write_synthetic_dataset(data_dir(), TINY)
    with prefect_test_harness(server_startup_timeout=90):
        yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def small_config(**overrides):
    from recsys.models.config import TrainConfig
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import TwoStageParams

    base = dict(model=TwoStageParams(als=ALSParams(factors=16, iterations=5, device="cpu")))
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def first_run(recsys_home):
    from recsys.flows.train import train

    return train(config=small_config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_logged(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start a long-running process with stdout+stderr in a file. Never an unread PIPE: once a chatty server
    fills the 64 KiB pipe buffer it blocks on its next log line and every request to it hangs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
    proc.log_path = log
    return proc


def log_tail(proc: subprocess.Popen, chars: int = 4000) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}: {log_tail(proc)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s: {log_tail(proc)}")


@pytest.fixture
def service(recsys_home, tmp_path):
    """Start `recsys serve` as its own process on a free loopback port; yields (base_url, proc)."""
    procs = []

    def start(*extra: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        exe = Path(sys.executable).parent / "recsys"
        proc = start_logged([str(exe), "serve", "--port", str(port), "--log-level", "warning", *extra],
                            tmp_path / f"serve-{port}.log", env=os.environ.copy())
        procs.append(proc)
        return f"http://127.0.0.1:{port}", proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
