"""``inferno up``: a proxy and N backends as local processes on 127.0.0.1.

The supervisor starts the children, waits (bounded) until every backend is
registered and healthy, prints the URLs and a ready-to-paste curl example, and on
Ctrl-C / SIGTERM stops the backends (they drain), then the proxy, escalating to
SIGKILL after a bounded wait. Children get PR_SET_PDEATHSIG so that even a
SIGKILLed supervisor leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import FrameType

PR_SET_PDEATHSIG = 1
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    proxy_port: int
    ops_port: int
    backend_ports: tuple[tuple[int, int], ...]  # (data, ops) per backend
    engine: str
    policy: str
    log_format: str
    threads_per_backend: int
    extra_backend_args: tuple[str, ...] = field(default=())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def make_plan(
    backends: int,
    *,
    free_ports: bool,
    engine: str,
    policy: str,
    log_format: str,
    extra_backend_args: tuple[str, ...] = (),
) -> ClusterPlan:
    if free_ports:
        proxy_port, ops_port = free_port(), free_port()
        ports = tuple((free_port(), free_port()) for _ in range(backends))
    else:
        proxy_port, ops_port = 8080, 6100
        ports = tuple((3000 + i, 6200 + i) for i in range(1, backends + 1))
        busy = [p for p in (proxy_port, ops_port, *[p for pair in ports for p in pair]) if port_in_use(p)]
        if busy:
            raise SystemExit(
                f"inferno up: port(s) {busy} on {HOST} are already in use. Stop whatever holds "
                f"them, or run `inferno up --free-ports`."
            )
    threads = max(1, (os.cpu_count() or 2) // max(1, backends))
    return ClusterPlan(proxy_port, ops_port, ports, engine, policy, log_format, threads, extra_backend_args)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inferno", *args],
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - Linux-only, no threads yet
    )


def _get_json(url: str, timeout_s: float = 1.0) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Cluster:
    def __init__(self, plan: ClusterPlan) -> None:
        self.plan = plan
        self.proxy: subprocess.Popen[bytes] | None = None
        self.backends: list[subprocess.Popen[bytes]] = []
        self._stop = False

    @property
    def proxy_url(self) -> str:
        return f"http://{HOST}:{self.plan.proxy_port}"

    @property
    def ops_url(self) -> str:
        return f"http://{HOST}:{self.plan.ops_port}"

    def start(self) -> None:
        p = self.plan
        self.proxy = _spawn(
            [
                "proxy",
                "--listen-addr",
                f"{HOST}:{p.proxy_port}",
                "--ops-addr",
                f"{HOST}:{p.ops_port}",
                "--policy",
                p.policy,
                "--log-format",
                p.log_format,
            ]
        )
        for i, (data_port, ops_port) in enumerate(p.backend_ports, start=1):
            self.backends.append(
                _spawn(
                    [
                        "backend",
                        "--listen-addr",
                        f"{HOST}:{data_port}",
                        "--ops-addr",
                        f"{HOST}:{ops_port}",
                        "--advertise-addr",
                        f"{HOST}:{data_port}",
                        "--discovery-lb",
                        f"{HOST}:{p.ops_port}",
                        "--node-id",
                        f"backend-{i}",
                        "--engine",
                        p.engine,
                        "--threads",
                        str(p.threads_per_backend),
                        "--log-format",
                        p.log_format,
                        *p.extra_backend_args,
                    ]
                )
            )

    def children(self) -> list[subprocess.Popen[bytes]]:
        return [c for c in (self.proxy, *self.backends) if c is not None]

    def wait_ready(self, timeout_s: float) -> None:
        """Bounded wait until every backend is registered and healthy."""
        deadline = time.monotonic() + timeout_s
        want = len(self.backends)
        while time.monotonic() < deadline and not self._stop:
            for child in self.children():
                if child.poll() is not None:
                    raise RuntimeError(f"a child process exited early (code {child.returncode})")
            with contextlib.suppress(OSError, ValueError):
                _, body = _get_json(f"{self.ops_url}/health")
                if body.get("healthy") == want and body.get("total") == want:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"cluster not healthy within {timeout_s:.0f}s")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def supervise(self) -> int:
        """Block until a signal or a child's death; returns the exit code."""
        while not self._stop:
            for child in self.children():
                if child.poll() is not None:
                    print(
                        f"inferno up: child pid {child.pid} exited with {child.returncode}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self, timeout_s: float = 15.0) -> None:
        """Backends first (they drain and deregister), then the proxy."""
        for group in (self.backends, [self.proxy] if self.proxy else []):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for child in group:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=5)


def banner(cluster: Cluster, model: str) -> str:
    url = cluster.proxy_url
    lines = [
        "",
        "Inferno is up.",
        f"  proxy       {url}   (POST /inference, /v1/chat/completions, /v1/completions)",
        f"  ops         {cluster.ops_url}   (/health /workers /metrics)",
    ]
    for i, (data_port, ops_port) in enumerate(cluster.plan.backend_ports, start=1):
        lines.append(f"  backend-{i}   http://{HOST}:{data_port}   ops http://{HOST}:{ops_port}")
    lines += [
        "",
        "Try it:",
        f"  curl -s {url}/inference -H 'Content-Type: application/json' \\",
        '    -d \'{"prompt": "What is the capital of France?", "max_tokens": 48}\'',
        "",
        f"  curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
        f'    -d \'{{"model": "{model}", "stream": true, '
        '"messages": [{"role": "user", "content": "Tell me a short fact."}]}\'',
        "",
        "Press Ctrl-C to stop.",
        f"INFERNO_READY proxy={url} ops={cluster.ops_url}",
    ]
    return "\n".join(lines)


def run_up(plan: ClusterPlan, *, ready_timeout_s: float = 180.0) -> int:
    cluster = Cluster(plan)
    signal.signal(signal.SIGINT, cluster.request_stop)
    signal.signal(signal.SIGTERM, cluster.request_stop)
    cluster.start()
    try:
        try:
            cluster.wait_ready(ready_timeout_s)
        except RuntimeError as exc:
            print(f"inferno up: {exc}", file=sys.stderr)
            return 1
        if cluster._stop:
            return 0
        model = "fake" if plan.engine == "fake" else "smollm2-135m-instruct"
        with contextlib.suppress(OSError, ValueError):
            _, models = _get_json(f"{cluster.proxy_url}/v1/models")
            data = models.get("data")
            if isinstance(data, list) and data:
                model = str(data[0]["id"])
        print(banner(cluster, model), flush=True)
        return cluster.supervise()
    finally:
        cluster.stop()
        print("inferno up: stopped", flush=True)
