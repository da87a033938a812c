"""Active health checks and heartbeat expiry, as one component with start()/aclose()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from inferno.config import HealthCheckConfig, RegistryConfig
from inferno.errors import UpstreamConnectError, UpstreamError
from inferno.http.client import Timeouts, UpstreamPool, build_request
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerStatus

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
            ok, refused, detail = task.result()
            self._registry.record_probe(tasks[task], ok, refused=refused, detail=detail)

    async def _probe(self, address: str) -> tuple[bool, bool, str]:
        request = build_request(b"GET", b"/health", address.encode(), b"", b"")
        try:
            response = await self._pool.request(address, request, timeouts=self._timeouts)
        except UpstreamConnectError as exc:
            return False, exc.refused, exc.message
        except UpstreamError as exc:
            return False, False, exc.message
        if response.status == 200:
            return True, False, ""
        return False, False, f"status {response.status}"
