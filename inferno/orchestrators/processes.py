"""The ``local`` orchestrator's processes: their records on disk, spawning and signalling.

An instance is an ``inferno backend`` process in its own session, so it outlives
whatever started it. Its record (one JSON file, written atomically) names its pid
*and* that pid's start time from ``/proc/<pid>/stat``, so a pid the kernel reused
for another process is never mistaken for the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inferno.deployments.spec import DeploymentSpec
from inferno.errors import ConfigError
from inferno.orchestrators.base import InstanceInfo, InstanceState

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    """A port free on loopback right now (``inferno up`` picks its ports the same way)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])  # fields 3 and 22 of stat(5)
    except (IndexError, ValueError):
        return None


def pid_start_time(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What survives a restart of the orchestrator: enough to find the process again."""

    id: str
    deployment: str
    generation: int
    pid: int
    #: ``/proc/<pid>/stat`` field 22: with the pid, identifies the process
    pid_start: int
    data_port: int
    ops_port: int
    address: str
    #: wall-clock time it was started
    started: float
    #: the spec's drain and cold-start timeouts, for an instance whose deployment is gone
    drain_timeout_s: float = 30.0
    cold_start_timeout_s: float = 30.0
    #: the proxy ops address it registers with: one that moved makes it stale
    discovery_lb: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstanceRecord:
        return cls(
            id=str(data["id"]),
            deployment=str(data["deployment"]),
            generation=int(data["generation"]),
            pid=int(data["pid"]),
            pid_start=int(data["pid_start"]),
            data_port=int(data["data_port"]),
            ops_port=int(data["ops_port"]),
            address=str(data["address"]),
            started=float(data["started"]),
            drain_timeout_s=float(data.get("drain_timeout_s", 30.0)),
            cold_start_timeout_s=float(data.get("cold_start_timeout_s", 30.0)),
            discovery_lb=str(data.get("discovery_lb", "")),
        )


class RecordStore:
    """``<state_dir>/instances/<id>.json``, one per instance; logs in ``instances/logs``."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir) / "instances"
        self.logs = self.root / "logs"

    def ensure(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)

    def path(self, instance_id: str) -> Path:
        return self.root / f"{instance_id}.json"

    def log_path(self, instance_id: str) -> Path:
        return self.logs / f"{instance_id}.log"

    def write(self, record: InstanceRecord) -> None:
        """Atomically: a reader (or a crash) sees the old file or the new one, never half."""
        final = self.path(record.id)
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record.to_json(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def remove(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(instance_id).unlink()

    def prune_logs(self, keep: int = 100) -> None:
        """Keep the newest ``keep`` logs of instances that are gone (a crash loop writes one
        per start); the logs of recorded instances always stay."""
        live = {path.stem for path in self.root.glob("*.json")}
        logs = sorted(
            (p for p in (self.root / "logs").glob("*.log") if p.stem not in live),
            key=lambda p: p.stat().st_mtime,
        )
        for path in logs[: max(0, len(logs) - keep)]:
            path.unlink(missing_ok=True)

    def load(self) -> list[InstanceRecord]:
        """Every readable record; unreadable ones and leftover temporary files are removed."""
        records = []
        for path in sorted(self.root.glob(".*.json.tmp")):
            path.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*.json")):
            try:
                with open(path, encoding="utf-8") as fh:
                    records.append(InstanceRecord.from_json(json.load(fh)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("Removing unreadable instance record %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
        return records


class InstanceProcess:
    """One instance's process: a child of ours (``Popen``), or adopted (pid + start time).

    A child is reaped by ``Popen.poll``; an adopted process is not ours to reap, so it
    counts as gone once its pid is free, names another process, or is a zombie.
    """

    def __init__(self, pid: int, pid_start: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.pid_start = pid_start
        self.popen = popen

    @property
    def adopted(self) -> bool:
        return self.popen is None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        stat = proc_stat(self.pid)
        return stat is not None and stat[1] == self.pid_start and stat[0] not in ("Z", "X")

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.returncode

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` if the process is still the one recorded; False if it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def stop_all(state_dir: str, timeout_s: float = 40.0) -> int:
    """Drain and stop every recorded instance under ``state_dir`` (``inferno up``'s Ctrl-C):
    SIGTERM, a bounded wait, then SIGKILL. Returns how many were running."""
    store = RecordStore(state_dir)
    if not store.root.is_dir():
        return 0
    running = [
        (record, process)
        for record in store.load()
        if (process := InstanceProcess(record.pid, record.pid_start)).signal(signal.SIGTERM)
    ]
    deadline = time.monotonic() + timeout_s
    for record, process in running:
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded by the deadline; adopted pids cannot be waited on
        if process.alive():
            process.signal(signal.SIGKILL)
        store.remove(record.id)
    return len(running)


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> InstanceProcess:
    """Start ``argv`` in a session of its own (it outlives us: no parent-death signal),
    its output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    start = pid_start_time(popen.pid)
    if start is None:  # exited already: still ours to reap, and its start is moot
        start = -1
    return InstanceProcess(popen.pid, start, popen)


def backend_argv(
    python: str,
    spec: DeploymentSpec,
    instance_id: str,
    ports: tuple[int, int],
    discovery_lb: str,
    model_dir: str | None,
) -> list[str]:
    """``inferno backend`` for one instance: each ``backend_config`` key is its engine
    flag (``--key-with-dashes value``); the cluster token is never on the command line."""
    data_port, ops_port = ports
    if spec.kind == "worker":
        # A queue worker: it only dials out; its health port is where the probe looks.
        return [
            python,
            "-m",
            "inferno",
            "worker",
            "--discovery-lb",
            discovery_lb,
            "--pod-name",
            instance_id,
            "--health-addr",
            f"{HOST}:{ops_port}",
            *spec.worker_args(model_dir),
        ]
    argv = [
        python,
        "-m",
        "inferno",
        "backend",
        "--listen-addr",
        f"{HOST}:{data_port}",
        "--ops-addr",
        f"{HOST}:{ops_port}",
        "--discovery-lb",
        discovery_lb,
        "--node-id",
        instance_id,
        *spec.backend_args(model_dir),
    ]
    return argv


@dataclass(slots=True)
class Backoff:
    """Starts of one deployment after failed ones: one per window, the window doubling."""

    failures: int = 0
    blocked_until: float = 0.0
    starts: int = 0

    def delay_s(self, base_s: float, max_s: float) -> float:
        return float(min(max_s, base_s * 2 ** max(0, self.failures - 1)))


async def reap(poll: Callable[[], int | None], timeout_s: float = 10.0) -> None:
    """Reap a killed child so it leaves no zombie (bounded: SIGKILL is not refused)."""
    for _ in range(int(timeout_s / 0.05)):
        if poll() is not None:
            return
        await asyncio.sleep(0.05)


def parse_options(pairs: Sequence[tuple[str, str]], kinds: Mapping[str, type[float]]) -> dict[str, Any]:
    """``--orchestrator-option KEY=VALUE`` pairs, each a positive number of a known key."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"the local orchestrator takes no option {key!r}; it takes {sorted(kinds)}")
        try:
            options[key] = kind(value)
        except ValueError:
            raise ConfigError(f"orchestrator option {key}: {value!r} is not a {kind.__name__}") from None
        if options[key] <= 0:
            raise ConfigError(f"orchestrator option {key} must be positive")
    return options


OPTIONS: dict[str, type] = {
    "probe_interval_s": float,
    "probe_timeout_s": float,
    "backoff_base_s": float,
    "backoff_max_s": float,
    "max_starting": int,
    "max_instances": int,
}
#: the node every local instance runs on
NODE = socket.gethostname()


@dataclass(slots=True)
class LocalInstance:
    record: InstanceRecord
    process: InstanceProcess
    state: InstanceState
    #: when it was started or adopted (the injected clock): the cold-start deadline counts from here
    since: float
    #: it served once (a stop of one that never did still counts as a start in progress)
    served: bool = False

    def info(self) -> InstanceInfo:
        r = self.record
        return InstanceInfo(r.id, r.deployment, r.generation, self.state, NODE, r.address, r.started)
