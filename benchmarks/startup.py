"""Spawn to first answer: how soon a new ``inferno proxy`` serves a chat request.

Two fake-engine backends run already; each round spawns ``inferno proxy
--backend-servers B1,B2`` and sends ``POST /v1/chat/completions`` every 10 ms
until one is answered 200 (after one untimed start per tree, which writes its
bytecode caches). Reported per tree: the wall time from the spawn to
that 200 and the proxy's CPU time by then, medians over the rounds. With
``--baseline REV`` the proxy as of that revision runs too, rounds alternated.

    python benchmarks/startup.py [--repeats 5] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CLK_TCK,
    HOST,
    ROOT,
    checkout,
    cpu_seconds,
    fake_backend,
    machine,
    procs,
    wait_port,
    write_result,
)

CHAT = json.dumps(
    {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT
)
POLL_S = 0.01
TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def status(port: int) -> int:
    """The status of one chat request to ``port``, 0 when nothing answers."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(REQUEST)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def one_start(tree: Path, backends: list[int], log: Path) -> tuple[float, float]:
    """Seconds from the spawn to the first 200, and the proxy's CPU seconds by then."""
    port, ops = free_port(), free_port()
    cmd = [
        sys.executable,
        "-P",  # not the working directory's inferno: the one PYTHONPATH names
        "-m",
        "inferno",
        "proxy",
        "--listen-addr",
        f"{HOST}:{port}",
        "--ops-addr",
        f"{HOST}:{ops}",
        "--backend-servers",
        ",".join(f"{HOST}:{b}" for b in backends),
        "--log-level",
        "WARNING",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with log.open("ab") as out:
        started = time.monotonic()
        proxy = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while status(port) != 200:
                if proxy.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                    raise RuntimeError(f"no 200 from the proxy within {TIMEOUT_S:g}s (see {log})")
                time.sleep(POLL_S)
            wall = time.monotonic() - started
            cpu = cpu_seconds([proxy.pid])
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="also time the proxy as of this git revision")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="inferno-startup-"))
    trees = {"inferno": ROOT}
    if args.baseline:
        trees[f"inferno@{args.baseline}"] = checkout(args.baseline, logdir / "baseline")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    load_before = os.getloadavg()[0]
    with procs(logdir) as p:
        backends = []
        for i in range(2):
            port, ops = free_port(), free_port()
            p.start(f"backend{i}", fake_backend(port, ops, 0.0, f"fake-{i + 1}"))
            backends.append(port)
        for port in backends:
            wait_port(port)
        for name, tree in trees.items():  # untimed: writes each tree's bytecode caches
            one_start(tree, backends, logdir / f"{name.replace('@', '-')}.log")
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(one_start(tree, backends, logdir / f"{name.replace('@', '-')}.log"))
    load = (load_before, os.getloadavg()[0])
    rows = []
    data: dict[str, Any] = {
        "machine": machine(),
        "command": sys.argv,
        "poll_s": POLL_S,
        "load_average_1m": load,
        "runs": runs,
    }
    for name, samples in runs.items():
        walls = [w for w, _ in samples]
        cpus = [c for _, c in samples]
        rows.append(
            f"| {name} | {statistics.median(walls) * 1000:.0f} | {min(walls) * 1000:.0f}-"
            f"{max(walls) * 1000:.0f} | {statistics.median(cpus) * 1000:.0f} |"
        )
    m = data["machine"]
    markdown = "\n".join(
        [
            "## startup",
            "",
            f"{m['cpu']}, {m['cores']} cores, Python {m['python']}. {m['date']}.",
            f"Spawn of `inferno proxy --backend-servers B1,B2` (two fake backends up) to the first 200 of "
            f"`POST /v1/chat/completions`, polled every {POLL_S * 1000:.0f} ms; {args.repeats} rounds, "
            f"trees alternated; CPU = the proxy's user+system time by then (clock ticks of "
            f"{1000 / CLK_TCK:.0f} ms). Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after: "
            "a busy machine stretches the wall time more than the CPU time.",
            "",
            "| proxy | median ms | range ms | CPU ms |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
    write_result("startup", data, markdown)


if __name__ == "__main__":
    main()
