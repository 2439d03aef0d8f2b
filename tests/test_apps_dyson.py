"""The Dyson app (simulators.apps.dyson_app): its fallback machine row by row, its options,
and the real app (Dyson cloud REST + paho) against a world with a simulated device:
cloud with the custom-authorizer headers, local MQTT, fallback both ways, IoT credential
refresh, and the as-written variant's mistakes (field-bugs.md FB-03, FB-06, FB-07, FB-21,
FB-22, FB-35)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.events import Event, Recorder
from harness.world import World, WorldConfig
from simulators.apps import create_app
from simulators.apps.backoff import Backoff
from simulators.apps.dyson_app import DYSON_MISTAKES, DysonApp, DysonAppConfig, local_client_id
from simulators.apps.dyson_machine import (
    TRANSITIONS,
    Close,
    Connect,
    DysonMachine,
    DysonPolicy,
    FetchIot,
    Input,
    IotFailed,
    IotReady,
    LinkDown,
    LinkFailed,
    LinkUp,
    Login,
    LoginFailed,
    LoginOk,
    Phase,
    Start,
    Switch,
    Tick,
    Wait,
)
from simulators.dyson.local_broker import DysonLocalBroker
from simulators.dyson.world import DysonConfig, DysonDeviceSpec, SimulatedDevice
from tests.timing import TIMEOUT

# --------------------------------------------------------------------------------------
# The fallback machine, row by row (STYLE.md §2)
# --------------------------------------------------------------------------------------

BACKOFF = Backoff(base=1.0, cap=8.0, jitter=0.5)


def policy(**changes: Any) -> DysonPolicy:
    base: dict[str, Any] = {
        "backoff": BACKOFF,
        "login_backoff": BACKOFF,
        "return_after": 10.0,
        "stable_after": 5.0,
    }
    return DysonPolicy(**{**base, **changes})


def machine(**changes: Any) -> DysonMachine:
    return DysonMachine(policy(**changes), rng=random.Random(3))


def phase(m: DysonMachine) -> Phase:
    """``m.phase``, unnarrowed (the tests read it before and after inputs)."""
    return m.phase


def current(m: DysonMachine) -> str | None:
    return m.current


def logged_in(m: DysonMachine, *, local: bool = True, cloud: bool = True) -> list[Any]:
    assert m.handle(Start(), 0.0) == [Login("start")]
    return m.handle(LoginOk(local=local, cloud=cloud), 0.0)


def on_local(m: DysonMachine, now: float = 0.0) -> None:
    assert logged_in(m) == [Connect("local", "stable")]
    m.handle(LinkUp("local"), now)


def on_cloud(m: DysonMachine, now: float = 0.0) -> None:
    assert logged_in(m) == [FetchIot()]
    assert m.handle(IotReady(), now) == [Connect("cloud", "issued")]
    m.handle(LinkUp("cloud"), now)


def test_row_start_logs_in() -> None:
    m = machine()
    assert m.handle(Start(), 0.0) == [Login("start")]
    assert phase(m) is Phase.LOGGING_IN


def test_row_login_ok_tries_the_preferred_path() -> None:
    assert logged_in(machine()) == [Connect("local", "stable")]
    assert logged_in(machine(preferred="cloud")) == [FetchIot()]
    # A device without local credentials is cloud-only, whatever the preference (FB-04).
    assert logged_in(machine(), local=False) == [FetchIot()]


def test_row_login_ok_without_any_path_says_so_and_retries_the_login() -> None:
    """FB-20: an empty manifest is "no devices", retried, never a crash."""
    m = machine()
    [wait] = logged_in(m, local=False, cloud=False)
    assert isinstance(wait, Wait) and wait.why == "no path to the device"
    assert phase(m) is Phase.LOGIN_WAIT
    assert m.handle(Tick(), wait.delay) == [Login("retry")]


def test_row_login_failed_backs_off_then_logs_in_again() -> None:
    """FB-19: an outage is retried with backoff."""
    m = machine()
    m.handle(Start(), 0.0)
    [wait] = m.handle(LoginFailed("unavailable"), 0.0)
    assert isinstance(wait, Wait) and 0.5 <= wait.delay <= 1.0 and "unavailable" in wait.why
    assert m.handle(Tick(), wait.delay / 2) == []
    assert m.handle(Tick(), wait.delay) == [Login("retry")]
    [wait2] = m.handle(LoginFailed("unavailable"), 5.0)
    assert isinstance(wait2, Wait) and 1.0 <= wait2.delay <= 2.0


def test_row_iot_ready_connects_the_cloud() -> None:
    m = machine(preferred="cloud")
    logged_in(m)
    assert m.handle(IotReady(), 0.0) == [Connect("cloud", "issued")]
    assert phase(m) is Phase.ATTEMPTING and m.have_iot


def test_row_iot_failed_is_a_cloud_failure_and_falls_back() -> None:
    m = machine(preferred="cloud")
    logged_in(m)
    assert m.handle(IotFailed("unavailable"), 0.0) == [
        Switch("cloud", "local", "fallback"),
        Connect("local", "stable"),
    ]
    assert m.failures["cloud"] == 1


def test_row_iot_unauthorized_logs_in_again_before_the_next_cloud_attempt() -> None:
    m = machine(preferred="cloud")
    logged_in(m, local=False)
    [wait] = m.handle(IotFailed("unauthorized"), 0.0)
    assert isinstance(wait, Wait) and m.relogin
    assert m.handle(Tick(), wait.delay) == [FetchIot(relogin=True)]
    m.handle(IotReady(), 2.0)
    assert not m.relogin


def test_row_iot_throttled_uses_the_cached_credentials() -> None:
    """thoukydides: a 429 on iot-credentials falls back to the cached ones."""
    m = machine(preferred="cloud")
    on_cloud(m)
    m.handle(LinkDown("cloud"), 100.0)  # healthy: again at once, fresh credentials first
    assert phase(m) is Phase.FETCHING_IOT
    assert m.handle(IotFailed("throttled"), 100.0) == [Connect("cloud", "issued")]
    fresh = machine(preferred="cloud")
    logged_in(fresh)
    assert fresh.handle(IotFailed("throttled"), 0.0)[0] == Switch("cloud", "local", "fallback")


def test_row_attempt_failed_falls_back_at_once_also_during_startup() -> None:
    """FB-03: the fallback runs during startup."""
    m = machine()
    logged_in(m)
    assert m.handle(LinkFailed("local", "network"), 0.0) == [
        Switch("local", "cloud", "fallback"),
        FetchIot(),
    ]
    assert m.blocked_until["local"] > 0


def test_row_attempt_failed_with_both_paths_down_waits_for_the_first_ready() -> None:
    m = machine()
    logged_in(m)
    m.handle(LinkFailed("local", "network"), 0.0)
    m.handle(IotReady(), 0.0)
    [wait] = m.handle(LinkFailed("cloud", "handshake"), 0.0)
    assert isinstance(wait, Wait) and phase(m) is Phase.WAITING
    assert wait.delay == min(m.ready_at("local"), m.ready_at("cloud"))
    first = "local" if m.ready_at("local") <= m.ready_at("cloud") else "cloud"
    actions = m.handle(Tick(), wait.delay)
    assert actions[-1] in (Connect("local", "stable"), FetchIot())
    assert (actions[-1] == FetchIot()) == (first != "local")


def test_row_stale_session_reset_gets_one_retry_with_a_random_id() -> None:
    """FB-07: the stable id reset by a stale session → at once a one-off random id; reset
    again → the cloud."""
    m = machine()
    logged_in(m)
    assert m.handle(LinkFailed("local", "closed-before-connack"), 0.0) == [
        Connect("local", "random")
    ]
    assert m.handle(LinkFailed("local", "closed-before-connack"), 0.1) == [
        Switch("local", "cloud", "fallback"),
        FetchIot(),
    ]
    m.handle(IotReady(), 0.2)
    m.handle(LinkUp("cloud"), 0.3)
    assert not m.random_retry_used  # one-off (FB-06): the next local attempt is stable again


def test_row_link_up_plans_the_return_to_the_preferred_path() -> None:
    m = machine()
    logged_in(m)
    m.handle(LinkFailed("local", "network"), 0.0)
    m.handle(IotReady(), 0.0)
    assert m.handle(LinkUp("cloud"), 1.0) == []
    assert phase(m) is Phase.CONNECTED and current(m) == "cloud"
    assert m.wake_at == max(11.0, m.ready_at("local"))


def test_row_connected_tick_probes_the_preferred_path_and_returns() -> None:
    m = machine(preferred="cloud")
    logged_in(m)
    m.handle(IotFailed("unavailable"), 0.0)
    m.handle(LinkUp("local"), 1.0)
    assert m.handle(Tick(), 5.0) == []
    assert m.handle(Tick(), 11.0) == [FetchIot()]  # a probe: the local link stays up
    assert phase(m) is Phase.PROBING_IOT and current(m) == "local"
    assert m.handle(IotReady(), 11.1) == [Connect("cloud", "issued")]
    assert m.handle(LinkUp("cloud"), 11.2) == [Close("local"), Switch("local", "cloud", "return")]
    assert current(m) == "cloud" and m.wake_at is None


def test_row_probe_failure_keeps_the_fallback_and_tries_later() -> None:
    m = machine()
    logged_in(m)
    m.handle(LinkFailed("local", "network"), 0.0)
    m.handle(IotReady(), 0.0)
    m.handle(LinkUp("cloud"), 1.0)
    assert m.handle(Tick(), 11.0) == [Connect("local", "stable")]
    assert phase(m) is Phase.PROBING
    assert m.handle(LinkFailed("local", "network"), 11.5) == []
    assert phase(m) is Phase.CONNECTED and current(m) == "cloud"
    assert m.return_at is not None and m.return_at >= 21.5


def test_row_fallback_lost_while_probing_makes_the_probe_the_attempt() -> None:
    m = machine()
    logged_in(m)
    m.handle(LinkFailed("local", "network"), 0.0)
    m.handle(IotReady(), 0.0)
    m.handle(LinkUp("cloud"), 1.0)
    m.handle(Tick(), 11.0)
    assert m.handle(LinkDown("cloud"), 11.2) == []
    assert phase(m) is Phase.ATTEMPTING and current(m) is None
    assert m.handle(LinkUp("local"), 11.3) == []
    assert current(m) == "local"


def test_row_fallback_lost_while_fetching_probe_credentials() -> None:
    m = machine(preferred="cloud")
    logged_in(m)
    m.handle(IotFailed("unavailable"), 0.0)
    m.handle(LinkUp("local"), 1.0)
    m.handle(Tick(), 11.0)
    assert phase(m) is Phase.PROBING_IOT
    assert m.handle(LinkDown("local"), 11.1) == []
    assert phase(m) is Phase.FETCHING_IOT
    assert m.handle(IotReady(), 11.2) == [Connect("cloud", "issued")]


def test_row_connected_healthy_drop_retries_the_preferred_path_at_once() -> None:
    m = machine()
    on_local(m, now=0.0)
    assert m.handle(LinkDown("local"), 100.0) == [Connect("local", "stable")]


def test_row_connected_quick_drop_blocks_the_path_and_falls_back() -> None:
    m = machine()
    on_local(m, now=0.0)
    assert m.handle(LinkDown("local"), 1.0) == [Switch("local", "cloud", "fallback"), FetchIot()]
    assert m.failures["local"] == 1


def test_row_link_down_of_another_path_is_ignored() -> None:
    m = machine()
    on_local(m)
    assert m.handle(LinkDown("cloud"), 1.0) == []
    assert current(m) == "local"


def test_cloud_connects_are_spaced_as_aws_allows_per_client_id() -> None:
    m = machine(preferred="cloud", min_connect_interval=1.0, stable_after=0.0)
    logged_in(m, local=False)
    m.handle(IotReady(), 0.0)
    m.handle(LinkUp("cloud"), 0.0)
    [wait] = m.handle(LinkDown("cloud"), 0.3)
    assert wait == Wait(pytest.approx(0.7), "every path is backing off")  # type: ignore[arg-type]
    assert m.handle(Tick(), 1.0) == [FetchIot()]


def test_as_written_mistakes_in_the_machine() -> None:
    # FB-03: no fallback during startup; after a first connection it works.
    m = machine(startup_fallback=False, preferred="cloud")
    logged_in(m)
    [wait] = m.handle(IotFailed("unavailable"), 0.0)
    assert isinstance(wait, Wait)
    assert m.handle(Tick(), wait.delay) == [FetchIot()]
    # FB-22: IoT credentials once, replayed.
    m = machine(refresh_iot=False, preferred="cloud")
    on_cloud(m)
    assert m.handle(LinkDown("cloud"), 100.0) == [Connect("cloud", "issued")]
    # FB-06: a random local id every time, and no special retry.
    m = machine(local_client_id="random", random_id_retry=False)
    assert logged_in(m) == [Connect("local", "random")]
    assert m.handle(LinkFailed("local", "closed-before-connack"), 0.0)[-1] == FetchIot()


ALL_INPUTS: tuple[Input, ...] = (
    Start(),
    Tick(),
    LoginOk(local=True, cloud=True),
    LoginFailed("network"),
    IotReady(),
    IotFailed("unavailable"),
    LinkUp("local"),
    LinkUp("cloud"),
    LinkFailed("local", "network"),
    LinkFailed("cloud", "closed-before-connack"),
    LinkDown("local"),
    LinkDown("cloud"),
)


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        (phase, event)
        for phase in Phase
        for event in ALL_INPUTS
        if (phase, type(event)) not in TRANSITIONS
    ],
    ids=lambda value: getattr(value, "value", repr(value)),
)
def test_pairs_outside_the_table_change_nothing(phase: Phase, event: Input) -> None:
    m = machine()
    m.phase = phase
    before = {k: v for k, v in vars(m).items() if k != "rng"}
    assert m.handle(event, 1.0) == []
    assert {k: v for k, v in vars(m).items() if k != "rng"} == before


@settings(max_examples=300)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(ALL_INPUTS), st.floats(min_value=0, max_value=20)),
        max_size=50,
    ),
    preferred=st.sampled_from(["local", "cloud"]),
)
def test_one_connection_attempt_at_a_time(steps: list[tuple[Input, float]], preferred: str) -> None:
    """FB-08, for any order of inputs the shell could feed: a Connect is issued only when no
    attempt is in flight, and a link is never "up" on two paths in the machine's view."""
    m = machine(preferred=preferred)
    now = 0.0
    for event, dt in steps:
        now += dt
        in_flight = m.phase in (Phase.ATTEMPTING, Phase.PROBING)  # a Connect is out
        attempt = m.attempt
        actions = m.handle(event, now)
        connects = [a for a in actions if isinstance(a, Connect)]
        assert len(connects) <= 1
        if connects and in_flight:
            # Only after the outcome of the attempt in flight: a failure (then the random-id
            # retry, FB-07, or the other path).
            assert isinstance(event, LinkFailed) and event.path == attempt
        if connects:
            assert m.phase in (Phase.ATTEMPTING, Phase.PROBING)
        for action in actions:
            if isinstance(action, Wait):
                assert action.delay >= 0
        assert m.current is None or m.available[m.current]


# --------------------------------------------------------------------------------------
# Options and descriptor
# --------------------------------------------------------------------------------------

DESCRIPTOR: dict[str, Any] = {
    "iot": {"connect_host": "127.0.0.1", "wss_port": 4443, "ca_file": "/nonexistent/ca.pem"},
    "dyson": {
        "api_url": "https://127.0.0.1:1",
        "email": "owner@example.com",
        "password": "pw",
        "otp": "123456",
        "devices": [
            {"serial": "AAA-AA-AAA0001A", "local_host": "127.0.0.1", "local_port": 1883},
            {"serial": "BBB-BB-BBB0002B", "local_host": "127.0.0.1", "local_port": 0},
        ],
    },
}


def test_config_defaults_and_options() -> None:
    cfg = DysonAppConfig.from_inputs("dyson-app", DESCRIPTOR, {})
    assert cfg.serial == "AAA-AA-AAA0001A" and cfg.local_port == 1883
    assert cfg.policy.preferred == "local" and cfg.policy.refresh_iot and not cfg.mistakes
    assert (cfg.local_protocol, cfg.cloud_protocol) == ("3.1", "3.1.1")
    other = DysonAppConfig.from_inputs(
        "dyson-app",
        DESCRIPTOR,
        {"device": "BBB-BB-BBB0002B", "preferred": "cloud-first", "local_protocol": "3.1.1"},
    )
    assert other.serial == "BBB-BB-BBB0002B" and other.local_port == 0
    assert other.policy.preferred == "cloud" and other.local_protocol == "3.1.1"
    written = DysonAppConfig.from_inputs("dyson-app-as-written", DESCRIPTOR, {})
    assert written.mistakes == frozenset(DYSON_MISTAKES)
    assert written.policy.preferred == "cloud"
    assert not written.policy.startup_fallback and not written.policy.refresh_iot
    assert written.policy.local_client_id == "random"
    assert "password" not in repr(cfg) or "pw" not in repr(cfg)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dyson-app", {"prefered": "local-first"}, "unknown option"),
        ("dyson-app", {"mistakes": []}, "unknown option"),
        ("dyson-app", {"preferred": "local"}, "'preferred'"),
        ("dyson-app", {"local_protocol": "5"}, "'local_protocol'"),
        ("dyson-app", {"request_state": "yes"}, "'request_state'"),
        ("dyson-app", {"return_after": -1}, "'return_after'"),
        ("dyson-app-as-written", {"mistakes": ["token-in-the-path"]}, "'mistakes'"),
    ],
)
def test_bad_options(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DysonAppConfig.from_inputs(name, DESCRIPTOR, options)


def test_descriptor_without_a_dyson_section() -> None:
    with pytest.raises(ConfigError, match="no 'dyson' section"):
        create_app(
            "dyson-app", descriptor={"iot": DESCRIPTOR["iot"]}, options={}, recorder=Recorder()
        )
    with pytest.raises(ConfigError, match=r"dyson\.api_url"):
        DysonAppConfig.from_inputs(
            "dyson-app", {**DESCRIPTOR, "dyson": {**DESCRIPTOR["dyson"], "api_url": ""}}, {}
        )


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
        "device",
        "preferred",
        "backoff_base",
        "backoff_max",
        "jitter",
        "login_backoff_base",
        "return_after",
        "stable_after",
        "min_connect_interval",
        "connect_timeout",
        "keepalive",
        "local_protocol",
        "cloud_protocol",
        "instance_id",
        "http_timeout",
        "request_state",
        "seed",
        "mistakes",
        "other",
    ]
)


@settings(max_examples=300)
@given(
    options=st.dictionaries(OPTION_NAMES, JSONISH, max_size=4),
    dyson=st.dictionaries(
        st.sampled_from(["api_url", "email", "password", "otp", "devices"]), JSONISH
    ),
    name=st.sampled_from(["dyson-app", "dyson-app-as-written"]),
)
def test_any_options_and_descriptor_give_an_app_or_a_config_error(
    options: dict[str, Any], dyson: dict[str, Any], name: str
) -> None:
    descriptor = {"iot": DESCRIPTOR["iot"], "dyson": {**DESCRIPTOR["dyson"], **dyson}}
    with suppress(ConfigError):
        create_app(name, descriptor=descriptor, options=options, recorder=Recorder())


def test_stable_local_client_id_is_hass_dysons() -> None:
    first = local_client_id("home", "AAA-AA-AAA0001A")
    assert first == local_client_id("home", "AAA-AA-AAA0001A") and len(first) == 23
    assert first != local_client_id("other-home", "AAA-AA-AAA0001A")


# --------------------------------------------------------------------------------------
# The real app against a world with a simulated device
# --------------------------------------------------------------------------------------

FAST: dict[str, Any] = {
    "backoff_base": 0.05,
    "backoff_max": 0.4,
    "login_backoff_base": 0.05,
    "return_after": 0.3,
    "stable_after": 0.2,
    "connect_timeout": 1.0,
    "seed": 5,
}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    config = WorldConfig(dyson=DysonConfig(devices=(DysonDeviceSpec(product_type="438M"),)))
    async with World(config) as w:
        yield w


def device(world: World) -> SimulatedDevice:
    assert world.dyson is not None
    [only] = list(world.dyson)
    return only


def local_broker(world: World) -> DysonLocalBroker:
    broker = device(world).local
    assert broker is not None
    return broker


@asynccontextmanager
async def running(world: World, name: str = "dyson-app", **options: Any) -> AsyncIterator[DysonApp]:
    app = create_app(
        name, descriptor=world.descriptor(), options={**FAST, **options}, recorder=world.recorder
    )
    assert isinstance(app, DysonApp)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


def events(world: World, kind: str, **fields: Any) -> list[Event]:
    return world.recorder.find(kind, **fields)


async def state_via(world: World, path: str, *, since: int = 0) -> Event:
    """The device's CURRENT-STATE reached the app over ``path``."""
    return await world.recorder.wait_for(
        "client.message", timeout=TIMEOUT, since=since, path=path, msg="CURRENT-STATE"
    )


def assert_no_secrets(world: World, app: DysonApp) -> None:
    assert not world.recorder.find("client.bug"), world.recorder.find("client.bug")
    timeline = json.dumps([e.to_json() for e in world.recorder], default=str)
    cfg = app.config
    secrets = [cfg.password, cfg.otp, device(world).local_password]
    if app.iot is not None:
        secrets.append(app.iot.credentials.token_signature)
    if app.api.token is not None:
        secrets.append(app.api.token)
    for secret in secrets:
        assert secret not in timeline


@pytest.mark.interop
@pytest.mark.parametrize("protocol", ["3.1", "3.1.1"])
async def test_local_first_logs_in_decrypts_and_talks_to_the_device_locally(
    world: World, protocol: str
) -> None:
    async with running(world, local_protocol=protocol) as app:
        await state_via(world, "local")
        assert app.current == "local"
    [login] = events(world, "client.login")
    dev = device(world)
    assert login.get("ok") and login.get("serial") == dev.serial and login.get("root") == "438M"
    assert login.get("local") and login.get("cloud")
    [connect] = events(world, "client.connect")
    assert connect.get("path") == "local" and connect.get("id_kind") == "stable"
    assert connect.get("client_id") == local_client_id(app.config.instance_id, dev.serial)
    [seen] = world.recorder.find("mqtt.in", packet="CONNECT", client_id=connect.get("client_id"))
    assert seen.get("protocol_level") == {"3.1": 3, "3.1.1": 4}[protocol]
    assert not events(world, "client.credentials")  # no cloud attempt was needed
    verdict = world.recorder.find("auth.verdict", stage="dyson-local")[0]
    assert verdict.ok
    calls = [e.get("operation") for e in world.recorder.find("dyson.api.call")]
    assert calls == ["provision", "email-userstatus", "email-auth", "email-verify", "manifest-v3"]
    assert_no_secrets(world, app)


@pytest.mark.interop
@pytest.mark.parametrize("protocol", ["3.1", "3.1.1"])
async def test_cloud_first_gets_iot_credentials_and_connects_with_the_headers(
    world: World, protocol: str
) -> None:
    async with running(world, preferred="cloud-first", cloud_protocol=protocol) as app:
        await state_via(world, "cloud")
        assert app.current == "cloud"
    [creds] = events(world, "client.credentials")
    assert creds.get("source") == "dyson-cloud" and creds.get("endpoint") == world.endpoint
    [upgrade] = world.recorder.find("ws.upgrade", auth="custom-auth")
    assert upgrade.ok and upgrade.get("path") == "/mqtt"  # credentials in headers, not the path
    [authorizer] = world.recorder.find("dyson.api.authorizer")
    assert authorizer.ok and authorizer.get("serial") == device(world).serial
    [verdict] = world.recorder.find("auth.verdict", stage="connect", conn=upgrade.conn)
    assert verdict.ok and verdict.get("client_id") == creds.get("client_id")
    [seen] = world.recorder.find("mqtt.in", packet="CONNECT", client_id=creds.get("client_id"))
    assert seen.get("protocol_level") == {"3.1": 3, "3.1.1": 4}[protocol]
    assert_no_secrets(world, app)


@pytest.mark.interop
async def test_falls_back_to_local_when_the_cloud_refuses_then_returns(world: World) -> None:
    world.gateway.faults.refuse_upgrades(1)
    async with running(world, preferred="cloud-first") as app:
        await state_via(world, "local")
        returned = await world.recorder.wait_for("client.return", timeout=TIMEOUT)
        await state_via(world, "cloud")
        assert app.current == "cloud"
    [fallback] = events(world, "client.fallback")
    assert (fallback.get("from"), fallback.get("to")) == ("cloud", "local")
    assert (returned.get("from"), returned.get("to")) == ("local", "cloud")
    connects = [(c.get("path"), c.get("ok")) for c in events(world, "client.connect")]
    assert connects == [("cloud", False), ("local", True), ("cloud", True)]
    # The local link was closed on purpose, after the cloud was up (no gap).
    [closed] = events(world, "client.disconnected", path="local")
    assert closed.get("deliberate") is True
    assert closed.t >= events(world, "client.connected", path="cloud")[0].t
    # New IoT credentials for each cloud attempt.
    ids = [c.get("client_id") for c in events(world, "client.credentials")]
    assert len(ids) == 2 and len(set(ids)) == 2


@pytest.mark.interop
async def test_startup_fallback_to_cloud_when_the_device_is_offline_then_back_local(
    world: World,
) -> None:
    """FB-03: the local port refuses at startup, the cloud is healthy: Cloud within one
    pass; Local again once the device is back (return_after)."""
    local = local_broker(world)
    await local.go_offline()
    async with running(world) as app:
        await state_via(world, "cloud")
        since = len(world.recorder)
        await local.come_back()
        await world.recorder.wait_for("client.return", timeout=TIMEOUT, since=since)
        await state_via(world, "local", since=since)
        assert app.current == "local"
    first, second = events(world, "client.connect")[:2]
    assert (first.get("path"), first.get("ok"), first.get("reason")) == ("local", False, "network")
    assert (second.get("path"), second.get("ok")) == ("cloud", True)


@pytest.mark.interop
async def test_falls_back_to_cloud_when_the_local_link_drops(world: World) -> None:
    async with running(world) as app:
        await state_via(world, "local")
        since = len(world.recorder)
        await local_broker(world).go_offline()
        await state_via(world, "cloud", since=since)
        assert app.current == "cloud"
    fallback = events(world, "client.fallback")[-1]
    assert (fallback.get("from"), fallback.get("to")) == ("local", "cloud")


@pytest.mark.interop
async def test_both_paths_down_bounded_retries_then_recovery(world: World) -> None:
    local = local_broker(world)
    await local.go_offline()
    world.gateway.faults.refuse_upgrades(1000)
    async with running(world):
        await world.recorder.wait_for(
            "client.backoff",
            timeout=TIMEOUT,
            predicate=lambda e: len(events(world, "client.backoff")) >= 3,
        )
        await local.come_back()
        await state_via(world, "local")
    delays = [e.get("delay") for e in events(world, "client.backoff")]
    assert all(0 < d <= 0.4 for d in delays)
    attempts = events(world, "client.connect")
    assert len(attempts) < 40  # bounded: backoff, not a storm (FB-08)


@pytest.mark.interop
async def test_new_iot_credentials_before_reconnecting_after_an_auth_failure(
    world: World,
) -> None:
    """FB-22 done right: the tokens are revoked and the link cut; the app asks for new
    credentials before it reconnects (thoukydides), so the authorizer accepts it."""
    assert world.dyson is not None
    async with running(world, preferred="cloud-first", stable_after=0.0) as app:
        await state_via(world, "cloud")
        first = events(world, "client.credentials")[0].get("client_id")
        world.dyson.cloud.revoke_iot_tokens()
        since = len(world.recorder)
        assert await world.gateway.drop(first)
        await state_via(world, "cloud", since=since)
        assert app.current == "cloud"
    ids = [c.get("client_id") for c in events(world, "client.credentials")]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(a.ok for a in world.recorder.find("dyson.api.authorizer"))


@pytest.mark.interop
async def test_as_written_replays_revoked_iot_credentials(world: World) -> None:
    """FB-22 as written: the same credentials again; the authorizer refuses them; the app
    ends up on the local path (its fallback works once started)."""
    assert world.dyson is not None
    async with running(
        world,
        "dyson-app-as-written",
        mistakes=["iot-credentials-once"],
        stable_after=0.0,
    ) as app:
        await state_via(world, "cloud")
        first = events(world, "client.credentials")[0].get("client_id")
        world.dyson.cloud.revoke_iot_tokens()
        assert await world.gateway.drop(first)
        await world.recorder.wait_for(
            "dyson.api.authorizer", timeout=TIMEOUT, ok=False, reason="token-revoked"
        )
        await state_via(world, "local")
        assert app.current == "local"
    assert len(events(world, "client.credentials")) == 1
    cloud = [c for c in events(world, "client.connect") if c.get("path") == "cloud"]
    assert {c.get("client_id") for c in cloud} == {first}


@pytest.mark.interop
async def test_stale_session_reset_then_a_one_off_random_id(world: World) -> None:
    """FB-07: the app's TCP vanishes without DISCONNECT; its quick reconnect with the stable
    id is reset by the device; at once again with a random id, which connects."""
    async with running(world, stable_after=0.0) as app:
        await state_via(world, "local")
        since = len(world.recorder)
        link = app.links["local"]
        sock = link.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # gone without DISCONNECT: a stale session
        await state_via(world, "local", since=since)
    kinds = [(c.get("id_kind"), c.get("ok")) for c in events(world, "client.connect")]
    assert kinds[0] == ("stable", True)
    assert ("stable", False) in kinds and kinds[-1] == ("random", True)
    assert world.recorder.find("dyson.local.quirk", quirk="stale_session_rst")


@pytest.mark.interop
async def test_stable_local_client_id_across_restarts_and_the_as_written_random_ones(
    world: World,
) -> None:
    """FB-06: restarts reuse one id; the as-written app brings a new one every time."""
    for _ in range(2):
        async with running(world):
            await state_via(world, "local", since=len(world.recorder))
    for _ in range(2):
        async with running(world, "dyson-app-as-written", preferred="local-first"):
            await state_via(world, "local", since=len(world.recorder))
    right = {c.get("client_id") for c in events(world, "client.connect", app="dyson-app")}
    written = [
        c.get("client_id") for c in events(world, "client.connect", app="dyson-app-as-written")
    ]
    assert len(right) == 1
    assert len(written) == 2 and len(set(written)) == 2


@pytest.mark.interop
async def test_as_written_token_in_the_path_never_reaches_the_cloud_and_never_falls_back(
    world: World,
) -> None:
    """FB-35 with FB-03: 101, then a close after CONNECT (no custom-auth credentials the
    authorizer reads); during startup the app keeps retrying the cloud only."""
    async with running(
        world, "dyson-app-as-written", mistakes=["token-in-path", "no-startup-fallback"]
    ) as app:
        await world.recorder.wait_for(
            "client.connect",
            timeout=TIMEOUT,
            predicate=lambda e: len(events(world, "client.connect")) >= 3,
        )
        assert app.current is None
    attempts = events(world, "client.connect")
    assert {(c.get("path"), c.get("ok"), c.get("reason")) for c in attempts} == {
        ("cloud", False, "closed-before-connack")
    }
    verdicts = world.recorder.find("auth.verdict", stage="connect", ok=False)
    assert verdicts and {v.reason for v in verdicts} == {"no-credentials"}
    assert not events(world, "client.fallback")
    assert_no_secrets(world, app)


@pytest.mark.interop
async def test_as_written_design_client_id_is_refused_by_the_policy(world: World) -> None:
    """FB-35: ``dyson-ha-cloud-<serial>-<8 hex>`` is not the ClientId the policy allows."""
    async with running(
        world,
        "dyson-app-as-written",
        mistakes=["design-client-id", "no-startup-fallback"],
    ):
        await world.recorder.wait_for(
            "client.connect",
            timeout=TIMEOUT,
            predicate=lambda e: len(events(world, "client.connect")) >= 2,
        )
    for attempt in events(world, "client.connect"):
        assert str(attempt.get("client_id")).startswith(f"dyson-ha-cloud-{device(world).serial}-")
        assert not attempt.get("ok")


@pytest.mark.interop
async def test_as_written_paho_without_callback_api_version_misses_the_disconnect(
    world: World,
) -> None:
    """FB-21 and FB-01: the cloud client built without callback_api_version gets VERSION1
    calls; the disconnect handler breaks and the app never notices the drop."""
    async with running(world, "dyson-app-as-written", mistakes=["no-callback-api-version"]) as app:
        await state_via(world, "cloud")
        [warning] = events(world, "client.problem", what="warning")
        assert "deprecated" in str(warning.get("detail")).lower()
        client_id = events(world, "client.credentials")[0].get("client_id")
        assert await world.gateway.drop(client_id)
        problem = await world.recorder.wait_for(
            "client.problem", timeout=TIMEOUT, what="callback-error"
        )
        assert "missing 1 required positional argument: 'rc'" in str(problem.get("detail"))
        assert app.current == "cloud"  # still believes it is connected
    assert not [e for e in events(world, "client.disconnected") if e.get("path") == "cloud"]


@pytest.mark.interop
async def test_login_outage_is_retried_not_an_auth_failure(world: World) -> None:
    """FB-19: a 5xx during login is an outage: retried with backoff."""
    assert world.dyson is not None
    world.dyson.cloud.fail_next(2, 503, operation="email-verify")
    async with running(world):
        await state_via(world, "local")
    logins = events(world, "client.login")
    assert [(e.get("ok"), e.get("reason")) for e in logins] == [
        (False, "unavailable"),
        (False, "unavailable"),
        (True, None),
    ]
    assert len([b for b in events(world, "client.backoff") if "login" in b.get("why")]) == 2


@pytest.mark.interop
async def test_cloud_only_device_goes_straight_to_the_cloud() -> None:
    spec = DysonDeviceSpec(product_type="438", mode="cloud")
    async with World(WorldConfig(dyson=DysonConfig(devices=(spec,)))) as world:
        async with running(world) as app:
            await state_via(world, "cloud")
            assert app.current == "cloud"
        [login] = events(world, "client.login")
        assert login.get("local") is False and login.get("cloud") is True
        assert not events(world, "client.fallback")


@pytest.mark.interop
async def test_unknown_device_says_so_and_retries() -> None:
    async with World(WorldConfig(dyson=DysonConfig())) as world:
        async with running(world, device="XXX-XX-XXX0000X"):
            await world.recorder.wait_for(
                "client.backoff",
                timeout=TIMEOUT,
                predicate=lambda e: len(events(world, "client.login")) >= 2,
            )
        error = events(world, "client.error", stage="manifest")[0]
        assert error.reason == "no-device"
