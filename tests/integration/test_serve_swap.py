"""Hot swap: the alias moves while a load generator runs against the service process; no request fails.

Uses its own registered model name (versions of the first run's model) so that the version numbers
of the shared `recsys` model, which other tests assert, stay untouched.
"""

import threading
import time

import httpx
import pytest

from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration
NAME = "recsys-swap"


@pytest.fixture(scope="module")
def swap_versions(first_run):
    """Two good versions of `recsys-swap` (same artifact), champion on the first, and one broken version."""
    import tempfile

    import mlflow

    from recsys.tasks import tracking

    c = tracking.client()
    source = c.get_model_version("recsys", first_run["version"]).source
    good = [str(mlflow.register_model(source, NAME).version) for _ in range(2)]
    broken = str(c.create_model_version(NAME, source=tempfile.mkdtemp(), run_id=None).version)
    tracking.move_champion(NAME, good[0], "swap test: start")
    return good, broken


class Load:
    """Closed-loop clients over every list endpoint; records status codes and the versions seen."""

    def __init__(self, url: str, threads: int = 3):
        self.url, self.stop = url, threading.Event()
        self.errors: list[str] = []
        self.versions: list[str] = []
        self.count = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, i: int) -> None:
        calls = [lambda c, n: c.get(f"/recommendations/u{n % 400:06d}", params={"k": 10}),
                 lambda c, n: c.post("/recommendations", json={"user_id": None, "k": 10, "events": [
                     {"item_id": f"i{n % 200:06d}", "event_type": "view"}]}),
                 lambda c, n: c.get("/search", params={"q": "red", "k": 10}),
                 lambda c, n: c.get(f"/similar/i{n % 200:06d}", params={"k": 5})]
        with httpx.Client(base_url=self.url, timeout=10) as client:
            n = i
            while not self.stop.is_set():
                n += 1
                try:
                    r = calls[n % len(calls)](client, n)
                    if r.status_code != 200:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.versions.append(r.json()["model_version"])
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.count += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def wait_for(url: str, done, timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = httpx.get(f"{url}/version").json()
        if done(v):
            return v
        time.sleep(0.2)
    raise AssertionError(f"/version never got there: {v}")


def wait_version(url: str, version: str, timeout: float = 40.0) -> dict:
    return wait_for(url, lambda v: v["version"] == version, timeout)


def test_champion_swaps_under_load_without_a_failed_request(swap_versions, service):
    from recsys.tasks import tracking

    (v1, v2), broken = swap_versions
    url, proc = service("--model-name", NAME, "--poll-interval", "0.5")
    wait_ready(f"{url}/ready", proc)
    assert httpx.get(f"{url}/version").json()["version"] == v1
    with Load(url) as load:
        time.sleep(1.0)
        tracking.move_champion(NAME, v2, "swap test: promote")
        wait_version(url, v2)
        time.sleep(1.0)
    print(f"\nswap {v1}->{v2} under load: {load.count} requests, {len(load.errors)} errors, "
          f"{load.versions.count(v1)} answered by v{v1}, {load.versions.count(v2)} by v{v2}")
    assert load.errors == [] and load.count > 20
    assert load.versions[0] == v1 and load.versions[-1] == v2 and set(load.versions) == {v1, v2}
    metrics = httpx.get(f"{url}/metrics").text
    assert 'recsys_model_version{alias="champion"} ' + f"{float(v2)}" in metrics

    # a broken version: the service keeps serving the last good one and says why
    with Load(url, threads=2) as load:
        tracking.move_champion(NAME, broken, "swap test: broken")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            v = httpx.get(f"{url}/version").json()
            if v["failed_version"] == broken:
                break
            time.sleep(0.2)
        time.sleep(0.5)
    print(f"broken v{broken} under load: {load.count} requests, {len(load.errors)} errors; "
          f"still serving v{v['version']}; last_error: {v['last_error'][:120]}")
    assert v["failed_version"] == broken and v["version"] == v2
    assert f"loading version {broken} failed" in v["last_error"]
    assert load.errors == [] and set(load.versions) == {v2}
    assert 'recsys_model_load_failures_total{alias="champion"} 1.0' in httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/ready").status_code == 200
    assert v["retry_in_s"] > 0 and "/tmp" not in httpx.get(f"{url}/version").text  # no machine paths

    # rollback: the alias leaves the broken version, its error goes with it
    tracking.move_champion(NAME, v2, "swap test: rollback")
    v = wait_for(url, lambda v: v["last_error"] is None)
    assert v["version"] == v2 and v["failed_version"] is None and v["retry_in_s"] is None

    # the broken version's files are repaired and the alias points at it again: loaded at once
    import mlflow

    c = tracking.client()
    mlflow.artifacts.download_artifacts(artifact_uri=c.get_model_version(NAME, v1).source,
                                        dst_path=c.get_model_version(NAME, broken).source)
    tracking.move_champion(NAME, broken, "swap test: repaired")
    v = wait_version(url, broken)
    assert v["last_error"] is None and v["failed_version"] is None


def test_ab_split_is_stable_and_logged(swap_versions, service, tmp_path):
    from recsys.tasks import tracking
    from recsys.tasks.impressions import read_impressions

    (v1, v2), _ = swap_versions
    tracking.move_champion(NAME, v1, "ab test")
    tracking.client().set_registered_model_alias(NAME, "challenger", v2)
    url, proc = service("--model-name", NAME, "--ab-share", "0.5", "--poll-interval", "0",
                        "--impressions-dir", str(tmp_path))
    wait_ready(f"{url}/ready", proc)
    deadline = time.monotonic() + 40
    while httpx.get(f"{url}/version").json()["challenger"]["version"] != v2 and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = {}
    for n in range(40):
        body = httpx.get(f"{url}/recommendations/u{n:06d}", params={"k": 3}).json()
        again = httpx.get(f"{url}/recommendations/u{n:06d}", params={"k": 3}).json()
        assert (body["variant"], body["model_version"]) == (again["variant"], again["model_version"])
        seen[body["variant"]] = body["model_version"]
    assert seen == {"champion": v1, "challenger": v2}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = read_impressions(tmp_path)
        if len(frame) >= 240:
            break
        time.sleep(0.2)
    assert set(frame["variant"]) == {"champion", "challenger"}
    versions = frame.groupby("variant")["model_version"].agg(lambda v: set(v)).to_dict()
    assert versions == {"champion": {v1}, "challenger": {v2}}
