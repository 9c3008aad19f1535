"""ALS device selection. CUDA-only checks are marked `gpu` and skip cleanly without CUDA."""

import numpy as np
import pandas as pd
import pytest

from recsys.features.interactions import build_interaction_data
from recsys.models.gpu import cuda_status
from recsys.models.recall import ALSParams, ALSSource, resolve_device

HAS_CUDA = cuda_status()[0]
REF = pd.Timestamp("2026-01-10", tz="UTC")


def test_auto_and_cpu_resolve_without_a_gpu():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("gpu" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        resolve_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised where CUDA is absent")
def test_gpu_request_without_cuda_fails_with_an_actionable_message():
    with pytest.raises(RuntimeError) as err:
        resolve_device("gpu")
    msg = str(err.value)
    assert "cannot load" in msg and "pip install -e '.[gpu]'" in msg and "--device cpu" in msg


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs implicit's CUDA extension and an NVIDIA GPU")
def test_gpu_and_cpu_agree_and_a_gpu_model_loads_on_cpu(checkerboard, tmp_path):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    users = np.arange(data.n_users)
    recs = {}
    for device in ("cpu", "gpu"):
        src = ALSSource(ALSParams(factors=8, iterations=30, regularization=0.01, device=device)).fit(data)
        assert src.device == device
        ids, _ = src.model.recommend(users, data.weighted[users], N=1, filter_already_liked_items=True)
        recs[device] = ids[:, 0]
        if device == "gpu":
            src.save(tmp_path)  # fit on GPU, stored via to_cpu()
            loaded = ALSSource.load(tmp_path, data)
            np.testing.assert_allclose(loaded.model.item_factors, src.model.item_factors, rtol=1e-5)
    # both recover the held-out diagonal on this known-answer matrix
    assert (recs["cpu"] == recs["gpu"]).mean() >= 0.9
