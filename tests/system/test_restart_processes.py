"""A backend SIGKILLed under load and restarted on its address (as ``inferno up`` does)
is routable as soon as it re-registers: its new process starts with a closed circuit,
not after the old one's ejection ends. A stream that was on it, waiting (urgent) for
the only backend to come back, continues on the new process at once. Real processes,
real sockets."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, start_process_cluster

pytestmark = pytest.mark.slow

#: an ejection far longer than the test waits: only a fresh breaker makes it pass
EJECTION_S = 30


def _stream(url: str, out: dict[str, Any]) -> None:
    body = {
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 60,
        "stream": True,
        "temperature": 0,
    }
    text: list[str] = []
    try:
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
        ):
            out["status"] = response.status_code
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = time.monotonic()
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        out["error"] = event["error"]
                    for choice in event.get("choices", []):
                        text.append(choice.get("delta", {}).get("content") or "")
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    out["text"] = "".join(text)


def _post(url: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}
    # These die with the backend; only the breaker they open matters.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_a_restarted_backend_takes_requests_as_soon_as_it_re_registers(spawn: Callable[..., Proc]) -> None:
    cluster = start_process_cluster(
        spawn,
        1,
        proxy_args=("--outlier-base-ejection-s", str(EJECTION_S)),
        # 60 tokens at 20/s: three seconds in flight, four at once.
        backend_args=("--fake-tokens-per-s", "20", "--n-parallel", "4", "--heartbeat-interval-s", "0.5"),
    )
    victim = cluster.backends["b1"]
    command = victim.popen.args
    assert isinstance(command, list)
    args = [str(a) for a in command][3:]  # python -m inferno <args>
    stream: dict[str, Any] = {}
    threads = [threading.Thread(target=_stream, args=(cluster.url, stream), daemon=True)]
    threads += [threading.Thread(target=_post, args=(cluster.url,), daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while cluster.workers()["b1"]["in_flight"] < 4:
        assert time.monotonic() < deadline, cluster.workers()
        time.sleep(0.05)
    time.sleep(0.5)  # some of the stream relayed

    killed_at = time.time()
    victim.stop(sig=signal.SIGKILL)
    # The broken tries open its circuit (the scenario: "healthy" later, but ejected).
    deadline = time.monotonic() + 10
    while cluster.workers()["b1"]["circuit"] != "open":
        assert time.monotonic() < deadline, cluster.workers()
        time.sleep(0.05)

    spawn(args, "b1-again")  # the same address, a new process
    deadline = time.monotonic() + 20
    while (cluster.workers()["b1"]["last_heartbeat"] or 0) <= killed_at:
        assert time.monotonic() < deadline, "the restarted backend did not register"
        time.sleep(0.02)
    registered = time.monotonic()

    # The first requests after it registered go to it, at once.
    with httpx.Client(timeout=10) as http:
        first_ok = None
        while first_ok is None and time.monotonic() < registered + 5:
            r = http.post(
                f"{cluster.url}/inference",
                json={"prompt": "hi", "max_tokens": 2},
                headers={"X-Inferno-Timeout-Ms": "2000"},
            )
            if r.status_code == 200:
                first_ok = time.monotonic()
                assert r.headers["x-inferno-backend"] == "b1"
            else:
                time.sleep(0.05)
    assert first_ok is not None and first_ok - registered < 1.0, "not routable right after re-registering"
    print(f"first 200 from the restarted backend {first_ok - registered:.3f}s after it registered")
    worker = cluster.workers()["b1"]
    assert worker["status"] == "healthy" and worker["circuit"] == "closed", worker
    assert "Backend re-registered" in cluster.proxy.output()

    for thread in threads:
        thread.join(timeout=30)
    # The stream waited for the only backend and went on on the new process: whole,
    # and long before the old process's ejection would have ended.
    assert stream.get("status") == 200 and "error" not in stream, stream
    assert stream.get("done") is not None and stream["done"] - registered < 5.0, stream
    print(f"the migrated stream ended {stream['done'] - registered:.3f}s after the backend registered")
    assert stream["text"]
    assert "migrated" in cluster.proxy.output()
