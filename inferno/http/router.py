"""A ``(method, path)`` route table with one 404/405 and error mapping for every port.

A lookup is one dict lookup by path and one by method. ``GET`` routes answer
``HEAD`` too (the server drops the body). A path with no route is a 404 that
never echoes the path; a known path with the wrong method is a 405 whose
``Allow`` header lists the right ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from inferno.errors import InfernoError, MethodNotAllowed, NotFound
from inferno.http.messages import Request, Responder
from inferno.http.responses import error_response

Route = Callable[[Request, Responder], Awaitable[None]]
T = TypeVar("T")


class RouteTable(Generic[T]):
    """Routes of any handler type; ``Router`` is the usual one (handler(request, responder))."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, T]] = {}
        self._prefixes: list[tuple[str, dict[str, T]]] = []

    def add(self, methods: str | tuple[str, ...], path: str, route: T) -> None:
        self._register(self._exact.setdefault(path, {}), methods, route)

    def add_prefix(self, methods: str | tuple[str, ...], prefix: str, route: T) -> None:
        """A route for every path that starts with ``prefix`` (exact paths win)."""
        table: dict[str, T] = {}
        self._prefixes.append((prefix, table))
        self._register(table, methods, route)

    @staticmethod
    def _register(table: dict[str, T], methods: str | tuple[str, ...], route: T) -> None:
        for method in (methods,) if isinstance(methods, str) else methods:
            table[method] = route
            if method == "GET":
                table.setdefault("HEAD", route)

    def match(self, method: str, path: str) -> T:
        """The route for a request, or ``NotFound`` / ``MethodNotAllowed``."""
        table = self._exact.get(path)
        if table is None:
            for prefix, candidate in self._prefixes:
                if path.startswith(prefix):
                    table = candidate
                    break
            else:
                raise NotFound("no route for this path")
        route = table.get(method)
        if route is None:
            raise MethodNotAllowed(tuple(table))
        return route


class Router(RouteTable[Route]):
    async def __call__(self, request: Request, responder: Responder) -> None:
        """Dispatch, and answer any ``InfernoError`` raised before the response began."""
        try:
            await self.match(request.method, request.path)(request, responder)
        except InfernoError as exc:
            if responder.started:
                raise
            responder.send(*error_response(exc))
