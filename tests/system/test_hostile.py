"""A hostile client against real `inferno proxy` and `inferno backend` processes.

Every attack must end with a clear 4xx (or a clean close), the process keeps
serving others, and its memory returns to where it was.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import HOST, TEST_TOKEN, ProcessCluster, ThreadedServer, start_process_cluster

pytestmark = pytest.mark.slow

OK_BODY = b'{"prompt":"x","max_tokens":1}'
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _backend_port(cluster: ProcessCluster) -> int:
    return _port("http://" + cluster.workers()["b1"]["address"])


def _connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def _read_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read until the server closes (bounded by the socket timeout and ``limit``)."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _exchange(port: int, payload: bytes) -> bytes:
    with _connect(port) as sock:
        sock.sendall(payload)
        return _read_all(sock)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _post(port: int, path: str = "/inference", body: bytes = OK_BODY, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _still_serving(cluster: ProcessCluster) -> None:
    r = httpx.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}, timeout=10)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{cluster.ops}/livez", timeout=5).status_code == 200


@pytest.fixture
def cluster(spawn: Any) -> ProcessCluster:
    return start_process_cluster(
        spawn,
        1,
        proxy_args=("--http-max-connections", "200", "--http-max-ops-connections", "32"),
        backend_args=("--http-read-timeout-s", "2"),
    )


def _send_slowly(sock: socket.socket, header_mib: int) -> int:
    """Stream a huge header in 64 KiB pieces until the server stops reading."""
    sock.sendall(b"POST /inference HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    piece = b"a" * 65536
    with contextlib.suppress(OSError):
        while sent < header_mib << 20:
            sock.sendall(piece)
            sent += len(piece)
    return sent


def test_header_and_url_limits_on_proxy_and_backend(cluster: ProcessCluster) -> None:
    pids = {"proxy": cluster.proxy.pid, "backend": cluster.backends["b1"].pid}
    ports = {"proxy": _port(cluster.url), "backend": _backend_port(cluster)}
    for name, port in ports.items():
        before = _rss(pids[name])
        # 48 MiB of one header: refused after the first 32 KiB, never buffered whole.
        with _connect(port) as sock:
            sent = _send_slowly(sock, 48)
            answer = _read_all(sock)
        assert _status(answer) == 431, (name, answer[:200])
        assert sent < 48 << 20, f"{name} read the whole 48 MiB header"
        assert b"headers_too_large" in answer
        # one header over 8 KiB, too many headers, a request line over 8 KiB
        big = b"X-One: " + b"b" * 9000 + b"\r\n"
        assert _status(_exchange(port, _post(port, extra=big))) == 431, name
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        assert _status(_exchange(port, _post(port, extra=many))) == 431, name
        long_url = b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = _exchange(port, long_url)
        assert _status(answer) == 414, (name, answer[:200])
        assert b"u" * 50 not in answer  # the path is never echoed
        grown = _rss(pids[name]) - before
        assert grown < 16 << 20, f"{name} grew {grown / 2**20:.1f} MiB"
    _still_serving(cluster)


def test_413_reaches_the_client_and_expect_100_continue(cluster: ProcessCluster) -> None:
    for port in (_port(cluster.url), _backend_port(cluster)):
        # A 9 MiB body sent in full: the answer must be a 413, not a reset.
        body = b'{"prompt":"' + b"a" * (9 << 20) + b'"}'
        answer = httpx.post(f"http://{HOST}:{port}/inference", content=body, timeout=10)
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"
        # Expect: 100-continue with a body over the limit: 413 before any body is sent.
        with _connect(port) as sock:
            sock.sendall(
                b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\nExpect: 100-continue\r\n\r\n"
            )
            assert _status(_read_all(sock)) == 413
        # Expect: 100-continue within the limit: 100, then the real answer.
        with _connect(port) as sock:
            sock.sendall(
                _post(port, body=b"", extra=b"Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 29")
            )
            interim = sock.recv(65536)
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
            sock.sendall(OK_BODY)
            final = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :] or sock.recv(65536)
            assert _status(final) == 200, final[:200]
        # Any other expectation: 417.
        assert _status(_exchange(port, _post(port, extra=b"Expect: magic\r\n"))) == 417
    _still_serving(cluster)


def test_http_correctness(cluster: ProcessCluster) -> None:
    data, ops, backend = _port(cluster.url), _port(cluster.ops), _backend_port(cluster)
    # HEAD: headers (with the GET body's length), never a body.
    for port, path in ((data, "/v1/models"), (ops, "/health"), (ops, "/nope"), (backend, "/v1/models")):
        answer = _exchange(port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert rest == b"", (path, answer)
        assert b"Content-Length: " in head
    # 405 carries Allow.
    r = httpx.get(f"{cluster.url}/inference", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.put(f"{cluster.ops}/registration", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST, DELETE"
    # A malformed request pipelined after a valid one: the valid one is answered first.
    for port in (data, backend):
        answer = _exchange(port, _post(port) + b"NONSENSE\x00\r\n\r\n")
        first, _, rest = answer.partition(b"HTTP/1.1 400")
        assert _status(first) == 200 and b'"text"' in first, answer[:300]
        assert rest, "the malformed request got no 400"
    # Chunked trailers never override request headers.
    chunked = (
        b"POST /inference HTTP/1.1\r\nHost: x\r\nX-Request-ID: from-header\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\nX-Request-ID: from-trailer\r\n\r\n"
        % (len(OK_BODY), OK_BODY)
    )
    for port in (data, backend):
        answer = _exchange(port, chunked)
        assert _status(answer) == 200, answer[:300]
        assert b"X-Request-ID: from-header" in answer and b"from-trailer" not in answer
    # Exactly one Host.
    for port in (data, ops, backend):
        no_host = b"GET /v1/models HTTP/1.1\r\n\r\n"
        two_hosts = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        assert _status(_exchange(port, no_host)) == 400
        assert _status(_exchange(port, two_hosts)) == 400
    _still_serving(cluster)


def test_errors_never_echo_client_values(cluster: ProcessCluster) -> None:
    marker = "zq-echo-marker"
    for base in (cluster.url, f"http://{HOST}:{_backend_port(cluster)}"):
        answers = [
            httpx.post(f"{base}/{marker}", json={}, timeout=5),
            httpx.get(f"{base}/inference/{marker}", timeout=5),
            httpx.post(f"{base}/inference", json={"prompt": "x", "model": marker}, timeout=5),
            httpx.post(f"{base}/inference", json={"prompt": "x", marker: 1}, timeout=5),
            httpx.post(
                f"{base}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": [{"type": marker}]}]},
                timeout=5,
            ),
        ]
        for r in answers:
            assert 400 <= r.status_code < 500, r.text
            assert marker not in r.text, r.text
    r = httpx.get(f"{cluster.ops}/{marker}", timeout=5)
    assert r.status_code == 404 and marker not in r.text


def test_connection_flood_keeps_ops_port_answering(cluster: ProcessCluster) -> None:
    data, ops = _port(cluster.url), _port(cluster.ops)
    before = _rss(cluster.proxy.pid)
    flood: list[socket.socket] = []
    try:
        for _ in range(400):  # twice the data port's budget of 200
            flood.append(_connect(data))
        # A new data connection beyond the budget is told so and closed...
        with _connect(data) as sock:
            sock.sendall(_post(data))
            answer = _read_all(sock)
        assert _status(answer) in (0, 503), answer[:200]
        # ...while the ops port's health endpoints still answer.
        for path in ("/livez", "/health", "/metrics"):
            assert httpx.get(f"{cluster.ops}{path}", timeout=5).status_code == 200
        # A flood of the ops port itself stays within its own budget.
        ops_flood = [_connect(ops) for _ in range(64)]
        for sock in ops_flood:
            sock.close()
    finally:
        for sock in flood:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            _still_serving(cluster)
            break
        time.sleep(0.2)
    _still_serving(cluster)
    assert _rss(cluster.proxy.pid) - before < 16 << 20


def test_silent_connections_are_dropped_long_before_the_idle_timeout(cluster: ProcessCluster) -> None:
    # The backend runs with --http-read-timeout-s 2: a connection that never sends a
    # byte, and one that stops half-way through its headers, are closed by then.
    port = _backend_port(cluster)
    silent = _connect(port, timeout_s=10)
    slow = _connect(port, timeout_s=10)
    slow.sendall(b"POST /inference HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert _read_all(silent) == b""
    answer = _read_all(slow)
    elapsed = time.monotonic() - started
    assert elapsed < 6, elapsed
    assert _status(answer) == 408, answer[:200]
    silent.close()
    slow.close()


def test_registration_validation(cluster: ProcessCluster) -> None:
    url = f"{cluster.ops}/registration"
    good = {"address": f"{HOST}:1", "node_id": "n1"}
    bad = [
        {**good, "node_id": "evil\n"},
        {**good, "node_id": "evil\r\nX-Forged: 1"},
        {**good, "address": f"{HOST}:1\n"},
        {**good, "ops_address": "not an address"},
        {**good, "ops_address": f"{HOST}:1\n"},
        {**good, "models": ["m\n"]},
        {**good, "vitals": {"in_flight": 2**64 + 1}},
        {**good, "vitals": {"rss_bytes": -1}},
        {**good, "vitals": {"tokens_per_s": "NaN"}},
    ]
    for payload in bad:
        r = httpx.post(url, content=json.dumps(payload), headers=AUTH, timeout=5)
        assert r.status_code == 400, (payload, r.text)
    assert set(cluster.workers()) == {"b1"}
    r = httpx.get(f"{cluster.ops}/workers", timeout=5)
    assert r.status_code == 200
    _still_serving(cluster)


def test_registry_is_bounded(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 1, proxy_args=("--registry-max-backends", "4"))
    url = f"{cluster.ops}/registration"
    codes = [
        httpx.post(
            url, json={"address": f"{HOST}:{20000 + i}", "node_id": f"x{i}"}, headers=AUTH, timeout=5
        ).status_code
        for i in range(6)
    ]
    assert codes == [200, 200, 200, 429, 429, 429]
    r = httpx.post(url, json={"address": f"{HOST}:20099", "node_id": "y"}, headers=AUTH, timeout=5)
    assert r.status_code == 429 and r.headers["retry-after"]
    # heartbeats of known backends still pass
    heartbeat = {"address": f"{HOST}:20000", "node_id": "x0"}
    assert httpx.post(url, json=heartbeat, headers=AUTH, timeout=5).status_code == 200
    assert len(cluster.workers()) == 4
    # Nothing listens on the fake addresses: the first requests find that out (each
    # refusal takes one out of routing at once), then everything goes to the real one.
    for _ in range(3):
        httpx.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}, timeout=10)
    _still_serving(cluster)


class RogueBackend(ThreadedServer):
    """A registered 'backend' that answers with far more than any proxy should hold."""

    def __init__(self, mode: str, megabytes: int) -> None:
        self.mode = mode
        self.megabytes = megabytes
        self.sent = 0
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn, contextlib.suppress(OSError):
            request = conn.recv(65536)
            if request.startswith(b"GET /health"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                return
            piece = b"x" * (1 << 20)
            total = self.megabytes << 20
            if self.mode == "body":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % total
                )
                for _ in range(self.megabytes):
                    if self._stop.is_set():
                        return
                    conn.sendall(piece)
                    self.sent += len(piece)
            else:  # one enormous chunk of a chunked (streamed) answer
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                conn.sendall(b"%x\r\n" % total)
                for _ in range(self.megabytes):
                    if self._stop.is_set():
                        return
                    conn.sendall(piece)
                    self.sent += len(piece)


@pytest.fixture
def rogue() -> Iterator[list[RogueBackend]]:
    made: list[RogueBackend] = []
    yield made
    for r in made:
        r.close()


@pytest.mark.parametrize("mode", ["body", "chunk"])
def test_upstream_answers_are_bounded(spawn: Any, rogue: list[RogueBackend], mode: str) -> None:
    bad = RogueBackend(mode, 300)
    rogue.append(bad)
    cluster = start_process_cluster(
        spawn,
        1,
        proxy_args=(
            "--backend-servers",
            f"{HOST}:{bad.port}",
            "--upstream-max-response-bytes",
            str(4 << 20),
            "--upstream-max-chunk-bytes",
            str(1 << 20),
            "--policy",
            "round_robin",
        ),
        ready_timeout_s=30,
        expect_healthy=2,
    )
    before = _rss(cluster.proxy.pid)
    body: dict[str, Any] = {"prompt": "x", "max_tokens": 1, "stream": mode == "chunk"}
    with httpx.Client(timeout=30) as http:
        answers = [http.post(f"{cluster.url}/inference", json=body) for _ in range(4)]
    # The rogue's tries fail cleanly and are retried on the real backend.
    assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
    assert {r.headers["x-inferno-backend"] for r in answers} == {"b1"}
    assert bad.sent < 300 << 20, "the proxy read the rogue's whole answer"
    grown = _rss(cluster.proxy.pid) - before
    assert grown < 48 << 20, f"proxy grew {grown / 2**20:.1f} MiB"
    _still_serving(cluster)


def test_request_bodies_share_a_bounded_memory_budget(spawn: Any) -> None:
    """Many connections each holding a big body cannot add up past the port's budget:
    the next body gets 503 with Retry-After, and the budget comes back when they go."""
    cluster = start_process_cluster(spawn, 1, proxy_args=("--http-max-buffered-body-bytes", str(2 << 20)))
    port = _port(cluster.url)
    padded = b'{"prompt":"x","max_tokens":1}' + b" " * 1_200_000
    holders = []
    for _ in range(2):  # each sends most of a 1.2 MB body, then stalls
        sock = _connect(port)
        head = _post(port, body=padded)
        sock.sendall(head[: len(head) - 300_000])
        holders.append(sock)
    time.sleep(0.3)
    refused = _exchange(port, _post(port, body=padded))
    assert _status(refused) == 503 and b"Retry-After: 1" in refused and b"server_busy" in refused
    for sock in holders:
        sock.close()
    time.sleep(0.3)
    assert _status(_exchange(port, _post(port, body=padded))) == 200
    _still_serving(cluster)


def test_a_body_of_tiny_chunks_is_refused_before_it_costs_the_loop(spawn: Any) -> None:
    """A chunked body of one-byte chunks costs a parser callback per byte: it is refused
    with 400 once its chunks outnumber what its size allows, long before 8 MiB of them
    could hold the event loop for seconds; a body of ordinary chunks still works."""
    cluster = start_process_cluster(spawn, 1)
    port = _port(cluster.url)
    proc = psutil.Process(cluster.proxy.pid)
    cpu_before = sum(proc.cpu_times()[:2])
    with _connect(port, timeout_s=30) as sock:
        sock.sendall(
            b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        with contextlib.suppress(OSError):  # the proxy may close while we still send
            for _ in range(50):
                sock.sendall(b"1\r\n \r\n" * 20_000)  # 1,000,000 one-byte chunks in all
        answer = _read_until_answer(sock)
    assert _status(answer) == 400 and b"chunks are too small" in answer, answer[:300]
    assert sum(proc.cpu_times()[:2]) - cpu_before < 1.5
    # Ordinary chunks (about a kilobyte each) of a 2 MB body pass.
    body = b" " * 2_000_000 + b'{"prompt":"x","max_tokens":1}'
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, len(body), 1000)
    )
    with _connect(port, timeout_s=30) as sock:
        sock.sendall(
            b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        assert _status(_read_until_answer(sock)) == 200
    _still_serving(cluster)


def _read_until_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
