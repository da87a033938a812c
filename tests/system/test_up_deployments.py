"""``inferno up --models none --deployments FILE``: deployments only, from a YAML file,
on the local orchestrator; real processes (the fake engine, for speed). Adoption by a
proxy on the same address is tested with the real model (test_deployments_model.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from inferno.orchestrators.processes import pid_start_time, stop_all
from tests.conftest import Proc

pytestmark = pytest.mark.slow

FILE = """
deployments:
  - model: tiny
    backend: fake
    auto_scaling_config: {min_instances: 0, max_instances: 1, keep_alive_s: 600}
"""


def ready(proc: Proc, timeout_s: float = 60.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(r"INFERNO_READY proxy=(\S+) ops=(\S+)", proc.output())
        if match:
            return match.group(1), match.group(2)
        assert proc.popen.poll() is None, proc.output()[-3000:]
        time.sleep(0.1)
    raise AssertionError(proc.output()[-3000:])


def instance_pids(state: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (state / "instances").glob("*.json")}


def test_up_with_deployments_only_cold_starts_survives_a_killed_up_and_stops_on_ctrl_c(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    (tmp_path / "d.yaml").write_text(FILE)
    state = tmp_path / "state"
    args = [
        "up",
        "--models",
        "none",
        "--free-ports",
        "--state-dir",
        str(state),
        "--deployments",
        str(tmp_path / "d.yaml"),
    ]
    try:
        up = spawn(args, "up")
        url, ops = ready(up)
        assert "deployment created tiny" in up.output()
        token = (state / "admin-token").read_text().strip()
        assert (state / "admin-token").stat().st_mode & 0o777 == 0o600
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny"]
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and "x-inferno-cold-start" in r.headers
        pids = instance_pids(state)
        assert len(pids) == 1

        # kill -9 of what drives the orchestrator: the instance lives on...
        os.kill(up.pid, signal.SIGKILL)
        up.stop()
        time.sleep(1.0)
        (pid,) = pids.values()
        assert pid_start_time(pid) is not None
        # ...and the next `inferno up` adopts it. Its proxy listens on other (free) ports, so
        # the adopted instance, registering with the old address, is replaced: a new one
        # starts, then the old one is stopped; the file applies unchanged.
        again = spawn(args, "up-again")
        url, ops = ready(again)
        assert "deployment unchanged tiny" in again.output()
        assert "Instance " + next(iter(pids)) + " of tiny adopted" in again.output()
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while (pid_start_time(pid) is not None and not _zombie(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_start_time(pid) is None or _zombie(pid), "the stale instance was not stopped"
        while len(instance_pids(state)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)  # its record goes once the orchestrator sees it gone
        replaced = instance_pids(state)
        assert len(replaced) == 1 and replaced != pids
        (pid,) = replaced.values()
        status = httpx.get(f"{ops}/status", headers={"Authorization": f"Bearer {token}"}).json()
        assert [i["id"] for i in status["deployments"]["tiny"]["instances"]] == list(replaced)

        # Ctrl-C stops everything, the instance included
        again.popen.send_signal(signal.SIGINT)
        again.popen.wait(timeout=60)
        assert "stopped 1 deployment instance(s)" in again.output()
        assert pid_start_time(pid) is None or _zombie(pid)
        assert instance_pids(state) == {}
    finally:
        stop_all(str(state), timeout_s=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True
