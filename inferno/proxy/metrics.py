"""The proxy's Prometheus collector: its counters and the registry's state, at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from inferno.observability.metrics import ProxyStats
from inferno.proxy.admission import AdmissionController
from inferno.proxy.clients import ClientGate
from inferno.registry.breaker import BreakerState
from inferno.registry.registry import WorkerRegistry

if TYPE_CHECKING:
    from inferno.deployments.manager import DeploymentManager


class ProxyCollector(Collector):
    def __init__(
        self,
        stats: ProxyStats,
        registry: WorkerRegistry,
        gate: ClientGate | None = None,
        admission: AdmissionController | None = None,
        refusals: tuple[dict[tuple[str, str], int], ...] = (),
        deployments: DeploymentManager | None = None,
    ) -> None:
        self._deployments = deployments
        #: (endpoint, reason) -> refused tries, live dicts kept by ClusterAuth and DashboardAuth
        self._refusals = refusals
        self._stats = stats
        self._registry = registry
        self._gate = gate
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        if self._deployments is not None:
            yield from deployment_metrics(self._deployments)
        stats = self._stats
        requests = CounterMetricFamily(
            "inferno_requests",
            "Requests answered, by route, backend, served model and HTTP status",
            labels=["route", "backend", "model", "code"],
        )
        errors = CounterMetricFamily(
            "inferno_request_errors",
            "Failed upstream attempts, by backend and reason",
            labels=["backend", "reason"],
        )
        latency = HistogramMetricFamily(
            "inferno_request_duration_seconds",
            "Time from request arrival to the end of the response, by backend",
            labels=["backend"],
        )
        for address, backend in stats.backends.items():
            for (route, model, code), count in backend.requests.items():
                requests.add_metric([route.decode(), address, model or "none", str(code)], count)
            for reason, count in backend.errors.items():
                errors.add_metric([address, reason], count)
            latency.add_metric([address], backend.latency.buckets(), backend.latency.sum)
        for (local_route, code), count in stats.local_responses.items():
            requests.add_metric([local_route, "none", "none", str(code)], count)
        yield requests
        yield errors
        yield latency
        refused = CounterMetricFamily(
            "inferno_cluster_token_refusals",
            "Requests refused for a missing or wrong cluster or admin token (or over the dashboard's budget "
            "of wrong tries), by endpoint and reason",
            labels=["endpoint", "reason"],
        )
        for counts in self._refusals:
            for (endpoint, reason), count in counts.items():
                refused.add_metric([endpoint, reason], count)
        yield refused
        rejected = CounterMetricFamily(
            "inferno_admission_rejections",
            "Requests refused with 429 by admission (queue_full, expected_wait, deadline, queue_timeout), "
            "by the model asked for when served or an alias (else other; none without a model) and reason",
            labels=["model", "reason"],
        )
        for (model, reason), count in stats.rejections.items():
            rejected.add_metric([model, reason], count)
        yield rejected
        yield CounterMetricFamily(
            "inferno_retries", "Requests re-sent to another backend", value=stats.retries
        )
        yield CounterMetricFamily(
            "inferno_fallbacks", "Requests sent on to a fallback model", value=stats.fallbacks
        )
        yield CounterMetricFamily(
            "inferno_loops_detected",
            "Requests refused with 508: their Via header already named this proxy",
            value=stats.loops,
        )
        yield CounterMetricFamily(
            "inferno_stream_migrations",
            "Streams continued on another backend after theirs failed mid-stream",
            value=stats.stream_migrations,
        )
        unmigrated = CounterMetricFamily(
            "inferno_stream_migration_failures",
            "Streams that failed mid-stream and could not be continued, by reason",
            labels=["reason"],
        )
        for reason, count in stats.stream_migration_failures.items():
            unmigrated.add_metric([reason], count)
        yield unmigrated
        yield CounterMetricFamily(
            "inferno_ejections",
            "Backends ejected by their circuit breaker",
            value=self._registry.ejections_total,
        )
        if self._admission is not None:
            depth = GaugeMetricFamily(
                "inferno_queue_depth", "Requests waiting for a backend, by priority", labels=["priority"]
            )
            served = CounterMetricFamily(
                "inferno_queue_served", "Requests served after waiting in the queue", labels=["priority"]
            )
            for priority, size in self._admission.queue_sizes().items():
                depth.add_metric([priority], size)
            wait = HistogramMetricFamily(
                "inferno_queue_wait_seconds",
                "Time requests served from the queue waited for a backend, by priority",
                labels=["priority"],
            )
            for klass, count in self._admission.served_from_queue.items():
                served.add_metric([klass.name.lower()], count)
            for klass, hist in self._admission.queue_wait.items():
                wait.add_metric([klass.name.lower()], hist.buckets(), hist.sum)
            yield depth
            yield served
            yield wait
        model_requests = CounterMetricFamily(
            "inferno_model_requests",
            "Requests answered, by served model and HTTP status",
            labels=["model", "code"],
        )
        model_latency = HistogramMetricFamily(
            "inferno_model_request_duration_seconds",
            "Time from request arrival to the end of the response, by served model",
            labels=["model"],
        )
        for model, per_model in stats.models.items():
            for code, count in per_model.requests.items():
                model_requests.add_metric([model, str(code)], count)
            model_latency.add_metric([model], per_model.latency.buckets(), per_model.latency.sum)
        yield model_requests
        yield model_latency
        ttft = HistogramMetricFamily(
            "inferno_time_to_first_token_seconds",
            "Streams: request arrival to the first token relayed, by model",
            labels=["model"],
        )
        tpot = HistogramMetricFamily(
            "inferno_time_per_output_token_seconds",
            "Streams: mean time between tokens after the first, by model",
            labels=["model"],
        )
        for model, hist in stats.ttft.items():
            ttft.add_metric([model], hist.buckets(), hist.sum)
        for model, hist in stats.tpot.items():
            tpot.add_metric([model], hist.buckets(), hist.sum)
        yield ttft
        yield tpot
        if self._gate is not None:
            labels = ["key", "model"]
            requests_ = CounterMetricFamily(
                "inferno_usage_requests", "Requests by API key and model", labels=labels
            )
            prompt = CounterMetricFamily(
                "inferno_usage_prompt_tokens", "Prompt tokens by API key and model", labels=labels
            )
            completion = CounterMetricFamily(
                "inferno_usage_completion_tokens", "Completion tokens by API key and model", labels=labels
            )
            for key_name, model, usage in self._gate.usage_by_name():
                labels = [key_name, model]
                requests_.add_metric(labels, usage.requests)
                prompt.add_metric(labels, usage.prompt_tokens)
                completion.add_metric(labels, usage.completion_tokens)
            yield from (requests_, prompt, completion)
        yield GaugeMetricFamily(
            "inferno_in_flight_requests",
            "Requests being served by the proxy",
            value=stats.in_flight,
        )
        per_backend = GaugeMetricFamily(
            "inferno_backend_in_flight_requests",
            "In-flight requests per backend at this proxy",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "inferno_backend_healthy",
            "1 if the backend is routable, else 0",
            labels=["backend", "node_id", "status"],
        )
        circuit = GaugeMetricFamily(
            "inferno_backend_circuit_state",
            "Circuit breaker state per backend (1 for the current state)",
            labels=["backend", "state"],
        )
        suspect = GaugeMetricFamily(
            "inferno_backend_suspect", "1 if the backend is slow but alive", labels=["backend"]
        )
        for worker in self._registry.all():
            per_backend.add_metric([worker.address], worker.in_flight)
            healthy.add_metric(
                [worker.address, worker.node_id, worker.status.value], 1 if worker.routable else 0
            )
            for state in BreakerState:
                circuit.add_metric([worker.address, state.value], 1 if worker.breaker.state is state else 0)
            suspect.add_metric([worker.address], 1 if worker.suspect else 0)
        yield per_backend
        yield healthy
        yield circuit
        yield suspect
        by_status = GaugeMetricFamily("inferno_backends", "Known backends by status", labels=["status"])
        for status, count in self._registry.counts().items():
            if status != "total":
                by_status.add_metric([status], count)
        yield by_status


def deployment_metrics(manager: DeploymentManager) -> Iterator[Metric]:
    """Cold starts and each deployment's instances (desired and by state)."""
    cold = HistogramMetricFamily(
        "inferno_cold_start_seconds",
        "How long requests that arrived with no instance running waited for one to start",
        labels=["model"],
    )
    for model, hist in manager.cold_starts.items():
        cold.add_metric([model], hist.buckets(), hist.sum)
    instances = GaugeMetricFamily(
        "inferno_deployment_instances",
        "Instances of each deployment: desired, and starting / ready / draining",
        labels=["deployment", "state"],
    )
    for ident, row in manager.status()["deployments"].items():
        for state in ("desired", "starting", "ready", "draining"):
            instances.add_metric([ident, state], row[state])
    yield cold
    yield instances
