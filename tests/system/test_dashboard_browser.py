"""The dashboard in a real browser: Debian's chromium, driven by Playwright.

A proxy and three fake backends run as real processes. The test logs in with the
cluster token, watches the backend rows and the live numbers move, kills a
backend and waits for its row to turn unhealthy and the event to appear, uses
the try-it box, then stops the proxy and watches the page say so and recover by
itself when a new proxy comes up on the same ports. Screenshots of each step are
kept in ``artifacts/dashboard/``.

Playwright's own browser download is unreachable here, so it drives the system
chromium (``executable_path``); ``make test`` installs it. Without chromium the
test is skipped, unless ``INFERNO_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_TOKEN, Proc, start_process_cluster, wait_http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROXY_ARGS = (
    "--health-interval-s",
    "0.5",
    "--dashboard-interval-s",
    "0.5",
    "--admission-max-queue",
    "4",
    "--queue",
    "sim",
    "--queue-memory-only",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("INFERNO_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (make test-deps installs Debian's chromium)")
        pytest.skip("chromium is not installed (make test-deps installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # As root, chromium's sandbox cannot start; the page is our own.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Traffic:
    """Chat requests through the proxy from a thread, at most ``rate`` per second,
    until stopped (bounded by ``max_s`` and ``max_requests`` whatever happens)."""

    def __init__(self, url: str, rate: float = 20.0, max_s: float = 120.0, max_requests: int = 3000) -> None:
        self.url, self.rate, self.max_s, self.max_requests = url, rate, max_s, max_requests
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": False}
        end = time.monotonic() + self.max_s
        with httpx.Client(timeout=10.0) as http:
            while (
                not self._stop.is_set() and time.monotonic() < end and len(self.statuses) < self.max_requests
            ):
                try:
                    self.statuses.append(http.post(f"{self.url}/v1/chat/completions", json=body).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                self._stop.wait(1.0 / self.rate)


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_dashboard_in_chromium(spawn: Callable[..., Proc], browser: Any) -> None:
    from playwright.sync_api import expect

    cluster = start_process_cluster(spawn, 3, proxy_args=PROXY_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Script errors only: the login's 401s and the stream cut when the proxy stops are
    # logged by chromium as failed loads, and are expected.
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )

    # Without the token: the login form, and a wrong token is refused.
    page.goto(f"{cluster.ops}/dashboard")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#token", "not-the-token-at-all")
    page.click("#login")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#token", TEST_TOKEN)
    page.click("#login")

    rows = page.locator("#backends tbody tr")
    expect(rows).to_have_count(3, timeout=10_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
    expect(page.locator("#health")).to_have_attribute("data-status", "healthy")
    for node in ("b1", "b2", "b3"):
        expect(page.locator("#backends tbody td.node", has_text=node)).to_have_count(1)
    expect(page.locator("#events li[data-kind=registered]")).to_have_count(3)

    with Traffic(cluster.url) as traffic:
        # Live numbers, without a reload: the request rate and the served counts move.
        page.wait_for_function(
            "() => parseFloat(document.getElementById('card-rps').textContent) > 1", timeout=15_000
        )
        served_before = sum(int(t) for t in page.locator("#backends td.served").all_inner_texts())
        page.wait_for_function(
            f"""() => [...document.querySelectorAll('#backends td.served')]
                  .reduce((sum, td) => sum + parseInt(td.textContent), 0) >= {served_before + 20}""",
            timeout=15_000,
        )
        expect(page.locator("#routing-backends .bar")).to_have_count(3)
        # Backends go by node id in every panel (the address on hover), as in the table.
        names = page.locator("#routing-backends .bar .name")
        assert sorted(names.all_inner_texts()) == ["b1", "b2", "b3"], names.all_inner_texts()
        addresses = {w["address"] for w in cluster.workers().values()}
        assert {names.nth(i).get_attribute("title") for i in range(3)} == addresses
        # The latency chart is per model: it shows one served model, not all mixed.
        chosen = page.locator("#latency-model").input_value()
        assert chosen and chosen in {m for w in cluster.workers().values() for m in w["models"]}, chosen
        expect(page.locator("#latency-model option")).to_have_count(2)  # the model, and "all, mixed"
        shot(page, "01-cluster")

        # Kill a backend outright: its row turns unhealthy and the event shows up.
        victim = cluster.workers()["b2"]["address"]
        cluster.backends["b2"].stop(sig=signal.SIGKILL)
        row = page.locator(f'#backends tbody tr[data-address="{victim}"]')
        expect(row).to_have_attribute("data-status", "unhealthy", timeout=20_000)
        expect(page.locator(f'#events li[data-kind=unhealthy][data-address="{victim}"]')).to_have_count(
            1, timeout=10_000
        )
        expect(page.locator("#health")).to_have_attribute("data-status", "degraded")
        time.sleep(1.5)  # a few more ticks of traffic on the two that are left
        shot(page, "02-backend-killed")
    assert traffic.statuses and set(traffic.statuses) == {200}, set(traffic.statuses)

    # The try-it box: a prompt through the proxy, answered by a live backend.
    page.fill("#try-prompt", "Say hello to the dashboard")
    page.fill("#try-max-tokens", "12")
    page.click("#try-send")
    expect(page.locator("#try-result")).to_have_attribute("data-status", "200", timeout=15_000)
    backend = page.locator("#try-backend").inner_text()
    assert backend.startswith(("b1 ", "b3 ")), backend
    assert page.locator("#try-answer").inner_text().strip()
    assert "total;dur=" in page.locator("#try-timings").inner_text()
    shot(page, "03-try-it")

    # The pull queues' panel: two jobs that no worker takes show as waiting.
    for _ in range(2):
        assert httpx.post(f"{cluster.url}/v1/queues/sim/jobs?wait=false", json={}).status_code == 202
    queue_row = page.locator("#jobqueues tbody tr", has_text="sim")
    expect(queue_row.locator("td").nth(1)).to_have_text("2", timeout=10_000)
    expect(page.locator("#jobqueues-off")).to_be_hidden()

    # Overload: a burst far past what two backends and a queue of 4 hold. The 429s show
    # beside the 5xx (card and rate chart), and none of them is a 5xx.
    burst_body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 200}

    def one(_: int) -> int:
        return httpx.post(f"{cluster.url}/v1/chat/completions", json=burst_body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=48) as pool:
        burst = list(pool.map(one, range(48)))
    assert 429 in burst and all(code in (200, 429) for code in burst), burst
    page.wait_for_function("() => state.history.some((p) => p.rejected_per_s > 0)", timeout=10_000)
    expect(page.locator("#card-rejected")).to_have_text(re.compile(r"^\d"))
    shot(page, "03b-overloaded")

    # The proxy goes away: the page says so. A new proxy on the same ports: it recovers.
    cluster.proxy.stop()
    expect(page.locator("#disconnected")).to_be_visible(timeout=10_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "disconnected")
    shot(page, "04-disconnected")
    ops_addr = cluster.ops.removeprefix("http://")
    listen = cluster.url.removeprefix("http://")
    again = spawn(["proxy", "--ops-addr", ops_addr, "--listen-addr", listen, *PROXY_ARGS], "proxy-again")
    wait_http(f"{cluster.ops}/livez")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
    expect(page.locator("#disconnected")).to_be_hidden()
    # The two live backends re-register with their next heartbeat.
    expect(rows).to_have_count(2, timeout=20_000)
    shot(page, "05-reconnected")

    # A session that has ended (here: a proxy that wants another token) brings the login
    # form back instead of retrying for ever.
    again.stop()
    other = {"INFERNO_CLUSTER_TOKEN": "another-cluster-token-0123456789"}
    spawn(["proxy", "--ops-addr", ops_addr, "--listen-addr", listen, *PROXY_ARGS], "proxy-other", env=other)
    wait_http(f"{cluster.ops}/livez")
    expect(page.locator("#login-form")).to_be_visible(timeout=20_000)
    assert not errors, errors
