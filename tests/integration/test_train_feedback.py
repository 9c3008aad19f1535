"""`recsys train --feedback on` with the service's impressions on disk: the exposure features and the shown-and-
ignored negatives reach the ranker, `feedback.*` params and metrics are logged, and the registered model
carries its exposure snapshot (a fresh load scores with the same feature list)."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.integration.conftest import small_config

pytestmark = pytest.mark.integration
MODEL = "recsys-exposure"


def _write_impressions(directory, events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Service-format records: each active user of [start, end) was shown 10 items an hour before one of their
    events, on the events' clock (`event_ts`); the service's own clock (`ts`) is today, as in a simulation."""
    rng = np.random.default_rng(5)
    events = events[events["item_id"].notna()]
    items = events["item_id"].astype(str).unique()
    w = events[(events["ts"] >= start) & (events["ts"] < end)].drop_duplicates("user_id")
    now = pd.Timestamp.now(tz="UTC")
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (user, item, ts) in enumerate(zip(w["user_id"].astype(str), w["item_id"].astype(str), w["ts"])):
        shown = [item, *rng.choice(items, 9, replace=False)]
        lines.append(json.dumps({"request_id": f"r{n}", "ts": now.isoformat(), "endpoint": "recommendations",
                                 "user_id": user, "model_version": "1", "variant": "champion", "query": None,
                                 "event_ts": (ts - pd.Timedelta(hours=1)).isoformat(),
                                 "items": [{"item_id": i, "score": 1.0, "strategy": "model"} for i in shown]}))
    (directory / f"impressions-{now:%Y-%m-%d}.jsonl").write_text("\n".join(lines) + "\n{broken\n")
    return len(lines)


def test_train_with_impressions_logs_exposure_features_and_feedback_metrics(first_run, tmp_path):
    from recsys.features.exposure import EXPOSURE_FEATURES, ExposureParams
    from recsys.flows.train import train
    from recsys.models.pyfunc import RecsysModel  # noqa: F401  (the registered flavour)
    from recsys.tasks import tracking
    from recsys.tasks.data import read_events
    from recsys.tasks.impressions import read_impressions
    from recsys.tasks.paths import data_dir

    events = read_events(data_dir())
    end = events["ts"].max().normalize() + pd.Timedelta(days=1)
    label_start = end - pd.Timedelta(days=14)  # the default split: 7 label days, 7 test days
    imp = tmp_path / "impressions"
    n = _write_impressions(imp, events, label_start - pd.Timedelta(days=7), end - pd.Timedelta(days=7))
    assert n > 50

    off = first_run  # the session's first training: feedback off (the default)
    on = train(config=small_config(registered_model=MODEL, promote=False,
                                   feedback=ExposureParams(enabled=True, impressions_dir=str(imp))))
    c = tracking.client()
    run_off, run_on = c.get_run(off["run_id"]), c.get_run(on["run_id"])
    assert run_off.data.params["feedback.enabled"] == "False"
    assert not any(k.startswith("feedback.") for k in run_off.data.metrics)
    assert run_on.data.params["feedback.enabled"] == "True"
    assert run_on.data.params["feedback.impressions_dir"] == str(imp)
    m = run_on.data.metrics
    read = read_impressions(imp)
    assert len(read) == 10 * n and read.attrs["bad_lines"] == 1  # one row per shown item; the broken line skipped
    assert m["feedback.impressions"] == 10 * n
    assert m["feedback.impressions_before_train_end"] > 0 and m["feedback.impressions_in_label_window"] > 0
    assert m["feedback.negatives"] > 0 and m["feedback.pairs_shown"] > 0
    assert 0 <= m["feedback.exposure_gain_share"] <= 1
    rank = c.search_runs([run_on.info.experiment_id],
                         f"tags.mlflow.parentRunId = '{run_on.info.run_id}' and tags.stage = 'rank'")
    assert len(rank) == 1
    importance = c.download_artifacts(rank[0].info.run_id, "tables/feature_importance.csv", str(tmp_path))
    assert set(EXPOSURE_FEATURES) <= set(pd.read_csv(importance)["feature"])

    # the registered model carries the snapshot; a fresh load scores with the exposure features
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{on['version']}")
    rec = model.unwrap_python_model().recommender
    assert rec.feature_names[-len(EXPOSURE_FEATURES):] == list(EXPOSURE_FEATURES)
    assert rec.exposure is not None and len(rec.exposure.pairs) > 0
    out = model.predict(pd.DataFrame({"user_id": events["user_id"].astype(str).unique()[:3]}), params={"k": 5})
    assert len(out) == 15
