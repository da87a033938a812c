"""Docker helpers and the report for the end-to-end harness.

Every command has a timeout, every wait is bounded polling, and everything the
harness creates carries the ``com.inferno.stack=<label>`` label so teardown
can find and remove it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("INFERNO_E2E_ARTIFACTS", ROOT / "artifacts" / "e2e"))
IMAGE = os.environ.get("INFERNO_IMAGE", "inferno:latest")
BASE_IMAGE = os.environ.get("INFERNO_BASE_IMAGE", "inferno-base:bookworm")
LABEL_KEY = "com.inferno.stack"
PROXY = "http://127.0.0.1:8080"
OPS = "http://127.0.0.1:6100"


class CommandError(RuntimeError):
    pass


def run(
    cmd: list[str], timeout_s: float = 120.0, check: bool = True, env: dict[str, str] | None = None
) -> str:
    """Run a command with a deadline; returns stdout (stderr folded in on failure)."""
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(cmd)} timed out after {timeout_s}s") from exc
    if check and proc.returncode != 0:
        raise CommandError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def wait_until(
    what: str, predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.25
) -> tuple[Any, float]:
    """Bounded polling; returns (value, seconds waited)."""
    started = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - started < timeout_s:
        try:
            value = predicate()
            if value:
                return value, time.monotonic() - started
        except (httpx.HTTPError, CommandError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last_error})")


# -- images ---------------------------------------------------------------------------------
def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", name], check=False, capture_output=True, timeout=30
        ).returncode
        == 0
    )


def ensure_images(fresh: bool) -> dict[str, Any]:
    """Build the base image and the Inferno image when missing (all of them when fresh)."""
    info: dict[str, Any] = {"fresh": fresh}
    if fresh:
        for name in (IMAGE, BASE_IMAGE):
            run(["docker", "image", "rm", "-f", name], check=False)
    started = time.monotonic()
    if not image_exists(BASE_IMAGE):
        run(["bash", "deploy/build-base-image.sh"], timeout_s=900, env={"INFERNO_BASE_IMAGE": BASE_IMAGE})
        info["base_built_s"] = round(time.monotonic() - started, 1)
    if fresh or not image_exists(IMAGE):
        started = time.monotonic()
        run(["bash", "deploy/build-wheelhouse.sh", sys.executable], timeout_s=600)
        run(
            [
                "docker",
                "build",
                "-q",
                "-f",
                "deploy/Dockerfile",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--label",
                f"{LABEL_KEY}=image",
                "-t",
                IMAGE,
                ".",
            ],
            timeout_s=900,
        )
        prune_build_leftovers()
        info["image_built_s"] = round(time.monotonic() - started, 1)
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).strip())
    info["image_size_mib"] = round(size / 2**20, 1)
    return info


def prune_build_leftovers() -> None:
    """Remove the untagged images a build leaves (the builder stage, a replaced
    inferno:latest): only dangling images that carry our label."""
    run(["docker", "image", "prune", "-f", "--filter", f"label={LABEL_KEY}"], timeout_s=120)


def compose_command() -> list[str]:
    if (
        subprocess.run(
            ["docker", "compose", "version"], check=False, capture_output=True, timeout=30
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CommandError("neither `docker compose` nor `docker-compose` is installed")


def ports_free(*ports: int) -> list[int]:
    import socket

    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


# -- the proxy's view -----------------------------------------------------------------------
def all_workers() -> list[dict[str, Any]]:
    return list(httpx.get(f"{OPS}/workers", timeout=3).json()["workers"])


def workers(task: str = "text-generation") -> list[dict[str, Any]]:
    """The backends serving a model of ``task`` (text generation by default)."""
    return [w for w in all_workers() if task in w["tasks"].values()]


def healthy_workers(task: str = "text-generation") -> list[dict[str, Any]]:
    return [w for w in workers(task) if w["status"] == "healthy"]


PHOTO = ROOT / "tests" / "data" / "images" / "coffee.jpg"
#: the cluster token of the stack under test (a Docker secret made from this file)
CLUSTER_TOKEN = "e2e-" + secrets.token_urlsafe(24)


#: the image's non-root user (deploy/Dockerfile), who reads the token inside the containers
IMAGE_UID = 10001


def write_secret(path: Path, text: str, owner_uid: int | None = None) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (0600), never world-readable,
    not even for a moment; as root, hand it to ``owner_uid``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that was there already keeps its old mode otherwise
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    if owner_uid is not None and os.geteuid() == 0:
        os.chown(path, owner_uid, owner_uid)
    return path


def token_file() -> Path:
    """The token as a file for the stack's ``cluster_token`` secret, mode 0600.

    Swarm copies it into its secret store (the container gets its own copy); Compose
    bind-mounts it, so as root it is handed to the image's user, who alone may read it.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = write_secret(ARTIFACTS / "cluster-token", CLUSTER_TOKEN + "\n", owner_uid=IMAGE_UID)
    # Every later compose/stack command reads the same file (it parses the secrets).
    os.environ["INFERNO_CLUSTER_TOKEN_FILE"] = str(path)
    return path


#: the proxy's admin token (deployments, the orchestrator endpoints), a Docker secret too
ADMIN_TOKEN = "e2e-admin-" + secrets.token_urlsafe(24)


def admin_token_file() -> Path:
    """The admin token as a file for the stack's ``admin_token`` secret, mode 0600."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = write_secret(ARTIFACTS / "admin-token", ADMIN_TOKEN + "\n", owner_uid=IMAGE_UID)
    os.environ["INFERNO_ADMIN_TOKEN_FILE"] = str(path)
    return path


def docker_gid() -> str:
    """The group that owns the Docker socket: the controller runs in it (stack deploy
    has no group_add)."""
    gid = str(os.stat("/var/run/docker.sock").st_gid)
    os.environ["DOCKER_GID"] = gid
    return gid


def unauthenticated_registration_inside(network: str, label: str) -> list[str]:
    """From a throwaway container on the stack's own network: a registration without
    the token, and one with a wrong token, must both get 401 from the proxy."""
    script = (
        "import json, urllib.request, urllib.error\n"
        "out = []\n"
        "for auth in (None, 'Bearer not-the-cluster-token-0000'):\n"
        "    req = urllib.request.Request('http://proxy-lb:6100/registration', method='POST',\n"
        "        data=json.dumps({'address': 'intruder:3000', 'node_id': 'intruder'}).encode(),\n"
        "        headers={'Content-Type': 'application/json', **({'Authorization': auth} if auth else {})})\n"
        "    try:\n"
        "        out.append(urllib.request.urlopen(req, timeout=5).status)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        out.append(exc.code)\n"
        "print(json.dumps(out))\n"
    )
    out = run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            network,
            "--label",
            label,
            "--entrypoint",
            "python",
            IMAGE,
            "-c",
            script,
        ],
        timeout_s=60,
    )
    codes = json.loads(out.strip().splitlines()[-1])
    assert codes == [401, 401], codes
    names = [w["node_id"] for w in all_workers()]
    assert "intruder" not in names, names
    return [f"registration without a token -> {codes[0]}", f"with a wrong token -> {codes[1]}"]


def all_model_kinds() -> list[str]:
    """One request of each kind through the proxy (chat, embeddings, a photo), each
    checked to be served by a backend that registered that model. Returns evidence."""
    import base64

    by_node = {w["node_id"]: w for w in all_workers()}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        (
            "/v1/chat/completions",
            "smollm2-135m-instruct",
            {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8},
        ),
        ("/v1/embeddings", "all-minilm-l6-v2", {"input": ["a cup of coffee", "an espresso"]}),
        (
            "/inference",
            "efficientnet-lite0",
            {"data": base64.b64encode(PHOTO.read_bytes()).decode(), "model_type": "any", "top_k": 3},
        ),
    ]
    evidence = []
    with httpx.Client(timeout=60) as http:
        for path, model, body in requests:
            r = http.post(f"{PROXY}{path}", json=body, headers={"X-Request-ID": f"e2e-{model}"})
            assert r.status_code == 200, (path, r.text)
            node = r.headers["x-inferno-backend"]
            assert r.headers["x-inferno-model"] == model and r.json()["model"] == model
            assert model in by_node[node]["models"], (model, node, by_node[node]["models"])
            answer = r.json()
            if path == "/v1/embeddings":
                assert len(answer["data"]) == 2 and len(answer["data"][0]["embedding"]) == 384
            elif path == "/inference":
                assert answer["predictions"][0]["class"] == "espresso", answer["predictions"]
            evidence.append(f"{path} {model} -> {node}")
    return evidence


# -- logs -----------------------------------------------------------------------------------
LOG_PREFIX = re.compile(r"^(?P<task>[\w.-]+)@(?P<node>[\w.-]+)\s*\|\s?(?P<line>.*)$")


def service_logs(service: str, timeout_s: float = 60) -> list[tuple[str, str]]:
    """(task name, line) pairs from ``docker service logs``."""
    out = run(
        ["docker", "service", "logs", "--no-trunc", "--no-task-ids=false", service], timeout_s=timeout_s
    )
    pairs = []
    for raw in out.splitlines():
        match = LOG_PREFIX.match(raw)
        if match:
            pairs.append((match.group("task"), match.group("line")))
    return pairs


def task_containers(service: str) -> dict[str, str]:
    """Task name (``svc.slot.taskid``) -> container id, for every task of a service."""
    ids = run(["docker", "service", "ps", "-q", "--no-trunc", service]).split()
    mapping = {}
    for task_id in ids:
        fmt = "{{.Slot}} {{.Status.ContainerStatus.ContainerID}}"
        slot, _, container = run(["docker", "inspect", "-f", fmt, task_id]).strip().partition(" ")
        mapping[f"{service}.{slot}.{task_id}"] = container
    return mapping


# -- report ---------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)


class Report:
    def __init__(self, title: str, path: Path = ARTIFACTS) -> None:
        self.title = title
        self.path = path
        self.checks: list[Check] = []
        self.facts: dict[str, Any] = {}
        self.started = time.time()

    def add(self, check: Check) -> None:
        self.checks.append(check)
        self.write()

    def write(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"\W+", "-", self.title.lower()).strip("-")
        data = {
            "title": self.title,
            "started": self.started,
            "ok": all(c.ok for c in self.checks) and bool(self.checks),
            "facts": self.facts,
            "checks": [asdict(c) for c in self.checks],
        }
        (self.path / f"{slug}.json").write_text(json.dumps(data, indent=2))
        lines = [f"# {self.title}: {'PASS' if data['ok'] else 'FAIL'}", ""]
        for key, value in self.facts.items():
            lines.append(f"- {key}: {value}")
        lines.append("")
        for c in self.checks:
            lines.append(f"[{'PASS' if c.ok else 'FAIL'}] {c.name} ({c.seconds:.1f}s)")
            for key, value in c.details.items():
                lines.append(f"    {key}: {value}")
            for line in c.evidence[:8]:
                lines.append(f"    > {line[:220]}")
        (self.path / f"{slug}.txt").write_text("\n".join(lines) + "\n")


class Step:
    """Context manager that times a check and records it, failed or not."""

    def __init__(self, report: Report, name: str) -> None:
        self.report = report
        self.check = Check(name, False, 0.0)
        self._started = 0.0

    def __enter__(self) -> Check:
        self._started = time.monotonic()
        return self.check

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.check.seconds = time.monotonic() - self._started
        self.check.ok = exc_type is None
        if exc is not None:
            self.check.details["error"] = str(exc)[:2000]
        self.report.add(self.check)
