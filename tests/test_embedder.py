"""The embedder's two backends give the same vectors, so either can serve an index built by the other."""

import numpy as np
import pytest

from bentos.retrieval.embedder import Embedder, get_embedder
from bentos.settings import RetrievalSettings

TEXTS = [
    "How do I roll back the index?",
    "Is the museum open on Monday?",
    "refund",
    "Ünïcödé façade café — naïve résumé, 東京 and Zürich",
    "Call +44 20 7946 0958 at 09:30 on 2026-12-05 about order #A-1182.",
    " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 40),  # beyond 256 tokens: truncated
    "def add(a, b):\n    return a + b  # code, too",
]


@pytest.fixture(scope="module")
def torch_and_onnx():
    return Embedder(backend="torch"), Embedder(backend="onnx")


def test_onnx_runtime_gives_torchs_vectors(torch_and_onnx):
    torch_e, onnx_e = torch_and_onnx
    assert (torch_e.backend, onnx_e.backend) == ("torch", "onnx")
    a, b = torch_e.embed(TEXTS), onnx_e.embed(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), torch_e.dim)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(TEXTS, cosines.round(5)))
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    # batching does not change a text's vector (padding is masked out)
    assert np.allclose(onnx_e.embed(TEXTS[:1])[0], b[0], atol=1e-5)


def test_the_default_backend_is_onnx_runtime_for_queries_and_torch_for_documents():
    assert RetrievalSettings().embed_backend == "auto"
    embedder = get_embedder()
    assert embedder.backend == "onnx" and embedder.on_onnx(["Who founded the museum?", "When does it open?"])
    assert not embedder.on_onnx(["Who founded the museum?", " ".join(["word"] * 150)])  # a re-index's paragraphs
    assert Embedder(backend="onnx").on_onnx([" ".join(["word"] * 150)])  # asked for: everything


def test_an_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, onnx, torch"):
        Embedder(backend="tensorflow")
    with pytest.raises(ValueError, match="embed_backend"):
        RetrievalSettings(embed_backend="tensorflow")


def test_no_texts_give_no_vectors(torch_and_onnx):
    for e in torch_and_onnx:
        assert e.embed([]).shape == (0, e.dim)
