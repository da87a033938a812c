"""Stream migration's pure parts: the tape, reading it, continuing and restamping."""

from __future__ import annotations

import json

import orjson

from inferno.api.inference import InferenceAPI
from inferno.api.openai import ChatAPI, CompletionAPI
from inferno.proxy.bodies import sane_usage
from inferno.proxy.migration import Restamper, StreamTape, TapeBudget, continuation_body, read_tape


def _chunk(event: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _chat(content: str | None, role: bool = False, finish: str | None = None, rid: str = "a") -> bytes:
    delta: dict[str, str] = {"content": content} if content else {}
    if role:
        delta["role"] = "assistant"
    return _chunk(
        {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": 100 if rid == "a" else 200,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def test_tape_is_bounded_per_stream_and_per_port_and_gives_bytes_back() -> None:
    budget = TapeBudget(100)
    one, two = StreamTape(budget, 60), StreamTape(budget, 60)
    one.keep(b"x" * 50)
    two.keep(b"y" * 40)
    assert budget.used == 90 and one.chunks == [b"x" * 50]
    two.keep(b"y" * 15)  # over the port's budget: that stream cannot migrate any more
    assert two.chunks is None and two.overflowed and budget.used == 50
    one.keep(b"x" * 11)  # over its own bound
    assert one.overflowed and budget.used == 0
    three = StreamTape(budget, 60)
    three.keep(b"z")
    three.drop()
    assert budget.used == 0


def test_read_tape_decodes_text_tokens_and_the_first_event() -> None:
    data = _chat("The", role=True) + _chat(" sea") + _chat(" is")
    resume = read_tape(data, ChatAPI())
    assert not isinstance(resume, str)
    assert (resume.text, resume.tokens, resume.finished) == ("The sea is", 3, False)
    assert resume.first["id"] == "chatcmpl-a"
    assert read_tape(data + _chat(None, finish="stop"), ChatAPI()).finished  # type: ignore[union-attr]
    assert read_tape(data[:-5], ChatAPI()) == "partial_event"
    assert read_tape(b"data: {nope\n\n", ChatAPI()) == "undecodable"
    assert read_tape(b"", ChatAPI()) == "empty"


def test_continuation_bodies_per_api_shape() -> None:
    resume = read_tape(_chat("The", role=True) + _chat(" sea"), ChatAPI())
    assert not isinstance(resume, str)
    chat = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 10, "seed": 7}
    body = continuation_body(json.dumps(chat).encode(), ChatAPI(), resume)
    assert body is not None
    data = json.loads(body)
    assert data["messages"][-1] == {"role": "assistant", "content": "The sea"}
    assert data["max_tokens"] == 8 and data["seed"] == 7
    # max_completion_tokens wins over max_tokens, as in parsing
    data = ChatAPI().continuation({"messages": [], "max_completion_tokens": 5, "max_tokens": 99}, "x", 2)
    assert data is not None and data["max_tokens"] == 3 and "max_completion_tokens" not in data
    assert ChatAPI().continuation({"messages": [], "max_tokens": 2}, "ab", 2) is None  # nothing left
    comp = CompletionAPI().continuation({"prompt": "Once", "max_tokens": 16, "stop": ["\n"]}, " upon", 1)
    assert comp == {"prompt": "Once upon", "max_tokens": 15, "stop": ["\n"]}
    inf = InferenceAPI().continuation({"prompt": "q"}, "abc", 3)
    assert inf == {"prompt": "q", "max_tokens": 125, "continue_from": "abc"}


def test_restamper_keeps_the_first_segments_stamps_drops_its_role_chunk_and_shifts_usage() -> None:
    resume = read_tape(_chat("The", role=True) + _chat(" sea"), ChatAPI())
    assert not isinstance(resume, str)
    stamp = Restamper(ChatAPI(), resume)
    assert stamp(_chat(None, role=True, rid="b")) == b""
    vllm_style = {
        "id": "x",
        "created": 2,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    assert stamp(_chunk(vllm_style)) == b""
    out = json.loads(stamp(_chat(" is", role=True, rid="b"))[6:])
    assert (out["id"], out["created"]) == ("chatcmpl-a", 100)
    assert out["choices"][0]["delta"] == {"content": " is"}
    usage = {
        "id": "chatcmpl-b",
        "created": 200,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
    shifted = json.loads(stamp(_chunk(usage))[6:])
    assert shifted["usage"] == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    assert stamp(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"


def test_reported_usage_is_bounded_by_what_the_request_could_cost() -> None:
    assert sane_usage((10**12, 10**12), 200, 16) == (200 + 1024, 16)
    assert sane_usage((-5, -1), 200, 16) == (0, 0)
    assert sane_usage((30, 8), 200, 16) == (30, 8)


def test_restamper_holds_an_event_split_across_chunks_until_it_is_whole() -> None:
    resume = read_tape(_chat("The", role=True), ChatAPI())
    assert not isinstance(resume, str)
    stamp = Restamper(ChatAPI(), resume)
    event = _chat(" sea", rid="b") + _chat(" is", rid="b")
    cut = len(event) // 3
    out = stamp(event[:cut]) + stamp(event[cut : cut * 2]) + stamp(event[cut * 2 :])
    texts = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in out.split(b"\n\n") if line]
    assert texts == [" sea", " is"]
    assert stamp(b"data: [DO") == b"" and stamp(b"NE]\n\n") == b"data: [DONE]\n\n"
