"""What the proxy knows about a request when it routes it: priority and context."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Priority(enum.IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2


PRIORITIES: dict[str, Priority] = {
    "high": Priority.HIGH,
    "normal": Priority.NORMAL,
    "low": Priority.LOW,
}


@dataclass(slots=True)
class RequestContext:
    """What a policy may know about the request it is routing. Never mutated (not
    frozen only because a frozen dataclass costs ~2 µs more to build, per request)."""

    request_id: str
    model: str | None = None
    #: ``X-Session-ID`` header or the OpenAI ``user`` field
    session_key: str | None = None
    #: the first characters of the prompt, for prefix affinity
    prompt_prefix: str = ""
    priority: Priority = Priority.NORMAL
    #: what the request asks for; with no model, any backend able to do it is eligible
    task: str = "text-generation"
