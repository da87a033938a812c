"""Registrations that would hurt the proxy: pointing it at itself, and floods of wrong tokens."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inferno.errors import ConfigError
from inferno.orchestrators.processes import free_port
from inferno.proxy.server import ProxyServer
from inferno.registry.loops import OwnAddresses
from tests.conftest import TEST_TOKEN, proxy_config

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@contextlib.asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[ProxyServer]:
    proxy = ProxyServer(proxy_config(cluster_token=SecretStr(TEST_TOKEN), **overrides))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()


async def test_the_proxy_refuses_to_register_its_own_addresses(client: httpx.AsyncClient) -> None:
    async with running() as proxy:
        ops = f"http://127.0.0.1:{proxy.ops_address[1]}"
        data, ops_port = proxy.data_address[1], proxy.ops_address[1]
        for address in (
            f"127.0.0.1:{data}",
            f"localhost:{data}",
            f"127.0.0.1:{ops_port}",
            f"0.0.0.0:{data}",  # a wildcard is kept under the peer's address: 127.0.0.1
            f"[::ffff:127.0.0.1]:{data}",
        ):
            r = await client.post(
                f"{ops}/registration", json={"address": address, "node_id": "me"}, headers=AUTH
            )
            assert r.status_code == 400, (address, r.text)
            assert r.json()["error"]["param"] == "address" and "own" in r.json()["error"]["message"]
        assert proxy.registry.all() == []
        # Another port on the same host is a backend like any other.
        other = f"127.0.0.1:{free_port()}"
        r = await client.post(f"{ops}/registration", json={"address": other, "node_id": "b"}, headers=AUTH)
        assert r.status_code == 200 and [w.address for w in proxy.registry.all()] == [other]


async def test_a_proxy_on_the_any_address_refuses_every_local_form_of_itself(
    client: httpx.AsyncClient,
) -> None:
    # Bound to 0.0.0.0 (traffic still goes to 127.0.0.1 only): every loopback address reaches it.
    async with running(listen_host="0.0.0.0", ops_host="0.0.0.0") as proxy:
        ops = f"http://127.0.0.1:{proxy.ops_address[1]}"
        data = proxy.data_address[1]
        for address in (f"127.0.0.2:{data}", f"0.0.0.0:{data}", f"localhost:{proxy.ops_address[1]}"):
            r = await client.post(
                f"{ops}/registration", json={"address": address, "node_id": "me"}, headers=AUTH
            )
            assert r.status_code == 400, (address, r.text)
        assert proxy.registry.all() == []


async def test_static_backends_naming_the_proxy_are_a_config_error() -> None:
    port = free_port()
    proxy = ProxyServer(proxy_config(listen_port=port, backend_servers=(f"localhost:{port}",), insecure=True))
    try:
        with pytest.raises(ConfigError, match="own address"):
            await proxy.start()
    finally:
        await proxy.aclose()


def test_own_addresses_match_ips_and_wildcards() -> None:
    own = OwnAddresses(is_local=lambda ip: ip in {"127.0.0.1", "10.0.0.5"})
    own.set([("10.0.0.5", 8080), ("0.0.0.0", 6100)])
    assert own.contains("10.0.0.5", 8080) and own.contains("::ffff:10.0.0.5", 8080)
    assert not own.contains("127.0.0.1", 8080)  # bound to one address only: loopback is elsewhere
    assert own.contains("127.0.0.1", 6100) and own.contains("10.0.0.5", 6100)
    assert not own.contains("10.0.0.6", 6100) and not own.contains("10.0.0.5", 3000)


async def test_a_flood_of_wrong_tokens_writes_a_line_not_a_line_each(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as proxy:
        ops = f"http://127.0.0.1:{proxy.ops_address[1]}"
        body = {"address": f"127.0.0.1:{free_port()}", "node_id": "intruder"}
        with caplog.at_level(logging.WARNING, logger="inferno.security.token"):
            for i in range(200):
                headers = {"Authorization": f"Bearer wrong-{i}"} if i % 2 else {}
                assert (
                    await client.post(f"{ops}/registration", json=body, headers=headers)
                ).status_code == 401
        lines = [r for r in caplog.records if r.name == "inferno.security.token"]
        assert len(lines) == 1 and "Refused POST /registration from 127.0.0.1" in lines[0].getMessage()
        metrics = (await client.get(f"{ops}/metrics")).text
        assert (
            'inferno_cluster_token_refusals_total{endpoint="registration",reason="missing"} 100.0' in metrics
        )
        assert 'inferno_cluster_token_refusals_total{endpoint="registration",reason="wrong"} 100.0' in metrics
        assert proxy.registry.all() == []
