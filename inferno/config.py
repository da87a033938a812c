"""Typed, frozen configuration: one object per process, built once at start.

The CLI (``inferno.cli``) fills these from flags and ``INFERNO_*`` environment
variables; nothing here reads the environment itself.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from inferno.errors import ConfigError

LogFormat = Literal["text", "json"]
_MODEL_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def split_hostport(value: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Parse ``host:port`` (or ``:port``, ``[v6]:port``) into its parts."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected host:port, got {value!r}")
    return (host.strip("[]") or default_host), int(port)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthCheckConfig(_Frozen):
    """Active health checks of backends' ``/health``."""

    interval_s: float = Field(2.0, gt=0, description="period of the active probes of each backend's /health")
    timeout_s: float = Field(1.0, gt=0, description="deadline of one health probe")
    unhealthy_threshold: int = Field(
        2, ge=1, description="consecutive failed probes before a healthy backend is marked unhealthy"
    )
    healthy_threshold: int = Field(
        1, ge=1, description="consecutive good probes before an unhealthy backend is marked healthy"
    )


class HttpConfig(_Frozen):
    """Limits on what one HTTP client may send or hold (proxy and backend alike; docs/security.md)."""

    max_buffered_body_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="request bodies held in memory by all connections of a port together; "
        "past it, new bodies get 503 with Retry-After",
    )
    max_request_line_bytes: int = Field(
        8192, ge=256, description="longest request target (path and query); longer gets 414"
    )
    max_header_bytes: int = Field(8192, ge=256, description="longest single header line; longer gets 431")
    max_headers_total_bytes: int = Field(
        32768, ge=1024, description="request line and headers together; more gets 431"
    )
    max_header_count: int = Field(100, ge=8, description="headers per request; more gets 431")
    max_connections: int = Field(
        4096, ge=16, description="open connections on the data port; beyond it new ones get 503 and close"
    )
    max_ops_connections: int = Field(
        256, ge=8, description="open connections on the ops port, a separate budget kept for health checks"
    )
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a new connection must send a whole request within this, and so must a started one",
    )
    idle_timeout_s: float = Field(75.0, gt=0, description="a keep-alive connection idle this long is closed")
    linger_s: float = Field(
        2.0,
        ge=0,
        description="after an early error (413, 431, 400) keep reading and discarding for this long, "
        "so the client sees the answer instead of a reset",
    )
    refused_log_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="refusals anyone can cause (a wrong cluster token) are logged once, then in at most "
        "one summary line with a count per this many seconds",
    )


class RequestLimits(_Frozen):
    """What one JSON request body may hold (proxy and backend alike; docs/security.md).

    Counted on the decoded body before any field is validated, so a body past a
    bound costs its parse and nothing more."""

    max_json_values: int = Field(
        32768,
        ge=1024,
        le=1 << 24,
        description="JSON values (objects, arrays, strings, numbers, ...) in one body; more gets 400. "
        "On the proxy, a body that may hold more is parsed in a separate process, off the event loop",
    )
    max_fields: int = Field(64, ge=16, le=4096, description="top-level fields of one body; more gets 400")
    max_messages: int = Field(
        512, ge=1, le=1 << 20, description="messages in one chat request; more gets 400"
    )
    max_content_parts: int = Field(
        512, ge=1, le=1 << 20, description="content parts in all messages of one chat request; more gets 400"
    )
    max_stop: int = Field(4, ge=1, le=64, description="stop sequences in one request; more gets 400")
    max_embedding_inputs: int = Field(
        2048, ge=1, le=1 << 20, description="texts in one embeddings request; more gets 400"
    )
    parse_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="processes that parse bodies that may hold more than max_json_values "
        "(so a costly parse never holds the event loop)",
    )


class RegistryConfig(_Frozen):
    """Membership from registrations and heartbeats."""

    heartbeat_timeout_s: float = Field(6.0, gt=0, description="no heartbeat for this long -> unhealthy")
    ttl_s: float = Field(30.0, gt=0, description="no heartbeat for this long -> removed")
    sweep_interval_s: float = Field(
        1.0, gt=0, description="how often heartbeat expiry and the end of ejections are checked"
    )
    max_backends: int = Field(
        256, ge=1, description="registered backends at most; a new registration beyond it gets 429"
    )
    resolve_timeout_s: float = Field(
        2.0,
        gt=0,
        description="a registering backend's host name must resolve within this, or it is refused (400)",
    )
    event_log_size: int = Field(
        500, ge=10, le=100_000, description="backend events (registered, ejected, ...) the dashboard keeps"
    )


class UpstreamConfig(_Frozen):
    connect_timeout_s: float = Field(
        2.0, gt=0, description="deadline to connect to a backend (never more than the per-try timeout)"
    )
    stream_first_byte_timeout_s: float = Field(
        30.0, gt=0, description="a stream's headers come once the backend has a slot; this bounds that wait"
    )
    stream_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="the longest gap allowed between chunks of a stream before it counts as a failure",
    )
    slow_chunk_s: float = Field(
        2.0, gt=0, description="a gap longer than this between chunks marks the backend suspect (no ejection)"
    )
    max_idle_per_backend: int = Field(64, ge=0, description="pooled keep-alive connections kept per backend")
    max_response_bytes: int = Field(
        64 << 20, ge=1024, description="largest non-streamed answer the proxy buffers from a backend"
    )
    max_chunk_bytes: int = Field(
        1 << 20, ge=1024, description="largest single chunk of a streamed answer from a backend"
    )
    max_response_header_bytes: int = Field(
        65536, ge=1024, description="largest status line and headers the proxy reads from a backend"
    )


class MigrationConfig(_Frozen):
    """Streams that survive their backend: continued on another one (docs/retries.md)."""

    max_per_stream: int = Field(
        2, ge=0, le=10, description="times one stream may move to another backend after a mid-stream failure"
    )
    stream_bytes: int = Field(
        256 << 10,
        ge=0,
        description="raw stream bytes kept per stream to continue it from; past this it cannot migrate",
    )
    port_bytes: int = Field(
        64 << 20,
        ge=0,
        description="raw stream bytes kept across all streams; past it, new streams cannot migrate",
    )


class RetryConfig(_Frozen):
    """Retries on a different backend before any byte reached the client."""

    max_attempts: int = Field(3, ge=1, le=10, description="attempts per request, each on a different backend")
    backoff_base_ms: float = Field(
        20.0,
        ge=0,
        description="full-jitter exponential backoff between attempts: U(0, min(max, base * 2**n))",
    )
    backoff_max_ms: float = Field(500.0, ge=0, description="cap of the backoff between attempts")


class DeadlineConfig(_Frozen):
    """Overall request deadline and the per-try first-byte timeout rule (docs/deadlines.md)."""

    default_s: float = Field(
        120.0, gt=0, description="overall deadline of a request (X-Inferno-Timeout-Ms may set another)"
    )
    max_s: float = Field(600.0, gt=0, description="the cap for a per-request override (X-Inferno-Timeout-Ms)")
    per_try_base_s: float = Field(
        2.0, gt=0, description="per try: base_s + safety_factor * max_tokens / tokens_per_s ..."
    )
    per_try_safety_factor: float = Field(
        3.0, ge=1, description="... the safety factor in that rule (see --deadline-per-try-base-s) ..."
    )
    assumed_tokens_per_s: float = Field(
        20.0, gt=0, description="... with the backend's measured decode speed, or this when unknown"
    )
    per_try_max_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="... capped at this fraction of the remaining deadline while another try is possible",
    )


class OutlierConfig(_Frozen):
    """Passive outlier detection and the per-backend circuit breaker."""

    consecutive_failures: int = Field(
        3, ge=1, description="consecutive failures (connect errors, timeouts, 5xx) that open the breaker"
    )
    base_ejection_s: float = Field(
        5.0, gt=0, description="length of a first ejection; it doubles with each ejection in a row"
    )
    max_ejection_s: float = Field(120.0, gt=0, description="cap of the ejection backoff")


class AdmissionConfig(_Frozen):
    """The proxy-side priority queue and per-backend concurrency limits."""

    max_queue: int = Field(256, ge=0, description="requests waiting for a backend at most; one more gets 429")
    queue_timeout_s: float = Field(
        30.0, gt=0, description="longest wait in the queue; then 429 with Retry-After"
    )
    max_in_flight_per_backend: int = Field(
        0,
        ge=0,
        description="in-flight requests per backend; 0 = auto (the slots it advertises, else 8); "
        "the rest wait in the proxy's queue, where the deadline is known",
    )
    aging_s: float = Field(
        2.0, gt=0, description="a waiting request moves up one priority class per this many seconds"
    )
    max_batch_items: int = Field(64, ge=1, description="items in one /batch_inference at most; more get 400")
    wait_estimate_min_samples: int = Field(
        5,
        ge=0,
        le=10_000,
        description="a request whose expected wait in the queue exceeds its deadline (or the queue "
        "timeout) gets 429 at once, once every backend of its pool has this many measured requests; "
        "0 = never refuse by expected wait",
    )
    wait_estimate_deviations: float = Field(
        4.0,
        ge=0,
        le=10,
        description="a backend's service time is planned as its mean slot hold time plus this many "
        "mean deviations, so that what is admitted finishes within its deadline when answers vary",
    )
    service_time_alpha: float = Field(
        0.2,
        gt=0,
        le=1,
        description="weight of the newest request in a backend's mean slot hold time (the service "
        "rate behind the expected wait and Retry-After)",
    )


class AffinityConfig(_Frozen):
    """The ``prefix_affinity`` policy (docs/policies.md)."""

    prefix_tokens: int = Field(
        32, ge=1, le=256, description="leading words of the prompt that make its affinity key"
    )
    load_factor: float = Field(
        1.25, ge=1.0, le=10.0, description="skip a backend above this x the average in-flight load"
    )
    max_wait_s: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="how long a request waits for its busy home backend before taking any free one",
    )


class DashboardConfig(_Frozen):
    """The live dashboard on the ops port (docs/observability.md)."""

    max_clients: int = Field(
        16, ge=1, le=1024, description="dashboards open at once; one more gets 503 until one closes"
    )
    interval_s: float = Field(
        1.0, ge=0.1, le=60.0, description="how often the dashboard is sent fresh numbers"
    )
    history_points: int = Field(
        600, ge=10, le=86_400, description="points of the charts' history the proxy keeps (one per interval)"
    )
    session_ttl_s: float = Field(
        43_200.0,
        ge=60,
        le=30 * 86_400,
        description="a dashboard login lasts this long; then the browser must log in again",
    )
    max_revoked_sessions: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="logged-out sessions remembered until they expire; past it the oldest logouts "
        "end every session issued before them",
    )


class QueueSpec(_Frozen):
    """One pull queue (``--queue NAME[:MAX_SIZE[:MAX_MESSAGE_BYTES]]``)."""

    #: 1-64 characters from [A-Za-z0-9_.-]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: jobs not finished (waiting + running) at most; one more gets 429
    max_size: int = Field(1024, ge=1, le=1_000_000)
    #: a job's body at most; larger gets 413 (the original tool's 1 KiB by default)
    max_message_bytes: int = Field(1024, ge=64, le=8 << 20)


class QueueConfig(_Frozen):
    """Pull queues and their workers (docs/queues.md)."""

    lease_s: float = Field(30.0, ge=0.05, le=3600, description="a lease lasts this long unless heartbeated")
    max_attempts: int = Field(3, ge=1, le=100, description="leases a job gets before it is dead-lettered")
    max_wait_s: float = Field(600.0, gt=0, le=86_400, description="how long a submission waits at most")
    max_poll_s: float = Field(60.0, gt=0, le=600, description="cap of a long poll (GET /v1/jobs/ID, lease)")
    max_result_bytes: int = Field(65_536, ge=1024, le=200_000, description="a completion body at most")
    result_retention_s: float = Field(3600.0, gt=0, description="finished results are kept this long")
    max_results: int = Field(10_000, ge=1, le=10_000_000, description="finished results kept per queue")
    max_dead: int = Field(10_000, ge=1, le=1_000_000, description="dead-lettered jobs kept per queue")
    max_pollers: int = Field(
        96, ge=1, le=100_000, description="workers long-polling at once; at most half the ops connections"
    )
    stats_interval_s: float = Field(60.0, gt=0, description="period of the stats line and the max window")
    commit_interval_ms: float = Field(2.0, ge=0, le=1000, description="the journal's group commit period")


class ProxyConfig(_Frozen):
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    ops_host: str = "0.0.0.0"
    ops_port: int = 6100
    #: static backends, ``host:port`` or ``host:port=weight``
    backend_servers: tuple[str, ...] = ()
    policy: str = "round_robin"
    health: HealthCheckConfig = HealthCheckConfig()
    registry: RegistryConfig = RegistryConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    retry: RetryConfig = RetryConfig()
    migration: MigrationConfig = MigrationConfig()
    deadline: DeadlineConfig = DeadlineConfig()
    outlier: OutlierConfig = OutlierConfig()
    admission: AdmissionConfig = AdmissionConfig()
    affinity: AffinityConfig = AffinityConfig()
    dashboard: DashboardConfig = DashboardConfig()
    http: HttpConfig = HttpConfig()
    request: RequestLimits = RequestLimits()
    max_body_bytes: int = Field(8 << 20, ge=1024)
    max_tokens_limit: int = Field(4096, ge=1)
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    #: log full prompt text at DEBUG (off: only lengths are logged)
    log_prompts: bool = False
    #: OpenTelemetry: OTLP/HTTP collector URL (off when None)
    otlp_endpoint: str | None = None
    seed: int | None = None
    #: the shared secret backends must present to register (inferno.security)
    cluster_token: SecretStr | None = None
    #: run without a cluster token (anyone reaching the ops port can register a backend)
    insecure: bool = False
    #: every data-port request needs an API key (``inferno keys create``)
    require_api_key: bool = False
    #: where the SQLite state (API keys, usage, deployments) lives
    state_dir: str = ".inferno"
    #: the admin token: deployments and the controller's feed (``--admin-token-file``)
    admin_token: SecretStr | None = None
    #: who runs deployment instances: none (deployments off), local (processes on this
    #: machine, run by the proxy), external (``inferno controller``, e.g. on Swarm)
    orchestrator: Literal["none", "local", "external"] = "none"
    #: settings of the orchestrator (``--orchestrator-option KEY=VALUE``)
    orchestrator_options: tuple[tuple[str, str], ...] = ()
    #: the only directory a deployment's engine options may name files in
    model_dir: str | None = None
    #: how often the autoscaler samples demand (a request at zero wakes it at once)
    autoscale_tick_s: float = Field(0.5, gt=0, le=60)
    #: pull queues (``--queue``) and their settings
    queues: tuple[QueueSpec, ...] = ()
    queue: QueueConfig = QueueConfig()
    #: keep queued jobs and results in memory only (``--queue-memory-only``)
    queue_memory_only: bool = False
    #: the token workers lease with (``--worker-token-file``); without it, the cluster token
    worker_token: SecretStr | None = None
    #: alias -> served model id, so OpenAI clients work unchanged (``--model-alias A=B``)
    model_aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("model_aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, target in value.items():
            if not _MODEL_ID.fullmatch(alias) or not _MODEL_ID.fullmatch(target):
                raise ValueError("model ids are 1-128 characters from [A-Za-z0-9_.:@-]")
            if target in value:
                raise ValueError(f"alias {alias!r} points at another alias {target!r}")
        return value

    @model_validator(mode="after")
    def _pollers(self) -> ProxyConfig:
        # Long polls hold ops connections: registrations and health checks need the rest.
        if self.queues and self.queue.max_pollers > self.http.max_ops_connections // 2:
            raise ValueError(
                f"--queue-max-pollers ({self.queue.max_pollers}) is more than half of "
                f"--http-max-ops-connections ({self.http.max_ops_connections}): raise that too"
            )
        return self

    #: model -> the models to try, in order, when none of its backends can answer
    #: (``--fallback A=B,C``)
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for model, chain in value.items():
            if not chain or len(chain) > 8:
                raise ValueError("a fallback chain names 1 to 8 models")
            for name in (model, *chain):
                if not _MODEL_ID.fullmatch(name):
                    raise ValueError("model ids are 1-128 characters from [A-Za-z0-9_.:@-]")
            if model in chain or len(set(chain)) != len(chain):
                raise ValueError(f"the fallback chain of {model!r} repeats a model")
        return value


#: the backend's ops port by default: distinct from the proxy's 6100 so both fit on one host
BACKEND_OPS_PORT = 6300


class BackendConfig(_Frozen):
    listen_host: str = "0.0.0.0"
    listen_port: int = 3000
    ops_host: str = "0.0.0.0"
    ops_port: int = BACKEND_OPS_PORT
    discovery_lb: str | None = None
    advertise_addr: str | None = None
    node_id: str | None = None
    #: the model id this backend registers and answers to, whatever its engine's file is
    #: called (a deployment's instances register under the deployment's model id)
    model_id: str | None = None
    #: registered engine names, one model each (validated when the engines are created);
    #: a string is split on commas
    engine: tuple[str, ...] = ("llamacpp",)
    #: the engines' options; each engine takes the keys its ``Options`` model declares
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("engine", mode="before")
    @classmethod
    def _engines(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(","))
        if isinstance(value, (tuple, list)) and (not value or not all(value)):
            raise ValueError("name one or more engines, separated by commas")
        return value

    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="heartbeat period; also the cap of the retry backoff while the proxy is down"
    )
    register_timeout_s: float = Field(2.0, gt=0, description="deadline of each registration call")
    max_body_bytes: int = Field(
        8 << 20, ge=1024, description="larger request bodies get 413 (base64 images need room)"
    )
    max_tokens_limit: int = Field(4096, ge=1, description="larger max_tokens gets 400")
    drain_grace_s: float = Field(30.0, ge=0, description="on SIGTERM, time to finish in-flight work")
    #: enable the /simulate/* fault-injection endpoints (never in production)
    chaos: bool = False
    #: the cluster token, sent with every registration (and needed by the chaos hooks)
    cluster_token: SecretStr | None = None
    http: HttpConfig = HttpConfig()
    request: RequestLimits = RequestLimits()
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    log_prompts: bool = False
    #: OpenTelemetry: OTLP/HTTP collector URL (off when None)
    otlp_endpoint: str | None = None
