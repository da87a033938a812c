"""The dashboard's routes on a real proxy and backends: login, feed, limits, try-it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import SecretStr

from inferno.config import DashboardConfig
from tests.conftest import TEST_TOKEN, wait_for

BEARER = {"Authorization": f"Bearer {TEST_TOKEN}"}


def secured(**extra: Any) -> dict[str, Any]:
    return {
        "cluster_token": SecretStr(TEST_TOKEN),
        "dashboard": DashboardConfig(interval_s=0.1, max_clients=1),
        **extra,
    }


async def test_dashboard_needs_the_cluster_token(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(1, proxy_overrides=secured(), cluster_token=SecretStr(TEST_TOKEN))
    ops = cluster.ops_url
    page = await client.get(f"{ops}/dashboard")
    assert page.status_code == 401 and b'id="login-form"' in page.content
    for path in ("/dashboard/events", "/dashboard/api/state"):
        assert (await client.get(f"{ops}{path}")).status_code == 401
    assert (await client.post(f"{ops}/dashboard/api/try", json={})).status_code == 401

    wrong = await client.post(f"{ops}/dashboard/login", data={"token": "nope"})
    assert wrong.status_code == 401 and b'id="login-error"' in wrong.content
    assert "set-cookie" not in wrong.headers
    ok = await client.post(f"{ops}/dashboard/login", data={"token": TEST_TOKEN})
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
    cookie = ok.headers["set-cookie"].split(";", 1)[0]
    page = await client.get(f"{ops}/dashboard", headers={"Cookie": cookie})
    assert page.status_code == 200 and b'id="backends"' in page.content
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    state = await client.get(f"{ops}/dashboard/api/state", headers=BEARER)
    assert state.status_code == 200
    assert [r["node_id"] for r in state.json()["backends"]] == ["node-1"]
    out = await client.post(f"{ops}/dashboard/logout", headers={"Cookie": cookie})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    # Logging out revoked the session: the same cookie, replayed, opens nothing.
    assert (await client.get(f"{ops}/dashboard/api/state", headers={"Cookie": cookie})).status_code == 401
    assert (await client.get(f"{ops}/dashboard", headers={"Cookie": cookie})).status_code == 401

    # The page's files are served by the proxy itself; nothing else is.
    script = await client.get(f"{ops}/dashboard/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for bad in ("/dashboard/static/../routes.py", "/dashboard/static/index.html", "/dashboard/static/"):
        assert (await client.get(f"{ops}{bad}")).status_code == 404

    # Guessing is slow: after a few wrong tokens this address is refused for a while.
    codes = [
        (await client.post(f"{ops}/dashboard/login", data={"token": "guess"})).status_code for _ in range(10)
    ]
    assert codes[-1] == 429 and set(codes) == {401, 429}, codes
    refused = await client.post(f"{ops}/dashboard/login", data={"token": TEST_TOKEN})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    # ...and so are bearer tokens from that address (every way of trying a token is
    # counted), while the rest of the ops port is unaffected.
    limited = await client.get(f"{ops}/dashboard/api/state", headers=BEARER)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert (await client.get(f"{ops}/health")).status_code == 200
    metrics = (await client.get(f"{ops}/metrics")).text
    assert 'inferno_cluster_token_refusals_total{endpoint="dashboard",reason="wrong"} 10.0' in metrics


async def test_wrong_bearer_tokens_are_rate_limited_too(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(0, proxy_overrides=secured(), cluster_token=SecretStr(TEST_TOKEN))
    state = f"{cluster.ops_url}/dashboard/api/state"
    codes = [
        (await client.get(state, headers={"Authorization": f"Bearer guess-{i}"})).status_code
        for i in range(12)
    ]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    assert (await client.get(state, headers=BEARER)).status_code == 429
    assert (await client.get(f"{cluster.ops_url}/dashboard", headers=BEARER)).status_code == 429


FORM = b"application/x-www-form-urlencoded"


async def raw_post(port: int, path: bytes, body: bytes, content_type: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n" % (
            path,
            len(body),
        )
        if content_type:
            head += b"Content-Type: " + content_type + b"\r\n"
        writer.write(head + b"\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


async def test_malformed_login_forms_get_a_clear_4xx(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(0, proxy_overrides=secured(), cluster_token=SecretStr(TEST_TOKEN))
    port = cluster.proxy.ops_address[1]
    cases = [
        (b"token=%zz%", FORM, 400),  # bad percent-encoding
        (b"token=%E2%82", FORM, 400),  # percent-encoded bytes that are not UTF-8
        (b"token=\xff\xfe", FORM, 400),  # raw non-ASCII
        (b"token=a&token=b", FORM, 400),  # a repeated field
        (b"other=1", FORM, 400),  # no token field
        (b"&".join(b"f%d=1" % i for i in range(50)), FORM, 400),  # many fields
        (b"token=" + b"a" * 100_000, FORM, 413),  # a huge field
        (b'{"token": "x"}', b"application/json", 415),  # a JSON body
        (b"token=x", b"text/plain", 415),  # the wrong content type
        (b"token=x", b"", 415),  # none at all
    ]
    for body, content_type, expected in cases:
        status, answer = await raw_post(port, b"/dashboard/login", body, content_type)
        assert status == expected, (body[:40], content_type, status, answer[:200])
        assert json.loads(answer)["error"]["message"]
    # None of these was a try of a token, and the proxy serves on.
    ok = await client.post(f"{cluster.ops_url}/dashboard/login", data={"token": TEST_TOKEN})
    assert ok.status_code == 303
    assert (await client.get(f"{cluster.ops_url}/livez")).status_code == 200


async def read_events(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
            if len(events) >= count:
                break
    return events


async def test_feed_is_live_and_open_feeds_are_bounded(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2, proxy_overrides=secured(), cluster_token=SecretStr(TEST_TOKEN))
    ops = cluster.ops_url
    async with client.stream("GET", f"{ops}/dashboard/events", headers=BEARER) as feed:
        assert feed.status_code == 200
        assert feed.headers["content-type"] == "text/event-stream"
        lines = feed.aiter_lines()
        # One open dashboard is the limit here: the next gets 503 until it closes.
        second = await client.get(f"{ops}/dashboard/events", headers=BEARER)
        assert second.status_code == 503 and second.json()["error"]["code"] == "too_many_connections"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for _ in range(10):
            assert (await client.post(f"{cluster.url}/v1/chat/completions", json=body)).status_code == 200
        hello, *ticks = await asyncio.wait_for(read_events(lines, 8), timeout=10)
        assert hello["type"] == "hello" and {e["kind"] for e in hello["events"]} == {"registered"}
        assert all(t["type"] == "tick" for t in ticks)
        assert sum(r["served"] for r in ticks[-1]["backends"]) == 10
        assert max(t["point"]["rps"] for t in ticks) > 0
        # A backend leaving shows up as an event in the next ticks.
        await cluster.backends[0].aclose()
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while "removed" not in seen and "unhealthy" not in seen:
                (tick,) = await read_events(lines, 1)
                seen |= {e["kind"] for e in tick["events"]}
    # Closed: the slot is free again.
    await wait_for(lambda: cluster.proxy.feed.clients == 0, timeout_s=5)
    async with client.stream("GET", f"{ops}/dashboard/events", headers=BEARER) as again:
        assert again.status_code == 200


async def test_try_it_goes_through_the_data_port(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(2, proxy_overrides=secured(), cluster_token=SecretStr(TEST_TOKEN))
    url = f"{cluster.ops_url}/dashboard/api/try"
    result = await client.post(url, headers=BEARER, json={"kind": "chat", "prompt": "hello", "max_tokens": 5})
    assert result.status_code == 200
    body = result.json()
    assert body["status"] == 200 and body["backend"] in {"node-1", "node-2"}
    assert body["answer"] and "total;dur=" in body["server_timing"]
    assert body["usage"]["completion_tokens"] == 5
    # ...and is counted like any client's request.
    assert cluster.proxy.stats.backends[body["backend_addr"]].served() == 1
    # A model nobody serves: the proxy's own answer, shown as such.
    missing = await client.post(url, headers=BEARER, json={"kind": "chat", "model": "nope"})
    assert missing.json()["status"] == 404
    # Bad input is a 400 with a reason, and the port keeps serving.
    for bad in (b"{", b'{"kind": "video"}', b'{"kind": "chat", "model": "<script>"}', b'{"max_tokens": 0}'):
        answer = await client.post(url, headers={**BEARER, "Content-Type": "application/json"}, content=bad)
        assert answer.status_code == 400 and answer.json()["error"]["message"]
    form = await client.post(url, headers=BEARER, data={"kind": "chat"})
    assert form.status_code == 400  # a cross-site form cannot drive it
    assert (await client.get(f"{cluster.ops_url}/livez")).status_code == 200


async def test_usage_per_key_shows_on_the_dashboard(
    make_cluster: Any, client: httpx.AsyncClient, tmp_path: Any
) -> None:
    from inferno.security import KeyStore, connect

    key, _ = KeyStore(connect(tmp_path)).create("team-a")
    cluster = await make_cluster(
        1,
        proxy_overrides=secured(require_api_key=True, state_dir=str(tmp_path)),
        cluster_token=SecretStr(TEST_TOKEN),
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    auth = {"Authorization": f"Bearer {key}"}

    async def answered() -> bool:
        r = await client.post(f"{cluster.url}/v1/chat/completions", json=body, headers=auth)
        return r.status_code == 200

    await wait_for(answered, timeout_s=5, step_s=0.2)  # the proxy reads new keys within a second
    state = (await client.get(f"{cluster.ops_url}/dashboard/api/state", headers=BEARER)).json()
    assert state["usage"]["enabled"] is True
    (row,) = state["usage"]["rows"]
    assert row["key_name"] == "team-a" and row["model"] == "fake"
    assert row["requests"] >= 1 and row["completion_tokens"] >= 3
