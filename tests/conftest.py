"""Shared fixtures: real servers on free ports, real sockets, no HTTP mocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

# The suite runs the pure-Python reference (it subclasses and patches classes the
# compiled build would seal); tests/system/test_native.py runs the compiled proxy.
# Set before the first ``import inferno``, which decides (inferno.native).
os.environ.setdefault("INFERNO_PURE_PYTHON", "1")

from inferno.backend.server import BackendServer
from inferno.config import (
    BackendConfig,
    HealthCheckConfig,
    ProxyConfig,
    RegistryConfig,
    UpstreamConfig,
)
from inferno.orchestrators.processes import free_port
from inferno.proxy.server import ProxyServer

#: every process a test starts shares this cluster token (a proxy refuses to start without one)
TEST_TOKEN = "test-cluster-token-0123456789abcdef"
os.environ.setdefault("INFERNO_CLUSTER_TOKEN", TEST_TOKEN)

HOST = "127.0.0.1"


def proxy_config(**overrides: Any) -> ProxyConfig:
    base: dict[str, Any] = {
        "listen_host": HOST,
        "listen_port": 0,
        "ops_host": HOST,
        "ops_port": 0,
        "health": HealthCheckConfig(interval_s=0.2, timeout_s=0.5),
        "registry": RegistryConfig(heartbeat_timeout_s=2.0, ttl_s=10.0, sweep_interval_s=0.1),
        "upstream": UpstreamConfig(connect_timeout_s=1.0),
    }
    base.update(overrides)
    return ProxyConfig(**base)


def backend_config(proxy_ops: str | None = None, **overrides: Any) -> BackendConfig:
    base: dict[str, Any] = {
        "listen_host": HOST,
        "listen_port": 0,
        "ops_host": HOST,
        "ops_port": 0,
        "engine": "fake",
        "discovery_lb": proxy_ops,
        "heartbeat_interval_s": 0.2,
        "engine_options": {"fake_tokens_per_s": 5000.0},
    }
    base.update(overrides)
    return BackendConfig(**base)


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0, step_s: float = 0.02) -> Any:
    """Bounded polling of a condition (sync or async)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(step_s)


class Cluster:
    """An in-process proxy and backends, started on free ports."""

    def __init__(self, proxy: ProxyServer, backends: list[BackendServer]) -> None:
        self.proxy = proxy
        self.backends = backends

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.proxy.data_address[1]}"

    @property
    def ops_url(self) -> str:
        return f"http://{HOST}:{self.proxy.ops_address[1]}"

    @property
    def ops_addr(self) -> str:
        return f"{HOST}:{self.proxy.ops_address[1]}"

    async def add_backend(self, **overrides: Any) -> BackendServer:
        backend = BackendServer(backend_config(self.ops_addr, **overrides))
        await backend.start()
        self.backends.append(backend)
        return backend

    async def wait_healthy(self, count: int, timeout_s: float = 5.0) -> None:
        await wait_for(lambda: len(self.proxy.registry.routable()) == count, timeout_s)


@pytest.fixture
async def make_cluster() -> AsyncIterator[Callable[..., Any]]:
    created: list[Cluster] = []

    async def factory(
        backends: int = 2, proxy_overrides: dict[str, Any] | None = None, **backend_overrides: Any
    ) -> Cluster:
        proxy = ProxyServer(proxy_config(**(proxy_overrides or {})))
        await proxy.start()
        cluster = Cluster(proxy, [])
        created.append(cluster)
        for i in range(backends):
            await cluster.add_backend(node_id=f"node-{i + 1}", **backend_overrides)
        await cluster.wait_healthy(backends)
        return cluster

    yield factory
    for cluster in created:
        for backend in cluster.backends:
            with contextlib.suppress(Exception):
                await backend.aclose()
        with contextlib.suppress(Exception):
            await cluster.proxy.aclose()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield http


# -- subprocess helpers --------------------------------------------------------------------
class Proc:
    """A child ``python -m inferno ...`` process whose output goes to a log file."""

    def __init__(self, args: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "inferno", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self, sig: int = 15, timeout_s: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def spawn(tmp_path: Any) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def factory(args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, str(tmp_path / f"{name}.log"), env)
        procs.append(proc)
        return proc

    yield factory
    for proc in reversed(procs):  # the last started first: workers and backends before their proxy
        proc.stop(timeout_s=5.0)


def wait_http(url: str, timeout_s: float = 20.0, status: int | None = 200) -> httpx.Response:
    """Bounded wait until ``url`` answers (with ``status`` if given)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1.0)
            if status is None or response.status_code == status:
                return response
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout_s}s (last error: {last})")


class ProcessCluster:
    """A proxy and fake backends as real ``inferno`` processes on free ports."""

    def __init__(self, url: str, ops: str, proxy: Proc, backends: dict[str, Proc]) -> None:
        self.url, self.ops, self.proxy, self.backends = url, ops, proxy, backends

    def workers(self) -> dict[str, dict[str, Any]]:
        body = httpx.get(f"{self.ops}/workers", timeout=2).json()
        return {w["node_id"]: w for w in body["workers"]}


def start_process_cluster(
    spawn: Callable[..., Proc],
    n: int,
    *,
    proxy_args: tuple[str, ...] = (),
    backend_args: tuple[str, ...] = (),
    engines: tuple[str, ...] = (),
    env_aliases: bool = False,
    ready_timeout_s: float = 30.0,
    expect_healthy: int | None = None,
) -> ProcessCluster:
    """Start it and wait (bounded) until all ``n`` backends are healthy.

    With ``env_aliases`` the listen addresses come from ``INFERNO_LISTEN_ADDR`` and
    ``INFERNO_BACKEND_LISTEN_ADDR`` instead of flags.
    """
    port, ops_port = free_port(), free_port()
    ops = f"http://{HOST}:{ops_port}"
    listen = f"{HOST}:{port}"
    proxy = spawn(
        ["proxy", "--ops-addr", f"{HOST}:{ops_port}", *proxy_args]
        + ([] if env_aliases else ["--listen-addr", listen]),
        "proxy",
        env={"INFERNO_LISTEN_ADDR": listen} if env_aliases else None,
    )
    wait_http(f"{ops}/livez")
    backends = {}
    for i in range(1, n + 1):
        data = f"{HOST}:{free_port()}"
        args = [
            "backend",
            "--ops-addr",
            f"{HOST}:{free_port()}",
            "--engine",
            engines[i - 1] if engines else "fake",
            "--discovery-lb",
            f"{HOST}:{ops_port}",
            "--node-id",
            f"b{i}",
            "--advertise-addr",
            data,
            *backend_args,
        ]
        if not env_aliases:
            args += ["--listen-addr", data]
        backends[f"b{i}"] = spawn(
            args, f"b{i}", env={"INFERNO_BACKEND_LISTEN_ADDR": data} if env_aliases else None
        )
    cluster = ProcessCluster(f"http://{listen}", ops, proxy, backends)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{ops}/health", timeout=2).json().get("healthy") == (expect_healthy or n):
                return cluster
        time.sleep(0.1)
    raise AssertionError(f"{n} backends not healthy within {ready_timeout_s}s")


class ThreadedServer:
    """A TCP server on loopback, one thread per connection, for hostile peers.

    Subclasses implement ``_connection``; ``_stop`` is set on ``close``.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
