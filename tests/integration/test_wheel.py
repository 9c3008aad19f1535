"""The package installs on its own: `python -m build --wheel`, then plain `pip install <wheel>` into a fresh
venv, every dependency resolved from pyproject.toml's ranges (not requirements.lock: the newest releases they
admit), then `recsys generate`, `recsys ingest` on a small CSV, `recsys train`, `recsys serve`, and the
registered model loaded with `mlflow.pyfunc.load_model` in another fresh process. Everything runs from a
user's project folder with its own `models` and `tasks` packages. Slow: the install downloads ~180 packages
(~2-6 min, see the README); CI runs it as its own step (.ci/run) with the versions report printed."""

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from tests.integration.conftest import free_port, log_tail, start_logged, wait_ready

# the module's first test also builds the wheel and installs it: more than pytest-timeout's default 600 s
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]
ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("features", "models", "tasks", "flows", "serving")


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _pins(lines) -> dict[str, str]:
    return {canonicalize_name(name): version.strip()
            for name, sep, version in (line.partition("==") for line in lines) if sep and not name.startswith("#")}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(wheel, venv bin dir, user project dir, env, timings)."""
    tmp = tmp_path_factory.mktemp("wheel")
    timings = {}
    t0 = time.monotonic()
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)], timeout=600)
    timings["build"] = time.monotonic() - t0
    (wheel,) = (tmp / "dist").glob("recsys-*.whl")

    t0 = time.monotonic()
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], timeout=300)
    bin_dir = tmp / "venv" / "bin"
    # plain pip, no constraints from the lock: what a user or a Dask worker image gets
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "PIP_CONSTRAINT", "VIRTUAL_ENV"))
           and k not in ("RECSYS_HOME", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    _run([str(bin_dir / "pip"), "install", "--disable-pip-version-check", "--quiet", str(wheel)],
         timeout=1500, env=env)
    timings["venv + pip install"] = time.monotonic() - t0

    user = tmp / "user-project"  # a user's own packages with the names the checkout uses as folders
    for pkg in ("models", "tasks"):
        (user / pkg).mkdir(parents=True)
        (user / pkg / "__init__.py").write_text(f"OWNER = 'user'\nNAME = {pkg!r}\n")
    env["RECSYS_HOME"] = str(user / "recsys-home")
    env["OPENBLAS_NUM_THREADS"] = "1"
    yield wheel, bin_dir, user, env, timings
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def test_the_wheel_holds_one_import_package(wheel_env):
    wheel, *_ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"recsys", "recsys-0.1.0.dist-info"}, tops
    assert {n.split("/")[1] for n in names if n.startswith("recsys/") and n.count("/") == 2} == set(LAYERS)
    assert "recsys/models/pyfunc_model.py" in names and "recsys/__init__.py" in names
    meta = {n.rsplit("/", 1)[1]: zipfile.ZipFile(wheel).read(n).decode() for n in names if ".dist-info/" in n}
    assert meta["top_level.txt"].split() == ["recsys"]
    assert "recsys = recsys.flows.cli:main" in meta["entry_points.txt"]
    assert "Requires-Dist: pandera" in meta["METADATA"]
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, {len(names)} files, "
          f"{sum(n.endswith('.py') for n in names)} modules")


def test_plain_pip_resolves_a_consistent_set_and_reports_it_against_the_lock(wheel_env):
    _, bin_dir, _, env, _ = wheel_env
    _run([str(bin_dir / "pip"), "check"], timeout=300, env=env)
    freeze = _run([str(bin_dir / "pip"), "freeze", "--disable-pip-version-check"], timeout=300, env=env).stdout
    got = _pins(freeze.splitlines())
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name in ("prefect", "mlflow", "lightgbm", "implicit", "pandera", "pandas", "numpy"):
        assert name in got, f"{name} missing from the fresh venv"
    differ = [f"{n} {lock[n]} -> {v}" for n, v in sorted(got.items()) if n in lock and lock[n] != v]
    print(f"plain pip resolved {len(got)} distributions; {len(differ)} differ from requirements.lock: "
          + (", ".join(differ) or "none"))
    print("not in the lock: " + (", ".join(f"{n}=={v}" for n, v in sorted(got.items()) if n not in lock) or "none"))


def test_generate_ingest_train_serve_and_load_the_model_in_a_fresh_process(wheel_env, tmp_path):
    _, bin_dir, user, env, timings = wheel_env
    recsys = str(bin_dir / "recsys")
    steps = {
        "generate": [recsys, "generate", "--users", "400", "--items", "250", "--days", "30", "--seed", "3"],
        "ingest": [recsys, "ingest", "--input", str(user / "events.csv")],
        "train": [recsys, "train", "--factors", "16", "--iterations", "5"],
    }
    rows = ["user_id,item_id,ts,event_type"] + [
        f"u{i % 40 + 1:06d},i{i % 30 + 1:06d},2026-02-03 1{i % 10}:{i:02d}:00,{'purchase' if i % 4 == 0 else 'view'}"
        for i in range(60)]
    (user / "events.csv").write_text("\n".join(rows) + "\n")
    out = {}
    for name, cmd in steps.items():
        t0 = time.monotonic()
        proc = _run(cmd, timeout=900, cwd=user, env=env)
        out[name] = proc.stdout + proc.stderr
        timings[name] = time.monotonic() - t0
    assert "generated" in out["generate"]
    assert "(1 files written" in out["ingest"] and "rejected share (validation): 0.00%" in out["ingest"], out["ingest"]
    assert '"promoted": true' in out["train"], out["train"][-2000:]

    port = free_port()
    proc = start_logged([recsys, "serve", "--port", str(port), "--log-level", "warning"], tmp_path / "serve.log",
                        cwd=user, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", proc, timeout=180)
        known = httpx.get(f"http://127.0.0.1:{port}/recommendations/u000001", params={"k": 5}).json()
        assert known["strategy"] == "model" and len(known["items"]) == 5, known
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log_tail(proc)

    # another fresh process, in the user's folder (its `models` package first on sys.path)
    load = (
        "import sys, pandas as pd, mlflow.pyfunc, models, tasks\n"
        "assert (models.OWNER, tasks.OWNER) == ('user', 'user')\n"
        "mlflow.set_tracking_uri(f\"sqlite:///{sys.argv[1]}/mlflow.db\")\n"
        "m = mlflow.pyfunc.load_model('models:/recsys@champion')\n"
        "out = m.predict(pd.DataFrame({'user_id': ['u000001', 'nobody']}), params={'k': 5})\n"
        "print(len(out), sorted(set(out.strategy)), sys.modules['recsys.models.pyfunc'].__file__)\n")
    t0 = time.monotonic()
    loaded = _run([str(bin_dir / "python"), "-c", load, env["RECSYS_HOME"]], timeout=600, cwd=user, env=env)
    timings["load_model"] = time.monotonic() - t0
    n, *strategies, module = loaded.stdout.split()
    assert n == "10" and " ".join(strategies) == "['model', 'popular']", loaded.stdout
    assert "/code/recsys/models/pyfunc.py" in module  # the code logged with the model, not the user's `models`


def test_a_users_models_and_tasks_next_to_the_installed_wheel(wheel_env):
    _, bin_dir, user, env, _ = wheel_env
    code = ("import models, tasks, recsys, recsys.models.two_stage, recsys.tasks.training, recsys.serving.app; "
            "assert (models.OWNER, tasks.OWNER) == ('user', 'user'); "
            "assert 'site-packages' in recsys.models.two_stage.__file__; print(recsys.__path__)")
    proc = _run([str(bin_dir / "python"), "-c", code], timeout=300, cwd=user, env=env)
    assert "site-packages/recsys" in proc.stdout and str(ROOT) not in proc.stdout
