"""Active health checks and heartbeat expiry, as one component with start()/aclose().

A probe's answer also tells a static backend's capacity: an Inferno backend's
``/health`` carries ``slots`` (how many requests it runs at once), which becomes
the worker's ``vitals.slots`` and so the proxy's in-flight limit for it. The answer
is untrusted input: read only when small, and only a whole number in range counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from inferno.config import HealthCheckConfig, RegistryConfig
from inferno.errors import InfernoError, UpstreamConnectError, UpstreamError
from inferno.http.client import Timeouts, UpstreamPool, build_request
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerStatus
from inferno.schemas.openai import decode_json
from inferno.schemas.registration import MAX_SLOTS

#: a /health answer larger than this is not read for its slot count
MAX_HEALTH_BODY_BYTES = 64 * 1024
#: nor one of more JSON values (a backend's models are listed in it)
MAX_HEALTH_JSON_VALUES = 4096

logger = logging.getLogger(__name__)


class HealthChecker:
    """Probes every backend's ``GET /health`` and expires silent registrations."""

    def __init__(
        self,
        registry: WorkerRegistry,
        pool: UpstreamPool,
        health: HealthCheckConfig,
        registry_config: RegistryConfig,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._health = health
        self._registry_cfg = registry_config
        self._timeouts = Timeouts(
            connect_s=health.timeout_s, first_byte_s=health.timeout_s, read_s=health.timeout_s
        )
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self._health.interval_s, self.probe_all), name="probe"),
            asyncio.create_task(self._loop(self._registry_cfg.sweep_interval_s, self._sweep), name="sweep"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("health loop step failed")
            await asyncio.sleep(interval_s)

    async def _sweep(self) -> None:
        self._registry.sweep()

    async def probe_all(self) -> None:
        """One round of probes, all at once, bounded by the probe timeout."""
        workers = [w for w in self._registry.all() if w.status is not WorkerStatus.DRAINING]
        if not workers:
            return
        tasks = {asyncio.create_task(self._probe(w.address)): w.address for w in workers}
        done, pending = await asyncio.wait(tasks, timeout=self._health.timeout_s + 0.5)
        for task in pending:
            task.cancel()
            self._registry.record_probe(tasks[task], False, detail="probe timed out")
        for task in done:
            ok, refused, detail, slots = task.result()
            self._registry.record_probe(tasks[task], ok, refused=refused, detail=detail, slots=slots)

    async def _probe(self, address: str) -> tuple[bool, bool, str, int | None]:
        request = build_request(b"GET", b"/health", address.encode(), b"", b"")
        try:
            # Read no more than a health answer may be: a backend's answer is untrusted.
            response = await self._pool.request(
                address, request, timeouts=self._timeouts, max_body_bytes=MAX_HEALTH_BODY_BYTES
            )
        except UpstreamConnectError as exc:
            return False, exc.refused, exc.message, None
        except UpstreamError as exc:
            return False, False, exc.message, None
        if response.status == 200:
            return True, False, "", advertised_slots(response.body)
        return False, False, f"status {response.status}", None


def advertised_slots(body: bytes) -> int | None:
    """The ``slots`` a ``/health`` answer advertises (capped at MAX_SLOTS), or None when
    it names none usable: not a small JSON object, no such field, not a whole number
    above zero, or one too long to parse (a non-Inferno backend, or garbage)."""
    if len(body) > MAX_HEALTH_BODY_BYTES:
        return None
    try:
        data = decode_json(body, max_values=MAX_HEALTH_JSON_VALUES)
    except InfernoError:
        return None
    slots = data.get("slots") if isinstance(data, dict) else None
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        return None
    return min(slots, MAX_SLOTS)
