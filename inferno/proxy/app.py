"""The proxy's data port: validate, build a routing context, forward."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from inferno.api import API, APIS, INFERENCE, ParsedText, openapi
from inferno.api.base import TextAPI
from inferno.api.vetting import BodyVetter
from inferno.config import ProxyConfig
from inferno.errors import BadRequest, InfernoError, LoopDetected, Overloaded, RateLimited
from inferno.http.request_id import RequestIdFactory
from inferno.http.responses import JSON_HEADERS, dumps, error_body
from inferno.http.router import RouteTable
from inferno.http.server import Request, Responder
from inferno.observability.metrics import ProxyStats
from inferno.observability.throttle import ThrottledLog
from inferno.proxy.batch import BatchRunner
from inferno.proxy.bodies import with_model, with_usage_requested
from inferno.proxy.clients import ClientGate
from inferno.proxy.forward import Forwarder, Job
from inferno.queues import CLIENT_ROUTE
from inferno.registry.registry import WorkerRegistry
from inferno.schemas import PRIORITIES, Priority, RequestContext, check_max_tokens
from inferno.security import ApiKey

if TYPE_CHECKING:
    # imported only when configured (server.py): not on a plain proxy's start-up path
    from inferno.deployments.manager import DeploymentManager
    from inferno.queues.service import QueueService

logger = logging.getLogger(__name__)


#: how much of the prompt the routing context carries (prefix affinity reads its first words)
PREFIX_CHARS = 2048
#: a request that has passed more proxies than this is refused as a loop
MAX_VIA_HOPS = 16
#: a data-port route: the request, its responder, its request id, arrival time and API key
ProxyRoute = Callable[[Request, Responder, str, float, ApiKey | None], Awaitable[None]]


class ProxyApp:
    """Handler for the data port (8080)."""

    def __init__(
        self,
        config: ProxyConfig,
        registry: WorkerRegistry,
        forwarder: Forwarder,
        stats: ProxyStats,
        *,
        ids: RequestIdFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        gate: ClientGate | None = None,
        vetter: BodyVetter | None = None,
        deployments: DeploymentManager | None = None,
        queues: QueueService | None = None,
    ) -> None:
        #: deployments (listed in /v1/models even at zero instances), else None
        self._deployments = deployments
        #: decodes bodies, in another process those that may be costly to decode
        self._vetter = vetter or BodyVetter(config.request)
        #: API keys, budgets and usage (``--require-api-key``), else None
        self._gate = gate
        self._cfg = config
        self._registry = registry
        self._forwarder = forwarder
        self._stats = stats
        self._ids = ids or RequestIdFactory()
        self._clock = clock
        # Anyone can overload the proxy: its refusals are logged at a bounded rate.
        self._overload_log = ThrottledLog(logger, config.http.refused_log_interval_s, clock)
        self._batch = BatchRunner(forwarder, config.admission.max_batch_items, self.inference_context)
        self._routes: RouteTable[ProxyRoute] = RouteTable()
        for path, api in APIS.items():
            self._routes.add("POST", path, self._forward_route(api))
        self._routes.add("POST", "/batch_inference", self._batch_route)
        self._routes.add("GET", "/v1/models", self._models)
        self._routes.add("GET", "/openapi.json", self._openapi)
        self._openapi_body = dumps(openapi.build())
        self._paths = frozenset((*APIS, "/batch_inference", "/v1/models", "/openapi.json"))
        if queues is not None:
            from inferno.proxy.queue_api import QueueClientApi

            QueueClientApi(queues, self._send_queue, gate).install(self._routes)

    async def __call__(self, request: Request, responder: Responder) -> None:
        t0 = self._clock()
        rid = self._ids.accept_or_new(request.headers.get(b"x-request-id"))
        self._stats.in_flight += 1
        key: ApiKey | None = None
        try:
            via = request.headers.get(b"via")
            if via is not None:
                self._check_hops(via)
            if self._gate is not None and request.path != "/openapi.json":
                key = self._gate.authenticate(request.headers)
            route = self._routes.match(request.method, request.path)
            await route(request, responder, rid, t0, key)
        except InfernoError as exc:
            if responder.started:
                raise
            status, body = error_body(exc)
            extra = exc.headers()
            if key is not None and self._gate is not None and not isinstance(exc, RateLimited):
                extra += self._gate.headers_for(key)
            self._send_local(responder, rid, status, body, extra, self._route_label(request.path))
        finally:
            self._stats.in_flight -= 1

    def _check_hops(self, via: bytes) -> None:
        if self._forwarder.via in via or via.count(b",") + 1 > MAX_VIA_HOPS:
            self._stats.loops += 1
            raise LoopDetected(
                "this request has already passed through this proxy (Via): "
                "check --backend-servers and what registered"
            )

    # -- routes --------------------------------------------------------------------------
    def _forward_route(self, api: API) -> ProxyRoute:
        path = api.path.encode()
        splice = api.path == "/inference"

        async def route(
            request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
        ) -> None:
            data = await self._vetter.decode(request.body)
            parsed = api.parse_checked(data, self._cfg.max_tokens_limit, self._cfg.request)
            self._log_prompt(rid, parsed.prompt)
            ctx = self._context(request, rid, parsed)
            body = request.body
            if ctx.model != parsed.model:
                # an alias: the backend sees the real id
                body = with_model(body, parsed.model_field, ctx.model)
            deadline = self._deadline(request, t0)
            job = Job(ctx, path, body, parsed.max_tokens, t0, deadline, parsed.model_field)
            job.via = request.headers.get(b"via", b"")
            job.prompt_chars = len(parsed.prompt)
            if parsed.stream and isinstance(api, TextAPI):
                job.api = api
            if self._forwarder.tracing is not None:
                job.traceparent = request.headers.get(b"traceparent")
            if key is not None:
                self._charge(job, key)
                if parsed.stream and api.wants_usage(parsed) is False:
                    # Usage is charged from the stream's usage chunk: ask for it, strip it out.
                    job.body = with_usage_requested(job.body)
                    job.strip_usage = True
            try:
                await self._forwarder.forward(responder, job, stream=parsed.stream, splice_timings=splice)
            except Overloaded as exc:
                self._refused(rid, parsed.model, exc)
                raise
            finally:
                if job.on_done is not None:
                    job.on_done()

        return route

    def _refused(self, rid: str, asked: str | None, exc: Overloaded) -> None:
        """Count and log a 429 from admission, under the model the client asked for when
        that is served or an alias, else ``other`` (clients must not create series)."""
        if asked is None:
            label = "none"
        elif (
            asked in self._cfg.model_aliases
            or asked in self._registry.model_tasks()
            or (self._deployments is not None and asked in self._deployments.models())
        ):
            label = asked
        else:
            label = "other"
        self._stats.record_rejection(label, exc.reason)
        self._overload_log.warning(
            "Request %s refused (429, %s) for model %s: %s", rid, exc.reason, label, exc.message
        )

    async def _openapi(
        self, request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
    ) -> None:
        self._send_local(responder, rid, 200, self._openapi_body, route="/openapi.json")

    def _charge(self, job: Job, key: ApiKey) -> None:
        """Admit ``job`` under ``key``'s model list and budgets, and charge its usage."""
        assert self._gate is not None
        # Hold what the request may cost: its answer, and its prompt at ~4 characters a token.
        grant = self._gate.admit(key, job.ctx.model, job.max_tokens + job.prompt_chars / 4)
        job.extra_headers = grant.headers()
        job.on_usage = functools.partial(self._gate.settle, grant)
        job.on_done = functools.partial(self._gate.release, grant)

    async def _batch_route(
        self, request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
    ) -> None:
        prepare = functools.partial(self._charge, key=key) if key is not None else None
        data = await self._vetter.decode(request.body)
        body = await self._batch.run(data, request, rid, t0, self._deadline(request, t0), prepare)
        extra = self._gate.headers_for(key) if key is not None and self._gate is not None else b""
        self._send_local(responder, rid, 200, body, extra, "/batch_inference")

    async def _models(
        self, request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
    ) -> None:
        served = self._registry.model_tasks()
        if self._deployments is not None:
            served = {**self._deployments.models(), **served}
        data: list[dict[str, object]] = [
            {"id": model, "object": "model", "created": 0, "owned_by": "inferno", "task": task}
            for model, task in served.items()
        ]
        data += [
            {
                "id": alias,
                "object": "model",
                "created": 0,
                "owned_by": "inferno",
                "task": served[target],
                "alias_of": target,
            }
            for alias, target in self._cfg.model_aliases.items()
            if target in served
        ]
        models = {"object": "list", "data": data}
        extra = self._gate.headers_for(key) if key is not None and self._gate is not None else b""
        self._send_local(responder, rid, 200, dumps(models), extra, "/v1/models")

    def _deadline(self, request: Request, t0: float) -> float:
        """Overall deadline: the default, or ``X-Inferno-Timeout-Ms`` within the cap."""
        header = request.headers.get(b"x-inferno-timeout-ms")
        if header is None:
            return t0 + self._cfg.deadline.default_s
        if not header.isdigit() or not 0 < int(header) <= self._cfg.deadline.max_s * 1000:
            raise BadRequest(
                f"X-Inferno-Timeout-Ms must be an integer from 1 to {int(self._cfg.deadline.max_s * 1000)}"
            )
        return t0 + int(header) / 1000.0

    def _route_label(self, path: str) -> str:
        """A route's path as a metric label; any other path a client sends is ``other``
        (a label per path would let clients grow the metrics without bound)."""
        if path in self._paths:
            return path
        if path.startswith(("/v1/queues/", "/v1/jobs/")):
            return CLIENT_ROUTE
        return "other"

    def _send_queue(self, responder: Responder, rid: str, status: int, body: bytes, route: str) -> None:
        self._send_local(responder, rid, status, body, route=route)

    def _send_local(
        self,
        responder: Responder,
        rid: str,
        status: int,
        body: bytes,
        extra: bytes = b"",
        route: str = "other",
    ) -> None:
        self._stats.record_local(status, route)
        responder.send(status, JSON_HEADERS + b"X-Request-ID: " + rid.encode() + b"\r\n" + extra, body)

    # -- routing context -----------------------------------------------------------------
    def _priority(self, request: Request, field: str | None) -> Priority:
        name = field
        header = request.headers.get(b"x-priority")
        if header is not None:
            name = header.decode("latin-1").lower()
        if name is None:
            return Priority.NORMAL
        if name not in PRIORITIES:
            raise BadRequest("priority must be one of high, normal, low", param="priority")
        return PRIORITIES[name]

    def _session(self, request: Request, field: str | None) -> str | None:
        header = request.headers.get(b"x-session-id")
        if header is not None:
            return header.decode("latin-1")[:256]
        return field

    def _context(self, request: Request, rid: str, parsed: ParsedText) -> RequestContext:
        model = parsed.model
        if model is not None:
            model = self._cfg.model_aliases.get(model, model)
        return RequestContext(
            request_id=rid,
            model=model,
            session_key=self._session(request, parsed.session),
            prompt_prefix=parsed.prompt[:PREFIX_CHARS],
            priority=self._priority(request, parsed.priority),
            task=parsed.task,
        )

    def inference_context(
        self, request: Request, rid: str, item: object
    ) -> tuple[RequestContext, ParsedText]:
        """Routing context of one ``/inference`` item of a batch (text or image)."""
        parsed = INFERENCE.from_dict(item)
        check_max_tokens(parsed.max_tokens, self._cfg.max_tokens_limit)
        self._log_prompt(rid, parsed.prompt)
        return self._context(request, rid, parsed), parsed

    def _log_prompt(self, rid: str, prompt: str) -> None:
        if self._cfg.log_prompts and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Request %s prompt: %r", rid, prompt)
