"""The state database: migrations by user_version, and files written by earlier releases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from inferno.errors import ConfigError
from inferno.security import KeyStore, UsageLedger
from inferno.state import SCHEMA_VERSION, connect

#: the schema the releases before migrations wrote (no user_version)
OLD_SCHEMA = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL, rpm INTEGER,
    tpm INTEGER, models TEXT, created REAL NOT NULL, revoked REAL);
CREATE TABLE usage (key_id TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model));
"""


def test_a_new_database_is_at_the_current_version_with_wal(tmp_path: Path) -> None:
    db = connect(tmp_path / "state")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"api_keys", "usage", "deployments"} <= tables
    assert (tmp_path / "state" / "inferno.db").stat().st_mode & 0o777 == 0o600


def test_a_file_from_before_migrations_opens_and_keeps_its_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "inferno.db")
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO api_keys (id, name, hash, created) VALUES ('abcd1234', 'old', 'h', 1.0)")
    old.execute("INSERT INTO usage (key_id, model, requests) VALUES ('abcd1234', 'm', 7)")
    old.commit()
    old.close()
    db = connect(state)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [k.name for k in KeyStore(db).all()] == ["old"]
    assert db.execute("SELECT requests FROM usage").fetchone()[0] == 7
    UsageLedger(db)  # the usage table is usable as it was
    db.execute(
        "INSERT INTO deployments (id, spec, generation, replicas, created, updated) VALUES ('d', '{}', 1, 0, 1, 1)"
    )
    # opening it again runs nothing twice
    again = connect(state)
    assert again.execute("SELECT count(*) FROM deployments").fetchone()[0] == 1


def test_a_file_from_a_newer_release_is_refused_not_downgraded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    connect(state).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer than this release"):
        connect(state)
