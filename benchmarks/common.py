"""Shared plumbing for the benchmarks: processes, CPU time, machine description."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
# The proxies and backends a benchmark starts share one cluster token.
os.environ.setdefault("INFERNO_CLUSTER_TOKEN", "benchmark-cluster-token-0123456789")
LOAD_CORE = "1" if (os.cpu_count() or 1) > 1 else "0"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (and their reaped children)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout_s}s")


def wait_healthy(ops_port: int, count: int, timeout_s: float = 120.0) -> None:
    """Bounded wait until the proxy on ``ops_port`` reports ``count`` healthy backends."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(f"http://{HOST}:{ops_port}/health", timeout=2).json().get("healthy") != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} backend(s) not healthy within {timeout_s:g}s")
        time.sleep(0.2)


class Procs:
    """Processes started by a benchmark; all stopped by PID on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, cmd: list[str], core: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if env and "PYTHONPATH" in env and cmd[:1] == [sys.executable] and cmd[1:2] != ["-P"]:
            # -P: the working directory's own ``inferno`` (sys.path[0] under ``-m``) would
            # shadow the tree PYTHONPATH names, and a side-by-side run would run one tree.
            cmd = [cmd[0], "-P", *cmd[1:]]
        if core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", core, *cmd]
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def close(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


@contextlib.contextmanager
def procs(logdir: Path) -> Iterator[Procs]:
    # SIGTERM (e.g. from `timeout`) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logdir.mkdir(parents=True, exist_ok=True)
    p = Procs(logdir)
    try:
        yield p
    finally:
        p.close()


def checkout(rev: str, dest: Path) -> Path:
    """The ``inferno`` package as it was at ``rev`` (git archive), for side-by-side runs."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "inferno"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return dest


def inferno(*args: str) -> list[str]:
    return [sys.executable, "-m", "inferno", *args]


def proxy_cmd(port: int, ops_port: int, backends: list[int] | None = None, *extra: str) -> list[str]:
    """``inferno proxy`` on loopback, with static backends when given."""
    cmd = inferno("proxy", "--listen-addr", f"{HOST}:{port}", "--ops-addr", f"{HOST}:{ops_port}", *extra)
    if backends:
        cmd += ["--backend-servers", ",".join(f"{HOST}:{b}" for b in backends)]
    return cmd


def fake_backend(
    port: int, ops_port: int, latency_ms: float, node: str, tokens_per_s: float = 1e9
) -> list[str]:
    """A fake-engine backend; ``tokens_per_s`` paces its streams (1e9: as fast as it can)."""
    return inferno(
        "backend",
        "--listen-addr",
        f"{HOST}:{port}",
        "--ops-addr",
        f"{HOST}:{ops_port}",
        "--engine",
        "fake",
        "--fake-tokens-per-s",
        f"{tokens_per_s:g}",
        "--fake-latency-ms",
        str(latency_ms),
        "--n-parallel",
        "1024",
        "--node-id",
        node,
        "--log-level",
        "WARNING",
    )


def version(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "inferno": version(inferno("--version")),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_result(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def wrk_script(path: Path, body: str) -> Path:
    """A wrk Lua script that POSTs ``body`` as JSON (more headers may be appended)."""
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = \'{body}\'\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def wrk_output(
    port: int,
    script: Path,
    seconds: float,
    concurrency: int,
    *,
    latency: bool = False,
    path: str = "/inference",
    timeout_s: float | None = None,
) -> str:
    """Run wrk (one thread, pinned to the load core) with a Lua ``script`` on ``path``.

    ``timeout_s``: wrk's per-request timeout (its default: 2 s; a slower answer counts as a socket error).
    """
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s"]
    cmd += ["--latency"] if latency else []
    cmd += [f"--timeout={timeout_s:g}s"] if timeout_s else []
    cmd += ["-s", str(script), f"http://{HOST}:{port}{path}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout


def wrk(port: int, script: Path, seconds: float, concurrency: int) -> int:
    """The requests one wrk run sent."""
    out = wrk_output(port, script, seconds, concurrency)
    match = re.search(r"(\d+) requests in", out)
    assert match, out
    return int(match.group(1))
