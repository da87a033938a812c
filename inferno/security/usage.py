"""Usage accounting: requests and tokens per API key and per model.

Counted in memory on the event loop (plain ints), written to SQLite by
``flush`` (every second from the proxy, and at shutdown), loaded back at start:
a restart loses nothing, a crash at most the last second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class UsageLedger:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        #: (key id, model) -> totals, including what is not yet written
        self.totals: dict[tuple[str, str], Usage] = {}
        #: what the database holds, per row
        self._written: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._dirty: set[tuple[str, str]] = set()
        for key_id, model, requests, prompt, completion in db.execute(
            "SELECT key_id, model, requests, prompt_tokens, completion_tokens FROM usage"
        ):
            self.totals[(key_id, model)] = Usage(requests, prompt, completion)
            self._written[(key_id, model)] = (requests, prompt, completion)

    def add(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        row = (key_id, model)
        usage = self.totals.get(row)
        if usage is None:
            usage = self.totals[row] = Usage()
        usage.requests += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        self._dirty.add(row)

    def take_pending(self) -> dict[tuple[str, str], Usage]:
        """What changed since the last call, as deltas to add to the database."""
        pending: dict[tuple[str, str], Usage] = {}
        for row in self._dirty:
            now = self.totals[row]
            before = self._written.get(row, (0, 0, 0))
            pending[row] = Usage(
                now.requests - before[0], now.prompt_tokens - before[1], now.completion_tokens - before[2]
            )
            self._written[row] = (now.requests, now.prompt_tokens, now.completion_tokens)
        self._dirty = set()
        return pending

    def write(self, pending: dict[tuple[str, str], Usage]) -> None:
        """Add ``pending`` to the database in one transaction (blocking: run it off the loop)."""
        if not pending:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO usage (key_id, model, requests, prompt_tokens, completion_tokens) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id, model) DO UPDATE SET "
                "requests = requests + excluded.requests, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens",
                [(k, m, u.requests, u.prompt_tokens, u.completion_tokens) for (k, m), u in pending.items()],
            )

    def rows(self) -> Iterator[tuple[str, str, Usage]]:
        for (key_id, model), usage in sorted(self.totals.items()):
            yield key_id, model, usage
