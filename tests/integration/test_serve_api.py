"""The service's endpoints over loopback: sessions, search, similar, robust input, metrics, impressions,
and its contract: schemathesis against /openapi.json, the body size limit, /docs without internet."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration
PROCS: dict = {}  # url -> the service process of the module fixture


@pytest.fixture(scope="module")
def api(first_run, recsys_home, tmp_path_factory):
    """One service process for the module, with its own impressions directory."""
    from tests.integration.conftest import free_port, start_logged

    imp = tmp_path_factory.mktemp("impressions")
    port = free_port()
    proc = start_logged([str(Path(sys.executable).parent / "recsys"), "serve", "--port", str(port),
                         "--log-level", "warning", "--impressions-dir", str(imp), "--poll-interval", "0"],
                        imp.parent / "serve-api.log", env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/ready", proc)
        PROCS[url] = proc
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
    # a new visitor with a session gets the path tuned for new users (recsys.models.cold_start), named in /version
    tuned = httpx.get(f"{url}/version").json()["cold_start"]
    assert anon["strategy"] == tuned["session"].split(",")[0] and popular["strategy"] == "popular"
    assert anon["strategy"] in {"session", "session_covis", "session_category", "session_blend", "popular"}
    if anon["strategy"] != "popular":
        assert item_ids(anon) != item_ids(popular)
    assert {i["strategy"] for i in anon["items"]} <= {anon["strategy"], "content"}


def test_new_visitor_by_landing_category(api):
    url, _ = api
    popular = httpx.get(f"{url}/recommendations/nobody-yet", params={"k": 10}).json()
    shoes = httpx.get(f"{url}/recommendations/nobody-yet", params={"k": 10, "category": "shoes"}).json()
    garden = httpx.post(f"{url}/recommendations", json={"category": "garden", "k": 10}).json()
    assert shoes["strategy"] == garden["strategy"] == "popular_category"
    assert {i["strategy"] for i in shoes["items"]} == {"popular_category"} and len(shoes["items"]) == 10
    assert item_ids(shoes) != item_ids(popular) and item_ids(shoes) != item_ids(garden)
    unknown = httpx.get(f"{url}/recommendations/nobody-yet", params={"k": 10, "category": "no such shelf"}).json()
    assert unknown["strategy"] == "popular" and item_ids(unknown) == item_ids(popular)
    known = httpx.get(f"{url}/recommendations/u000001", params={"k": 10, "category": "shoes"}).json()
    assert known["strategy"] == "model"  # a known user's list ignores the landing category
    docs = httpx.get(f"{url}/openapi.json").json()
    params = docs["paths"]["/recommendations/{user_id}"]["get"]["parameters"]
    assert any(p["name"] == "category" and "popular_category" in p["description"] for p in params)


def test_search_and_similar(api):
    url, _ = api
    r = httpx.get(f"{url}/search", params={"q": "red", "k": 5, "user_id": "u000002"}).json()
    assert r["strategy"] == "search" and len(r["items"]) == 5 and r["query"] == "red"
    none = httpx.get(f"{url}/search", params={"q": "qqqzzz", "k": 3}).json()
    assert none["strategy"] == "popular" and len(none["items"]) == 3
    for q in ("  !! ", "\x16"):  # no word to search for: what the schema allows is answered, popular items
        nothing = httpx.get(f"{url}/search", params={"q": q, "k": 3})
        assert nothing.status_code == 200 and nothing.json()["strategy"] == "popular", nothing.text
        assert nothing.json()["query"] == q
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
    ("get", "/similar/not-an-item", {}, 404, "unknown item_id 'not-an-item'"),
    ("post", "/recommendations", {"content": b'{"events": [', "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "i000001", "event_type": "like"}]}}, 422,
     "body.events.0.event_type: Input should be 'view', 'add_to_cart' or 'purchase'"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "no-such-item"}]}}, 404,
     "unknown item_id in events: 'no-such-item'"),
    ("post", "/recommendations", {"json": {"events": [], "colour": "red"}}, 422, "body.colour: unknown field"),
    ("post", "/recommendations", {"json": {"events": [{"item_id": "i000001"}] * 51}}, 422, "at most 50 items"),
    ("post", "/recommendations", {"json": [1, 2]}, 422, "body: expected a JSON object"),
    ("post", "/recommendations", {"json": {"k": True}}, 422, "body.k: expected an integer, got bool True"),
    ("post", "/recommendations", {"json": {"k": "5"}}, 422, "body.k: expected an integer, got str '5'"),
    ("post", "/recommendations", {"json": {"k": 2.5}}, 422, "body.k: Input should be a valid integer"),
    ("post", "/recommendations", {"content": b'{"k": 3}', "headers": {"content-type": "text/plain"}}, 415,
     "Content-Type 'text/plain' is not supported; send the body as JSON with Content-Type: application/json"),
    ("post", "/recommendations", {"content": b'{"k": "\xff"}', "headers": {"content-type": "application/json"}},
     400, "the request body could not be read (UnicodeDecodeError): send UTF-8 JSON"),
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
    from recsys.tasks.impressions import IMPRESSION_COLUMNS, read_impressions

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


def test_schemathesis_finds_no_contract_violation(api, tmp_path):
    """Every check schemathesis has (status codes, content types, response schemas, negative and positive
    data, unsupported methods, ...) against the running service's own /openapi.json. Seeded, so a failure
    reproduces; bounded to ~50 cases per operation (about 30 s)."""
    url, _ = api
    exe = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run([str(exe), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "50",
                          "--seed", "14", "--workers", "1", "--report", "junit", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", out.stdout)
    operations = sum(len(ops) for ops in httpx.get(f"{url}/openapi.json").json()["paths"].values())
    assert tested and int(tested.group(1)) == operations == 9, out.stdout
    assert "No issues found" in out.stdout


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_300_mb_body_is_refused_before_it_is_read(api):
    url, _ = api
    host, port = url.removeprefix("http://").split(":")
    pid = PROCS[url].pid
    before = rss_mib(pid)
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # announce 300 MB, send 64 KB
        sock.sendall(b"POST /recommendations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 314572800\r\n\r\n" + b" " * 65536)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"request body larger than 1,048,576 bytes" in answer and time.perf_counter() - t0 < 5

    def chunks():  # no Content-Length: counted while it arrives, refused once past the limit
        for _ in range(300):
            yield b" " * (1 << 20)

    r = httpx.post(f"{url}/recommendations", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and r.json()["request_id"], r.text
    assert rss_mib(pid) - before < 50
    assert httpx.post(f"{url}/recommendations", json={"k": 2}).status_code == 200  # still serving


def test_docs_render_without_internet(api, tmp_path):
    """/docs loads Swagger UI from the service itself; in headless Chromium (when installed) the page
    renders every operation from /openapi.json."""
    url, _ = api
    html = httpx.get(f"{url}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    for a in assets:
        r = httpx.get(f"{url}{a}")
        assert r.status_code == 200 and len(r.content) > 1000, a
    assert "/openapi.json" in html
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium: the rendered page is not checked (apt-get install chromium)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no host but loopback
                          "--dump-dom", f"{url}/docs"], capture_output=True, text=True, timeout=120).stdout
    for path in httpx.get(f"{url}/openapi.json").json()["paths"]:
        assert f'data-path="{path}"' in dom, path
