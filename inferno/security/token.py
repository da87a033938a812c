"""The cluster token: who may register backends and change the cluster.

Proxy and backends share one secret, read from ``--cluster-token-file`` (a Docker
secret, say) or the ``INFERNO_CLUSTER_TOKEN`` environment variable. Registration,
heartbeats, deregistration and the chaos hooks need ``Authorization: Bearer
<token>``; the comparison is constant-time, and a refusal is logged with the
peer's address, never with what it sent. Anyone can be refused, so refusals are
counted exactly (``refusals``, a Prometheus counter) but logged at a bounded rate:
the first at once, then one summary line per ``refused_log_interval_s``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import string
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from inferno.errors import ConfigError, Unauthorized
from inferno.observability.throttle import ThrottledLog

logger = logging.getLogger(__name__)

TOKEN_ENV = "INFERNO_CLUSTER_TOKEN"
#: the admin token: deployments and the controller's feed (never held by backends)
ADMIN_TOKEN_ENV = "INFERNO_ADMIN_TOKEN"
#: the token queue workers lease with (``--worker-token-file``)
WORKER_TOKEN_ENV = "INFERNO_WORKER_TOKEN"
MIN_CHARS = 16
MAX_CHARS = 512
_ALLOWED = frozenset(string.ascii_letters + string.digits + "-._~+/=")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def read_token(
    path: str | None,
    environ: Mapping[str, str] = os.environ,
    *,
    env: str = TOKEN_ENV,
    what: str = "cluster token",
) -> str | None:
    """The token from ``path`` (surrounding whitespace ignored), else from the
    environment, else None. A token that is too short or has odd characters is a
    configuration error, so a typo never silently weakens the cluster."""
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the {what} file {path}: {exc}") from None
        source = f"file {path}"
    else:
        token = environ.get(env, "").strip()
        source = env
        if not token:
            return None
    if not MIN_CHARS <= len(token) <= MAX_CHARS or not set(token) <= _ALLOWED:
        raise ConfigError(
            f"the {what} in {source} must be {MIN_CHARS}-{MAX_CHARS} characters of "
            "[A-Za-z0-9-._~+/=] (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


class ClusterAuth:
    """Checks (proxy side) or adds (backend side) the cluster token."""

    def __init__(
        self,
        token: str | None,
        *,
        refused_log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        secret: str = "cluster token",
    ) -> None:
        #: what the secret is called in refusals ("cluster token", "admin token")
        self.secret = secret
        self._expected = b"Bearer " + token.encode() if token else None
        #: (endpoint, "missing" | "wrong") -> refused requests, ever
        self.refusals: dict[tuple[str, str], int] = {}
        self._refused_log = ThrottledLog(logger, refused_log_interval_s, clock)

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def header(self) -> bytes:
        """The request header a backend sends (empty without a token)."""
        return b"Authorization: " + self._expected + b"\r\n" if self._expected else b""

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether the request carries this token (a token set; nothing counted or logged)."""
        sent = headers.get(b"authorization", b"")
        return self._expected is not None and hmac.compare_digest(sent, self._expected)

    def check(
        self, headers: Mapping[bytes, bytes], what: str, peer: str, endpoint: str = "registration"
    ) -> None:
        """Raise ``Unauthorized`` unless the request carries the token.

        ``what`` names the call in the log line; ``endpoint`` is the counter's
        label, a fixed name (never a client's path).
        """
        if self._expected is None:
            return
        sent = headers.get(b"authorization", b"")
        if hmac.compare_digest(sent, self._expected):
            return
        reason = "wrong" if sent else "missing"
        self.refusals[endpoint, reason] = self.refusals.get((endpoint, reason), 0) + 1
        self._refused_log.warning(
            "Refused %s from %s: %s %s", what, peer or "?", "wrong" if sent else "no", self.secret
        )
        raise Unauthorized(f"this needs the {self.secret}: Authorization: Bearer <token>")
