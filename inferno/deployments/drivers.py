"""How the proxy's desired state reaches an orchestrator.

- ``InProcessDriver`` runs the orchestrator inside the proxy (``--orchestrator
  local``): a change is reconciled at once, and again every ``resync_s``.
- ``ExternalDriver`` (``--orchestrator external``) only publishes: a controller
  (``inferno controller``, next to the Docker socket on a manager node) long-polls
  ``GET /v1/orchestrator/desired`` and reports what runs with ``POST
  /v1/orchestrator/report``. The internet-facing proxy never holds the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from inferno.errors import Overloaded
from inferno.orchestrators.base import DesiredDeployment, InstanceInfo, Orchestrator, OrchestratorContext

logger = logging.getLogger(__name__)

#: an external orchestrator that has not reported for this long is "disconnected"
REPORT_STALE_S = 15.0
#: the longest long poll a controller may ask for
MAX_WAIT_S = 30.0
#: long polls held at once (one controller needs one; more would take the ops port's
#: connections from health checks and registrations)
MAX_POLLS = 4


class Driver(ABC):
    """Carries the desired state to an orchestrator and its instances back."""

    name = ""

    @abstractmethod
    def publish(self, desired: Sequence[DesiredDeployment]) -> None:
        """The whole desired state changed (never blocks)."""

    @abstractmethod
    def instances(self) -> list[InstanceInfo]: ...

    @abstractmethod
    def status(self) -> dict[str, Any]: ...

    def connected(self) -> bool:
        return True

    def start(self) -> None:  # noqa: B027 (optional)
        pass

    async def aclose(self) -> None:  # noqa: B027 (optional)
        pass


class InProcessDriver(Driver):
    """Runs ``orchestrator`` in this process; reconciles on change and every ``resync_s``."""

    def __init__(self, orchestrator: type[Orchestrator], *, resync_s: float = 1.0) -> None:
        self.name = orchestrator.name
        self._kind = orchestrator
        self._orchestrator: Orchestrator | None = None
        self._resync_s = resync_s
        self._desired: tuple[DesiredDeployment, ...] = ()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.last_error = ""

    def publish(self, desired: Sequence[DesiredDeployment]) -> None:
        self._desired = tuple(desired)
        self._changed.set()

    def instances(self) -> list[InstanceInfo]:
        return self._orchestrator.instances() if self._orchestrator is not None else []

    def status(self) -> dict[str, Any]:
        own = self._orchestrator.status() if self._orchestrator is not None else {"name": self.name}
        return {**own, "connected": self._started, "driver": "in-process", "last_error": self.last_error}

    def connected(self) -> bool:
        return self._started

    async def start_orchestrator(self, context: OrchestratorContext) -> None:
        """Build the orchestrator (the proxy's own ops address is known only now) and
        let it adopt the instances that outlived the last proxy."""
        self._orchestrator = self._kind.from_context(context)
        await self._orchestrator.start()
        self._started = True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orchestrator")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._resync_s)
            self._changed.clear()
            try:
                assert self._orchestrator is not None
                await self._orchestrator.reconcile(self._desired)
                self.last_error = ""
            except Exception as exc:
                self.last_error = str(exc)[:512]
                logger.exception("Orchestrator %s failed to reconcile", self.name)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._orchestrator is not None:
            await self._orchestrator.aclose()


class Report(BaseModel):
    """``POST /v1/orchestrator/report``: what a controller's orchestrator runs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    orchestrator: str = Field(max_length=64)
    status: dict[str, Any] = Field(default_factory=dict)
    instances: list[dict[str, Any]] = Field(default_factory=list, max_length=4096)


class ExternalDriver(Driver):
    """Publishes the desired state to a controller and keeps its last report."""

    name = "external"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.version = 0
        self._desired: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._instances: list[InstanceInfo] = []
        self._status: dict[str, Any] = {}
        self._reported_at: float | None = None
        self._controller = ""
        self._polls = 0

    def publish(self, desired: Sequence[DesiredDeployment]) -> None:
        body = [d.to_json() for d in desired]
        if body == self._desired:
            return
        self._desired = body
        self.version += 1
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, after: int, wait_s: float) -> dict[str, Any]:
        """The desired state once its version differs from ``after`` (or after ``wait_s``)."""
        if after == self.version and wait_s > 0:
            if self._polls >= MAX_POLLS:
                raise Overloaded(
                    f"{MAX_POLLS} long polls are open already (one controller needs one); retry later",
                    reason="long_polls",
                )
            self._polls += 1
            try:
                await self._hold(after, wait_s)
            finally:
                self._polls -= 1
        return {"version": self.version, "deployments": self._desired}

    async def _hold(self, after: int, wait_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != after), min(wait_s, MAX_WAIT_S)
                )

    def report(self, report: Report) -> None:
        instances: list[InstanceInfo] = []
        for item in report.instances:
            try:
                instances.append(_instance(item))
            except (KeyError, TypeError, ValueError):
                continue  # a malformed entry is skipped, the rest still count
        self._instances = instances
        self._status = dict(list(report.status.items())[:32])
        self._controller = report.orchestrator
        self._reported_at = self._clock()

    def instances(self) -> list[InstanceInfo]:
        return list(self._instances)

    def connected(self) -> bool:
        return self._reported_at is not None and self._clock() - self._reported_at < REPORT_STALE_S

    def status(self) -> dict[str, Any]:
        ago = None if self._reported_at is None else round(self._clock() - self._reported_at, 3)
        return {
            "name": self._controller or "external",
            "driver": "external",
            "connected": self.connected(),
            "last_report_s_ago": ago,
            "desired_version": self.version,
            "reported": self._status,
        }


_STATES = frozenset({"starting", "ready", "draining", "stopping", "failed"})


def _instance(item: dict[str, Any]) -> InstanceInfo:
    state = str(item["state"])
    if state not in _STATES:
        raise ValueError(state)
    return InstanceInfo(
        id=str(item["id"])[:128],
        deployment=str(item["deployment"])[:128],
        generation=int(item["generation"]),
        state=state,  # type: ignore[arg-type]
        node=str(item.get("node", ""))[:253],
        address=str(item.get("address", ""))[:300],
        started=float(item.get("started", 0.0)),
    )
