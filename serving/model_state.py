"""What the service says about the model it follows: why a version is not served, when a failed one is
tried again, and error texts without the machine's absolute paths (they go to the log, not to clients)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# an absolute path, alone or in a file:/sqlite: URI; not the path part of an http(s) URL or `models:/name/1`
_ABS_PATH = re.compile(r"(?:\b(?:file|sqlite):/*|(?<![\w.:/~-]))/[^\s'\"()<>,;:]+")


def public_text(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last component (`.../MLmodel`)."""

    def short(m: re.Match) -> str:
        name = m.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f".../{name}" if name else "..."

    return _ABS_PATH.sub(short, text)


def describe_lookup_error(exc: BaseException, name: str, alias: str) -> str:
    """One line naming why the alias could not be read: nothing registered yet, or the registry is down."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return f"no '{alias}' alias for model '{name}' yet: the registry has no model of that name"
    if code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc):
        return f"no '{alias}' alias for model '{name}' yet: train and promote a version"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return public_text(f"model registry unreachable, cannot read '{name}@{alias}' "
                       f"({type(exc).__name__}: {first[:300]}); serving what is loaded, retrying every poll")


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after `attempts` failed loads of one version: base, 2*base, 4*base ... max."""
    return min(max_s, base_s * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class LoadFailure:
    version: str
    error: str
    attempts: int
    retry_at: float  # time.monotonic() when the version is tried again
