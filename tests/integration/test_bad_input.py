"""Nothing a client sends may crash or wedge the proxy or the backend."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import HOST

CHAT = "/v1/chat/completions"
BAD_REQUESTS: list[tuple[str, str, bytes | None, int, str]] = [
    # (method, path, body, status, fragment of the error message)
    ("POST", "/inference", b"{not json", 400, "not valid JSON"),
    ("POST", "/inference", b"", 400, "empty"),
    ("POST", "/inference", b'"just a string"', 400, "JSON object"),
    ("POST", "/inference", b'{"prompt": 42}', 400, "prompt"),
    ("POST", "/inference", b'{"max_tokens": 3}', 400, "missing required field 'prompt'"),
    ("POST", "/inference", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("POST", "/inference", b'{"prompt": "x", "max_tokens": 100000}', 400, "at most 4096"),
    ("POST", "/inference", b'{"prompt": "x", "max_tokens": true}', 400, "max_tokens"),
    ("POST", "/inference", b'{"prompt": "x", "temperature": -1}', 400, "temperature"),
    ("POST", "/inference", b'{"prompt": "x", "priority": "urgent"}', 400, "priority"),
    ("POST", "/inference", b'{"prompt": "x", "model": "gpt-9"}', 404, "not served"),
    ("GET", "/inference", None, 405, "POST"),
    ("POST", "/nope", b"{}", 404, "no route"),
    ("POST", CHAT, b'{"messages": []}', 400, "messages"),
    ("POST", CHAT, b'{"messages": [{"role": "user"}], "n": 3}', 400, "'n'"),
    ("POST", CHAT, b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "role"),
    (
        "POST",
        CHAT,
        b'{"model": "unknown", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "not served",
    ),
    ("POST", "/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt"),
]


async def _check_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"], error
    assert {"message", "type", "code", "param"} <= set(error)


@pytest.mark.parametrize(("method", "path", "body", "status", "fragment"), BAD_REQUESTS)
async def test_bad_input_gets_clear_4xx_from_proxy_and_backend(
    make_cluster: Any,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    fragment: str,
) -> None:
    cluster = await make_cluster(1)
    backend_url = f"http://{HOST}:{cluster.backends[0].data_address[1]}"
    for base in (cluster.url, backend_url):
        if base == backend_url and "priority" in fragment:
            continue  # priority is the proxy's business
        r = await client.request(method, f"{base}{path}", content=body)
        await _check_error(r, status, fragment if base == cluster.url else fragment.split("'", maxsplit=1)[0])
    # and both keep serving
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "still there?", "max_tokens": 2})
    assert r.status_code == 200
    # a client's bad request never counts against the backend
    assert cluster.proxy.registry.routable()[0].consecutive_failures == 0


async def test_oversized_body_is_413_and_server_survives(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(1)
    huge = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    r = await client.post(f"{cluster.url}/inference", content=huge)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200


async def _raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=3.0)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /inference HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /inference HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
async def test_malformed_http_gets_400_and_connection_closed(
    make_cluster: Any, client: httpx.AsyncClient, payload: bytes
) -> None:
    cluster = await make_cluster(1)
    for port in (cluster.proxy.data_address[1], cluster.proxy.ops_address[1]):
        answer = await _raw(port, payload)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        assert b'"error"' in answer
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200


async def test_half_sent_request_does_not_wedge_others(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(1)
    _reader, writer = await asyncio.open_connection(HOST, cluster.proxy.data_address[1])
    writer.write(b'POST /inference HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"pro')
    await writer.drain()
    try:
        r = await client.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200
    finally:
        writer.close()


async def test_bad_registration_is_400(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(0)
    for body in (b"{", b'{"address": "x", "node_id": "n"}', b'{"address": "h:1", "node_id": "a\\nb"}'):
        r = await client.post(f"{cluster.ops_url}/registration", content=body)
        assert r.status_code == 400 and r.json()["error"]["message"]
    r = await client.delete(f"{cluster.ops_url}/registration")
    assert r.status_code == 400
    r = await client.delete(f"{cluster.ops_url}/registration", params={"node_id": "ghost"})
    assert r.status_code == 404
    assert cluster.proxy.registry.counts()["total"] == 0
