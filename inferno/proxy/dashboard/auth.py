"""Who may open the dashboard: anyone holding the cluster token.

A browser logs in once with the token (a form) and gets a session cookie: an
HMAC of the token, so no session state is kept and changing the token logs every
browser out. Scripts can send ``Authorization: Bearer <token>`` instead. The
cookie is HttpOnly and SameSite=Strict: other sites can neither read it nor make
a browser send it, which also keeps the try-it box from being driven cross-site.
Without a cluster token (``--insecure``) the dashboard is open, like the rest of
the ops port.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from inferno.errors import RateLimited
from inferno.security.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

COOKIE = b"inferno_dashboard"
#: the cookie's path: the dashboard and its API, nothing else on the ops port
COOKIE_PATH = b"/dashboard"
#: wrong tokens a peer may try per minute before its logins are refused for a while
LOGIN_FAILURES_PER_MINUTE = 10
#: peers whose failures are remembered (the oldest is forgotten first)
MAX_TRACKED_PEERS = 1024


class DashboardAuth:
    def __init__(self, token: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: peer -> its budget of wrong tokens: guessing is slow, and the log is not flooded
        self._failures: OrderedDict[str, TokenBucket] = OrderedDict()
        self._token = token.encode() if token else None
        self._bearer = b"Bearer " + self._token if self._token else None
        self._session = (
            hmac.new(self._token, b"inferno dashboard session v1", hashlib.sha256).hexdigest().encode()
            if self._token
            else None
        )

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def allowed(self, headers: Mapping[bytes, bytes]) -> bool:
        """The request carries the bearer token or the session cookie."""
        if self._token is None:
            return True
        assert self._bearer is not None and self._session is not None
        sent = headers.get(b"authorization")
        if sent is not None and hmac.compare_digest(sent, self._bearer):
            return True
        cookie = session_cookie(headers.get(b"cookie", b""))
        return cookie is not None and hmac.compare_digest(cookie, self._session)

    def login(self, token: bytes, peer: str) -> bytes | None:
        """The ``Set-Cookie`` header line for a right token, else None (and a log line).

        A peer that sent ``LOGIN_FAILURES_PER_MINUTE`` wrong tokens gets
        ``RateLimited`` until its budget refills, right token or not.
        """
        if self._token is None:
            return b""
        assert self._session is not None
        bucket = self._failures.get(peer)
        if bucket is not None:
            wait = bucket.wait_for(1.0)
            if wait > 0:
                raise RateLimited(
                    "too many wrong cluster tokens from this address; try later", retry_after_s=wait
                )
        if hmac.compare_digest(token.strip(), self._token):
            logger.info("Dashboard login from %s", peer or "?")
            return (
                b"Set-Cookie: "
                + COOKIE
                + b"="
                + self._session
                + b"; Path="
                + COOKIE_PATH
                + b"; HttpOnly; SameSite=Strict\r\n"
            )
        if bucket is None:
            bucket = self._failures[peer] = TokenBucket(LOGIN_FAILURES_PER_MINUTE, self._clock)
            if len(self._failures) > MAX_TRACKED_PEERS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(peer)
        bucket.try_take(1.0)
        if bucket.remaining() == 0:
            logger.warning("Dashboard logins from %s refused for a while: too many wrong tokens", peer or "?")
        else:
            logger.warning("Refused dashboard login from %s: wrong cluster token", peer or "?")
        return None

    @staticmethod
    def logout() -> bytes:
        return (
            b"Set-Cookie: "
            + COOKIE
            + b"=; Path="
            + COOKIE_PATH
            + b"; Max-Age=0; HttpOnly; SameSite=Strict\r\n"
        )


def session_cookie(header: bytes) -> bytes | None:
    """The dashboard cookie's value from a ``Cookie`` header, if present."""
    for part in header.split(b";"):
        name, sep, value = part.strip().partition(b"=")
        if sep and name == COOKIE:
            return value
    return None
