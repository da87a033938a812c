"""BackendServer: engine, data port, ops port and registrar as one component."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import urllib.parse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferno.backend.app import BackendApp, health
from inferno.backend.registrar import Registrar
from inferno.backend.service import BackendCollector, InferenceService
from inferno.config import BackendConfig
from inferno.engines.base import Engine, TextGenerationEngine
from inferno.errors import ConfigError
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import HttpServer, Request, Responder, fit_to_fd_limit, limits_from
from inferno.observability.metrics import new_registry
from inferno.schemas.registration import WILDCARD_HOSTS, RegistrationPayload

logger = logging.getLogger(__name__)


def default_advertise_host(listen_host: str) -> str:
    """An address other nodes can reach: the listen host unless it is a wildcard,
    else this host's name resolved (a container's network address). If that is
    loopback, advertise the wildcard and let the proxy use the peer address."""
    if listen_host not in WILDCARD_HOSTS:
        return listen_host
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "0.0.0.0"
    return "0.0.0.0" if address.startswith("127.") else address


class BackendServer:
    def __init__(self, config: BackendConfig, engine: Engine | None = None) -> None:
        self.config = config
        created = engine or Engine.create(config.engine, config.engine_options)
        if not isinstance(created, TextGenerationEngine):
            raise ConfigError(f"engine {config.engine!r} does not generate text; the backend serves text")
        self.engine = created
        self.service = InferenceService(self.engine)
        self.node_id = config.node_id or f"{socket.gethostname()}-{config.listen_port}"
        self.app = BackendApp(config, self.service, self.node_id)
        ops_limits = limits_from(config.http, max_body_bytes=64 * 1024, ops=True)
        self.data_server = HttpServer(
            self.app,
            limits=fit_to_fd_limit(
                limits_from(config.http, max_body_bytes=config.max_body_bytes), ops_limits, "backend"
            ),
            name="backend",
        )
        self._metrics = new_registry(BackendCollector(self.service, self.node_id))
        self._ops = HttpServer(self._ops_router(), limits=ops_limits, name="backend-ops")
        self.registrar: Registrar | None = None
        self.data_address: tuple[str, int] = ("", 0)
        self.ops_address: tuple[str, int] = ("", 0)
        self.advertise_addr = ""

    async def start(self) -> None:
        cfg = self.config
        # Ports first: a port in use fails in milliseconds, not after loading the model.
        # Until the model is loaded, requests get 503 (retryable) and /health says loading.
        self.data_address = await self.data_server.start(cfg.listen_host, cfg.listen_port)
        try:
            self.ops_address = await self._ops.start(cfg.ops_host, cfg.ops_port)
            await self.engine.start()
        except BaseException:
            await self.data_server.aclose()
            await self._ops.aclose()
            raise
        self.service.ready = True
        self.advertise_addr = cfg.advertise_addr or (
            f"{default_advertise_host(cfg.listen_host)}:{self.data_address[1]}"
        )
        logger.info(
            "Starting backend server on %s:%d (node %s, engine %s, model %s)",
            cfg.listen_host,
            self.data_address[1],
            self.node_id,
            self.engine.name,
            self.engine.model_id,
        )
        if cfg.discovery_lb:
            self.registrar = Registrar(
                cfg.discovery_lb,
                self.registration,
                interval_s=cfg.heartbeat_interval_s,
                timeout_s=cfg.register_timeout_s,
            )
            self.registrar.start()
        else:
            logger.warning(
                "No --discovery-lb given: this backend will not register with any proxy; "
                "list it in the proxy's --backend-servers or pass --discovery-lb PROXY_HOST:6100"
            )

    def registration(self) -> RegistrationPayload:
        ops_host = self.advertise_addr.rpartition(":")[0]
        return RegistrationPayload(
            address=self.advertise_addr,
            node_id=self.node_id,
            models=tuple(self.engine.models()),
            vitals=self.service.vitals(),
            state="draining" if self.service.draining else "active",
            ops_address=f"{ops_host}:{self.ops_address[1]}",
        )

    async def drain(self, grace_s: float) -> None:
        """Refuse new work (503, retryable), leave the proxy, finish in-flight work."""
        self.service.draining = True
        logger.info("Draining: %d in flight, grace %.0fs", self.service.in_flight, grace_s)
        if self.registrar is not None:
            await self.registrar.aclose()
            await self.registrar.deregister(self.node_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Bounded poll: the grace period caps it, and it runs once per process.
        while (self.service.in_flight or self.service.queued) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self.registrar is not None:
            await self.registrar.aclose()
        await self.data_server.aclose()
        await self._ops.aclose()
        await self.engine.aclose()
        logger.info("Backend stopped")

    def _ops_router(self) -> Router:
        router = Router()
        router.add("GET", "/livez", self._livez)
        router.add("GET", "/health", self._health)
        router.add("GET", "/metrics", self._metrics_page)
        return router

    async def _livez(self, request: Request, responder: Responder) -> None:
        responder.send(200, JSON_HEADERS, b'{"status":"alive"}')

    async def _health(self, request: Request, responder: Responder) -> None:
        status, body = health(self.service, self.node_id, self.app.chaos)
        responder.send(status, JSON_HEADERS, body)

    async def _metrics_page(self, request: Request, responder: Responder) -> None:
        if urllib.parse.parse_qs(request.query).get("format") == ["json"]:
            vitals = {"node_id": self.node_id, **self.service.vitals().model_dump()}
            responder.send(200, JSON_HEADERS, dumps(vitals))
            return
        payload = generate_latest(self._metrics)
        responder.send(200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], payload)


async def run_backend(config: BackendConfig) -> None:
    server = BackendServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain(config.drain_grace_s)
    await server.aclose()
