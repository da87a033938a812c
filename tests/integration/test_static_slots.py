"""A static backend's capacity comes from its /health answer: its slots, or 8 when it names none.

Real servers on free ports: an Inferno backend in-process, and a plain HTTP server
whose /health is JSON without a ``slots`` field (not an Inferno backend).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import httpx

from inferno.backend.server import BackendServer
from inferno.proxy.admission import DEFAULT_LIMIT
from inferno.proxy.server import ProxyServer
from tests.conftest import HOST, ThreadedServer, backend_config, proxy_config, wait_for


class PlainHealthServer(ThreadedServer):
    """Answers every request with 200 and ``body`` (JSON), keep-alive."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            buffered = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffered:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buffered += chunk
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                self.requests += 1
                body = self.body
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )


async def _workers(proxy: ProxyServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        r = await http.get(f"http://{HOST}:{proxy.ops_address[1]}/workers")
        assert r.status_code == 200, r.text
        workers: list[dict[str, Any]] = r.json()["workers"]
        return workers


async def test_a_static_inferno_backend_is_given_the_slots_its_health_advertises() -> None:
    backend = BackendServer(
        backend_config(None, node_id="three", engine_options={"fake_tokens_per_s": 5000.0, "n_parallel": 3})
    )
    await backend.start()
    address = f"{HOST}:{backend.data_address[1]}"
    proxy = ProxyServer(proxy_config(backend_servers=(address,)))
    try:
        await proxy.start()
        worker = proxy.registry.get(address)
        assert worker is not None
        # routable from the start; the first probe goes out at once and tells its slots
        assert worker.routable
        await wait_for(lambda: worker.vitals.slots == 3, 3.0)
        assert proxy.admission.limit(worker) == 3
        (listed,) = await _workers(proxy)
        assert listed["address"] == address and listed["source"] == "static"
        assert listed["vitals"]["slots"] == 3
    finally:
        await proxy.aclose()
        await backend.aclose()


async def test_a_static_backend_whose_health_names_no_slots_keeps_the_default() -> None:
    plain = PlainHealthServer(b'{"status": "ok"}')
    address = f"{HOST}:{plain.port}"
    proxy = ProxyServer(proxy_config(backend_servers=(address,)))
    try:
        await proxy.start()
        worker = proxy.registry.get(address)
        assert worker is not None
        await wait_for(lambda: plain.requests >= 2, 3.0)  # probed, and probed again
        assert worker.routable and worker.vitals.slots == 0
        assert proxy.admission.limit(worker) == DEFAULT_LIMIT == 8
        (listed,) = await _workers(proxy)
        assert listed["status"] == "healthy" and listed["vitals"]["slots"] == 0
        # one that starts advertising (say an Inferno backend now listens there) is believed,
        # garbage is not, and a huge number is clamped
        plain.body = b'{"status": "ok", "slots": 5}'
        await wait_for(lambda: proxy.admission.limit(worker) == 5, 3.0)
        plain.body = b'{"status": "ok", "slots": "lots"}'
        await wait_for(lambda: proxy.admission.limit(worker) == DEFAULT_LIMIT, 3.0)
        plain.body = b'{"status": "ok", "slots": 99999999}'
        await wait_for(lambda: proxy.admission.limit(worker) == 4096, 3.0)
    finally:
        await proxy.aclose()
        plain.close()
