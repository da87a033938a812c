"""The dashboard's routes on the ops port.

``GET /dashboard`` (the page, or a login form), ``POST /dashboard/login`` and
``/dashboard/logout``, ``GET /dashboard/static/<file>`` (the page's script and
style, package data), ``GET /dashboard/events`` (the live feed, server-sent
events), ``GET /dashboard/api/state`` (the same as JSON) and ``POST
/dashboard/api/try`` (the try-it box). Everything the page shows comes from the
proxy: no asset is fetched from anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources

from inferno.errors import BadRequest, NotFound, RateLimited, TooManyConnections, Unauthorized
from inferno.http.responses import JSON_HEADERS, SSE_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder
from inferno.proxy.dashboard.auth import DashboardAuth, login_token
from inferno.proxy.dashboard.feed import DashboardFeed
from inferno.proxy.dashboard.tryit import TryIt, TryRequest
from inferno.schemas import parse_body

logger = logging.getLogger(__name__)

#: the page runs only its own script and style, and is never framed
_PAGE_HEADERS = (
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"X-Frame-Options: DENY\r\n"
    b"Referrer-Policy: no-referrer\r\n"
    b"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    b"frame-ancestors 'none'\r\n"
)
_STATIC_TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}


def _host(peer: str) -> str:
    """The address part of ``host:port``: wrong tries are counted per address."""
    return peer.rpartition(":")[0]


def _asset(name: str) -> bytes:
    return (resources.files("inferno.proxy.dashboard") / "static" / name).read_bytes()


class Dashboard:
    def __init__(
        self,
        feed: DashboardFeed,
        auth: DashboardAuth,
        tryit: TryIt,
        max_clients: int,
        write_timeout_s: float = 10.0,
    ) -> None:
        #: a feed's message must be taken by the dashboard within this, or the feed is dropped
        self._write_timeout_s = write_timeout_s
        self._feed = feed
        self._auth = auth
        self._try = tryit
        self._max_clients = max_clients
        self._page = _asset("index.html")
        self._login_page = _asset("login.html")
        self._static = {
            name: (_STATIC_TYPES[name[name.rindex(".") :]], _asset(name))
            for name in ("dashboard.js", "dashboard.css", "charts.js")
        }

    def install(self, router: Router) -> None:
        router.add("GET", "/dashboard", self._index)
        router.add("POST", "/dashboard/login", self._login)
        router.add("POST", "/dashboard/logout", self._logout)
        router.add_prefix("GET", "/dashboard/static/", self._asset)
        router.add("GET", "/dashboard/events", self._events)
        router.add("GET", "/dashboard/api/state", self._state)
        router.add("POST", "/dashboard/api/try", self._try_route)

    def _check(self, request: Request) -> None:
        """Unauthorized (401) without a good token, RateLimited (429) over the peer's budget."""
        if not self._auth.allowed(request.headers, _host(request.peer)):
            raise Unauthorized("the dashboard needs the cluster token: log in at /dashboard")

    def _too_many(self, responder: Responder, exc: RateLimited) -> None:
        page = self._login_page.replace(
            b"{{error}}", b'<p class="error" id="login-error">Too many wrong tokens: try again later.</p>'
        )
        responder.send(429, _PAGE_HEADERS + exc.headers(), page)

    async def _index(self, request: Request, responder: Responder) -> None:
        try:
            allowed = self._auth.allowed(request.headers, _host(request.peer))
        except RateLimited as exc:
            self._too_many(responder, exc)
            return
        if allowed:
            responder.send(200, _PAGE_HEADERS, self._page)
        else:
            responder.send(401, _PAGE_HEADERS, self._login_page.replace(b"{{error}}", b""))

    async def _login(self, request: Request, responder: Responder) -> None:
        # A malformed form is a 4xx of its own (JSON); only a well-formed try counts as one.
        token = login_token(request.body, request.headers.get(b"content-type", b""))
        try:
            cookie = self._auth.login(token, _host(request.peer))
        except RateLimited as exc:
            self._too_many(responder, exc)
            return
        if cookie is None:
            page = self._login_page.replace(
                b"{{error}}", b'<p class="error" id="login-error">That is not the cluster token.</p>'
            )
            responder.send(401, _PAGE_HEADERS, page)
            return
        responder.send(303, b"Location: /dashboard\r\n" + cookie, b"")

    async def _logout(self, request: Request, responder: Responder) -> None:
        responder.send(303, b"Location: /dashboard\r\n" + self._auth.logout(request.headers), b"")

    async def _asset(self, request: Request, responder: Responder) -> None:
        asset = self._static.get(request.path.removeprefix("/dashboard/static/"))
        if asset is None:
            raise NotFound("no such dashboard file")
        content_type, body = asset
        responder.send(
            200,
            b"Content-Type: " + content_type + b"\r\nCache-Control: no-cache\r\n"
            b"X-Content-Type-Options: nosniff\r\n",
            body,
        )

    async def _state(self, request: Request, responder: Responder) -> None:
        self._check(request)
        responder.send(200, JSON_HEADERS + b"Cache-Control: no-store\r\n", self._feed.hello())

    async def _events(self, request: Request, responder: Responder) -> None:
        self._check(request)
        feed = self._feed
        if feed.clients >= self._max_clients:
            raise TooManyConnections(
                f"{self._max_clients} dashboards are open already (--dashboard-max-clients)"
            )
        feed.clients += 1
        try:
            responder.start_stream(200, SSE_HEADERS + b"X-Accel-Buffering: no\r\n")
            await responder.write(b"retry: 2000\ndata: " + feed.hello() + b"\n\n")
            while responder.client_connected:
                message = await feed.next_message()
                # A dashboard that stops reading is dropped, not waited for.
                async with asyncio.timeout(self._write_timeout_s):
                    await responder.write(b"data: " + message + b"\n\n")
        except ConnectionError:
            return  # the dashboard was closed
        except TimeoutError:
            logger.info("Dropped a dashboard feed to %s: it stopped reading", request.peer)
            responder.abort()
            return
        finally:
            feed.clients -= 1
        responder.end_stream()

    async def _try_route(self, request: Request, responder: Responder) -> None:
        self._check(request)
        content_type = request.headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/json"):
            # A cross-site form cannot send JSON: one more guard next to SameSite.
            raise BadRequest("send the try-it request as application/json")
        result = await self._try.run(parse_body(TryRequest, request.body))
        responder.send(200, JSON_HEADERS + b"Cache-Control: no-store\r\n", dumps(result))
