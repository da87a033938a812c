"""``--log-format json``: every request line carries its facts as keys."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, start_process_cluster

pytestmark = pytest.mark.slow


def lines_of(proc: Proc, request_id: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.output().splitlines():
        if request_id in line:
            out.append(json.loads(line))  # every line is JSON
    return out


def test_request_lines_carry_request_id_backend_model_and_timings(spawn: Callable[..., Proc]) -> None:
    json_logs = ("--log-format", "json")
    cluster = start_process_cluster(spawn, 1, proxy_args=json_logs, backend_args=json_logs)
    rid = "json-log-check-1"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for stream in (False, True):
        answer = httpx.post(
            f"{cluster.url}/v1/chat/completions",
            json={**body, "stream": stream},
            headers={"X-Request-ID": f"{rid}-{stream}"},
            timeout=10,
        )
        assert answer.status_code == 200
    address = cluster.workers()["b1"]["address"]
    deadline = time.monotonic() + 5  # lines are flushed in batches, at most 50 ms late
    while time.monotonic() < deadline and (
        len(lines_of(cluster.proxy, f"{rid}-True")) < 2
        or not any(
            line["message"].startswith("Inference completed")
            for line in lines_of(cluster.backends["b1"], f"{rid}-True")
        )
    ):
        time.sleep(0.05)  # the backend's line may come after the proxy has relayed the stream
    for stream in (False, True):
        proxy_lines = lines_of(cluster.proxy, f"{rid}-{stream}")
        (route,) = [line for line in proxy_lines if line["message"].startswith("Routing request")]
        assert route["request_id"] == f"{rid}-{stream}" and route["backend"] == address
        assert route["attempt"] == 1
        (answered,) = [line for line in proxy_lines if line["message"].startswith("Answered request")]
        assert answered["request_id"] == f"{rid}-{stream}"
        assert answered["route"] == "/v1/chat/completions" and answered["status"] == 200
        assert answered["backend"] == address and answered["node_id"] == "b1"
        assert answered["model"] == "fake"
        assert 0 <= answered["queue_ms"] <= answered["total_ms"]
        assert 0 < answered["backend_ms"] <= answered["total_ms"]
        assert answered["level"] == "INFO" and answered["logger"] == "inferno.proxy.forward"
        backend_lines = lines_of(cluster.backends["b1"], f"{rid}-{stream}")
        (done,) = [line for line in backend_lines if line["message"].startswith("Inference completed")]
        assert done["request_id"] == f"{rid}-{stream}" and done["model"] == "fake"
        assert done["tokens"] == 3 and done["queue_ms"] >= 0 and done["total_ms"] > 0
