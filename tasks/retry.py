"""Which task failures are worth a retry: transient I/O (a network blip, a locked database), never a
deterministic one (bad input, a corrupt file, a full disk) that fails the same way again."""

from __future__ import annotations

import errno

# a retry cannot fix these: the same input or the same disk gives the same error
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS,
                     errno.EISDIR, errno.ENOTDIR, errno.EFBIG}
_PERMANENT_MLFLOW_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                           "BAD_REQUEST", "PERMISSION_DENIED", "INVALID_STATE"}


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt can get past (connection, timeout, a locked store)."""
    if is_disk_full(exc):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):  # requests' errors are OSErrors too
        return exc.errno not in _PERMANENT_ERRNOS
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT_MLFLOW_CODES
    return False


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the cause chain, or sqlite's / Arrow's wording of it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "database or disk is full" in text or "disk quota exceeded" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its error is transient."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result could not be read back: let Prefect's retries decide
        return True
    return not isinstance(exc, BaseException) or is_transient(exc)


def mlflow_error_message(exc: BaseException) -> str | None:
    """The message of an MLflow error (None for other errors): flows/ stays free of mlflow imports."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return None
    return exc.message if isinstance(exc, MlflowException) else None
