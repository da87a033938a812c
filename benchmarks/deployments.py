"""deployments: where a cold start's time goes, per model kind, and a scale cycle's requests.

One ``inferno proxy --orchestrator local``. For each engine a deployment with
``min_instances`` 0 is registered and one request sent to it at zero; the
timeline comes from the client's clock and from the proxy's and the instance's
log lines (millisecond timestamps, one machine, one clock):

- *decided*: the autoscaler scaled it to 1 (``scaled to 1 instances (cold start)``)
- *spawned*: the orchestrator started the process (``Instance ... started``)
- *imported*: the instance's first log line (Python and Inferno imported, logging up)
- *loaded*: the model is loaded and the ports listen (``Starting backend server``)
- *registered*: the proxy registered it (``Backend registered``)
- *first byte*: the client got the first byte of the answer (a streamed chunk for text)

Each kind is measured ``--repeats`` times (the deployment is deleted and made
again); medians. Then the scale cycle: a deployment of SmolLM2 with 0..2 instances
under a load that ramps 1 -> 4 -> 0 concurrent streams and back, reporting every
request's status and latency per phase, and the instances over time.

    python benchmarks/deployments.py [--repeats 3] [--kinds llamacpp,minilm,efficientnet,fake]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HOST, ROOT, inferno, machine, median, procs, wait_port, write_result
from inferno.orchestrators.processes import free_port, stop_all

ADMIN = "bench-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
PHOTO = ROOT / "tests" / "data" / "images" / "cat.jpg"
ENGINES: dict[str, dict[str, Any]] = {
    "llamacpp": {"n_parallel": 2, "threads": 2},
    "minilm": {"onnx_threads": 2},
    "efficientnet": {"onnx_threads": 2},
    "fake": {},
}
PHASES = ("decided", "spawned", "imported", "loaded", "registered", "first byte")


def stamp(line: str) -> float | None:
    match = STAMP.match(line)
    if match is None:
        return None
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first(path: Path, needle: str, after: float = 0.0) -> float | None:
    for line in path.read_text(errors="replace").splitlines():
        t = stamp(line)
        if t is not None and t >= after - 0.002 and (not needle or needle in line):
            return t
    return None


def request(url: str, kind: str, model: str) -> tuple[int, float]:
    """Send one request; (status, wall-clock time of its first byte)."""
    if kind in ("llamacpp", "fake"):
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
            "stream": True,
        }
        path = "/v1/chat/completions"
    elif kind == "minilm":
        body, path = {"model": model, "input": ["a cat"]}, "/v1/embeddings"
    else:
        import base64

        body = {"model_type": model, "data": base64.b64encode(PHOTO.read_bytes()).decode()}
        path = "/inference"
    first_byte = 0.0
    with httpx.stream("POST", url + path, json=body, timeout=180) as response:
        for _ in response.iter_raw():
            first_byte = first_byte or time.time()
        return response.status_code, first_byte or time.time()


def cold_start(url: str, ops: str, logs: Path, proxy_log: Path, kind: str, index: int) -> dict[str, float]:
    model = f"cold-{kind}-{index}"
    spec = {
        "model": model,
        "backend": kind,
        "backend_config": ENGINES[kind],
        "auto_scaling_config": {"min_instances": 0, "max_instances": 1, "cold_start_timeout_s": 120},
    }
    httpx.post(f"{ops}/v1/deployments", json=spec, headers=AUTH, timeout=10).raise_for_status()
    t0 = time.time()
    status, first_byte = request(url, kind, model)
    if status != 200:
        raise RuntimeError(f"{kind}: cold start answered {status}")
    time.sleep(0.3)  # the log lines are flushed
    instance = next(p for p in logs.glob(f"{model}-*.log"))
    marks = {
        "decided": first(proxy_log, f"Deployment {model} scaled to 1 instances", t0),
        "spawned": first(proxy_log, f"of {model} started (pid", t0),
        "imported": first(instance, ""),
        "loaded": first(instance, "Starting backend server"),
        "registered": first(proxy_log, f"(node {instance.stem}", t0),
        "first byte": first_byte,
    }
    httpx.delete(f"{ops}/v1/deployments/{model}", headers=AUTH, timeout=10)
    out = {name: (t - t0) * 1000 for name, t in marks.items() if t is not None}
    missing = [name for name in PHASES if name not in out]
    if missing:
        raise RuntimeError(f"{kind}: no log line for {missing}")
    return out


class Load:
    """``n`` streaming clients in closed loop; each request's (phase, status, seconds)."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.results: list[tuple[str, int, float]] = []
        self.phase = "idle"
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def set(self, phase: str, clients: int) -> None:
        self.phase = phase
        while len(self._threads) > clients:
            thread, stop = self._threads.pop()
            stop.set()
            thread.join(timeout=120)
        while len(self._threads) < clients:
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(stop,), daemon=True)
            thread.start()
            self._threads.append((thread, stop))

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            phase, t0 = self.phase, time.monotonic()
            try:
                status, _ = request(self.url, "llamacpp", self.model)
            except httpx.HTTPError:
                status = 0
            self.results.append((phase, status, time.monotonic() - t0))


def scale_cycle(url: str, ops: str) -> dict[str, Any]:
    spec = {
        "model": "cycle",
        "backend": "llamacpp",
        "backend_config": {"n_parallel": 2, "threads": 1},
        "auto_scaling_config": {
            "min_instances": 0,
            "max_instances": 2,
            "target_ongoing_requests": 2,
            "keep_alive_s": 10,
            "downscale_delay_s": 5,
            "look_back_s": 5,
            "cold_start_timeout_s": 120,
        },
    }
    httpx.post(f"{ops}/v1/deployments", json=spec, headers=AUTH, timeout=10).raise_for_status()
    load = Load(url, "cycle")
    timeline: list[tuple[float, int, int]] = []
    t0 = time.monotonic()

    def watch(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            body = httpx.get(f"{ops}/status", headers=AUTH, timeout=10).json()["deployments"]["cycle"]
            timeline.append((round(time.monotonic() - t0, 1), body["desired"], body["ready"]))
            time.sleep(0.5)

    for phase, clients, seconds in (("1 stream", 1, 15), ("4 streams", 4, 25), ("1 stream again", 1, 15)):
        load.set(phase, clients)
        watch(seconds)
    load.set("idle", 0)
    watch(20)  # keep-alive, then to zero
    httpx.delete(f"{ops}/v1/deployments/cycle", headers=AUTH, timeout=10)
    phases: dict[str, dict[str, Any]] = {}
    for phase, status, seconds in load.results:
        row = phases.setdefault(phase, {"requests": 0, "failed": 0, "latencies": []})
        row["requests"] += 1
        row["failed"] += status != 200
        row["latencies"].append(seconds)
    for row in phases.values():
        ordered = sorted(row.pop("latencies"))
        row["p50_s"] = round(median(ordered), 3)
        row["p99_s"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)
    return {"phases": phases, "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="llamacpp,minilm,efficientnet,fake")
    parser.add_argument("--no-cycle", action="store_true")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    work = Path(tempfile.mkdtemp(prefix="inferno-deployments-"))
    (work / "admin-token").write_text(ADMIN)
    port, ops_port = free_port(), free_port()
    url, ops = f"http://{HOST}:{port}", f"http://{HOST}:{ops_port}"
    cold: dict[str, list[dict[str, float]]] = {}
    cycle: dict[str, Any] = {}
    with procs(work / "logs") as p:
        cmd = inferno(
            "proxy", "--listen-addr", f"{HOST}:{port}", "--ops-addr", f"{HOST}:{ops_port}",
            "--orchestrator", "local", "--state-dir", str(work / "state"),
            "--admin-token-file", str(work / "admin-token"), "--insecure",
        )  # fmt: skip
        p.start("proxy", cmd)
        wait_port(port)
        try:
            for kind in kinds:
                cold[kind] = [
                    cold_start(
                        url, ops, work / "state" / "instances" / "logs", work / "logs" / "proxy.log", kind, i
                    )
                    for i in range(args.repeats)
                ]
                print(kind, json.dumps(cold[kind]), flush=True)
            if not args.no_cycle:
                cycle = scale_cycle(url, ops)
        finally:
            stop_all(str(work / "state"), timeout_s=30)
    write_result("deployments", {"machine": machine(), "cold": cold, "cycle": cycle}, render(cold, cycle))


def render(cold: dict[str, list[dict[str, float]]], cycle: dict[str, Any]) -> str:
    lines = [
        "## deployments",
        "",
        "Cold start on the `local` orchestrator: one request to a deployment at zero instances; "
        "milliseconds from the request leaving the client, medians of each kind's repeats "
        "(`python benchmarks/deployments.py`). Text is a streamed chat request, so *first byte* is "
        "the first token.",
        "",
        "| engine | " + " | ".join(PHASES) + " |",
        "| --- |" + " ---: |" * len(PHASES),
    ]
    for kind, runs in cold.items():
        cells = [f"{median([r[name] for r in runs]):.0f}" for name in PHASES]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if cycle:
        lines += [
            "",
            "A scale cycle of SmolLM2 (0..2 instances, target 2 ongoing requests, keep-alive 10 s): "
            "streamed chat from 1, then 4, then 1 closed-loop client, then none.",
            "",
            "| phase | requests | failed | p50 s | p99 s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for phase, row in cycle["phases"].items():
            lines.append(
                f"| {phase} | {row['requests']} | {row['failed']} | {row['p50_s']} | {row['p99_s']} |"
            )
        changes = []
        last = None
        for t, desired, ready in cycle["timeline"]:
            if (desired, ready) != last:
                changes.append(f"{t:g}s: {desired} desired / {ready} ready")
                last = (desired, ready)
        lines += ["", "Instances over time: " + "; ".join(changes) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
