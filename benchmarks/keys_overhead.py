"""keys_overhead: the proxy's CPU per request with API keys off and on, alternated.

Two proxies in front of the same two fake backends, one plain and one with
``--require-api-key`` (a key with RPM and TPM budgets, so every check runs), both
pinned to the same core and loaded one at a time by wrk, in alternating order
(ABBA...) so that drift of this machine's speed hits both alike. Reports the
median proxy CPU µs per request of each and their ratio.

    python benchmarks/keys_overhead.py [--rounds 8] [--duration 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    LOAD_CORE,
    PROXY_CORE,
    cpu_seconds,
    fake_backend,
    inferno,
    machine,
    median,
    procs,
    proxy_cmd,
    wait_port,
    write_result,
    wrk,
    wrk_script,
)
from inferno.orchestrators.processes import free_port

BODY = '{"prompt":"hello","max_tokens":16}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="inferno-keys-") as name:
        tmp = Path(name)
        key = subprocess.run(
            inferno(
                "keys",
                "create",
                "--name",
                "bench",
                "--rpm",
                "1000000000",
                "--tpm",
                "1000000000",
                "--state-dir",
                str(tmp / "state"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        plain = wrk_script(tmp / "plain.lua", BODY)
        keyed = tmp / "keyed.lua"
        keyed.write_text(plain.read_text() + f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        with procs(tmp / "logs") as p:
            backends = [free_port(), free_port()]
            for i, port in enumerate(backends):
                p.start(f"backend{i}", fake_backend(port, free_port(), 0.0, f"fake-{i + 1}"), core=LOAD_CORE)
            for port in backends:
                wait_port(port)
            proxies: dict[str, tuple[int, int, Path]] = {}
            for label, extra in (
                ("off", []),
                ("on", ["--require-api-key", "--state-dir", str(tmp / "state")]),
            ):
                port = free_port()
                cmd = proxy_cmd(
                    port, free_port(), backends, "--admission-max-in-flight-per-backend", "4096", *extra
                )
                proc = p.start(f"proxy-{label}", cmd, core=PROXY_CORE)
                proxies[label] = (port, proc.pid, keyed if label == "on" else plain)
            for port, _, _ in proxies.values():
                wait_port(port)
            time.sleep(1.0)
            for rnd in range(args.rounds):
                for label in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
                    port, pid, script = proxies[label]
                    wrk(port, script, 1.0, args.concurrency)  # warm-up
                    before = cpu_seconds([pid])
                    requests = wrk(port, script, args.duration, args.concurrency)
                    runs[label].append((cpu_seconds([pid]) - before) / requests * 1e6)
                    print(f"round {rnd + 1} keys {label:3}: {runs[label][-1]:.1f} us/req", flush=True)
    write_result(
        "keys_overhead",
        {"machine": machine(), "args": vars(args), "runs": runs, "command": " ".join(sys.argv)},
        render(runs, args),
    )


def render(runs: dict[str, list[float]], args: Any) -> str:
    info = machine()
    off, on = median(runs["off"]), median(runs["on"])
    return "\n".join(
        [
            "## keys_overhead",
            "",
            f"{info['cpu']}, {info['cores']} cores. Proxy pinned to core {PROXY_CORE}, wrk and two fake backends to "
            f"core {LOAD_CORE}; `/inference`, concurrency {args.concurrency}, {args.duration:g} s per run, "
            f"{args.rounds} rounds alternating which goes first; medians.",
            "",
            "| API keys | proxy CPU µs/request (median) | runs |",
            "| --- | ---: | --- |",
            f"| off | {off:.1f} | {', '.join(f'{v:.0f}' for v in runs['off'])} |",
            f"| on (`--require-api-key`, RPM and TPM budgets, usage counted) | {on:.1f} | "
            f"{', '.join(f'{v:.0f}' for v in runs['on'])} |",
            "",
            f"Keys on / off: x{on / off:.3f} CPU per request.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
