"""Typed flow parameters: bad values are rejected with a message that says which field and why."""

import pytest
from pydantic import ValidationError

from recsys.models.ops_config import BackfillParams, BatchScoreParams, DaskOptions, EvaluatePromoteParams


def test_backfill_cutoffs_step_through_the_range_and_keep_the_config():
    p = BackfillParams(start="2026-02-02", end="2026-02-16", step_days=7)
    assert p.cutoffs() == ["2026-02-02", "2026-02-09", "2026-02-16"]
    assert BackfillParams(start="2026-02-02", end="2026-02-15", step_days=7).cutoffs() == ["2026-02-02", "2026-02-09"]
    c = p.config_at("2026-02-09")
    assert c.split.cutoff == "2026-02-09" and c.promote is False
    assert c.split.label_days == p.config.split.label_days and p.config.split.cutoff is None  # no mutation
    assert c.config_hash() != p.config_at("2026-02-16").config_hash()


@pytest.mark.parametrize("kwargs, message", [
    (dict(start="2026-02-10", end="2026-02-01"), "end 2026-02-01 is before start 2026-02-10"),
    (dict(start="2026-02-01", end="2026-02-10", step_days=0), "step_days\n  Input should be greater than or equal to 1"),
    (dict(start="2026-02-31", end="2026-03-10"), "start\n  Input should be a valid date"),
    (dict(start="2020-01-01", end="2026-01-01", step_days=1), "at most 200 per backfill"),
    (dict(start="2026-02-01", end="2026-02-10", dask={"address": "scheduler:8786"}), "not a Dask scheduler address"),
    (dict(start="2026-02-01", end="2026-02-10", config={"k": 0}), "config.k\n  Input should be greater than or equal to 1"),
    (dict(start="2026-02-01", end="2026-02-10", stepdays=3), "stepdays\n  Extra inputs are not permitted"),
])
def test_bad_backfill_values_are_rejected_with_a_readable_message(kwargs, message):
    with pytest.raises(ValidationError) as err:
        BackfillParams(**kwargs)
    assert message in str(err.value)


def test_other_params_validate_versions_and_sizes():
    with pytest.raises(ValidationError, match="version"):
        EvaluatePromoteParams(version="v3")
    assert EvaluatePromoteParams(version="3").version == "3"
    with pytest.raises(ValidationError, match="k\n  Input should be less than or equal to 200"):
        BatchScoreParams(k=500)
    assert not DaskOptions().enabled and DaskOptions(local_workers=2).enabled
    assert DaskOptions(address="tcp://10.0.0.5:8786").enabled


def test_params_publish_a_json_schema_for_the_ui_form():
    schema = BackfillParams.model_json_schema()
    assert set(schema["required"]) == {"start", "end"}
    assert schema["properties"]["step_days"]["minimum"] == 1
    assert schema["properties"]["start"]["format"] == "date"
