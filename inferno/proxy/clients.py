"""Client authentication, per-key budgets and usage, on the proxy's data port.

With ``--require-api-key`` every request needs ``Authorization: Bearer <key>``.
The gate checks it against an in-memory snapshot of the key table (reloaded
within a second of ``inferno keys create|revoke``), enforces the key's model list
and its requests- and tokens-per-minute buckets, and hands back the
``x-ratelimit-*`` headers every response carries. When the response is done, the
real token usage is charged to the key's token bucket and to the usage ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from inferno.errors import InvalidApiKey, ModelNotAllowed, RateLimited
from inferno.security import ApiKey, KeyStore, TokenBucket, Usage, UsageLedger, key_id, verify

logger = logging.getLogger(__name__)

#: how often the key table is checked for changes, and usage written out
RELOAD_S = 1.0


@dataclass(slots=True)
class Limits:
    """One key's buckets and the fixed part of its headers, built when it is loaded."""

    requests: TokenBucket | None
    tokens: TokenBucket | None
    limit_requests: bytes
    limit_tokens: bytes


@dataclass(slots=True)
class Grant:
    """An admitted request's key and budgets."""

    key: ApiKey
    limits: Limits
    #: tokens taken from the key's bucket at admission, until the real usage is known
    reserved: float = 0.0

    @property
    def tokens(self) -> TokenBucket | None:
        return self.limits.tokens

    def headers(self) -> bytes:
        """The ``x-ratelimit-*`` lines: the limits pre-formatted, the remaining counts now."""
        limits = self.limits
        out = b""
        if limits.requests is not None:
            out = limits.limit_requests + str(max(0, int(limits.requests.level))).encode() + b"\r\n"
        if limits.tokens is not None:
            out += limits.limit_tokens + str(max(0, int(limits.tokens.level))).encode() + b"\r\n"
        return out


#: verified ``Authorization`` values kept (cleared on every reload of the key table)
MAX_VERIFIED = 4096


class ClientGate:
    def __init__(
        self, store: KeyStore, ledger: UsageLedger, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._clock = clock
        self._keys: dict[str, ApiKey] = {}
        self._limits: dict[str, Limits] = {}
        #: raw Authorization header -> its key, for headers already verified once
        self._verified: dict[bytes, ApiKey] = {}
        self._version = -1
        self._task: asyncio.Task[None] | None = None
        self.reload()

    # -- the key table -------------------------------------------------------------------
    def _read(self) -> tuple[int, list[ApiKey]] | None:
        """The key table if it changed since the last load (blocking SQLite reads)."""
        version = self._store.version()
        return None if version == self._version else (version, self._store.all())

    def reload(self) -> None:
        """Load the key table now, if it changed (blocking: at start-up and in tests)."""
        fresh = self._read()
        if fresh is not None:
            self._apply(*fresh)

    def _apply(self, version: int, records: list[ApiKey]) -> None:
        self._version = version
        keys = {k.id: k for k in records}
        for ident, key in keys.items():
            old = self._keys.get(ident)
            if old is None or (old.rpm, old.tpm) != (key.rpm, key.tpm):
                self._limits[ident] = Limits(
                    TokenBucket(key.rpm, self._clock) if key.rpm else None,
                    TokenBucket(key.tpm, self._clock) if key.tpm else None,
                    b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-remaining-requests: " % (key.rpm or 0),
                    b"x-ratelimit-limit-tokens: %d\r\nx-ratelimit-remaining-tokens: " % (key.tpm or 0),
                )
        for ident in set(self._limits) - set(keys):
            del self._limits[ident]
        self._keys = keys
        self._verified = {}  # a revoked key must be checked again
        logger.info("API keys loaded: %d active", sum(1 for k in keys.values() if k.revoked is None))

    async def run(self) -> None:
        """Reload on change and write usage out, every second, off the event loop."""
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                fresh = await asyncio.to_thread(self._read)  # the event loop does no I/O
                if fresh is not None:
                    self._apply(*fresh)
                await self.flush()
            except Exception:
                logger.exception("API key reload or usage write failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="client-gate")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        pending = self._ledger.take_pending()
        if pending:
            await asyncio.to_thread(self._ledger.write, pending)

    # -- the request path ----------------------------------------------------------------
    def authenticate(self, headers: Mapping[bytes, bytes]) -> ApiKey:
        """The request's API key, or ``InvalidApiKey`` (missing, unknown or revoked)."""
        raw = headers.get(b"authorization", b"")
        known = self._verified.get(raw)
        if known is not None:
            return known
        key = raw[7:].decode("latin-1").strip() if raw[:7].lower() == b"bearer " else ""
        ident = key_id(key) if key else None
        record = self._keys.get(ident) if ident else None
        if record is None or not verify(record, key):
            raise InvalidApiKey(
                "a valid API key is required: Authorization: Bearer <key> (inferno keys create)"
            )
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[raw] = record
        return record

    def _limits_of(self, record: ApiKey) -> Limits:
        limits = self._limits.get(record.id)
        return limits if limits is not None else Limits(None, None, b"", b"")

    def headers_for(self, record: ApiKey) -> bytes:
        return Grant(record, self._limits_of(record)).headers()

    def admit(self, record: ApiKey, model: str | None, reserve: float = 1.0) -> Grant:
        """The key's model list and budgets for one request: one request, and ``reserve``
        tokens (what it may cost) held until ``settle`` charges the real usage or
        ``release`` gives them back, so concurrent requests cannot spend a budget many
        times over before any of them is charged."""
        if record.models and model not in record.models:
            raise ModelNotAllowed(
                f"this API key may use only {list(record.models)}; name one of them in 'model'",
                param="model",
            )
        limits = self._limits_of(record)
        grant = Grant(record, limits)
        requests, tokens = limits.requests, limits.tokens
        if tokens is not None:
            # A request that may cost more than the whole budget runs once the bucket is full.
            reserve = max(1.0, min(reserve, tokens.capacity))
        wait = tokens.wait_for(reserve) if tokens is not None else 0.0
        if wait:
            raise RateLimited(
                "this API key is over its tokens per minute; retry later",
                retry_after_s=wait,
                headers=grant.headers(),
            )
        if requests is not None:
            wait = requests.try_take(1.0)
            if wait:
                raise RateLimited(
                    "this API key is over its requests per minute; retry later",
                    retry_after_s=wait,
                    headers=grant.headers(),
                )
        if tokens is not None:
            tokens.debit(reserve)
            grant.reserved = reserve
        return grant

    def settle(self, grant: Grant, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Charge a finished request's real usage (in place of what was reserved)."""
        if grant.tokens is not None:
            grant.tokens.debit(prompt_tokens + completion_tokens - grant.reserved)
            grant.reserved = 0.0
        self._ledger.add(grant.key.id, model or "-", prompt_tokens, completion_tokens)

    def release(self, grant: Grant) -> None:
        """The request ended without usage to charge: give its reservation back."""
        if grant.tokens is not None and grant.reserved:
            grant.tokens.refund(grant.reserved)
            grant.reserved = 0.0

    def usage_by_name(self) -> Iterator[tuple[str, str, Usage]]:
        """(key name, model, totals); the name is the key's, validated at creation."""
        names = {k.id: k.name for k in self._keys.values()}
        for ident, model, usage in self._ledger.rows():
            yield names.get(ident, ident), model, usage

    def usage(self) -> list[dict[str, object]]:
        names = {k.id: k.name for k in self._keys.values()}
        return [
            {
                "key_id": key_id_,
                "key_name": names.get(key_id_, ""),
                "model": model,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            }
            for key_id_, model, u in self._ledger.rows()
        ]
