"""A body that is costly to parse never holds the event loop: against real `inferno
proxy` and `inferno backend` processes, small requests stay fast while another client
sends maximal bodies, and every over-count body gets 400."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster

pytestmark = pytest.mark.slow

MAX_BODY = 8 << 20


def _filled(prefix: bytes, item: bytes, suffix: bytes) -> bytes:
    """``prefix`` + as many ``item``s as fit in the body limit + ``suffix``."""
    count = (MAX_BODY - len(prefix) - len(suffix) - 64) // len(item)
    return prefix + item * count + item.rstrip(b",") + suffix


#: maximal bodies, each a few hundred ms of parsing on the event loop before
COSTLY: list[tuple[str, bytes]] = [
    ("/v1/completions", _filled(b'{"prompt": "x", "extra": [', b"{},", b"]}")),
    ("/v1/chat/completions", _filled(b'{"messages": [', b'{"role": "user", "content": "x"},', b"]}")),
    (
        "/v1/chat/completions",
        _filled(b'{"messages": [{"role": "user", "content": [', b'{"type": "text", "text": "x"},', b"]}]}"),
    ),
    ("/v1/embeddings", _filled(b'{"input": [', b'"a",', b"]}")),
    ("/batch_inference", _filled(b'{"requests": [{"prompt": "x"}], "x": [', b"0,", b"]}")),
    ("/inference", _filled(b'{"prompt": "x", "seed": [', b"[],", b"]}")),
    # one key a million times: valid, and few values once decoded; decoded once, in the
    # parsing process (decoding it again on the event loop would hold it for ~70 ms)
    ("/v1/completions", _filled(b'{"prompt": "x", "max_tokens": 1, ', b'"k": 0,', b"}")),
]
VALUES = "more than 32768 JSON values"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    from tests.conftest import Proc

    procs: list[Proc] = []
    logs = tmp_path_factory.mktemp("cost")

    def spawn(args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, str(logs / f"{name}.log"), env)
        procs.append(proc)
        return proc

    yield start_process_cluster(spawn, 1)
    for proc in procs:
        proc.stop(timeout_s=5.0)
    for proc in procs:
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def _in_thread(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("target", ["proxy", "backend"])
def test_maximal_bodies_get_400_and_never_delay_a_small_request(cluster: Any, target: str) -> None:
    url = cluster.url if target == "proxy" else "http://" + cluster.workers()["b1"]["address"]
    costly = [(path, body) for path, body in COSTLY if target == "proxy" or path != "/batch_inference"]
    with httpx.Client(timeout=30) as http:  # the parsing process starts, once
        r = http.post(f"{url}{costly[0][0]}", content=costly[0][1])
        assert r.status_code == 400
    stop = threading.Event()
    answers: list[tuple[str, int, str]] = []
    latencies: list[float] = []

    def hostile() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                for path, body in costly:
                    r = http.post(f"{url}{path}", content=body)
                    answers.append((path, r.status_code, r.json().get("error", {}).get("message", "")))

    def small() -> None:
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                r = http.post(f"{url}/inference", json={"prompt": "x", "max_tokens": 1})
                latencies.append(time.monotonic() - started)
                assert r.status_code == 200
                time.sleep(0.02)

    attacker = _in_thread(hostile)
    small()
    stop.set()
    attacker.join(timeout=60)
    assert not attacker.is_alive()
    assert len(answers) >= len(costly), answers
    for path, status, message in answers:
        if status == 200:  # the duplicate keys: a valid completion request
            continue
        assert status == 400 and VALUES in message, (path, status, message)
    assert sum(status == 200 for _, status, _ in answers) == len(answers) // len(costly)
    latencies.sort()
    # coarse: parsing one of these bodies on the event loop took 100-1000 ms
    assert latencies[-1] < 0.25, latencies[-10:]


def test_counts_past_their_bounds_get_400_and_a_long_legit_body_passes(cluster: Any) -> None:
    msg = {"role": "user", "content": "x"}
    part = {"type": "text", "text": "x"}
    over = [
        ("/v1/chat/completions", {"messages": [msg] * 513}, "at most 512 messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [part] * 513}]}, "content parts"),
        ("/v1/chat/completions", {"messages": [msg], "stop": ["a"] * 5}, "at most 4 stop"),
        ("/v1/completions", {"prompt": "x", **{f"f{i}": 0 for i in range(70)}}, "more than 64 fields"),
        ("/v1/embeddings", {"input": ["a"] * 2049}, "at most 2048 inputs"),
    ]
    backend = "http://" + cluster.workers()["b1"]["address"]
    with httpx.Client(timeout=30) as http:
        for base in (cluster.url, backend):
            for path, body, fragment in over:
                r = http.post(f"{base}{path}", json=body)
                assert r.status_code == 400 and fragment in r.json()["error"]["message"], (base, path, r.text)
        # 100,000 commas in a prompt: maybe costly by its separators, so parsed in the
        # parsing process first; it is one string, and passes
        r = http.post(f"{cluster.url}/v1/completions", json={"prompt": "a," * 99_000, "max_tokens": 1})
        assert r.status_code == 200, r.text
        r = http.post(f"{cluster.url}/v1/chat/completions", json={"messages": [msg] * 512, "max_tokens": 1})
        assert r.status_code == 200, r.text
