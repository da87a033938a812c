"""Prometheus exposition of proxy and backends passes ``promtool check metrics``
(Debian's prometheus package), with every family this project documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster
from tests.system.test_api_keys import bearer, keys

pytestmark = pytest.mark.slow


def promtool(text: str) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (make test-deps: apt-get install prometheus)")
    out = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_passes_on_proxy_and_backend_metrics(spawn: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = keys(state, "create", "--name", "metrics")
    cluster = start_process_cluster(
        spawn,
        2,
        engines=("fake", "minilm"),
        proxy_args=("--require-api-key", "--state-dir", str(state), "--queue", "sim", "--queue", "other"),
        ready_timeout_s=60,
    )
    with httpx.Client(timeout=10, headers=bearer(key)) as http:
        assert http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        assert http.post(f"{cluster.url}/v1/embeddings", json={"input": ["a", "b"]}).status_code == 200
        stream = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
        r = http.post(f"{cluster.url}/v1/chat/completions", json=stream)
        assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]")
        job = http.post(f"{cluster.url}/v1/queues/sim/jobs", params={"wait": "false"}, json={"args": ["1"]})
        assert job.status_code == 202
    proxy = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    promtool(proxy)
    for family in (
        "inferno_requests_total",
        "inferno_request_duration_seconds_bucket",
        "inferno_model_requests_total",
        "inferno_retries_total",
        "inferno_ejections_total",
        "inferno_fallbacks_total",
        "inferno_queue_depth",
        "inferno_queue_served_total",
        "inferno_queue_wait_seconds",
        "inferno_backend_in_flight_requests",
        "inferno_backend_circuit_state",
        "inferno_usage_prompt_tokens_total",
        "inferno_jobqueue_waiting",
        "inferno_jobqueue_backlog",
        "inferno_jobqueue_workers_polling",
        "inferno_jobqueue_oldest_wait_seconds",
        "inferno_jobqueue_wait_seconds_bucket",
        "inferno_jobqueue_run_seconds_bucket",
        "inferno_jobqueue_max_total_seconds",
        "inferno_jobqueue_completed_total",
        "inferno_jobqueue_client_disconnects_total",
        "inferno_jobqueue_redeliveries_total",
        "inferno_jobqueue_rejected_total",
        "inferno_jobqueue_stale_completions_total",
    ):
        assert f"\n{family}" in proxy, family
    # One stream: one time-to-first-token, and one mean time per output token.
    assert 'inferno_jobqueue_waiting{queue="sim"} 1.0' in proxy
    assert 'inferno_jobqueue_submitted_total{queue="sim"} 1.0' in proxy
    assert 'inferno_time_to_first_token_seconds_count{model="fake"} 1.0' in proxy
    assert 'inferno_time_per_output_token_seconds_count{model="fake"} 1.0' in proxy
    for worker in cluster.workers().values():
        backend = httpx.get(f"http://{worker['ops_address']}/metrics", timeout=5).text
        promtool(backend)
        assert "inferno_backend_model_requests_total{" in backend
        assert "inferno_backend_model_duration_seconds_bucket{" in backend
