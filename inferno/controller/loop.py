"""The control loop: long-poll the desired state, reconcile, report.

Two tasks. The *poller* long-polls the proxy for the desired state and wakes the
*reconciler* when it changes; the reconciler calls ``Orchestrator.reconcile`` on
every change and at least every ``reconcile_interval_s`` without one (level
triggered, like a Kubernetes controller), then reports the instances and the
orchestrator's status to the proxy.

While the proxy is away the poller retries with an exponential backoff and jitter,
and the reconciler keeps working from the last desired state it received: nothing
is scaled down because the proxy cannot be reached, and before a first answer
nothing is reconciled at all. ``aclose`` stops the loops and leaves every
instance running, so a restarted controller adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferno.controller.client import DesiredState, ProxyClient
from inferno.errors import InfernoError, ProxyRefused, UpstreamError
from inferno.observability.throttle import ThrottledLog
from inferno.orchestrators.base import Orchestrator

logger = logging.getLogger(__name__)

#: a long poll that answers this fast with nothing new is followed by a pause
FAST_ANSWER_S = 0.5


class Backoff:
    """Exponential backoff with jitter: ``initial_s``, doubling up to ``max_s``, each
    delay scaled by a random factor in [0.5, 1) so controllers do not retry in step."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        base: float = min(self._max, self._initial * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return base * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self._attempt = 0


class Controller:
    """Owns the poller and the reconciler; ``start`` adopts, ``aclose`` leaves all running."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        client: ProxyClient,
        *,
        reconcile_interval_s: float = 2.0,
        wait_s: float = 25.0,
        reconcile_timeout_s: float = 60.0,
        backoff: Backoff | None = None,
        alive_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.orchestrator = orchestrator
        self._client = client
        self._interval = reconcile_interval_s
        self._wait = wait_s
        self._reconcile_timeout = reconcile_timeout_s
        self._backoff = backoff or Backoff(0.5, 10.0)
        self._alive_file = alive_file
        self._clock = clock
        self._wall = wall_clock
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._warn = ThrottledLog(logger, 30.0, clock)
        self._warn_report = ThrottledLog(logger, 30.0, clock)
        #: the last desired state the proxy sent (None: none yet)
        self.desired: DesiredState | None = None
        self.proxy_connected = False
        #: a poll failed since the proxy last answered (its warning is written once)
        self._poll_failed = False
        self.reconciles = 0
        self.reports = 0
        self.reconcile_error: str | None = None
        self.reconciled_at: float | None = None

    async def start(self) -> None:
        await self.orchestrator.start()
        self._tasks = [
            asyncio.create_task(self._poll(), name="controller-poll"),
            asyncio.create_task(self._reconcile_loop(), name="controller-reconcile"),
        ]
        logger.info("Controller started: orchestrator %s", self.orchestrator.name)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._warn.flush()
        self._warn_report.flush()
        await self.orchestrator.aclose()
        await self._client.aclose()
        logger.info("Controller stopped; the instances keep running")

    # -- the poller ------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            after = self.desired.version if self.desired is not None else -1
            started = self._clock()
            try:
                state = await self._client.desired(after, self._wait)
            except (UpstreamError, ProxyRefused) as exc:
                if self.proxy_connected or not self._poll_failed:
                    logger.warning("No desired state from the proxy: %s; instances stay as they are", exc)
                self._poll_failed = True
                self.proxy_connected = False
                await asyncio.sleep(self._backoff.next())
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("desired-state poll failed")
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self._poll_failed = False
            if not self.proxy_connected:
                logger.info("Proxy answers: desired state version %d", state.version)
            self.proxy_connected = True
            if self.desired is None or state != self.desired:
                logger.info(
                    "Desired state version %d: %s",
                    state.version,
                    ", ".join(f"{d.id}={d.replicas}@g{d.generation}" for d in state.deployments) or "nothing",
                )
                self.desired = state
                self._changed.set()
            elif self._clock() - started < FAST_ANSWER_S:
                await asyncio.sleep(FAST_ANSWER_S)

    # -- the reconciler --------------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)
            self._changed.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconcile step failed")

    async def step(self) -> None:
        """One reconcile (when a desired state is known) and one report."""
        desired = self.desired
        if desired is not None:
            try:
                async with asyncio.timeout(self._reconcile_timeout):
                    await self.orchestrator.reconcile(desired.deployments)
                self.reconcile_error = None
            except TimeoutError:
                self.reconcile_error = f"reconcile took over {self._reconcile_timeout}s"
                self._warn.warning("Reconcile: %s", self.reconcile_error)
            except InfernoError as exc:
                self.reconcile_error = exc.message
                self._warn.warning("Reconcile failed: %s", exc.message)
            self.reconciles += 1
            self.reconciled_at = self._wall()
        self._touch()
        await self._report()

    def status(self) -> dict[str, Any]:
        return {
            **self.orchestrator.status(),
            "desired_version": self.desired.version if self.desired is not None else None,
            "reconcile_error": self.reconcile_error,
            "reconciled_at": self.reconciled_at,
        }

    async def _report(self) -> None:
        try:
            await self._client.report(self.orchestrator.name, self.status(), self.orchestrator.instances())
            self.reports += 1
        except (UpstreamError, ProxyRefused) as exc:
            self._warn_report.warning("Report to the proxy failed: %s", exc)

    def _touch(self) -> None:
        """The liveness file the container's health check reads (its age)."""
        if self._alive_file is not None:
            try:
                self._alive_file.touch()
            except OSError as exc:
                self._warn.warning("Cannot touch %s: %s", self._alive_file, exc)
