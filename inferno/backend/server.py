"""BackendServer: engine, data port, ops port and registrar as one component."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import signal
import socket
import urllib.parse
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferno.backend.app import BackendApp, health
from inferno.backend.registrar import Registrar
from inferno.backend.service import BackendCollector, InferenceService
from inferno.config import BackendConfig
from inferno.engines.base import Engine
from inferno.errors import ConfigError
from inferno.http.listener import HttpServer
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder, fit_to_fd_limit, limits_from
from inferno.observability.metrics import new_registry
from inferno.observability.tracing import Tracing
from inferno.schemas.registration import WILDCARD_HOSTS, RegistrationPayload
from inferno.security import ClusterAuth

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


_MODEL_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def create_engines(config: BackendConfig) -> list[Engine]:
    """The configured engines, each given the options its own model declares; an
    option no chosen engine takes is a configuration error, not silently dropped."""
    models = Engine.options_models()
    unknown = [name for name in config.engine if name not in models]
    if unknown:
        raise ConfigError(f"unknown engine {unknown[0]!r}; choose from {sorted(models)}")
    taken = {key for name in config.engine for key in models[name].model_fields}
    stray = sorted(set(config.engine_options) - taken)
    if stray:
        raise ConfigError(f"no chosen engine ({', '.join(config.engine)}) takes the options {stray}")
    return [
        Engine.create(
            name, {k: v for k, v in config.engine_options.items() if k in models[name].model_fields}
        )
        for name in config.engine
    ]


class BackendServer:
    def __init__(self, config: BackendConfig, engines: Sequence[Engine] | None = None) -> None:
        self.config = config
        self.engines = list(engines) if engines is not None else create_engines(config)
        if config.model_id is not None:
            if len(self.engines) != 1:
                raise ConfigError("--model-id names the model of one engine: run one engine with it")
            if not _MODEL_ID_RE.fullmatch(config.model_id):
                raise ConfigError("--model-id must be 1-128 characters from [A-Za-z0-9_.:@-]")
        self.service = InferenceService(self.engines)
        self.auth = ClusterAuth(
            config.cluster_token.get_secret_value() if config.cluster_token else None,
            refused_log_interval_s=config.http.refused_log_interval_s,
        )
        self.node_id = config.node_id or f"{socket.gethostname()}-{config.listen_port}"
        #: this process, as opposed to an earlier one at the same address (a restart)
        self.instance_id = secrets.token_hex(8)
        self.tracing = (
            Tracing(config.otlp_endpoint, "inferno-backend", node_id=self.node_id)
            if config.otlp_endpoint
            else None
        )
        self.app = BackendApp(config, self.service, self.node_id, self.auth, self.tracing)
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
            logger.info("Loading %s (node %s)", ",".join(e.name for e in self.engines), self.node_id)
            for engine in self.engines:
                await engine.start()
            if cfg.model_id is not None:
                self.service.rename(self.engines[0], cfg.model_id)
        except BaseException:
            await self.data_server.aclose()
            await self._ops.aclose()
            raise
        self.service.ready = True
        self.advertise_addr = cfg.advertise_addr or (
            f"{default_advertise_host(cfg.listen_host)}:{self.data_address[1]}"
        )
        logger.info(
            "Starting backend server on %s:%d (node %s, engines %s, models %s)",
            cfg.listen_host,
            self.data_address[1],
            self.node_id,
            ",".join(e.name for e in self.engines),
            ",".join(f"{e.model_id}[{e.task}]" for e in self.engines),
        )
        if cfg.discovery_lb:
            self.registrar = Registrar(
                cfg.discovery_lb,
                self.registration,
                interval_s=cfg.heartbeat_interval_s,
                timeout_s=cfg.register_timeout_s,
                auth=self.auth,
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
            models=tuple(spec for engine in self.engines for spec in engine.models()),
            vitals=self.service.vitals(),
            state="draining" if self.service.draining else "active",
            ops_address=f"{ops_host}:{self.ops_address[1]}",
            instance_id=self.instance_id,
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
        await self.app.vetter.aclose()
        await self._ops.aclose()
        for engine in self.engines:
            await engine.aclose()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends what is queued
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
