"""What the load tester measures: one ``Sample`` per request, summaries on demand."""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(slots=True)
class Sample:
    """One request. Times are seconds; ``start`` is relative to the run's start."""

    start: float
    latency: float
    status: int
    error: str = ""
    backend: str = ""
    #: the model that answered (``X-Inferno-Model``)
    model: str = ""
    #: work items in the request (texts, images, batch items)
    items: int = 1
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    queue_ms: float | None = None
    backend_ms: float | None = None
    proxy_total_ms: float | None = None
    #: streams only: when the response headers reached the client, ms after the start
    headers_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {f"p{p:g}": percentile(ordered, p) for p in PERCENTILES}
    out["max"] = ordered[-1] if ordered else float("nan")
    out["mean"] = sum(ordered) / len(ordered) if ordered else float("nan")
    return out


def error_class(sample: Sample) -> str:
    if sample.error:
        return sample.error
    if sample.status >= 500:
        return f"http_{sample.status}"
    if sample.status >= 400:
        return f"http_{sample.status}"
    return "ok"


def summarize(samples: Sequence[Sample], elapsed_s: float) -> dict[str, Any]:
    """Everything the reports show, as plain data."""
    ok = [s for s in samples if s.ok]
    statuses = Counter(str(s.status) if s.status else "none" for s in samples)
    errors = Counter(error_class(s) for s in samples if not s.ok)
    per_backend: dict[str, list[float]] = defaultdict(list)
    per_model: dict[str, list[Sample]] = defaultdict(list)
    for s in ok:
        per_backend[s.backend or "-"].append(s.latency)
        per_model[s.model or "-"].append(s)
    items = sum(s.items for s in ok)
    summary: dict[str, Any] = {
        "requests": len(samples),
        "succeeded": len(ok),
        "failed": len(samples) - len(ok),
        "elapsed_s": elapsed_s,
        "throughput_rps": len(ok) / elapsed_s if elapsed_s > 0 else 0.0,
        "latency_s": latency_summary(s.latency for s in ok),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "items": items,
        "items_per_s": items / elapsed_s if elapsed_s > 0 else 0.0,
        "backends": {
            name: {"count": len(lat), "share": len(lat) / len(ok), **latency_summary(lat)}
            for name, lat in sorted(per_backend.items())
        },
        "models": {
            name: {
                "count": len(group),
                "items": sum(s.items for s in group),
                "items_per_s": sum(s.items for s in group) / elapsed_s if elapsed_s > 0 else 0.0,
                **latency_summary(s.latency for s in group),
            }
            for name, group in sorted(per_model.items())
        },
    }
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    if ttfts:
        itls = [gap for s in ok for gap in s.itl]
        tokens = sum(s.tokens for s in ok)
        summary["stream"] = {
            "ttft_s": latency_summary(ttfts),
            "itl_s": latency_summary(itls) if itls else {},
            "tokens": tokens,
            "tokens_per_s": tokens / elapsed_s if elapsed_s > 0 else 0.0,
        }
    split = [s for s in ok if s.queue_ms is not None and s.backend_ms is not None]
    if split:
        queue = [s.queue_ms or 0.0 for s in split]
        backend = [s.backend_ms or 0.0 for s in split]
        # What the client saw beyond the proxy's own queue + backend time: proxy
        # work plus the network both ways. For a stream the proxy's timings end at the
        # response headers, so its share is measured to the headers too, and the
        # generation after them is reported on its own line, not blamed on the proxy.
        overhead = [
            (s.latency * 1000.0 if s.headers_ms is None else s.headers_ms)
            - (s.queue_ms or 0.0)
            - (s.backend_ms or 0.0)
            for s in split
        ]
        summary["split_ms"] = {
            "queue": latency_summary(queue),
            "backend": latency_summary(backend),
            "proxy_and_network": latency_summary(overhead),
        }
        streamed = [s.latency * 1000.0 - s.headers_ms for s in split if s.headers_ms is not None]
        if streamed:
            summary["split_ms"]["stream_after_headers"] = latency_summary(streamed)
    return summary


def timeline(samples: Sequence[Sample], bucket_s: float = 1.0) -> list[dict[str, float]]:
    """Per-interval throughput and latency, for the over-time charts."""
    if not samples:
        return []
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        buckets[int((s.start + s.latency) / bucket_s)].append(s)
    out = []
    for index in range(max(buckets) + 1):
        group = buckets.get(index, [])
        ok = sorted(s.latency for s in group if s.ok)
        out.append(
            {
                "t": index * bucket_s,
                "rps": len(ok) / bucket_s,
                "errors": float(len(group) - len(ok)),
                "p50": percentile(ok, 50) if ok else float("nan"),
                "p99": percentile(ok, 99) if ok else float("nan"),
            }
        )
    return out


def parse_server_timing(value: str) -> dict[str, float]:
    """``queue;dur=0.1, backend;dur=2.0;desc="x", total;dur=2.2`` -> {name: ms}."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        parts = [p.strip() for p in metric.split(";")]
        if not parts or not parts[0]:
            continue
        for param in parts[1:]:
            if param.startswith("dur="):
                with contextlib.suppress(ValueError):
                    out[parts[0]] = float(param[4:])
    return out
