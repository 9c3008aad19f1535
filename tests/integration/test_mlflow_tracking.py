"""What a person sees in MLflow after a training run: one parent run, a child run per stage, lineage."""

import json

import pytest
from mlflow import MlflowClient

from recsys.tasks.paths import tracking_uri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client():
    return MlflowClient(tracking_uri())


def _children(client, run):
    return client.search_runs([run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")


def test_parent_run_has_lineage_tags_datasets_and_stable_metric_keys(first_run, client):
    run = client.get_run(first_run["run_id"])
    tags = run.data.tags
    # the verdict first, short enough for the runs table
    assert run.info.run_name.startswith("v1 champion (cutoff ") and len(run.info.run_name) <= 40
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags.get("prefect.flow_run_url", "http").startswith("http")  # absent without a Prefect UI, never "None/"
    # the numbers that decide sort first: model vs best baseline, the gate
    m = run.data.metrics
    first = sorted(m)[:8]
    assert "0_summary.model.ndcg_at_10" in first and "0_summary.best_baseline.ndcg_at_10" in first
    assert "0_summary.gate.promoted" in first and m["0_summary.gate.promoted"] == 1.0
    best = tags["summary.best_baseline"]
    assert m["0_summary.best_baseline.ndcg_at_10"] == max(v for k, v in m.items() if k.startswith("baseline.")
                                                          and k.endswith(".ndcg_at_10") and k.count(".") == 2) == m[f"baseline.{best}.ndcg_at_10"]
    version = client.get_model_version("recsys", first_run["version"])
    assert f"vs best baseline {best}" in version.description and "Gate: no champion yet" in version.description
    assert "champion" in client.get_registered_model("recsys").description
    for key in ("flow", "data_window", "dataset_digest", "code_version", "config_hash", "als_device",
                "prefect.flow_run_id", "split.train_end", "gate.decision", "gate.reason"):
        assert tags.get(key), key
    assert "Promotion gate" in tags["mlflow.note.content"]
    inputs = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]: d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "label", "test"}
    for context, ds in inputs.items():
        assert ds.name == f"events-{context}" and len(ds.digest) == 16 and "user_id" in ds.schema
        assert '"num_rows"' in ds.profile
    assert len({ds.digest for ds in inputs.values()}) == 3
    m = run.data.metrics
    for key in ("test.ndcg_at_10", "baseline.popularity.ndcg_at_10", "baseline.als.recall_at_10",
                "recall.als_recall_at_100", "gate.challenger", "data.events"):
        assert key in m, (key, sorted(m))
    assert any(k.startswith("recall.union_recall_at_") for k in m)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/metric_at_k.png", "plots/recall_by_source.png", "plots/gate.png",
            "plots/feature_importance.png"} <= artifacts
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gate_report.md", "gate_report.json", "data_profile.md", "tables"} <= top


def test_one_child_run_per_stage_in_order(first_run, client):
    run = client.get_run(first_run["run_id"])
    children = {c.data.tags["stage"]: c for c in _children(client, run)}
    assert set(children) == {"data", "recall", "rank", "evaluate", "gate"}
    assert sorted(c.info.run_name for c in children.values()) == ["1 data", "2 recall", "3 rank", "4 evaluate",
                                                                 "5 gate"]
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert children["data"].inputs.dataset_inputs
    assert "data_profile.csv" in {a.path for a in client.list_artifacts(children["data"].info.run_id)}
    assert any(k.startswith("recall.") for k in children["recall"].data.metrics)
    history = client.get_metric_history(children["rank"].info.run_id, "rank.valid.ndcg_at_10")
    assert len(history) > 1
    # metric@k curves, step = k, for the model and every baseline
    curve_keys = {k for k in children["evaluate"].data.metrics if k.startswith("curve.")}
    assert {"curve.test.ndcg_at_k", "curve.baseline.popularity.ndcg_at_k", "curve.baseline.als.recall_at_k",
            "curve.baseline.repeat.hitrate_at_k"} <= curve_keys
    steps = [h.step for h in client.get_metric_history(children["evaluate"].info.run_id, "curve.test.recall_at_k")]
    assert sorted(steps) == list(range(1, 21))
    gate = children["gate"]
    assert gate.data.tags["gate.decision"] == "promoted"
    assert "gate.promoted" in gate.data.metrics and "gate.guardrail.latency_p95.challenger" in gate.data.metrics
    assert {"gate_report.md", "gate_report.json"} <= {a.path for a in client.list_artifacts(gate.info.run_id)}


def test_a_guardrail_vetoes_in_a_real_flow_and_says_so_everywhere(first_run, client):
    from recsys.flows.train import train
    from recsys.models.evaluation import EvaluationParams
    from recsys.models.gate import GateParams
    from tests.integration.conftest import small_config

    # an impossible latency cap: the primary decision (first model) would promote, the guardrail vetoes;
    # evaluation and the gate score a 40-user sample of the window
    result = train(config=small_config(registered_model="recsys-veto", gate=GateParams(max_p95_latency_ms=0.001),
                                       evaluation=EvaluationParams(max_users=40)))
    assert not result["promoted"] and result["reason"].startswith("vetoed by guardrail latency_p95")
    run = client.get_run(result["run_id"])
    assert run.data.tags["gate.decision"] == "rejected" and run.data.tags["gate.vetoed_by"] == "latency_p95"
    assert run.data.metrics["gate.guardrail.latency_p95.passed"] == 0.0
    assert run.info.run_name.startswith(f"v{result['version']} not promoted (cutoff ")
    version = client.get_model_version("recsys-veto", result["version"])
    assert version.tags["gate.decision"] == "rejected" and "latency_p95" in version.tags["gate.reason"]
    assert "champion" not in client.get_registered_model("recsys-veto").aliases
    report = client.download_artifacts(run.info.run_id, "gate_report.md")
    assert "**VETO**" in open(report).read()
    gate_json = json.load(open(client.download_artifacts(run.info.run_id, "gate_report.json")))
    assert gate_json["n_users"] == 40 < gate_json["users_in_window"]
    assert run.data.metrics["test.n_users"] == 40 < run.data.metrics["test.n_users_in_window"]
    assert run.data.params["evaluation.max_users"] == "40"
