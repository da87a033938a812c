"""Decoding a request body: one that may be costly to decode is decoded in another
process (proxy and backend alike).

A JSON parse holds the GIL for as long as it runs (orjson and pydantic alike), so a
thread would not help: 8 MiB of ``[{},{},...]`` holds the event loop for about 360 ms,
and every other client with it. A body that may hold more than ``max_json_values``
values (``bounds.may_exceed``, a count of separators) is therefore decoded in a
parsing process, where its values are counted; what comes back (an error, or the
decoded value, which holds a bounded number of values) costs the event loop little.
Nothing is parsed twice, so duplicate keys or anything else the count does not see
cannot make the loop's share costly. Every other body (a base64 image holds one
string, however large) is decoded on the event loop at once, and never waits behind
the parsing process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from inferno.config import RequestLimits
from inferno.errors import BadRequest, ParserUnavailable
from inferno.schemas.bounds import may_exceed
from inferno.schemas.openai import decode_json

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

logger = logging.getLogger(__name__)


def decode_counted(body: bytes, max_values: int) -> tuple[bool, Any]:
    """In the parsing process: (True, the decoded body) or (False, (message, param)) for
    the 400 (plain values: an exception may not survive pickling)."""
    try:
        return True, decode_json(body, max_values)
    except BadRequest as exc:
        return False, (exc.message, exc.param)


class BodyVetter:
    """The parsing processes, started at the first body that needs them."""

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits
        self._pool: ProcessPoolExecutor | None = None

    async def decode(self, body: bytes) -> Any:
        """``decode_json(body)``, in a parsing process when the body may be costly."""
        max_values = self._limits.max_json_values
        if not may_exceed(body, max_values):
            return decode_json(body, max_values)
        # multiprocessing is imported with the first such body: not on a process's start-up path
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            # spawn, not fork: this process has threads (the resolver's, the executor's)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._limits.parse_processes, mp_context=context)
            logger.info("Started %d body parsing process(es)", self._limits.parse_processes)
        loop = asyncio.get_running_loop()
        try:
            ok, result = await loop.run_in_executor(self._pool, decode_counted, body, max_values)
        except BrokenProcessPool:
            logger.error("A body parsing process died; starting new ones")
            self._pool = None
            raise ParserUnavailable("the request could not be parsed; retry") from None
        if not ok:
            raise BadRequest(result[0], param=result[1])
        return result

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Waited for (off the loop): a pool left to the interpreter's exit hook raises
            # there, on a wake-up pipe already closed. A parse in progress ends within ~1 s.
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
