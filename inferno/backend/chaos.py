"""Fault injection for tests: ``/simulate/*``, enabled only with ``--chaos``.

- ``POST /simulate/crash``: exit the process at once (exit code 137, like SIGKILL).
- ``POST /simulate/slow`` ``{"delay_ms": 500, "duration_s": 60}``: add latency to each request.
- ``POST /simulate/error`` ``{"duration_s": 10, "status": 500}``: answer 5xx for a while.
- ``POST /simulate/hang`` ``{"duration_s": 3600}``: accept requests and never answer
  (until the period ends). ``/health`` keeps answering: a hung worker looks alive.
- ``POST /simulate/health`` ``{"pattern": "UDUD"}``: the next ``/health`` answers on the
  data port follow the pattern (U = 200, D = 503), one character each, then normal.
- ``POST /simulate/reset``: clear every fault.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from inferno.errors import InjectedError, NotFound
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.server import Request, Responder
from inferno.schemas import parse_body

logger = logging.getLogger(__name__)


class _Slow(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    delay_ms: int = Field(500, ge=0, le=600_000)
    duration_s: float = Field(60.0, gt=0, le=86_400)


class _Error(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    duration_s: float = Field(10.0, gt=0, le=86_400)
    status: int = Field(500, ge=500, le=599)


class _Hang(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    duration_s: float = Field(3600.0, gt=0, le=86_400)


class _Health(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pattern: str = Field(pattern=r"^[UD]{1,10000}$")


class Chaos:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.slow_until = 0.0
        self.slow_s = 0.0
        self.error_until = 0.0
        self.error_status = 500
        self.hang_until = 0.0
        self.health_pattern: list[bool] = []

    async def before_request(self) -> None:
        """Apply the active faults to one inference request."""
        now = self._clock()
        if now < self.error_until:
            raise InjectedError("injected failure (/simulate/error)", self.error_status)
        if now < self.hang_until:
            await asyncio.sleep(self.hang_until - now)
        if now < self.slow_until:
            await asyncio.sleep(self.slow_s)

    def health_ok(self) -> bool | None:
        """The scripted answer for the next /health, or None when none is scripted."""
        if self.health_pattern:
            return self.health_pattern.pop(0)
        return None

    def handle(self, request: Request, responder: Responder) -> None:
        action = request.path.removeprefix("/simulate/")
        body = request.body or b"{}"
        now = self._clock()
        if action == "crash":
            logger.warning("Chaos: crashing now (/simulate/crash)")
            logging.shutdown()
            os._exit(137)
        elif action == "slow":
            slow = parse_body(_Slow, body)
            self.slow_s, self.slow_until = slow.delay_ms / 1000.0, now + slow.duration_s
        elif action == "error":
            error = parse_body(_Error, body)
            self.error_status, self.error_until = error.status, now + error.duration_s
        elif action == "hang":
            self.hang_until = now + parse_body(_Hang, body).duration_s
        elif action == "health":
            self.health_pattern = [c == "U" for c in parse_body(_Health, body).pattern]
        elif action == "reset":
            self.slow_until = self.error_until = self.hang_until = 0.0
            self.health_pattern = []
        else:
            raise NotFound("no such chaos action")
        logger.warning("Chaos: %s enabled", action)
        responder.send(200, JSON_HEADERS, dumps({"status": "ok", "action": action}))
