import time

from recsys.models import progress


def test_long_stage_reports_rate_and_eta_once_per_interval_short_stage_stays_silent():
    lines = []
    with progress.reporting(lines.append, every_s=0.05):
        for i in range(1, 11):
            time.sleep(0.02)
            progress.step("ranker", i, 10, "iterations", rows=i * 1000)
        for i in range(1, 4):  # finishes within one interval: no line
            progress.step("tiny", i, 3, "blocks")
        progress.note("stage 2/3: ranking")
    assert 3 <= len(lines) <= 7, lines  # not one per iteration
    assert lines[0].startswith("ranker: ") and "rows/s" in lines[0] and "ETA" in lines[0]
    assert lines[-2].startswith("ranker: 10/10 iterations (100%)") and "done in" in lines[-2]
    assert lines[-1] == "stage 2/3: ranking" and not any(line.startswith("tiny") for line in lines)
    progress.step("outside", 1, 1)  # no reporter: nothing happens, nothing raised


def test_two_stage_training_reports_its_stages(monkeypatch):
    from recsys.features.synthetic import SyntheticParams, SyntheticWorld
    import pandas as pd

    from recsys.features.split import SplitParams, temporal_split
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import TwoStageParams
    from recsys.models.two_stage_training import train_two_stage

    world = SyntheticWorld(SyntheticParams(n_users=120, n_items=60, n_days=21, seed=1))
    catalog = world.catalog()
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    split = temporal_split(events["ts"].max(), SplitParams(label_days=5, test_days=5))
    lines = []
    with progress.reporting(lines.append, every_s=0.0):  # every step: shows each kind of line
        train_two_stage(events, catalog, split.train_end, split.label_end,
                        TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu")))
    assert [line[:9] for line in lines if line.startswith("stage")] == ["stage 1/3", "stage 2/3", "stage 3/3"]
    assert any(line.startswith("ALS (") and "3/3 iterations" in line for line in lines)
    assert any(line.startswith("ranker (") and "rows/s" in line for line in lines)
