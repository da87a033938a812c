"""Engine mode: a job's ``input`` is a chat completions request body, run by one of
our engines in the worker itself; the result's ``answer`` is the whole JSON answer.

The input is held to the same bounds as a request at the backend (``RequestLimits``
and ``--max-tokens-limit``, through the chat API adapter), so a job cannot ask the
engine for more than an API request could. ``stream`` is ignored: the answer is
reported whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from inferno.api import ChatAPI, RenderMeta
from inferno.config import RequestLimits
from inferno.engines import Engine, TextGenerationEngine
from inferno.errors import ClientError, ConfigError, InfernoError
from inferno.worker.runner import JobResult, JobSpec, Runner, effective_limit

CHAT = ChatAPI()


class EngineRunner(Runner):
    """Runs chat completions jobs on one text-generation engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        node: str,
        limit_s: float = 0.0,
        max_tokens_limit: int = 4096,
        limits: RequestLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(engine, TextGenerationEngine):
            what = engine.name or engine.model_id
            raise ConfigError(f"engine {what!r} does not generate text; the worker runs chats")
        self.engine = engine
        self._node = node
        self._limit_s = limit_s
        self._max_tokens = max_tokens_limit
        self._limits = limits or RequestLimits()
        self._clock = clock
        #: the engine's own concurrency, whatever the worker's --concurrency
        self._slots = asyncio.Semaphore(engine.slots)

    @classmethod
    def create(cls, name: str, options: Mapping[str, Any], **kwargs: Any) -> EngineRunner:
        return cls(Engine.create(name, options), **kwargs)

    async def start(self) -> None:
        await self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def run(self, job: JobSpec) -> JobResult:
        started = self._clock()
        device = job.device or ""
        try:
            # Serialised again so the adapter counts its JSON values as at the backend.
            parsed = CHAT.parse(orjson.dumps(job.input), self._limits)
            if parsed.max_tokens > self._max_tokens:
                raise ClientError(f"max_tokens must be at most {self._max_tokens}")
        except (ClientError, TypeError) as exc:
            message = exc.message if isinstance(exc, InfernoError) else str(exc)
            return JobResult(None, f"bad input: {message}", run_s=self._clock() - started, device=device)
        limit = effective_limit(job.limit_s, self._limit_s)
        try:
            async with asyncio.timeout(limit), self._slots:
                result = await self.engine.generate(CHAT.generation(parsed))
        except TimeoutError:
            return JobResult(
                None,
                f"timed out after {limit:g}s",
                timed_out=True,
                run_s=self._clock() - started,
                device=device,
            )
        except InfernoError as exc:
            return JobResult(None, f"engine: {exc.message}", run_s=self._clock() - started, device=device)
        meta = RenderMeta(job.job_id, self.engine.model_id, self._node, int(time.time()))
        return JobResult(
            exit_code=0,
            error=None,
            run_s=self._clock() - started,
            device=device,
            answer=CHAT.render_whole(result, meta),
        )
