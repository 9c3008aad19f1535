"""The logger of the task or flow run in progress (its lines go to the Prefect UI and the terminal), or the
module logger when called outside a run (benchmarks, plain scripts, the service)."""

from __future__ import annotations

import logging

from prefect import get_run_logger

log = logging.getLogger("recsys.tasks")


def run_logger():
    try:
        return get_run_logger()
    except Exception:  # outside a flow run: Prefect raises MissingContextError
        return log
