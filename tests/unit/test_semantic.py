"""The two query-encoder backends of the [semantic] extra give the same embeddings (skips without the extra)."""

import numpy as np
import pytest

from recsys.models import semantic as M

TEXTS = ["sofa", "grey fabric couch", "oak dining table for six people", "red bag", "kichen tabel",
         "a much longer product description " * 10]


def _onnx_missing() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} not installed"
    return M.why_not()


@pytest.mark.skipif(_onnx_missing() is not None, reason=f"semantic extra with onnxruntime: {_onnx_missing()}")
def test_onnx_backend_is_the_default_and_agrees_with_torch(monkeypatch):
    monkeypatch.delenv(M.BACKEND_ENV, raising=False)
    onnx = M.load_encoder()
    assert onnx.backend == "onnx"
    monkeypatch.setenv(M.BACKEND_ENV, "torch")
    torch = M.load_encoder()
    assert torch.backend == "torch"
    a, b = onnx.encode(TEXTS), torch.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.9999  # the same model, not an approximation of it
    # one query alone (no padding) = the same query inside a padded batch; the LRU hands back that vector
    for i, text in enumerate(TEXTS):
        assert float(onnx.encode_query(text) @ a[i]) > 0.9999
    assert onnx.encode_query("sofa") is onnx.encode_query("sofa")


def test_an_unknown_backend_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(M.BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match="RECSYS_SEMANTIC_BACKEND='tensorrt': expected onnx or torch"):
        M._backend()
