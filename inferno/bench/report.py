"""Reports of a load test: a text table, JSON, or one self-contained HTML file.

The HTML report draws its charts as inline SVG: it opens offline, with no
scripts or stylesheets fetched from anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import orjson

from inferno.bench.stats import Sample, summarize, timeline


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.1f}"


def build(samples: Sequence[Sample], elapsed_s: float, meta: dict[str, Any]) -> dict[str, Any]:
    return {"meta": meta, "summary": summarize(samples, elapsed_s), "timeline": timeline(samples)}


def text(report: dict[str, Any]) -> str:
    s = report["summary"]
    lat = s["latency_s"]
    lines = [
        f"target {report['meta'].get('target')}  kind {report['meta'].get('kind')}  "
        f"mode {report['meta'].get('mode')}",
        f"requests {s['requests']}  ok {s['succeeded']}  failed {s['failed']}  "
        f"elapsed {s['elapsed_s']:.2f}s  throughput {s['throughput_rps']:.1f} req/s",
        "",
        "latency (ms)      p50      p90      p99    p99.9      max",
        f"  total      {_ms(lat['p50']):>8} {_ms(lat['p90']):>8} {_ms(lat['p99']):>8} "
        f"{_ms(lat['p99.9']):>8} {_ms(lat['max']):>8}",
    ]
    stream = s.get("stream")
    if stream:
        for name, key in (("ttft", "ttft_s"), ("itl", "itl_s")):
            v = stream[key]
            if v:
                lines.append(
                    f"  {name:<10} {_ms(v['p50']):>8} {_ms(v['p90']):>8} {_ms(v['p99']):>8} "
                    f"{_ms(v['p99.9']):>8} {_ms(v['max']):>8}"
                )
        lines.append(f"  tokens {stream['tokens']}  ({stream['tokens_per_s']:.1f} tokens/s)")
    split = s.get("split_ms")
    if split:
        lines.append("")
        lines.append("time split (ms)   p50      p99")
        for name, v in split.items():
            lines.append(f"  {name:<16} {v['p50']:>7.2f} {v['p99']:>8.2f}")
    if s["backends"]:
        lines.append("")
        lines.append("backend                         count   share   p50 ms   p99 ms")
        for name, v in s["backends"].items():
            lines.append(
                f"  {name[:30]:<30} {v['count']:>6} {v['share'] * 100:>6.1f}% {_ms(v['p50']):>8} {_ms(v['p99']):>8}"
            )
    if s["errors"]:
        lines.append("")
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())))
    lines.append("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(s["statuses"].items())))
    return "\n".join(lines)


def as_json(report: dict[str, Any]) -> str:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()


# -- HTML ----------------------------------------------------------------------------------
def _svg_bars(title: str, labels: list[str], values: list[float], unit: str) -> str:
    width, height, pad = 640, 220, 40
    peak = max(values) if values and max(values) > 0 else 1.0
    bar_w = (width - 2 * pad) / max(1, len(values))
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for i, value in enumerate(values):
        h = (height - 2 * pad) * value / peak
        x = pad + i * bar_w
        parts.append(
            f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
            f'height="{h:.1f}" fill="#d9480f"><title>{html.escape(labels[i])}: {value:.3g} {unit}</title></rect>'
        )
    step = max(1, len(labels) // 8)
    for i in range(0, len(labels), step):
        parts.append(
            f'<text x="{pad + i * bar_w:.1f}" y="{height - pad + 14}" font-size="10">{html.escape(labels[i])}</text>'
        )
    parts.append(f'<text x="{pad}" y="16" font-size="12">{html.escape(title)} (max {peak:.3g} {unit})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_lines(title: str, xs: list[float], series: dict[str, list[float]], unit: str) -> str:
    width, height, pad = 640, 220, 40
    finite = [v for values in series.values() for v in values if not math.isnan(v)]
    peak = max(finite) if finite and max(finite) > 0 else 1.0
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 1.0
    colours = ("#d9480f", "#1971c2", "#2f9e44")
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for (name, values), colour in zip(series.items(), colours, strict=False):
        points = [
            f"{pad + (x - xs[0]) / span * (width - 2 * pad):.1f},{height - pad - v / peak * (height - 2 * pad):.1f}"
            for x, v in zip(xs, values, strict=False)
            if not math.isnan(v)
        ]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>'
        )
        parts.append(
            f'<text x="{width - pad - 120}" y="{20 + 14 * list(series).index(name)}" '
            f'font-size="11" fill="{colour}">{html.escape(name)}</text>'
        )
    parts.append(f'<text x="{pad}" y="16" font-size="12">{html.escape(title)} (max {peak:.3g} {unit})</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="10">time (s)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(samples: Sequence[Sample], bins: int = 30) -> tuple[list[str], list[float]]:
    values = sorted(s.latency * 1000.0 for s in samples if s.ok)
    if not values:
        return [], []
    low, high = values[0], values[min(len(values) - 1, int(len(values) * 0.999))]
    width = (high - low) / bins or 1.0
    counts = [0.0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / width))] += 1
    return [f"{low + i * width:.1f}ms" for i in range(bins)], counts


def html_page(report: dict[str, Any], samples: Sequence[Sample]) -> str:
    s = report["summary"]
    tl = report["timeline"]
    xs = [p["t"] for p in tl]
    labels, counts = _histogram(samples)
    backends = s["backends"]
    charts = [
        _svg_bars("Latency histogram", labels, counts, "requests"),
        _svg_lines(
            "Throughput over time",
            xs,
            {"req/s": [p["rps"] for p in tl], "errors/s": [p["errors"] for p in tl]},
            "req/s",
        ),
        _svg_lines(
            "Latency over time",
            xs,
            {"p50 ms": [p["p50"] * 1000 for p in tl], "p99 ms": [p["p99"] * 1000 for p in tl]},
            "ms",
        ),
        _svg_bars(
            "Requests per backend", list(backends), [float(v["count"]) for v in backends.values()], "requests"
        ),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>inferno bench</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:720px}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}svg{width:100%;border:1px solid #ddd;"
        "margin:1em 0}</style></head><body><h1>inferno bench</h1>"
        f"<pre>{html.escape(text(report))}</pre>{''.join(charts)}"
        f"<details><summary>raw JSON</summary><pre>{html.escape(as_json(report))}</pre></details>"
        "</body></html>"
    )
