"""Proxy + fake backends in-process, on free ports, over real sockets."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inferno.engines.base import GenerationRequest
from inferno.engines.fake import fake_tokens
from tests.conftest import HOST, wait_for


async def test_round_robin_alternates_and_reports_backend(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(2)
    served: list[str] = []
    for _ in range(6):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "hello", "max_tokens": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        served.append(r.headers["x-inferno-backend"])
        assert body["backend"] == r.headers["x-inferno-backend"]
        assert body["request_id"] == r.headers["x-request-id"]
        assert r.headers["x-inferno-backend-addr"].startswith(f"{HOST}:")
        expected = "".join(fake_tokens(GenerationRequest(max_tokens=4, messages=(("user", "hello"),))))
        assert body["text"] == expected
        timings = body["timings"]
        assert set(timings) == {"queue_ms", "backend_ms", "total_ms"}
        assert timings["total_ms"] >= timings["backend_ms"] >= 0
        assert "queue;dur=" in r.headers["server-timing"] and "total;dur=" in r.headers["server-timing"]
    assert served[0] != served[1]
    assert all(served[i] != served[i + 1] for i in range(5))
    assert Counter(served) == {"node-1": 3, "node-2": 3}


async def test_client_request_id_kept_or_replaced(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(1)
    body = {"prompt": "x", "max_tokens": 1}
    r = await client.post(f"{cluster.url}/inference", json=body, headers={"X-Request-ID": "my-id.1:a"})
    assert r.headers["x-request-id"] == "my-id.1:a" and r.json()["request_id"] == "my-id.1:a"
    r = await client.post(f"{cluster.url}/inference", json=body, headers={"X-Request-ID": "bad id!"})
    assert r.headers["x-request-id"] != "bad id!"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    # errors carry the id too
    r = await client.post(f"{cluster.url}/inference", content=b"{", headers={"X-Request-ID": "e-1"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "e-1"


async def test_openai_endpoints_and_models(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2)
    r = await client.get(f"{cluster.url}/v1/models")
    assert r.json()["data"][0]["id"] == "fake"
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = await client.post(f"{cluster.url}/v1/chat/completions", json=chat)
    data = r.json()
    assert r.status_code == 200 and data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] and data["usage"]["completion_tokens"] == 3
    assert "server-timing" in r.headers and "x-inferno-backend" in r.headers
    r = await client.post(f"{cluster.url}/v1/completions", json={"prompt": "once", "max_tokens": 2})
    assert r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"]


async def test_sse_tokens_arrive_incrementally(make_cluster: Any, client: httpx.AsyncClient) -> None:
    # 20 tokens/s: a buffered relay would deliver everything after ~0.5s at once.
    cluster = await make_cluster(1, engine_options=_slow_fake())
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    async with client.stream("POST", f"{cluster.url}/v1/chat/completions", json=chat) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "server-timing" in r.headers and r.headers["x-inferno-backend"] == "node-1"
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - started, line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    events = [json.loads(p) for _, p in arrivals[:-1]]
    content = [e["choices"][0]["delta"].get("content") for e in events]
    assert len([c for c in content if c]) == 10
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    # The first token reached us long before the last one was generated.
    first_token_at, last_token_at = arrivals[0][0], arrivals[-2][0]
    assert last_token_at - first_token_at > 0.3


def _slow_fake() -> dict[str, float]:
    return {"fake_tokens_per_s": 20.0}


async def test_no_backend_gives_503_with_message(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(0)
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "x"})
    assert r.status_code == 503
    assert "no healthy backend" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    r = await client.get(f"{cluster.ops_url}/health")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"


async def test_health_reports_healthy_then_degraded(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2)
    r = await client.get(f"{cluster.ops_url}/health")
    assert r.status_code == 200
    body = r.json()
    assert "insecure" in body.pop("warning")  # these in-process proxies run without a cluster token
    assert body == {
        "status": "healthy",
        "healthy": 2,
        "total": 2,
        "backends": {"healthy": 2, "unhealthy": 0, "ejected": 0, "draining": 0, "total": 2},
    }
    victim = cluster.backends[0]
    address = victim.advertise_addr
    await victim.aclose()
    await wait_for(lambda: cluster.proxy.registry.get(address).status.value == "unhealthy", 3.0)
    r = await client.get(f"{cluster.ops_url}/health")
    assert r.status_code == 200 and r.json()["status"] == "degraded" and r.json()["healthy"] == 1
    r = await client.get(f"{cluster.ops_url}/livez")
    assert r.status_code == 200


async def test_workers_and_vitals_interface(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2)
    r = await client.get(f"{cluster.ops_url}/workers")
    workers = r.json()["workers"]
    assert len(workers) == 2
    for worker in workers:
        assert {"node_id", "address", "status", "models", "in_flight", "last_heartbeat"} <= set(worker)
        assert worker["status"] == "healthy" and worker["models"] == ["fake"]
        assert isinstance(worker["last_heartbeat"], float)
    r = await client.get(f"{cluster.ops_url}/metrics", params={"format": "json"})
    nodes = r.json()["nodes"]
    assert set(nodes) == {"node-1", "node-2"} and "rss_bytes" in nodes["node-1"]


async def test_metrics_are_valid_prometheus(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2)
    for _ in range(4):
        await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
    await client.post(f"{cluster.url}/inference", content=b"nope")
    r = await client.get(f"{cluster.ops_url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {
        "inferno_requests",
        "inferno_request_errors",
        "inferno_request_duration_seconds",
        "inferno_in_flight_requests",
        "inferno_backend_healthy",
        "inferno_backend_in_flight_requests",
    } <= set(families)
    ok = [s for s in families["inferno_requests"].samples if s.labels.get("code") == "200"]
    assert sum(s.value for s in ok) == 4 and {s.labels["backend"] for s in ok} == {
        b.advertise_addr for b in cluster.backends
    }
    bad = [s for s in families["inferno_requests"].samples if s.labels.get("code") == "400"]
    assert sum(s.value for s in bad) == 1
    counts = [s for s in families["inferno_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == 4
    healthy = families["inferno_backend_healthy"].samples
    assert len(healthy) == 2 and all(s.value == 1 for s in healthy)
    # The backend's own ops port exposes vitals in Prometheus form too.
    backend = cluster.backends[0]
    r = await client.get(f"http://{HOST}:{backend.ops_address[1]}/metrics")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {
        "inferno_backend_requests",
        "inferno_backend_in_flight_requests",
        "inferno_backend_queued_requests",
        "inferno_backend_tokens_per_second",
        "inferno_backend_cpu_percent",
        "inferno_backend_memory_rss_bytes",
    } <= names


async def test_killed_backend_is_skipped_on_first_refusal(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    # Probes are slow here, so only the data path's refusal can explain the fast ejection.
    from inferno.config import HealthCheckConfig

    cluster = await make_cluster(2, proxy_overrides={"health": HealthCheckConfig(interval_s=60.0)})
    victim = cluster.backends[0]
    address = victim.advertise_addr
    await victim.aclose()
    results = []
    for _ in range(6):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
        results.append((r.status_code, r.headers.get("x-inferno-backend-addr")))
    assert all(status == 200 for status, _ in results)
    assert all(addr != address for _, addr in results)
    worker = cluster.proxy.registry.get(address)
    assert worker.status.value == "unhealthy" and worker.status_reason == "connection_refused"
    assert cluster.proxy.stats.retries == 1
    # Honest metrics: one count per client response, the failed attempt only as an error.
    stats = cluster.proxy.stats.backends
    assert sum(sum(b.requests.values()) for b in stats.values()) == 6
    assert stats[address].requests == {} and stats[address].errors == {"connection_refused": 1}


async def test_upstream_connections_are_kept_alive_and_reused(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(1)
    backend = cluster.backends[0]
    before = backend.data_server.connections_accepted
    for _ in range(30):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200
    # 30 sequential requests (plus health probes) over one pooled connection, not 30
    assert backend.data_server.connections_accepted - before <= 2
