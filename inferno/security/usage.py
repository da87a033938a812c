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
        self._pending: dict[tuple[str, str], Usage] = {}
        for key_id, model, requests, prompt, completion in db.execute(
            "SELECT key_id, model, requests, prompt_tokens, completion_tokens FROM usage"
        ):
            self.totals[(key_id, model)] = Usage(requests, prompt, completion)

    def add(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        for table in (self.totals, self._pending):
            usage = table.get((key_id, model))
            if usage is None:
                usage = table[(key_id, model)] = Usage()
            usage.requests += 1
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens

    def take_pending(self) -> dict[tuple[str, str], Usage]:
        pending, self._pending = self._pending, {}
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
