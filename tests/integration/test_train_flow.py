import pytest
from mlflow import MlflowClient

from recsys.models.gate import GateParams
from recsys.tasks.paths import tracking_uri
from tests.integration.conftest import small_config

pytestmark = pytest.mark.integration


def test_first_run_logs_metrics_registers_and_becomes_champion(first_run):
    client = MlflowClient(tracking_uri())
    run = client.get_run(first_run["run_id"])
    m = run.data.metrics
    for key in ("test.ndcg_at_10", "test.map_at_10", "test.recall_at_10", "test.hitrate_at_10",
                "baseline.popularity.ndcg_at_10", "baseline.als.ndcg_at_10", "recall.als_recall_at_100",
                "baseline.ease.ndcg_at_10", "baseline.rp3beta.ndcg_at_10"):
        assert key in m, key
    # the item-item baselines' settings were chosen on the label window, one of the grid's points
    assert float(run.data.params["tuned.ease.l2"]) in (20.0, 100.0, 500.0)
    assert float(run.data.params["tuned.rp3beta.beta"]) in (0.0, 0.25, 0.5)
    assert run.data.params["tuned.seen_items"] in ("keep", "drop")
    assert run.data.params["tuned.popularity.window_days"] in ("7", "28")
    # the new-user path: chosen on the label window's new buyers, the configured one logged next to it
    assert run.data.params["tuned.cold_start.session_strategy"] in ("popular", "session", "covis", "category", "blend")
    assert float(run.data.params["tuned.cold_start.category_weight"]) in (0.0, 0.5, 0.8, 1.0)
    assert run.data.params["model.cold_start.session_strategy"] == "session"
    assert 0 < m["test.ndcg_at_10"] <= 1
    assert m["test.ndcg_at_10"] > m["baseline.popularity.ndcg_at_10"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["gate.decision"] == "promoted"
    assert {"dataset_digest", "config_hash", "als_device", "prefect.flow_run_id"} <= set(run.data.tags)
    history = client.get_metric_history(run.info.run_id, "rank.valid.ndcg_at_10")
    assert len(history) > 1 and [h.step for h in history] == list(range(len(history)))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/feature_importance.png" in artifacts
    assert first_run["version"] == "1" and first_run["promoted"]
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == "1"


def test_gate_promotes_a_winner_and_keeps_the_champion_against_a_loser(first_run):
    from recsys.flows.train import train

    client = MlflowClient(tracking_uri())
    # margin -1: any challenger clears it -> promoted, the old champion keeps `previous`
    won = train(config=small_config(gate=GateParams(margin=-1.0)))
    assert won["promoted"] and won["version"] == "2"
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("recsys", "previous").version) == "1"
    # margin +1: no challenger can clear it -> champion untouched, reason recorded
    lost = train(config=small_config(gate=GateParams(margin=1.0)))
    assert not lost["promoted"] and lost["version"] == "3"
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == "2"
    run = client.get_run(lost["run_id"])
    assert run.data.tags["gate.decision"] == "rejected"
    assert "margin +1.0000" in run.data.tags["gate.reason"]
    assert client.get_model_version("recsys", "3").tags["gate.decision"] == "rejected"
    assert "gate.ci_low" in run.data.metrics


def test_failed_run_leaves_champion_and_says_why(first_run, monkeypatch):
    from pydantic import ValidationError

    from recsys.flows.train import train
    from recsys.tasks import tracking

    client = MlflowClient(tracking_uri())
    before = str(client.get_model_version_by_alias("recsys", "champion").version)
    n_versions = len(tracking.version_numbers("recsys"))
    # a bad gate metric fails with the parameters, before any work: no run, no version
    with pytest.raises(ValidationError, match="gate.metric 'no_such_metric' is not a per-user metric"):
        small_config(gate=GateParams(metric="no_such_metric", margin=-1.0))
    assert len(tracking.version_numbers("recsys")) == n_versions
    # a failure after registration (the gate cannot load the challenger): run FAILED with the reason
    def broken(name, version):
        raise ValueError(f"gate could not load {name} v{version}")

    monkeypatch.setattr(tracking, "load_recommender", broken)
    with pytest.raises(ValueError, match="gate could not load"):
        train(config=small_config(gate=GateParams(margin=-1.0)))
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == before
    failed = client.search_runs([client.get_experiment_by_name("recsys").experiment_id],
                                filter_string="attributes.status = 'FAILED' and tags.flow = 'train'",
                                order_by=["attributes.start_time DESC"])
    parent = [r for r in failed if "mlflow.parentRunId" not in r.data.tags][0]
    assert "gate could not load" in parent.data.tags["failure"] and parent.info.run_name.startswith("FAILED (cutoff ")


def test_registered_model_loads_in_a_fresh_process(first_run, recsys_home):
    import json
    import subprocess
    import sys

    code = ("import mlflow, pandas as pd, json; m = mlflow.pyfunc.load_model('models:/recsys@champion'); "
            "out = m.predict(pd.DataFrame({'user_id': ['u000001', 'nobody']}), params={'k': 5}); "
            "print(json.dumps(out.groupby('user_id').size().to_dict()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=recsys_home)  # not the repo: the model must carry its own code
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"nobody": 5, "u000001": 5}


def test_train_rejects_an_unknown_tuning_mode_in_one_line():
    from typer.testing import CliRunner

    from recsys.flows.cli import app

    for args, says in ((["--tune", "always"], "--tune must be off, quick or full, not 'always'"),
                       (["--popularity-days", "14"], "--popularity-days must be 7 or 28 (not 14)"),
                       (["--seen-items", "sometimes"], "not 'sometimes'"),
                       (["--tune", "full", "--tune-budget-s", "0"], "--tune-budget-s must be > 0 (not 0.0)"),
                       (["--tune-trials", "0"], "--tune-trials >= 1 (not 0)"),
                       (["--tune", "full", "--dask-workers", "2"], "--tune full with --dask-workers/--dask-address")):
        out = CliRunner().invoke(app, ["train", *args])
        assert out.exit_code != 0 and "Traceback" not in out.output
        assert says in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_full_tuning_is_refused_on_dask_before_anything_is_read():
    from recsys.models.dask_options import DaskOptions
    from recsys.models.tuning import SearchParams
    from recsys.tasks.training import TUNE_FULL_ON_DASK, load_data

    config = small_config(tuning=SearchParams(mode="full"), dask=DaskOptions(address="tcp://127.0.0.1:1"))
    with pytest.raises(ValueError, match="--tune full is not available on a Dask cluster") as err:
        load_data.fn(config, "tcp://127.0.0.1:1")  # no scheduler there: refused before connecting
    assert str(err.value) == TUNE_FULL_ON_DASK


def test_full_tuning_logs_each_trial_and_the_next_run_reuses_the_settings(first_run, tmp_path):
    """--tune full in the real flow: an Optuna search on earlier windows, one child run per trial, the chosen
    settings as `tuned.*` params; the next run on the same data reuses them without searching."""
    import json

    from recsys.flows.train import train
    from recsys.models.tuning import SearchParams

    client = MlflowClient(tracking_uri())
    names = dict(experiment="recsys-tuned", registered_model="recsys-tuned")
    searched = train(config=small_config(tuning=SearchParams(mode="full", max_trials=3), **names))
    run = client.get_run(searched["run_id"])
    assert run.data.tags["tuning.decision"].startswith("searched: no earlier full tuning")
    assert run.data.tags["tuning.settings_from"] == run.info.run_id
    exp = client.get_experiment_by_name("recsys-tuned").experiment_id
    trials = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' "
                                                     "and tags.stage = 'tune'")
    assert sorted(t.info.run_name for t in trials) == [f"0 tune trial {n}" for n in range(3)]
    assert all(0 <= t.data.metrics["validation.ndcg_at_10"] <= 1 and "als.factors" in t.data.params for t in trials)
    best = max(trials, key=lambda t: t.data.metrics["validation.ndcg_at_10"])
    assert run.data.metrics["tuning.validation.ndcg_at_10"] == best.data.metrics["validation.ndcg_at_10"]
    for name in ("als.factors", "ranker.num_leaves", "recall.covis", "interactions.half_life_days", "seen_items"):
        assert run.data.params[f"tuned.{name}"] == best.data.params[name], name
    with open(client.download_artifacts(run.info.run_id, "tuning/tuned.json", str(tmp_path))) as f:
        record = json.load(f)
    assert record["fingerprint"]["events"] > 0 and len(record["fingerprint"]["item_sketch"]) > 0

    reused = train(config=small_config(tuning=SearchParams(mode="full", max_trials=3), **names))
    again = client.get_run(reused["run_id"])
    assert again.data.tags["tuning.decision"] == f"reused from run {run.info.run_id}: data still fits"
    assert again.data.tags["tuning.settings_from"] == run.info.run_id
    assert not client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{again.info.run_id}' "
                                                       "and tags.stage = 'tune'")
    assert {k: v for k, v in again.data.params.items() if k.startswith("tuned.")} \
        == {k: v for k, v in run.data.params.items() if k.startswith("tuned.")}
