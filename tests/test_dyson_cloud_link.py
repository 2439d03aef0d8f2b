"""The device's cloud link over loopback: mTLS as a registered thing, commands through the
gateway, the GONE-AWAY will, reconnection, and the fan-out to every sink (dyson.md §7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.auth.policy import PolicySet
from harness.errors import ConfigError
from harness.events import Event, Recorder
from harness.gateway import GatewayConfig
from harness.mqtt.codec import Connack, Publish, StreamDecoder, Suback, encode
from harness.mqtt.rules import Limits
from harness.pki import WorldPKI
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig
from simulators.dyson.cloud_link import Backoff, DysonCloudLink, thing_policy
from simulators.dyson.device import DysonDevice
from simulators.dyson.host import DeviceHost, DeviceSink
from simulators.dyson.messages import Outgoing
from simulators.dyson.profiles import get_profile
from simulators.dyson.topics import DeviceTopics
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

SERIAL = "NK6-EU-HAA0000A"
ROOT = "438M"
TOPICS = DeviceTopics(ROOT, SERIAL)
REGION = "us-east-1"
ACCOUNT = "123456789012"
FAST = Backoff(initial_s=0.05, max_s=0.2)


# The thing's policy (aws-iot.md §5)


def arn(kind: str, name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{name}"


@pytest.mark.parametrize(
    ("action", "resource", "allowed"),
    [
        ("iot:Connect", arn("client", SERIAL), True),
        ("iot:Connect", arn("client", "someone-else"), False),
        ("iot:Publish", arn("topic", TOPICS.current), True),
        ("iot:Publish", arn("topic", TOPICS.faults), True),
        ("iot:Publish", arn("topic", TOPICS.connection), True),
        ("iot:Publish", arn("topic", TOPICS.scheduler), True),
        ("iot:Publish", arn("topic", TOPICS.command), False),
        ("iot:Publish", arn("topic", f"{ROOT}/OTHER-EU-HAA0000A/status/current"), False),
        ("iot:RetainPublish", arn("topic", TOPICS.current), False),
        ("iot:Subscribe", arn("topicfilter", TOPICS.command), True),
        ("iot:Subscribe", arn("topicfilter", f"{TOPICS.prefix}#"), False),
        ("iot:Subscribe", arn("topicfilter", "#"), False),
        ("iot:Receive", arn("topic", TOPICS.command), True),
        ("iot:Receive", arn("topic", TOPICS.current), False),
    ],
)
def test_thing_policy_allows_exactly_what_the_link_does(
    action: str, resource: str, allowed: bool
) -> None:
    policies = PolicySet.parse([thing_policy(region=REGION, account_id=ACCOUNT, topics=TOPICS)])
    variables = {
        "iot:Connection.Thing.ThingName": SERIAL,
        "iot:Connection.Thing.IsAttached": "true",
    }
    assert policies.allows(action, resource, variables) is allowed


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=1, max_s=30)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(initial_s=0.5, max_s=0.5, factor=1).delay(100) == 0.5


@given(
    initial=st.floats(0.001, 10),
    extra=st.floats(0, 100),
    factor=st.floats(1, 10),
    failures=st.integers(0, 10_000),
)
def test_backoff_is_bounded_and_never_shrinks(
    initial: float, extra: float, factor: float, failures: int
) -> None:
    backoff = Backoff(initial_s=initial, max_s=initial + extra, factor=factor)
    assert initial <= backoff.delay(failures) <= initial + extra
    assert backoff.delay(failures) <= backoff.delay(failures + 1)


@pytest.mark.parametrize(
    "options",
    [{"initial_s": 0}, {"initial_s": 2, "max_s": 1}, {"factor": 0.5}],
)
def test_backoff_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**options)


def test_link_configuration_errors(tmp_path: Path) -> None:
    device = DysonDevice(get_profile(ROOT), serial=SERIAL, now=0.0)
    with pytest.raises(ConfigError, match="ca_file"):
        DysonCloudLink(device, endpoint="x", port=1)
    ca = tmp_path / "none.pem"
    bad: list[dict[str, Any]] = [{"keep_alive": -1}, {"protocol_level": 5}, {"connect_timeout": 0}]
    for options in bad:
        with pytest.raises(ConfigError):
            DysonCloudLink(device, endpoint="x", port=1, ca_file=ca, **options)
    with pytest.raises(ConfigError, match="cannot load"):
        DysonCloudLink(device, endpoint="x", port=1, ca_file=ca)


# Loopback: the fake gateway, the device as a thing, a paho client of the cloud


def fast_world_config() -> WorldConfig:
    """No CONNECT-rate limit per client id, so a reconnect takes milliseconds, not 1 s."""
    return WorldConfig(
        cognito=False,
        gateway=GatewayConfig(limits=Limits(connects_per_client_id_per_second=None)),
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(fast_world_config()) as running:
        yield running


@pytest.fixture
def device(world: World) -> DysonDevice:
    return DysonDevice(get_profile(ROOT), serial=SERIAL, now=world.clock.now())


class ListSink:
    """A second sink, standing in for the local broker: what the device published."""

    name = "list"

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []

    def publish(self, message: Outgoing) -> None:
        self.messages.append(message)

    def msgs(self) -> list[str]:
        return [m.msg for m in self.messages]


@pytest.fixture
async def app(world: World) -> AsyncIterator[PahoClient]:
    """A cloud client with the world's signing authorizer, subscribed to the device."""
    assert world.authorizer_key is not None
    token = str(uuid.uuid4())
    client = PahoClient(
        f"app-{token[:8]}",
        websocket=True,
        ca_file=str(world.pki.ca_file),
        headers={
            "Host": world.endpoint,
            "token": token,
            "X-Amz-CustomAuthorizer-Name": DEFAULT_AUTHORIZER,
            "X-Amz-CustomAuthorizer-Signature": world.authorizer_key.sign(token),
        },
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe(f"{TOPICS.prefix}status/#", qos=0)
    assert (await client.next("subscribe")).rc == [0]
    try:
        yield client
    finally:
        await client.close()


async def next_msg(client: PahoClient, msg: str, *, topic: str | None = None) -> dict[str, Any]:
    """The next message whose ``msg`` is ``msg`` (others are skipped)."""
    while True:
        happened = await client.next("message")
        assert happened.payload is not None
        message = json.loads(happened.payload)
        if message.get("msg") == msg and (topic is None or happened.topic == topic):
            return dict(message)


def command(msg: str, **fields: Any) -> bytes:
    return json.dumps({"msg": msg, "time": "2025-04-16T00:16:21Z", **fields}).encode()


async def test_the_device_connects_as_its_thing_and_answers_commands_through_the_cloud(
    world: World, device: DysonDevice, app: PahoClient
) -> None:
    link = DysonCloudLink.for_gateway(device, world.gateway, backoff=FAST)
    async with link:
        hello = await next_msg(app, "HELLO", topic=TOPICS.connection)
        assert hello["serialNumber"] == SERIAL and hello["resetSource"] == "PWUP"
        verdict = await world.recorder.wait_for(
            "auth.verdict", timeout=TIMEOUT, stage="connect", client_id=SERIAL
        )
        assert verdict.ok and "certificate of thing" in verdict.get("explain")
        handshake = world.recorder.first("tls.handshake", conn=verdict.conn)
        assert handshake is not None and handshake.get("client_certificate") is True
        assert handshake.get("sni") == world.endpoint

        app.client.publish(TOPICS.command, command("REQUEST-CURRENT-STATE"), qos=0)
        state = await next_msg(app, "CURRENT-STATE", topic=TOPICS.current)
        assert state["product-state"] == device.state
        # env_with_state (438M): the sensor data follows the state (dyson.md §4.4)
        await next_msg(app, "ENVIRONMENTAL-CURRENT-SENSOR-DATA", topic=TOPICS.current)

        app.client.publish(
            TOPICS.command,
            command("STATE-SET", **{"mode-reason": "RAPP", "data": {"fnsp": "0005"}}),
            qos=1,
        )
        change = await next_msg(app, "STATE-CHANGE", topic=TOPICS.current)
        assert change["product-state"]["fnsp"] == ["AUTO", "0005"]
        assert change["mode-reason"] == "RAPP"
        assert device.state["fnsp"] == "0005"
        handled = await world.recorder.wait_for(
            "dyson.command", timeout=TIMEOUT, msg="STATE-SET", via="cloud"
        )
        assert handled.get("changed")

        app.client.publish(TOPICS.command, command("REQUEST-CURRENT-FAULTS"), qos=1)
        await next_msg(app, "CURRENT-FAULTS", topic=TOPICS.faults)
        app.client.publish(TOPICS.command, b"not json", qos=0)
        ignored = await world.recorder.wait_for(
            "dyson.command.ignored", timeout=TIMEOUT, reason="malformed-json"
        )
        assert ignored.get("via") == "cloud"
    # Leaving cleanly: GOODBYE, then DISCONNECT.
    goodbye = await next_msg(app, "GOODBYE", topic=TOPICS.connection)
    assert goodbye["reason"] == "UNKNOWN"
    await world.recorder.wait_for(
        "mqtt.close", timeout=TIMEOUT, client_id=SERIAL, reason="CLIENT_INITIATED_DISCONNECT"
    )
    assert not world.recorder.find("policy.verdict", ok=False)


async def test_a_dropped_link_leaves_its_will_and_comes_back(
    world: World, device: DysonDevice, app: PahoClient
) -> None:
    async with DysonCloudLink.for_gateway(device, world.gateway, backoff=FAST) as link:
        await next_msg(app, "HELLO")
        assert await world.gateway.drop(SERIAL)
        assert await next_msg(app, "GONE-AWAY", topic=TOPICS.connection) == {"msg": "GONE-AWAY"}
        await world.recorder.wait_for(
            "dyson.cloud.disconnected", timeout=TIMEOUT, reason="connection-lost"
        )
        back = await next_msg(app, "IM-BACK", topic=TOPICS.connection)
        assert "time" in back
        assert link.connections == 2 and link.online
        # And it still answers after the reconnection.
        app.client.publish(TOPICS.command, command("REQUEST-CURRENT-STATE"), qos=1)
        await next_msg(app, "CURRENT-STATE")

        link.cut()  # the device's own Internet link drops
        await next_msg(app, "GONE-AWAY")
        lost = await world.recorder.wait_for(
            "dyson.cloud.disconnected", timeout=TIMEOUT, reason="cut"
        )
        assert "no DISCONNECT" in lost.get("explain")
        await next_msg(app, "IM-BACK")
        backoffs = world.recorder.find("dyson.cloud.backoff", serial=SERIAL)
        assert [e.get("delay") for e in backoffs] == [0.05, 0.05]


async def test_a_clean_stop_is_recorded_once_as_stopped(world: World, device: DysonDevice) -> None:
    async with DysonCloudLink.for_gateway(device, world.gateway, backoff=FAST) as link:
        await link.wait_connected(TIMEOUT)
    lost = world.recorder.find("dyson.cloud.disconnected", serial=SERIAL)
    assert [e.reason for e in lost] == ["stopped"]
    assert not link.online


async def test_a_task_that_will_not_end_does_not_hold_the_stop_up(
    world: World, device: DysonDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection task that ignores its cancellation (as a lost one did, see
    test_dyson_world's stopped-while-it-connects test) costs ``connect_timeout`` and a
    ``dyson.cloud.error``, not a stop that never returns."""
    link = DysonCloudLink.for_gateway(
        device, world.gateway, backoff=FAST, connect_timeout=0.1 * TIMEOUT
    )
    released = asyncio.Event()

    async def stubborn(reader: asyncio.StreamReader) -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    monkeypatch.setattr(link, "_serve", stubborn)
    link.start()
    await link.wait_connected(TIMEOUT)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"dyson-cloud-{SERIAL}"]
    stop = asyncio.create_task(link.stop(goodbye=False))
    try:
        done, _ = await asyncio.wait({stop}, timeout=TIMEOUT)
        assert stop in done, "stop() waited for ever for a task that would not end"
        stop.result()
    finally:
        released.set()
        await asyncio.wait({task, stop}, timeout=TIMEOUT)
    error = world.recorder.first("dyson.cloud.error", serial=SERIAL)
    assert error is not None and "did not end" in error.get("explain")


async def test_one_device_two_sinks_every_answer_reaches_both(
    world: World, device: DysonDevice, app: PahoClient
) -> None:
    """A command through either sink changes the one device; both sinks see the answer."""
    host = DeviceHost(device, recorder=world.recorder)
    local = ListSink()
    assert isinstance(local, DeviceSink)
    host.add_sink(local)
    async with host, DysonCloudLink.for_gateway(host, world.gateway, backoff=FAST):
        await next_msg(app, "HELLO")
        # Through the cloud: the local sink sees the STATE-CHANGE too.
        app.client.publish(TOPICS.command, command("STATE-SET", data={"oson": "OFF"}), qos=1)
        await next_msg(app, "STATE-CHANGE")
        assert local.msgs() == ["STATE-CHANGE"]
        # Through the local broker (here: straight into the host): the cloud sees it.
        result = host.handle(
            TOPICS.command, command("STATE-SET", data={"fpwr": "OFF"}), via="local"
        )
        assert result.msgs == ("STATE-CHANGE",)
        change = await next_msg(app, "STATE-CHANGE")
        assert change["product-state"]["fpwr"] == ["ON", "OFF"]
        assert local.msgs() == ["STATE-CHANGE", "STATE-CHANGE"]
        # A harness control (a fault) is device output too.
        host.run(lambda now: device.raise_fault("fltr", now=now))
        faults = await next_msg(app, "FAULTS-CHANGE", topic=TOPICS.faults)
        assert any("fltr" in keys for keys in faults.values() if isinstance(keys, dict))
        assert local.msgs()[-1] == "FAULTS-CHANGE"
        # HELLO is the link's own, not device output: the local sink never saw it.
        assert "HELLO" not in local.msgs()
        events = world.recorder.find("dyson.command", msg="STATE-SET")
        assert [e.get("via") for e in events] == ["cloud", "local"]


async def test_a_broken_sink_does_not_starve_the_others(world: World, device: DysonDevice) -> None:
    class Broken:
        name = "broken"

        def publish(self, message: Outgoing) -> None:
            raise RuntimeError("boom")

    host = DeviceHost(device, recorder=world.recorder)
    host.add_sink(Broken())
    good = ListSink()
    remove = host.add_sink(good)
    host.handle(TOPICS.command, command("REQUEST-CURRENT-FAULTS"))
    assert good.msgs() == ["CURRENT-FAULTS"]
    error = world.recorder.first("dyson.host.error")
    assert error is not None and error.get("sink") == "broken"
    remove()
    remove()  # idempotent
    host.handle(TOPICS.command, command("REQUEST-CURRENT-FAULTS"))
    assert good.msgs() == ["CURRENT-FAULTS"]


async def test_the_host_runs_the_device_timers(world: World) -> None:
    """The sleep timer counts down by itself once the host runs (dyson.md §4.4)."""
    device = DysonDevice(get_profile(ROOT), serial=SERIAL, now=world.clock.now())
    host = DeviceHost(device, recorder=world.recorder)
    sink = ListSink()
    host.add_sink(sink)
    async with host:
        host.handle(TOPICS.command, command("STATE-SET", data={"sltm": "0015"}))
        world.clock.shift(61)  # a minute on the world clock, without waiting for it
        host.tick()
        event = await world.recorder.wait_for(
            "dyson.state.changed", timeout=TIMEOUT, cause="sleep-timer"
        )
        assert "sltm" in event.get("changed")
    assert sink.msgs() == ["STATE-CHANGE", "STATE-CHANGE"]


async def test_the_host_stops_even_when_a_command_wakes_it_as_it_stops() -> None:
    """A stop 0 to 9 turns of the event loop after a command woke the timer task ends it:
    on Python 3.11 ``asyncio.wait_for(event.wait())`` dropped a cancellation that came in
    the same turn as the wake-up, and the task ran on while ``stop()`` waited for it."""
    for turns in range(10):
        # A timer pending (sensor pushes), so the task waits with a timeout.
        recorder = Recorder()
        device = DysonDevice(
            get_profile(ROOT), serial=SERIAL, now=recorder.clock.now(), env_push_interval_s=3600
        )
        host = DeviceHost(device, recorder=recorder)
        host.start()
        for _ in range(3):  # the timer task waits for its wake-up
            await asyncio.sleep(0)
        host.handle(TOPICS.command, command("REQUEST-CURRENT-STATE"))
        for _ in range(turns):
            await asyncio.sleep(0)
        stop = asyncio.create_task(host.stop())
        done, _ = await asyncio.wait({stop}, timeout=TIMEOUT)
        assert stop in done, f"the host stopped {turns} turns after a command never stopped"
        stop.result()


async def test_messages_while_offline_are_dropped(world: World, device: DysonDevice) -> None:
    link = DysonCloudLink.for_gateway(device, world.gateway, backoff=FAST)
    link.publish(device.current_state_message(world.clock.now()))
    assert link.dropped == 1
    dropped = world.recorder.first("dyson.cloud.dropped")
    assert dropped is not None and dropped.get("msg") == "CURRENT-STATE"


async def test_link_faults_are_reported_to_the_other_sinks(
    world: World, device: DysonDevice
) -> None:
    """dersimn: nwcs/nwps/nwss go FAIL while the Internet link is down (dyson.md §4.3)."""
    host = DeviceHost(device, recorder=world.recorder)
    local = ListSink()
    host.add_sink(local)
    link = DysonCloudLink.for_gateway(host, world.gateway, backoff=FAST, report_link_faults=True)
    async with host, link:
        await link.wait_connected(TIMEOUT)
        await world.gateway.drop(SERIAL)
        raised = await world.recorder.wait_for("dyson.faults.changed", timeout=TIMEOUT)
        assert "module-warnings/nwcs" in raised.get("raised")
        cleared = await world.recorder.wait_for(
            "dyson.faults.changed", timeout=TIMEOUT, since=world.recorder.events.index(raised) + 1
        )
        assert "module-warnings/nwcs" in cleared.get("cleared")
    assert local.msgs().count("FAULTS-CHANGE") == 2


# Refusals: each attempt's outcome is an event with a stable reason, then a backoff


async def wait_refused(world: World, reason: str) -> None:
    event = await world.recorder.wait_for("dyson.cloud.connect", timeout=TIMEOUT, ok=False)
    assert event.reason == reason, event
    await world.recorder.wait_for("dyson.cloud.backoff", timeout=TIMEOUT)


async def test_an_unregistered_certificate_is_refused_after_connect(
    world: World, device: DysonDevice
) -> None:
    cert = world.pki.client_cert("not-registered")
    link = DysonCloudLink(
        device,
        endpoint=world.endpoint,
        port=world.gateway.mqtts_port,
        cert=cert,
        ca_file=world.pki.ca_file,
        backoff=FAST,
        recorder=world.recorder,
    )
    async with link:
        await wait_refused(world, "closed-before-connack")
    verdict = world.recorder.first("auth.verdict", stage="connect")
    assert verdict is not None and verdict.reason == "unknown-certificate"


async def test_a_gateway_it_does_not_trust_is_a_tls_failure(
    world: World, device: DysonDevice, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    link = DysonCloudLink(
        device,
        endpoint=world.endpoint,
        port=world.gateway.mqtts_port,
        ca_file=other,
        backoff=FAST,
        recorder=world.recorder,
    )
    async with link:
        await wait_refused(world, "tls-failed")


async def test_nothing_listening_is_unreachable(world: World, device: DysonDevice) -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    link = DysonCloudLink(
        device,
        endpoint=world.endpoint,
        port=port,
        ca_file=world.pki.ca_file,
        backoff=FAST,
        recorder=world.recorder,
    )
    async with link:
        await wait_refused(world, "unreachable")


async def test_a_policy_without_the_subscription_closes_the_connection(
    world: World, device: DysonDevice
) -> None:
    """AWS closes a connection on a forbidden SUBSCRIBE (aws-iot.md §4.5)."""
    cert = world.pki.client_cert(SERIAL)
    policy = json.loads(thing_policy(region=REGION, account_id=ACCOUNT, topics=TOPICS))
    policy["Statement"] = [s for s in policy["Statement"] if s["Action"] != "iot:Subscribe"]
    world.gateway.register_thing(SERIAL, cert.cert_pem, policies=(json.dumps(policy),))
    link = DysonCloudLink(
        device,
        endpoint=world.endpoint,
        port=world.gateway.mqtts_port,
        cert=cert,
        ca_file=world.pki.ca_file,
        backoff=FAST,
        recorder=world.recorder,
    )
    async with link:
        await wait_refused(world, "closed-before-suback")


# Against a scripted server: what the gateway never does


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(world: World, script: Script) -> AsyncIterator[int]:
    context = world.pki.server_context(world.endpoint, "127.0.0.1")
    server = await asyncio.start_server(script, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def scripted_link(world: World, device: DysonDevice, port: int, **options: Any) -> DysonCloudLink:
    options.setdefault("backoff", Backoff(initial_s=5 * TIMEOUT, max_s=5 * TIMEOUT))
    return DysonCloudLink(
        device,
        endpoint=world.endpoint,
        port=port,
        ca_file=world.pki.ca_file,
        recorder=world.recorder,
        **options,
    )


async def read_packets(reader: asyncio.StreamReader, count: int) -> list[Any]:
    decoder, packets = StreamDecoder(), list[Any]()
    while len(packets) < count:
        data = await reader.read(65536)
        if not data:
            break
        packets += [p for p, _ in decoder.feed(data)]
    return packets


async def accept_and_go_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_packets(reader, 1)
    writer.write(encode(Connack()))
    await read_packets(reader, 1)
    writer.write(encode(Suback(1, (1,))))
    await read_packets(reader, 10)  # the HELLO, PINGREQs... never answered


async def test_an_unanswered_ping_ends_the_connection(world: World, device: DysonDevice) -> None:
    async with scripted(world, accept_and_go_silent) as port:
        link = scripted_link(world, device, port, keep_alive=1)
        async with link:
            lost = await world.recorder.wait_for("dyson.cloud.disconnected", timeout=3 * TIMEOUT)
            assert lost.reason == "keepalive-timeout"


async def test_a_refused_connack_and_garbage_are_recorded(
    world: World, device: DysonDevice
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packets(reader, 1)
        writer.write(encode(Connack(return_code=5)))
        await writer.drain()

    async with scripted(world, refuse) as port, scripted_link(world, device, port):
        await wait_refused(world, "connack-refused")

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packets(reader, 1)
        writer.write(b"\xf0\x00")  # reserved packet type 15
        await writer.drain()

    since = len(world.recorder)
    async with scripted(world, garbage) as port, scripted_link(world, device, port):
        event = await world.recorder.wait_for(
            "dyson.cloud.connect", timeout=TIMEOUT, since=since, ok=False
        )
        assert event.reason == "protocol-error"


async def test_a_server_that_never_answers_times_out(world: World, device: DysonDevice) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packets(reader, 10)

    async with (
        scripted(world, mute) as port,
        scripted_link(world, device, port, connect_timeout=0.2),
    ):
        await wait_refused(world, "timeout")


async def test_commands_before_the_suback_are_kept(world: World, device: DysonDevice) -> None:
    """A command that overtakes the SUBACK is still answered once the link is up."""
    answered: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    async def eager(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packets(reader, 1)
        writer.write(encode(Connack()))
        await read_packets(reader, 1)
        request = command("REQUEST-CURRENT-STATE")
        writer.write(encode(Publish(TOPICS.command, request, qos=1, packet_id=7)))
        writer.write(encode(Suback(1, (1,))))
        answered.set_result(await read_packets(reader, 4))
        writer.close()

    async with scripted(world, eager) as port, scripted_link(world, device, port):
        packets = await asyncio.wait_for(answered, TIMEOUT)
    described = [
        json.loads(p.payload)["msg"] if isinstance(p, Publish) else type(p).__name__
        for p in packets
    ]
    assert described == ["HELLO", "Puback", "CURRENT-STATE", "ENVIRONMENTAL-CURRENT-SENSOR-DATA"]


# Whatever a server sends, the link records why and never crashes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WorldPKI:
    return WorldPKI(tmp_path_factory.mktemp("pki"))


LOST_REASONS = {"connection-lost", "protocol-error", "closed-before-suback"}


def link_ended(event: Event) -> bool:
    """The connection ended: after it was up, or while the SUBACK was awaited (garbage in
    the same read as the SUBACK makes the whole read undecodable)."""
    return event.kind == "dyson.cloud.disconnected" or (
        event.kind == "dyson.cloud.connect" and event.ok is False
    )


async def link_against(pki: WorldPKI, tail: bytes) -> list[Event]:
    """A server that accepts the link, then sends ``tail`` and closes; the link's events."""
    recorder = Recorder()
    sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packets(reader, 1)
        writer.write(encode(Connack()))
        await read_packets(reader, 1)
        writer.write(encode(Suback(1, (1,))) + tail)
        await writer.drain()
        writer.close()
        sent.set()

    server = await asyncio.start_server(
        script, "127.0.0.1", 0, ssl=pki.server_context("fuzz.example", "127.0.0.1")
    )
    device = DysonDevice(get_profile(ROOT), serial=SERIAL, now=recorder.clock.now())
    link = DysonCloudLink(
        device,
        endpoint="fuzz.example",
        port=server.sockets[0].getsockname()[1],
        ca_file=pki.ca_file,
        recorder=recorder,
        backoff=Backoff(initial_s=10 * TIMEOUT, max_s=10 * TIMEOUT),
    )
    try:
        async with link:
            await recorder.wait_for(timeout=TIMEOUT, predicate=link_ended)
    finally:
        server.close()
    return recorder.events


@settings(max_examples=25, deadline=None)
@given(tail=st.binary(max_size=200))
def test_any_bytes_after_suback_end_in_a_recorded_disconnect(pki: WorldPKI, tail: bytes) -> None:
    events = asyncio.run(link_against(pki, tail))
    lost = [e for e in events if link_ended(e)]
    assert lost and lost[0].reason in LOST_REASONS
    assert not [e for e in events if e.kind in ("dyson.cloud.error", "dyson.host.error")]


@pytest.mark.parametrize(
    "tail",
    [
        encode(Publish(TOPICS.command, b"{", qos=0)),
        encode(
            Publish("438/ELSEWHERE-EU-AAAAAAAA/command", b'{"msg":"LOCATE"}', qos=1, packet_id=9)
        ),
        encode(
            Publish(
                TOPICS.command, b'{"msg":"STATE-SET","data":{"fnsp":"9999"}}', qos=2, packet_id=3
            )
        ),
        encode(Publish(TOPICS.command, b"\xff\xfe", qos=0)),
    ],
)
async def test_odd_commands_are_ignored_and_recorded(pki: WorldPKI, tail: bytes) -> None:
    events = await link_against(pki, tail)
    ignored = [e for e in events if e.kind == "dyson.command.ignored"]
    assert len(ignored) == 1 and ignored[0].get("via") == "cloud"
    assert ignored[0].reason in {"malformed-json", "wrong-topic", "invalid-value", "not-utf8"}
