"""Hostile and odd backends against a real `inferno proxy` process.

A backend may speak legal but unusual HTTP (interim 1xx answers), or say more than
it was asked for. Whatever it does, no client may receive another client's answer:
a pooled connection is reused only after its previous answer was read to the end
and nothing followed it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from inferno.engines.base import GenerationRequest
from inferno.engines.fake import fake_tokens
from tests.conftest import HOST, ProcessCluster, ThreadedServer, start_process_cluster

pytestmark = pytest.mark.slow

#: what the scripted backend sends for one request: (request id, the raw request) ->
#: parts, written apart (a short pause between them), as a real server flushes an
#: interim answer
Script = Callable[[str, bytes], list[bytes]]


def answer(rid: str, status: bytes = b"200 OK") -> bytes:
    body = b'{"object":"inference","text":"echo:%s","finish_reason":"stop"}' % rid.encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nX-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (
            status,
            rid.encode(),
            len(body),
            body,
        )
    )


class ScriptedBackend(ThreadedServer):
    """A keep-alive HTTP/1.1 server on loopback whose answers follow a script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.served = 0
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffered = b""
        with conn, contextlib.suppress(OSError):
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, rest = buffered.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                need = int(length.group(1)) if length else 0
                while len(rest) < need:
                    data = conn.recv(65536)
                    if not data:
                        return
                    rest += data
                buffered = rest[need:]
                if head.startswith(b"GET /health"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                rid = re.search(rb"(?i)\r\nx-request-id: *([^\r]+)", head)
                self.served += 1
                for index, part in enumerate(
                    self.script(rid.group(1).decode() if rid else "-", head + b"\r\n\r\n" + rest[:need])
                ):
                    if index:
                        time.sleep(0.03)
                    conn.sendall(part)


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedBackend]]:
    made: list[ScriptedBackend] = []

    def factory(script: Script) -> ScriptedBackend:
        backend = ScriptedBackend(script)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _cluster(spawn: Any, rogue: ScriptedBackend) -> ProcessCluster:
    return start_process_cluster(
        spawn,
        1,
        proxy_args=("--backend-servers", f"{HOST}:{rogue.port}", "--policy", "round_robin"),
        ready_timeout_s=30,
        expect_healthy=2,
    )


def _each_gets_its_own(
    cluster: ProcessCluster, rogue: ScriptedBackend, n: int = 24, pause_s: float = 0.0
) -> None:
    """Sequential requests (so pooled sockets are reused): each answer is 200 and,
    where the rogue served it, carries its own request id and nobody else's.
    ``pause_s`` between requests leaves pooled sockets idle for that long."""
    with httpx.Client(timeout=10) as http:
        for i in range(n):
            time.sleep(pause_s)
            rid = f"req-{i}"
            r = http.post(
                f"{cluster.url}/inference",
                json={"prompt": "x", "max_tokens": 1},
                headers={"X-Request-ID": rid},
            )
            assert r.status_code == 200, (i, r.status_code, r.text[:200])
            echoed = re.findall(r"echo:([\w-]+)", r.text)
            assert echoed in ([], [rid]), (rid, r.text[:300])
    assert rogue.served >= n // 3, rogue.served


@pytest.mark.parametrize("interims", [b"100 Continue", b"103 Early Hints", b"100 Continue|103 Early Hints"])
def test_interim_answers_are_dropped_and_never_relayed(spawn: Any, scripted: Any, interims: bytes) -> None:
    def script(rid: str, _: bytes) -> list[bytes]:
        return [
            b"HTTP/1.1 %s\r\n%s\r\n"
            % (s, b"Link: </a.css>; rel=preload\r\n" if s.startswith(b"103") else b"")
            for s in interims.split(b"|")
        ] + [answer(rid)]

    rogue = scripted(script)
    _each_gets_its_own(_cluster(spawn, rogue), rogue)


@pytest.mark.parametrize("when", ["same write", "while idle", "racing the next request"])
def test_bytes_after_an_answer_never_reach_the_next_client(spawn: Any, scripted: Any, when: str) -> None:
    # The rogue follows each real answer with a second, unasked one naming a bogus id:
    # in the same write, or a moment later while the socket idles in the pool.
    if when == "same write":
        rogue = scripted(lambda rid, _: [answer(rid) + answer("someone-else")])
    else:
        rogue = scripted(lambda rid, _: [answer(rid), answer("someone-else")])
    # Racing: the stray arrives after the next request went out on the same socket; it
    # echoes another request id, so the proxy refuses it and retries elsewhere.
    _each_gets_its_own(_cluster(spawn, rogue), rogue, pause_s=0.12 if when == "while idle" else 0.0)


def test_switching_protocols_fails_the_try_and_is_retried(spawn: Any, scripted: Any) -> None:
    rogue = scripted(lambda rid, _: [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", answer(rid)])
    cluster = _cluster(spawn, rogue)
    with httpx.Client(timeout=10) as http:
        for i in range(4):
            r = http.post(
                f"{cluster.url}/inference",
                json={"prompt": "x", "max_tokens": 1},
                headers={"X-Request-ID": f"s-{i}"},
            )
            # Served by the real backend, never with the rogue's echo.
            assert r.status_code == 200 and "echo:" not in r.text, r.text[:300]


def test_interim_answers_before_a_stream_are_dropped(spawn: Any, scripted: Any) -> None:
    def script(rid: str, _: bytes) -> list[bytes]:
        event = b'data: {"text": "echo:%s"}\n\n' % rid.encode()
        done = b"data: [DONE]\n\n"
        return [
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(event), event, len(done), done),
        ]

    rogue = scripted(script)
    cluster = _cluster(spawn, rogue)
    with httpx.Client(timeout=10) as http:
        for i in range(12):
            rid = f"st-{i}"
            body = {"prompt": "x", "max_tokens": 1, "stream": True}
            r = http.post(f"{cluster.url}/inference", json=body, headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text[:300]
            assert re.findall(r"echo:([\w-]+)", r.text) in ([], [rid]), r.text[:300]
    assert rogue.served >= 4


@pytest.mark.parametrize("separate_via_line", [False, True])
def test_a_request_that_comes_back_to_the_proxy_is_refused_as_a_loop(
    spawn: Any, scripted: Any, separate_via_line: bool
) -> None:
    """A 'backend' that hands every request back to the proxy (a registration at the
    proxy's own address, or a balancer in front of it) makes one request a loop: the
    proxy sees its own Via entry and answers 508 at the second hop, not thousands."""
    target: list[int] = []

    def reflect(rid: str, raw: bytes) -> list[bytes]:
        with socket.create_connection((HOST, target[0]), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(raw)
            reply = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    reply += chunk
                    head, sep, body = reply.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    if sep and length and len(body) >= int(length.group(1)):
                        break
        return [reply]

    rogue = scripted(reflect)
    if separate_via_line:
        # An intermediary that adds its own Via line, after the proxy's, instead of
        # extending the header.
        plain = reflect
        rogue.script = lambda rid, raw: plain(rid, raw.replace(b"\r\n\r\n", b"\r\nVia: 1.1 fwd\r\n\r\n", 1))
    cluster = start_process_cluster(
        spawn, 0, proxy_args=("--backend-servers", f"{HOST}:{rogue.port}"), expect_healthy=1
    )
    target.append(int(cluster.url.rsplit(":", 1)[1]))
    r = httpx.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}, timeout=10)
    assert r.status_code == 508 and r.json()["error"]["code"] == "loop_detected", r.text[:300]
    # One hop back at most per try (the 508 is retried like any 5xx, then returned).
    assert 1 <= rogue.served <= 3
    metrics = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    assert f"inferno_loops_detected_total {float(rogue.served)}" in metrics
    # A chain longer than any real deployment is refused too, and the proxy serves on.
    chain = ", ".join(f"1.1 hop{i}" for i in range(17))
    r = httpx.post(f"{cluster.url}/inference", json={"prompt": "x"}, headers={"Via": chain}, timeout=5)
    assert r.status_code == 508


def chat_event(token: str, first: bool) -> bytes:
    """One OpenAI chat chunk as a backend writes it (the first carries the role)."""
    delta = {"role": "assistant", "content": token} if first else {"content": token}
    event = {
        "id": "chatcmpl-rogue",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def chunked_stream(parts: list[bytes]) -> list[bytes]:
    """A whole streamed answer, one HTTP chunk per part."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    ]


def _streams_read_whole(cluster: ProcessCluster, prompt: str, full: list[str], hidden: str) -> None:
    """Four streamed chats: each ends with [DONE], one id, the exact text, and no error
    (nor ``hidden``) anywhere in it."""
    chat = {
        "model": "fake",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": len(full),
        "stream": True,
        "temperature": 0,
    }
    with httpx.Client(timeout=10) as http:
        for _ in range(4):
            r = http.post(f"{cluster.url}/v1/chat/completions", json=chat)
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text[-300:]
            assert hidden not in r.text and '"error"' not in r.text, r.text[-500:]
            events = [json.loads(x[6:]) for x in r.text.split("\n") if x.startswith("data: {")]
            text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
            assert text == "".join(full), text
            assert len({e["id"] for e in events}) == 1


def test_an_error_event_mid_stream_is_never_relayed_and_the_stream_goes_on(spawn: Any, scripted: Any) -> None:
    """A backend that fails mid-stream with an error event: the client never sees the
    event, the stream continues on the other backend, and reads as one answer."""
    prompt = "tell me a story"
    full = fake_tokens(GenerationRequest(max_tokens=12, messages=(("user", prompt),)))
    died = b'data: {"error":{"message":"engine died","type":"server_error","code":"x"}}\n\n'
    rogue = scripted(
        lambda rid, _: chunked_stream([chat_event(t, i == 0) for i, t in enumerate(full[:5])] + [died])
    )
    cluster = _cluster(spawn, rogue)
    _streams_read_whole(cluster, prompt, full, "engine died")
    assert rogue.served >= 1
    assert "migrated from" in cluster.proxy.output()


@pytest.mark.parametrize("where", ["first chunk", "glued after a token"])
def test_an_error_event_anywhere_in_a_chunk_is_never_relayed(spawn: Any, scripted: Any, where: str) -> None:
    """An error event at the very start of a stream is retried elsewhere like any failure
    before the first byte; one glued after a token in the same chunk is caught too."""
    prompt = "tell me a story"
    full = fake_tokens(GenerationRequest(max_tokens=8, messages=(("user", prompt),)))
    secret = b'data: {"error":{"message":"internal secret path /etc/x","type":"server_error","code":"x"}}\n\n'
    part = secret if where == "first chunk" else chat_event(full[0], True) + secret
    rogue = scripted(lambda rid, _: chunked_stream([part]))
    _streams_read_whole(_cluster(spawn, rogue), prompt, full, "secret")
    assert rogue.served >= 1


def test_nothing_after_done_is_relayed_and_the_answer_ends_at_once(spawn: Any, scripted: Any) -> None:
    # The rogue sends [DONE], then more events, and never ends its chunked body: the
    # client's answer ends at [DONE], at once, not when the idle timeout (30 s) fires.
    def script(rid: str, _: bytes) -> list[bytes]:
        event = b'data: {"text": "echo:%s"}\n\n' % rid.encode()
        done = b"data: [DONE]\n\n"
        leak = b"data: LEAKED-AFTER-DONE\n\n"
        return [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n%x\r\n%s\r\n" % (len(event), event, len(done), done),
            b"%x\r\n%s\r\n" % (len(leak), leak),
        ]

    rogue = scripted(script)
    cluster = _cluster(spawn, rogue)
    with httpx.Client(timeout=10) as http:
        for i in range(6):
            rid = f"done-{i}"
            started = time.monotonic()
            body = {"prompt": "x", "max_tokens": 1, "stream": True}
            r = http.post(f"{cluster.url}/inference", json=body, headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text[:300]
            assert "LEAKED" not in r.text and "error" not in r.text, r.text[:300]
            assert time.monotonic() - started < 5.0
    assert rogue.served >= 2
    assert "ended early" not in cluster.proxy.output()


class BigHealth(ThreadedServer):
    """A static 'backend' whose /health answer is 8 MiB: how much of it the proxy read."""

    def __init__(self) -> None:
        self.sent = 0
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        body = b"x" * (8 << 20)
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for offset in range(0, len(body), 16384):
                conn.sendall(body[offset : offset + 16384])
                self.sent += 16384


def test_a_health_answer_is_read_no_further_than_its_limit(spawn: Any) -> None:
    # A backend's /health is untrusted: the probe stops reading at 64 KiB and fails,
    # instead of buffering the answer up to the proxy's 64 MiB response limit.
    rogue = BigHealth()
    try:
        cluster = start_process_cluster(
            spawn,
            1,
            proxy_args=("--backend-servers", f"{HOST}:{rogue.port}", "--health-interval-s", "0.3"),
            expect_healthy=1,
        )
        deadline = time.monotonic() + 15
        while "over the proxy's limit" not in cluster.proxy.output():
            assert time.monotonic() < deadline, cluster.proxy.output()[-2000:]
            time.sleep(0.1)
        assert cluster.workers()[f"{HOST}:{rogue.port}"]["status"] == "unhealthy"
        # Each probe's socket was closed early: far less than the 8 MiB offered was sent.
        assert rogue.sent < 4 << 20, rogue.sent
    finally:
        rogue.close()
