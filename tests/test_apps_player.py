"""The browser player (simulators.apps.player): its state machine row by row, its options,
and the real app (boto3 + paho) against a world: expiry, drops, 403s, Cognito errors."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.events import Event, Recorder
from harness.world import World
from simulators.apps import APP_NAMES, App, create_app
from simulators.apps.backoff import Backoff
from simulators.apps.player import PLAYER_MISTAKES, PlayerConfig
from simulators.apps.player_machine import (
    TRANSITIONS,
    Connect,
    CredentialsFailed,
    CredentialsReady,
    FetchCredentials,
    GiveUp,
    Input,
    LinkDown,
    LinkFailed,
    LinkUp,
    Phase,
    PlayerMachine,
    PlayerPolicy,
    Start,
    Tick,
    Wait,
)
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

# --------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------


def test_backoff_grows_doubles_and_caps() -> None:
    b = Backoff(base=1.0, cap=8.0, jitter=0.0)
    assert [b.delay(n, 0.5) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.ceiling(10_000) == 8.0  # no overflow


@given(
    failures=st.integers(min_value=0, max_value=10_000),
    u=st.floats(min_value=0, max_value=1),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_backoff_delay_is_within_its_jitter_band(failures: int, u: float, jitter: float) -> None:
    b = Backoff(base=0.5, cap=30.0, jitter=jitter)
    ceiling = b.ceiling(failures)
    assert ceiling * (1 - jitter) - 1e-9 <= b.delay(failures, u) <= ceiling + 1e-9
    assert ceiling <= 30.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"cap": float("inf")}, {"base": 2, "cap": 1}, {"jitter": 1.5}],
)
def test_backoff_refuses_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


# --------------------------------------------------------------------------------------
# The state machine, row by row (STYLE.md §2)
# --------------------------------------------------------------------------------------

FAST = PlayerPolicy(backoff=Backoff(base=1.0, cap=8.0, jitter=0.5), stable_after=5.0)


def machine(policy: PlayerPolicy = FAST) -> PlayerMachine:
    return PlayerMachine(policy, rng=random.Random(7))


def connected(m: PlayerMachine, *, now: float = 0.0, lifetime: float = 3600.0) -> None:
    """Drive ``m`` to CONNECTED at ``now`` with credentials of ``lifetime``."""
    m.handle(Start(), now)
    m.handle(CredentialsReady(expires_at=now + lifetime), now)
    m.handle(LinkUp(), now)
    assert m.phase is Phase.CONNECTED


def test_row_idle_start_fetches_credentials() -> None:
    m = machine()
    assert m.handle(Start(), 0.0) == [FetchCredentials("start")]
    assert m.phase is Phase.FETCHING and m.fetching


def test_row_fetching_credentials_ready_connects_and_plans_the_refresh() -> None:
    m = machine(PlayerPolicy(refresh_margin=300.0))
    m.handle(Start(), 0.0)
    assert m.handle(CredentialsReady(expires_at=3600.0), 0.0) == [Connect(1)]
    assert m.phase is Phase.CONNECTING and m.refresh_at == 3300.0
    short = machine(PlayerPolicy(refresh_margin=300.0))
    short.handle(Start(), 0.0)
    short.handle(CredentialsReady(expires_at=1.5), 0.0)
    assert short.refresh_at == 0.75  # at most half the lifetime (compressed worlds)


def test_row_fetching_credentials_failed_backs_off_then_fetches_again() -> None:
    m = machine()
    m.handle(Start(), 0.0)
    [wait] = m.handle(CredentialsFailed("throttled"), 10.0)
    assert isinstance(wait, Wait) and 0.5 <= wait.delay <= 1.0 and wait.failures == 1
    assert "throttled" in wait.why
    assert m.phase is Phase.WAITING and m.wake_at == 10.0 + wait.delay
    assert m.handle(Tick(), 10.0 + wait.delay / 2) == []  # too early
    assert m.handle(Tick(), 10.0 + wait.delay) == [FetchCredentials("retry")]


def test_row_connecting_link_up() -> None:
    m = machine()
    m.handle(Start(), 0.0)
    m.handle(CredentialsReady(expires_at=3600.0), 0.0)
    assert m.handle(LinkUp(), 1.0) == []
    assert m.phase is Phase.CONNECTED and m.connected_at == 1.0


def test_row_connecting_refused_upgrade_marks_credentials_stale_and_refreshes() -> None:
    """FB-23/FB-25/FB-26: after a 403, new credentials and a new signature, after a backoff."""
    m = machine()
    m.handle(Start(), 0.0)
    m.handle(CredentialsReady(expires_at=3600.0), 0.0)
    [wait] = m.handle(LinkFailed("handshake"), 1.0)
    assert isinstance(wait, Wait) and m.stale
    assert m.handle(Tick(), 1.0 + wait.delay) == [FetchCredentials("stale")]
    assert m.handle(CredentialsReady(expires_at=3600.0), 3.0) == [Connect(2)]
    [wait2] = m.handle(LinkFailed("handshake"), 4.0)
    assert isinstance(wait2, Wait) and wait2.failures == 2 and 1.0 <= wait2.delay <= 2.0


def test_row_connecting_network_failure_retries_with_the_same_credentials() -> None:
    m = machine()
    m.handle(Start(), 0.0)
    m.handle(CredentialsReady(expires_at=3600.0), 0.0)
    [wait] = m.handle(LinkFailed("network"), 1.0)
    assert isinstance(wait, Wait) and not m.stale
    assert m.handle(Tick(), 1.0 + wait.delay) == [Connect(2)]


def test_connects_are_spaced_as_aws_allows_per_client_id() -> None:
    """aws-iot.md §4.4: one CONNECT per second per client id, else THROTTLED."""
    m = machine(PlayerPolicy(min_connect_interval=1.0, stable_after=5.0))
    connected(m, now=0.0)
    [wait] = m.handle(LinkDown("server"), 0.2)  # quick drop: a failure, then the rate
    assert isinstance(wait, Wait)
    assert m.handle(Tick(), 0.2 + wait.delay) == [FetchCredentials("reconnect")]
    [rate] = m.handle(CredentialsReady(expires_at=3600.0), 0.4)
    assert rate == Wait(pytest.approx(0.6), 1, "connect rate")  # type: ignore[arg-type]
    assert m.handle(Tick(), 1.0) == [Connect(2)]
    # A refused CONNECT counts (it reached MQTT); a refused upgrade does not.
    m.handle(LinkFailed("closed-before-connack"), 1.1)
    assert m.last_connect_at == 1.1
    m.phase = Phase.CONNECTING
    m.handle(LinkFailed("handshake"), 1.2)
    assert m.last_connect_at == 1.1


def test_row_connected_tick_refreshes_once_before_expiry() -> None:
    m = machine(PlayerPolicy(refresh_margin=10.0))
    connected(m, lifetime=100.0)
    assert m.wake_at == 90.0
    assert m.handle(Tick(), 50.0) == []
    assert m.handle(Tick(), 90.0) == [FetchCredentials("refresh")]
    assert m.wake_at is None  # one fetch at a time
    assert m.handle(Tick(), 91.0) == []
    assert m.handle(CredentialsReady(expires_at=191.0), 91.0) == []
    assert m.phase is Phase.CONNECTED and m.refresh_at == 181.0


def test_row_connected_refresh_failure_keeps_the_connection_and_retries() -> None:
    m = machine(PlayerPolicy(refresh_margin=10.0, backoff=Backoff(base=1.0, cap=4.0)))
    connected(m, lifetime=100.0)
    m.handle(Tick(), 90.0)
    assert m.handle(CredentialsFailed("network"), 90.0) == []
    assert m.phase is Phase.CONNECTED
    assert m.refresh_at is not None and 90.5 <= m.refresh_at <= 91.0
    assert m.handle(Tick(), m.refresh_at) == [FetchCredentials("refresh")]


def test_row_connected_drop_of_a_healthy_connection_reconnects_at_once() -> None:
    """FB-24: a healthy link's drop → at once fresh credentials, then a new connection."""
    m = machine()
    connected(m)
    m.failures = 3  # from before: a healthy connection forgives them
    assert m.handle(LinkDown("server"), 10.0) == [FetchCredentials("reconnect")]
    assert m.failures == 0
    assert m.handle(CredentialsReady(expires_at=3700.0), 10.1) == [Connect(2)]


def test_row_connected_drop_after_expiry_fetches_first() -> None:
    """FB-23/FB-24: never reconnect with credentials past their refresh point."""
    m = machine(PlayerPolicy(refresh_margin=0.5))
    connected(m, lifetime=1.5)
    assert m.handle(LinkDown("server"), 10.0) == [FetchCredentials("expired")]


def test_row_connected_drop_while_a_refresh_is_in_flight_waits_for_it() -> None:
    m = machine(PlayerPolicy(refresh_margin=10.0))
    connected(m, lifetime=100.0)
    m.handle(Tick(), 95.0)
    assert m.handle(LinkDown("server"), 96.0) == []  # the fetch in flight will answer
    assert m.phase is Phase.FETCHING
    assert m.handle(CredentialsReady(expires_at=196.0), 96.5) == [Connect(2)]


def test_row_connected_quick_drop_counts_as_a_failure() -> None:
    """FB-30: a close right after connecting backs off instead of spinning."""
    m = machine()
    connected(m, now=0.0)
    [wait] = m.handle(LinkDown("server"), 1.0)
    assert isinstance(wait, Wait) and wait.failures == 1


def test_late_credentials_are_kept_in_any_phase() -> None:
    m = machine(PlayerPolicy(refresh_margin=10.0))
    connected(m, lifetime=100.0)
    m.handle(Tick(), 90.0)
    m.handle(LinkDown("server"), 90.5)  # quick? no: up since 0, healthy
    assert m.phase is Phase.FETCHING  # needs fresh credentials: waits for the refresh
    m2 = machine()
    connected(m2, lifetime=100.0)
    m2.fetching = True  # a refresh in flight
    m2.handle(LinkDown("server"), 1.0)  # quick drop: WAITING
    assert m2.phase is Phase.WAITING
    assert m2.handle(CredentialsReady(expires_at=500.0), 1.2) == []
    assert m2.expires_at == 500.0 and not m2.fetching
    m2.fetching = True
    assert m2.handle(CredentialsFailed("network"), 1.3) == []
    assert not m2.fetching


def test_give_up_after_consecutive_failures() -> None:
    m = machine(PlayerPolicy(give_up_after=2))
    m.handle(Start(), 0.0)
    m.handle(CredentialsReady(expires_at=3600.0), 0.0)
    [wait] = m.handle(LinkFailed("network"), 0.0)
    assert isinstance(wait, Wait)
    assert m.handle(Tick(), wait.delay) == [Connect(2)]
    assert m.handle(LinkFailed("network"), 5.0) == [GiveUp(2)]
    assert m.phase is Phase.GAVE_UP
    assert m.handle(Tick(), 100.0) == [] and m.wake_at is None


def test_as_written_credentials_once_and_fixed_retry() -> None:
    """FB-23 and the design's bare "Retry connection": stale and expired credentials are
    signed with again and again, after the same short delay."""
    m = machine(PlayerPolicy(refresh_credentials=False, exponential_backoff=False, retry_delay=0.1))
    connected(m, lifetime=1.0)
    assert m.wake_at is None  # no refresh planned
    assert m.handle(LinkDown("server"), 100.0) == [Connect(2)]
    for attempt in range(3, 6):
        assert m.handle(LinkFailed("handshake"), 100.0) == [
            Wait(0.1, attempt - 2, "connect: handshake")
        ]
        assert m.handle(Tick(), 100.1) == [Connect(attempt)]


def test_as_written_still_fetches_until_the_first_success() -> None:
    m = machine(PlayerPolicy(refresh_credentials=False, exponential_backoff=False))
    m.handle(Start(), 0.0)
    m.handle(CredentialsFailed("network"), 0.0)
    assert m.handle(Tick(), 1.0) == [FetchCredentials("retry")]


ALL_INPUTS: tuple[Input, ...] = (
    Start(),
    Tick(),
    CredentialsReady(expires_at=3600.0),
    CredentialsFailed("network"),
    LinkUp(),
    LinkFailed("network"),
    LinkDown("x"),
)


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        (phase, event)
        for phase in Phase
        for event in ALL_INPUTS
        if (phase, type(event)) not in TRANSITIONS
    ],
    ids=lambda value: getattr(value, "value", type(value).__name__),
)
def test_pairs_outside_the_table_change_nothing(phase: Phase, event: Input) -> None:
    m = machine()
    m.phase = phase
    before = dict(vars(m))
    assert m.handle(event, 1.0) == []
    assert {k: v for k, v in vars(m).items() if k != "rng"} == {
        k: v for k, v in before.items() if k != "rng"
    }


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(ALL_INPUTS), st.floats(min_value=0, max_value=50)),
        max_size=40,
    )
)
def test_any_input_sequence_keeps_one_fetch_and_one_attempt_at_a_time(
    steps: list[tuple[Input, float]],
) -> None:
    m = machine(PlayerPolicy(refresh_margin=5.0, give_up_after=30, backoff=Backoff(cap=8.0)))
    now = 0.0
    fetches = attempts = 0
    for event, dt in steps:
        now += dt
        was_fetching = m.fetching
        actions = m.handle(event, now)
        new_fetches = sum(isinstance(a, FetchCredentials) for a in actions)
        assert new_fetches <= 1 and not (was_fetching and new_fetches)
        fetches += new_fetches
        attempts += sum(isinstance(a, Connect) for a in actions)
        assert sum(isinstance(a, Connect) for a in actions) <= 1
        for action in actions:
            if isinstance(action, Wait):
                assert 0 < action.delay <= 8.0
        assert m.wake_at is None or m.wake_at >= 0
    assert m.attempts == attempts


# --------------------------------------------------------------------------------------
# Options and descriptor
# --------------------------------------------------------------------------------------

DESCRIPTOR: dict[str, Any] = {
    "iot": {
        "endpoint": "a1-ats.iot.us-east-1.amazonaws.com",
        "region": "us-east-1",
        "connect_host": "127.0.0.1",
        "wss_port": 4443,
        "ca_file": "/nonexistent/ca.pem",
    },
    "cognito": {"url": "https://127.0.0.1:1", "identity_pool_id": "us-east-1:abc"},
}


def test_config_from_options_and_defaults() -> None:
    cfg = PlayerConfig.from_inputs(
        "browser-player",
        DESCRIPTOR,
        {"topic": "p/1/#", "qos": 0, "backoff_base": 0.1, "backoff_max": 2, "client_id": "me"},
    )
    assert (cfg.topic, cfg.qos, cfg.client_id) == ("p/1/#", 0, "me")
    assert cfg.policy.backoff == Backoff(base=0.1, cap=2.0, jitter=0.5)
    assert cfg.mistakes == frozenset() and cfg.policy.refresh_credentials
    written = PlayerConfig.from_inputs("browser-player-as-written", DESCRIPTOR, {})
    assert written.mistakes == frozenset(PLAYER_MISTAKES)
    assert not written.policy.refresh_credentials and not written.policy.exponential_backoff
    one = PlayerConfig.from_inputs(
        "browser-player-as-written", DESCRIPTOR, {"mistakes": ["credentials-once"]}
    )
    assert one.mistakes == {"credentials-once"} and one.policy.exponential_backoff
    pool = PlayerConfig.from_inputs("browser-player", DESCRIPTOR, {"identity_pool": "x:1"})
    assert pool.identity_pool_id == "x:1"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("browser-player", {"tpoic": "x"}, r"unknown option\(s\) tpoic"),
        ("browser-player", {"mistakes": ["x"]}, r"unknown option\(s\) mistakes"),
        ("browser-player-as-written", {"mistakes": ["nope"]}, "'mistakes' must be"),
        ("browser-player-as-written", {"mistakes": "empty-canonical-query"}, "'mistakes'"),
        ("browser-player", {"qos": 2}, "no QoS 2"),
        ("browser-player", {"backoff_base": -1}, "'backoff_base'"),
        ("browser-player", {"backoff_base": True}, "'backoff_base'"),
        ("browser-player", {"jitter": 2}, "'jitter'"),
        ("browser-player", {"give_up_after": 0}, "'give_up_after'"),
        ("browser-player", {"topic": ""}, "'topic'"),
        ("browser-player", {"backoff_base": 5, "backoff_max": 1}, "cap"),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlayerConfig.from_inputs(name, DESCRIPTOR, options)


@pytest.mark.parametrize(
    "descriptor",
    [
        {},
        {"iot": DESCRIPTOR["iot"]},
        {"iot": {**DESCRIPTOR["iot"], "wss_port": "443"}, "cognito": DESCRIPTOR["cognito"]},
        {"iot": DESCRIPTOR["iot"], "cognito": {"url": "https://x", "identity_pool_id": ""}},
    ],
)
def test_descriptor_without_what_the_player_needs(descriptor: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="descriptor"):
        PlayerConfig.from_inputs("browser-player", descriptor, {})


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
OPTION_NAMES = st.sampled_from(
    [
        "topic",
        "qos",
        "client_id",
        "identity_pool",
        "refresh_margin",
        "backoff_base",
        "backoff_max",
        "jitter",
        "stable_after",
        "give_up_after",
        "connect_timeout",
        "keepalive",
        "http_timeout",
        "seed",
        "mistakes",
        "retry_delay",
        "min_connect_interval",
        "other",
    ]
)


@settings(max_examples=300)
@given(
    options=st.dictionaries(OPTION_NAMES, JSONISH, max_size=4),
    iot=st.dictionaries(
        st.sampled_from(["endpoint", "region", "connect_host", "wss_port", "ca_file"]), JSONISH
    ),
    cognito=JSONISH,
    name=st.sampled_from(["browser-player", "browser-player-as-written"]),
)
def test_any_options_and_descriptor_give_a_config_or_a_config_error(
    options: dict[str, Any], iot: dict[str, Any], cognito: Any, name: str
) -> None:
    descriptor = {"iot": {**DESCRIPTOR["iot"], **iot}, "cognito": cognito}
    with suppress(ConfigError):
        PlayerConfig.from_inputs(name, descriptor, options)


def test_create_app_names() -> None:
    assert "browser-player" in APP_NAMES
    with pytest.raises(ConfigError, match="unknown app 'nope'"):
        create_app("nope", descriptor=DESCRIPTOR, options={}, recorder=Recorder())
    with pytest.raises(ConfigError, match="tpoic"):
        create_app(
            "browser-player", descriptor=DESCRIPTOR, options={"tpoic": 1}, recorder=Recorder()
        )


# --------------------------------------------------------------------------------------
# The real app against a world
# --------------------------------------------------------------------------------------

FAST_OPTIONS = {"backoff_base": 0.05, "backoff_max": 0.4, "stable_after": 0.5, "seed": 1}


@pytest.fixture
async def world(isolated_aws: None) -> AsyncIterator[World]:
    async with World() as w:
        yield w


@asynccontextmanager
async def running(
    world: World,
    name: str = "browser-player",
    descriptor: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[App]:
    app = create_app(
        name,
        descriptor=descriptor or world.descriptor(),
        options={**FAST_OPTIONS, **options},
        recorder=world.recorder,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
    await world.recorder.wait_for("client.stopped", timeout=TIMEOUT, app=name)


def with_pool(world: World, **pool: Any) -> dict[str, Any]:
    """The world's descriptor naming a new identity pool."""
    assert world.cognito is not None
    created = world.cognito.create_pool(policies=(world.default_policy,), **pool)
    descriptor = world.descriptor()
    descriptor["cognito"]["identity_pool_id"] = created.pool_id
    return descriptor


def client_events(world: World, kind: str, **fields: Any) -> list[Event]:
    return world.recorder.find(kind, **fields)


def assert_no_secrets(world: World) -> None:
    assert not world.recorder.find("client.bug"), world.recorder.find("client.bug")
    timeline = json.dumps([e.to_json() for e in world.recorder], default=str)
    for credential in world.credentials:
        assert credential.secret_access_key not in timeline
        if credential.session_token:
            assert credential.session_token not in timeline


@pytest.mark.interop
async def test_player_connects_subscribes_and_receives(world: World) -> None:
    async with running(world, topic="players/42/#", client_id="player-42"):
        subscribed = await world.recorder.wait_for("client.subscribed", timeout=TIMEOUT)
        assert subscribed.get("granted") == [1]
        publisher_cred = world.credentials.add_static(policies=(world.default_policy,))
        url = world.sigv4_url(publisher_cred)
        path = url[url.index("/mqtt") :]
        publisher = PahoClient(
            "publisher",
            websocket=True,
            ca_file=str(world.pki.ca_file),
            path=path,
            headers={"Host": world.endpoint},
        )
        await publisher.connect("127.0.0.1", world.gateway.wss_port)
        assert (await publisher.next("connect", "error")).rc == 0
        publisher.client.publish("players/42/playlist", b"{}", qos=1)
        message = await world.recorder.wait_for("client.message", timeout=TIMEOUT)
        assert message.get("topic") == "players/42/playlist"
        await publisher.close()
    [creds] = client_events(world, "client.credentials")
    [verdict] = world.recorder.find(
        "auth.verdict", stage="upgrade", access_key_id=creds.get("access_key_id")
    )
    assert verdict.ok and verdict.get("hint") is None
    assert creds.get("source") == "cognito" and creds.get("ok") is True
    assert 3500 < creds.get("expires_in") <= 3600
    assert client_events(world, "client.connect")[0].get("url_host") == world.endpoint
    assert_no_secrets(world)


@pytest.mark.interop
async def test_player_refreshes_before_expiry_and_survives_a_drop(world: World) -> None:
    """Credentials of 1.5 s: refreshed while connected; after the first ones expired, a
    drop is followed by a reconnect with live credentials, never a 403 (FB-23, FB-24)."""
    descriptor = with_pool(world, credential_lifetime=1.5)
    async with running(world, descriptor=descriptor, client_id="p-expiry"):
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
        first = world.recorder.find("client.credentials")[0]
        # Refreshes every 0.75 s while connected; the third one comes after the first expired.
        await world.recorder.wait_for(
            "client.credentials",
            timeout=TIMEOUT,
            why="refresh",
            predicate=lambda e: len(world.recorder.find("client.credentials", why="refresh")) >= 2,
        )
        key = first.get("access_key_id")
        assert world.credentials.lookup(key) is not None
        assert world.credentials.lookup(key).expired(world.clock.now())  # type: ignore[union-attr]
        since = len(world.recorder)
        dropped_at = world.clock.elapsed()
        assert await world.gateway.drop("p-expiry")
        back = await world.recorder.wait_for("client.connected", timeout=TIMEOUT, since=since)
        assert back.t - dropped_at < TIMEOUT / 2
    upgrades = world.recorder.find("auth.verdict", stage="upgrade")
    assert len(upgrades) == 2 and all(v.ok for v in upgrades)
    assert upgrades[1].get("access_key_id") != key
    assert_no_secrets(world)


@pytest.mark.interop
async def test_player_refreshes_and_backs_off_after_refused_upgrades(world: World) -> None:
    """FB-26: 403 on two upgrades, then accepted: fresh credentials and a fresh signature
    for each attempt, a growing backoff in between."""
    world.gateway.faults.refuse_upgrades(2)
    async with running(world, client_id="p-403"):
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
    connects = client_events(world, "client.connect")
    assert [c.get("ok") for c in connects] == [False, False, True]
    assert [c.get("reason") for c in connects[:2]] == ["handshake", "handshake"]
    assert "not upgraded" in str(connects[0].get("error"))
    keys = [c.get("access_key_id") for c in connects]
    assert len(set(keys)) == 3  # new credentials after each 403
    whys = [c.get("why") for c in client_events(world, "client.credentials")]
    assert whys == ["start", "stale", "stale"]
    backoffs = client_events(world, "client.backoff")
    assert [b.get("failures") for b in backoffs] == [1, 2]
    assert 0.025 <= backoffs[0].get("delay") <= 0.05 and 0.05 <= backoffs[1].get("delay") <= 0.1
    assert len(client_events(world, "client.error", stage="connect")) == 2


@pytest.mark.interop
async def test_player_reconnects_with_fresh_credentials_after_a_drop(world: World) -> None:
    """FB-23, FB-24: the credentials expired early (a fault) and the link was cut; the app
    fetches new ones before reconnecting, so no upgrade is ever refused."""
    async with running(world, client_id="p-fb23"):
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
        key = client_events(world, "client.connect")[0].get("access_key_id")
        world.gateway.expire_credential(key)
        since = len(world.recorder)
        assert await world.gateway.drop("p-fb23")
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT, since=since)
    verdicts = world.recorder.find("auth.verdict", stage="upgrade")
    assert [v.ok for v in verdicts] == [True, True]
    assert verdicts[1].get("access_key_id") != key
    assert [c.get("why") for c in client_events(world, "client.credentials")] == [
        "start",
        "reconnect",
    ]
    assert not world.recorder.find("rule.violation")  # CONNECTs spaced as AWS allows


@pytest.mark.interop
async def test_as_written_player_loops_on_403_with_expired_credentials(world: World) -> None:
    """The negative control of the test above (FB-23): credentials fetched once are
    replayed after expiry, at a fixed short delay, 403 after 403."""
    async with running(
        world,
        "browser-player-as-written",
        client_id="p-written",
        mistakes=["credentials-once", "no-backoff"],
        retry_delay=0.02,
    ):
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
        key = client_events(world, "client.connect")[0].get("access_key_id")
        world.gateway.expire_credential(key)
        assert await world.gateway.drop("p-written")
        await world.recorder.wait_for(
            "auth.verdict",
            timeout=TIMEOUT,
            predicate=lambda e: (
                len(world.recorder.find("auth.verdict", reason="token-expired")) >= 4
            ),
        )
    assert len(client_events(world, "client.credentials")) == 1
    refused = world.recorder.find("auth.verdict", reason="token-expired")
    assert {v.get("access_key_id") for v in refused} == {key}
    assert {b.get("delay") for b in client_events(world, "client.backoff")} == {0.02}


@pytest.mark.interop
async def test_as_written_player_signs_an_empty_canonical_query(world: World) -> None:
    """FB-34: the design's signer gets 403 signature-mismatch on every upgrade."""
    async with running(
        world,
        "browser-player-as-written",
        mistakes=["empty-canonical-query"],
        give_up_after=3,
    ):
        gave_up = await world.recorder.wait_for("client.gave_up", timeout=TIMEOUT)
        assert gave_up.get("failures") == 3
    verdicts = world.recorder.find("auth.verdict", stage="upgrade")
    assert len(verdicts) == 3
    assert {(v.reason, v.get("hint")) for v in verdicts} == {
        ("signature-mismatch", "empty-canonical-query")
    }
    assert_no_secrets(world)


@pytest.mark.interop
async def test_player_reports_an_unknown_pool_and_backs_off(world: World) -> None:
    async with running(world, identity_pool="us-east-1:00000000-0000-0000-0000-000000000000"):
        await world.recorder.wait_for(
            "client.backoff",
            timeout=TIMEOUT,
            predicate=lambda e: e.get("failures") == 2,
        )
    errors = client_events(world, "client.error", stage="credentials")
    assert errors and {e.reason for e in errors} == {"pool-not-found"}
    assert "not found" in str(errors[0].get("error"))
    assert not world.recorder.find("ws.upgrade")


@pytest.mark.interop
async def test_player_reports_throttling_then_recovers(world: World) -> None:
    assert world.cognito is not None
    world.cognito.fail_next(2, "TooManyRequestsException", message="Rate exceeded")
    async with running(world):
        await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
    reasons = [e.reason for e in client_events(world, "client.error", stage="credentials")]
    assert reasons == ["throttled", "throttled"]
    assert len(client_events(world, "client.backoff")) == 2


@pytest.fixture
def foreign_ca(tmp_path: Path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.interop
async def test_player_verifies_certificates(world: World, foreign_ca: str) -> None:
    """Never a fallback to an unverified connection: the credentials never leave."""
    descriptor = world.descriptor()
    descriptor["iot"]["ca_file"] = foreign_ca
    async with running(world, descriptor=descriptor):
        await world.recorder.wait_for("client.backoff", timeout=TIMEOUT)
    [error, *_] = client_events(world, "client.error")
    assert error.reason == "tls-verify"
    assert not world.recorder.find("cognito.call")


@pytest.mark.interop
async def test_player_tls_failure_at_the_gateway(world: World) -> None:
    """An endpoint name the gateway's certificate does not cover: tls-verify, no upgrade,
    so the signed URL never leaves the app (aws-iot.md §3)."""
    descriptor = world.descriptor()
    descriptor["iot"]["endpoint"] = "a0other-ats.iot.us-east-1.amazonaws.com"
    async with running(world, descriptor=descriptor, give_up_after=2):
        await world.recorder.wait_for("client.gave_up", timeout=TIMEOUT)
    assert {c.get("reason") for c in client_events(world, "client.connect")} == {"tls-verify"}
    assert not world.recorder.find("ws.upgrade")


@pytest.mark.interop
async def test_player_run_can_be_cancelled(world: World) -> None:
    app = create_app(
        "browser-player",
        descriptor=world.descriptor(),
        options=FAST_OPTIONS,
        recorder=world.recorder,
    )
    task = asyncio.create_task(app.run(asyncio.Event()))
    await world.recorder.wait_for("client.connected", timeout=TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.recorder.find("client.stopped")
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)
