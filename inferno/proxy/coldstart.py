"""What admission asks of the deployments a request may wait for while they start."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from inferno.config import AdmissionConfig
from inferno.errors import Overloaded
from inferno.proxy.waiter import Waiter
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class ColdStarts(Protocol):
    """The deployments a request may wait for while they start (``DeploymentManager``)."""

    def lookup(self, model: str | None) -> AutoScalingLimits | None: ...

    def default_for(self, task: str) -> str | None:
        """A live deployment doing ``task``, for a request that names no model."""

    def wake(self, model: str) -> None: ...

    def refused(self, model: str) -> None: ...

    def starting(self, model: str) -> bool: ...

    def observe_cold_start(self, model: str, seconds: float) -> None: ...


class AutoScalingLimits(Protocol):
    @property
    def cold_start_timeout_s(self) -> float: ...

    @property
    def max_pending(self) -> int: ...


class ColdStartWaits:
    """The admission controller's waits for deployments at zero (a mixin of it)."""

    cold_starts: ColdStarts | None
    rejected: dict[str, int]
    _cfg: AdmissionConfig
    _pending: dict[str, int]
    _cold_waiters: list[Waiter]
    _queued: dict[str, list[int]]
    _clock: Callable[[], float]

    def _future(self) -> asyncio.Future[WorkerInfo]:
        raise NotImplementedError

    async def _wait(self, waiter: Waiter, wait_s: float) -> WorkerInfo:
        raise NotImplementedError

    def _scaling(self, ctx: RequestContext) -> bool:
        assert self.cold_starts is not None and ctx.model is not None
        return self.cold_starts.starting(ctx.model)

    def _scale_for(self, ctx: RequestContext) -> None:
        """A request refused for capacity counts as demand for its deployment."""
        assert self.cold_starts is not None and ctx.model is not None
        self.cold_starts.refused(ctx.model)

    async def _cold_start(
        self,
        ctx: RequestContext,
        model: str,
        tried: frozenset[str],
        limits: AutoScalingLimits,
        timeout_s: float,
        on_cold: Callable[[float], None] | None,
    ) -> WorkerInfo:
        """Wait for an instance of a deployment that has none routable: at most
        ``max_pending`` requests per deployment, each for at most its cold-start timeout
        (or its own deadline, when nearer); then 503 ``cold_start_timeout``."""
        assert self.cold_starts is not None
        pending = self._pending.get(model, 0)
        if len(self._cold_waiters) >= self._cfg.max_queue:
            self.rejected["cold_start_pending"] += 1
            raise Overloaded(
                f"{len(self._cold_waiters)} requests already wait for deployments to start "
                f"(the queue's max, {self._cfg.max_queue}); retry later",
                reason="cold_start_pending",
                retry_after_s=max(1, math.ceil(limits.cold_start_timeout_s / 4)),
            )
        if pending >= limits.max_pending:
            self.rejected["cold_start_pending"] += 1
            raise Overloaded(
                f"{pending} requests already wait for {model} to start (max_pending); retry later",
                reason="cold_start_pending",
                retry_after_s=max(1, math.ceil(limits.cold_start_timeout_s / 4)),
            )
        self.cold_starts.wake(model)
        waiter = Waiter(ctx, tried, self._clock(), self._future(), cold=model, on_cold=on_cold)
        wait_s = min(timeout_s, limits.cold_start_timeout_s)
        waiter.deadline = waiter.arrival + timeout_s
        self._pending[model] = pending + 1
        try:
            return await self._wait(waiter, wait_s)
        finally:
            left = self._pending[model] - 1
            if left:
                self._pending[model] = left
            else:
                del self._pending[model]

    def pending_cold(self, model: str) -> int:
        """Requests waiting for ``model``'s first instance to start."""
        return self._pending.get(model, 0)

    def _cold_started(self, waiter: Waiter, waited_s: float) -> None:
        assert self.cold_starts is not None
        self.cold_starts.observe_cold_start(waiter.cold, waited_s)
        if waiter.on_cold is not None:
            waiter.on_cold(waited_s)
