"""Bodies that may be costly to parse are parsed first in another process (proxy and
backend alike).

A JSON parse holds the GIL for as long as it runs (orjson and pydantic alike), so a
thread would not help: 8 MiB of ``[{},{},...]`` holds the event loop for about 360 ms,
and every other client with it. A body that may hold more than ``max_json_values``
values (``bounds.may_exceed``, a count of separators) is therefore parsed and
validated in a parsing process first; only a body that passed, and so holds a bounded
number of values, is then parsed on the event loop. Every other body (a base64 image
holds one string, however large) is parsed on the event loop at once, and never waits
behind the parsing process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from inferno.api import APIS
from inferno.config import RequestLimits
from inferno.errors import BadRequest, ParserUnavailable
from inferno.schemas.bounds import may_exceed
from inferno.schemas.openai import decode_json

logger = logging.getLogger(__name__)


def verdict(
    path: str, body: bytes, max_tokens_limit: int, limits: RequestLimits
) -> tuple[str, str | None] | None:
    """In the parsing process: None when ``body`` may be parsed on the event loop, else
    the 400's message and param (plain values: an exception may not survive pickling)."""
    try:
        api = APIS.get(path)
        if api is None:  # /batch_inference: its items are validated one by one afterwards
            decode_json(body, limits.max_json_values)
        else:
            api.parse_checked(body, max_tokens_limit, limits)
    except BadRequest as exc:
        return exc.message, exc.param
    return None


class BodyVetter:
    """The parsing processes, started at the first body that needs them."""

    def __init__(self, limits: RequestLimits, max_tokens_limit: int) -> None:
        self._limits = limits
        self._max_tokens = max_tokens_limit
        self._pool: ProcessPoolExecutor | None = None

    def needs(self, body: bytes) -> bool:
        return may_exceed(body, self._limits.max_json_values)

    async def check(self, path: str, body: bytes) -> None:
        """``BadRequest`` unless ``body`` is a valid request for ``path``."""
        if self._pool is None:
            # spawn, not fork: this process has threads (the resolver's, the executor's)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._limits.parse_processes, mp_context=context)
            logger.info("Started %d body parsing process(es)", self._limits.parse_processes)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._pool, verdict, path, body, self._max_tokens, self._limits
            )
        except BrokenProcessPool:
            logger.error("A body parsing process died; starting new ones")
            self._pool = None
            raise ParserUnavailable("the request could not be parsed; retry") from None
        if result is not None:
            raise BadRequest(result[0], param=result[1])

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Waited for (off the loop): a pool left to the interpreter's exit hook raises
            # there, on a wake-up pipe already closed. A parse in progress ends within ~1 s.
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
