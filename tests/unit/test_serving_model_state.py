"""What the service says about the model it follows: retries of a failed version, outage causes, no paths."""

import pytest

from recsys.serving.model_state import ModelHolder
from recsys.serving.model_state import describe_lookup_error, public_text, retry_delay_s


@pytest.mark.parametrize("text,expected", [
    ("No such file or directory: '/tmp/tmpab12/artifacts/MLmodel'", "No such file or directory: '.../MLmodel'"),
    ("source file:///home/op/.recsys/mlartifacts/recsys/3/model failed", "source .../model failed"),
    ("store sqlite:////srv/recsys/mlflow.db is locked", "store .../mlflow.db is locked"),
    ("API request to http://127.0.0.1:5000/api/2.0/mlflow/x failed",
     "API request to http://127.0.0.1:5000/api/2.0/mlflow/x failed"),
    ("models:/recsys/3 and runs:/abc/model stay", "models:/recsys/3 and runs:/abc/model stay"),
    ("ratio 3/4 stays", "ratio 3/4 stays"),
])
def test_public_text_cuts_absolute_paths_only(text, expected):
    assert public_text(text) == expected


def test_retry_delay_doubles_up_to_the_cap():
    assert [retry_delay_s(n, 60, 900) for n in (1, 2, 3, 4, 5, 6)] == [60, 120, 240, 480, 900, 900]


class Registry:
    """The alias the holder reads, and a loader whose every call is counted (and fails: the files are bad)."""

    def __init__(self):
        self.version, self.loads, self.down = "3", [], None

    def lookup(self, name, alias):
        if self.down:
            raise self.down
        return self.version, f"run-{self.version}"

    def load(self, name, version):
        self.loads.append(version)
        raise FileNotFoundError(f"No such file or directory: '/var/lib/recsys/artifacts/{version}/MLmodel'")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_a_failed_version_is_retried_on_backoff_and_when_the_alias_comes_back():
    reg, clock = Registry(), Clock()
    h = ModelHolder("recsys", lookup=reg.lookup, loader=reg.load, retry_base_s=60, retry_max_s=900, clock=clock)
    assert h.refresh() is False and reg.loads == ["3"]
    assert h.failed_version == "3" and h.retry_in_s() == 60.0
    assert h.last_error == "loading version 3 failed: FileNotFoundError: No such file or directory: '.../MLmodel'"
    clock.t += 59
    h.refresh()
    assert reg.loads == ["3"]  # not on every poll
    clock.t += 2
    h.refresh()
    assert reg.loads == ["3", "3"] and h.retry_in_s() == 120.0  # after the backoff, then twice as long
    reg.version = "2"  # the alias moves away (to another bad version here) ...
    h.refresh()
    assert reg.loads == ["3", "3", "2"] and h.failed_version == "2"
    reg.version = "3"  # ... and back: tried at once, not after the old backoff
    h.refresh()
    assert reg.loads == ["3", "3", "2", "3"] and h.failed_version == "3" and h.retry_in_s() == 60.0


class RegistryError(Exception):
    def __init__(self, message, error_code):
        super().__init__(message)
        self.error_code = error_code


@pytest.mark.parametrize("exc,expected", [
    (RegistryError("Registered Model with name=x not found", "RESOURCE_DOES_NOT_EXIST"),
     "no 'champion' alias for model 'recsys' yet: the registry has no model of that name"),
    (RegistryError("Registered model alias champion not found.", "INVALID_PARAMETER_VALUE"),
     "no 'champion' alias for model 'recsys' yet: train and promote a version"),
    (RegistryError("API request to http://mlflow:5000/api/2.0/mlflow/registered-models/alias failed with exception "
                   "HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded", "INTERNAL_ERROR"),
     "model registry unreachable, cannot read 'recsys@champion' (RegistryError: API request to "
     "http://mlflow:5000/api/2.0/mlflow/registered-models/alias failed"),
    (OSError("unable to open database file /srv/recsys/mlflow.db"),
     "model registry unreachable, cannot read 'recsys@champion' (OSError: unable to open database file .../mlflow.db)"),
])
def test_the_lookup_error_names_its_cause(exc, expected):
    assert describe_lookup_error(exc, "recsys", "champion").startswith(expected)


def test_an_outage_is_reported_and_cleared_once_the_registry_answers():
    reg = Registry()
    reg.down = RegistryError("API request failed: Connection refused", "INTERNAL_ERROR")
    h = ModelHolder("recsys", lookup=reg.lookup, loader=reg.load)
    h.refresh()
    assert h.last_error.startswith("model registry unreachable") and reg.loads == []
    reg.down = None
    h.refresh()
    assert h.last_error.startswith("loading version 3 failed")  # the next cause, not the stale one
