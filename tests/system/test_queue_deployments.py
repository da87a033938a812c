"""A deployment of kind worker, scaled on its queue by our own autoscaler: ``inferno up
--models none --deployments FILE`` declares the file's queue, the first job starts a
worker from zero, load scales it out, and with no jobs it goes back to zero."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno.orchestrators.processes import stop_all
from tests.conftest import Proc
from tests.system.test_up_deployments import ready

pytestmark = pytest.mark.slow

FILE = """
queues:
  - name: sim
    max_size: 100
deployments:
  - model: sim-workers
    kind: worker
    queue: sim
    workload: sleep
    backend: fake
    auto_scaling_config:
      min_instances: 0
      max_instances: 3
      target_ongoing_requests: 1
      keep_alive_s: 2
      downscale_delay_s: 1
      look_back_s: 1
      drain_timeout_s: 5
"""


def instances(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (state / "instances").glob("*.json")]


def test_the_first_job_starts_a_worker_load_scales_out_and_idle_goes_to_zero(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    (tmp_path / "d.yaml").write_text(FILE)
    state = tmp_path / "state"
    args = ["up", "--models", "none", "--free-ports", "--state-dir", str(state), "--deployments"]
    try:
        up = spawn([*args, str(tmp_path / "d.yaml")], "up")
        url, _ = ready(up)
        assert "inferno worker --discovery-lb" in up.output()  # the banner's line for the queue
        assert instances(state) == []  # min 0: nothing runs before a job comes
        assert "sim-workers" not in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        with httpx.Client(timeout=60) as http:
            first = http.post(f"{url}/v1/queues/sim/jobs", json={"args": ["0.1"]}).json()
            assert first["outcome"] == "success" and first["pod"].startswith("sim-workers-")
            # Twelve jobs of a second, at once: more workers (at most 3) take them.
            ids = [
                http.post(f"{url}/v1/queues/sim/jobs?wait=false", json={"args": ["1"]}).json()["job_id"]
                for _ in range(12)
            ]
            results = [http.get(f"{url}/v1/jobs/{i}", params={"wait_s": 30}).json() for i in ids]
        assert {r["outcome"] for r in results} == {"success"}
        assert len({r["pod"] for r in results}) >= 2
        # No job for a while: the workers drain (each finishes its job) and stop.
        deadline = time.monotonic() + 60
        while instances(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert instances(state) == []
        assert "scaled to 0 instances" in up.output()
    finally:
        stop_all(str(state), timeout_s=10)
