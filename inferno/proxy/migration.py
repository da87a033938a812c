"""Stream migration: a stream whose backend fails mid-way goes on on another backend.

While a stream is relayed the forwarder keeps its raw chunks on a ``StreamTape``
(bounded per stream and per port, and never parsed on the happy path). When the
backend fails after the first token, ``read_tape`` decodes what the client already
has; the API adapter turns the original body into one that continues from that
text (a trailing ``assistant`` message, the prompt extended, ``continue_from``),
with ``max_tokens`` reduced; and ``Restamper`` makes the new segment's events look
like the first segment's, so the client sees one stream. NVIDIA Dynamo calls this
request migration. See docs/retries.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from inferno.api.base import TextAPI

DONE = b"data: [DONE]\n\n"
#: how an error event from a backend begins (``inferno.http.responses.sse_error_event``)
ERROR_EVENT = b'data: {"error"'


class TapeBudget:
    """The raw stream bytes kept across every stream of one proxy (``--migration-port-bytes``)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class StreamTape:
    """The chunks of one stream as relayed, to continue it from if its backend fails."""

    __slots__ = ("_budget", "_cap", "chunks", "overflowed", "size")

    def __init__(self, budget: TapeBudget, cap: int) -> None:
        self._budget = budget
        self._cap = cap
        self.chunks: list[bytes] | None = []
        self.size = 0
        #: the tape outgrew its bound: this stream can no longer migrate
        self.overflowed = False

    def keep(self, chunk: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            return
        size = len(chunk)
        budget = self._budget
        if self.size + size > self._cap or budget.used + size > budget.limit:
            self.overflowed = True
            self.drop()
            return
        chunks.append(chunk)
        self.size += size
        budget.used += size

    def drop(self) -> None:
        """Give the kept bytes back to the port's budget (at the stream's end)."""
        self._budget.used -= self.size
        self.size = 0
        self.chunks = None

    def data(self) -> bytes:
        return b"".join(self.chunks or ())


@dataclass(slots=True)
class Resume:
    """What the client already has of a broken stream."""

    text: str
    #: token events relayed (one token each, as backends stream them)
    tokens: int
    #: the first event, whose ``id``, ``created`` and ``model`` every later one keeps
    first: dict[str, Any]
    #: the answer had already ended (a finish reason, or ``[DONE]``): nothing to continue
    finished: bool


def _events(data: bytes) -> list[bytes]:
    """The ``data:`` payloads of whole SSE events."""
    payloads = []
    for event in data.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
    return payloads


def read_tape(data: bytes, api: TextAPI) -> Resume | str:
    """Decode a tape; a string says why the stream cannot be continued."""
    if not data:
        return "empty"
    if not data.endswith(b"\n\n"):
        return "partial_event"  # relayed mid-event: no clean place to go on from
    parts: list[str] = []
    tokens = 0
    first: dict[str, Any] | None = None
    finished = False
    for payload in _events(data):
        if payload == b"[DONE]":
            finished = True
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "undecodable"
        if not isinstance(event, dict):
            return "undecodable"
        if first is None:
            first = event
        text = api.chunk_text(event)
        if text:
            parts.append(text)
            tokens += 1
        finished = finished or api.finished(event)
    if first is None:
        return "empty"
    return Resume("".join(parts), tokens, first, finished)


def continuation_body(body: bytes, api: TextAPI, resume: Resume) -> bytes | None:
    """The original request body made to continue after ``resume.text``."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        return None
    continued = api.continuation(data, resume.text, resume.tokens)
    return None if continued is None else orjson.dumps(continued)


class Restamper:
    """Rewrites a continued segment's chunks as if the first segment had sent them."""

    __slots__ = ("_api", "_first", "_offset", "_partial")

    def __init__(self, api: TextAPI, resume: Resume) -> None:
        self._api = api
        self._first = resume.first
        #: the continued text, which the new backend counted as prompt
        self._offset = resume.tokens
        #: an event split across chunks, held until its end arrives
        self._partial = b""

    def __call__(self, chunk: bytes) -> bytes:
        """The whole events of ``chunk`` (and of what was held), restamped; an event
        split across chunks goes out once it is whole."""
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._partial = data
            return b""
        whole, self._partial = data[: end + 2], data[end + 2 :]
        out = []
        for payload in _events(whole):
            if payload == b"[DONE]":
                out.append(DONE)
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            stamped = self._api.restamp(event, self._first)
            if stamped is None:
                continue
            usage = stamped.get("usage")
            if isinstance(usage, dict):
                self._shift(usage)
            out.append(b"data: " + orjson.dumps(stamped) + b"\n\n")
        return b"".join(out)

    def _shift(self, usage: dict[str, Any]) -> None:
        """Usage as if nothing broke: the continued text counts as completion, not prompt."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            usage["prompt_tokens"] = max(0, prompt - self._offset)
            usage["completion_tokens"] = completion + self._offset
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
