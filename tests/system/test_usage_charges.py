"""Token budgets cannot be dodged: a stream is charged for what was relayed even when
its usage never comes, and a backend's absurd usage numbers are bounded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HOST, start_process_cluster
from tests.system.test_api_keys import bearer, keys
from tests.system.test_hostile_backend import ScriptedBackend, scripted  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _usage(ops: str, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = httpx.get(f"{ops}/usage", timeout=5).json()["usage"]
        if rows and rows[0]["requests"] > 0 and rows[0]["completion_tokens"] > 0:
            break
        time.sleep(0.1)
    assert len(rows) == 1, rows
    return rows[0]


def test_a_stream_the_client_hangs_up_on_is_charged_for_what_it_got(spawn: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = keys(state, "create", "--name", "mallory")
    cluster = start_process_cluster(
        spawn,
        1,
        proxy_args=("--require-api-key", "--state-dir", str(state)),
        backend_args=("--fake-tokens-per-s", "20"),
    )
    body = {
        "messages": [{"role": "user", "content": "a long story please"}],
        "max_tokens": 60,
        "stream": True,
    }
    got = 0
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=bearer(key)) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
            if got == 6:
                break  # hang up long before the final usage chunk
    row = _usage(cluster.ops)
    # One token per text chunk relayed (the proxy may have relayed a few more than read).
    assert 6 <= row["completion_tokens"] <= 20, row
    assert row["prompt_tokens"] > 0, row


def test_absurd_reported_usage_is_bounded(spawn: Any, tmp_path: Path, scripted: Any) -> None:  # noqa: F811
    def lying(rid: str, _: bytes) -> list[bytes]:
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "fake",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": 999999999999,
                    "completion_tokens": 999999999999,
                    "total_tokens": 1,
                },
            }
        ).encode()
        return [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        ]

    rogue: ScriptedBackend = scripted(lying)
    state = tmp_path / "state"
    key = keys(state, "create", "--name", "trent", "--tpm", "100000")
    cluster = start_process_cluster(
        spawn,
        0,
        proxy_args=(
            "--require-api-key",
            "--state-dir",
            str(state),
            "--backend-servers",
            f"{HOST}:{rogue.port}",
        ),
        expect_healthy=1,
    )
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json=chat, headers=bearer(key), timeout=10)
    assert r.status_code == 200
    row = _usage(cluster.ops)
    assert row["completion_tokens"] <= 8 and row["prompt_tokens"] <= 2048, row
    # The key is not locked out, and /usage and the metrics still render.
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json=chat, headers=bearer(key), timeout=10)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{cluster.ops}/metrics", timeout=5).status_code == 200


def test_concurrent_requests_cannot_spend_a_token_budget_many_times(spawn: Any, tmp_path: Path) -> None:
    """Twenty requests at once under a 200-tokens-a-minute key, 100 tokens each: each
    holds what it may cost from admission, so the key is charged about its budget,
    not ten times it (before: all twenty ran, 2,000+ tokens)."""
    state = tmp_path / "state"
    key = keys(state, "create", "--name", "eve", "--tpm", "200")
    cluster = start_process_cluster(
        spawn,
        1,
        proxy_args=("--require-api-key", "--state-dir", str(state)),
        backend_args=("--fake-tokens-per-s", "200", "--n-parallel", "32"),
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    statuses: list[int] = []

    def one() -> None:
        r = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, headers=bearer(key), timeout=30)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses.count(200) + statuses.count(429) == 20, statuses
    assert 1 <= statuses.count(200) <= 2, statuses
    row = _usage(cluster.ops)
    assert row["prompt_tokens"] + row["completion_tokens"] <= 220, row
