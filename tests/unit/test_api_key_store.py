"""API key store, token buckets (injected clock) and the usage ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferno.errors import RateLimited
from inferno.proxy.clients import ClientGate
from inferno.security import KeyStore, TokenBucket, UsageLedger, connect, key_id, verify
from tests.unit.test_registry import FakeClock


def test_keys_are_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(connect(tmp_path))
    key, record = store.create("alice", rpm=10, models=("m1", "m2"))
    assert key.startswith("ik-") and key_id(key) == record.id
    (loaded,) = store.all()
    assert loaded.models == ("m1", "m2") and loaded.rpm == 10 and loaded.hash != key
    assert verify(loaded, key) and not verify(loaded, key + "x") and not verify(None, key)
    assert store.revoke("alice") == 1 and store.revoke("alice") == 0
    assert not verify(store.all()[0], key)
    assert key_id("ik-short-x") is None and key_id("sk-12345678-abcdefabcdefabcdef") is None


def test_another_connection_sees_changes_through_data_version(tmp_path: Path) -> None:
    reader, writer = KeyStore(connect(tmp_path)), KeyStore(connect(tmp_path))
    before = reader.version()
    writer.create("bob")
    assert reader.version() != before and [k.name for k in reader.all()] == ["bob"]


def test_token_bucket_refills_on_the_injected_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock)  # one per second
    for _ in range(60):
        assert bucket.try_take() == 0.0
    assert bucket.try_take() == 1.0 and bucket.remaining() == 0
    clock.now += 2.5
    assert bucket.remaining() == 2
    bucket.debit(10)  # real usage after the fact may go below zero
    assert bucket.wait_for(1.0) == 8.5 and bucket.remaining() == 0
    clock.now += 1000
    assert bucket.remaining() == 60  # never above capacity


def test_usage_ledger_persists_deltas(tmp_path: Path) -> None:
    db = connect(tmp_path)
    ledger = UsageLedger(db)
    ledger.add("k1", "m", 3, 5)
    ledger.add("k1", "m", 1, 1)
    ledger.write(ledger.take_pending())
    ledger.add("k1", "m", 10, 0)
    ledger.write(ledger.take_pending())
    assert ledger.take_pending() == {}
    again = UsageLedger(connect(tmp_path))
    ((key, model, usage),) = list(again.rows())
    assert (key, model, usage.requests, usage.prompt_tokens, usage.completion_tokens) == ("k1", "m", 3, 14, 6)


def test_a_new_state_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    import stat

    state = tmp_path / "state"
    store = KeyStore(connect(state))
    store.create("alice")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.iterdir():  # the database and SQLite's -wal and -shm files
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path.name, oct(path.stat().st_mode))


def test_a_reservation_is_replaced_by_the_real_usage_or_given_back(tmp_path: Path) -> None:
    clock = FakeClock()
    db = connect(tmp_path)
    _, record = KeyStore(db).create("k", tpm=300)
    gate = ClientGate(KeyStore(db), UsageLedger(db), clock=clock)
    first = gate.admit(record, None, reserve=200)
    assert first.tokens is not None and first.tokens.remaining() == 100
    with pytest.raises(RateLimited):  # 200 more do not fit beside the first
        gate.admit(record, None, reserve=200)
    gate.settle(first, "m", 10, 20)  # it cost 30: 270 left
    assert first.tokens.remaining() == 270
    second = gate.admit(record, None, reserve=250)
    gate.release(second)  # failed: nothing charged
    assert second.tokens is not None and second.tokens.remaining() == 270
    gate.release(second)  # twice is harmless
    assert second.tokens.remaining() == 270
    with pytest.raises(RateLimited):  # more than the whole budget waits until it is full...
        gate.admit(record, None, reserve=10**9)
    clock.now += 60.0
    huge = gate.admit(record, None, reserve=10**9)  # ...then runs, holding all of it
    assert huge.reserved == 300
