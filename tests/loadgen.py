"""A bounded closed-loop load generator for the system and end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadResult:
    codes: Counter[int] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    #: (request id, backend node id) of every successful response
    answered: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    acted_at: float = 0.0
    action_result: Any = None
    started: float = 0.0
    elapsed_s: float = 0.0

    @property
    def failures(self) -> int:
        """Everything that is not a 200 (429 and 504 included) is a failure."""
        return sum(n for code, n in self.codes.items() if code != 200)


async def load(
    url: str,
    *,
    concurrency: int,
    action: Callable[[], Any] | None = None,
    at_s: float = 0.0,
    min_duration_s: float = 1.0,
    max_duration_s: float = 60.0,
    max_requests: int = 20000,
    body: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
    result: LoadResult | None = None,
) -> LoadResult:
    """Closed-loop load. Runs ``action`` (blocking, in a thread) once at ``at_s``;
    stops when the action is done and ``min_duration_s`` has passed, and never
    later than ``max_duration_s`` or after ``max_requests`` requests. Pass ``result``
    to watch the counts from the action while the load runs."""
    result = result if result is not None else LoadResult()
    result.started = time.monotonic()
    payload = body or {"prompt": "load", "max_tokens": 8}
    sent = 0
    action_done = asyncio.Event()
    if action is None:
        action_done.set()

    def running() -> bool:
        elapsed = time.monotonic() - result.started
        if elapsed >= max_duration_s or sent >= max_requests:
            return False
        return not (action_done.is_set() and elapsed >= min_duration_s)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while running():
            sent += 1
            try:
                r = await http.post(url, json=payload)
            except httpx.HTTPError as exc:
                result.codes[-1] += 1
                result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            result.codes[r.status_code] += 1
            backend = r.headers.get("x-inferno-backend", "-")
            result.served[backend] += 1
            if r.status_code == 200:
                result.answered.append((r.headers.get("x-request-id", ""), backend))
            else:
                result.errors.append(f"{r.status_code}: {r.text[:200]}")

    async def trigger() -> None:
        if action is None:
            return
        try:
            await asyncio.sleep(at_s)
            result.acted_at = time.monotonic()
            result.action_result = await asyncio.to_thread(action)
        finally:
            action_done.set()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        await asyncio.gather(trigger(), *(worker(http) for _ in range(concurrency)))
    result.elapsed_s = time.monotonic() - result.started
    return result
