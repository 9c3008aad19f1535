"""Operator-facing failures of the real `recsys` command (a subprocess, Prefect's console logs included):
one `error:` line naming the cause and what to do, exit code 1, no traceback on the terminal (it goes to
the log file the line names), argument errors before any work, deterministic errors not retried, a killed
run leaves no process behind, a full disk leaves no MLflow run RUNNING."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.features.synthetic import SyntheticParams

RECSYS = str(Path(sys.executable).parent / "recsys")
REPO = Path(__file__).resolve().parents[2]
SMALL = SyntheticParams(n_users=200, n_items=120, n_days=24, seed=3)


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k not in ("RECSYS_HOME",)}
    env.update(RECSYS_HOME=str(home), PYTHONPATH=str(REPO), PREFECT_HOME=str(home / "prefect"), **extra)
    return env


def recsys(home: Path, *args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([RECSYS, *args], capture_output=True, text=True, timeout=timeout, env=_env(home, **env),
                          stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0], "the error line is not the last one"
    return errors[0]


def traceback_file(line: str) -> Path:
    m = re.search(r"\(full traceback: (.+\.log)\)$", line)
    assert m, line
    path = Path(m.group(1))
    assert "Traceback (most recent call last)" in path.read_text()
    return path


@pytest.mark.parametrize("args, expected", [
    (["train", "--cutoff", "notadate"], "--cutoff 'notadate' is not a date: use YYYY-MM-DD"),
    (["train", "--gate-metric", "accuracy"], "--gate-metric 'accuracy' is not a per-user metric at k=10: use one of"),
    (["train", "--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir: no such directory"),
    (["promote", "--version", "abc", "--reason", "x"], "--version must be a model version number such as 3"),
    (["train", "--feedback", "yes"], "--feedback must be on or off, not 'yes'"),
    (["simulate", "--compare-feedback"], "--compare-feedback needs --ab-share > 0"),
])
def test_argument_errors_fail_at_once_in_one_line(tmp_path, args, expected):
    t0 = time.monotonic()
    line = one_error_line(recsys(tmp_path, *args, timeout=120))
    assert expected in line
    assert time.monotonic() - t0 < 20  # before Prefect, MLflow or the data (the flow itself takes > 30 s)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "prefect").exists()


def test_promote_unknown_version_names_the_versions_there_are(recsys_home, tmp_path):
    from tests.integration.test_mlflow_promotion import _model_with_versions

    _model_with_versions("ops-999", 2)
    line = one_error_line(recsys(recsys_home, "promote", "--model-name", "ops-999", "--version", "999",
                                 "--reason", "x", MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"]))
    assert line == "error: model 'ops-999' has no version 999: its versions are 1..2"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from recsys.tasks.data import write_synthetic_dataset

    base = tmp_path_factory.mktemp("small") / "data"
    write_synthetic_dataset(base, SMALL)
    return base


@pytest.mark.slow
def test_corrupt_partition_fails_once_in_one_line_without_retries(tmp_path, small_data):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    bad = sorted((data / "events").glob("day=*/*.parquet"))[3]
    bad.write_bytes(b"not parquet")
    proc = recsys(tmp_path / "home", "train", "--data-dir", str(data), "--iterations", "2")
    line = one_error_line(proc)
    assert line.startswith(f"error: unreadable file in the event store {data / 'events'} (move it out of the store")
    assert str(bad) in line
    log = traceback_file(line).read_text()
    assert "Retrying" not in proc.stderr + log  # a corrupt file fails the same way again: no retries
    assert log.count("prefect.task_runs: Finished in state Failed") == 1  # one attempt of load-data


@pytest.mark.slow
def test_kill_9_leaves_no_temporary_prefect_server(tmp_path, small_data):
    env = _env(tmp_path / "home")
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([RECSYS, "train", "--data-dir", str(small_data)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    port = None
    while time.monotonic() < deadline and port is None:
        m = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", log.read_text(errors="replace"))
        port = m and m.group(1)
        time.sleep(0.5)
    assert port, log.read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    def servers() -> list[str]:
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if f"--port {port} " in line and "uvicorn" in line]

    deadline = time.monotonic() + 30
    while servers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not servers(), servers()


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(path)], check=False)
    return ok == 0


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_no_run_running(tmp_path, small_data):
    """The MLflow artifact store on a tiny tmpfs: the first big artifact write fails with ENOSPC."""
    artifacts = tmp_path / "artifacts"
    if not _can_mount_tmpfs(artifacts):
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(artifacts)], check=True)
    try:
        home = tmp_path / "home"
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        proc = recsys(home, "train", "--data-dir", str(small_data), "--iterations", "2",
                      MLFLOW_TRACKING_URI=uri, RECSYS_ARTIFACT_ROOT=artifacts.as_uri())
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
    line = one_error_line(proc)
    assert line.startswith("error: disk full while writing"), line
    assert "free space there (df -h) and rerun" in line
    traceback_file(line)
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert any(r.info.status == "FAILED" for r in runs)
