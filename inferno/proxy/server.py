"""ProxyServer: wires registry, health checks, policy, pool and both HTTP ports."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inferno.api.vetting import BodyVetter
from inferno.config import ProxyConfig
from inferno.errors import ConfigError
from inferno.http.client import ResponseLimits, UpstreamPool
from inferno.http.listener import HttpServer
from inferno.http.server import fit_to_fd_limit, limits_from
from inferno.native import active as native_active
from inferno.observability.metrics import ProxyStats, new_registry
from inferno.observability.tracing import Tracing
from inferno.policies.base import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.proxy.app import ProxyApp
from inferno.proxy.clients import ClientGate
from inferno.proxy.dashboard.auth import DashboardAuth
from inferno.proxy.dashboard.feed import DashboardFeed
from inferno.proxy.dashboard.routes import Dashboard
from inferno.proxy.dashboard.tryit import TryIt
from inferno.proxy.deploy_api import DeploymentsApi
from inferno.proxy.forward import Forwarder
from inferno.proxy.metrics import ProxyCollector
from inferno.proxy.ops import ProxyOps
from inferno.registry.health import HealthChecker
from inferno.registry.loops import OwnAddresses, normal_ip
from inferno.registry.registry import WorkerRegistry
from inferno.registry.resolver import Resolver
from inferno.security import ClusterAuth, KeyStore, UsageLedger, connect

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    # Deployments, orchestrators and pull queues are imported only when configured:
    # a proxy with static backends answers its first request sooner without them.
    from inferno.deployments.manager import DeploymentManager
    from inferno.orchestrators.base import InstanceInfo
    from inferno.proxy.queue_api import QueueWorkerApi
    from inferno.queues.service import QueueService

logger = logging.getLogger(__name__)

#: registrations and heartbeats are small; the dashboard's try-it box sends a shrunk image
OPS_MAX_BODY_BYTES = 256 * 1024


class ProxyServer:
    """The whole proxy process as one component with ``start()`` / ``aclose()``."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.registry = WorkerRegistry(
            config.registry, config.health, clock=clock, outlier_config=config.outlier
        )
        self.registry.load_static(config.backend_servers)
        up = config.upstream
        self.pool = UpstreamPool(
            max_idle_per_host=up.max_idle_per_backend,
            limits=ResponseLimits(up.max_response_bytes, up.max_chunk_bytes, up.max_response_header_bytes),
        )
        self.registry.on_removed(self.pool.forget_address)
        self.resolver = resolver or Resolver(timeout_s=config.registry.resolve_timeout_s)
        self.stats = ProxyStats()
        rng = random.Random(config.seed)
        self.policy = LoadBalancingPolicy.create(config.policy, rng, affinity=config.affinity)
        token = config.cluster_token.get_secret_value() if config.cluster_token else None
        self.auth = ClusterAuth(token, refused_log_interval_s=config.http.refused_log_interval_s)
        self.dashboard_auth = DashboardAuth(
            token,
            session_ttl_s=config.dashboard.session_ttl_s,
            max_revoked=config.dashboard.max_revoked_sessions,
            refused_log_interval_s=config.http.refused_log_interval_s,
        )
        self.admission = AdmissionController(
            config.admission,
            self.registry,
            self.policy,
            clock=clock,
            affinity_wait_s=config.affinity.max_wait_s,
        )
        self.tracing = Tracing(config.otlp_endpoint, "inferno-proxy") if config.otlp_endpoint else None
        self.forwarder = Forwarder(
            self.registry,
            self.admission,
            self.pool,
            self.stats,
            config.upstream,
            config.retry,
            config.deadline,
            fallbacks=config.fallbacks,
            clock=clock,
            rng=rng,
            tracing=self.tracing,
            via=b"1.1 inferno-" + secrets.token_hex(6).encode(),
            migration=config.migration,
        )
        self.health = HealthChecker(self.registry, self.pool, config.health, config.registry)
        self.gate: ClientGate | None = None
        durable_queues = bool(config.queues) and not config.queue_memory_only
        db = (
            connect(Path(config.state_dir))
            if config.require_api_key or config.orchestrator != "none" or durable_queues
            else None
        )
        if config.require_api_key:
            assert db is not None
            self.gate = ClientGate(KeyStore(db), UsageLedger(db), clock=clock)
        self.deployments: DeploymentManager | None = None
        if config.orchestrator != "none":
            assert db is not None
            self.deployments = self._deployments(db, clock)
            self.admission.cold_starts = self.deployments
        if config.admin_token is not None and token == config.admin_token.get_secret_value():
            raise ConfigError(
                "the admin token is the cluster token: every backend holds that one, and must not "
                "be able to deploy; give --admin-token-file a token of its own"
            )
        self.admin_auth = ClusterAuth(
            config.admin_token.get_secret_value() if config.admin_token else None,
            refused_log_interval_s=config.http.refused_log_interval_s,
            secret="admin token",
        )
        self.queues: QueueService | None = None
        queue_api: QueueWorkerApi | None = None
        collectors: list[Collector] = []
        if config.queues:
            from inferno.proxy.queue_api import QueueWorkerApi
            from inferno.queues.journal import SqliteJournal
            from inferno.queues.metrics import QueueCollector
            from inferno.queues.service import QueueService

            journal = (
                SqliteJournal(db, config.queue.commit_interval_ms / 1000) if db and durable_queues else None
            )
            self.queues = QueueService(
                config.queues, config.queue, aging_s=config.admission.aging_s, journal=journal
            )
            if self.deployments is not None:
                self.queues.on_submit = self.deployments.job_arrived
            queue_api = QueueWorkerApi(
                self.queues, self._worker_auth(token), self._dead_letter_auth(), cluster=self.auth
            )
            collectors.append(QueueCollector(self.queues))
        metrics = new_registry(
            *collectors,
            ProxyCollector(
                self.stats,
                self.registry,
                self.gate,
                self.admission,
                refusals=(self.auth.refusals, self.dashboard_auth.refusals, self.admin_auth.refusals),
                deployments=self.deployments,
            ),
        )
        self.own = OwnAddresses()
        ops_limits = limits_from(config.http, max_body_bytes=OPS_MAX_BODY_BYTES, ops=True)
        self.vetter = BodyVetter(config.request)
        self._data = HttpServer(
            ProxyApp(
                config,
                self.registry,
                self.forwarder,
                self.stats,
                clock=clock,
                gate=self.gate,
                vetter=self.vetter,
                deployments=self.deployments,
                queues=self.queues,
            ),
            limits=fit_to_fd_limit(
                limits_from(config.http, max_body_bytes=config.max_body_bytes), ops_limits, "proxy"
            ),
            name="proxy",
        )
        self.feed = DashboardFeed(
            config.dashboard,
            self.stats,
            self.registry,
            self.admission,
            self.gate,
            policy=config.policy,
            insecure=not self.auth.enabled,
            queues=self.queues,
        )
        self._try = TryIt(config.listen_host, config.deadline.default_s)
        dashboard = Dashboard(self.feed, self.dashboard_auth, self._try, config.dashboard.max_clients)
        self._ops = HttpServer(
            ProxyOps(
                self.registry,
                metrics,
                self.admission,
                self.pool,
                self.resolver,
                self.auth,
                self.gate,
                dashboard,
                self.own,
                DeploymentsApi(self.deployments, self.admin_auth, model_dir=config.model_dir),
                queue_api,
            ),
            limits=ops_limits,
            name="ops",
        )
        self.data_address: tuple[str, int] = ("", 0)
        self.ops_address: tuple[str, int] = ("", 0)

    def _worker_auth(self, cluster: str | None) -> ClusterAuth:
        """Workers lease with the worker token (and the cluster token, always)."""
        cfg = self.config
        worker = cfg.worker_token.get_secret_value() if cfg.worker_token else None
        admin = cfg.admin_token.get_secret_value() if cfg.admin_token else None
        if worker is not None and worker in (cluster, admin):
            raise ConfigError(
                "the worker token is the cluster or admin token: a worker must not be able to register "
                "backends or deploy; give --worker-token-file a token of its own"
            )
        if worker is None:
            return ClusterAuth(cluster, refused_log_interval_s=cfg.http.refused_log_interval_s)
        return ClusterAuth(
            worker, refused_log_interval_s=cfg.http.refused_log_interval_s, secret="worker token"
        )

    def _dead_letter_auth(self) -> ClusterAuth:
        """Dead letters hold clients' jobs: the admin token; without one, the cluster token."""
        return self.admin_auth if self.admin_auth.enabled else self.auth

    def _deployments(self, db: object, clock: Callable[[], float]) -> DeploymentManager:
        import sqlite3

        from inferno.deployments.drivers import Driver, ExternalDriver, InProcessDriver
        from inferno.deployments.manager import DeploymentManager
        from inferno.deployments.store import DeploymentStore
        from inferno.orchestrators.base import Orchestrator

        assert isinstance(db, sqlite3.Connection)
        driver: Driver
        if self.config.orchestrator == "external":
            driver = ExternalDriver(clock)
        else:
            driver = InProcessDriver(Orchestrator.lookup(self.config.orchestrator))
        registry, admission = self.registry, self.admission

        def demand(model: str) -> tuple[int, int]:
            queue = self.deployments.worker_queue(model) if self.deployments is not None else None
            if queue is not None:  # a worker deployment: its queue's running and waiting jobs
                jobs = self.queues.queues.get(queue) if self.queues is not None else None
                return (len(jobs.running), len(jobs.waiting)) if jobs is not None else (0, 0)
            in_flight = sum(w.in_flight for w in registry.all() if w.serves(model))
            return in_flight, max(admission.waiting_for(model), admission.pending_cold(model))

        manager = DeploymentManager(
            DeploymentStore(db),
            driver,
            demand,
            model_dir=self.config.model_dir,
            tick_s=self.config.autoscale_tick_s,
            clock=clock,
        )
        manager.on_event(
            lambda e: registry.events.add("deployment", e["deployment"], e.get("instance", ""), e["detail"])
        )
        return manager

    async def _retire(self, instance: InstanceInfo) -> None:
        """Before a deployment instance stops: no new request goes to it. Its requests in
        flight finish in the backend's own drain (SIGTERM follows at once, so a proxy
        killed now leaves no instance behind that nobody stops)."""
        worker = self.registry.retire(instance.address) if instance.address else None
        if worker is not None:
            logger.info("Retiring %s (%s): %d in flight", instance.address, instance.id, worker.in_flight)

    async def _start_deployments(self) -> None:
        manager = self.deployments
        if manager is None:
            return
        from inferno.deployments.drivers import InProcessDriver
        from inferno.orchestrators.base import OrchestratorContext

        if isinstance(manager.driver, InProcessDriver):
            cfg = self.config
            token = cfg.cluster_token.get_secret_value() if cfg.cluster_token else None
            host = "127.0.0.1" if cfg.ops_host in ("0.0.0.0", "", "::") else cfg.ops_host
            context = OrchestratorContext(
                state_dir=cfg.state_dir,
                discovery_lb=f"{host}:{self.ops_address[1]}",
                cluster_token=token,
                worker_token=cfg.worker_token.get_secret_value() if cfg.worker_token else None,
                model_dir=cfg.model_dir,
                options=cfg.orchestrator_options,
                before_stop=self._retire,
            )
            await manager.driver.start_orchestrator(context)
            manager.driver.start()
        manager.start()
        logger.info(
            "Deployments on (orchestrator %s): %d deployment(s) from %s",
            self.config.orchestrator,
            len(manager.all()),
            self.config.state_dir,
        )

    async def start(self) -> None:
        cfg = self.config
        self.ops_address = await self._ops.start(cfg.ops_host, cfg.ops_port)
        configured_data = [(cfg.listen_host, cfg.listen_port)] if cfg.listen_port else []
        self.own.set(self._ops.bound + configured_data)
        self.data_address = await self._data.start(cfg.listen_host, cfg.listen_port)
        self.own.set(self._ops.bound + self._data.bound)
        self._refuse_static_self()
        self._try.set_port(self.data_address[1])
        self.feed.start()
        self.health.start()
        if self.gate is not None:
            self.gate.start()
        await self._start_deployments()
        if self.queues is not None:
            from inferno.queues.report import census

            loaded = self.queues.load()
            self.queues.start()
            logger.info(
                "Pull queues %s (%s)%s",
                ", ".join(self.queues.queues),
                "journaled in " + cfg.state_dir if self.queues.journal.durable else "in memory only",
                f": {loaded} job(s) taken back from the journal ({census(self.queues.queues)})"
                if loaded
                else "",
            )
        logger.info("Starting proxy server on %s:%d", cfg.listen_host, self.data_address[1])
        logger.info("Ops server on %s:%d (policy %s)", cfg.ops_host, self.ops_address[1], cfg.policy)
        logger.info("Hot path: %s", "compiled (mypyc)" if native_active() else "pure Python")
        if not self.auth.enabled:
            logger.warning(
                "No cluster token: anyone who reaches the ops port (%s:%d) can register a backend "
                "and receive prompts. Set INFERNO_CLUSTER_TOKEN or --cluster-token-file.",
                cfg.ops_host,
                self.ops_address[1],
            )

    def _refuse_static_self(self) -> None:
        """``--backend-servers`` must not name the proxy itself (every request would loop)."""
        for worker in self.registry.all():
            if worker.source != "static":
                continue
            host, _, port = worker.address.rpartition(":")
            ips = ["127.0.0.1", "::1"] if host == "localhost" else [normal_ip(host) or ""]
            if any(ip and self.own.contains(ip, int(port)) for ip in ips):
                raise ConfigError(
                    f"--backend-servers lists {worker.address}, this proxy's own address: "
                    "every request would come straight back into the proxy"
                )

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting, finish in-flight requests within ``grace_s``, then stop."""
        if self.queues is not None:
            self.queues.closing = True  # clients cut off by the shutdown do not cancel their jobs
        await self._data.aclose(grace_s)
        await self.vetter.aclose()
        if self.queues is not None:
            await self.queues.aclose()
        if self.deployments is not None:
            await self.deployments.aclose()
            await self.deployments.driver.aclose()  # the instances keep running
        if self.gate is not None:
            await self.gate.aclose()  # writes the last usage out
        await self.health.aclose()
        await self.feed.aclose()
        await self._ops.aclose()
        await self._try.aclose()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends what is queued
        await self.pool.aclose()
        self.resolver.close()
        logger.info("Proxy stopped")


async def run_proxy(config: ProxyConfig, grace_s: float = 30.0) -> None:
    server = ProxyServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("Shutting down proxy (grace %.0fs)", grace_s)
    await server.aclose(grace_s)
