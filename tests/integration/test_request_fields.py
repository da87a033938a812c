"""OpenAI fields that cost work: refused with 400 when they ask for what the engines do
not do, accepted within OpenAI's bounds when harmless, on the proxy and the backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import HOST

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (CHAT, {"tools": [TOOL] * 1000}, "tools"),
    (CHAT, {"tools": [TOOL]}, "tools"),
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    (CHAT, {"tool_choice": "required"}, "tool_choice"),
    (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),
    (CHAT, {"logit_bias": {str(i): 1 for i in range(10_000)}}, "logit_bias"),
    (CHAT, {"logprobs": True}, "logprobs"),
    (CHAT, {"top_logprobs": 5}, "top_logprobs"),
    (CHAT, {"modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"presence_penalty": 2.5}, "presence_penalty"),
    (CHAT, {"frequency_penalty": "high"}, "frequency_penalty"),
    (CHAT, {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    (CHAT, {"metadata": {"k": "v" * 513}}, "metadata"),
    (COMPLETIONS, {"logit_bias": {"1": 100}}, "logit_bias"),
    (COMPLETIONS, {"logprobs": 3}, "logprobs"),
    (COMPLETIONS, {"echo": True}, "echo"),
    (COMPLETIONS, {"suffix": "tail"}, "suffix"),
    (COMPLETIONS, {"best_of": 4}, "best_of"),
]
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"tools": [], "tool_choice": "none", "parallel_tool_calls": False}),
    (CHAT, {"response_format": {"type": "text"}, "logit_bias": {}, "logprobs": False, "top_logprobs": 0}),
    (CHAT, {"presence_penalty": -1.5, "frequency_penalty": 2, "metadata": {"team": "a"}, "store": False}),
    (CHAT, {"modalities": ["text"], "service_tier": "auto", "some_vendor_field": {"a": [1, 2]}}),
    (COMPLETIONS, {"logprobs": 0, "echo": False, "suffix": "", "best_of": 1, "logit_bias": None}),
]


def _body(path: str, extra: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"messages": MESSAGES} if path == CHAT else {"prompt": "hi"}
    return {**base, "max_tokens": 1, **extra}


async def test_costly_fields_are_refused_or_bounded_on_proxy_and_backend(
    make_cluster: Any, client: httpx.AsyncClient
) -> None:
    cluster = await make_cluster(1)
    backend_url = f"http://{HOST}:{cluster.backends[0].data_address[1]}"
    for base in (cluster.url, backend_url):
        for path, extra, param in REFUSED:
            r = await client.post(f"{base}{path}", json=_body(path, extra))
            assert r.status_code == 400, (base, path, extra if len(str(extra)) < 200 else param, r.text)
            error = r.json()["error"]
            assert error["param"] == param, error
        for path, extra in ACCEPTED:
            r = await client.post(f"{base}{path}", json=_body(path, extra))
            assert r.status_code == 200, (base, path, extra, r.text)
    assert cluster.proxy.registry.routable()[0].consecutive_failures == 0


@pytest.mark.parametrize("field", ["tools", "logit_bias", "response_format"])
async def test_the_refusal_names_the_field_and_says_why(
    make_cluster: Any, client: httpx.AsyncClient, field: str
) -> None:
    cluster = await make_cluster(1)
    value: Any = {"tools": [TOOL], "logit_bias": {"1": 1}, "response_format": {"type": "json_object"}}[field]
    r = await client.post(f"{cluster.url}{CHAT}", json=_body(CHAT, {field: value}))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == f"'{field}' is not supported by Inferno's models"
