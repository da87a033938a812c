"""Registrations by host name: resolved once, with a deadline, never on the probe path.

The proxy runs in-process on real sockets; its resolver's lookup is a fake that
hangs (bounded) or fails, standing in for a DNS server that never answers, so
the test needs no network.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from inferno.config import RegistryConfig
from inferno.proxy.server import ProxyServer
from inferno.registry.resolver import Resolver
from tests.conftest import HOST, Cluster, proxy_config, wait_for


class FakeDns:
    """``*.hang.test`` hangs until released (at most 10 s), ``*.nx.test`` does not exist."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, host: str, port: int) -> str:
        self.calls += 1
        if host.endswith(".hang.test"):
            self.release.wait(timeout=10)
            raise OSError("no answer")
        if host.endswith(".nx.test"):
            raise OSError("NXDOMAIN")
        if host == "backend.local.test":
            return HOST
        raise OSError("unknown")


async def test_unresolvable_registrations_neither_grow_the_registry_nor_delay_probes() -> None:
    dns = FakeDns()
    config = proxy_config(registry=RegistryConfig(resolve_timeout_s=0.3, ttl_s=10.0, sweep_interval_s=0.1))
    proxy = ProxyServer(config, resolver=Resolver(timeout_s=0.3, lookup=dns))
    await proxy.start()
    cluster = Cluster(proxy, [])
    try:
        real = await cluster.add_backend(node_id="real")
        await cluster.wait_healthy(1)
        url = f"{cluster.ops_url}/registration"
        async with httpx.AsyncClient(timeout=10) as http:

            async def register(i: int) -> int:
                host = f"b{i}.hang.test" if i % 2 else f"b{i}.nx.test"
                r = await http.post(url, json={"address": f"{host}:3000", "node_id": f"n{i}"})
                return r.status_code

            async def keep_requesting() -> list[int]:
                codes = []
                for _ in range(20):
                    r = await http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
                    codes.append(r.status_code)
                    await asyncio.sleep(0.05)
                return codes

            serving = asyncio.create_task(keep_requesting())
            codes = await asyncio.gather(*(register(i) for i in range(300)))
            served = await serving
            assert set(codes) <= {400, 429}, sorted(set(codes))
            assert 400 in codes
            assert served == [200] * 20
            # Probes of the real backend kept running at their interval meanwhile.
            assert proxy.registry.counts()["total"] == 1
            worker = proxy.registry.get(real.advertise_addr)
            assert worker is not None and worker.status.value == "healthy"
            assert worker.consecutive_failures == 0
            # Hung lookups hold at most the resolver's own threads, never more.
            assert dns.calls <= 300
            # A name that resolves is pinned: requests reach it without asking DNS again.
            named = await cluster.add_backend(
                node_id="named", advertise_addr=None, discovery_lb=None, listen_host=HOST
            )
            port = named.data_address[1]
            # While the resolver's threads are all stuck, named registrations wait their
            # turn (429, retried by backends); registrations by IP never need them.
            r = await http.post(url, json={"address": f"backend.local.test:{port}", "node_id": "named"})
            assert r.status_code == 429, r.text
            dns.release.set()

            async def registered() -> bool:
                body = {"address": f"backend.local.test:{port}", "node_id": "named"}
                return (await http.post(url, json=body)).status_code == 200

            await wait_for(registered, timeout_s=5, step_s=0.1)
            calls = dns.calls
            await wait_for(lambda: len(proxy.registry.routable()) == 2, timeout_s=5)
            for _ in range(4):
                r = await http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
                assert r.status_code == 200
            assert dns.calls == calls
    finally:
        dns.release.set()
        for backend in cluster.backends:
            await backend.aclose()
        await proxy.aclose()


async def test_registry_full_is_429(make_cluster: Any) -> None:
    cluster = await make_cluster(1, proxy_overrides={"registry": RegistryConfig(max_backends=2)})
    async with httpx.AsyncClient(timeout=5) as http:
        url = f"{cluster.ops_url}/registration"
        ok = await http.post(url, json={"address": f"{HOST}:1", "node_id": "a"})
        full = await http.post(url, json={"address": f"{HOST}:2", "node_id": "b"})
    assert ok.status_code == 200
    assert full.status_code == 429 and full.json()["error"]["code"] == "registry_full"
