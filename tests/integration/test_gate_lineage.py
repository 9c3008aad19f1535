"""Issue 13: the gate cannot be fooled. It never scores a model on events it learnt from (a backfill after a
newer champion is "no fair window": no champion score, no `vs` tag, champion kept; an overlapping window is
cut to start at the later training end), and a model of another data set is never gated against the
champion (it fails before training, in one line naming --registered-model)."""

import json

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from recsys.features import schema as S
from recsys.tasks.paths import tracking_uri
from tests.integration.conftest import TINY, small_config

pytestmark = pytest.mark.integration

NAME = "lineage"  # own experiment + registered model: other tests' version numbers stay untouched
CFG = dict(experiment=NAME, registered_model=NAME)


def _report(client, run_id) -> dict:
    path = client.download_artifacts(run_id, "gate_report.json")
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def champion(recsys_home):
    """A champion trained on the newest data: train end 2026-02-02 (label window end), data to 2026-02-09."""
    from recsys.flows.train import train

    result = train(config=small_config(**CFG))
    assert result["promoted"]
    return result


def test_a_backfill_after_a_newer_champion_writes_no_cross_window_numbers(champion):
    from recsys.flows.backfill import backfill
    from recsys.models.ops_config import BackfillParams

    client = MlflowClient(tracking_uri())
    tags = client.get_model_version(NAME, champion["version"]).tags
    assert tags["lineage.train_end"].startswith("2026-02-02") and tags["lineage.dataset"] == "data"
    # its whole test window (2026-01-19 .. 01-26) lies inside the champion's training data; promotion allowed
    result = backfill(params=BackfillParams(start="2026-01-26", end="2026-01-26", config=small_config(**CFG),
                                            promote=True))
    row = result["cutoffs"][0]
    assert row["status"] == "trained" and not row["promoted"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion["version"]
    run = client.get_run(row["run_id"])
    assert run.data.tags["gate.decision"] == "no_fair_window" and run.data.tags["gate.window"] == "none"
    assert "no fair window" in run.data.tags["gate.reason"]
    assert "gate.champion" not in run.data.metrics and "gate.diff" not in run.data.metrics
    # comparable with other backfill runs: the run's own test metrics are there
    assert "test.ndcg_at_10" in run.data.metrics
    champ_tags = client.get_model_version(NAME, champion["version"]).tags
    assert not any(k.startswith(f"gate.vs_v{row['version']}") for k in champ_tags)
    assert client.get_model_version(NAME, row["version"]).tags["gate.decision"] == "no_fair_window"
    report = _report(client, row["run_id"])
    assert report["champion"] is None and report["comparison"] == "no fair window"
    assert report["challenger_train_end"].startswith("2026-01-19")
    assert report["champion_train_end"].startswith("2026-02-02")
    assert report["window"]["start"] is None
    md = open(client.download_artifacts(row["run_id"], "gate_report.md")).read()
    assert "training end (exclusive): challenger 2026-01-19" in md and "window scored: none" in md
    # the Prefect artifact of that train run says the same
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-summary"])))
    mine = [a.data for a in arts if f"version {row['version']}  " in a.data and f"`{NAME}`" in a.data]
    assert len(mine) == 1 and "**Window scored:** none (no fair window)" in mine[0]
    assert "trained until: challenger 2026-01-19" in mine[0] and "champion 2026-02-02" in mine[0]


def test_an_overlapping_window_is_cut_to_start_after_both_training_ends(champion):
    from recsys.flows.train import train

    client = MlflowClient(tracking_uri())
    split = small_config(**CFG).split
    # test window 2026-01-29 .. 02-05; the champion trained until 02-02: only 02-02 .. 02-05 is fair
    cfg = small_config(**CFG, promote=False).model_copy(
        update={"split": type(split)(label_days=7, test_days=7, cutoff="2026-02-05")})
    result = train(config=cfg)
    run = client.get_run(result["run_id"])
    report = _report(client, result["run_id"])
    assert report["comparison"] == "compared" and report["champion"] is not None
    assert report["window"]["label_end"].startswith("2026-01-29")
    assert report["window"]["start"].startswith("2026-02-02") and report["window"]["end"].startswith("2026-02-05")
    assert run.data.tags["gate.window"].startswith("2026-02-02")
    # the scored users are the window's, not the whole test window's
    assert 0 < report["n_users"] <= report["users_in_window"]
    champ_tags = client.get_model_version(NAME, champion["version"]).tags
    assert champ_tags[f"gate.vs_v{result['version']}"] == "kept"


def _other_shop(tmp_path, name: str, prefix: str):
    """The synthetic shop with other item ids (another catalogue), in a data directory called `name`."""
    from recsys.tasks.data import write_synthetic_dataset

    base = tmp_path / name
    write_synthetic_dataset(base, TINY)
    cat = pd.read_parquet(base / "catalog.parquet")
    cat[S.ITEM_ID] = prefix + cat[S.ITEM_ID]
    cat.to_parquet(base / "catalog.parquet", index=False)
    for f in (base / "events").glob("day=*/*.parquet"):
        ev = pd.read_parquet(f)
        ev[S.ITEM_ID] = ev[S.ITEM_ID].where(ev[S.ITEM_ID].isna(), prefix + ev[S.ITEM_ID])
        ev.drop(columns=[c for c in ev.columns if c == S.DAY]).to_parquet(f, index=False)
    return base


def test_another_data_set_is_never_gated_against_the_champion(champion, tmp_path):
    from recsys.flows.cli import app
    from recsys.flows.train import train
    from recsys.tasks.training import DataIdentityError

    client = MlflowClient(tracking_uri())
    before = {mv.version for mv in client.search_model_versions(f"name = '{NAME}'")}
    retail = _other_shop(tmp_path, "retail", "r-")
    out = CliRunner().invoke(app, ["train", "--data-dir", str(retail), "--experiment", NAME,
                                   "--registered-model", NAME, "--factors", "8", "--iterations", "2"])
    assert out.exit_code == 1
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "event store 'retail' is not the champion's 'data'" in errors[0], out.output
    assert f"--registered-model {NAME}-retail" in errors[0]
    # the same directory name but another catalogue: caught by the catalogue fingerprint
    other = _other_shop(tmp_path / "elsewhere", "data", "x-")
    with pytest.raises(DataIdentityError, match="shares ~0% of item ids"):
        train(config=small_config(**CFG, data_dir=str(other)))
    # nothing was registered or compared, the champion did not move
    assert {mv.version for mv in client.search_model_versions(f"name = '{NAME}'")} == before
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion["version"]
    # under its own registered model it trains and becomes that model's champion
    own = train(config=small_config(experiment=NAME, registered_model=f"{NAME}-retail", data_dir=str(retail)))
    assert own["promoted"] and own["version"] == "1"
