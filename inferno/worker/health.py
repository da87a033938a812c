"""The worker's optional health port (``--health-addr``): ``GET /health`` says whether it
has reached the proxy, so an orchestrator (``inferno up``'s ``local`` one, a Docker
healthcheck) knows when a worker instance is ready. Read-only and tiny."""

from __future__ import annotations

from inferno.http.limits import Limits
from inferno.http.listener import HttpServer
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder
from inferno.worker.loop import Worker


class WorkerHealth:
    def __init__(self, worker: Worker, queues: tuple[str, ...]) -> None:
        self._worker = worker
        self._queues = queues
        router = Router()
        router.add("GET", "/health", self._health)
        self._server = HttpServer(
            router,
            limits=Limits(max_body_bytes=1024, max_connections=32, read_timeout_s=5.0),
            name="worker-health",
        )

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self._server.start(host, port)

    async def aclose(self) -> None:
        await self._server.aclose()

    async def _health(self, request: Request, responder: Responder) -> None:
        worker = self._worker
        body = {
            "status": "ok" if worker.reached else "connecting",
            "worker": worker.identity.id,
            "queues": list(self._queues),
            "leases": worker.leases,
            "outcomes": worker.outcomes,
        }
        responder.send(200 if worker.reached else 503, JSON_HEADERS, dumps(body))
