"""NaN, Infinity and numbers that overflow a double are not JSON: every route of the
proxy and of the backend refuses them with one clear 400, whichever field holds them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import HOST

BAD_NUMBERS = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999")
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], %s}'
COMPLETION = b'{"model": "m", "prompt": "hi", %s}'
EMBEDDINGS = b'{"model": "m", "input": ["hi"], %s}'
TEXT = b'{"model": "m", "prompt": "hi", "max_tokens": 1, %s}'
IMAGE = b'{"model": "m", "data": "aGk=", %s}'
#: (path, body template, fields that may hold the number: a known one and an unknown one)
ROUTES: list[tuple[str, bytes, tuple[bytes, ...]]] = [
    ("/v1/chat/completions", CHAT, (b"temperature", b"logit_bias_x")),
    ("/v1/completions", COMPLETION, (b"top_p", b"frequency_penalty")),
    ("/v1/embeddings", EMBEDDINGS, (b"dimensions", b"extra")),
    ("/inference", TEXT, (b"temperature",)),
    ("/inference", IMAGE, (b"top_k",)),
]


def _bodies() -> list[tuple[str, bytes]]:
    cases = []
    for path, template, fields in ROUTES:
        for field in fields:
            for number in BAD_NUMBERS:
                cases.append((path, template % (b'"' + field + b'": ' + number)))
                # nested too: inside a list and an object
                cases.append((path, template % (b'"' + field + b'": [1, {"a": ' + number + b"}]")))
    return cases


@pytest.mark.parametrize("number", BAD_NUMBERS)
async def test_invalid_numbers_get_400_on_every_route_of_proxy_and_backend(
    make_cluster: Any, client: httpx.AsyncClient, number: bytes
) -> None:
    # "m" is an alias: the proxy rewrites the model field, so it must never meet a
    # body its own JSON parser cannot read (that was a 500 with a traceback).
    cluster = await make_cluster(1, proxy_overrides={"model_aliases": {"m": "fake"}})
    backend_url = f"http://{HOST}:{cluster.backends[0].data_address[1]}"
    cases = [(path, body) for path, body in _bodies() if number in body]
    batch = b'{"requests": [' + TEXT % (b'"temperature": ' + number) + b"]}"
    for base in (cluster.url, backend_url):
        for path, sent in [*cases, ("/batch_inference", batch)]:
            body = sent
            if base == backend_url:
                if path == "/batch_inference":
                    continue  # a proxy route
                body = sent.replace(b'"model": "m", ', b"")
            r = await client.post(f"{base}{path}", content=body)
            assert r.status_code == 400, (base, path, body, r.text)
            error = r.json()["error"]
            assert "not valid JSON" in error["message"], error
            assert error["code"] == "invalid_request"
    # a lone surrogate is not valid JSON text either
    for base in (cluster.url, backend_url):
        r = await client.post(f"{base}/v1/completions", content=b'{"prompt": "\\ud800"}')
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    # both keep serving, and the backend was never blamed
    r = await client.post(f"{cluster.url}/inference", json={"prompt": "still there?", "max_tokens": 2})
    assert r.status_code == 200
    assert cluster.proxy.registry.routable()[0].consecutive_failures == 0


async def test_out_of_range_seed_is_400(make_cluster: Any, client: httpx.AsyncClient) -> None:
    cluster = await make_cluster(1)
    for seed in (2**63, -(2**63) - 1):
        r = await client.post(f"{cluster.url}/v1/completions", json={"prompt": "x", "seed": seed})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text
