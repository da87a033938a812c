"""WorkerRegistry: membership, heartbeats, health state and the routable snapshot.

Every state change goes through this class, so the log lines the harness greps
(``Backend registered``, ``Health check passed``, ``Backend removed``) are emitted
in exactly one place. Time comes from an injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from inferno.config import HealthCheckConfig, OutlierConfig, RegistryConfig
from inferno.errors import ConfigError, RegistryFull
from inferno.registry.breaker import CircuitBreaker
from inferno.registry.events import EventLog
from inferno.registry.worker import WorkerInfo, WorkerStatus
from inferno.schemas.registration import WILDCARD_HOSTS, RegistrationPayload, check_address

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


def parse_static_backend(spec: str) -> tuple[str, int]:
    """``host:port`` or ``host:port=weight``."""
    address, _, weight = spec.strip().partition("=")
    try:
        check_address(address)
    except ValueError as exc:
        raise ConfigError(f"bad backend address {spec!r}: expected host:port[=weight]") from exc
    if weight and (not weight.isdigit() or int(weight) < 1):
        raise ConfigError(f"bad backend weight in {spec!r}")
    return address, int(weight or 1)


#: the dashboard event a status change adds (ejections and half-open add their own)
_EVENT_OF_STATUS: dict[WorkerStatus, str | None] = {
    WorkerStatus.HEALTHY: "recovered",
    WorkerStatus.UNHEALTHY: "unhealthy",
    WorkerStatus.EJECTED: None,
    WorkerStatus.DRAINING: "draining",
}


class WorkerRegistry:
    def __init__(
        self,
        registry_config: RegistryConfig,
        health_config: HealthCheckConfig,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        outlier_config: OutlierConfig | None = None,
    ) -> None:
        self._cfg = registry_config
        self._health = health_config
        self._outlier = outlier_config or OutlierConfig()
        self._change_listeners: list[Callable[[], None]] = []
        self._clock = clock
        self._wall = wall_clock
        self._workers: dict[str, WorkerInfo] = {}
        #: backends being retired by the proxy (a deployment's scale-down): they stay
        #: draining whatever their heartbeats say, until they leave
        self._retiring: set[str] = set()
        self._routable: tuple[WorkerInfo, ...] = ()
        #: model id -> routable workers serving it (plus those that list no models)
        self._by_model: dict[str, tuple[WorkerInfo, ...]] = {}
        #: task -> routable workers able to do it (for requests that name no model)
        self._by_task: dict[str, tuple[WorkerInfo, ...]] = {}
        self._anything: tuple[WorkerInfo, ...] = ()
        self._removal_listeners: list[Callable[[str], None]] = []
        #: what happened to the backends, for the dashboard (a bounded ring buffer)
        self.events = EventLog(registry_config.event_log_size, wall=wall_clock)
        #: backends ejected by their circuit breaker, ever (a Prometheus counter)
        self.ejections_total = 0

    # -- queries -------------------------------------------------------------------------
    def get(self, address: str) -> WorkerInfo | None:
        return self._workers.get(address)

    def all(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    def routable(self) -> tuple[WorkerInfo, ...]:
        """Healthy workers, as a cached tuple rebuilt only when state changes."""
        return self._routable

    def routable_for(self, model: str | None, task: str = "text-generation") -> tuple[WorkerInfo, ...]:
        """The routable snapshot for one model (or, with none, for one task): admission
        and retries both read it."""
        if model is None:
            return self._by_task.get(task, self._anything)
        pool = self._by_model.get(model)
        if pool is None:
            # Backends that advertise no models serve anything (static ones, say).
            return self._anything
        return pool

    def models(self) -> list[str]:
        """Ids of the models some healthy backend serves, in registration order."""
        return list(self.model_tasks())

    def model_tasks(self) -> dict[str, str]:
        """Model id -> task, for the models some healthy backend serves."""
        seen: dict[str, str] = {}
        for worker in self._routable:
            for model in worker.models:
                seen.setdefault(model, worker.tasks.get(model, "text-generation"))
        return seen

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in WorkerStatus}
        for worker in self._workers.values():
            counts[worker.status.value] += 1
        counts["total"] = len(self._workers)
        return counts

    def on_removed(self, listener: Callable[[str], None]) -> None:
        """Called with the address of a backend that left, or that a new process took
        over (a restart): what was kept for the old one (connections, service times)
        is dropped."""
        self._removal_listeners.append(listener)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called after any change to the routable set (the admission queue listens)."""
        self._change_listeners.append(listener)

    # -- membership ----------------------------------------------------------------------
    def add_static(self, address: str, weight: int = 1) -> WorkerInfo:
        worker = WorkerInfo(
            address, node_id=address, weight=weight, source="static", wall=self._wall(), outlier=self._outlier
        )
        self._workers[address] = worker
        logger.info("Backend registered: %s", address)
        self.events.add("registered", address, address, "static")
        self._changed()
        return worker

    def register(self, payload: RegistrationPayload, peer_host: str | None = None) -> WorkerInfo:
        """Register or heartbeat. A heartbeat from an unknown backend registers it."""
        address = self.effective_address(payload, peer_host)
        now, wall = self._clock(), self._wall()
        worker = self._workers.get(address)
        if worker is None:
            self.check_room()
            worker = WorkerInfo(
                address,
                node_id=payload.node_id,
                models=tuple(m.id for m in payload.models),
                weight=payload.weight,
                source="registered",
                now=now,
                wall=wall,
                outlier=self._outlier,
            )
            worker.tasks = {m.id: m.task for m in payload.models}
            worker.instance_id = payload.instance_id
            self._workers[address] = worker
            logger.info(
                "Backend registered: %s (node %s, models %s)",
                address,
                payload.node_id,
                ",".join(worker.models) or "any",
            )
            self.events.add(
                "registered", address, payload.node_id, "models " + (",".join(worker.models) or "any")
            )
            self._changed()
        restarted = (
            payload.instance_id is not None
            and worker.instance_id is not None
            and payload.instance_id != worker.instance_id
        )
        if payload.instance_id is not None:
            worker.instance_id = payload.instance_id
        worker.node_id = payload.node_id
        models = tuple(m.id for m in payload.models)
        tasks: dict[str, str] = {m.id: m.task for m in payload.models}
        if models != worker.models or tasks != worker.tasks:
            worker.models = models
            worker.tasks = tasks
            self._changed()
        worker.vitals = payload.vitals
        worker.ops_address = payload.ops_address
        if worker.weight != payload.weight:
            worker.weight = payload.weight
            self._changed()
        worker.last_heartbeat = now
        worker.last_heartbeat_wall = wall
        if restarted:
            self._restarted(worker, wall)
        if payload.state == "draining" or address in self._retiring:
            self._set_status(worker, WorkerStatus.DRAINING, "draining")
        elif restarted:
            # The failures were the old process's: the new one is routable at once.
            if worker.status is WorkerStatus.HEALTHY:
                self._changed()  # its breaker closed: capacity for the queue
            else:
                self._set_status(worker, WorkerStatus.HEALTHY, "re-registered")
        elif worker.status is WorkerStatus.DRAINING or (
            worker.status is WorkerStatus.UNHEALTHY and worker.status_reason == "heartbeat_timeout"
        ):
            # Alive again. Failures seen by the data path are cleared only by probes.
            self._set_status(worker, WorkerStatus.HEALTHY, "heartbeat")
        return worker

    def _restarted(self, worker: WorkerInfo, wall: float) -> None:
        """A new process at a known address: forget what the old one did."""
        previous = worker.breaker.state
        worker.breaker = CircuitBreaker(self._outlier)
        worker.consecutive_failures = 0
        worker.consecutive_successes = 0
        worker.suspect = False
        worker.registered_at = wall
        logger.info(
            "Backend re-registered: %s (node %s, a new process; circuit %s -> closed)",
            worker.address,
            worker.node_id,
            previous.value,
        )
        self.events.add("registered", worker.address, worker.node_id, "new process; circuit closed")
        for listener in self._removal_listeners:
            listener(worker.address)

    def effective_address(self, payload: RegistrationPayload, peer_host: str | None) -> str:
        """The address a registration is kept under: a wildcard host becomes the peer's."""
        host, _, port = payload.address.rpartition(":")
        if host in WILDCARD_HOSTS and peer_host:
            return f"[{peer_host}]:{port}" if ":" in peer_host else f"{peer_host}:{port}"
        return payload.address

    def check_room(self) -> None:
        """Refuse a new backend once the registry holds ``max_backends``."""
        if len(self._workers) >= self._cfg.max_backends:
            raise RegistryFull(
                f"the proxy already holds {self._cfg.max_backends} backends (--registry-max-backends)"
            )

    def retire(self, address: str) -> WorkerInfo | None:
        """Stop routing new requests to ``address`` (it is about to be stopped); requests
        in flight there finish. Returns the backend, or None if it is not registered."""
        worker = self._workers.get(address)
        if worker is None:
            return None
        self._retiring.add(address)
        self._set_status(worker, WorkerStatus.DRAINING, "retiring: scale-down")
        return worker

    def deregister(self, address: str, reason: str = "deregistered") -> bool:
        self._retiring.discard(address)
        worker = self._workers.pop(address, None)
        if worker is None:
            return False
        logger.info("Backend removed: %s (%s)", address, reason)
        self.events.add("removed", address, worker.node_id, reason)
        self._changed()
        for listener in self._removal_listeners:
            listener(address)
        return True

    def find_by_node_id(self, node_id: str) -> WorkerInfo | None:
        for worker in self._workers.values():
            if worker.node_id == node_id:
                return worker
        return None

    # -- health signals ------------------------------------------------------------------
    def report_refused(self, address: str) -> None:
        """The data path got ECONNREFUSED: out of routing at once, no thresholds."""
        worker = self._workers.get(address)
        if worker is None or worker.status is WorkerStatus.UNHEALTHY:
            return
        worker.consecutive_successes = 0
        worker.consecutive_failures = self._health.unhealthy_threshold
        logger.warning("Backend unhealthy: %s (connection refused)", address)
        self._set_status(worker, WorkerStatus.UNHEALTHY, "connection_refused")

    def record_probe(
        self, address: str, ok: bool, *, refused: bool = False, detail: str = "", slots: int | None = None
    ) -> None:
        """Apply one active health-check result, with K-fail / M-pass thresholds.

        ``slots`` is what a good probe's answer advertised (None: nothing usable). It
        sets a static backend's capacity (0, the default limit, when it advertises
        none); a registered backend reports its own in every heartbeat.
        """
        worker = self._workers.get(address)
        if worker is None:
            return
        if ok and worker.source == "static" and worker.vitals.slots != (slots or 0):
            logger.info("Backend %s advertises %s slot(s)", address, slots or "no")
            worker.vitals = worker.vitals.model_copy(update={"slots": slots or 0})
            self._changed()  # more room: waiters may go now
        if ok:
            worker.consecutive_failures = 0
            worker.consecutive_successes += 1
            if (
                worker.status is WorkerStatus.UNHEALTHY
                and worker.status_reason != "heartbeat_timeout"
                and worker.consecutive_successes >= self._health.healthy_threshold
            ):
                logger.info("Health check passed: %s", address)
                self._set_status(worker, WorkerStatus.HEALTHY, "probe_ok")
            return
        worker.consecutive_successes = 0
        worker.consecutive_failures += 1
        if worker.status is WorkerStatus.HEALTHY and (
            refused or worker.consecutive_failures >= self._health.unhealthy_threshold
        ):
            logger.warning("Health check failed: %s (%s)", address, detail or "probe failed")
            self._set_status(
                worker, WorkerStatus.UNHEALTHY, "connection_refused" if refused else "probe_failed"
            )

    def record_success(self, worker: WorkerInfo, *, slow: bool = False) -> None:
        """A request the backend answered properly (a client's 4xx counts as success).

        A slow success keeps the backend suspect; a normal one clears that.
        """
        if not slow:
            worker.suspect = False
        if worker.breaker.on_success():
            logger.info("Circuit closed: %s (trial request succeeded)", worker.address)
            self.events.add("recovered", worker.address, worker.node_id, "trial request succeeded")

    def record_failure(self, worker: WorkerInfo, reason: str) -> None:
        """A connection error, timeout or 5xx: counts towards ejection."""
        if worker.address not in self._workers:
            return
        if worker.breaker.on_failure(self._clock()):
            logger.warning(
                "Backend ejected: %s (%s; circuit open for %.1fs, ejection %d)",
                worker.address,
                reason,
                worker.breaker.ejection_s(),
                worker.breaker.ejections,
            )
            self.ejections_total += 1
            if worker.status is WorkerStatus.HEALTHY:
                self._set_status(worker, WorkerStatus.EJECTED, "outlier")
            else:
                self._changed()
            self.events.add(
                "ejected",
                worker.address,
                worker.node_id,
                f"{reason}; circuit open for {worker.breaker.ejection_s():.1f}s",
            )

    def mark_suspect(self, worker: WorkerInfo, detail: str) -> None:
        if not worker.suspect:
            logger.warning("Backend suspect: %s (%s)", worker.address, detail)
            self.events.add("suspect", worker.address, worker.node_id, detail)
        worker.suspect = True

    def sweep(self) -> None:
        """Heartbeat expiry: unhealthy after ``heartbeat_timeout_s``, removed after ``ttl_s``."""
        now = self._clock()
        for worker in list(self._workers.values()):
            if worker.breaker.poll(now):
                logger.info("Ejection ended: %s (circuit half-open, one trial request)", worker.address)
                self.events.add("half_open", worker.address, worker.node_id, "one trial request")
                if worker.status is WorkerStatus.EJECTED:
                    self._set_status(worker, WorkerStatus.HEALTHY, "half_open")
                else:
                    self._changed()
            if worker.last_heartbeat is None:
                continue
            silent = now - worker.last_heartbeat
            if silent >= self._cfg.ttl_s:
                self.deregister(worker.address, f"no heartbeat for {silent:.1f}s")
            elif silent >= self._cfg.heartbeat_timeout_s and worker.status is not WorkerStatus.UNHEALTHY:
                logger.warning("Backend unhealthy: %s (no heartbeat for %.1fs)", worker.address, silent)
                self._set_status(worker, WorkerStatus.UNHEALTHY, "heartbeat_timeout")

    # -- internals -----------------------------------------------------------------------
    def _set_status(self, worker: WorkerInfo, status: WorkerStatus, reason: str) -> None:
        worker.status_reason = reason
        if worker.status is status:
            return
        previous, worker.status = worker.status, status
        kind = _EVENT_OF_STATUS[status]
        # Ejected -> healthy is the half-open trial, which has its own event.
        if kind is not None and not (previous is WorkerStatus.EJECTED and status is WorkerStatus.HEALTHY):
            self.events.add(kind, worker.address, worker.node_id, reason.replace("_", " "))
        self._changed()

    def _changed(self) -> None:
        self._routable = tuple(w for w in self._workers.values() if w.routable)
        self._anything = tuple(w for w in self._routable if not w.models)
        by_model: dict[str, list[WorkerInfo]] = {}
        by_task: dict[str, list[WorkerInfo]] = {}
        for worker in self._routable:
            for model in worker.models:
                by_model.setdefault(model, list(self._anything)).append(worker)
            for task in dict.fromkeys(worker.tasks.get(m, "text-generation") for m in worker.models):
                by_task.setdefault(task, list(self._anything)).append(worker)
        self._by_model = {model: tuple(pool) for model, pool in by_model.items()}
        self._by_task = {task: tuple(pool) for task, pool in by_task.items()}
        for listener in self._change_listeners:
            listener()

    def load_static(self, specs: Iterable[str]) -> None:
        for spec in specs:
            address, weight = parse_static_backend(spec)
            self.add_static(address, weight)
