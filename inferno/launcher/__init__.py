"""``inferno up``: a proxy and N backends as local processes on 127.0.0.1.

The supervisor starts the children, waits (bounded) until every backend is
registered and healthy, prints the URLs and a ready-to-paste curl example, and
then keeps them running: a child that dies is logged and restarted after a
backoff (0.5 s doubling to 10 s), at most 5 times a minute, after which the
supervisor gives up on that child and says so; the others keep serving. On
Ctrl-C / SIGTERM it stops the backends (they drain), then the proxy, escalating
to SIGKILL after a bounded wait. Children get PR_SET_PDEATHSIG so that even a
SIGKILLed supervisor leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from inferno.errors import InfernoError
from inferno.launcher.children import Child, RestartPolicy
from inferno.orchestrators.processes import free_port
from inferno.security import TOKEN_ENV, new_token

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    proxy_port: int
    ops_port: int
    backend_ports: tuple[tuple[int, int], ...]  # (data, ops) per backend
    #: each backend's ``--engine`` value (comma-separated engines)
    engines: tuple[str, ...]
    policy: str
    log_format: str
    threads_per_backend: int
    extra_backend_args: tuple[str, ...] = field(default=())
    #: the proxy's state (deployments, API keys) and its admin token file
    state_dir: str = ".inferno"
    #: a deployments file applied once the proxy is up (``--deployments``)
    deployments_file: str | None = None
    #: the proxy's pull queues (``--queue``)
    queues: tuple[str, ...] = ()


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def parse_models(spec: str) -> tuple[str, ...]:
    """``--models llamacpp*2,minilm+efficientnet-lite0``: one ``--engine`` value per
    backend. Groups are comma-separated; ``+`` puts engines in one backend; ``*N``
    repeats a group."""
    out: list[str] = []
    for group in (g.strip() for g in spec.split(",")):
        if not group:
            raise ValueError("empty group in --models")
        engines, _, count = group.partition("*")
        if count and not (count.isdigit() and 1 <= int(count) <= 16):
            raise ValueError(f"bad count in {group!r}: use *1 to *16")
        names = [e.strip() for e in engines.split("+")]
        if not all(names):
            raise ValueError(f"empty engine name in {group!r}")
        out += [",".join(names)] * int(count or 1)
    if len(out) > 16:
        raise ValueError("at most 16 backends")
    return tuple(out)


def make_plan(
    backends: int,
    *,
    free_ports: bool,
    engine: str,
    policy: str,
    log_format: str,
    extra_backend_args: tuple[str, ...] = (),
    models: tuple[str, ...] | None = None,
    state_dir: str = ".inferno",
    deployments_file: str | None = None,
    queues: tuple[str, ...] = (),
) -> ClusterPlan:
    """``models`` (from ``parse_models``; ``()``: no fixed backend at all, deployments
    only) overrides ``backends`` and ``engine``."""
    engines = models if models is not None else (engine,) * backends
    backends = len(engines)
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
    return ClusterPlan(
        proxy_port,
        ops_port,
        ports,
        engines,
        policy,
        log_format,
        threads,
        extra_backend_args,
        state_dir,
        deployments_file,
        queues,
    )


def admin_token_file(state_dir: Path, name: str = "admin-token") -> Path:
    """``<state-dir>/admin-token`` (or ``worker-token``), made (owner-only) with a fresh token
    if missing, so that ``inferno deploy`` or ``inferno worker`` on this machine finds it and
    a restart keeps it."""
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_token() + "\n")
    return path


def _get_json(url: str, timeout_s: float = 1.0) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Launcher:
    def __init__(self, plan: ClusterPlan, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self.proxy: Child | None = None
        self.backends: list[Child] = []
        self._stop = False
        # The cluster's token: the caller's INFERNO_CLUSTER_TOKEN, else a fresh random one.
        self.token = os.environ.get(TOKEN_ENV, "").strip() or new_token()
        self.admin_token_file = Path(plan.state_dir) / "admin-token"
        self.worker_token_file = Path(plan.state_dir) / "worker-token"

    @property
    def proxy_url(self) -> str:
        return f"http://{HOST}:{self.plan.proxy_port}"

    @property
    def ops_url(self) -> str:
        return f"http://{HOST}:{self.plan.ops_port}"

    def start(self) -> None:
        p = self.plan
        if p.queues:
            admin_token_file(Path(p.state_dir), "worker-token")
        self.proxy = self._child(
            "proxy",
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
                "--orchestrator",
                "local",
                "--state-dir",
                p.state_dir,
                "--admin-token-file",
                str(admin_token_file(Path(p.state_dir))),
                *[arg for queue in p.queues for arg in ("--queue", queue)],
                *(
                    ["--worker-token-file", str(admin_token_file(Path(p.state_dir), "worker-token"))]
                    if p.queues
                    else []
                ),
            ],
        )
        for i, (data_port, ops_port) in enumerate(p.backend_ports, start=1):
            self.backends.append(
                self._child(
                    f"backend-{i}",
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
                        p.engines[i - 1],
                        "--threads",
                        str(p.threads_per_backend),
                        "--log-format",
                        p.log_format,
                        *p.extra_backend_args,
                    ],
                )
            )

    def _child(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, RestartPolicy(clock=self._clock), env={TOKEN_ENV: self.token})
        child.spawn()
        return child

    def children(self) -> list[subprocess.Popen[bytes]]:
        return [c.popen for c in (self.proxy, *self.backends) if c is not None and c.popen is not None]

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

    def check(self) -> bool:
        """One supervision step: restart what died, when its backoff is over.

        Returns False when nothing can serve any more (the proxy was given up on).
        """
        now = self._clock()
        for child in (self.proxy, *self.backends):
            if child is None or child.given_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.spawn()
                    assert child.popen is not None
                    print(f"inferno up: {child.name} restarted (pid {child.popen.pid})", flush=True)
                continue
            if child.popen is None or child.popen.poll() is None:
                continue
            code = child.popen.returncode
            delay = child.policy.on_exit()
            if delay is None:
                child.given_up = True
                print(
                    f"inferno up: {child.name} (pid {child.popen.pid}) exited with {code}; giving up on it "
                    f"after {child.policy.restarts_in_window} restarts within a minute",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            child.restart_at = now + delay
            print(
                f"inferno up: {child.name} (pid {child.popen.pid}) exited with {code}; restarting in "
                f"{delay:.1f}s (restart {child.policy.restarts_in_window} within a minute); "
                "the others keep serving",
                file=sys.stderr,
                flush=True,
            )
        return not (self.proxy is not None and self.proxy.given_up)

    def supervise(self) -> int:
        """Keep the children running until a signal; returns the exit code."""
        while not self._stop:
            if not self.check():
                print("inferno up: the proxy cannot be kept running; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0

    def stop(self, timeout_s: float = 15.0) -> None:
        """Backends first (they drain and deregister), then the proxy, then the deployment
        instances the proxy ran (they outlive it on purpose: a killed proxy adopts them)."""
        backends = [c.popen for c in self.backends if c.popen is not None]
        proxy = [self.proxy.popen] if self.proxy is not None and self.proxy.popen is not None else []
        for group in (backends, proxy):
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
        from inferno.orchestrators.processes import stop_all

        stopped = stop_all(self.plan.state_dir, timeout_s=timeout_s)
        if stopped:
            print(f"inferno up: stopped {stopped} deployment instance(s)", flush=True)


def example_photo(cwd: Path | None = None) -> str:
    """A photo for the banner's image example, as a path that works where ``inferno up`` runs:
    the repository's cat, relative to the working directory when it is under it."""
    photo = Path(__file__).resolve().parents[2] / "tests" / "data" / "images" / "cat.jpg"
    if not photo.is_file():  # installed from a wheel: no test data
        return "path/to/any-photo.jpg"
    try:
        return str(photo.relative_to((cwd or Path.cwd()).resolve()))
    except ValueError:
        return str(photo)


def deploy_command(cluster: Launcher) -> str:
    """``inferno deploy`` with what it needs to find this cluster when that is not its
    default (the ops port 6100, ``.inferno/admin-token``): ``--free-ports``, ``--state-dir``."""
    words = ["inferno deploy"]
    if cluster.plan.ops_port != 6100:
        words.append(f"--proxy-ops {HOST}:{cluster.plan.ops_port}")
    if cluster.admin_token_file != Path(".inferno") / "admin-token":
        words.append(f"--admin-token-file {cluster.admin_token_file}")
    return " ".join(words)


def banner(cluster: Launcher, models: dict[str, str]) -> str:
    """What is up and a ready-to-paste example per model kind (``models``: task -> id)."""
    url = cluster.proxy_url
    lines = [
        "",
        "Inferno is up.",
        f"  proxy       {url}   (POST /inference, /v1/chat/completions, /v1/completions, /v1/embeddings)",
        f"  ops         {cluster.ops_url}   (/health /workers /metrics)",
        f"  dashboard   {cluster.ops_url}/dashboard   (log in with the cluster token)",
        f"  token       INFERNO_CLUSTER_TOKEN={cluster.token}   (what another backend needs to join)",
        f"  deployments {deploy_command(cluster)} list   (admin token in {cluster.admin_token_file})",
    ]
    for queue in (q.partition(":")[0] for q in cluster.plan.queues):
        lines.append(
            f"  queue {queue}   inferno worker --discovery-lb {cluster.ops_url.removeprefix('http://')} "
            f"--worker-token-file {cluster.worker_token_file} --queue {queue} -- sleep"
        )
    for i, (data_port, ops_port) in enumerate(cluster.plan.backend_ports, start=1):
        child = cluster.backends[i - 1].popen if i <= len(cluster.backends) else None
        pid = f"   pid {child.pid}" if child is not None else ""
        engines = cluster.plan.engines[i - 1]
        lines.append(
            f"  backend-{i}   http://{HOST}:{data_port}   ops http://{HOST}:{ops_port}{pid}   ({engines})"
        )
    lines += ["", "Try it:"]
    text = models.get("text-generation")
    if text is not None:
        lines += [
            f"  curl -s {url}/inference -H 'Content-Type: application/json' \\",
            '    -d \'{"prompt": "What is the capital of France?", "max_tokens": 48}\'',
            "",
            f"  curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
            f'    -d \'{{"model": "{text}", "stream": true, '
            '"messages": [{"role": "user", "content": "Tell me a short fact."}]}\'',
            "",
        ]
    if "embeddings" in models:
        lines += [
            f"  curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\",
            f'    -d \'{{"model": "{models["embeddings"]}", "input": ["a cat", "a dog"]}}\'',
            "",
        ]
    if "image-classification" in models:
        lines += [
            '  printf \'{"model_type": "any", "top_k": 3, "data": "%s"}\' '
            f'"$(base64 -w0 {shlex.quote(example_photo())})" \\',
            f"    | curl -s {url}/inference -H 'Content-Type: application/json' -d @-",
            "",
        ]
    lines += [
        "Press Ctrl-C to stop.",
        f"INFERNO_READY proxy={url} ops={cluster.ops_url}",
    ]
    return "\n".join(lines)


def apply_deployments(cluster: Launcher, path: Path) -> list[str]:
    from inferno.deployments.apply import apply_file
    from inferno.deployments.client import AdminClient

    token = cluster.admin_token_file.read_text(encoding="utf-8").strip()
    return apply_file(AdminClient(cluster.ops_url, token), path)


def run_up(plan: ClusterPlan, *, ready_timeout_s: float = 180.0) -> int:
    cluster = Launcher(plan)
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
        if plan.deployments_file:
            try:
                for line in apply_deployments(cluster, Path(plan.deployments_file)):
                    print(f"inferno up: deployment {line}", flush=True)
            except (ValueError, InfernoError) as exc:
                print(f"inferno up: {plan.deployments_file}: {exc}", file=sys.stderr)
                return 1
        models: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            _, listing = _get_json(f"{cluster.proxy_url}/v1/models")
            entries = listing["data"]
            assert isinstance(entries, list)
            for entry in entries:
                models.setdefault(str(entry.get("task", "text-generation")), str(entry["id"]))
        print(banner(cluster, models), flush=True)
        return cluster.supervise()
    finally:
        cluster.stop()
        print("inferno up: stopped", flush=True)
