"""The admin API on the ops port: deployments, their status, and the controller's feed.

Every route needs the *admin* token (``--admin-token-file`` / ``INFERNO_ADMIN_TOKEN``),
not the cluster token that every backend holds: a compromised backend must not be
able to deploy. Without an admin token the routes refuse everything.

- ``POST /v1/deployments`` (and ``POST /register``, the same body): create; 409 if it exists
- ``GET /v1/deployments``, ``GET /v1/deployments/ID``
- ``PATCH /v1/deployments/ID``: a JSON merge patch, applied live
  (``POST /update`` with ``{"model": ..., ...}`` does the same)
- ``DELETE /v1/deployments/ID`` (``POST /delete`` with ``{"model": ...}``): drain, stop, forget
- ``GET /status``: per deployment, desired / starting / ready / draining instances
- ``GET /v1/orchestrator/desired?after=V&wait_s=N``, ``POST /v1/orchestrator/report``:
  the long poll and the reports of ``inferno controller``
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from inferno.errors import BadRequest, Conflict, NotFound, Unauthorized
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder
from inferno.schemas import parse_body
from inferno.schemas.openai import decode_json
from inferno.security import ClusterAuth

if TYPE_CHECKING:
    from inferno.deployments.drivers import ExternalDriver
    from inferno.deployments.manager import DeploymentManager

# The deployments modules are imported past _admin() only, which needs a manager: they are
# loaded already when deployments are on, and never on a plain proxy's start-up path.

PREFIX = "/v1/deployments/"


class DeploymentsApi:
    def __init__(
        self, manager: DeploymentManager | None, auth: ClusterAuth, *, model_dir: str | None = None
    ) -> None:
        self._manager = manager
        #: the deployments (None: off), for /health and /v1/models
        self.manager = manager
        self._auth = auth
        self._model_dir = model_dir

    def install(self, router: Router) -> None:
        router.add(("GET", "POST"), "/v1/deployments", self._collection)
        router.add_prefix(("GET", "PATCH", "DELETE"), PREFIX, self._one)
        router.add("POST", "/register", self._register)
        router.add("POST", "/update", self._update)
        router.add("POST", "/delete", self._delete)
        router.add("GET", "/status", self._status)
        router.add("GET", "/v1/orchestrator/desired", self._desired)
        router.add("POST", "/v1/orchestrator/report", self._report)

    # -- the gate ------------------------------------------------------------------------
    def _admin(self, request: Request) -> DeploymentManager:
        if not self._auth.enabled:
            raise Unauthorized(
                "the admin API is off: start the proxy with --admin-token-file or INFERNO_ADMIN_TOKEN"
            )
        self._auth.check(
            request.headers, f"{request.method} admin API", request.peer.rpartition(":")[0], "admin"
        )
        if self._manager is None:
            raise Conflict(
                "deployments are off: start the proxy with --orchestrator local or --orchestrator external"
            )
        return self._manager

    # -- deployments ---------------------------------------------------------------------
    async def _collection(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        if request.method == "POST":
            await self._create(request, responder)
            return
        data = [manager.view(r) for r in manager.all()]
        responder.send(200, JSON_HEADERS, dumps({"object": "list", "data": data}))

    async def _create(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        from inferno.deployments.spec import parse_spec

        spec = parse_spec(decode_json(request.body), model_dir=self._model_dir)
        record = manager.create(spec)
        responder.send(201, JSON_HEADERS, dumps(manager.view(record)))

    async def _register(self, request: Request, responder: Responder) -> None:
        await self._create(request, responder)

    async def _one(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        ident = urllib.parse.unquote(request.path[len(PREFIX) :])
        if not ident or "/" in ident:
            raise NotFound("no route for this path")
        if request.method == "GET":
            responder.send(200, JSON_HEADERS, dumps(manager.view(manager.get(ident))))
        elif request.method == "PATCH":
            record = manager.patch(ident, decode_json(request.body))
            responder.send(200, JSON_HEADERS, dumps(manager.view(record)))
        else:
            responder.send(202, JSON_HEADERS, dumps(manager.view(manager.delete(ident))))

    async def _update(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        body = _named(decode_json(request.body))
        ident = body.pop("model")
        record = manager.patch(ident, body)
        responder.send(200, JSON_HEADERS, dumps(manager.view(record)))

    async def _delete(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        body = _named(decode_json(request.body))
        if set(body) != {"model"}:
            raise BadRequest(
                'POST /delete takes {"model": ...} only', param=next(iter(set(body) - {"model"}))
            )
        responder.send(202, JSON_HEADERS, dumps(manager.view(manager.delete(body["model"]))))

    async def _status(self, request: Request, responder: Responder) -> None:
        manager = self._admin(request)
        responder.send(200, JSON_HEADERS, dumps(manager.status()))

    # -- the controller's feed -----------------------------------------------------------
    def _external(self, request: Request) -> ExternalDriver:
        manager = self._admin(request)
        from inferno.deployments.drivers import ExternalDriver

        if not isinstance(manager.driver, ExternalDriver):
            raise Conflict(
                f"this proxy runs its orchestrator itself ({manager.driver.name}); "
                "a controller needs --orchestrator external"
            )
        return manager.driver

    async def _desired(self, request: Request, responder: Responder) -> None:
        driver = self._external(request)
        from inferno.deployments.drivers import MAX_WAIT_S

        query = urllib.parse.parse_qs(request.query)
        after = _number(query, "after", -1, 1 << 53)
        wait_s = _number(query, "wait_s", 0, MAX_WAIT_S)
        body = await driver.wait(int(after), wait_s)
        responder.send(200, JSON_HEADERS, dumps(body))

    async def _report(self, request: Request, responder: Responder) -> None:
        driver = self._external(request)
        from inferno.deployments.drivers import Report

        driver.report(parse_body(Report, request.body))
        responder.send(204, [], b"")


def _named(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("model (the deployment's id) is required", param="model")
    return dict(body)


def _number(query: dict[str, list[str]], name: str, low: float, high: float) -> float:
    values = query.get(name)
    if not values:
        return low
    try:
        value = float(values[0])
    except ValueError:
        raise BadRequest(f"{name} must be a number", param=name) from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be from {low:g} to {high:g}", param=name)
    return value
