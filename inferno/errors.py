"""Inferno's exception hierarchy, and the one place that maps it to HTTP statuses.

    InfernoError
    ├── ClientError                  the caller's fault: always a 4xx, never counts against a backend
    │   ├── BadRequest               400: malformed JSON, wrong types, missing fields, bad values
    │   ├── Unauthorized             401: a cluster-only endpoint without the cluster token
    │   │   └── InvalidApiKey        401: a missing, unknown or revoked API key
    │   ├── ModelNotAllowed          403: the API key may not use this model
    │   ├── RateLimited              429: the API key is over its requests or tokens per minute
    │   ├── NotFound                 404: unknown path
    │   ├── MethodNotAllowed         405, with the ``Allow`` header
    │   ├── RequestTimeout           408: the request did not arrive in time
    │   ├── ExpectationFailed        417: an ``Expect`` other than 100-continue
    │   ├── UnsupportedMediaType     415: a body in a content type the route does not take
    │   ├── UriTooLong               414: request line over the limit
    │   ├── HeadersTooLarge          431: a header, all headers, or their count over the limit
    │   ├── RegistryFull             429: the proxy holds as many backends as it may
    │   ├── ModelNotFound            404: no backend serves the requested model
    │   ├── Conflict                 409: the deployment exists (or is being deleted)
    │   └── PayloadTooLarge          413: body over the configured limit
    ├── Overloaded                   429: queue full, its wait ran out or would outlast the deadline
    ├── DeadlineExceeded             504: the request's own deadline passed
    ├── LoopDetected                 508: the request already passed through this proxy
    ├── NoBackendAvailable           503: nothing healthy to route to
    │   ├── Draining                 503 from a backend that is shutting down (retried elsewhere)
    │   ├── Loading                  503 from a backend still loading its model (retried elsewhere)
    │   └── ColdStartTimeout         503: a deployment's instance did not start within cold_start_timeout_s
    ├── TooManyConnections           503: the port's connection budget is spent
    ├── BodyBufferFull               503: the port's request-body memory budget is spent
    ├── ParserUnavailable            503: the proxy's body parsing process died on this body
    ├── UpstreamError                a backend failed us (translated from socket/parser errors)
    │   ├── UpstreamConnectError     connection refused / unreachable / connect timeout
    │   ├── UpstreamTimeout          no (complete) answer by the deadline
    │   ├── UpstreamProtocolError    the connection broke or the backend spoke bad HTTP
    │   └── UpstreamStatusError      the backend answered with a retryable 5xx
    ├── RegistrationRefused          the proxy refused a backend's registration (backend side)
    ├── AdminError                   the admin API refused a call, or was not reached (client side)
    ├── InjectedError                a failure injected by the chaos hooks, with the status asked for
    ├── EngineError                  the model runtime failed (backend side)
    │   └── ModelMissing             the model file is not installed
    ├── OrchestratorError            an orchestrator could not act (controller side)
    │   └── OrchestratorUnavailable  its engine (the Docker socket) cannot be reached
    ├── ProxyRefused                 the proxy refused a controller's or worker's call (wrong token...)
    │   └── WorkerLeaseLost          409 on a worker's heartbeat or completion: stop, drop the result
    └── ConfigError                  invalid configuration at start-up

Library exceptions (OSError, httptools errors, asyncio.TimeoutError) are translated into
these at one boundary each: ``inferno.http.client`` for upstream calls and
``inferno.http.server`` for request parsing. ``status_for`` is the only status mapping.
"""

from __future__ import annotations

import math


class InfernoError(Exception):
    """Base class of every error Inferno raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    kind: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> bytes:
        """Extra response header lines this error needs (``Allow``, ``Retry-After``)."""
        return b""


class ClientError(InfernoError):
    status = 400
    code = "invalid_request"
    kind = "invalid_request_error"


class BadRequest(ClientError):
    pass


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__(f"method not allowed here; use {', '.join(allow)}")
        self.allow = allow

    def headers(self) -> bytes:
        return b"Allow: " + ", ".join(self.allow).encode() + b"\r\n"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class ExpectationFailed(ClientError):
    status = 417
    code = "expectation_failed"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class UriTooLong(ClientError):
    status = 414
    code = "uri_too_long"


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"


class RegistryFull(ClientError):
    status = 429
    code = "registry_full"
    kind = "rate_limit_exceeded"

    def headers(self) -> bytes:
        return b"Retry-After: 5\r\n"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"
    kind = "authentication_error"

    def headers(self) -> bytes:
        return b"WWW-Authenticate: Bearer\r\n"


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    kind = "invalid_request_error"


class ModelNotAllowed(ClientError):
    status = 403
    code = "model_not_allowed"


class RateLimited(ClientError):
    """Over a key's budget; carries the ``x-ratelimit-*`` headers and ``Retry-After``."""

    status = 429
    code = "rate_limit_exceeded"
    kind = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, headers: bytes = b"") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self._headers = headers

    def headers(self) -> bytes:
        return b"Retry-After: %d\r\n" % max(1, math.ceil(self.retry_after_s)) + self._headers


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class JournalUnavailable(InfernoError):
    """The queue journal could not commit a submission: it was not accepted (retry)."""

    status = 503
    code = "journal_unavailable"

    def headers(self) -> bytes:
        return b"Retry-After: 1\r\n"


class LeaseLost(Conflict):
    """A worker's lease expired, was released, or its job was cancelled or finished:
    stop the workload and drop its result (docs/queues.md)."""

    code = "lease_lost"


class Overloaded(InfernoError):
    """The queue is full, the wait in it ran out, or would outlast the request's
    deadline: back off and retry after ``retry_after_s``. ``reason`` labels metrics."""

    status = 429
    code = "overloaded"
    kind = "rate_limit_exceeded"

    def __init__(self, message: str, *, reason: str = "queue_full", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def headers(self) -> bytes:
        return b"Retry-After: %d\r\n" % self.retry_after_s


class DeadlineExceeded(InfernoError):
    status = 504
    code = "deadline_exceeded"
    kind = "timeout"


class LoopDetected(InfernoError):
    """The request's ``Via`` names this proxy already (or too many hops): a backend
    registered at a proxy's own address would otherwise nest requests without end."""

    status = 508
    code = "loop_detected"
    kind = "server_error"


class NoBackendAvailable(InfernoError):
    status = 503
    code = "no_backend_available"
    kind = "service_unavailable"

    def headers(self) -> bytes:
        return b"Retry-After: 1\r\n"


class ColdStartTimeout(NoBackendAvailable):
    """A request waited for a deployment at zero, and no instance started in time."""

    code = "cold_start_timeout"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> bytes:
        return b"Retry-After: %d\r\n" % self.retry_after_s


class Draining(NoBackendAvailable):
    code = "backend_draining"


class Loading(NoBackendAvailable):
    code = "backend_loading"


class TooManyConnections(InfernoError):
    status = 503
    code = "too_many_connections"
    kind = "service_unavailable"

    def headers(self) -> bytes:
        return b"Retry-After: 1\r\n"


class BodyBufferFull(InfernoError):
    status = 503
    code = "server_busy"
    kind = "service_unavailable"

    def headers(self) -> bytes:
        return b"Retry-After: 1\r\n"


class ParserUnavailable(InfernoError):
    """The proxy's body parsing process died while parsing this body (it is restarted)."""

    status = 503
    code = "server_busy"
    kind = "service_unavailable"

    def headers(self) -> bytes:
        return b"Retry-After: 1\r\n"


class UpstreamError(InfernoError):
    status = 502
    code = "bad_gateway"
    kind = "upstream_error"
    #: True when nothing reached the backend, so a retry elsewhere is always safe.
    before_send: bool = False


class UpstreamConnectError(UpstreamError):
    before_send = True

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamStatusError(UpstreamError):
    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class RegistrationRefused(InfernoError):
    """The proxy answered a registration or heartbeat with an error status."""

    code = "registration_refused"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class InjectedError(InfernoError):
    code = "chaos_injected"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class EngineError(InfernoError):
    code = "engine_error"


class ModelMissing(EngineError):
    pass


class OrchestratorError(InfernoError):
    """An orchestrator call failed (``not_found``: the object it named is gone)."""

    code = "orchestrator_error"

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class OrchestratorUnavailable(OrchestratorError):
    """The orchestrator's engine did not answer (socket missing, refused, timed out)."""

    code = "orchestrator_unavailable"


class ProxyRefused(InfernoError):
    """The proxy answered one of the controller's calls with an error status."""

    code = "proxy_refused"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class WorkerLeaseLost(ProxyRefused):
    """A worker's lease expired, or its job was cancelled or finished elsewhere (409):
    the worker stops the workload and drops its result (worker side)."""

    code = "lease_lost"

    def __init__(self, message: str) -> None:
        super().__init__(message, upstream_status=409)


class ConfigError(InfernoError):
    pass


class AdminError(InfernoError):
    """The admin API refused a call (its status and message), or could not be reached."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def status_for(exc: BaseException) -> int:
    """HTTP status for any exception: ours carry one, anything else is a 500."""
    if isinstance(exc, InfernoError):
        return exc.status
    return 500
