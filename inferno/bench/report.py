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
    models = {k: v for k, v in s.get("models", {}).items() if k != "-"}
    if models:
        lines.append("")
        lines.append("model                           count   items/s   p50 ms   p99 ms")
        for name, v in models.items():
            lines.append(
                f"  {name[:30]:<30} {v['count']:>5} {v['items_per_s']:>9.1f} {_ms(v['p50']):>8} {_ms(v['p99']):>8}"
            )
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
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 44


def nice_ticks(peak: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``peak`` (1, 2, 2.5 or 5 times a power of ten)."""
    if peak <= 0 or math.isnan(peak):
        return [0.0, 1.0]
    raw = peak / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < peak:
        ticks.append(ticks[-1] + step)
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"


def _frame(title: str, ticks: list[float], unit: str, x_title: str) -> list[str]:
    """The SVG head, title, y grid with labelled ticks and the axis titles."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}" '
        'font-family="system-ui,sans-serif">',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
    ]
    for tick in ticks:
        y = TOP + plot_h - plot_h * tick / ticks[-1]
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_fmt(tick)}</text>'
        )
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">{html.escape(unit)}</text>'
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 6}" font-size="11" '
        f'text-anchor="middle">{html.escape(x_title)}</text>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#999"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#999"/>'
    )
    return parts


def _x_label(x: float, text: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" text-anchor="middle">'
        f"{html.escape(text)}</text>"
    )


def _svg_bars(title: str, labels: list[str], values: list[float], unit: str, x_title: str) -> str:
    ticks = nice_ticks(max(values) if values else 0.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / max(1, len(values))
    parts = _frame(title, ticks, unit, x_title)
    for i, value in enumerate(values):
        h = plot_h * value / ticks[-1]
        x = LEFT + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
            f'height="{h:.1f}" fill="#d9480f"><title>{html.escape(labels[i])}: {value:.3g} {unit}</title></rect>'
        )
    step = max(1, math.ceil(len(labels) / 6))
    for i in range(0, len(labels), step):
        parts.append(_x_label(LEFT + (i + 0.5) * bar_w, labels[i][:16]))
    parts.append("</svg>")
    return "".join(parts)


def _svg_lines(title: str, xs: list[float], series: dict[str, list[float]], unit: str) -> str:
    finite = [v for values in series.values() for v in values if not math.isnan(v)]
    ticks = nice_ticks(max(finite) if finite else 0.0)
    peak = ticks[-1]
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 1.0
    colours = ("#d9480f", "#1971c2", "#2f9e44")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(title, ticks, unit, "time since start (s)")
    first = xs[0] if xs else 0.0
    for tick in nice_ticks(span, 5):
        if tick <= span:
            parts.append(_x_label(LEFT + tick / span * plot_w, _fmt(first + tick)))
    for (name, values), colour in zip(series.items(), colours, strict=False):
        points = [
            f"{LEFT + (x - first) / span * plot_w:.1f},{TOP + plot_h - v / peak * plot_h:.1f}"
            for x, v in zip(xs, values, strict=False)
            if not math.isnan(v)
        ]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT - 4}" y="{16 + 14 * list(series).index(name)}" text-anchor="end" '
            f'font-size="11" fill="{colour}">{html.escape(name)}</text>'
        )
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
    return [f"{low + i * width:.4g}" for i in range(bins)], counts


def html_page(report: dict[str, Any], samples: Sequence[Sample]) -> str:
    s = report["summary"]
    tl = report["timeline"]
    xs = [p["t"] for p in tl]
    labels, counts = _histogram(samples)
    backends = s["backends"]
    charts = [
        _svg_bars("Latency histogram", labels, counts, "requests", "latency (ms, bin start)"),
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
            "Requests per backend",
            list(backends),
            [float(v["count"]) for v in backends.values()],
            "requests",
            "backend",
        ),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>inferno bench</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:1em auto;padding:0 1em;max-width:1400px}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
        ".charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,480px),1fr));gap:1em}"
        "svg{width:100%;height:auto;border:1px solid #ddd;background:#fff}</style></head>"
        "<body><h1>inferno bench</h1>"
        f"<pre>{html.escape(text(report))}</pre><div class='charts'>{''.join(charts)}</div>"
        f"<details><summary>raw JSON</summary><pre>{html.escape(as_json(report))}</pre></details>"
        "</body></html>"
    )
