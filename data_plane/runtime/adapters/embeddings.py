"""Text embeddings for long-term memory: local (no network) or a provider's through litellm.

``LocalEmbedder`` (common/local_embeddings.py, shared with the guardrails) runs all-MiniLM-L6-v2 as an int8
ONNX model on this machine's CPU.

``ProviderEmbedder`` asks a provider's embedding model through litellm for vectors of the same
dimensions (384; models such as text-embedding-3-* shorten their vectors on request), so every
memory of a tenant fits one pgvector column and one HNSW index whatever model embedded it.
Each memory records which model embedded it; only vectors of the same model are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common.local_embeddings import DIMENSIONS, LOCAL_MODEL_ID, EmbeddingUnavailable, LocalEmbedder, local_embedder

__all__ = ["DIMENSIONS", "LOCAL_MODEL_ID", "Embedder", "EmbeddingUnavailable", "LocalEmbedder", "ProviderEmbedder",
           "local_embedder"]


class Embedder(Protocol):
    model_id: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector of ``dimensions`` floats per text, in order."""
        ...


class ProviderEmbedder:
    """A provider's embedding model through litellm, asked for ``DIMENSIONS``-long vectors."""

    dimensions = DIMENSIONS

    def __init__(self, *, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout_seconds: float = 30.0) -> None:
        self.model = model
        self.model_id = model
        self.api_base, self.api_key, self.timeout = api_base, api_key, timeout_seconds

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        import litellm

        try:
            response = litellm.embedding(model=self.model, input=list(texts), dimensions=self.dimensions,
                                         api_base=self.api_base, api_key=self.api_key, timeout=self.timeout)
        except Exception as exc:  # litellm raises its own and the vendor's exception types
            raise EmbeddingUnavailable(f"{self.model}: {exc}") from exc
        rows = sorted(response.data, key=lambda item: item["index"])
        vectors = [list(map(float, item["embedding"])) for item in rows]
        if len(vectors) != len(texts) or any(len(v) != self.dimensions for v in vectors):
            raise EmbeddingUnavailable(f"{self.model} did not return {len(texts)} vectors of {self.dimensions} "
                                       f"dimensions; choose a model that can shorten its vectors.")
        return [_normalised(v) for v in vectors]


def _normalised(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]
