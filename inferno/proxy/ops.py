"""The proxy's ops port: health, liveness, metrics, workers and registration."""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from inferno.errors import BadRequest, NotFound
from inferno.http.client import UpstreamPool
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder
from inferno.proxy.admission import AdmissionController
from inferno.proxy.clients import ClientGate
from inferno.proxy.dashboard.routes import Dashboard
from inferno.proxy.deploy_api import DeploymentsApi
from inferno.registry.loops import OwnAddresses
from inferno.registry.registry import WorkerRegistry
from inferno.registry.resolver import Resolver
from inferno.schemas import parse_body
from inferno.schemas.registration import RegistrationPayload, check_address
from inferno.security import ClusterAuth

if TYPE_CHECKING:
    from inferno.proxy.queue_api import QueueWorkerApi  # imported with pull queues only

logger = logging.getLogger(__name__)


class ProxyOps:
    """Handler for the ops port (6100)."""

    def __init__(
        self,
        registry: WorkerRegistry,
        metrics: CollectorRegistry,
        admission: AdmissionController,
        pool: UpstreamPool,
        resolver: Resolver,
        auth: ClusterAuth | None = None,
        gate: ClientGate | None = None,
        dashboard: Dashboard | None = None,
        own: OwnAddresses | None = None,
        deployments: DeploymentsApi | None = None,
        queues: QueueWorkerApi | None = None,
    ) -> None:
        self._deployments = deployments
        self._auth = auth or ClusterAuth(None)
        #: the proxy's own sockets: a backend there would loop every request back in
        self._own = own or OwnAddresses()
        self._gate = gate
        self._registry = registry
        self._metrics = metrics
        self._admission = admission
        self._pool = pool
        self._resolver = resolver

        router = Router()
        router.add(("POST", "DELETE"), "/registration", self._registration)
        router.add("GET", "/health", self._health)
        router.add("GET", "/livez", self._livez)
        router.add("GET", "/metrics", self._metrics_page)
        router.add("GET", "/queue/status", self._queue)
        router.add("GET", "/vitals", self._vitals)
        router.add("GET", "/workers", self._workers)
        router.add("GET", "/usage", self._usage)
        if dashboard is not None:
            dashboard.install(router)
        if deployments is not None:
            deployments.install(router)
        if queues is not None:
            queues.install(router)
        self._router = router

    async def __call__(self, request: Request, responder: Responder) -> None:
        await self._router(request, responder)

    async def _registration(self, request: Request, responder: Responder) -> None:
        # Registration, heartbeats and deregistration change who receives prompts.
        self._auth.check(request.headers, f"{request.method} /registration", request.peer.rpartition(":")[0])
        if request.method == "POST":
            await self._register(request, responder)
        else:
            self._deregister(request, responder)

    async def _usage(self, request: Request, responder: Responder) -> None:
        rows = self._gate.usage() if self._gate is not None else []
        body = {"enabled": self._gate is not None, "usage": rows}
        responder.send(200, JSON_HEADERS, dumps(body))

    async def _livez(self, request: Request, responder: Responder) -> None:
        responder.send(200, JSON_HEADERS, b'{"status":"alive"}')

    async def _metrics_page(self, request: Request, responder: Responder) -> None:
        if urllib.parse.parse_qs(request.query).get("format") == ["json"]:
            await self._vitals(request, responder)
            return
        payload = generate_latest(self._metrics)
        responder.send(200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], payload)

    async def _queue(self, request: Request, responder: Responder) -> None:
        responder.send(200, JSON_HEADERS, dumps(self._admission.status()))

    async def _workers(self, request: Request, responder: Responder) -> None:
        workers = [w.to_json() for w in self._registry.all()]
        responder.send(200, JSON_HEADERS, dumps({"workers": workers, "count": len(workers)}))

    async def _health(self, request: Request, responder: Responder) -> None:
        counts = self._registry.counts()
        healthy, total = counts["healthy"], counts["total"]
        manager = self._deployments.manager if self._deployments is not None else None
        idle = manager is not None and total == 0 and manager.all() and manager.idle_at_zero()
        if healthy == 0 and idle:
            # Every deployment is at zero on purpose: nothing to serve until a request comes.
            status, code = "healthy", 200
        elif healthy == 0:
            status, code = "unhealthy", 503
        elif healthy == total:
            status, code = "healthy", 200
        else:
            status, code = "degraded", 200
        body: dict[str, object] = {"status": status, "healthy": healthy, "total": total, "backends": counts}
        if manager is not None:
            body["orchestrator"] = {
                "name": manager.driver.name,
                "connected": manager.driver.connected(),
                "deployments": len(manager.all()),
            }
        if not self._auth.enabled:
            body["warning"] = "insecure: no cluster token, anyone reaching the ops port can register"
        responder.send(code, JSON_HEADERS, dumps(body))

    async def _vitals(self, request: Request, responder: Responder) -> None:
        nodes = {
            w.node_id: {"address": w.address, "status": w.status.value, **w.vitals.model_dump()}
            for w in self._registry.all()
        }
        responder.send(200, JSON_HEADERS, dumps({"nodes": nodes}))

    async def _register(self, request: Request, responder: Responder) -> None:
        payload = parse_body(RegistrationPayload, request.body)
        peer_host = request.peer.rpartition(":")[0] or None
        address = self._registry.effective_address(payload, peer_host)
        if self._registry.get(address) is None:
            # A new backend: refuse it early when full, and resolve its name once, with a
            # deadline, so that neither probes nor requests ever wait on DNS for it.
            self._registry.check_room()
            host, _, port = address.rpartition(":")
            ip = await self._resolver.resolve(host, int(port))
            if self._own.contains(ip, int(port)):
                raise BadRequest(
                    "that address is this proxy's own data or ops port: requests routed there would "
                    "come straight back into the proxy; register the backend's own address",
                    param="address",
                )
            if self._registry.get(address) is None:
                self._pool.pin(address, ip)
        worker = self._registry.register(payload, peer_host)
        responder.send(
            200,
            JSON_HEADERS,
            dumps({"status": "ok", "address": worker.address, "state": worker.status.value}),
        )

    def _deregister(self, request: Request, responder: Responder) -> None:
        query = urllib.parse.parse_qs(request.query)
        addresses = query.get("address") or []
        node_ids = query.get("node_id") or []
        if addresses:
            try:
                address = check_address(addresses[0])
            except ValueError as exc:
                raise BadRequest("address must be host:port", param="address") from exc
        elif node_ids:
            worker = self._registry.find_by_node_id(node_ids[0][:128])
            if worker is None:
                raise NotFound("no backend with that node_id")
            address = worker.address
        else:
            raise BadRequest("DELETE /registration needs ?address=host:port or ?node_id=")
        removed = self._registry.deregister(address, "deregistered by backend")
        if not removed:
            raise NotFound("no backend with that address")
        responder.send(200, JSON_HEADERS, dumps({"status": "removed", "address": address}))
