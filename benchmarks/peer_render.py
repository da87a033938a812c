"""peers.py's Markdown: one table per metric, gateways as rows, cells as columns (c=16 / c=64)."""

from __future__ import annotations

import math
import shlex
from typing import Any

from benchmarks.common import LOAD_CORE, PROXY_CORE, ROOT
from benchmarks.peer_targets import GATEWAYS, PEERS

COLUMNS = [("chat-0", "chat, 0 ms"), ("streamed-0", "streamed, 0 ms"), ("chat-20", "chat, 20 ms")]
COLUMNS.append(("streamed-20", "streamed, 20 ms"))


def find(data: dict[str, Any], gateway: str, cell: str, conc: int) -> dict[str, Any] | None:
    for c in data["cells"]:
        if c["gateway"] == gateway and c["cell"] == cell and c["concurrency"] == conc:
            return c
    return None


def fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def value_of(c: dict[str, Any] | None, key: str, digits: int) -> str:
    if c is None:
        return "-"
    flag = "" if c["errors"] == 0 and c.get("verified", True) else " ⚠"
    return fmt(c.get(key), digits) + flag


def gateway_order(data: dict[str, Any]) -> list[str]:
    names = data["gateways"]
    return [g for g in GATEWAYS if g in names] + [g for g in names if g not in GATEWAYS]


def best_peer(data: dict[str, Any], cell: str, conc: int, key: str, lower: bool) -> tuple[str, float] | None:
    """The peer with the best ``key`` in this cell (cells with errors left out), and its value."""
    best: tuple[str, float] | None = None
    for g in PEERS:
        c = find(data, g, cell, conc)
        if c is None or not c.get(key) or c["errors"]:
            continue
        if best is None or (c[key] < best[1] if lower else c[key] > best[1]):
            best = (g, c[key])
    return best


def ratio(data: dict[str, Any], cell: str, conc: int, key: str, lower: bool, to: str | None) -> str:
    """Inferno's ``key`` over gateway ``to``'s (None: the best peer's, named after the ratio)."""
    mine = find(data, "inferno", cell, conc)
    if mine is None or mine.get(key) is None:
        return "-"
    if to is None:
        best = best_peer(data, cell, conc, key, lower)
        return f"{mine[key] / best[1]:.2f} ({best[0]})" if best else "-"
    other = find(data, to, cell, conc)
    return f"{mine[key] / other[key]:.2f}" if other and other.get(key) else "-"


def ratio_rows(data: dict[str, Any], cells: list[str], key: str, lower: bool) -> list[str]:
    """The "Inferno / best peer" and "Inferno / nginx" rows under a table, one column per cell."""
    concs = data["args"]["concurrency"]
    if not any(c["gateway"] == "inferno" for c in data["cells"]):
        return []
    rows = []
    for label, to in (("Inferno / best peer", None), ("Inferno / nginx", "nginx")):
        values = [" / ".join(ratio(data, cell, conc, key, lower, to) for conc in concs) for cell in cells]
        rows.append(f"| **{label}** | " + " | ".join(values) + " |")
    return rows


def metric_table(
    data: dict[str, Any],
    title: str,
    key: str,
    digits: int,
    lower_is_better: bool,
    columns: list[tuple[str, str]],
) -> list[str]:
    concs = data["args"]["concurrency"]
    lines = [
        title,
        "",
        f"Each cell: c={' / c='.join(str(c) for c in concs)}. Ratios: "
        + ("below 1, Inferno is better." if lower_is_better else "above 1, Inferno is better."),
        "",
        "| gateway | " + " | ".join(label for _, label in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for g in gateway_order(data):
        if key == "cpu_us_per_request" and g == "direct":
            continue
        row = [
            " / ".join(value_of(find(data, g, cell, conc), key, digits) for conc in concs)
            for cell, _ in columns
        ]
        if all(set(v.replace(" ", "")) <= {"-", "/"} for v in row):
            continue
        lines.append(f"| {g} | " + " | ".join(row) + " |")
    lines += ratio_rows(data, [cell for cell, _ in columns], key, lower_is_better)
    return [*lines, ""]


def long_table(data: dict[str, Any]) -> list[str]:
    if not any(c["cell"] == "long" for c in data["cells"]):
        return []
    meta = data.get("long_stream", {})
    concs = data["args"]["concurrency"]
    lines = [
        f"### Long streams: max_tokens {meta.get('max_tokens')} streamed at {meta.get('tokens_per_s', 0):g} tokens/s, "
        f"backend delay 0 ({meta.get('data_events')} `data:` events per stream, counted against the backend); "
        f"c={' / c='.join(str(c) for c in concs)}",
        "",
        "| gateway | req/s | p99 ms | CPU µs/request | CPU µs/chunk |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    keys = [("rps", 0), ("p99_ms", 1), ("cpu_us_per_request", 0), ("cpu_us_per_chunk", 2)]
    for g in gateway_order(data):
        if not any(find(data, g, "long", conc) for conc in concs):
            continue
        row = [" / ".join(value_of(find(data, g, "long", conc), k, d) for conc in concs) for k, d in keys]
        lines.append(f"| {g} | " + " | ".join(row) + " |")
    if any(c["gateway"] == "inferno" for c in data["cells"]):
        for label, to in (("Inferno / best peer", None), ("Inferno / nginx", "nginx")):
            values = [" / ".join(ratio(data, "long", c, k, k != "rps", to) for c in concs) for k, _ in keys]
            lines.append(f"| **{label}** | " + " | ".join(values) + " |")
    return [*lines, ""]


def kill_table(data: dict[str, Any]) -> list[str]:
    if not data["kill"]:
        return []
    k = data["kill_config"]
    lines = [
        f"### A backend SIGKILLed under load: {k.get('repeats', 1)} run(s) per gateway, each with fresh backends: "
        f"{k['duration_s']:g} s closed loop at concurrency {k['concurrency']} "
        f"(half the lanes streamed), max_tokens {k['max_tokens']}, backends at {k['delay_ms']:g} ms + "
        f"{k['tokens_per_s']:g} tokens/s, one killed at {k['kill_at_s']:g} s; a failure is a non-200, an error "
        "or a stream without its `[DONE]`",
        "",
        "| gateway | requests | failed (per run) | chat / streamed | failures from .. to (s after the kill) | reasons |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    order = gateway_order(data)
    for r in sorted(data["kill"], key=lambda r: order.index(r["gateway"]) if r["gateway"] in order else 99):
        left = r["run_left_after_kill_s"]
        span = "-"
        if r["failed"]:
            last = r["last_failure_s"]
            span = f"{r['first_failure_s']:.2f} .. {last:.2f}" + (
                " (to the end)" if last > left - 0.3 else ""
            )
        reasons = "; ".join(f"{why or '?'} x{n}" for why, n in r["reasons"].items())
        lines.append(
            f"| {r['gateway']} | {r['requests']} | {r['failed']}{per_run(r)} | "
            f"{r['failed_chat']} / {r['failed_streamed']} | "
            f"{span} | {reasons or '-'} |"
        )
    return [*lines, ""]


def per_run(r: dict[str, Any]) -> str:
    runs = r.get("runs", [])
    return f" ({', '.join(str(x['failed']) for x in runs)})" if len(runs) > 1 else ""


def startup_table(data: dict[str, Any]) -> list[str]:
    if not data["startup"]:
        return []
    lines = [
        "### Start-up: spawn to the first 200 chat answer (polled every 10 ms), backends already up",
        "",
        "| gateway | median s | runs s |",
        "| --- | ---: | --- |",
    ]
    order = gateway_order(data)
    for r in sorted(
        data["startup"], key=lambda r: order.index(r["gateway"]) if r["gateway"] in order else 99
    ):
        lines.append(
            f"| {r['gateway']} | {r['median_s']:.3f} | {', '.join(f'{x:.3f}' for x in r['runs_s'])} |"
        )
    return [*lines, ""]


def problems(data: dict[str, Any]) -> list[str]:
    lines = []
    for c in data["cells"]:
        if c["errors"] or not c.get("verified", True):
            lines.append(
                f"- {c['gateway']} {c['cell']} c={c['concurrency']}: {c['errors']} errors (non-2xx + socket errors "
                f"over its runs: {', '.join(str(r['non_2xx']) + ' / ' + (r['socket_errors'] or '0') for r in c['runs'])})"
                + ("" if c.get("verified", True) else "; its check before timing failed")
            )
    for f in data["failures"]:
        lines.append(f"- {f['gateway']} {','.join(f['cells'])}: did not run: {f['error']}")
    for g, checks in data["verify"].items():
        for check in checks:
            for mode, res in check.items():
                if not res["ok"]:
                    lines.append(f"- {g} {mode} check: {res}")
    return ["### Errors", "", *lines, ""] if lines else []


def short(cmd: list[str], data: dict[str, Any]) -> str:
    """A command line with this tree as ``.`` and the run's temporary folder as ``$TMP``."""
    text = shlex.join(cmd).replace(str(ROOT) + "/", "./")
    return text.replace(data.get("tmp", "$TMP"), "$TMP") if data.get("tmp") else text


def commands(data: dict[str, Any]) -> list[str]:
    lines = ["### Commands and versions", ""]
    versions = data["versions"]
    lines.append(
        f"- **inferno** ({versions.get('inferno')}): `{short(data['commands'].get('inferno', {}).get('cmd', []), data)}`"
    )
    for g in gateway_order(data):
        if g in ("direct", "inferno", "inferno-pure") or g not in data["commands"]:
            continue
        v = versions.get(g, {})
        ver = "; ".join(x for x in (v.get("pip"), v.get("version")) if x)
        env = data["commands"][g].get("env") or {}
        env_s = " ".join(f"{k}={v}" for k, v in env.items() if k != "PYTHONPATH")
        cmd = short(data["commands"][g]["cmd"], data)
        lines.append(f"- **{g}** ({ver}): `{(env_s + ' ') if env_s else ''}{cmd}`")
    lines.append(
        "- backends: `python -m inferno backend --engine fake --fake-tokens-per-s 1e9 --fake-latency-ms D "
        "--n-parallel 1024 --log-level WARNING` x2 (long streams: `--fake-tokens-per-s 1000`); ports and "
        "config files (`$TMP/*.yaml`, `$TMP/nginx-N/nginx.conf`: their text is in peers.json, `commands`) "
        "differ per run"
    )
    return [*lines, ""]


def render(data: dict[str, Any]) -> str:
    info, args = data["machine"], data["args"]
    lit = "litellm" in data["gateways"]
    lines = [
        "## peers",
        "",
        f"{info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, Python {info['python']}; {info['wrk']}. "
        f"{info['date']}; {data['elapsed_s']:.0f} s in all.",
        f'`POST /v1/chat/completions`, `max_tokens` 4, answered whole (chat) or `"stream": true`; two fake-engine '
        f"backends with 0 or 20 ms before the first token. wrk -t1 --latency, warm-up then {args['repeats']} x "
        f"{args['duration']:g} s per cell, medians; gateway pinned to core {PROXY_CORE}, wrk and both backends to "
        f"core {LOAD_CORE}. CPU = the gateway's whole process tree's user+system time / requests. "
        "nginx is the reference, not a peer. ⚠ = the cell had errors or failed its check (see Errors). "
        "Every gateway runs without per-request INFO log lines.",
        "",
    ]
    lines += metric_table(data, "### CPU µs per request", "cpu_us_per_request", 0, True, COLUMNS)
    lines += metric_table(data, "### Requests/s", "rps", 0, False, COLUMNS)
    lines += metric_table(data, "### p50 latency, ms", "p50_ms", 2, True, COLUMNS)
    lines += metric_table(data, "### p99 latency, ms", "p99_ms", 2, True, COLUMNS)
    if lit:
        lines += [
            f'LiteLLM ran the chat cells only, {args["litellm_duration"]:g} s per run ("-": not run): it answers '
            "about a hundred times fewer requests per CPU second, so the streamed cells would add minutes for no "
            "information.",
            "",
        ]
    lines += long_table(data)
    lines += kill_table(data)
    lines += startup_table(data)
    lines += problems(data)
    lines += commands(data)
    return "\n".join(lines).rstrip() + "\n"
