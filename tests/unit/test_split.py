import pandas as pd

from recsys.features.split import SplitParams, temporal_split, window


def test_windows_end_the_day_after_the_last_event():
    s = temporal_split(pd.Timestamp("2026-03-01 13:00", tz="UTC"), SplitParams(label_days=7, test_days=7))
    assert s.test_end == pd.Timestamp("2026-03-02", tz="UTC")
    assert s.label_end == pd.Timestamp("2026-02-23", tz="UTC")
    assert s.train_end == pd.Timestamp("2026-02-16", tz="UTC")


def test_explicit_cutoff_wins():
    s = temporal_split(pd.Timestamp("2026-03-01", tz="UTC"), SplitParams(label_days=3, test_days=2, cutoff="2026-02-10"))
    assert (s.train_end, s.label_end, s.test_end) == (
        pd.Timestamp("2026-02-05", tz="UTC"), pd.Timestamp("2026-02-08", tz="UTC"), pd.Timestamp("2026-02-10", tz="UTC"))


def test_window_is_half_open():
    ts = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)
    ev = pd.DataFrame({"ts": ts})
    got = window(ev, pd.Timestamp("2026-01-02", tz="UTC"), pd.Timestamp("2026-01-03", tz="UTC"))
    assert got["ts"].tolist() == [ts[1]]
