"""OpenTelemetry across a retry: one request span, one span per try, the backend's under its try.

Real processes: a proxy and two backends exporting over OTLP/HTTP to a small
collector in this test (a real HTTP server decoding the protobuf export
requests). One backend answers 500 (its chaos hook), so requests that reach it
first are retried on the other.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, TEST_TOKEN, Proc, start_process_cluster

pytestmark = pytest.mark.slow

trace_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

#: each request carries its own client trace: (trace id, the client's span id)
CLIENT_TRACES = [
    ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    ("5c0a3e4688c45eb7b4df03ae1f1f5847", "11a178bb1cb013c8"),
]


class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = trace_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, free_port()), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: Any) -> None:
        for resource in request.resource_spans:
            resource_attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attrs = {}
                    for a in span.attributes:
                        kind = a.value.WhichOneof("value")
                        attrs[a.key] = getattr(a.value, kind) if kind else None
                    with self._lock:
                        self.spans.append(
                            {
                                "service": resource_attrs.get("service.name"),
                                "instance": resource_attrs.get("service.instance.id"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attrs": attrs,
                                "error": span.status.code == 2,
                            }
                        )

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c._thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


def retried_trace(spans: list[dict[str, Any]], failing: str) -> dict[str, Any] | None:
    """The request span of a trace whose first try went to ``failing`` and was retried."""
    for root in (s for s in spans if s["name"] == "inferno.request"):
        tries = sorted(
            (s for s in spans if s["name"] == "inferno.try" and s["parent"] == root["span_id"]),
            key=lambda s: s["attrs"]["inferno.attempt"],
        )
        if len(tries) == 2 and tries[0]["attrs"]["inferno.backend"] == failing:
            return {"root": root, "tries": tries}
    return None


def test_a_retried_request_is_one_trace_with_a_span_per_try(
    spawn: Callable[..., Proc], collector: Collector
) -> None:
    otlp = ("--otlp-endpoint", collector.url)
    cluster = start_process_cluster(
        spawn, 2, proxy_args=(*otlp, "--policy", "round_robin"), backend_args=(*otlp, "--chaos")
    )
    workers = cluster.workers()
    failing, healthy = workers["b2"]["address"], workers["b1"]["address"]
    # b2 answers 500 to everything for a minute.
    fault = httpx.post(
        f"http://{failing}/simulate/error",
        json={"duration_s": 60, "status": 500},
        headers={"Authorization": f"Bearer {TEST_TOKEN}"},
        timeout=5,
    )
    assert fault.status_code == 200, fault.text
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.Client(timeout=10) as http_client:
        for trace_id, parent in CLIENT_TRACES:  # round robin: one of the two starts on b2
            answer = http_client.post(
                f"{cluster.url}/v1/chat/completions",
                json=body,
                headers={"traceparent": f"00-{trace_id}-{parent}-01"},
            )
            assert answer.status_code == 200, answer.text

    found: dict[str, Any] | None = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = collector.snapshot()
        found = retried_trace(spans, failing)
        if found is not None:
            trace = found["root"]["trace_id"]
            backend_spans = [s for s in spans if s["name"] == "inferno.backend" and s["trace_id"] == trace]
            if len(backend_spans) == 2:
                break
        time.sleep(0.2)
    assert found is not None, collector.snapshot()
    root, (first, second) = found["root"], found["tries"]

    # The proxy's request span continues the client's trace.
    assert root["service"] == "inferno-proxy"
    assert (root["trace_id"], root["parent"]) in CLIENT_TRACES
    assert root["attrs"]["http.route"] == "/v1/chat/completions"
    assert root["attrs"]["http.response.status_code"] == 200 and not root["error"]
    # One span per try: the first failed on b2 with its 500, the second succeeded on b1.
    assert first["attrs"]["inferno.attempt"] == 1 and first["error"]
    assert first["attrs"]["http.response.status_code"] == 500
    assert second["attrs"]["inferno.backend"] == healthy and not second["error"]
    assert second["attrs"]["http.response.status_code"] == 200
    # Each backend's span hangs under the try that reached it (traceparent propagated).
    by_parent = {s["parent"]: s for s in backend_spans}
    assert by_parent[first["span_id"]]["instance"] == "b2"
    assert by_parent[first["span_id"]]["attrs"]["http.response.status_code"] == 500
    assert by_parent[second["span_id"]]["instance"] == "b1"
    assert all(s["service"] == "inferno-backend" for s in backend_spans)
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"http://{failing}/simulate/reset", headers={"Authorization": f"Bearer {TEST_TOKEN}"})
