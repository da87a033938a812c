"""The ``swarm`` orchestrator: one Docker Swarm service per deployment.

Each deployment runs as the service ``<stack>_dep-<model id>``, built from the
stack's hardened backend service (``template=<service>``, see ``swarm_spec``) and
labelled with the stack's namespace, so ``docker stack rm`` removes it with the
stack. Swarm does the rest: replicas are the service's replica count, a new
generation is a ``start-first`` rolling update, and which task a scale-down stops
is Swarm's choice; the backend's own SIGTERM drain (deregister, finish in-flight
work, within ``drain_timeout_s``; the stop grace period is 10 s longer) keeps it
lossless.

The Docker SDK is synchronous: every call runs on a small thread pool with a
deadline, and Docker's exceptions become ``OrchestratorError`` at one boundary
(``_DockerEngine.call``). Options (``--orchestrator-option KEY=VALUE``):
``template`` (required: the service, or its name in the stack), ``stack``
(default: the template's stack namespace), ``docker_host`` (default:
``DOCKER_HOST`` or the local socket), ``call_timeout_s`` (10), ``threads`` (4).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from inferno.errors import ConfigError, OrchestratorError, OrchestratorUnavailable
from inferno.orchestrators.base import DesiredDeployment, InstanceInfo, Orchestrator, OrchestratorContext
from inferno.orchestrators.swarm_spec import (
    LABEL_DEPLOYMENT,
    LABEL_GENERATION,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
    instance_of,
    listen_port,
    replicas_of,
    service_spec,
    task_error,
    task_state,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
OPTIONS = {"template", "stack", "docker_host", "call_timeout_s", "threads"}


class _DockerEngine:
    """The Docker SDK behind a bounded thread pool: every call has a deadline, and
    every Docker error leaves here as an ``OrchestratorError``."""

    def __init__(self, docker_host: str | None, timeout_s: float, threads: int) -> None:
        self._host = docker_host
        self._timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="swarm")
        self._api: Any = None

    def _client(self) -> Any:
        import docker

        if self._api is None:
            if self._host:
                client = docker.DockerClient(base_url=self._host, timeout=int(self._timeout))
            else:
                client = docker.from_env(timeout=int(self._timeout))
            self._api = client.api
        return self._api

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(api)`` on the pool within the deadline; translate what it raises."""
        import docker.errors
        import requests.exceptions

        def run() -> T:
            return fn(self._client())

        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, run), self._timeout)
        except TimeoutError as exc:
            raise OrchestratorUnavailable(
                f"{what}: the Docker engine did not answer in {self._timeout}s"
            ) from exc
        except docker.errors.NotFound as exc:
            raise OrchestratorError(f"{what}: {exc.explanation or exc}", not_found=True) from exc
        except docker.errors.APIError as exc:
            raise OrchestratorError(f"{what}: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            self._api = None  # connect afresh next time
            raise OrchestratorUnavailable(f"{what}: cannot reach the Docker engine: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._api is not None:
            self._api.close()
            self._api = None


class SwarmOrchestrator(Orchestrator, name="swarm"):
    """Deployments as Swarm services built from the stack's backend service."""

    def __init__(
        self,
        context: OrchestratorContext,
        *,
        template: str,
        stack: str | None,
        engine: _DockerEngine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._context = context
        self._template_name = template
        self._stack = stack
        self._engine = engine
        self._clock = clock
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        #: deployment id -> its service's id and spec, as last read
        self._services: dict[str, dict[str, Any]] = {}
        self._instances: list[InstanceInfo] = []
        #: deployment id -> the latest reason one of its tasks failed
        self._task_errors: dict[str, str] = {}
        self._nodes: dict[str, str] = {}
        self._template: dict[str, Any] | None = None
        self._network_ids: list[str] = []
        self._port = 3000

    @classmethod
    def from_context(cls, context: OrchestratorContext) -> SwarmOrchestrator:
        options = dict(context.options)
        unknown = set(options) - OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown swarm orchestrator options {sorted(unknown)}; known: {sorted(OPTIONS)}"
            )
        template = options.get("template")
        if not template:
            raise ConfigError("the swarm orchestrator needs template=<the stack's backend service>")
        try:
            timeout_s = float(options.get("call_timeout_s", "10"))
            threads = int(options.get("threads", "4"))
        except ValueError as exc:
            raise ConfigError(f"swarm orchestrator option: {exc}") from None
        if not 0 < timeout_s <= 300 or not 1 <= threads <= 32:
            raise ConfigError("call_timeout_s must be in (0, 300] and threads in 1..32")
        engine = _DockerEngine(options.get("docker_host"), timeout_s, threads)
        return cls(context, template=template, stack=options.get("stack"), engine=engine)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and adopt the services already there; an engine that is away is
        only logged (``reconcile`` keeps trying)."""
        try:
            await self._refresh()
        except OrchestratorError as exc:
            self._failed(exc)
            logger.warning("Swarm orchestrator: %s; retrying on the next reconcile", exc.message)
            return
        logger.info(
            "Swarm orchestrator: stack %s, template %s, adopted %d deployment services",
            self._stack,
            self._template_name,
            len(self._services),
        )

    async def aclose(self) -> None:
        self._engine.close()

    # -- reading ---------------------------------------------------------------------------------
    async def _load_template(self) -> dict[str, Any]:
        """The template service's spec: ``<stack>_<template>`` when a stack is set
        (``template=backend``, as the stack file names it), else ``<template>``."""
        names = [self._template_name]
        if self._stack and not self._template_name.startswith(f"{self._stack}_"):
            names.insert(0, f"{self._stack}_{self._template_name}")
        service: dict[str, Any] = {}
        for i, name in enumerate(names):
            try:
                service = await self._engine.call(f"inspect {name}", functools.partial(_inspect, name=name))
                break
            except OrchestratorError as exc:
                if not exc.not_found or i == len(names) - 1:
                    raise
        spec: dict[str, Any] = service["Spec"]
        if self._stack is None:
            self._stack = (spec.get("Labels") or {}).get(LABEL_NAMESPACE)
            if not self._stack:
                raise OrchestratorError(f"the template {name} is not part of a stack; set stack=<namespace>")
        container = spec["TaskTemplate"]["ContainerSpec"]
        self._port = listen_port(container.get("Args") or [])
        self._network_ids = [n["Target"] for n in spec["TaskTemplate"].get("Networks") or []]
        self._template = spec
        return spec

    async def _refresh(self) -> None:
        """Read our services, their tasks and the node names into the caches."""
        await self._load_template()
        stack = self._stack
        filters = {"label": [LABEL_DEPLOYMENT, f"{LABEL_NAMESPACE}={stack}"]}
        services = await self._engine.call("list services", lambda api: api.services(filters=filters))
        self._services = {s["Spec"]["Labels"][LABEL_DEPLOYMENT]: s for s in services}
        ids = [s["ID"] for s in services]
        tasks: list[dict[str, Any]] = []
        if ids:
            tasks = await self._engine.call("list tasks", lambda api: api.tasks(filters={"service": ids}))
        by_service = {s["ID"]: s["Spec"]["Labels"][LABEL_DEPLOYMENT] for s in services}
        if any(t.get("NodeID") and t["NodeID"] not in self._nodes for t in tasks):
            nodes = await self._engine.call("list nodes", lambda api: api.nodes())
            self._nodes = {n["ID"]: n.get("Description", {}).get("Hostname", n["ID"]) for n in nodes}
        instances = []
        for task in tasks:
            deployment = by_service.get(task.get("ServiceID", ""))
            if deployment is None:
                continue
            info = instance_of(
                task, deployment=deployment, nodes=self._nodes, network_ids=self._network_ids, port=self._port
            )
            if info is not None:
                instances.append(info)
            err = task_error(task)
            if err and task_state(task) is None:
                self._task_errors[deployment] = err
        self._instances = sorted(instances, key=lambda i: (i.deployment, i.id))
        for info in instances:
            if info.state == "ready":  # an old failure in the task history is over
                self._task_errors.pop(info.deployment, None)
        self.connected = True

    def instances(self) -> list[InstanceInfo]:
        return list(self._instances)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "connected": self.connected,
            "stack": self._stack,
            "template": self._template_name,
            "services": sorted(s["Spec"]["Name"] for s in self._services.values()),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "task_errors": dict(self._task_errors),
        }

    def _failed(self, exc: OrchestratorError) -> None:
        if isinstance(exc, OrchestratorUnavailable):
            self.connected = False
        self.last_error = exc.message
        self.last_error_at = self._clock()

    # -- acting ----------------------------------------------------------------------------------
    async def reconcile(self, desired: Sequence[DesiredDeployment]) -> None:
        """Create, update, scale or remove services so that each matches ``desired``;
        a service that already matches is left alone (no churn)."""
        try:
            await self._refresh()
            template = self._template
            assert template is not None and self._stack is not None
            wanted = {d.id: d for d in desired}
            acted = False
            for deployment in wanted.values():
                acted |= await self._converge(template, deployment)
            for deployment_id, service in list(self._services.items()):
                if deployment_id not in wanted:
                    acted |= await self._retire(deployment_id, service)
            if acted:
                await self._refresh()
        except OrchestratorError as exc:
            self._failed(exc)
            raise

    async def _converge(self, template: dict[str, Any], desired: DesiredDeployment) -> bool:
        """One deployment one step on; True when it changed something."""
        stack = self._stack
        assert stack is not None
        service = self._services.get(desired.id)
        if desired.deleting:
            return service is not None and await self._retire(desired.id, service)
        spec = service_spec(
            template,
            desired,
            stack=stack,
            discovery_lb=self._context.discovery_lb,
            model_dir=self._context.model_dir,
        )
        if service is None:
            logger.info(
                "Creating service %s for %s (%d replicas)", spec["Name"], desired.id, desired.replicas
            )
            await self._engine.call(f"create {spec['Name']}", functools.partial(_create, spec=spec))
            return True
        current = service["Spec"]
        labels = current.get("Labels") or {}
        stale = (
            labels.get(LABEL_SPEC_HASH) != spec["Labels"][LABEL_SPEC_HASH]
            or labels.get(LABEL_GENERATION) != str(desired.generation)
            or current.get("Name") != spec["Name"]
        )
        if stale:
            logger.info(
                "Updating service %s for %s: generation %s -> %d (start-first)",
                current["Name"],
                desired.id,
                labels.get(LABEL_GENERATION),
                desired.generation,
            )
            spec["Name"] = current["Name"]  # a service cannot be renamed
            await self._update(service, spec)
            return True
        elif replicas_of(current) != desired.replicas:
            logger.info(
                "Scaling service %s: %d -> %d replicas",
                current["Name"],
                replicas_of(current),
                desired.replicas,
            )
            # The service's own spec with only the replicas changed: no task restarts.
            await self._update(service, {**current, "Mode": {"Replicated": {"Replicas": desired.replicas}}})
            return True
        return False

    async def _retire(self, deployment_id: str, service: dict[str, Any]) -> bool:
        """Scale to zero (each task drains on SIGTERM), and remove the service once
        none of its tasks runs any more."""
        current = service["Spec"]
        if replicas_of(current) != 0:
            logger.info("Stopping every instance of %s (%s)", deployment_id, current["Name"])
            await self._update(service, {**current, "Mode": {"Replicated": {"Replicas": 0}}})
            return True
        if any(i.deployment == deployment_id for i in self._instances):
            return False  # still draining
        logger.info("Removing service %s of %s", current["Name"], deployment_id)
        try:
            await self._engine.call(
                f"remove {current['Name']}", lambda api: api.remove_service(service["ID"])
            )
        except OrchestratorError as exc:
            if not exc.not_found:
                raise
        self._task_errors.pop(deployment_id, None)
        return True

    async def _update(self, service: dict[str, Any], spec: dict[str, Any]) -> None:
        version = int(service["Version"]["Index"])
        try:
            await self._engine.call(
                f"update {spec['Name']}",
                functools.partial(_update, service_id=service["ID"], version=version, spec=spec),
            )
        except OrchestratorError as exc:
            # Someone else updated it since we read it: the next reconcile reads it again.
            if "update out of sequence" not in exc.message:
                raise
            logger.info("Service %s changed under us; retrying on the next reconcile", spec["Name"])


def _inspect(api: Any, *, name: str) -> dict[str, Any]:
    return dict(api.inspect_service(name))


def _create(api: Any, *, spec: dict[str, Any]) -> Any:
    return api.create_service(
        spec["TaskTemplate"],
        name=spec["Name"],
        labels=spec["Labels"],
        mode=spec["Mode"],
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"),
    )


def _update(api: Any, *, service_id: str, version: int, spec: dict[str, Any]) -> Any:
    return api.update_service(
        service_id,
        version,
        task_template=spec["TaskTemplate"],
        name=spec["Name"],
        labels=spec["Labels"],
        mode=spec["Mode"],
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"),
    )
