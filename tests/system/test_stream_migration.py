"""Streams that survive their backend's death, against real processes.

Fake-engine backends stream slowly; one is SIGKILLed while streams are mid-way on it.
Every stream must end with ``[DONE]``, carry no error event, keep one ``id``, and
read exactly like the same request served without a kill (the fake engine, like
llama.cpp at temperature 0, continues an answer deterministically). The real model
is tested the same way in tests/system/test_up_model.py.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from inferno.engines.base import GenerationRequest
from inferno.engines.fake import fake_tokens
from tests.conftest import ProcessCluster, start_process_cluster

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
#: 24 tokens at 40 tokens/s: each stream takes about 0.6 s
TOKENS_PER_S = "40"


def _request(shape: str, i: int) -> tuple[str, dict[str, Any], str]:
    """(path, body, the exact text an unbroken stream answers)."""
    prompt = f"question number {i}"
    if shape == "chat":
        gen = GenerationRequest(max_tokens=MAX_TOKENS, messages=(("user", prompt),))
        body: dict[str, Any] = {
            "model": "fake",
            "messages": [{"role": "user", "content": prompt}],
            "stream_options": {"include_usage": True},
        }
        path = "/v1/chat/completions"
    elif shape == "completions":
        gen = GenerationRequest(max_tokens=MAX_TOKENS, prompt=prompt)
        body = {"model": "fake", "prompt": prompt, "stream_options": {"include_usage": True}}
        path = "/v1/completions"
    else:
        gen = GenerationRequest(max_tokens=MAX_TOKENS, messages=(("user", prompt),))
        body = {"prompt": prompt}
        path = "/inference"
    body.update(max_tokens=MAX_TOKENS, stream=True, temperature=0)
    return path, body, "".join(fake_tokens(gen))


def _text(shape: str, events: list[dict[str, Any]]) -> str:
    parts = []
    for event in events:
        if shape == "chat":
            parts += [c["delta"].get("content") or "" for c in event.get("choices", [])]
        elif shape == "completions":
            parts += [c.get("text") or "" for c in event.get("choices", [])]
        else:
            parts.append(event.get("text") or "")
    return "".join(parts)


def _check(shape: str, raw: str, expected: str) -> None:
    assert raw.endswith("data: [DONE]\n\n"), raw[-300:]
    events = [
        json.loads(line[6:])
        for line in raw.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert not any("error" in e for e in events), raw[-300:]
    assert _text(shape, events) == expected, (_text(shape, events), expected)
    if shape == "inference":
        assert len({e["request_id"] for e in events}) == 1
        usage = events[-1]["usage"]
    else:
        assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1, events
        roles = [c["delta"]["role"] for e in events for c in e["choices"] if "role" in c.get("delta", {})]
        assert roles in ([], ["assistant"]), roles  # one role chunk, from the first segment
        usage = events[-1]["usage"]
    # Usage as if nothing broke: the fake engine counts one prompt token per word.
    assert usage["completion_tokens"] == MAX_TOKENS, usage
    assert usage["prompt_tokens"] == 3, usage


def _load_with_a_kill(cluster: ProcessCluster, concurrency: int, victim: str) -> list[str]:
    """``concurrency`` streams at once, the three shapes in turn; the victim is
    SIGKILLed while they are mid-way. Returns the failures."""
    shapes = ("chat", "completions", "inference")
    failures: list[str] = []
    started = threading.Barrier(concurrency + 1, timeout=30)

    def one(i: int) -> None:
        shape = shapes[i % 3]
        path, body, expected = _request(shape, i)
        try:
            with httpx.Client(timeout=30) as http:
                started.wait()
                r = http.post(f"{cluster.url}{path}", json=body)
            assert r.status_code == 200, r.text[:300]
            _check(shape, r.text, expected)
        except Exception as exc:  # collected, reported below
            failures.append(f"{shape} #{i}: {exc!r}"[:600])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.3)  # the streams are under way: about half of each has been relayed
    cluster.backends[victim].popen.send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    return failures


@pytest.mark.parametrize("concurrency", [4, 16])
def test_streams_survive_a_killed_backend(spawn: Any, concurrency: int) -> None:
    cluster = start_process_cluster(
        spawn,
        2,
        backend_args=("--fake-tokens-per-s", TOKENS_PER_S, "--n-parallel", "16"),
        proxy_args=("--policy", "round_robin"),
    )
    failures = _load_with_a_kill(cluster, concurrency, "b1")
    assert not failures, failures
    log = cluster.proxy.output()
    assert "migrated from" in log and "after" in log, log[-2000:]
    metrics = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    migrated = [ln for ln in metrics.splitlines() if ln.startswith("inferno_stream_migrations_total")]
    assert migrated and float(migrated[0].split()[-1]) >= 1, migrated


def test_a_stream_over_its_tape_bound_is_not_migrated_and_says_so(spawn: Any) -> None:
    cluster = start_process_cluster(
        spawn,
        2,
        backend_args=("--fake-tokens-per-s", TOKENS_PER_S, "--n-parallel", "16"),
        proxy_args=("--policy", "round_robin", "--migration-stream-bytes", "300"),
    )
    failures = _load_with_a_kill(cluster, 4, "b1")
    # The streams on the killed backend end with an error event, as before migration.
    assert failures and all("error" in f or "DONE" in f for f in failures), failures
    metrics = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    assert 'inferno_stream_migration_failures_total{reason="tape_overflow"}' in metrics, metrics[-3000:]
