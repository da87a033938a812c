"""One SQLite file under ``--state-dir``: WAL, and schema migrations by ``user_version``.

Each migration runs once, in order, inside one transaction that also bumps
``PRAGMA user_version``, so an ``inferno.db`` written by any earlier release opens
and is brought up to date (the first releases created the key tables with no
version: migration 1 is written with ``IF NOT EXISTS`` so it adopts them). Only
the proxy (and the ``inferno keys`` command, on the same host) opens the file;
everything else goes through the proxy's API.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from inferno.errors import ConfigError

DB_NAME = "inferno.db"

#: migration N brings the schema from version N-1 to N
MIGRATIONS: tuple[str, ...] = (
    # 1: API keys and their usage
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        models TEXT,
        created REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE IF NOT EXISTS usage (
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, model)
    );
    """,
    # 2: deployments and their autoscaling state
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        generation INTEGER NOT NULL,
        replicas INTEGER NOT NULL,
        deleting INTEGER NOT NULL DEFAULT 0,
        last_request REAL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 3: the pull queues' journal (inferno.queues.journal)
    """
    CREATE TABLE queue_jobs (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        owner TEXT NOT NULL,
        idem TEXT,
        args TEXT NOT NULL,
        limit_s REAL NOT NULL,
        priority INTEGER NOT NULL,
        arrival REAL NOT NULL,
        input TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        lease_id TEXT,
        lease_expiry REAL NOT NULL,
        leased_at REAL NOT NULL,
        worker TEXT NOT NULL,
        result TEXT,
        finished_at REAL NOT NULL
    );
    CREATE INDEX queue_jobs_arrival ON queue_jobs (arrival);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(state_dir: Path) -> sqlite3.Connection:
    """The state database, migrated to ``SCHEMA_VERSION``. A new directory and file are
    made readable by their owner only (API key hashes, names and usage are nobody
    else's business; SQLite gives its -wal and -shm files the database file's mode).
    Autocommit mode: callers that write several rows use ``transaction``."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = state_dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        migrate(db)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the state database in {state_dir}: {exc}") from None
    return db


def migrate(db: sqlite3.Connection) -> int:
    """Run the migrations this database has not had; returns the version it is at."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the state database is at schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade Inferno, or use another --state-dir"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            # executescript would commit on its own; run the statements one by one
            for statement in filter(str.strip, MIGRATIONS[number - 1].split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
