"""API keys, budgets and usage against real processes: 401s in the OpenAI shape,
model restrictions, revocation without a restart, RPM and TPM budgets with the
x-ratelimit-* headers, and usage counted exactly (streamed or not) that survives
a proxy restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import start_process_cluster, wait_http

pytestmark = pytest.mark.slow


def keys(state: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "inferno", "keys", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _chat(
    url: str,
    key: str,
    *,
    stream: bool = False,
    model: str | None = None,
    usage: bool = False,
    text: str = "hello there",
) -> httpx.Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 5}
    if model:
        body["model"] = model
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key), timeout=10)


def test_keys_budgets_and_usage(spawn: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    good = keys(state, "create", "--name", "alice", "--rpm", "1000", "--tpm", "100000")
    narrow = keys(state, "create", "--name", "bob", "--models", "other-model")
    slow = keys(state, "create", "--name", "carol", "--rpm", "2")
    thin = keys(state, "create", "--name", "dave", "--tpm", "5")
    listed = [json.loads(line) for line in keys(state, "list").splitlines()]
    assert [k["name"] for k in listed] == ["alice", "bob", "carol", "dave"]
    assert good not in (state / "inferno.db").read_bytes().decode("latin-1")  # only hashes stored
    cluster = start_process_cluster(spawn, 1, proxy_args=("--require-api-key", "--state-dir", str(state)))
    url = cluster.url

    # 401 in the OpenAI shape, for a missing, malformed or unknown key.
    for headers in ({}, {"Authorization": "Bearer nope"}, bearer(good[:-2] + "xx"), {"Authorization": good}):
        r = httpx.post(f"{url}/inference", json={"prompt": "x"}, headers=headers, timeout=5)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{url}/v1/models", timeout=5)
    assert r.status_code == 401

    # A good key works, with the official client too, and every answer carries its budget.
    ai = openai.OpenAI(base_url=f"{url}/v1", api_key=good, max_retries=0, timeout=10)
    assert (
        ai.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        .choices[0]
        .message.content
    )
    r = _chat(url, good)
    assert r.status_code == 200
    assert (
        r.headers["x-ratelimit-limit-requests"] == "1000"
        and r.headers["x-ratelimit-limit-tokens"] == "100000"
    )
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 1000

    # Model restrictions.
    r = _chat(url, narrow, model="fake")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert _chat(url, narrow).status_code == 403  # no model named: not one of its models

    # Requests per minute: the third in a row is over budget.
    assert [_chat(url, slow).status_code for _ in range(2)] == [200, 200]
    r = _chat(url, slow)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining-requests"] == "0"

    # Tokens per minute, counted from real usage: one answer spends the budget.
    first = _chat(url, thin)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
    r = _chat(url, thin)
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining-tokens"] == "0"

    # Revocation takes effect without a restart.
    keys(state, "revoke", "bob")
    deadline = time.monotonic() + 5
    while _chat(url, narrow, model="other-model").status_code != 401:
        assert time.monotonic() < deadline, "revocation not picked up"
        time.sleep(0.2)


def test_usage_is_exact_for_streams_and_survives_a_restart(spawn: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = keys(state, "create", "--name", "erin")
    args = ("--require-api-key", "--state-dir", str(state))
    cluster = start_process_cluster(spawn, 1, proxy_args=args)
    prompt = completion = 0
    for i in range(4):
        r = _chat(cluster.url, key, text=f"question {i}")
        usage = r.json()["usage"]
        usage_of_same = (usage["prompt_tokens"], usage["completion_tokens"])
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
        # A stream that asks for usage gets OpenAI's separate final usage chunk...
        r = _chat(cluster.url, key, stream=True, usage=True)
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["choices"] == [] and all("usage" not in e for e in events[:-1])
        usage = events[-1]["usage"]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
        # ...one that does not sees no usage at all, yet is charged exactly: the proxy
        # asked the backend for the chunk and took it out. (The fake engine answers a
        # prompt the same way every time, so the non-streamed answer tells its usage.)
        r = _chat(cluster.url, key, stream=True, text=f"question {i}")
        assert '"usage"' not in r.text and r.text.rstrip().endswith("data: [DONE]")
        prompt, completion = prompt + usage_of_same[0], completion + usage_of_same[1]
        r = httpx.post(
            f"{cluster.url}/inference",
            json={"prompt": f"q{i}", "max_tokens": 4},
            headers=bearer(key),
            timeout=10,
        )
        usage = r.json()["usage"]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
    expected = {"requests": 16, "prompt_tokens": prompt, "completion_tokens": completion}

    def usage_now(ops: str) -> dict[str, int]:
        rows = httpx.get(f"{ops}/usage", timeout=5).json()["usage"]
        assert len(rows) == 1 and rows[0]["key_name"] == "erin" and rows[0]["model"] == "fake"
        return {k: rows[0][k] for k in expected}

    assert usage_now(cluster.ops) == expected
    metrics = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    assert f'inferno_usage_prompt_tokens_total{{key="erin",model="fake"}} {float(prompt)}' in metrics
    # Restart the proxy on the same state directory: nothing is lost.
    cluster.proxy.popen.send_signal(signal.SIGTERM)
    assert cluster.proxy.popen.wait(timeout=30) == 0
    ops = cluster.ops.removeprefix("http://")
    spawn(
        ["proxy", "--listen-addr", f"127.0.0.1:{cluster.url.rsplit(':', 1)[1]}", "--ops-addr", ops, *args],
        "proxy2",
    )
    wait_http(f"http://{ops}/livez")
    assert usage_now(cluster.ops) == expected
