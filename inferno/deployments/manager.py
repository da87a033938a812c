"""DeploymentManager: the registry of deployments, their autoscaling, and the desired state.

It owns the deployments (kept in the state database), samples each one's demand
every tick (requests queued plus in flight, from the admission queue and the
registry), lets the ``Autoscaler`` decide, and publishes the desired state to the
orchestrator through a ``Driver``. It is beside the data path: a request costs it
one dict lookup (``lookup``) and, when a deployment has no instance, one call that
wakes the loop at once (``wake``), so a scale from zero never waits for a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from inferno.deployments.autoscaler import Autoscaler
from inferno.deployments.drivers import Driver
from inferno.deployments.spec import AutoScalingConfig, DeploymentSpec, merged
from inferno.deployments.store import Deployment, DeploymentStore
from inferno.engines import Engine
from inferno.errors import Conflict, NotFound
from inferno.observability.metrics import Histogram
from inferno.orchestrators.base import DesiredDeployment, InstanceInfo

logger = logging.getLogger(__name__)

#: demand of one deployment: (in flight, queued) right now
DemandProbe = Callable[[str], tuple[int, int]]
#: the most deployments one proxy keeps
MAX_DEPLOYMENTS = 256


class DeploymentManager:
    def __init__(
        self,
        store: DeploymentStore,
        driver: Driver,
        demand: DemandProbe,
        *,
        model_dir: str | None = None,
        tick_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.driver = driver
        self._demand = demand
        self._model_dir = model_dir
        self._tick_s = tick_s
        self._clock = clock
        self._wall = wall
        self.autoscaler = Autoscaler(clock)
        self._records: dict[str, Deployment] = {}
        #: model id -> its autoscaling config, for live (not deleting) deployments
        self._live: dict[str, AutoScalingConfig] = {}
        #: live deployments of kind worker -> the queue their instances lease from
        self._workers: dict[str, str] = {}
        #: requests refused for capacity since the last tick, per deployment
        self._refused: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: cold starts: how long each request that waited for one waited, per model
        self.cold_starts: dict[str, Histogram] = {}
        #: start and stop events, for the dashboard's log (bounded)
        self.events: list[dict[str, Any]] = []
        self._on_event: list[Callable[[dict[str, Any]], object]] = []
        #: instance id -> (deployment, state) at the last tick: starts and stops become events
        self._seen: dict[str, tuple[str, str]] = {}
        for record in store.all():
            self._adopt(record)

    def _adopt(self, record: Deployment) -> None:
        """A deployment from the database: the same replicas, keep-alive carried on."""
        idle = None if record.last_request is None else max(0.0, self._wall() - record.last_request)
        self._records[record.id] = record
        self.autoscaler.add(record.id, record.replicas, idle_s=idle)
        if not record.deleting:
            self._index(record)

    def _index(self, record: Deployment) -> None:
        """Backends serve models (requests cold-start them); workers serve a queue."""
        self._live.pop(record.id, None)
        self._workers.pop(record.id, None)
        if record.spec.kind == "worker" and record.spec.queue is not None:
            self._workers[record.id] = record.spec.queue
        else:
            self._live[record.id] = record.spec.auto_scaling_config

    # -- the data path's calls (cheap) ---------------------------------------------------
    def lookup(self, model: str | None) -> AutoScalingConfig | None:
        """The autoscaling config of a live deployment serving ``model``, else None; counts
        the request towards its keep-alive."""
        if model is None:
            return None
        cfg = self._live.get(model)
        if cfg is not None:
            self.autoscaler.request_arrived(model)
        return cfg

    def default_for(self, task: str) -> str | None:
        for ident in self._live:
            if _task(self._records[ident].spec.backend) == task:
                return ident
        return None

    def wake(self, model: str) -> None:
        """A request waits for ``model`` with no instance to serve it: decide now."""
        self._wake.set()

    def worker_queue(self, ident: str) -> str | None:
        """The queue a worker deployment leases from (None: not a worker deployment)."""
        return self._workers.get(ident)

    def job_arrived(self, queue: str) -> None:
        """A job came to ``queue``: its worker deployments count it towards their
        keep-alive, and one at zero decides now (the first job starts a worker)."""
        for ident, name in self._workers.items():
            if name == queue:
                self.autoscaler.request_arrived(ident)
                if self.autoscaler.replicas(ident) == 0:
                    self._wake.set()

    def refused(self, model: str) -> None:
        """A request for ``model`` was refused for capacity: it counts as demand."""
        if model in self._live:
            self._refused[model] = self._refused.get(model, 0) + 1
            self._wake.set()

    def starting(self, model: str) -> bool:
        """Whether an instance of ``model`` is being started (or is about to be)."""
        record = self._records.get(model)
        if record is None:
            return False
        ready = sum(1 for i in self.driver.instances() if i.deployment == model and i.state == "ready")
        return self.autoscaler.replicas(model) > ready

    def idle_at_zero(self) -> bool:
        """Every live deployment is at zero instances on purpose (min 0, none wanted)."""
        return all(
            self.autoscaler.replicas(ident) == 0
            for ident, record in self._records.items()
            if not record.deleting
        )

    def models(self) -> dict[str, str]:
        """Live deployments' model ids and tasks (for /v1/models: listed even at zero)."""
        return {ident: _task(self._records[ident].spec.backend) for ident in self._live}

    def observe_cold_start(self, model: str, seconds: float) -> None:
        histogram = self.cold_starts.get(model)
        if histogram is None and model in self._records:
            histogram = self.cold_starts[model] = Histogram()
        if histogram is not None:
            histogram.observe(seconds)

    # -- the API's calls -----------------------------------------------------------------
    def all(self) -> list[Deployment]:
        return list(self._records.values())

    def get(self, ident: str) -> Deployment:
        record = self._records.get(ident)
        if record is None:
            raise NotFound(f"no deployment {ident[:128]!r}")
        return record

    def create(self, spec: DeploymentSpec) -> Deployment:
        if spec.model in self._records:
            raise Conflict(f"the deployment {spec.model!r} exists; PATCH it or delete it first")
        if len(self._records) >= MAX_DEPLOYMENTS:
            raise Conflict(f"this proxy holds at most {MAX_DEPLOYMENTS} deployments")
        record = self._store.insert(spec, spec.auto_scaling_config.min_instances)
        if record is None:
            raise Conflict(f"the deployment {spec.model!r} exists; PATCH it or delete it first")
        self._adopt(record)
        logger.info(
            "Deployment %s created (engine %s, %d-%d instances)",
            spec.model,
            spec.backend,
            spec.auto_scaling_config.min_instances,
            spec.auto_scaling_config.max_instances,
        )
        self._event(spec.model, "created", f"{spec.backend}, min {spec.auto_scaling_config.min_instances}")
        self._publish()
        self._wake.set()
        return record

    def patch(self, ident: str, body: object) -> Deployment:
        record = self.get(ident)
        if record.deleting:
            raise Conflict(f"the deployment {ident!r} is being deleted")
        spec = merged(record.spec, body, model_dir=self._model_dir)
        generation = record.generation

        def runs(s: DeploymentSpec) -> tuple[object, ...]:
            return (s.backend, s.backend_config, s.kind, s.queue, s.workload)

        if runs(spec) != runs(record.spec):
            generation += 1  # the instances are rolled: new ones first, then the old drain
        record = self._store.update(record, spec=spec, generation=generation)
        self._records[ident] = record
        self._index(record)
        logger.info("Deployment %s updated (generation %d)", ident, generation)
        self._event(ident, "updated", f"generation {generation}")
        self._publish()
        self._wake.set()
        return record

    def delete(self, ident: str) -> Deployment:
        record = self.get(ident)
        if not record.deleting:
            record = self._store.update(record, deleting=True, replicas=0)
            self._records[ident] = record
            self._live.pop(ident, None)
            self._workers.pop(ident, None)
            logger.info("Deployment %s deleting: draining its instances", ident)
            self._event(ident, "deleting", "draining, then stopping every instance")
            self._publish()
        return record

    # -- the loop ------------------------------------------------------------------------
    def desired(self) -> list[DesiredDeployment]:
        return [
            DesiredDeployment(
                r.spec, r.generation, 0 if r.deleting else self.autoscaler.replicas(r.id), r.deleting
            )
            for r in self._records.values()
        ]

    def start(self) -> None:
        # Decide once before anything is published: replicas restored from the database
        # whose keep-alive ran out while the proxy was down go now, never started first.
        self.tick()
        self._publish()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="deployments")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._persist()

    async def _run(self) -> None:
        persisted = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()
            try:
                self.tick()
                if self._clock() - persisted >= 2.0:
                    self._persist()
                    persisted = self._clock()
            except Exception:
                logger.exception("Deployment loop failed; carrying on")

    def tick(self) -> None:
        """Sample every deployment's demand once and apply the autoscaler's decisions."""
        changed = False
        instances = self.driver.instances()
        self._instance_events(instances)
        for ident, record in list(self._records.items()):
            if record.deleting:
                if not any(i.deployment == ident for i in instances) and self.driver.connected():
                    self._forget(ident)
                    changed = True
                continue
            in_flight, queued = self._demand(ident)
            demand = in_flight + queued + self._refused.pop(ident, 0)
            cfg = record.spec.auto_scaling_config
            decision = self.autoscaler.observe(ident, cfg, demand)
            if decision is not None:
                changed = True
                logger.info(
                    "Deployment %s scaled to %d instances (%s)", ident, decision.replicas, decision.reason
                )
                self._event(ident, "scaled", f"{decision.replicas} instances: {decision.reason}")
                self._records[ident] = self._store.update(record, replicas=decision.replicas)
        if changed:
            self._publish()

    def _instance_events(self, instances: list[InstanceInfo]) -> None:
        now: dict[str, tuple[str, str]] = {i.id: (i.deployment, str(i.state)) for i in instances}
        if now == self._seen:
            return
        for instance in instances:
            before = self._seen.get(instance.id)
            if before is None or before[1] != instance.state:
                where = f" at {instance.address}" if instance.address else ""
                self._event(
                    instance.deployment,
                    "instance",
                    f"instance {instance.id} {instance.state} on {instance.node}{where}",
                    instance=instance.id,
                )
        for ident, (deployment, _) in self._seen.items():
            if ident not in now:
                self._event(deployment, "instance", f"instance {ident} stopped", instance=ident)
        self._seen = now

    def _forget(self, ident: str) -> None:
        self._store.delete(ident)
        self._records.pop(ident, None)
        self.autoscaler.remove(ident)
        self.cold_starts.pop(ident, None)
        logger.info("Deployment %s deleted: every instance stopped", ident)
        self._event(ident, "deleted", "every instance stopped")

    def _persist(self) -> None:
        """Replica counts and last-request times, so a restart carries on from here."""
        rows = []
        for ident, record in self._records.items():
            idle = self.autoscaler.idle_s(ident)
            last = None if idle is None else self._wall() - idle
            rows.append((ident, self.autoscaler.replicas(ident) if not record.deleting else 0, last))
        self._store.touch(rows)

    def _publish(self) -> None:
        self.driver.publish(self.desired())

    # -- status and events ---------------------------------------------------------------
    def on_event(self, listener: Callable[[dict[str, Any]], object]) -> None:
        self._on_event.append(listener)

    def _event(self, ident: str, kind: str, detail: str, *, instance: str = "") -> None:
        event = {
            "time": self._wall(),
            "deployment": ident,
            "event": kind,
            "detail": detail,
            "instance": instance,
        }
        self.events.append(event)
        del self.events[:-200]
        for listener in self._on_event:
            listener(event)

    def view(self, record: Deployment) -> dict[str, Any]:
        instances = [i for i in self.driver.instances() if i.deployment == record.id]
        return {
            "id": record.id,
            "object": "deployment",
            "spec": record.spec.with_defaults(),
            "generation": record.generation,
            "desired": 0 if record.deleting else self.autoscaler.replicas(record.id),
            "state": "deleting" if record.deleting else "active",
            "instances": [i.to_json() for i in instances],
            "last_request": self._last_request(record.id),
            "created": record.created,
            "updated": record.updated,
        }

    def _last_request(self, ident: str) -> float | None:
        idle = self.autoscaler.idle_s(ident)
        return None if idle is None else round(self._wall() - idle, 3)

    def status(self) -> dict[str, Any]:
        instances = self.driver.instances()
        deployments: dict[str, Any] = {}
        for ident, record in self._records.items():
            mine = [i for i in instances if i.deployment == ident]
            deployments[ident] = {
                "desired": 0 if record.deleting else self.autoscaler.replicas(ident),
                "state": "deleting" if record.deleting else "active",
                "generation": record.generation,
                **{state: _count(mine, state) for state in ("starting", "ready", "draining")},
                "instances": [i.to_json() for i in mine],
                "last_request": self._last_request(ident),
            }
        return {"orchestrator": self.driver.status(), "deployments": deployments}


def _task(engine: str) -> str:
    return str(Engine.lookup_task(engine))


def _count(instances: list[InstanceInfo], state: str) -> int:
    if state == "draining":
        return sum(1 for i in instances if i.state in ("draining", "stopping"))
    return sum(1 for i in instances if i.state == state)
