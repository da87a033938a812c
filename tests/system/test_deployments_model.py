"""Serverless deployments of the real SmolLM2 on the ``local`` orchestrator: real processes.

One ``inferno proxy --orchestrator local`` for the module; each test registers its
own deployment through the admin API and deletes it at the end. What is checked is
the autoscaler's decisions and zero failed requests, not throughput (two instances
on two cores are not twice one).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno.orchestrators.processes import free_port, stop_all
from tests.conftest import HOST, Proc, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.model]

ADMIN = "model-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ENGINE = {"n_parallel": 2, "threads": 1, "n_ctx": 1024}


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = str(tmp / "state")
        self.port, self.ops_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ops = f"http://{HOST}:{self.ops_port}"
        (tmp / "admin-token").write_text(ADMIN)
        self.proxy: Proc | None = None
        self.starts = 0

    def start_proxy(self) -> Proc:
        self.starts += 1
        self.proxy = Proc(
            [
                "proxy",
                "--listen-addr",
                f"{HOST}:{self.port}",
                "--ops-addr",
                f"{HOST}:{self.ops_port}",
                "--orchestrator",
                "local",
                "--state-dir",
                self.state,
                "--admin-token-file",
                str(self.tmp / "admin-token"),
                "--autoscale-tick-s",
                "0.2",
                "--health-interval-s",
                "0.5",
            ],
            str(self.tmp / f"proxy-{self.starts}.log"),
        )
        wait_http(f"{self.ops}/livez")
        return self.proxy

    def deploy(self, model: str, **scaling: Any) -> dict[str, Any]:
        body = {
            "model": model,
            "backend": "llamacpp",
            "backend_config": ENGINE,
            "auto_scaling_config": {"min_instances": 0, "max_instances": 2, **scaling},
        }
        r = httpx.post(f"{self.ops}/v1/deployments", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def patch(self, model: str, body: dict[str, Any]) -> None:
        r = httpx.patch(f"{self.ops}/v1/deployments/{model}", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text

    def status(self, model: str) -> dict[str, Any]:
        body = httpx.get(f"{self.ops}/status", headers=AUTH, timeout=10).json()
        return dict(body["deployments"][model])

    def wait(self, model: str, predicate: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status(model)
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"{model} never reached the state wanted; last: {json.dumps(last)[:800]}")

    def delete(self, model: str) -> None:
        httpx.delete(f"{self.ops}/v1/deployments/{model}", headers=AUTH, timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("deployments"))
    c.start_proxy()
    try:
        yield c
    finally:
        if c.proxy is not None:
            c.proxy.stop()
        stop_all(c.state, timeout_s=20)  # the instances outlive the proxy on purpose


def chat(url: str, model: str, *, stream: bool = False, max_tokens: int = 8) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


class Load:
    """``concurrency`` threads sending chat requests until stopped (bounded by ``max_s``)."""

    def __init__(self, url: str, model: str, concurrency: int, max_s: float = 240.0) -> None:
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [
            threading.Thread(target=self._run, args=(url, model, i % 2 == 1), daemon=True)
            for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, model: str, stream: bool) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                r = chat(url, model, stream=stream, max_tokens=12)
                self.statuses.append(r.status_code)
                if r.status_code != 200 or (stream and ("data: [DONE]" not in r.text or '"error"' in r.text)):
                    self.errors.append(f"{r.status_code} {r.text[:300]}")
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=130)


def test_cold_start_plain_then_idle_to_zero_then_cold_start_streamed(cluster: Cluster) -> None:
    cluster.deploy("smol-cold", keep_alive_s=3, downscale_delay_s=1, look_back_s=1, cold_start_timeout_s=60)
    assert cluster.status("smol-cold")["desired"] == 0
    t0 = time.monotonic()
    r = chat(cluster.url, "smol-cold")
    first_s = time.monotonic() - t0
    assert r.status_code == 200, r.text
    cold_ms = int(r.headers["x-inferno-cold-start"])
    assert r.json()["model"] == "smol-cold"  # --model-id: the deployment's id, not the file's
    print(f"cold start (plain): {cold_ms} ms waiting, {first_s:.2f}s to the whole answer")
    # idle past keep-alive: back to zero, the instance stopped
    cluster.wait("smol-cold", lambda s: s["desired"] == 0 and not s["instances"], timeout_s=30)
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        f"{cluster.url}/v1/chat/completions",
        json={
            "model": "smol-cold",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
            "stream": True,
        },
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert int(response.headers["x-inferno-cold-start"]) > 0
        lines = [line for line in response.iter_lines() if line]
    first_token_s = time.monotonic() - t0
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    print(f"cold start (streamed): whole stream in {first_token_s:.2f}s")
    cluster.delete("smol-cold")


def test_a_cold_start_that_cannot_finish_in_time_is_503_not_502(cluster: Cluster) -> None:
    cluster.deploy("smol-slow", cold_start_timeout_s=0.2, keep_alive_s=1, downscale_delay_s=0)
    r = chat(cluster.url, "smol-slow")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "cold_start_timeout"
    assert int(r.headers["retry-after"]) >= 1
    cluster.delete("smol-slow")


def test_a_ramp_scales_to_max_with_zero_failures(cluster: Cluster) -> None:
    cluster.deploy(
        "smol-ramp", target_ongoing_requests=1, keep_alive_s=60, downscale_delay_s=60, cold_start_timeout_s=60
    )
    load = Load(cluster.url, "smol-ramp", concurrency=1)
    try:
        cluster.wait("smol-ramp", lambda s: s["ready"] == 1, timeout_s=60)
        more = Load(cluster.url, "smol-ramp", concurrency=3)
        try:
            state = cluster.wait("smol-ramp", lambda s: s["ready"] == 2, timeout_s=60)
            assert state["desired"] == 2  # max_instances: no further
            time.sleep(2)
            assert cluster.status("smol-ramp")["desired"] == 2
        finally:
            more.stop()
    finally:
        load.stop()
    assert load.errors == [] and more.errors == [], (load.errors + more.errors)[:5]
    assert len(load.statuses) + len(more.statuses) >= 4
    cluster.delete("smol-ramp")


def test_twenty_forced_scale_downs_under_steady_load_fail_nothing(cluster: Cluster) -> None:
    cluster.deploy(
        "smol-flip",
        min_instances=1,
        target_ongoing_requests=1,
        keep_alive_s=600,
        downscale_delay_s=600,
        drain_timeout_s=30,
        cold_start_timeout_s=60,
    )
    cluster.wait("smol-flip", lambda s: s["ready"] == 1, timeout_s=60)
    load = Load(cluster.url, "smol-flip", concurrency=3, max_s=400)
    scale_downs = 0
    try:
        for _ in range(20):
            cluster.wait("smol-flip", lambda s: s["ready"] == 2 and s["desired"] == 2, timeout_s=60)
            cluster.patch("smol-flip", {"auto_scaling_config": {"max_instances": 1}})
            cluster.wait("smol-flip", lambda s: len(s["instances"]) == 1 and s["ready"] == 1, timeout_s=60)
            scale_downs += 1
            cluster.patch("smol-flip", {"auto_scaling_config": {"max_instances": 2}})
    finally:
        load.stop()
    assert scale_downs == 20
    assert load.errors == [], load.errors[:5]
    print(f"20 scale-downs under load: {len(load.statuses)} requests, all 200")
    assert cluster.proxy is not None
    assert cluster.proxy.output().count("scaled to 1 instances (above max_instances)") >= 20
    cluster.delete("smol-flip")


def test_a_sawtooth_with_gaps_shorter_than_keep_alive_cold_starts_once(cluster: Cluster) -> None:
    cluster.deploy("smol-saw", keep_alive_s=8, downscale_delay_s=2, look_back_s=2, cold_start_timeout_s=60)
    cold = []
    instances = set()
    for _tooth in range(4):
        for _ in range(3):
            r = chat(cluster.url, "smol-saw")
            assert r.status_code == 200, r.text
            cold.append("x-inferno-cold-start" in r.headers)
            instances.add(r.headers["x-inferno-backend"])
        time.sleep(3)  # idle, but shorter than keep_alive_s
    assert cold[0] and not any(cold[1:]), cold
    assert len(instances) == 1
    cluster.delete("smol-saw")


def test_kill_9_of_the_proxy_then_a_restart_adopts_and_changes_nothing(cluster: Cluster) -> None:
    cluster.deploy("smol-keep", min_instances=1, keep_alive_s=600, cold_start_timeout_s=60)
    before = cluster.wait("smol-keep", lambda s: s["ready"] == 1, timeout_s=60)["instances"]
    records = {p.stem: json.loads(p.read_text()) for p in Path(cluster.state, "instances").glob("*.json")}
    pids = {r["pid"] for r in records.values() if r["deployment"] == "smol-keep"}
    assert len(pids) == 1
    assert cluster.proxy is not None
    os.kill(cluster.proxy.pid, signal.SIGKILL)
    cluster.proxy.stop()
    for pid in pids:
        os.kill(pid, 0)  # the instance outlived the proxy
    cluster.start_proxy()
    after = cluster.wait("smol-keep", lambda s: s["ready"] == 1, timeout_s=60)
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before]  # adopted, not duplicated
    assert after["desired"] == 1
    wait_http(f"{cluster.ops}/health", timeout_s=30)  # its next heartbeat registers it here
    deadline = time.monotonic() + 30
    while httpx.get(f"{cluster.ops}/health", timeout=5).json()["healthy"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    r = chat(cluster.url, "smol-keep")
    assert r.status_code == 200 and "x-inferno-cold-start" not in r.headers
    time.sleep(2)
    assert [i["id"] for i in cluster.status("smol-keep")["instances"]] == [i["id"] for i in before]
    log = cluster.proxy.output()
    assert "started (pid" not in log and "stopping" not in log, log[-2000:]
    cluster.delete("smol-keep")
