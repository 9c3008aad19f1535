"""Every shell command in the README's ```bash blocks, run as written, in order, in a throwaway copy of the
repository (so `.recsys`, `data/retail`, ... land in a temp dir) whose `.venv` is the venv running these
tests, activated the way the README tells the reader (`source .venv/bin/activate`).

Each block runs as one bash script (`set -e`, so `export`/`source` carry to the next line). Commands that
start a server (mlflow ui, mlflow/start-local.sh, mlflow models serve, recsys serve) are started in the
background, probed until their port answers, and stopped at the end of the block; the command after them
(e.g. the `curl`) runs against them. The README's example input files (clicks.csv.gz, orders.parquet, ...)
are the reader's own data: the test writes tiny ones first.
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# command (prefix) -> why it does not run here; keep this short
SKIP = {
    "make test": "it is the test suite this test belongs to",
    "python -m build --wheel": "tests/integration/test_wheel.py builds the wheel and installs it in a fresh venv "
                               "(here it would replace the editable install of the venv running the tests)",
    "pip install dist/": "tests/integration/test_wheel.py (see python -m build)",
}
# what a command's output must contain (a command can exit 0 and still be wrong, e.g. curl on an HTTP 500)
EVENTS_CURL = """curl -s -X POST http://127.0.0.1:8000/events -H 'Content-Type: application/json' -d '{"events": [{"user_id": """
EXPECT = {"curl -X POST localhost:5001/invocations": '"predictions"', "recsys --help": "Usage: recsys",
          # two POST /events examples (Serving; Online metrics), told apart by their first user
          EVENTS_CURL + '"u000001"': '"accepted":2,"rejected":1',
          EVENTS_CURL + '"u000002"': '"accepted":1,"rejected":0',
          "curl -s http://127.0.0.1:8000/recommendations/u000001": '"live_events":1',
          "recsys simulate --days 2": "quarantined"}
# a server command -> the port it listens on (default when the line does not set one)
SERVERS = [(re.compile(r"^mlflow ui\b"), 5000), (re.compile(r"^mlflow/start-local\.sh\b"), 5000),
           (re.compile(r"^mlflow models serve\b"), 5000), (re.compile(r"^recsys serve\b"), 8000)]
# what answers once a server is ready (a person waits for it; the service loads its model after it listens)
READY_PATH = {8000: "/ready"}


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block (also one indented in a list item): comments dropped, backslash
    continuations joined."""
    blocks = []
    for indent, body in re.findall(r"^( *)```bash\n(.*?)^\1```", text, flags=re.S | re.M):
        body = textwrap.dedent(body)
        commands, current = [], ""
        for raw in body.splitlines():
            line = raw.rstrip()
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                current += line[:-1].rstrip() + " "
                continue
            current += line.strip() if current else line
            # an inline comment after the command (not inside quotes: the README's comments follow two spaces)
            commands.append(re.sub(r"\s{2,}#.*$", "", current).strip())
            current = ""
        blocks.append(commands)
    return blocks


def test_readme_blocks_are_parsed():
    blocks = readme_blocks(README.read_text())
    flat = [c for b in blocks for c in b]
    assert "source .venv/bin/activate" in flat and "make run" in flat
    assert any(c.startswith("curl -X POST localhost:5001/invocations") and c.endswith("\"k\": 5}}'") for c in flat)
    assert all("\\" not in c.split("'")[0] for c in flat)  # continuations joined


def _server_port(command: str) -> int | None:
    for pattern, default in SERVERS:
        if pattern.search(command):
            m = re.search(r"(?:-p|--port)\s+(\d+)", command)
            return int(m.group(1)) if m else default
    return None


def block_script(commands: list[str], logs: Path, block: int = 0) -> str:
    # the block's servers are stopped at its end and waited for (their ports free, their logs closed), so the
    # next block can start a server on the same port
    lines = ["set -euo pipefail", "servers=()",
             "cleanup() { for p in \"${servers[@]}\"; do kill -TERM -- -$p 2>/dev/null || kill $p 2>/dev/null || true;"
             " done; for p in \"${servers[@]}\"; do for _ in $(seq 1 60); do kill -0 -- -$p 2>/dev/null || break;"
             " sleep 0.5; done; kill -KILL -- -$p 2>/dev/null || true; done; }", "trap cleanup EXIT"]
    for i, command in enumerate(commands):
        skip = next((why for prefix, why in SKIP.items() if command.startswith(prefix)), None)
        lines.append(f"echo '>>> {command[:200].replace(chr(39), '')}'")
        if skip:
            lines.append(f"echo '    skipped: {skip}'")
            continue
        port = _server_port(command)
        if port is None:
            lines.append(command)
            continue
        log = logs / f"server-{block}-{i}.log"
        probe = f"curl -sf -o /dev/null http://127.0.0.1:{port}{READY_PATH.get(port, '/')}"
        if port not in READY_PATH:
            probe = probe.replace("curl -sf", "curl -s")  # any HTTP answer will do (mlflow's / may be a 404)
        lines += [f"setsid {command} > {log} 2>&1 < /dev/null &", "servers+=($!)",
                  f"for _ in $(seq 1 360); do {probe} && break; "
                  f"kill -0 ${{servers[-1]}} 2>/dev/null || {{ cat {log}; exit 1; }}; sleep 0.5; done",
                  f"{probe} || {{ cat {log}; exit 1; }}",
                  "sleep 1"]
    return "\n".join(lines) + "\n"


def _example_inputs(cwd: Path) -> None:
    """The reader's own files the README's ingest examples name, tiny."""
    days = pd.date_range("2026-01-05", periods=24, freq="D")
    rows = [(f"v{u}", f"sku{(u * 7 + d) % 40}", f"{day:%Y-%m-%d} 1{u % 10}:00:00", ("view", "cart", "buy")[u % 3])
            for d, day in enumerate(days) for u in range(30)]
    with gzip.open(cwd / "clicks.csv.gz", "wt") as fh:
        fh.write("visitor,sku,when,what\n" + "".join(",".join(r) + "\n" for r in rows))
    (cwd / "mapping.toml").write_text('[columns]\nuser_id = "visitor"\nitem_id = "sku"\nts = "when"\n'
                                      'event_type = "what"\n\n[event_types]\ncart = "add_to_cart"\n'
                                      'buy = "purchase"\n')
    orders = pd.DataFrame({"customer": [r[0] for r in rows], "sku": [r[1] for r in rows],
                           "ordered_at": pd.to_datetime([r[2] for r in rows])})
    orders.to_parquet(cwd / "orders.parquet", index=False)
    pd.DataFrame({"item_id": [f"sku{i}" for i in range(40)], "title": [f"thing {i}" for i in range(40)],
                  "category": [f"c{i % 4}" for i in range(40)]}).to_csv(cwd / "products.csv", index=False)


def _throwaway_repo(tmp_path: Path) -> Path:
    cwd = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, cwd / name)
    # the venv running this test is the README's .venv (make's stamp says it is installed: no reinstall)
    (cwd / ".venv").symlink_to(Path(sys.prefix))
    stamp = (Path(sys.prefix) / ".installed").stat().st_mtime
    for name in ("requirements.lock", "pyproject.toml"):  # installed from these: older than make's stamp
        os.utime(cwd / name, (stamp - 1, stamp - 1))
    shared = Path(os.environ.get("RECSYS_SHARED") or REPO.parent / "shared")
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)  # the README's ../shared
    return cwd


@pytest.mark.slow
@pytest.mark.timeout(2700)  # make run + a 3-cutoff backfill + Online Retail: 35 min on a loaded 2-core machine
def test_every_readme_command_runs_as_written(tmp_path):
    if not (Path(sys.prefix) / ".installed").exists():
        pytest.skip("the venv running the tests was not made by `make setup` (no .venv/.installed)")
    cwd = _throwaway_repo(tmp_path)
    if not (tmp_path / "shared").exists():
        pytest.skip("../shared (the Online Retail file the README ingests) is absent; set RECSYS_SHARED")
    _example_inputs(cwd)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "RECSYS_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(cwd)  # this checkout's code even when the venv's editable install points elsewhere
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith(sys.prefix))  # not yet on PATH
    env["PREFECT_PORT"] = "4297"
    logs = tmp_path / "logs"
    logs.mkdir()
    activate = "source .venv/bin/activate\n"
    for n, commands in enumerate(readme_blocks(README.read_text())):
        script = block_script(commands, logs, n)
        if n > 0 and "source .venv/bin/activate" not in commands:
            script = activate + script  # the README says it once: every later shell has it
        proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=1500, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"README block {n} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        for prefix, needle in EXPECT.items():
            if any(c.startswith(prefix) for c in commands):
                assert needle in proc.stdout, f"`{prefix}` printed no {needle}:\n{proc.stdout[-3000:]}"
    assert not (cwd / "mlflow.db").exists(), "a README command created a stray ./mlflow.db"
    assert (cwd / ".recsys" / "mlflow.db").exists() and (cwd / "data" / "retail" / "events").is_dir()
