"""Bounds on what a decoded request body holds, checked before any field is validated.

Parsing costs per JSON value (each becomes a Python object), and validating costs per
element of the lists the schemas hold, so both are counted first, cheaply: a body
past a bound costs its parse and nothing more. ``estimate_values`` reads the raw
bytes without parsing them, so the proxy can tell a body that may be costly to parse
(and parse it in another process) from one that cannot be.

OpenAI fields that Inferno's engines do not implement are refused when they ask for
something (``tools``, a JSON ``response_format``, ``logit_bias``, ``logprobs``, ...),
rather than silently ignored: an answer without the tool call or the JSON the client
asked for is wrong, and those are the fields that cost work (a 100,000-entry
``logit_bias``, a schema to compile). Their empty forms (``"tools": []``,
``"response_format": {"type": "text"}``) are accepted, as OpenAI's SDKs send them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferno.config import RequestLimits
from inferno.errors import BadRequest


def estimate_values(body: bytes, stop_above: int | None = None) -> int:
    """An upper bound on the JSON values in ``body`` (object keys included), read
    without parsing: after the root, every value follows a comma, a colon or an
    opening bracket (commas inside strings only make the bound looser). Counting
    stops once past ``stop_above``."""
    total = 1
    for separator in (b",", b":", b"[", b"{"):
        total += body.count(separator)
        if stop_above is not None and total > stop_above:
            break
    return total


def may_exceed(body: bytes, max_values: int) -> bool:
    """Whether ``body`` may hold more than ``max_values`` JSON values. A value takes
    at least two bytes with its separator, so a short body never does."""
    return len(body) > 2 * max_values and estimate_values(body, max_values) > max_values


def count_values(data: Any, limit: int) -> int:
    """The JSON values in ``data`` (keys included), counting no further than ``limit + 1``."""
    count = 0
    stack = [data]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict | list):
            if count + len(value) > limit:  # over already: no need to look inside
                return count + len(value)
            if isinstance(value, dict):
                count += len(value)
                stack.extend(value.values())
            else:
                stack.extend(value)
    return count


def check_values(body: bytes, data: Any, max_values: int) -> None:
    if may_exceed(body, max_values) and count_values(data, max_values) > max_values:
        raise BadRequest(f"request body holds more than {max_values} JSON values")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or any(value == a and type(value) is type(a) for a in allowed)


#: OpenAI fields the engines do not implement, and the values that ask for nothing
UNSUPPORTED_CHAT: dict[str, Callable[[Any], bool]] = {
    "tools": _empty,
    "functions": _empty,
    "tool_choice": _one_of("none", "auto"),
    "function_call": _one_of("none", "auto"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "logit_bias": _empty,
    "logprobs": _one_of(False),
    "top_logprobs": _one_of(0),
    "audio": _empty,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _empty,
    "web_search_options": _empty,
}
UNSUPPORTED_COMPLETION: dict[str, Callable[[Any], bool]] = {
    "logit_bias": _empty,
    "logprobs": _one_of(0),
    "echo": _one_of(False),
    "suffix": _one_of(""),
    "best_of": _one_of(1),
}


def _check_fields(
    data: dict[str, Any], limits: RequestLimits, unsupported: dict[str, Callable[[Any], bool]]
) -> None:
    if len(data) > limits.max_fields:
        raise BadRequest(f"request body has more than {limits.max_fields} fields")
    for name, harmless in unsupported.items():
        if name in data and not harmless(data[name]):
            raise BadRequest(f"'{name}' is not supported by Inferno's models", param=name)
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > limits.max_stop:
        raise BadRequest(f"at most {limits.max_stop} stop sequences", param="stop")


def check_chat(data: Any, limits: RequestLimits) -> None:
    if not isinstance(data, dict):
        return  # validation names the problem
    _check_fields(data, limits, UNSUPPORTED_CHAT)
    messages = data.get("messages")
    if not isinstance(messages, list):
        return
    if len(messages) > limits.max_messages:
        raise BadRequest(f"at most {limits.max_messages} messages", param="messages")
    parts = sum(
        len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
    )
    if parts > limits.max_content_parts:
        raise BadRequest(
            f"at most {limits.max_content_parts} content parts in all messages", param="messages"
        )


def check_completion(data: Any, limits: RequestLimits) -> None:
    if isinstance(data, dict):
        _check_fields(data, limits, UNSUPPORTED_COMPLETION)


def check_embeddings(data: Any, limits: RequestLimits) -> None:
    if not isinstance(data, dict):
        return
    if len(data) > limits.max_fields:
        raise BadRequest(f"request body has more than {limits.max_fields} fields")
    texts = data.get("input")
    if isinstance(texts, list) and len(texts) > limits.max_embedding_inputs:
        raise BadRequest(f"at most {limits.max_embedding_inputs} inputs", param="input")
