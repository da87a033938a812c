"""Membership over time: restarts, disconnects, drain, and the openai client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai

from inferno.proxy.server import ProxyServer
from tests.conftest import HOST, proxy_config, wait_for


async def test_backends_reregister_after_proxy_restart(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2)
    data_port, ops_port = cluster.proxy.data_address[1], cluster.proxy.ops_address[1]
    await cluster.proxy.aclose()
    # The backends keep retrying (backoff capped at the 0.2 s heartbeat interval).
    await asyncio.sleep(0.5)
    restarted = ProxyServer(proxy_config(listen_port=data_port, ops_port=ops_port))
    await restarted.start()
    cluster.proxy = restarted
    began = time.monotonic()
    try:
        await wait_for(lambda: len(restarted.registry.routable()) == 2, timeout_s=3.0, step_s=0.01)
        elapsed = time.monotonic() - began
        # within about one heartbeat interval (0.2 s) plus scheduling slack
        assert elapsed < 0.2 + 0.5, elapsed
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "back?", "max_tokens": 1})
        assert r.status_code == 200
    finally:
        await restarted.aclose()


async def test_client_disconnect_mid_stream_frees_backend_slot(make_cluster: Any) -> None:
    cluster = await make_cluster(1, engine_options={"fake_tokens_per_s": 20.0})
    backend = cluster.backends[0]
    body = b'{"messages":[{"role":"user","content":"long"}],"max_tokens":200,"stream":true}'
    reader, writer = await asyncio.open_connection(HOST, cluster.proxy.data_address[1])
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"data: "), timeout=5.0)
    assert b"200 OK" in first
    assert backend.service.in_flight == 1
    writer.close()  # the client goes away after the first token
    await wait_for(lambda: backend.service.in_flight == 0, timeout_s=2.0)
    await wait_for(lambda: cluster.proxy.registry.routable()[0].in_flight == 0, timeout_s=2.0)
    assert cluster.proxy.stats.in_flight == 0
    # 200 tokens at 20/s would take 10 s: the generation was stopped, not finished.
    assert backend.service.requests_served == 0


async def test_official_openai_client_against_proxy(make_cluster: Any) -> None:
    cluster = await make_cluster(2)
    ai = openai.AsyncOpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)
    models = await ai.models.list()
    assert [m.id for m in models.data] == ["fake"]
    done = await ai.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert done.choices[0].message.content and done.usage and done.usage.completion_tokens == 5
    stream = await ai.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p for p in pieces if p) == done.choices[0].message.content
    try:
        await ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as exc:
        assert "not served" in str(exc)
    else:
        raise AssertionError("unknown model should be a 404")
    await ai.close()


async def test_draining_backend_leaves_routing_and_finishes_work(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(2, engine_options={"fake_tokens_per_s": 50.0})
    draining = cluster.backends[0]
    slow = asyncio.create_task(
        client.post(
            f"http://{HOST}:{draining.data_address[1]}/inference",
            json={"prompt": "slow", "max_tokens": 20},
        )
    )
    await wait_for(lambda: draining.service.in_flight == 1)
    drain = asyncio.create_task(draining.drain(grace_s=5.0))
    await wait_for(lambda: cluster.proxy.registry.get(draining.advertise_addr) is None, 2.0)
    r = await client.post(f"http://{HOST}:{draining.data_address[1]}/inference", json={"prompt": "x"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    for _ in range(4):
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200 and r.headers["x-inferno-backend"] == "node-2"
    finished = await slow
    assert finished.status_code == 200 and finished.json()["usage"]["completion_tokens"] == 20
    await drain
