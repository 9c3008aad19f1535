"""How the CLI fails: one line on the terminal naming the cause and what to do, exit code 1, the full
traceback (and the whole Prefect run log) in a log file whose path that line prints.

Also the guard that no process outlives a killed command: `start_orphan_watchdog` (see flows/watchdog.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import typer

TOKEN_ENV = "RECSYS_CLI_RUN_TOKEN"
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "tasks", "flows", "models")


def _log_dir() -> Path:
    from recsys.tasks.paths import recsys_home

    return recsys_home() / "logs"


def open_run_log(command: str) -> Path:
    """A log file for this command: Prefect's flow/task run logs and this project's loggers, tracebacks
    included. Falls back to the temp dir when RECSYS_HOME cannot take it (e.g. a full disk)."""
    name = f"recsys-{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    for directory in (_log_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            handler = logging.FileHandler(path, encoding="utf-8")
            break
        except OSError:
            continue
    else:  # pragma: no cover - neither place is writable
        return Path(os.devnull)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for name_ in _RUN_LOGGERS:
        logger = logging.getLogger(name_)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET and not name_.startswith("prefect"):
            logger.setLevel(logging.INFO)
    return path


class _NoTraceback(logging.Filter):
    """On a console handler: the message stays, the traceback goes (it is in the log file, written first
    by the handler on the run loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_console_tracebacks() -> None:
    """Prefect logs a failed task and flow run with a full traceback each; keep them off the terminal."""
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    if not PROCESS_LOGGING_CONFIG:
        setup_logging()  # later calls are incremental and keep these handlers
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(_NoTraceback())


def _first_line(text: str, limit: int = 1000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """The cause and what to do, in one line."""
    from recsys.tasks.retry import is_disk_full, mlflow_error_message

    if is_disk_full(exc):
        where = getattr(exc, "filename", None) or os.environ.get("RECSYS_HOME", ".recsys")
        return (f"disk full while writing {where}: free space there (df -h) and rerun; this run was marked "
                "FAILED in MLflow and the champion alias was not touched")
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()  # type: ignore[assignment]
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors[:3]]
        return "invalid parameters: " + "; ".join(parts)
    message = mlflow_error_message(exc)
    if message is not None:
        return (f"MLflow: {_first_line(message)} (tracking URI {os.environ.get('MLFLOW_TRACKING_URI', '?')}; "
                "check that it is reachable and the names are right)")
    if isinstance(exc, (FileNotFoundError, ValueError, RuntimeError, TimeoutError, PermissionError)):
        return _first_line(exc)
    if isinstance(exc, ConnectionError):
        return f"connection failed: {_first_line(exc)}; check that the server is up and the URL is right"
    return f"unexpected {type(exc).__name__}: {_first_line(exc)}; this is a bug or an environment problem"


_PENDING: list[str] = []


def _print_pending() -> None:
    for line in filter(None, _PENDING):
        typer.secho(line, fg=typer.colors.RED, err=True)


def defer_error_line() -> None:
    """Print the error line at exit, after Prefect's temporary server logged its stop (atexit runs last
    what was registered first: call this before the server starts)."""
    atexit.register(_print_pending)
    _PENDING.append("")  # armed


def fail(exc: BaseException, log_path: Path | None) -> None:
    """Traceback to the log file, one line to stderr (the last one), exit 1."""
    tb = "".join(traceback.format_exception(exc))
    where = ""
    if log_path is not None and str(log_path) != os.devnull:
        try:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"\n{time.strftime('%Y-%m-%dT%H:%M:%S')} the command failed:\n{tb}")
            where = f" (full traceback: {log_path})"
        except OSError:
            where = ""
    if not where:  # nowhere to write it: the traceback is better on the terminal than lost
        sys.stderr.write(tb)
    line = f"error: {describe(exc)}{where}"
    if _PENDING:
        _PENDING[:] = [line]
    else:
        typer.secho(line, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def start_orphan_watchdog() -> None:
    """Mark this process's environment with a token every child inherits (Prefect's temporary API server
    among them) and start flows/watchdog.py, which kills whatever carries the token once this process is
    gone, even after kill -9. A normal exit stops the temporary server first, so the watchdog finds nothing."""
    if os.environ.get(TOKEN_ENV):
        return
    token = uuid.uuid4().hex
    os.environ[TOKEN_ENV] = token
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    subprocess.Popen([sys.executable, "-S", str(Path(__file__).with_name("watchdog.py")), str(read_end), token],
                     pass_fds=(read_end,), env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(read_end)
    os.set_inheritable(write_end, False)  # only this process holds it: EOF there means this process is gone
    _HELD.append(write_end)


_HELD: list[int] = []
