"""The ``local`` orchestrator: each instance is an ``inferno backend`` process on 127.0.0.1.

``reconcile`` only decides and returns; one background loop owned by the orchestrator
probes starting instances (``GET /health`` on their ops port, each call bounded),
notices exits and cold-start timeouts, and steps again whenever something changed.
Stops run as their own tasks: ``before_stop`` (the driver stops routing), SIGTERM
(the backend deregisters, refuses new work with a retryable 503 and finishes what is
in flight), a bounded wait, then SIGKILL. A roll starts the new generation first and
drains the old one instance by instance only once enough new ones are ready.

Instances outlive the orchestrator: ``aclose`` leaves them running, and ``start``
adopts them again from their records (pid plus pid start time, so a reused pid is
never taken for ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from inferno.errors import UpstreamError
from inferno.http.client import ResponseLimits, Timeouts, UpstreamPool, build_request
from inferno.orchestrators.base import (
    DesiredDeployment,
    InstanceInfo,
    Orchestrator,
    OrchestratorContext,
)
from inferno.orchestrators.processes import (
    HOST,
    OPTIONS,
    Backoff,
    InstanceProcess,
    InstanceRecord,
    LocalInstance,
    RecordStore,
    backend_argv,
    free_port,
    parse_options,
    reap,
    spawn,
)

logger = logging.getLogger(__name__)

TOKEN_ENV = "INFERNO_CLUSTER_TOKEN"  # inferno.security.TOKEN_ENV; not imported, to stay light
WORKER_TOKEN_ENV = "INFERNO_WORKER_TOKEN"
#: past the drain timeout, how long a stopping instance has before SIGKILL
KILL_GRACE_S = 10.0
#: ``--orchestrator-option`` keys this orchestrator takes, with their types
BeforeStop = Callable[[InstanceInfo], Awaitable[None]]
#: how long ``before_stop`` may take before SIGTERM is sent anyway
BEFORE_STOP_S = 1.0


class LocalOrchestrator(Orchestrator, name="local"):
    """Backends as local processes; see the module docstring."""

    def __init__(
        self,
        state_dir: str,
        discovery_lb: str,
        *,
        cluster_token: str | None = None,
        worker_token: str | None = None,
        model_dir: str | None = None,
        before_stop: BeforeStop | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        python: str = sys.executable,
        probe_interval_s: float = 0.2,
        probe_timeout_s: float = 1.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_starting: int = 4,
        max_instances: int = 64,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        #: starts in progress at once, and processes in all (a PATCH storm, or one admin
        #: request asking for 64 instances, must not fork the machine to death)
        self._max_starting = max_starting
        self._max_instances = max_instances
        self._store = RecordStore(state_dir)
        self._discovery_lb = discovery_lb
        self._token = cluster_token
        self._worker_token = worker_token
        self._model_dir = model_dir
        self._before_stop = before_stop
        self._clock = clock
        self._wall_clock = wall_clock
        self._python = python
        self._interval_s = probe_interval_s
        self._timeouts = Timeouts(
            connect_s=probe_timeout_s, first_byte_s=probe_timeout_s, read_s=probe_timeout_s
        )
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._environ = dict(os.environ if environ is None else environ)
        self._instances: dict[str, LocalInstance] = {}
        self._backoff: dict[str, Backoff] = {}
        #: the last desired state; None until the first reconcile (nothing is stopped before)
        self._desired: dict[str, DesiredDeployment] | None = None
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._pool = UpstreamPool(max_idle_per_host=1, limits=ResponseLimits(max_body_bytes=64 * 1024))
        self._started = False
        #: when a deployment's backoff ends: the loop steps then, with no reconcile needed
        self._wake: float | None = None

    @classmethod
    def from_context(cls, context: OrchestratorContext) -> LocalOrchestrator:
        options = parse_options(context.options, OPTIONS)
        return cls(
            context.state_dir,
            context.discovery_lb,
            cluster_token=context.cluster_token,
            worker_token=context.worker_token,
            model_dir=context.model_dir,
            before_stop=context.before_stop,
            **options,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._store.ensure()
        now = self._clock()
        for record in self._store.load():
            process = InstanceProcess(record.pid, record.pid_start)
            if record.id in self._instances:
                continue
            if not process.alive():
                logger.info(
                    "Instance %s of %s is gone (pid %d): record dropped",
                    record.id,
                    record.deployment,
                    record.pid,
                )
                self._store.remove(record.id)
                continue
            self._instances[record.id] = LocalInstance(record, process, "starting", now)
            logger.info(
                "Instance %s of %s adopted (pid %d, %s, generation %d)",
                record.id,
                record.deployment,
                record.pid,
                record.address,
                record.generation,
            )
        adopted = [i for i in self._instances.values() if i.state == "starting"]
        if adopted:  # one bounded round now, so the first reconcile sees them ready
            await self._probe_all(adopted)
        self._loop_task = asyncio.create_task(self._run(), name="local-orchestrator")

    async def aclose(self) -> None:
        """Stop the loop and any drains in progress; the processes keep running."""
        tasks = [t for t in (self._loop_task, *self._stops.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = None
        self._stops.clear()
        await self._pool.aclose()

    # -- the interface -------------------------------------------------------------------------
    async def reconcile(self, desired: Sequence[DesiredDeployment]) -> None:
        if not self._started:
            raise RuntimeError("LocalOrchestrator.reconcile before start()")
        self._desired = {d.id: d for d in desired}
        self._step()

    def instances(self) -> list[InstanceInfo]:
        return [i.info() for i in sorted(self._instances.values(), key=lambda i: i.record.started)]

    def status(self) -> dict[str, Any]:
        deployments: dict[str, dict[str, Any]] = {}
        now = self._clock()
        for inst in self._instances.values():
            counts = deployments.setdefault(inst.record.deployment, {"instances": 0})
            counts["instances"] += 1
            counts[inst.state] = counts.get(inst.state, 0) + 1
        for name, backoff in self._backoff.items():
            entry = deployments.setdefault(name, {"instances": 0})
            entry["starts"] = backoff.starts
            entry["failures"] = backoff.failures
            entry["backoff_s"] = round(max(0.0, backoff.blocked_until - now), 3)
        return {
            "name": self.name,
            "connected": True,
            "instances": len(self._instances),
            "ready": sum(i.state == "ready" for i in self._instances.values()),
            "deployments": deployments,
        }

    # -- deciding ------------------------------------------------------------------------------
    def _step(self) -> None:
        """Move every deployment one step towards the desired state (no waiting here)."""
        if self._desired is None:
            return
        for inst in [i for i in self._instances.values() if i.state == "failed"]:
            self._drop(inst)
        names = set(self._desired) | {i.record.deployment for i in self._instances.values()}
        for name in sorted(names):
            self._step_deployment(name, self._desired.get(name))
        for name in set(self._backoff) - names:
            del self._backoff[name]  # a deployment that is gone starts afresh if it comes back

    def _step_deployment(self, name: str, desired: DesiredDeployment | None) -> None:
        mine = [i for i in self._instances.values() if i.record.deployment == name]
        live = [i for i in mine if i.state in ("starting", "ready")]
        if desired is None or desired.deleting:
            for inst in live:
                self._stop(inst, "its deployment is gone" if desired is None else "its deployment is deleted")
            return
        target = max(0, desired.replicas)
        current = [i for i in live if self._current(i, desired)]
        old = [i for i in live if not self._current(i, desired)]
        # Surplus of the current generation: the ones not serving yet go first, then the newest.
        if len(current) > target:
            order = sorted(current, key=lambda i: (i.state == "ready", -i.record.started))
            for inst in order[: len(current) - target]:
                self._stop(inst, "scale down")
            current = order[len(current) - target :]
        for _ in range(target - len(current)):
            if not self._start(desired):
                break
        # The old generation: what is not serving goes now; what serves stays until enough
        # of the new one is ready, then leaves one at a time.
        ready_current = sum(i.state == "ready" for i in current)
        for inst in [i for i in old if i.state != "ready"]:
            self._stop(inst, f"generation {desired.generation} replaces it")
        old_ready = sorted((i for i in old if i.state == "ready"), key=lambda i: i.record.started)
        keep = max(0, target - ready_current)
        draining_old = any(
            i.state in ("draining", "stopping") and not self._current(i, desired) for i in mine
        )
        if len(old_ready) > keep and (not draining_old or target == 0):
            surplus = old_ready[: len(old_ready) - keep]
            for inst in surplus if target == 0 else surplus[:1]:
                self._stop(inst, f"generation {desired.generation} is ready")

    def _current(self, inst: LocalInstance, desired: DesiredDeployment) -> bool:
        """Of the desired generation, and registering where the proxy now listens (one
        adopted from a proxy on another address is replaced like an old generation)."""
        record = inst.record
        return record.generation == desired.generation and record.discovery_lb in ("", self._discovery_lb)

    # -- acting --------------------------------------------------------------------------------
    def _start(self, desired: DesiredDeployment) -> bool:
        """Start one instance of ``desired``; False while its backoff holds starts back."""
        backoff = self._backoff.setdefault(desired.id, Backoff())
        now = self._clock()
        if backoff.failures and now < backoff.blocked_until:
            self._wake_at(backoff.blocked_until)
            return False
        starting = sum(i.state == "starting" or not i.served for i in self._instances.values())
        if starting >= self._max_starting or len(self._instances) >= self._max_instances:
            return False  # the next step (an instance ready or gone) tries again
        spec = desired.spec
        instance_id = f"{desired.id}-{secrets.token_hex(4)}"
        data_port, ops_port = free_port(), free_port()
        while ops_port == data_port:
            ops_port = free_port()
        scaling = spec.auto_scaling_config
        argv = backend_argv(
            self._python, spec, instance_id, (data_port, ops_port), self._discovery_lb, self._model_dir
        )
        env = {k: v for k, v in self._environ.items() if k not in (TOKEN_ENV, WORKER_TOKEN_ENV)}
        if self._token:
            env[TOKEN_ENV] = self._token
        if self._worker_token and spec.kind == "worker":
            env[WORKER_TOKEN_ENV] = self._worker_token
        try:
            process = spawn(argv, env, self._store.log_path(instance_id))
        except OSError as exc:
            logger.error("Instance %s of %s failed to spawn: %s", instance_id, desired.id, exc)
            self._failed_start(desired.id)
            return False
        record = InstanceRecord(
            id=instance_id,
            deployment=desired.id,
            generation=desired.generation,
            pid=process.pid,
            pid_start=process.pid_start,
            data_port=data_port,
            ops_port=ops_port,
            address=f"{HOST}:{data_port}",
            started=self._wall_clock(),
            drain_timeout_s=scaling.drain_timeout_s,
            cold_start_timeout_s=scaling.cold_start_timeout_s,
            discovery_lb=self._discovery_lb,
        )
        try:
            self._store.write(record)
        except OSError as exc:
            # Untracked, it would outlive us unseen: better not run at all.
            logger.error(
                "Instance %s of %s: cannot write its record (%s): killed", instance_id, desired.id, exc
            )
            process.signal(signal.SIGKILL)
            self._reap_later(process, instance_id)
            self._failed_start(desired.id)
            return False
        self._instances[instance_id] = LocalInstance(record, process, "starting", now)
        backoff.starts += 1
        if backoff.failures:
            # Still failing: the next start waits a whole window even if this one hangs.
            backoff.blocked_until = now + backoff.delay_s(self._backoff_base_s, self._backoff_max_s)
        logger.info(
            "Instance %s of %s started (pid %d, %s, generation %d)",
            instance_id,
            desired.id,
            process.pid,
            record.address,
            desired.generation,
        )
        return True

    def _stop(self, inst: LocalInstance, reason: str) -> None:
        if inst.record.id in self._stops or inst.state in ("draining", "stopping"):
            return
        logger.info("Instance %s of %s stopping: %s", inst.record.id, inst.record.deployment, reason)
        inst.state = "draining"
        self._stops[inst.record.id] = asyncio.create_task(self._drain(inst), name=f"stop-{inst.record.id}")

    async def _drain(self, inst: LocalInstance) -> None:
        record = inst.record
        try:
            if self._before_stop is not None:
                try:
                    # Quick (the proxy stops routing to it); the backend's own drain on
                    # SIGTERM finishes its requests, so a killed driver orphans nothing.
                    await asyncio.wait_for(self._before_stop(inst.info()), timeout=BEFORE_STOP_S)
                except Exception:
                    logger.exception("before_stop of instance %s failed; stopping it anyway", record.id)
            inst.process.signal(signal.SIGTERM)
            if not await self._wait_exit(inst, record.drain_timeout_s + KILL_GRACE_S):
                inst.state = "stopping"
                logger.warning(
                    "Instance %s of %s did not stop within %.0fs: killed (pid %d)",
                    record.id,
                    record.deployment,
                    record.drain_timeout_s + KILL_GRACE_S,
                    record.pid,
                )
                inst.process.signal(signal.SIGKILL)
                await self._wait_exit(inst, 5.0)
            logger.info(
                "Instance %s of %s stopped (pid %d, exit %s)",
                record.id,
                record.deployment,
                record.pid,
                inst.process.returncode(),
            )
        finally:
            self._stops.pop(record.id, None)
        self._drop(inst)
        self._step()

    async def _wait_exit(self, inst: LocalInstance, timeout_s: float) -> bool:
        deadline = self._clock() + timeout_s
        while inst.process.alive():
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _drop(self, inst: LocalInstance) -> None:
        self._instances.pop(inst.record.id, None)
        self._store.remove(inst.record.id)
        with contextlib.suppress(OSError):
            self._store.prune_logs()

    def _failed_start(self, deployment: str) -> None:
        backoff = self._backoff.setdefault(deployment, Backoff())
        backoff.failures += 1
        delay = backoff.delay_s(self._backoff_base_s, self._backoff_max_s)
        backoff.blocked_until = self._clock() + delay
        logger.info(
            "Deployment %s: %d failed start(s) in a row, next start in %.1fs",
            deployment,
            backoff.failures,
            delay,
        )

    def _fail(self, inst: LocalInstance, why: str) -> None:
        record = inst.record
        logger.warning("Instance %s of %s failed (pid %d): %s", record.id, record.deployment, record.pid, why)
        # A ready instance that dies counts too: a crash loop restarts at most once a window.
        self._failed_start(record.deployment)
        inst.state = "failed"

    def _wake_at(self, when: float) -> None:
        self._wake = when if self._wake is None else min(self._wake, when)

    # -- watching ------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                logger.exception("local orchestrator loop failed; continuing")
            await asyncio.sleep(self._interval_s)

    async def _tick(self) -> None:
        """Notice exits and timeouts, probe the starting instances, step if anything moved."""
        changed = False
        now = self._clock()
        starting = []
        for inst in list(self._instances.values()):
            if inst.state not in ("starting", "ready"):
                continue
            if not inst.process.alive():
                code = inst.process.returncode()
                self._fail(inst, "exited" if code is None else f"exited with code {code}")
                changed = True
            elif inst.state == "starting" and now - inst.since > inst.record.cold_start_timeout_s:
                self._fail(inst, f"not ready within {inst.record.cold_start_timeout_s:.0f}s: killed")
                inst.process.signal(signal.SIGKILL)
                self._reap_later(inst.process, inst.record.id)
                changed = True
            elif inst.state == "starting":
                starting.append(inst)
        if starting:
            changed |= await self._probe_all(starting)
        if self._wake is not None and now >= self._wake:
            self._wake = None
            changed = True
        if changed:
            self._step()

    def _reap_later(self, process: InstanceProcess, instance_id: str) -> None:
        """Reap a killed child of ours in the background (adopted ones are not ours)."""
        if process.popen is not None:
            key = f"reap-{instance_id}"
            task = asyncio.create_task(reap(process.popen.poll), name=key)
            self._stops[key] = task
            task.add_done_callback(lambda _: self._stops.pop(key, None))

    async def _probe_all(self, starting: list[LocalInstance]) -> bool:
        tasks = {asyncio.create_task(self._probe(i.record)): i for i in starting}
        done, pending = await asyncio.wait(tasks, timeout=self._timeouts.read_s + 0.5)
        for task in pending:
            task.cancel()
        changed = False
        for task in done:
            inst = tasks[task]
            if task.result() and inst.state == "starting":
                inst.state = "ready"
                inst.served = True
                self._backoff.pop(inst.record.deployment, None)
                logger.info(
                    "Instance %s of %s ready (%s, %.1fs)",
                    inst.record.id,
                    inst.record.deployment,
                    inst.record.address,
                    self._clock() - inst.since,
                )
                changed = True
        return changed

    async def _probe(self, record: InstanceRecord) -> bool:
        address = f"{HOST}:{record.ops_port}"
        request = build_request(b"GET", b"/health", address.encode(), b"", b"")
        try:
            response = await self._pool.request(address, request, timeouts=self._timeouts)
        except UpstreamError:
            return False
        if response.status != 200:
            return False
        try:
            body = json.loads(response.body)
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("status") == "ok"
