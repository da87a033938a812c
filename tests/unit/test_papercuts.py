"""Small things a new user runs into: restarts, --help, progress lines, report charts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from inferno.bench.report import html_page, nice_ticks
from inferno.bench.stats import Sample, summarize
from inferno.cli import main
from inferno.launcher import RestartPolicy


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


@pytest.mark.parametrize("command", ["proxy", "backend", "up", "bench"])
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
