"""The queue mode's control endpoint (``--control-addr``): read the stats, reset, steer.

Every route takes ``?type=plain|json|html`` (default ``plain``). A bad query (an
unknown parameter or type, a repeated one, a parallelism out of range) is a 400 with
the JSON error shape; an unknown path a 404, a wrong method a 405: never a crash.
The server is bounded like our others (small bodies, few connections, read
deadlines).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from inferno.bench import queue_views as views
from inferno.bench.queue import ParallelismError, QueueLoad
from inferno.bench.render import CONTENT_TYPES, SHAPES, Shape, View, render
from inferno.errors import BadRequest
from inferno.http.limits import Limits
from inferno.http.listener import HttpServer
from inferno.http.router import Router
from inferno.http.server import Request, Responder

#: what the control port accepts: it is for one operator and a few scripts
CONTROL_LIMITS = Limits(
    max_body_bytes=4096,
    max_buffered_body_bytes=1 << 20,
    max_request_line_bytes=4096,
    max_header_bytes=4096,
    max_headers_total_bytes=16384,
    max_header_count=50,
    max_connections=64,
    read_timeout_s=5.0,
    idle_timeout_s=30.0,
    linger_s=1.0,
)
#: the HTML pages link to each other (not to /reset: a link is followed by accident)
NAV = tuple(
    (path[1:], f"{path}?type=html")
    for path in ("/stats", "/nodes", "/pods", "/fails", "/reqs-per-sec", "/parallelism")
)
#: query fields parsed at most (more is a 400)
MAX_QUERY_FIELDS = 8


def parse_query(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Each allowed field at most once; anything else is a ``BadRequest``."""
    try:
        fields = urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as exc:
        raise BadRequest(f"bad query: {exc}") from None
    out: dict[str, str] = {}
    for name, values in fields.items():
        if name not in allowed:
            raise BadRequest(f"unknown query parameter (allowed: {', '.join(allowed)})", param=name[:64])
        if len(values) != 1:
            raise BadRequest("query parameter given more than once", param=name)
        out[name] = values[0]
    return out


def shape_of(fields: dict[str, str]) -> Shape:
    shape = fields.get("type", "plain")
    if shape not in SHAPES:
        raise BadRequest(f"type must be one of {', '.join(SHAPES)}", param="type")
    return shape


class QueueControl:
    """The routes; ``live()`` adds the run's settings (queue, target, parallelism) to /stats."""

    def __init__(self, load: QueueLoad, live: Callable[[], dict[str, Any]]) -> None:
        self._load = load
        self._live = live
        self._router = Router()
        for path, make in (
            ("/stats", lambda: views.stats_view(load.stats, live())),
            ("/nodes", lambda: views.nodes_view(load.stats)),
            ("/pods", lambda: views.pods_view(load.stats)),
            ("/fails", lambda: views.fails_view(load.stats)),
            ("/reqs-per-sec", lambda: views.rate_view(load.stats)),
        ):
            self._router.add("GET", path, self._viewer(make))
        self._router.add(("GET", "POST"), "/reset", self._reset)
        self._router.add("GET", "/parallelism", self._show_parallelism)
        self._router.add("POST", "/parallelism", self._set_parallelism)

    async def __call__(self, request: Request, responder: Responder) -> None:
        await self._router(request, responder)

    @staticmethod
    def _send(responder: Responder, view: View, shape: Shape) -> None:
        responder.send(200, CONTENT_TYPES[shape], render(view, shape, NAV))

    def _viewer(self, make: Callable[[], View]) -> Callable[[Request, Responder], Any]:
        async def route(request: Request, responder: Responder) -> None:
            shape = shape_of(parse_query(request.query, ("type",)))
            self._send(responder, make(), shape)

        return route

    async def _reset(self, request: Request, responder: Responder) -> None:
        shape = shape_of(parse_query(request.query, ("type",)))
        if request.method != "HEAD":  # a HEAD (which every GET route answers) changes nothing
            self._load.stats.reset()
        self._send(responder, views.reset_view(self._load.stats), shape)

    def _parallelism_view(self) -> View:
        load = self._load
        return views.parallelism_view(
            load.parallelism, load.cfg.max_parallelism, load.slots, load.stats.in_flight
        )

    async def _show_parallelism(self, request: Request, responder: Responder) -> None:
        shape = shape_of(parse_query(request.query, ("type",)))
        self._send(responder, self._parallelism_view(), shape)

    async def _set_parallelism(self, request: Request, responder: Responder) -> None:
        fields = parse_query(request.query, ("type", "value"))
        shape = shape_of(fields)
        value = fields.get("value", "")
        cap = self._load.cfg.max_parallelism
        if not (value.isascii() and value.isdigit()) or len(value) > 9:  # not "²" nor "٣"
            raise BadRequest(f"value must be an integer from 1 to {cap} (--max-parallelism)", param="value")
        try:
            self._load.set_parallelism(int(value))
        except ParallelismError as exc:
            raise BadRequest(str(exc), param="value") from None
        self._send(responder, self._parallelism_view(), shape)


async def start_control(
    load: QueueLoad, live: Callable[[], dict[str, Any]], host: str, port: int
) -> HttpServer:
    server = HttpServer(QueueControl(load, live), limits=CONTROL_LIMITS, name="bench-control")
    await server.start(host, port)
    return server
