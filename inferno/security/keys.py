"""API keys in SQLite: created by ``inferno keys``, read by the proxy.

A key looks like ``ik-<id>-<secret>``. Only its SHA-256 is stored (the key has 192
bits of entropy, so a fast hash is enough); the id, which is not secret, finds
the row. The proxy holds an in-memory snapshot and reloads it when the database
changes (``PRAGMA data_version``), so ``keys create`` and ``keys revoke`` take
effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    hash: str
    rpm: int | None
    tpm: int | None
    #: the models this key may use (empty: any)
    models: tuple[str, ...]
    created: float
    revoked: float | None = None

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": list(self.models),
            "created": self.created,
            "revoked": self.revoked,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id part of ``ik-<id>-<secret>``, or None if it does not look like a key."""
    parts = key.split("-", 2)  # the secret part may hold dashes itself
    if len(parts) != 3 or parts[0] != "ik" or len(parts[1]) != 8 or len(parts[2]) < 16:
        return None
    return parts[1]


class KeyStore:
    """The ``api_keys`` table."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def create(
        self, name: str, *, rpm: int | None = None, tpm: int | None = None, models: tuple[str, ...] = ()
    ) -> tuple[str, ApiKey]:
        """A new key: returns the key itself (shown once) and its record."""
        ident = secrets.token_hex(4)
        key = f"ik-{ident}-{secrets.token_urlsafe(24)}"
        record = ApiKey(ident, name, digest(key), rpm, tpm, models, time.time())
        self._db.execute(
            "INSERT INTO api_keys (id, name, hash, rpm, tpm, models, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ident, name, record.hash, rpm, tpm, ",".join(models) or None, record.created),
        )
        return key, record

    def revoke(self, ident_or_name: str) -> int:
        cursor = self._db.execute(
            "UPDATE api_keys SET revoked = ? WHERE (id = ? OR name = ?) AND revoked IS NULL",
            (time.time(), ident_or_name, ident_or_name),
        )
        return cursor.rowcount

    def all(self) -> list[ApiKey]:
        rows = self._db.execute(
            "SELECT id, name, hash, rpm, tpm, models, created, revoked FROM api_keys ORDER BY created"
        ).fetchall()
        return [
            ApiKey(r[0], r[1], r[2], r[3], r[4], tuple(filter(None, (r[5] or "").split(","))), r[6], r[7])
            for r in rows
        ]

    def version(self) -> int:
        """Changes whenever another connection commits (SQLite's ``data_version``)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])


def verify(record: ApiKey | None, key: str) -> bool:
    return record is not None and record.revoked is None and hmac.compare_digest(record.hash, digest(key))
