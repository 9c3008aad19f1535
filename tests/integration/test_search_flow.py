"""Learned search end to end: trained by the real training flow, logged (search.*) and registered in MLflow
with the recommender (one pyfunc, one alias), and served by /search of the service over loopback."""

import httpx
import pytest
from mlflow import MlflowClient

from recsys.tasks.paths import tracking_uri
from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration


def test_training_logs_search_metrics_and_registers_the_search_model(first_run):
    run = MlflowClient(tracking_uri()).get_run(first_run["run_id"])
    m = run.data.metrics
    for key in ("search.ndcg_at_10", "search.mrr", "search.bm25.ndcg_at_10", "search.bm25.mrr",
                "search.n_searches"):
        assert key in m, key
    assert m["search.n_searches"] > 50
    assert 0 < m["search.ndcg_at_10"] <= 1
    assert m["search.ndcg_at_10"] > m["search.bm25.ndcg_at_10"]  # learned beats its own retrieval order

    from recsys.tasks.tracking import load_recommender

    rec = load_recommender("recsys", first_run["version"])  # the registered pyfunc carries it
    assert rec.search_model is not None and rec.search_model.booster is not None


def ids(url: str, q: str, user: str | None = None, k: int = 10) -> list[str]:
    params = {"q": q, "k": k, **({"user_id": user} if user else {})}
    r = httpx.get(f"{url}/search", params=params)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_search_serves_the_learned_ranker_with_stems_and_typos(first_run, service):
    service, proc = service("--poll-interval", "0")
    wait_ready(f"{service}/ready", proc)
    version = httpx.get(f"{service}/version").json()
    assert version["search"]["retrieval"].startswith("lexical (bm25)")
    assert version["search"]["ranker"] == "lambdarank"
    assert version["search"]["semantic"].startswith("off: ")
    # the synthetic catalogue says "backpack" and "headphones"; singular/plural and a typo find the same items
    assert ids(service, "backpacks") == ids(service, "backpack") != []
    assert ids(service, "bakcpack") == ids(service, "backpack")
    assert ids(service, "headphone") == ids(service, "headphones") != []
    # personalised: the same query, different shoppers, different orders
    orders = {tuple(ids(service, "lamp", f"u{u:06d}")) for u in range(1, 13)}
    assert len(orders) > 1
