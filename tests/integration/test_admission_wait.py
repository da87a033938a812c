"""Admission by expected wait through a real proxy and backend on free ports: the 429
comes at arrival with a Retry-After from the service rate, its metric is labelled with
the model asked for (served or an alias, else ``other``), its log line is rate-limited."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest

from inferno.backend.server import BackendServer
from inferno.config import AdmissionConfig, HttpConfig
from inferno.proxy.server import ProxyServer
from tests.conftest import backend_config, proxy_config

MODEL = "fake"
BODY: dict[str, Any] = {"prompt": "hello", "max_tokens": 4}


async def timed_post(http: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_ms: int) -> Any:
    t0 = time.monotonic()
    response = await http.post(url, json=body, headers={"X-Inferno-Timeout-Ms": str(timeout_ms)})
    return response, time.monotonic() - t0


async def test_a_burst_past_capacity_is_refused_at_arrival(
    make_cluster: Any, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = await make_cluster(
        1,
        proxy_overrides={
            "admission": AdmissionConfig(wait_estimate_min_samples=3),
            "model_aliases": {"gpt-x": MODEL},
            "http": HttpConfig(refused_log_interval_s=60.0),
        },
        # One slot, each request holds it about 300 ms.
        engine_options={"fake_tokens_per_s": 5000.0, "fake_latency_ms": 300.0, "n_parallel": 1},
    )
    url = f"{cluster.url}/inference"
    for _ in range(3):  # warm up the estimate: the service time is measured, not assumed
        assert (await client.post(url, json=BODY)).status_code == 200
    caplog.set_level(logging.WARNING, logger="inferno.proxy.app")

    # Ten at once, each with a 1 s deadline: one takes the slot, one or two more can
    # wait 0.3 s each and still finish in time (fewer as answers vary, planned for their
    # slow ones); the rest cannot, and are told so at once.
    bodies = [{**BODY, "model": "gpt-x" if i % 2 else MODEL} for i in range(10)]
    results = await asyncio.gather(*(timed_post(client, url, b, 1000) for b in bodies))
    statuses = sorted(r.status_code for r, _ in results)
    assert set(statuses) == {200, 429}, statuses
    assert 1 <= statuses.count(200) <= 5, statuses
    for response, elapsed in results:
        if response.status_code == 429:
            assert elapsed < 0.5, elapsed  # not after waiting out the deadline
            assert response.json()["error"]["code"] == "overloaded"
            assert "expected wait" in response.json()["error"]["message"]
            assert 1 <= int(response.headers["retry-after"]) <= 30
        else:
            assert elapsed < 1.0

    metrics = (await client.get(f"{cluster.ops_url}/metrics")).text
    refused = statuses.count(429)
    lines = [line for line in metrics.splitlines() if line.startswith("inferno_admission_rejections_total{")]
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    by_model = {
        model: counts.get(f'model="{model}",reason="expected_wait"', 0.0) for model in (MODEL, "gpt-x")
    }
    assert sum(by_model.values()) == refused, counts
    assert all(label.split(",")[0] in ('model="fake"', 'model="gpt-x"') for label in counts), counts
    # One line at once, the rest summed up later (the window is 60 s here).
    logged = [r for r in caplog.records if "refused (429" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]


async def test_a_model_nobody_named_is_labelled_other(client: httpx.AsyncClient) -> None:
    # A static backend advertises no models: whatever name a client sends, the proxy
    # serves no such model by name, so its label is ``other``.
    backend = BackendServer(backend_config(None, engine_options={"fake_latency_ms": 300.0, "n_parallel": 1}))
    await backend.start()
    proxy = ProxyServer(
        proxy_config(
            backend_servers=(f"127.0.0.1:{backend.data_address[1]}",),
            admission=AdmissionConfig(wait_estimate_min_samples=2, max_in_flight_per_backend=1),
        )
    )
    await proxy.start()
    try:
        url = f"http://127.0.0.1:{proxy.data_address[1]}/inference"
        for _ in range(2):
            assert (await client.post(url, json=BODY)).status_code == 200
        bodies = [{**BODY, "model": MODEL} for i in range(8)]
        results = await asyncio.gather(*(timed_post(client, url, b, 700) for b in bodies))
        assert 429 in {r.status_code for r, _ in results}
        metrics = (await client.get(f"http://127.0.0.1:{proxy.ops_address[1]}/metrics")).text
        assert 'inferno_admission_rejections_total{model="other",reason="expected_wait"}' in metrics
        assert 'model="fake"' not in metrics.split("inferno_admission_rejections_total")[1]
    finally:
        await proxy.aclose()
        await backend.aclose()
