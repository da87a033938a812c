"""OpenTelemetry tracing, optional (``--otlp-endpoint``).

Off by default, and then free: the proxy and the backends hold ``None`` instead
of a tracer and skip every tracing line with one ``is not None`` test. The
OpenTelemetry packages are imported only when tracing is on.

On: the proxy makes one span per request (``inferno.request``, the child of the
client's own ``traceparent`` if it sent one) and a child span per try
(``inferno.try``: backend, attempt, status, failure), and sends each try's
``traceparent`` to its backend, which makes its span (``inferno.backend``) under
it. Spans are exported in batches over OTLP/HTTP (protobuf) from a background
thread, each export with a deadline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inferno.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

#: how long one OTLP export may take before it is dropped
EXPORT_TIMEOUT_S = 5.0
#: spans are sent at least this often
EXPORT_DELAY_MS = 500
#: spans waiting to be sent at most; more are dropped (and counted by the SDK)
MAX_QUEUED_SPANS = 8192


class Tracing:
    """A tracer provider exporting to one OTLP/HTTP endpoint."""

    def __init__(self, endpoint: str, service: str, *, node_id: str = "") -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ConfigError(
                "--otlp-endpoint needs the OpenTelemetry packages: pip install 'inferno-serve[tracing]'"
            ) from exc
        url = endpoint.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("--otlp-endpoint must be an http:// or https:// URL (OTLP over HTTP)")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        attributes = {"service.name": service}
        if node_id:
            attributes["service.instance.id"] = node_id
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT_S),
                max_queue_size=MAX_QUEUED_SPANS,
                schedule_delay_millis=EXPORT_DELAY_MS,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
        self._tracer = self._provider.get_tracer("inferno")
        self._propagator = TraceContextTextMapPropagator()
        logger.info("Tracing on: spans go to %s", url)

    def _context(self, traceparent: bytes | None) -> Any:
        if not traceparent:
            return None
        return self._propagator.extract({"traceparent": traceparent.decode("latin-1")})

    def start(self, name: str, traceparent: bytes | None = None, **attributes: Any) -> Span:
        """A span under the ``traceparent`` a caller sent (a root span without one)."""
        return self._tracer.start_span(name, context=self._context(traceparent), attributes=attributes)

    def start_child(self, parent: Span, name: str, **attributes: Any) -> Span:
        from opentelemetry.trace import set_span_in_context

        return self._tracer.start_span(name, context=set_span_in_context(parent), attributes=attributes)

    def header(self, span: Span) -> bytes:
        """The ``traceparent`` request header line that makes the callee's span a child of ``span``."""
        from opentelemetry.trace import set_span_in_context

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        value = carrier.get("traceparent")
        return b"traceparent: " + value.encode("ascii") + b"\r\n" if value else b""

    @staticmethod
    def end(span: Span, status: int | None = None, error: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        elif status is not None and status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()

    def shutdown(self) -> None:
        """Send what is queued (bounded by the export deadline) and stop."""
        self._provider.shutdown()
