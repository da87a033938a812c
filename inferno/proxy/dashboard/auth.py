"""Who may open the dashboard: anyone holding the cluster token.

A browser logs in once with the token (a form) and gets a session cookie
``<session id>.<issued at>.<HMAC>``, keyed by the token: changing the token logs
every browser out, a session ends ``session_ttl_s`` after login, and logging out
revokes that session (a bounded set of revoked ids, each kept until it would
have expired anyway). Scripts can send ``Authorization: Bearer <token>`` instead.
The cookie is HttpOnly and SameSite=Strict: other sites can neither read it nor
make a browser send it, which also keeps the try-it box from being driven
cross-site.

Every way of presenting a token (the form, a bearer header, a cookie) is a try:
a wrong one is counted against the peer's address, and a peer over its budget
gets 429 for every try, the right token included, until its budget refills. An
authentic session that expired or was revoked is not a guess and costs nothing.
Without a cluster token (``--insecure``) the dashboard is open, like the rest
of the ops port.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping

from inferno.errors import BadRequest, PayloadTooLarge, RateLimited, UnsupportedMediaType
from inferno.observability.throttle import ThrottledLog
from inferno.security.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

COOKIE = b"inferno_dashboard"
#: the cookie's path: the dashboard and its API, nothing else on the ops port
COOKIE_PATH = b"/dashboard"
#: wrong tokens a peer may try per minute before its tries are refused for a while
LOGIN_FAILURES_PER_MINUTE = 10
#: peers whose failures are remembered (the oldest is forgotten first)
MAX_TRACKED_PEERS = 1024
#: a login form holds one token of at most 512 characters, percent-encoded
MAX_LOGIN_FORM_BYTES = 4096
_FORM_TYPE = b"application/x-www-form-urlencoded"
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_SESSION = re.compile(rb"([A-Za-z0-9_-]{22})\.([0-9]{1,12})\.([0-9a-f]{64})")


def login_token(body: bytes, content_type: bytes) -> bytes:
    """The ``token`` field of a login form, or a 4xx naming what is wrong with the form."""
    media_type = content_type.partition(b";")[0].strip().lower()
    if media_type != _FORM_TYPE:
        raise UnsupportedMediaType(
            "log in with a form (application/x-www-form-urlencoded) holding token=<cluster token>, "
            "or send Authorization: Bearer <cluster token>"
        )
    if len(body) > MAX_LOGIN_FORM_BYTES:
        raise PayloadTooLarge(f"a login form is at most {MAX_LOGIN_FORM_BYTES} bytes")
    if not body.isascii() or _BAD_ESCAPE.search(body):
        raise BadRequest("the login form is not valid application/x-www-form-urlencoded")
    try:
        fields = urllib.parse.parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
            max_num_fields=8,
        )
    except ValueError:  # a field without "=", too many fields, or percent-encoded non-UTF-8
        raise BadRequest("the login form is not valid application/x-www-form-urlencoded") from None
    tokens = [value for name, value in fields if name == "token"]
    if not tokens:
        raise BadRequest("the login form needs a token field", param="token")
    if len(tokens) > 1:
        raise BadRequest("send the token field once", param="token")
    return tokens[0].strip().encode()


class DashboardAuth:
    def __init__(
        self,
        token: str | None,
        *,
        session_ttl_s: float = 43_200.0,
        max_revoked: int = 4096,
        refused_log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        #: sessions carry a wall-clock issue time, so they outlive a proxy restart
        self._wall = wall
        self._ttl_s = session_ttl_s
        self._max_revoked = max_revoked
        #: peer -> its budget of wrong tokens: guessing is slow, and the log is not flooded
        self._failures: OrderedDict[str, TokenBucket] = OrderedDict()
        #: revoked session id -> its issue time, in the order they were revoked
        self._revoked: OrderedDict[bytes, int] = OrderedDict()
        #: every session issued at or before this is revoked (what a full revocation set leaves)
        self._revoked_before = -1
        #: ("dashboard", "wrong" | "rate_limited") -> refused tries, ever (a Prometheus counter)
        self.refusals: dict[tuple[str, str], int] = {}
        self._refused_log = ThrottledLog(logger, refused_log_interval_s, clock)
        self._token = token.encode() if token else None
        self._key = (
            hmac.new(self._token, b"inferno dashboard session v2", hashlib.sha256).digest()
            if self._token
            else b""
        )

    @property
    def enabled(self) -> bool:
        return self._token is not None

    # -- checking a request ----------------------------------------------------------------
    def allowed(self, headers: Mapping[bytes, bytes], peer: str) -> bool:
        """The request carries the bearer token or a live session cookie.

        A wrong bearer token or a forged cookie counts against ``peer``; a peer over
        its budget gets ``RateLimited`` for any token it presents. A request that
        presents none is simply not allowed.
        """
        if self._token is None:
            return True
        sent = headers.get(b"authorization")
        cookies = session_cookies(headers.get(b"cookie", b""))
        if sent is None and not cookies:
            return False
        # A live session cannot be guessed (it is an HMAC): it opens the dashboard even
        # for an address over its budget, so guessing from a shared address (a NAT, a
        # reverse proxy) cannot lock out those already logged in.
        states = [self._session_state(cookie) for cookie in cookies]
        if sent is None and "live" in states:
            return True
        self._refuse_if_over_budget(peer)
        if sent is not None:
            scheme, _, token = sent.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token):
                return True
            self._failed(peer, "a wrong bearer token")
            return False
        if "forged" in states:
            self._failed(peer, "a forged session cookie")
        return False

    def login(self, token: bytes, peer: str) -> bytes | None:
        """The ``Set-Cookie`` header line for a right token, else None (and a log line).

        A peer that sent ``LOGIN_FAILURES_PER_MINUTE`` wrong tokens gets
        ``RateLimited`` until its budget refills, right token or not.
        """
        if self._token is None:
            return b""
        self._refuse_if_over_budget(peer)
        if hmac.compare_digest(token, self._token):
            logger.info("Dashboard login from %s", peer or "?")
            return (
                b"Set-Cookie: "
                + COOKIE
                + b"="
                + self._new_session()
                + b"; Path="
                + COOKIE_PATH
                + b"; Max-Age=%d; HttpOnly; SameSite=Strict\r\n" % int(self._ttl_s)
            )
        self._failed(peer, "a wrong cluster token")
        return None

    def logout(self, headers: Mapping[bytes, bytes]) -> bytes:
        """Revoke the request's session (if it is a live one); the header line that clears it."""
        for cookie in session_cookies(headers.get(b"cookie", b"")):
            if self._token is not None and self._session_state(cookie) == "live":
                match = _SESSION.fullmatch(cookie)
                assert match is not None
                self._revoke(match.group(1), int(match.group(2)))
        return (
            b"Set-Cookie: "
            + COOKIE
            + b"=; Path="
            + COOKIE_PATH
            + b"; Max-Age=0; HttpOnly; SameSite=Strict\r\n"
        )

    # -- sessions ------------------------------------------------------------------------------
    def _mac(self, sid: bytes, issued: int) -> bytes:
        return hmac.new(self._key, sid + b".%d" % issued, hashlib.sha256).hexdigest().encode()

    def _new_session(self) -> bytes:
        sid = secrets.token_urlsafe(16).encode()
        issued = int(self._wall())
        return sid + b".%d." % issued + self._mac(sid, issued)

    def _session_state(self, cookie: bytes) -> str:
        """``live``, ``forged`` (not made by us: a guess), ``expired`` or ``revoked``."""
        match = _SESSION.fullmatch(cookie)
        if match is None:
            return "forged"
        sid, issued = match.group(1), int(match.group(2))
        if not hmac.compare_digest(match.group(3), self._mac(sid, issued)):
            return "forged"
        age = self._wall() - issued
        if age >= self._ttl_s or age < -60:  # 60 s: the wall clock may step back a little
            return "expired"
        if issued <= self._revoked_before or sid in self._revoked:
            return "revoked"
        return "live"

    def _revoke(self, sid: bytes, issued: int) -> None:
        self._revoked[sid] = issued
        if len(self._revoked) <= self._max_revoked:
            return
        # Full: forget the sessions that have expired anyway, then, if still full, the
        # oldest logouts, ending every session issued before them so none comes back.
        horizon = self._wall() - self._ttl_s
        for old in [s for s, t in self._revoked.items() if t <= horizon]:
            del self._revoked[old]
        while len(self._revoked) > self._max_revoked:
            _, forgotten = self._revoked.popitem(last=False)
            self._revoked_before = max(self._revoked_before, forgotten)

    # -- the budget of wrong tries ---------------------------------------------------------------
    def _refuse_if_over_budget(self, peer: str) -> None:
        bucket = self._failures.get(peer)
        if bucket is None:
            return
        wait = bucket.wait_for(1.0)
        if wait > 0:
            self.refusals["dashboard", "rate_limited"] = (
                self.refusals.get(("dashboard", "rate_limited"), 0) + 1
            )
            raise RateLimited(
                "too many wrong cluster tokens from this address; try later", retry_after_s=wait
            )

    def _failed(self, peer: str, what: str) -> None:
        self.refusals["dashboard", "wrong"] = self.refusals.get(("dashboard", "wrong"), 0) + 1
        bucket = self._failures.get(peer)
        if bucket is None:
            bucket = self._failures[peer] = TokenBucket(LOGIN_FAILURES_PER_MINUTE, self._clock)
            if len(self._failures) > MAX_TRACKED_PEERS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(peer)
        bucket.try_take(1.0)
        if bucket.remaining() == 0:
            self._refused_log.warning(
                "Dashboard tries from %s refused for a while: too many wrong tokens (the last: %s)",
                peer or "?",
                what,
            )
        else:
            self._refused_log.warning("Refused dashboard access from %s: %s", peer or "?", what)


#: dashboard cookies looked at in one ``Cookie`` header (a browser may send a stale
#: one for a parent path beside the live one)
MAX_SESSION_COOKIES = 4


def session_cookies(header: bytes) -> list[bytes]:
    """The dashboard cookie's values in a ``Cookie`` header, at most MAX_SESSION_COOKIES."""
    values = []
    for part in header.split(b";"):
        name, sep, value = part.strip().partition(b"=")
        if sep and name == COOKIE and value:
            values.append(value)
            if len(values) == MAX_SESSION_COOKIES:
                break
    return values
