"""The service's endpoints over loopback: sessions, search, similar, robust input, metrics, impressions."""

import time

import httpx
import pytest

from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(first_run, recsys_home, tmp_path_factory):
    """One service process for the module, with its own impressions directory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.integration.conftest import free_port, start_logged

    imp = tmp_path_factory.mktemp("impressions")
    port = free_port()
    proc = start_logged([str(Path(sys.executable).parent / "recsys"), "serve", "--port", str(port),
                         "--log-level", "warning", "--impressions-dir", str(imp), "--poll-interval", "0"],
                        imp.parent / "serve-api.log", env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/ready", proc)
        yield url, imp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def item_ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


def test_session_changes_the_answer_and_new_visitors_get_personal_results(api):
    url, _ = api
    plain = httpx.get(f"{url}/recommendations/u000001", params={"k": 10}).json()
    events = [{"item_id": f"i{n:06d}", "event_type": "add_to_cart"} for n in (250, 251, 252)]
    sess = httpx.post(f"{url}/recommendations", json={"user_id": "u000001", "events": events, "k": 10})
    assert sess.status_code == 200 and sess.headers["x-request-id"] == sess.json()["request_id"]
    body = sess.json()
    assert body["strategy"] == "session" and len(body["items"]) == 10
    assert item_ids(body) != item_ids(plain)
    anon = httpx.post(f"{url}/recommendations", json={"events": events, "k": 5}).json()
    popular = httpx.get(f"{url}/recommendations/nobody-yet", params={"k": 5}).json()
    assert anon["strategy"] == "session" and popular["strategy"] == "popular"
    assert item_ids(anon) != item_ids(popular)
    assert {i["strategy"] for i in anon["items"]} <= {"session", "content"}


def test_search_and_similar(api):
    url, _ = api
    r = httpx.get(f"{url}/search", params={"q": "red", "k": 5, "user_id": "u000002"}).json()
    assert r["strategy"] == "search" and len(r["items"]) == 5 and r["query"] == "red"
    none = httpx.get(f"{url}/search", params={"q": "qqqzzz", "k": 3}).json()
    assert none["strategy"] == "popular" and len(none["items"]) == 3
    sim = httpx.get(f"{url}/similar/i000010", params={"k": 4}).json()
    assert len(sim["items"]) == 4 and "i000010" not in item_ids(sim)
    assert sim["strategy"] in ("als_similar", "content_similar")


@pytest.mark.parametrize("method,path,kwargs,status,message", [
    ("get", "/recommendations/u000001", {"params": {"k": 0}}, 422, "greater than or equal to 1"),
    ("get", "/recommendations/u000001", {"params": {"k": 101}}, 422, "less than or equal to 100"),
    ("get", "/recommendations/u000001", {"params": {"k": "ten"}}, 422, "query.k: Input should be a valid integer"),
    ("get", "/recommendations/" + "x" * 129, {}, 422, "at most 128 characters"),
    ("get", "/search", {}, 422, "query.q: Field required"),
    ("get", "/search", {"params": {"q": "a" * 257}}, 422, "at most 256 characters"),
    ("get", "/search", {"params": {"q": "  !! "}}, 422, "no letters or digits"),
    ("get", "/similar/not-an-item", {}, 404, "unknown item_id 'not-an-item'"),
    ("post", "/recommendations", {"content": b'{"events": [', "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "i000001", "event_type": "like"}]}}, 422,
     "body.events.0.event_type: Input should be 'view', 'add_to_cart' or 'purchase'"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "no-such-item"}]}}, 422,
     "unknown item_id in events: 'no-such-item'"),
    ("post", "/recommendations", {"json": {"events": [], "colour": "red"}}, 422, "body.colour: unknown field"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "i000001"}] * 51}}, 422, "at most 50 items"),
    ("post", "/recommendations", {"json": [1, 2]}, 422, "body: expected a JSON object"),
    ("get", "/no/such/endpoint", {}, 404, "no such endpoint"),
    ("delete", "/recommendations/u1", {}, 405, "method DELETE not allowed"),
])
def test_bad_input_gets_a_4xx_that_says_what_to_fix(api, method, path, kwargs, status, message):
    url, _ = api
    r = getattr(httpx, method)(f"{url}{path}", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert message in body["detail"], body
    assert body["request_id"] and "Traceback" not in r.text


def test_metrics_and_impressions(api):
    from tasks.impressions import IMPRESSION_COLUMNS, read_impressions

    url, imp = api
    rid = httpx.get(f"{url}/recommendations/u000003", params={"k": 4}).json()["request_id"]
    text = httpx.get(f"{url}/metrics").text
    assert 'recsys_requests_total{endpoint="recommendations",status="200"}' in text
    assert "recsys_request_latency_seconds_bucket" in text and 'recsys_model_version{alias="champion"}' in text
    assert "recsys_fallbacks_total" in text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # written off the request path
        frame = read_impressions(imp)
        if rid in set(frame["request_id"]):
            break
        time.sleep(0.2)
    assert tuple(frame.columns) == IMPRESSION_COLUMNS
    rows = frame.loc[frame["request_id"] == rid]
    assert list(rows["position"]) == [1, 2, 3, 4] and set(rows["user_id"]) == {"u000003"}
    assert set(rows["endpoint"]) == {"recommendations"} and set(rows["variant"]) == {"champion"}
    assert rows["model_version"].notna().all() and str(rows["ts"].dtype).startswith("datetime64")
