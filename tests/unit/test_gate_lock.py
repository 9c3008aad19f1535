import multiprocessing as mp
import time

import pytest


def _hold(home, q):
    import os

    os.environ["RECSYS_HOME"] = home
    from recsys.tasks.tracking import gate_lock

    with gate_lock("m"):
        q.put("held")
        time.sleep(2)


def test_gate_lock_is_exclusive_across_processes_and_times_out_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    from recsys.tasks.tracking import gate_lock

    q = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_hold, args=(str(tmp_path), q))
    proc.start()
    assert q.get(timeout=60) == "held"
    with pytest.raises(TimeoutError, match="another run has held the promotion lock .*gate-m.lock for 0.3 s"):
        with gate_lock("m", timeout_s=0.3):
            pass
    t0 = time.monotonic()
    with gate_lock("m", timeout_s=30):  # released when the holder is done
        assert time.monotonic() - t0 < 30
    proc.join(30)
