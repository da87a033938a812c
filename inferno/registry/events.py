"""What happened to the backends, kept in a bounded ring buffer for the dashboard.

Every change of a backend's state (registered, removed, unhealthy, ejected,
half-open, recovered, draining, suspect) is appended here as well as logged. The
buffer holds the last ``size`` events; each has a sequence number so a reader can
ask for what it has not seen yet. Appending is a deque append: these are rare
events, never per request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: the kinds of event, in the order the dashboard's legend lists them
EVENT_KINDS = (
    "registered",
    "removed",
    "unhealthy",
    "ejected",
    "half_open",
    "recovered",
    "draining",
    "suspect",
    "deployment",
)


@dataclass(frozen=True, slots=True)
class BackendEvent:
    seq: int
    #: wall-clock time, seconds since the epoch
    ts: float
    kind: str
    address: str
    node_id: str
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "ts": round(self.ts, 3),
            "kind": self.kind,
            "address": self.address,
            "node_id": self.node_id,
            "detail": self.detail,
        }


class EventLog:
    """The last ``size`` backend events, oldest first."""

    def __init__(self, size: int = 500, wall: Callable[[], float] = time.time) -> None:
        self._events: deque[BackendEvent] = deque(maxlen=size)
        self._wall = wall
        self._seq = 0

    def add(self, kind: str, address: str, node_id: str, detail: str = "") -> BackendEvent:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        self._seq += 1
        event = BackendEvent(self._seq, self._wall(), kind, address, node_id, detail[:200])
        self._events.append(event)
        return event

    @property
    def last_seq(self) -> int:
        return self._seq

    def since(self, seq: int) -> list[BackendEvent]:
        """Events after ``seq`` still in the buffer (all of them for 0)."""
        if seq >= self._seq:
            return []
        return [e for e in self._events if e.seq > seq]

    def __len__(self) -> int:
        return len(self._events)
