"""Small things a new user runs into: restarts, --help, progress lines, report charts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from inferno.bench.report import html_page, nice_ticks
from inferno.bench.stats import Sample, summarize
from inferno.cli import load, main
from inferno.launcher.children import RestartPolicy

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_policy_backs_off_then_gives_up_and_forgives_stable_children() -> None:
    clock = FakeClock()
    policy = RestartPolicy(
        base_s=0.5, max_backoff_s=4.0, max_restarts=5, window_s=60, stable_s=30, clock=clock
    )
    delays = []
    for _ in range(5):
        clock.now += 1.0  # dies a second after each start
        delays.append(policy.on_exit())
        policy.started()
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    clock.now += 1.0
    assert policy.on_exit() is None  # sixth death within a minute: give up
    # A minute later the budget is back, and a child that ran long starts afresh.
    clock.now += 120.0
    policy.started()
    clock.now += 40.0
    assert policy.on_exit() == 0.5


@pytest.mark.parametrize("command", ["proxy", "backend", "worker", "up", "bench"])
def test_help_shows_every_flags_environment_variable(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    flags = re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", result.output, re.M)
    flags = [f for f in flags if f != "--help"]
    assert flags
    envvars = re.findall(r"env var: ([A-Z0-9_, ]+)", result.output.replace("\n", " "))
    assert len(envvars) == len(flags), (flags, envvars)
    assert f"INFERNO_{command.upper()}_" in result.output


def test_progress_line_has_no_carriage_returns_off_a_terminal() -> None:
    # stderr is a pipe here: progress must come as plain lines, never "\r".
    out = subprocess.run(
        [sys.executable, "-m", "inferno", "bench", "http://127.0.0.1:9", "-n", "3", "--timeout-s", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "\r" not in out.stderr, out.stderr[:500]
    assert "requests" in out.stdout


def test_stream_split_does_not_blame_the_proxy_for_generation() -> None:
    # 2 s streams whose headers reached the client after 12 ms; the proxy reported
    # 1 ms queue + 10 ms to the backend's first chunk.
    samples = [
        Sample(0.0, 2.0, 200, queue_ms=1.0, backend_ms=10.0, headers_ms=12.0, ttft=0.012, tokens=50),
        Sample(0.5, 2.0, 200, queue_ms=1.0, backend_ms=10.0, headers_ms=12.0, ttft=0.012, tokens=50),
    ]
    split = summarize(samples, elapsed_s=3.0)["split_ms"]
    assert split["proxy_and_network"]["p50"] == pytest.approx(1.0)
    assert split["stream_after_headers"]["p50"] == pytest.approx(1988.0)


def test_nice_ticks() -> None:
    assert nice_ticks(87.0) == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert nice_ticks(0.0) == [0.0, 1.0]
    assert nice_ticks(3.2)[-1] >= 3.2


def test_html_report_has_labelled_axes_and_is_responsive() -> None:
    samples = [Sample(i * 0.1, 0.01 + i * 0.001, 200, backend=f"b{i % 2}") for i in range(50)]
    summary = summarize(samples, elapsed_s=5.0)
    from inferno.bench.stats import timeline

    page = html_page({"meta": {}, "summary": summary, "timeline": timeline(samples)}, samples)
    assert "name='viewport'" in page and "auto-fit" in page
    assert page.count("<svg") == 4
    # every chart has labelled y ticks and an x axis title
    assert page.count('text-anchor="end">0</text>') >= 4
    for title in ("latency (ms, bin start)", "time since start (s)", "backend"):
        assert title in page


def _commands(group: click.Group, path: str = "inferno") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_every_option_of_every_command_has_help() -> None:
    commands = _commands(main)
    assert {"inferno proxy", "inferno up", "inferno bench", "inferno keys create"} <= {p for p, _ in commands}
    missing = [
        f"{path} {param.opts[-1]}"
        for path, command in commands
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("command", ["proxy", "backend", "worker", "up", "bench"])
def test_every_flag_answers_to_inferno_command_flag(command: str) -> None:
    """docs/configuration.md's rule: INFERNO_<COMMAND>_<FLAG>, upper case, dashes as underscores."""
    cmd = load(command)
    wrong = []
    for param in cmd.params:
        if not isinstance(param, click.Option):
            continue
        flag = next(o for o in param.opts if o.startswith("--"))
        rule = f"INFERNO_{command}_{flag[2:]}".upper().replace("-", "_")
        if param.envvar:
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        else:
            names = [f"INFERNO_{command}_{param.name}".upper()]  # click's auto_envvar_prefix
        if rule not in names:
            wrong.append((flag, names))
    assert not wrong, wrong


def test_bench_reads_its_flags_from_the_rules_variables(tmp_path: Any) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    seen: dict[str, Any] = {}
    bench_cmd = load("bench")
    original = bench_cmd.callback
    assert original is not None
    bench_cmd.callback = lambda **opts: seen.update(opts)
    try:
        env = {
            "INFERNO_BENCH_DURATION": "7",
            "INFERNO_BENCH_BURST_INTERVAL": "3",
            "INFERNO_BENCH_RAMP_STEP": "2",
            "INFERNO_BENCH_PROMPTS": str(prompts),
        }
        result = CliRunner().invoke(main, ["bench", "http://127.0.0.1:9"], env=env)
    finally:
        bench_cmd.callback = original
    assert result.exit_code == 0, result.output
    assert (seen["duration"], seen["burst_interval"], seen["ramp_step"]) == (7.0, 3.0, 2.0)
    assert seen["prompts"] == str(prompts)


def test_top_level_help_names_every_model_kind() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    assert "language, embeddings and image models" in " ".join(text.split())


def test_token_files_we_write_are_never_world_readable(tmp_path: Any) -> None:
    import stat

    from tests.e2e.harness import write_secret

    path = tmp_path / "cluster-token"
    path.write_text("old")
    path.chmod(0o644)  # a file left by an older run keeps no world-readable mode
    write_secret(path, "e2e-token\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "e2e-token\n"
    harness = (ROOT / "tests" / "e2e" / "harness.py").read_text()
    assert 'write_secret(ARTIFACTS / "cluster-token"' in harness and "0o644" not in harness
    cluster = (ROOT / "deploy" / "cluster" / "cluster.sh").read_text()
    assert "chmod 0644" not in cluster
    assert "(umask 077 && python3 -c 'import secrets" in cluster


def _fake_tool(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_make_installs_once_and_says_what_it_installs(tmp_path: Any) -> None:
    """`make test` (lint, the suite, both e2e stages) installs the package once; `make run`
    and `make test-fast` still work. Real make, fake tools: nothing is downloaded."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    log = tmp_path / "calls.log"
    fakes = tmp_path / "fakebin"
    fakes.mkdir()
    (tmp_path / "scripts").mkdir()
    _fake_tool(tmp_path / "scripts" / "install-system-deps.sh", "exit 0\n")
    for tool in ("promtool", "chromium"):
        _fake_tool(fakes / tool, "exit 0\n")
    # `python3 -m venv .venv` makes a venv whose every tool only logs its arguments.
    tool = f'echo "$(basename "$0") $*" >> {log}\n'
    _fake_tool(
        fakes / "python3",
        'mkdir -p "$3/bin"\n'
        + "".join(
            f"printf '#!/bin/sh\\n{tool}' > \"$3/bin/{t}\"\n" for t in ("python", "ruff", "mypy", "inferno")
        )
        + 'chmod +x "$3"/bin/*\n',
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["PATH"] = f"{fakes}:{env['PATH']}"

    def make(*targets: str) -> str:
        out = subprocess.run(
            ["make", "--no-print-directory", *targets, f"PYTHON={fakes / 'python3'}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout

    def installs() -> int:
        return sum(1 for line in log.read_text().splitlines() if "-m pip install" in line and " -e " in line)

    out = make("test")
    assert installs() == 1, log.read_text()
    calls = log.read_text()
    assert "tests/e2e/test_swarm.py" in calls and "tests/e2e/test_multinode.py" in calls
    # Every pip step is announced, so a quiet pip is not a silent make.
    assert out.count("==> ") >= 3, out
    make("run")
    make("test-fast")
    assert installs() == 1 and "inferno up --models" in log.read_text()
    (tmp_path / "pyproject.toml").touch()
    os.utime(tmp_path / "pyproject.toml", (time.time() + 5, time.time() + 5))
    make("run")
    assert installs() == 2  # a changed pyproject.toml is installed again


def test_install_system_deps_never_mistakes_a_present_libgomp_for_a_missing_one(tmp_path: Path) -> None:
    """`ldconfig -p | grep -q` under pipefail failed whenever grep stopped reading
    before ldconfig had written everything (SIGPIPE), then ran apt-get: on an offline
    machine the install failed. A long ldconfig listing with libgomp first makes that
    happen every time; the script must still see libgomp and exit 0 without apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ldconfig").write_text(
        "#!/bin/bash\necho '\tlibgomp.so.1 (libc6,x86-64) => /lib/libgomp.so.1'\n"
        'for ((i = 0; i < 5000; i++)); do echo "\tlibfiller$i.so (libc6,x86-64) => /lib/libfiller$i.so"; done\n'
    )
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho apt-get was called >&2\nexit 100\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for _ in range(3):
        out = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0 and "apt-get" not in out.stderr, out.stderr
