"""Warnings anyone on the network can cause, written to the log at a bounded rate.

A refusal a stranger can trigger at will (a wrong cluster token, say) must not
let them write the log: the first line is written as it is, the ones after it in
the same window are only counted, and the count is written in one summary line
when the window ends. Exact totals belong in Prometheus counters kept by the
caller; the log only needs to say that it happened and how often.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable


class ThrottledLog:
    """The first warning at once, then at most one summary line per ``interval_s``.

    The summary is written by the next warning after the window (or by ``flush``,
    which a timer on the running event loop calls at the window's end, so a flood
    that stops is still summed up). Time comes from an injected clock.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._window_end = -math.inf
        self._window_start = 0.0
        #: lines held back in this window, and the latest of them
        self.held = 0
        self._latest: tuple[str, tuple[object, ...]] = ("", ())
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now >= self._window_end:
            self.flush()
            if now >= self._window_end:  # the flush did not open a new window
                self._logger.warning(message, *args)
                self._open(now)
                return
        self.held += 1
        self._latest = (message, args)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (tests with a fake clock): the next warning or flush() sums up
            self._timer = loop.call_later(max(0.0, self._window_end - now), self.flush)

    def flush(self) -> None:
        """Write the summary of the lines held back, if any, and start a new window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.held:
            return
        now = self._clock()
        message, args = self._latest
        self._logger.warning(
            message + " (and %d more like it in the last %.0fs)",
            *args,
            self.held,
            max(0.0, now - self._window_start),
        )
        self.held = 0
        self._open(now)

    def _open(self, now: float) -> None:
        self._window_start = now
        self._window_end = now + self._interval_s
