"""The one event-loop runner: uvloop when installed, asyncio otherwise."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any


def run_loop(coro: Coroutine[Any, Any, None], *, server: bool = True) -> None:
    """Run ``coro`` on uvloop (asyncio when uvloop is missing): the one runner.

    Long-lived servers move start-up objects out of the collector's sight and let the
    young generation grow, so per-request garbage does not trigger full passes.
    """
    if server:
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)
