"""Request ids and request validation."""

from __future__ import annotations

import pytest

from inferno.errors import BadRequest
from inferno.http.request_id import RequestIdFactory
from inferno.schemas import ChatCompletionRequest, InferenceRequest, check_max_tokens, parse_body


@pytest.mark.parametrize("client_id", [b"abc", b"A.b_c:d-1", b"x" * 128])
def test_valid_client_ids_are_kept(client_id: bytes) -> None:
    assert RequestIdFactory("p").accept_or_new(client_id) == client_id.decode()


@pytest.mark.parametrize(
    "client_id", [None, b"", b"x" * 129, b"has space", b"new\nline", b"semi;colon", b"\xff"]
)
def test_invalid_client_ids_are_replaced(client_id: bytes | None) -> None:
    factory = RequestIdFactory("p")
    rid = factory.accept_or_new(client_id)
    assert rid.startswith("p-") and rid != (client_id or b"").decode("latin-1")


def test_generated_ids_are_unique() -> None:
    factory = RequestIdFactory()
    assert len({factory.new() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{bad", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"max_tokens": 5}', "missing required field 'prompt'"),
        (b'{"prompt": 5}', "invalid field 'prompt'"),
        (b'{"prompt": "hi", "max_tokens": "5"}', "invalid field 'max_tokens'"),
        (b'{"prompt": "hi", "max_tokens": 0}', "invalid field 'max_tokens'"),
        (b'{"prompt": "hi", "temperature": 9}', "invalid field 'temperature'"),
        (b'{"prompt": "hi", "max_token": 5}', "unknown field 'max_token'"),
        (b'{"prompt": ""}', "invalid field 'prompt'"),
    ],
)
def test_inference_validation_messages(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_body(InferenceRequest, body)
    assert fragment in info.value.message
    assert info.value.status == 400


def test_chat_validation() -> None:
    ok = parse_body(ChatCompletionRequest, b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}')
    assert ok.effective_max_tokens(100) == 3 and ok.prompt_text() == "hi"
    for bad in (
        b'{"messages": []}',
        b'{"messages": [{"role": "wizard", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
        b'{"messages": "hi"}',
    ):
        with pytest.raises(BadRequest):
            parse_body(ChatCompletionRequest, bad)
    image = parse_body(
        ChatCompletionRequest,
        b'{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}',
    )
    with pytest.raises(BadRequest, match="only content parts of type 'text'"):
        image.prompt_text()


def test_max_tokens_cap() -> None:
    assert check_max_tokens(10, 10) == 10
    with pytest.raises(BadRequest, match="at most 10"):
        check_max_tokens(11, 10)


def test_embeddings_work_for_the_per_try_timeout_follows_their_tokens() -> None:
    from inferno.api.embeddings import EmbeddingsAPI

    big = EmbeddingsAPI().parse_data({"model": "m", "input": ["word " * 300] * 64})
    small = EmbeddingsAPI().parse_data({"model": "m", "input": ["a cat", "a dog"]})
    # 64 texts at the 256-token cap: 16384 tokens, 327 units (about 51 s at 20 units/s),
    # where one unit per text gave 64 (11.6 s) and cut valid requests off.
    assert big.max_tokens == 327 and small.max_tokens == 2


def test_stop_sequences_are_bounded_in_length() -> None:
    from inferno.api.openai import ChatAPI
    from inferno.errors import BadRequest

    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    ChatAPI().parse_data({**chat, "stop": ["a" * 256, "\n"]})
    with pytest.raises(BadRequest):
        ChatAPI().parse_data({**chat, "stop": ["a" * 257]})
    with pytest.raises(BadRequest):
        ChatAPI().parse_data({**chat, "stop": "b" * 1_000_000})
