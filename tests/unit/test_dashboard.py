"""The dashboard's pieces without a network: event log, sampler, login, page rules."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import pytest

from inferno.config import AdmissionConfig, DashboardConfig, HealthCheckConfig, OutlierConfig, RegistryConfig
from inferno.errors import RateLimited
from inferno.observability.metrics import LATENCY_BUCKETS_S, ProxyStats
from inferno.policies.base import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.proxy.dashboard.auth import DashboardAuth, session_cookies
from inferno.proxy.dashboard.feed import DashboardFeed, percentile
from inferno.registry.events import EventLog
from inferno.registry.registry import WorkerRegistry
from inferno.schemas.registration import RegistrationPayload

STATIC = Path(__file__).resolve().parents[2] / "inferno" / "proxy" / "dashboard" / "static"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(clock: FakeClock) -> WorkerRegistry:
    return WorkerRegistry(
        RegistryConfig(heartbeat_timeout_s=6.0, ttl_s=30.0, event_log_size=10),
        HealthCheckConfig(unhealthy_threshold=2, healthy_threshold=1),
        clock=clock,
        wall_clock=clock,
        outlier_config=OutlierConfig(consecutive_failures=2, base_ejection_s=5.0),
    )


def register(reg: WorkerRegistry, address: str, node: str) -> None:
    reg.register(RegistrationPayload.model_validate({"address": address, "node_id": node, "models": ["m"]}))


# -- event log ---------------------------------------------------------------------------
def test_event_log_is_a_bounded_ring_with_sequence_numbers() -> None:
    log = EventLog(size=3, wall=lambda: 5.0)
    for i in range(5):
        log.add("registered", f"10.0.0.{i}:1", f"n{i}")
    assert len(log) == 3
    assert [e.seq for e in log.since(0)] == [3, 4, 5]
    assert [e.seq for e in log.since(4)] == [5]
    assert log.since(5) == []
    with pytest.raises(ValueError):
        log.add("exploded", "a:1", "n")


def test_registry_records_each_state_change_once() -> None:
    clock = FakeClock()
    reg = registry(clock)
    register(reg, "10.0.0.1:3000", "n1")
    register(reg, "10.0.0.1:3000", "n1")  # a heartbeat is no event
    worker = reg.get("10.0.0.1:3000")
    assert worker is not None
    reg.record_failure(worker, "timeout")
    reg.record_failure(worker, "timeout")  # the breaker opens: ejected
    clock.now += 5.1
    reg.sweep()  # half-open
    reg.record_success(worker)  # the trial succeeded: recovered
    reg.report_refused("10.0.0.1:3000")  # unhealthy
    reg.record_probe("10.0.0.1:3000", ok=True)  # recovered
    reg.mark_suspect(worker, "3.0s between stream chunks")
    reg.mark_suspect(worker, "again")  # already suspect: no new event
    clock.now += 6.5
    reg.sweep()  # no heartbeat: unhealthy
    clock.now += 30
    reg.sweep()  # removed
    kinds = [e.kind for e in reg.events.since(0)]
    assert (
        kinds
        == [
            "registered",
            "ejected",
            "half_open",
            "recovered",
            "unhealthy",
            "recovered",
            "suspect",
            "unhealthy",
            "removed",
        ][-10:]
    )
    assert all(e.node_id == "n1" and e.address == "10.0.0.1:3000" for e in reg.events.since(0))
    assert reg.events.since(0)[1].detail.startswith("timeout")


# -- the sampler -------------------------------------------------------------------------
def test_percentile_interpolates_within_a_bucket() -> None:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    assert percentile(counts, 0.5) is None
    i = LATENCY_BUCKETS_S.index(0.025)
    counts[i] = 10  # all in (0.01, 0.025]
    assert percentile(counts, 0.5) == pytest.approx(0.0175)
    assert percentile(counts, 1.0) == pytest.approx(0.025)
    counts[-1] = 90  # most above the last bound
    assert percentile(counts, 0.99) == LATENCY_BUCKETS_S[-1]


def make_feed(clock: FakeClock, stats: ProxyStats, reg: WorkerRegistry, points: int = 10) -> DashboardFeed:
    admission = AdmissionController(AdmissionConfig(), reg, LoadBalancingPolicy.create("round_robin"))
    config = DashboardConfig(history_points=points)
    return DashboardFeed(config, stats, reg, admission, wall=clock)


def test_feed_turns_counters_into_rates_percentiles_and_shares() -> None:
    clock = FakeClock()
    stats = ProxyStats()
    reg = registry(clock)
    register(reg, "10.0.0.1:3000", "n1")
    register(reg, "10.0.0.2:3000", "n2")
    feed = make_feed(clock, stats, reg)
    feed.sample()
    clock.now += 2.0
    for _ in range(30):
        stats.record("10.0.0.1:3000", 200, 0.02, "m", b"/v1/chat/completions")
    for _ in range(10):
        stats.record("10.0.0.2:3000", 503, 0.2, "m", b"/v1/chat/completions")
    stats.record_error("10.0.0.2:3000", "status_503")
    stats.record_local(400, "/v1/chat/completions")
    for _ in range(6):
        stats.record_local(429, "/v1/chat/completions")  # overloaded: refused by admission
    stats.record("10.0.0.1:3000", 429, 0.001, "m", b"/v1/chat/completions")  # a backend's own 429
    point = feed.sample()
    assert point["rps"] == pytest.approx(48 / 2.0)
    assert point["errors_per_s"] == pytest.approx(10 / 2.0)
    assert point["rejected_per_s"] == pytest.approx(7 / 2.0)
    assert 10 <= point["p50_ms"] <= 25  # type: ignore[operator]
    assert 100 <= point["p95_ms"] <= 250  # type: ignore[operator]
    snap = feed.snapshot([])
    rows = {r["node_id"]: r for r in snap["backends"]}  # type: ignore[attr-defined]
    assert rows["n1"]["served"] == 31 and rows["n1"]["recent_error_rate"] == 0.0
    assert rows["n2"]["failed_tries"] == 1 and rows["n2"]["recent_error_rate"] == pytest.approx(1 / 11, 1e-3)
    assert snap["routing"] == {
        "window_s": 2.0,
        "backends": {"10.0.0.1:3000": 31, "10.0.0.2:3000": 10},
        "names": {"10.0.0.1:3000": "n1", "10.0.0.2:3000": "n2"},
        "models": {"m": 41},
    }
    assert snap["health"]["status"] == "healthy"  # type: ignore[index]


def test_feed_charts_latency_per_model_and_names_backends_by_node_id() -> None:
    clock = FakeClock()
    stats = ProxyStats()
    reg = registry(clock)
    register(reg, "10.0.0.1:3000", "n1")
    feed = make_feed(clock, stats, reg)
    feed.sample()
    clock.now += 1.0
    for _ in range(20):
        stats.record("10.0.0.1:3000", 200, 0.004, "all-minilm-l6-v2", b"/v1/embeddings")
        stats.record("10.0.0.1:3000", 200, 2.0, "smollm2", b"/v1/chat/completions")
    point = feed.sample()
    per_model = point["models"]
    assert isinstance(per_model, dict) and set(per_model) == {"all-minilm-l6-v2", "smollm2"}
    # One chart per model: the embeddings' 4 ms are not drowned by the chats' 2 s.
    assert per_model["all-minilm-l6-v2"]["p99_ms"] <= 5
    assert 1000 <= per_model["smollm2"]["p50_ms"] <= 2500
    for _ in range(6):  # past the short window, a model with no traffic has no point
        clock.now += 1.0
        stats.record("10.0.0.1:3000", 200, 2.0, "smollm2", b"/v1/chat/completions")
        point = feed.sample()
    assert set(point["models"]) == {"smollm2"}  # type: ignore[call-overload]
    # A backend that left is still named by its node id while its traffic is shown.
    reg.deregister("10.0.0.1:3000")
    assert feed.snapshot([])["routing"]["names"] == {"10.0.0.1:3000": "n1"}  # type: ignore[index]


def test_feed_keeps_a_bounded_history_and_hands_each_event_out_once() -> None:
    clock = FakeClock()
    reg = registry(clock)
    feed = make_feed(clock, ProxyStats(), reg, points=10)
    for _ in range(25):
        clock.now += 1.0
        feed.sample()
    assert len(feed.history) == 10
    assert feed.history[-1]["t"] == clock.now
    register(reg, "10.0.0.1:3000", "n1")
    feed.clients = 1
    first = feed._new_events()  # what a tick sends
    assert [e["kind"] for e in first] == ["registered"]
    assert feed._new_events() == []
    assert b'"registered"' in feed.hello()  # a newly opened dashboard gets the kept ones


# -- login -------------------------------------------------------------------------------
def cookie_of(header: bytes | None) -> bytes:
    assert header is not None
    return header.split(b"=", 1)[1].split(b";", 1)[0]


def test_dashboard_login_sets_a_cookie_derived_from_the_token() -> None:
    auth = DashboardAuth("a-cluster-token-0123456789")
    assert not auth.allowed({}, "127.0.0.1")
    assert auth.allowed({b"authorization": b"Bearer a-cluster-token-0123456789"}, "127.0.0.1")
    assert not auth.allowed({b"authorization": b"Bearer a-cluster-token-012345678X"}, "127.0.0.1")
    assert auth.login(b"wrong", "127.0.0.1") is None
    header = auth.login(b"a-cluster-token-0123456789", "127.0.0.1")
    assert header is not None and b"HttpOnly" in header and b"SameSite=Strict" in header
    assert b"Max-Age=43200" in header
    value = cookie_of(header)
    assert auth.allowed({b"cookie": b"theme=dark; inferno_dashboard=" + value}, "127.0.0.1")
    tampered = value[:-1] + (b"1" if value.endswith(b"0") else b"0")
    assert not auth.allowed({b"cookie": b"inferno_dashboard=" + tampered}, "127.0.0.1")
    # Another token (rotated) makes old cookies worthless.
    other = DashboardAuth("another-token-0123456789ab")
    assert not other.allowed({b"cookie": b"inferno_dashboard=" + value}, "127.0.0.1")
    assert session_cookies(b"a=b;inferno_dashboardx=1") == []
    assert DashboardAuth(None).allowed({}, "127.0.0.1")
    # A stale cookie of the same name before the live one, and a lowercase scheme, pass.
    assert auth.allowed({b"cookie": b"inferno_dashboard=stale; inferno_dashboard=" + value}, "127.0.0.1")
    assert auth.allowed({b"authorization": b"bearer " + TOKEN}, "127.0.0.1")


def test_a_live_session_opens_the_dashboard_even_for_an_address_over_its_budget() -> None:
    """Guessing from a shared address (a NAT) cannot lock out those already logged in;
    the guesser, and any token tried from there, still gets 429."""
    auth = DashboardAuth(TOKEN.decode())
    header = auth.login(TOKEN, "10.0.0.1")
    assert header is not None
    cookie = {b"cookie": b"inferno_dashboard=" + cookie_of(header)}
    for _ in range(12):
        with contextlib.suppress(RateLimited):
            auth.allowed({b"authorization": b"Bearer wrong-token"}, "10.0.0.1")
    with pytest.raises(RateLimited):
        auth.allowed({b"authorization": b"Bearer " + TOKEN}, "10.0.0.1")
    assert auth.allowed(cookie, "10.0.0.1")


TOKEN = b"a-cluster-token-0123456789"


def test_sessions_expire_after_their_ttl() -> None:
    wall = FakeClock()
    auth = DashboardAuth(TOKEN.decode(), session_ttl_s=3600, clock=wall, wall=wall)
    cookie = {b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.1"))}
    wall.now += 3599
    assert auth.allowed(cookie, "10.0.0.1")
    wall.now += 1
    assert not auth.allowed(cookie, "10.0.0.1")
    # An authentic session that ended is not a guess: it costs the peer nothing.
    assert auth._failures == {} and auth.refusals == {}
    # A proxy restarted with the same token still honours (and still expires) the session.
    wall.now -= 100
    assert DashboardAuth(TOKEN.decode(), session_ttl_s=3600, clock=wall, wall=wall).allowed(cookie, "x")


def test_logout_revokes_the_session_and_revocations_stay_bounded() -> None:
    wall = FakeClock()
    auth = DashboardAuth(TOKEN.decode(), session_ttl_s=3600, max_revoked=16, clock=wall, wall=wall)
    mine = {b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.1"))}
    other = {b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.2"))}
    assert b"Max-Age=0" in auth.logout(mine)
    assert not auth.allowed(mine, "10.0.0.1")  # the old cookie is dead, even if a browser kept it
    assert auth.allowed(other, "10.0.0.2")  # another browser stays logged in
    # A forged cookie's logout revokes nothing and is not remembered.
    auth.logout({b"cookie": b"inferno_dashboard=" + b"A" * 22 + b".1000." + b"0" * 64})
    assert len(auth._revoked) == 1
    # Many logouts: the set stays bounded, and no logged-out session ever comes back.
    dead = [mine]
    for _ in range(40):
        wall.now += 1
        session = {b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.3"))}
        auth.logout(session)
        dead.append(session)
        assert len(auth._revoked) <= 16
    assert not any(auth.allowed(s, "10.0.0.3") for s in dead)
    wall.now += 10
    assert auth.allowed({b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.3"))}, "x")
    # Once they have expired anyway, revoked sessions are forgotten.
    wall.now += 3600
    for _ in range(2):
        auth.logout({b"cookie": b"inferno_dashboard=" + cookie_of(auth.login(TOKEN, "10.0.0.3"))})
    assert len(auth._revoked) <= 16


def test_bearer_tokens_and_forged_cookies_spend_the_same_budget_as_logins() -> None:
    from inferno.errors import RateLimited
    from inferno.proxy.dashboard.auth import LOGIN_FAILURES_PER_MINUTE

    clock = FakeClock()
    auth = DashboardAuth(TOKEN.decode(), clock=clock, wall=clock)
    right = {b"authorization": b"Bearer " + TOKEN}
    half = LOGIN_FAILURES_PER_MINUTE // 2
    for i in range(half):
        assert not auth.allowed({b"authorization": b"Bearer guess-%d" % i}, "10.0.0.9")
    for i in range(LOGIN_FAILURES_PER_MINUTE - half):
        forged = b"inferno_dashboard=" + b"A" * 22 + b".%d." % int(clock.now) + b"%064x" % i
        assert not auth.allowed({b"cookie": forged}, "10.0.0.9")
    for tries in (right, {b"cookie": b"inferno_dashboard=x"}):
        with pytest.raises(RateLimited):
            auth.allowed(tries, "10.0.0.9")  # the right token too, while over budget
    with pytest.raises(RateLimited):
        auth.login(TOKEN, "10.0.0.9")
    assert not auth.allowed({}, "10.0.0.9")  # presenting nothing is no try: a plain 401
    assert auth.allowed(right, "10.0.0.10")
    assert auth.refusals == {("dashboard", "wrong"): 10, ("dashboard", "rate_limited"): 3}
    clock.now += 60 / LOGIN_FAILURES_PER_MINUTE
    assert auth.allowed(right, "10.0.0.9")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"token=%zz%", b"application/x-www-form-urlencoded", 400),
        (b"token=a&token=b", b"application/x-www-form-urlencoded", 400),
        (b"token=\xff\xfe", b"application/x-www-form-urlencoded", 400),
        (b"token=%ff%fe", b"application/x-www-form-urlencoded", 400),
        (b"other=1", b"application/x-www-form-urlencoded", 400),
        (b"", b"application/x-www-form-urlencoded", 400),
        (b"token", b"application/x-www-form-urlencoded", 400),
        (b"&".join(b"f%d=1" % i for i in range(20)), b"application/x-www-form-urlencoded", 400),
        (b"token=" + b"a" * 5000, b"application/x-www-form-urlencoded", 413),
        (b'{"token": "x"}', b"application/json", 415),
        (b"token=x", b"", 415),
        (b"--b\r\n", b"multipart/form-data; boundary=b", 415),
    ],
)
def test_malformed_login_forms_are_clear_client_errors(body: bytes, content_type: bytes, status: int) -> None:
    from inferno.errors import ClientError
    from inferno.proxy.dashboard.auth import login_token

    with pytest.raises(ClientError) as refused:
        login_token(body, content_type)
    assert refused.value.status == status


def test_well_formed_login_forms_give_their_token() -> None:
    from inferno.proxy.dashboard.auth import login_token

    form = b"application/x-www-form-urlencoded"
    assert login_token(b"token=abc%2B%2F%3D", form + b"; charset=UTF-8") == b"abc+/="
    assert login_token(b"token=+abc+&submit=", form) == b"abc"
    assert login_token(b"token=%E2%82%AC", form) == "\u20ac".encode()  # just a wrong token


# -- the page ----------------------------------------------------------------------------
def test_page_scripts_never_build_html_from_strings() -> None:
    """Values from backends and clients are only ever written as text."""
    for script in ("dashboard.js", "charts.js"):
        source = (STATIC / script).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
            assert sink not in source, f"{script} uses {sink}"


def test_page_loads_nothing_from_elsewhere() -> None:
    for page in STATIC.iterdir():
        text = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page.name
        assert "http://" not in text and "https://" not in text, page.name


def test_wrong_tokens_are_rate_limited_per_peer() -> None:
    from inferno.errors import RateLimited
    from inferno.proxy.dashboard.auth import LOGIN_FAILURES_PER_MINUTE, MAX_TRACKED_PEERS

    clock = FakeClock()
    token = b"a-cluster-token-0123456789"
    auth = DashboardAuth(token.decode(), clock=clock, wall=clock)
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        assert auth.login(b"guess", "10.0.0.9") is None
    with pytest.raises(RateLimited) as refused:
        auth.login(token, "10.0.0.9")  # even the right token, while the peer is over its budget
    assert 0 < refused.value.retry_after_s <= 60 / LOGIN_FAILURES_PER_MINUTE
    assert auth.login(token, "10.0.0.10") is not None  # another peer is not affected
    clock.now += 60 / LOGIN_FAILURES_PER_MINUTE
    assert auth.login(token, "10.0.0.9") is not None  # refilled: one try again
    for i in range(MAX_TRACKED_PEERS + 10):
        auth.login(b"guess", f"peer-{i}")
    assert len(auth._failures) == MAX_TRACKED_PEERS  # remembering peers is bounded too


class StuckResponder:
    """A dashboard that never reads: every write waits forever."""

    def __init__(self) -> None:
        self.started = False
        self.aborted = False
        self.writes = 0

    @property
    def client_connected(self) -> bool:
        return not self.aborted

    def start_stream(self, status: int, headers: bytes) -> None:
        self.started = True

    async def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes > 1:  # the hello fits in the buffers; the next never does
            await asyncio.Event().wait()

    def end_stream(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


async def test_a_dashboard_that_stops_reading_is_dropped() -> None:
    from inferno.http.messages import Request
    from inferno.proxy.dashboard.routes import Dashboard
    from inferno.proxy.dashboard.tryit import TryIt

    clock = FakeClock()
    feed = make_feed(clock, ProxyStats(), registry(clock))
    dashboard = Dashboard(feed, DashboardAuth(None), TryIt("127.0.0.1", 1.0), 4, write_timeout_s=0.05)
    responder = StuckResponder()
    request = Request("GET", "/dashboard/events", "", {}, b"", "127.0.0.1:5555")
    task = asyncio.create_task(dashboard._events(request, responder))  # type: ignore[arg-type]
    for _ in range(200):
        await asyncio.sleep(0)
    assert feed.clients == 1 and responder.writes == 1
    feed.tick()
    await asyncio.wait_for(task, timeout=5)
    assert responder.aborted and feed.clients == 0
