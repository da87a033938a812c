"""Fault tolerance and admission control, in-process with chaos-enabled fake backends."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from typing import Any

import httpx

from inferno.backend.server import BackendServer
from inferno.config import (
    AdmissionConfig,
    MigrationConfig,
    OutlierConfig,
    UpstreamConfig,
)
from inferno.proxy.server import ProxyServer
from inferno.registry.worker import WorkerStatus
from tests.conftest import HOST, backend_config, proxy_config, wait_for


def data_url(backend: Any) -> str:
    return f"http://{HOST}:{backend.data_address[1]}"


async def test_hung_backend_costs_at_most_one_deadline_then_is_ejected(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(
        2, proxy_overrides={"outlier": OutlierConfig(consecutive_failures=2)}, chaos=True
    )
    hung = cluster.backends[0]
    r = await client.post(f"{data_url(hung)}/simulate/hang", json={"duration_s": 60})
    assert r.status_code == 200
    durations = []
    for _ in range(8):
        started = time.monotonic()
        r = await client.post(
            f"{cluster.url}/inference",
            json={"prompt": "x", "max_tokens": 4},
            headers={"X-Inferno-Timeout-Ms": "1000"},
        )
        durations.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
        assert r.headers["x-inferno-backend"] == "node-2"
    # each affected request lost at most one per-try timeout, all within its 1 s deadline
    assert max(durations) < 1.0 + 0.25, durations
    worker = cluster.proxy.registry.get(hung.advertise_addr)
    assert worker.status is WorkerStatus.EJECTED
    assert worker.to_json()["circuit"] == "open"
    # once ejected, the hung backend costs nothing
    assert sorted(durations)[:4][-1] < 0.2, durations
    errors = cluster.proxy.stats.backends[hung.advertise_addr].errors
    assert errors == {"timeout": 2}


async def test_deadline_exceeded_is_504(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(1, chaos=True)
    await client.post(f"{data_url(cluster.backends[0])}/simulate/hang", json={"duration_s": 60})
    started = time.monotonic()
    r = await client.post(
        f"{cluster.url}/inference", json={"prompt": "x"}, headers={"X-Inferno-Timeout-Ms": "300"}
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 0.3 + 0.25
    r = await client.post(
        f"{cluster.url}/inference", json={"prompt": "x"}, headers={"X-Inferno-Timeout-Ms": "nope"}
    )
    assert r.status_code == 400


async def test_backend_400_is_never_ejected(make_cluster: Any, client: httpx.AsyncClient) -> None:
    # The backend allows 10 tokens, the proxy 4096: the backend itself answers 400.
    cluster = await make_cluster(1, max_tokens_limit=10)
    for _ in range(20):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 50})
        assert r.status_code == 400 and "at most 10" in r.json()["error"]["message"]
        assert r.headers["x-inferno-backend"] == "node-1"
    worker = cluster.proxy.registry.routable()[0]
    assert worker.status is WorkerStatus.HEALTHY and worker.breaker.failures == 0
    assert cluster.proxy.stats.retries == 0
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 5})
    assert r.status_code == 200


async def test_5xx_backend_is_retried_elsewhere_and_ejected(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(2, chaos=True)
    bad = cluster.backends[0]
    await client.post(f"{data_url(bad)}/simulate/error", json={"duration_s": 60})
    codes = []
    for _ in range(10):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 2})
        codes.append(r.status_code)
    assert codes == [200] * 10
    worker = cluster.proxy.registry.get(bad.advertise_addr)
    assert worker.status is WorkerStatus.EJECTED
    r = await client.get(f"{cluster.ops_url}/workers")
    by_node = {w["node_id"]: w for w in r.json()["workers"]}
    assert by_node["node-1"]["status"] == "ejected" and by_node["node-1"]["circuit"] == "open"
    assert by_node["node-2"]["circuit"] == "closed"
    metrics = (await client.get(f"{cluster.ops_url}/metrics")).text
    assert (
        f'inferno_request_errors_total{{backend="{bad.advertise_addr}",reason="status_500"}} 3.0' in metrics
    )
    assert "inferno_backend_circuit_state{" in metrics


async def test_half_open_trial_readmits_a_recovered_backend(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(
        2,
        proxy_overrides={"outlier": OutlierConfig(consecutive_failures=1, base_ejection_s=0.3)},
        chaos=True,
    )
    bad = cluster.backends[0]
    await client.post(f"{data_url(bad)}/simulate/error", json={"duration_s": 60})
    await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
    worker = cluster.proxy.registry.get(bad.advertise_addr)
    assert worker.status is WorkerStatus.EJECTED
    await client.post(f"{data_url(bad)}/simulate/reset")
    await wait_for(lambda: worker.status is WorkerStatus.HEALTHY, 3.0)
    assert worker.breaker.state.value == "half_open"
    for _ in range(4):
        await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
    assert worker.breaker.state.value == "closed"


async def test_queue_full_burst_gets_429_and_no_5xx(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(
        1,
        proxy_overrides={"admission": AdmissionConfig(max_in_flight_per_backend=1, max_queue=5)},
        engine_options={"fake_tokens_per_s": 100.0},
    )

    async def one() -> httpx.Response:
        return await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 5})

    responses = await asyncio.gather(*(one() for _ in range(30)))
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    assert codes[200] >= 6 and codes[429] >= 10
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["code"] == "overloaded"
    status = (await client.get(f"{cluster.ops_url}/queue/status")).json()
    assert status["max"] == 5 and status["size"] == 0


async def test_low_priority_is_served_under_sustained_high_load(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(
        1,
        proxy_overrides={"admission": AdmissionConfig(max_in_flight_per_backend=1, aging_s=0.25)},
        engine_options={"fake_tokens_per_s": 100.0},
    )
    stop = asyncio.Event()
    high_done = 0

    async def high_load() -> None:
        nonlocal high_done
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            r = await client.post(
                f"{cluster.url}/inference",
                json={"prompt": "h", "max_tokens": 3},
                headers={"X-Priority": "high"},
            )
            assert r.status_code == 200
            high_done += 1

    loaders = [asyncio.create_task(high_load()) for _ in range(4)]
    await wait_for(lambda: cluster.proxy.admission.status()["by_priority"]["high"] >= 2, 3.0)
    started = time.monotonic()
    r = await client.post(
        f"{cluster.url}/inference", json={"prompt": "l", "max_tokens": 3, "priority": "low"}
    )
    waited = time.monotonic() - started
    high_during = high_done
    stop.set()
    await asyncio.gather(*loaders)
    assert r.status_code == 200
    # two aging periods (0.5 s) plus a few 30 ms generations: well under the 10 s of load
    assert waited < 1.5, waited
    assert high_during > 0
    assert cluster.proxy.admission.served_from_queue[2] == 1  # Priority.LOW


async def test_batch_inference_in_order_with_per_item_errors(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(2)
    items = [
        {"prompt": "one", "max_tokens": 2},
        {"prompt": "two", "max_tokens": 2},
        {"prompt": 3},
        {"prompt": "four", "max_tokens": 2},
        {"prompt": "five", "max_tokens": 2},
    ]
    r = await client.post(
        f"{cluster.url}/batch_inference", json={"requests": items}, headers={"X-Request-ID": "batch1"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["succeeded"] == 4 and body["failed"] == 1
    assert [res["index"] for res in body["results"]] == [0, 1, 2, 3, 4]
    assert [res["status"] for res in body["results"]] == [200, 200, 400, 200, 200]
    assert body["results"][2]["error"]["param"] == "prompt"
    assert {res["backend"] for res in body["results"] if res["status"] == 200} == {"node-1", "node-2"}
    assert body["results"][0]["request_id"] == "batch1.0"
    assert body["results"][0]["response"]["request_id"] == "batch1.0"
    for bad in (b"{}", b'{"requests": []}', b'{"requests": "x"}', b"nope"):
        r = await client.post(f"{cluster.url}/batch_inference", content=bad)
        assert r.status_code == 400


async def test_slow_stream_marks_suspect_but_never_ejects(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(
        1,
        proxy_overrides={
            "upstream": UpstreamConfig(slow_chunk_s=0.1),
            "outlier": OutlierConfig(consecutive_failures=1),
        },
        engine_options={"fake_tokens_per_s": 5.0},
    )
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    async with client.stream("POST", f"{cluster.url}/v1/chat/completions", json=chat) as r:
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    worker = cluster.proxy.registry.routable()[0]
    assert worker.suspect and worker.status is WorkerStatus.HEALTHY
    assert (await client.get(f"{cluster.ops_url}/workers")).json()["workers"][0]["suspect"] is True


async def test_stream_stalling_past_idle_timeout_ends_with_error_event(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    """With migration off, a stalled stream ends with an error event (with it on, see
    tests/system/test_stream_migration.py)."""
    cluster = await make_cluster(
        1,
        proxy_overrides={
            "upstream": UpstreamConfig(stream_idle_timeout_s=0.3),
            "migration": MigrationConfig(max_per_stream=0),
        },
        engine_options={"fake_tokens_per_s": 2.0},
    )
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True}
    async with client.stream("POST", f"{cluster.url}/v1/chat/completions", json=chat) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert "upstream_error" in lines[-1] and "no stream data" in lines[-1]
    errors = cluster.proxy.stats.backends[cluster.backends[0].advertise_addr].errors
    assert errors == {"timeout": 1}
    await wait_for(lambda: cluster.backends[0].service.in_flight == 0, 2.0)


async def test_consistent_hash_sessions_stick_and_few_move_on_join(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(3, proxy_overrides={"policy": "consistent_hash"})

    async def owners(sessions: list[str]) -> dict[str, str]:
        out = {}
        for session in sessions:
            r = await client.post(
                f"{cluster.url}/inference",
                json={"prompt": "x", "max_tokens": 1},
                headers={"X-Session-ID": session},
            )
            out[session] = r.headers["x-inferno-backend"]
        return out

    sessions = [f"s{i}" for i in range(10)]
    first = await owners(sessions)
    same = 0
    for _ in range(19):
        again = await owners(sessions)
        same += sum(again[s] == first[s] for s in sessions)
    assert same / 190 >= 0.95  # (in fact 100%)
    many = [f"user-{i}" for i in range(200)]
    before = await owners(many)
    await cluster.add_backend(node_id="node-4")
    await cluster.wait_healthy(4)
    after = await owners(many)
    moved = [s for s in many if before[s] != after[s]]
    assert 0.08 < len(moved) / len(many) < 0.45, len(moved)
    assert {after[s] for s in moved} == {"node-4"}


async def test_flapping_backend_follows_the_probe_thresholds_exactly(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    from inferno.config import HealthCheckConfig

    health = HealthCheckConfig(interval_s=0.05, timeout_s=0.5, unhealthy_threshold=2, healthy_threshold=2)
    cluster = await make_cluster(1, proxy_overrides={"health": health}, chaos=True)
    backend = cluster.backends[0]
    worker = cluster.proxy.registry.get(backend.advertise_addr)
    transitions: list[str] = []
    last = worker.status.value

    def watch() -> bool:
        nonlocal last
        if worker.status.value != last:
            transitions.append(worker.status.value)
            last = worker.status.value
        return not chaos.health_pattern

    chaos = backend.app.chaos
    assert chaos is not None
    # up/down every probe, then down twice, up/down again, then up twice
    pattern = "UD" * 10 + "DD" + "UD" * 5 + "UU"
    r = await client.post(
        f"http://{HOST}:{backend.data_address[1]}/simulate/health", json={"pattern": pattern}
    )
    assert r.status_code == 200
    await wait_for(watch, timeout_s=10.0, step_s=0.005)
    await asyncio.sleep(0.2)
    watch()
    assert transitions == ["unhealthy", "healthy"], transitions


async def test_stream_headers_and_first_chunk_share_one_first_byte_budget(client: httpx.AsyncClient) -> None:
    """A backend that trickles headers, then its first chunk, each just inside the budget,
    is cut off at the budget and the stream is served elsewhere."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                if head.startswith(b"GET /health"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                await asyncio.sleep(0.6)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                await writer.drain()
                await asyncio.sleep(0.6)
                event = b'data: {"text": "late"}\n\n'
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
                await writer.drain()

    rogue = await asyncio.start_server(trickle, HOST, 0)
    rogue_addr = f"{HOST}:{rogue.sockets[0].getsockname()[1]}"
    proxy = ProxyServer(
        proxy_config(
            backend_servers=(rogue_addr,),
            upstream=UpstreamConfig(connect_timeout_s=1.0, stream_first_byte_timeout_s=1.0),
        )
    )
    await proxy.start()
    good = BackendServer(backend_config(f"{HOST}:{proxy.ops_address[1]}", node_id="good"))
    await good.start()
    try:
        await wait_for(lambda: len(proxy.registry.routable()) == 2)
        url = f"http://{HOST}:{proxy.data_address[1]}/inference"
        served = []
        for _ in range(2):  # round robin: one of the two starts on the rogue
            started = time.monotonic()
            r = await client.post(url, json={"prompt": "x", "max_tokens": 2, "stream": True})
            elapsed = time.monotonic() - started
            assert r.status_code == 200 and b"late" not in r.content, r.content[:200]
            served.append((r.headers["x-inferno-backend"], elapsed))
        assert [node for node, _ in served] == ["good", "good"], served
        assert max(elapsed for _, elapsed in served) < 1.15, served
    finally:
        await good.aclose()
        await proxy.aclose()
        rogue.close()
