"""The Dyson device's own MQTT broker over real loopback sockets (dyson.md §1).

Three kinds of client: :class:`Wire`, a raw MQTT client built on the harness codec, shows
what is on the wire (the CONNACK byte, a TCP RST, a SUBSCRIBE left without SUBACK);
:class:`LocalPaho`, a paho-mqtt 2.x client on plain TCP, shows what a real client reports;
libdyson-neon, unmodified, connects to ``<serial>.local`` port 1883 through the resolver
override (its ``connect(host)`` hard-codes paho's default port 1883). Every wait is
bounded by ``tests.timing.TIMEOUT``; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from harness.clock import WorldClock
from harness.events import Recorder
from harness.gateway.session import MqttPump
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    StreamDecoder,
    Suback,
    Subscribe,
    encode,
)
from harness.mqtt.rules import DisconnectReason
from harness.resolver import Route, override
from simulators.dyson.device import DeviceResult, DysonDevice
from simulators.dyson.host import DeviceHost
from simulators.dyson.local_auth import ap_password_hash
from simulators.dyson.local_broker import DysonLocalBroker, DysonRules, SessionTable
from simulators.dyson.messages import Outgoing
from simulators.dyson.profiles import get_profile
from simulators.dyson.quirks import LocalQuirks, SynFragile
from tests.timing import TIMEOUT

SERIAL = "NK6-EU-HAA0000A"
PASSWORD = ap_password_hash("abcdefgh")
#: Quirks that get in the way of tests about something else.
QUIET = LocalQuirks(stale_session_rst=False, session_cap=None)
#: Raw connections a test opened; :func:`running` closes those the test left open.
_WIRES: list[Wire] = []


@contextlib.asynccontextmanager
async def running(
    profile: str = "438M", *, quirks: LocalQuirks = QUIET, **options: Any
) -> AsyncIterator[DysonLocalBroker]:
    clock = WorldClock()
    device = DysonDevice(get_profile(profile), serial=SERIAL, now=clock.now(), uptime_s=3600)
    async with DysonLocalBroker(
        device, password=PASSWORD, quirks=quirks, recorder=Recorder(clock=clock), **options
    ) as broker:
        try:
            yield broker
        finally:
            while _WIRES:
                await _WIRES.pop().close()


def command(msg: str, **fields: Any) -> bytes:
    return json.dumps({"msg": msg, "time": "2025-07-21T18:58:52Z", **fields}).encode()


class Wire:
    """One raw MQTT connection over TCP; a reset shows as ``ConnectionResetError``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = StreamDecoder()
        self._pending: list[Packet] = []
        self.skipped: list[Packet] = []

    @classmethod
    async def open(cls, broker: DysonLocalBroker) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        opened = cls(reader, writer)
        _WIRES.append(opened)
        return opened

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet))

    async def next(self, timeout: float = TIMEOUT) -> Packet | None:
        """The next packet from the broker; ``None`` once it closed the connection."""
        while not self._pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self._pending += [packet for packet, _raw in self._decoder.feed(data)]
        return self._pending.pop(0)

    async def publishes(self, count: int) -> list[Publish]:
        """The next ``count`` PUBLISH packets; other packets go to :attr:`skipped`."""
        got: list[Publish] = []
        while len(got) < count:
            packet = await self.next()
            assert packet is not None, f"closed after {len(got)} of {count} publishes"
            if isinstance(packet, Publish):
                got.append(packet)
            else:
                self.skipped.append(packet)
        return got

    async def connect(
        self,
        client_id: str = "wire",
        *,
        level: int = 4,
        username: str | None = SERIAL,
        password: str | None = PASSWORD,
        keep_alive: int = 60,
    ) -> Packet | None:
        self.send(
            Connect(
                client_id=client_id,
                protocol_level=level,
                keep_alive=keep_alive,
                username=username,
                password=None if password is None else password.encode(),
            )
        )
        return await self.next()

    async def subscribe(self, *filters: str, packet_id: int = 1) -> Packet | None:
        self.send(Subscribe(packet_id, tuple((f, 0) for f in filters)))
        return await self.next()

    def vanish(self) -> None:
        """Go away without DISCONNECT, as a killed client does (a TCP reset)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        with contextlib.suppress(ValueError):
            _WIRES.remove(self)


@contextlib.asynccontextmanager
async def wire(broker: DysonLocalBroker, client_id: str = "wire") -> AsyncIterator[Wire]:
    """A raw client connected (CONNACK 0) as ``client_id``; it says DISCONNECT at the end."""
    client = await Wire.open(broker)
    try:
        assert await client.connect(client_id) == Connack(return_code=0)
        yield client
    finally:
        if not client.writer.is_closing():
            client.send(Disconnect())
        await client.close()


async def _drain(client: Wire) -> None:
    while await client.next() is not None:
        pass


async def expect_reset(client: Wire) -> None:
    with pytest.raises(ConnectionResetError):
        await _drain(client)


@dataclass(frozen=True)
class Happened:
    what: str
    rc: Any = None
    topic: str | None = None
    payload: bytes | None = None


class LocalPaho:
    """paho-mqtt 2.x on plain TCP, as local Dyson clients use it (dyson.md §1.1)."""

    def __init__(
        self,
        client_id: str = "",
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv31,
        password: str = PASSWORD,
    ) -> None:
        self.events: queue.Queue[Happened] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(SERIAL, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p=None: self._put("connect", rc)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p=None: self._put("disconnect", rc)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p=None: self._put(
            "subscribe", [int(r.value) for r in rcs]
        )
        self.client.on_message = lambda _c, _u, msg: self.events.put(
            Happened("message", topic=msg.topic, payload=bytes(msg.payload))
        )

    def _put(self, what: str, rc: Any) -> None:
        self.events.put(Happened(what, rc=rc))

    async def connect(self, port: int) -> None:
        try:
            await asyncio.to_thread(self.client.connect, "127.0.0.1", port, 60)
        except OSError as exc:  # a reset during connect() is what some tests look at
            self.events.put(Happened("error", rc=exc))
            return
        self.client.loop_start()

    async def next(self, *kinds: str) -> Happened:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"paho: no {kinds} within {TIMEOUT}s")
            try:
                event = await asyncio.to_thread(self.events.get, True, min(remaining, 0.25))
            except queue.Empty:
                continue
            if not kinds or event.what in kinds:
                return event

    async def close(self) -> None:
        await asyncio.to_thread(self.client.disconnect)
        self.client.loop_stop()
        sock = self.client.socket()  # left open when connect() itself saw the reset
        if sock is not None:
            sock.close()


# Transport, versions, credentials (dyson.md §1.1, §1.2)


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv31, MQTTProtocolVersion.MQTTv311], ids=["3.1", "3.1.1"]
)
async def test_paho_connects_with_serial_and_password_and_gets_the_state(
    protocol: MQTTProtocolVersion,
) -> None:
    async with running() as broker:
        client = LocalPaho("paho-local", protocol=protocol)
        await client.connect(broker.port)
        try:
            assert (await client.next("connect")).rc == 0
            topics = broker.device.topics
            client.client.subscribe(topics.current)
            assert (await client.next("subscribe")).rc == [0]
            client.client.publish(topics.command, command("REQUEST-CURRENT-STATE"))
            message = await client.next("message")
            assert message.topic == topics.current
            assert message.payload is not None
            state = json.loads(message.payload)
            assert state["msg"] == "CURRENT-STATE"
            assert state["product-state"] == broker.device.state
        finally:
            await client.close()
        level = 3 if protocol is MQTTProtocolVersion.MQTTv31 else 4
        verdict = await broker.recorder.wait_for("auth.verdict", timeout=TIMEOUT)
        assert (verdict.ok, verdict.get("stage")) == (True, "dyson-local")
        assert broker.recorder.first("mqtt.in", packet="CONNECT", protocol_level=level)


async def test_wrong_password_gets_connack_5_never_4() -> None:
    async with running() as broker:
        client = await Wire.open(broker)
        assert await client.connect(password=ap_password_hash("wrong")) == Connack(return_code=5)
        assert await client.next() is None  # then the device closes
        verdict = await broker.recorder.wait_for("auth.verdict", timeout=TIMEOUT)
        assert (verdict.ok, verdict.reason) == (False, "bad-password")
        assert verdict.get("return_code") == 5
        for username, password in [("VS6-EU-HJA1234A", PASSWORD), (SERIAL, None), (None, None)]:
            other = await Wire.open(broker)
            reply = await other.connect(level=3, username=username, password=password)
            assert reply == Connack(return_code=5)
            await other.close()
        assert PASSWORD not in "\n".join(str(e) for e in broker.recorder)
        paho = LocalPaho("wrong", password="still-encrypted-credential")
        await paho.connect(broker.port)
        try:
            assert (await paho.next("connect")).rc == "Not authorized"  # paho's name for rc 5
        finally:
            await paho.close()


async def test_unsupported_protocol_levels_get_connack_1() -> None:
    async with running(protocol_levels=frozenset({3})) as broker:  # a robot (dyson.md §1.1)
        client = await Wire.open(broker)
        assert await client.connect(level=4) == Connack(return_code=1)
        assert await client.next() is None
        verdict = await broker.recorder.wait_for("auth.verdict", timeout=TIMEOUT)
        assert verdict.reason == "unsupported-protocol"
    async with running() as broker:  # MQTT 5 on a fan: CONNACK 1 (MQTT 3.1.1 §3.1.2.2)
        client = await Wire.open(broker)
        raw = bytearray(encode(Connect(client_id="five", username=SERIAL, password=b"x")))
        raw[raw.index(b"MQTT") + 4] = 5
        client.writer.write(bytes(raw))
        assert await client.next() == Connack(return_code=1)
        assert await client.next() is None
        assert broker.recorder.first("mqtt.malformed", reason="bad-protocol-level")


async def test_strict_client_id_refuses_long_mqtt31_ids() -> None:
    long_id = "x" * 24
    async with running() as broker:
        client = await Wire.open(broker)
        assert await client.connect(long_id, level=3) == Connack(return_code=0)
        await client.close()
    async with running(quirks=replace(QUIET, strict_client_id=True)) as broker:
        client = await Wire.open(broker)
        assert await client.connect(long_id, level=3) == Connack(return_code=2)
        assert broker.recorder.first("dyson.local.quirk", quirk="strict_client_id")
        other = await Wire.open(broker)
        assert await other.connect(long_id, level=4) == Connack(return_code=0)  # 3.1.1: fine
        await other.close()


# The device behind the broker (dyson.md §2, §4.4)


async def test_state_set_answers_one_state_change_at_every_qos() -> None:
    async with running() as broker:
        topics = broker.device.topics
        async with wire(broker) as client, wire(broker, "watcher") as watcher:
            assert await client.subscribe(f"{topics.prefix}#") == Suback(1, (0,))
            assert await watcher.subscribe(topics.current) == Suback(1, (0,))
            speeds = {0: "0003", 1: "0004", 2: "0006"}
            for qos, speed in speeds.items():
                packet_id = None if qos == 0 else 10 + qos
                payload = command("STATE-SET", data={"fnsp": speed}, **{"mode-reason": "LAPP"})
                client.send(Publish(topics.command, payload, qos=qos, packet_id=packet_id))
                if qos == 1:
                    assert await client.next() == Puback(11)
                if qos == 2:
                    assert await client.next() == Pubrec(12)
                    client.send(Pubrel(12))
                # <root>/<sn>/# sees the command too, in no particular order.
                got = {p.topic: p for p in await client.publishes(2)}
                assert set(got) == {topics.command, topics.current}
                change = got[topics.current]
                if qos == 2 and Pubcomp(12) not in client.skipped:
                    assert await client.next() == Pubcomp(12)
                message = json.loads(change.payload)
                assert message["msg"] == "STATE-CHANGE"
                assert message["product-state"]["fnsp"][1] == speed
                (seen,) = await watcher.publishes(1)
                assert seen.payload == change.payload
        handled = broker.recorder.find("dyson.command", msg="STATE-SET")
        assert [e.get("via") for e in handled] == ["local"] * 3
        assert broker.device.state["fnsp"] == "0006"


async def test_device_messages_reach_status_subscribers_only_on_their_topics() -> None:
    async with running("527") as broker:
        topics = broker.device.topics
        async with wire(broker) as client:
            client.send(Subscribe(1, ((topics.faults, 0), (topics.current, 0))))
            assert await client.next() == Suback(1, (0, 0))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-FAULTS")))
            (faults,) = await client.publishes(1)
            assert (faults.topic, json.loads(faults.payload)["msg"]) == (
                topics.faults,
                "CURRENT-FAULTS",
            )
            client.send(Publish(topics.command, b"not json"))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-STATE")))
            (state, *_rest) = await client.publishes(1)
            assert json.loads(state.payload)["msg"] == "CURRENT-STATE"
        ignored = await broker.recorder.wait_for("dyson.command.ignored", timeout=TIMEOUT)
        assert ignored.reason == "malformed-json"
        hello = broker.recorder.first("dyson.local.publish", msg="HELLO")
        assert hello is not None and hello.get("topic") == topics.connection


async def test_a_device_owner_runs_the_device_and_the_broker_is_its_sink() -> None:
    clock = WorldClock()
    device = DysonDevice(get_profile("438"), serial=SERIAL, now=clock.now())

    class Owner:
        """Stands in for the cloud link's DeviceHost."""

        def __init__(self) -> None:
            self.device = device
            self.sinks: list[Any] = []
            self.via: list[str | None] = []

        def handle(self, topic: str, payload: bytes, *, via: str | None = None) -> DeviceResult:
            self.via.append(via)
            result = device.handle(topic, payload, now=clock.now())
            for message in result.outgoing:
                for sink in self.sinks:
                    sink.publish(message)
            return result

        def add_sink(self, sink: Any) -> Callable[[], None]:
            self.sinks.append(sink)
            return lambda: self.sinks.remove(sink)

    owner = Owner()
    recorder = Recorder(clock=clock)
    async with DysonLocalBroker(owner, password=PASSWORD, recorder=recorder) as broker:
        assert owner.sinks == [broker] and broker.name == "local"
        async with wire(broker) as client:
            await client.subscribe(device.topics.current)
            client.send(Publish(device.topics.command, command("REQUEST-CURRENT-STATE")))
            (state,) = await client.publishes(1)
            assert json.loads(state.payload)["msg"] == "CURRENT-STATE"
            broker.publish(Outgoing(device.topics.current, b'{"msg":"LOCATION"}'))
            (pushed,) = await client.publishes(1)
            assert pushed.payload == b'{"msg":"LOCATION"}'
    assert owner.via == ["local"] and owner.sinks == []
    assert recorder.first("dyson.command") is None  # the owner records the device's events


async def test_a_device_host_shares_the_device_between_its_sinks() -> None:
    """With the cloud link's DeviceHost, what the device does reaches every sink."""
    clock = WorldClock()
    recorder = Recorder(clock=clock)
    device = DysonDevice(get_profile("527"), serial=SERIAL, now=clock.now())
    host = DeviceHost(device, recorder=recorder, clock=clock)
    other: list[Outgoing] = []

    class OtherSink:
        name = "cloud"

        def publish(self, message: Outgoing) -> None:
            other.append(message)

    host.add_sink(OtherSink())
    async with (
        host,
        DysonLocalBroker(host, password=PASSWORD, recorder=recorder) as broker,
        wire(broker) as client,
    ):
        assert broker.owner is host and broker in host.sinks
        await client.subscribe(device.topics.faults)
        host.run(lambda now: device.raise_fault("fltr", now=now))  # a harness control
        (change,) = await client.publishes(1)
        assert json.loads(change.payload)["msg"] == "FAULTS-CHANGE"
        client.send(Publish(device.topics.command, command("REQUEST-CURRENT-FAULTS")))
        (faults,) = await client.publishes(1)
        assert json.loads(faults.payload)["msg"] == "CURRENT-FAULTS"
    assert [m.msg for m in other] == ["FAULTS-CHANGE", "CURRENT-FAULTS"]
    assert broker not in host.sinks
    handled = recorder.first("dyson.command", msg="REQUEST-CURRENT-FAULTS")
    assert handled is not None and handled.get("via") == "local"


async def test_a_bare_device_runs_its_timers() -> None:
    clock = WorldClock()
    device = DysonDevice(
        get_profile("438M"), serial=SERIAL, now=clock.now(), env_push_interval_s=0.05
    )
    recorder = Recorder(clock=clock)
    async with (
        DysonLocalBroker(device, password=PASSWORD, recorder=recorder) as broker,
        wire(broker) as client,
    ):
        await client.subscribe(device.topics.current)
        (pushed,) = await client.publishes(1)  # unprompted, by device.tick
        assert json.loads(pushed.payload)["msg"] == "ENVIRONMENTAL-CURRENT-SENSOR-DATA"


# Quirks (dyson.md §1.4, field-bugs.md)


async def test_stale_session_rst_resets_the_same_id_until_the_window_ends() -> None:
    quirks = LocalQuirks(session_cap=None, stale_window_s=0.3)
    async with running(quirks=quirks) as broker:
        first = await Wire.open(broker)
        assert await first.connect("stable") == Connack(return_code=0)
        first.vanish()
        stale = await broker.recorder.wait_for("dyson.local.stale", timeout=TIMEOUT)
        assert "stable" in broker.stale_sessions
        again = await Wire.open(broker)
        again.send(Connect(client_id="stable", username=SERIAL, password=PASSWORD.encode()))
        await expect_reset(again)
        fired = await broker.recorder.wait_for(
            "dyson.local.quirk", timeout=TIMEOUT, quirk="stale_session_rst"
        )
        assert "FB-07" in fired.get("explain")
        async with wire(broker, "random-id"):  # another id is fine (hass-dyson's retry)
            pass
        paho = LocalPaho("stable")
        await paho.connect(broker.port)
        try:
            reported = await paho.next("connect", "disconnect", "error")
            assert reported.what in ("disconnect", "error")  # no CONNACK, a lost connection
        finally:
            await paho.close()
        await broker.recorder.wait_for(
            "dyson.local.stale.ended", timeout=TIMEOUT, client_id="stable"
        )
        assert stale.get("until") is not None and broker.stale_sessions == {}
        async with wire(broker, "stable"):  # after the window: a normal CONNECT
            pass


async def test_device_initiated_closes_and_disconnects_leave_no_stale_session() -> None:
    async with running(quirks=LocalQuirks(session_cap=None)) as broker:
        async with wire(broker, "polite") as client:
            client.send(Disconnect())
            assert await client.next() is None
        async with wire(broker, "polite"):
            pass
        client = await Wire.open(broker)
        assert await client.connect("reset-by-device") == Connack(return_code=0)
        assert await broker.reset_all() == 1
        await expect_reset(client)
        async with wire(broker, "reset-by-device"):
            pass
        assert broker.recorder.first("dyson.local.stale") is None


async def test_session_cap_counts_stale_sessions() -> None:
    quirks = LocalQuirks(stale_session_rst=False, session_cap=2)
    async with running(quirks=quirks) as broker, wire(broker, "one"):
        gone = await Wire.open(broker)
        assert await gone.connect("two") == Connack(return_code=0)
        gone.vanish()
        await broker.recorder.wait_for("dyson.local.stale", timeout=TIMEOUT)
        assert broker.sessions == ("one",) and set(broker.stale_sessions) == {"two"}
        third = await Wire.open(broker)
        assert await third.connect("three") is None  # closed, no CONNACK (paho: rc 7)
        fired = await broker.recorder.wait_for(
            "dyson.local.quirk", timeout=TIMEOUT, quirk="session_cap"
        )
        assert "1 live and 1 stale" in fired.get("explain")
        async with wire(broker, "two"):  # a stable id takes its own stale slot back (FB-06)
            assert broker.stale_sessions == {}
        paho = LocalPaho("random-1")
        broker.set_quirks(replace(quirks, session_cap=1, session_cap_connack=True))
        await paho.connect(broker.port)
        try:
            assert (await paho.next("connect")).rc == 0  # CONNACK first, then the close
            assert (await paho.next("disconnect")).rc != 0
        finally:
            await paho.close()


async def test_foreign_subscribe_is_dropped_without_suback_after_the_delay() -> None:
    async with running(quirks=replace(QUIET, foreign_drop_delay_ms=20)) as broker:
        client = await Wire.open(broker)
        assert await client.connect("ha-dyson") == Connack(return_code=0)
        wrong = f"438/{SERIAL}/status/current"  # a TP11 is 438M (field-bugs.md FB-11)
        assert await client.subscribe(wrong) is None
        subscribed = broker.recorder.first("mqtt.in", packet="SUBSCRIBE")
        closed = await broker.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
        assert subscribed is not None and closed.t - subscribed.t >= 0.019
        assert closed.reason == "FORBIDDEN_ACCESS"
        fired = broker.recorder.first("dyson.local.quirk", quirk="foreign_subscribe_drop")
        assert fired is not None and fired.get("topics") == [wrong]
        paho = LocalPaho("ha-dyson")  # same id at once: nothing stale, accepted, dropped again
        await paho.connect(broker.port)
        try:
            assert (await paho.next("connect")).rc == 0
            paho.client.subscribe(wrong)
            assert (await paho.next("disconnect", "subscribe")).what == "disconnect"
        finally:
            await paho.close()
        async with wire(broker, "right-root") as right:
            assert await right.subscribe(broker.device.topics.current) == Suback(1, (0,))
    textbook = replace(QUIET, foreign_subscribe_drop=False)
    async with running(quirks=textbook) as broker, wire(broker) as client:
        assert await client.subscribe(f"438/{SERIAL}/status/current") == Suback(1, (0,))


async def test_hash_wildcard_modes() -> None:
    async with running(quirks=replace(QUIET, hash_wildcard="silent")) as broker:
        topics = broker.device.topics
        async with wire(broker) as client:
            assert await client.subscribe("#", topics.faults) == Suback(1, (0, 0))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-STATE")))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-FAULTS")))
            # Device messages leave in order: the faults answer comes last, so anything
            # '#' delivered would have arrived before it.
            (first,) = await client.publishes(1)
            assert first.topic == topics.faults
            assert await client.subscribe("#", packet_id=2) == Suback(2, (0,))  # local only
    refuse = replace(QUIET, hash_wildcard="refuse")
    async with running(quirks=refuse) as broker, wire(broker) as client:
        codes = await client.subscribe(broker.device.topics.current, "#")
        assert codes == Suback(1, (0, 0x80))
    drop = replace(QUIET, hash_wildcard="drop")
    async with running(quirks=drop) as broker, wire(broker) as client:
        assert await client.subscribe("#") is None
        assert broker.recorder.first("dyson.local.quirk", quirk="hash_wildcard")
    async with running(quirks=replace(QUIET, hash_wildcard="deliver")) as broker:
        topics = broker.device.topics
        async with wire(broker) as client:
            assert await client.subscribe("#") == Suback(1, (0,))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-FAULTS")))
            got = {p.topic for p in await client.publishes(2)}
            assert got == {topics.command, topics.faults}


async def test_mute_device_accepts_but_never_answers() -> None:
    async with running(quirks=replace(QUIET, mute=True)) as broker:
        topics = broker.device.topics
        async with wire(broker) as client:
            assert await client.subscribe(topics.current) == Suback(1, (0,))
            client.send(Publish(topics.command, command("REQUEST-CURRENT-STATE")))
            await broker.recorder.wait_for("dyson.local.quirk", timeout=TIMEOUT, quirk="mute")
        assert broker.recorder.first("dyson.command") is None


async def test_duplicates_send_each_message_twice() -> None:
    async with running(quirks=replace(QUIET, duplicates=True)) as broker:
        topics = broker.device.topics
        async with wire(broker) as client:
            await client.subscribe(topics.faults)
            client.send(Publish(topics.command, command("REQUEST-CURRENT-FAULTS")))
            one, two = await client.publishes(2)
            assert one.payload == two.payload


async def test_keepalive_is_the_clients_own_times_one_and_a_half() -> None:
    async with running() as broker:
        client = await Wire.open(broker)
        assert await client.connect("sleepy", keep_alive=1) == Connack(return_code=0)
        keepalive = await broker.recorder.wait_for("mqtt.keepalive", timeout=TIMEOUT)
        assert (keepalive.get("effective"), keepalive.get("cut_after")) == (1, 1.5)
        client.send(Pingreq())
        assert await client.next() is not None  # PINGRESP
        closed = await broker.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
        assert closed.reason == "MQTT_KEEP_ALIVE_TIMEOUT"


# Fault hooks


async def test_go_offline_refuse_and_come_back() -> None:
    async with running() as broker:
        port = broker.port
        client = await Wire.open(broker)
        assert await client.connect() == Connack(return_code=0)
        await broker.go_offline(mode="refuse")
        await expect_reset(client)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await broker.come_back()
        assert broker.port == port
        async with wire(broker):
            pass


async def test_go_offline_blackhole_leaves_syns_unanswered() -> None:
    async with running() as broker:
        silent = await Wire.open(broker)
        assert await silent.connect("silent") == Connack(return_code=0)
        await broker.go_offline(mode="blackhole")
        silent.send(Pingreq())
        with pytest.raises(TimeoutError):
            await silent.next(timeout=TIMEOUT / 25)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", broker.port), TIMEOUT / 25)
        await broker.come_back()
        await expect_reset(silent)
        async with wire(broker, "silent"):
            pass


async def test_syn_fragile_stops_answering_after_a_burst() -> None:
    quirks = replace(QUIET, syn_fragile=SynFragile(attempts=2, window_s=10, pause_s=0.2))
    async with running(quirks=quirks) as broker:
        async with wire(broker, "a"), wire(broker, "b"):
            await broker.recorder.wait_for("dyson.local.offline", timeout=TIMEOUT)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", broker.port), TIMEOUT / 25
                )
        await broker.recorder.wait_for("dyson.local.online", timeout=TIMEOUT)
        async with wire(broker, "c"):
            pass


async def test_drop_one_connection_by_client_id() -> None:
    async with running() as broker:
        client = await Wire.open(broker)
        assert await client.connect("target") == Connack(return_code=0)
        assert await broker.drop("target")
        assert await client.next() is None
        assert not await broker.drop("nobody")


async def test_a_newer_connection_evicts_a_healthy_session_with_its_id() -> None:
    async with running() as broker:
        older = await Wire.open(broker)
        assert await older.connect("same") == Connack(return_code=0)
        async with wire(broker, "same"):
            assert await older.next() is None
        evicted = await broker.recorder.wait_for(
            "mqtt.close", timeout=TIMEOUT, reason="DUPLICATE_CLIENTID"
        )
        assert evicted.get("client_id") == "same"


# libdyson-neon, unmodified, over the resolver override (dyson.md §1.1)


@pytest.mark.interop
@pytest.mark.filterwarnings("ignore:Callback API version 1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("profile", ["438", "527", "438M"])
async def test_libdyson_neon_reads_and_drives_the_device(profile: str) -> None:
    libdyson = pytest.importorskip("libdyson")
    async with running(profile, quirks=LocalQuirks()) as broker:
        root = broker.device.topics.root
        lib: Any = libdyson.get_device(SERIAL, PASSWORD, root)  # "438M" passed as such
        updates: queue.Queue[object] = queue.Queue()
        lib.add_message_listener(updates.put)
        name = f"{SERIAL.lower()}.local"
        with override({name: Route("127.0.0.1", {1883: broker.port})}):
            await asyncio.to_thread(lib.connect, name)
            try:
                assert lib.is_connected
                assert lib.speed == _speed(broker.device.state["fnsp"])
                data = broker.device.sensor_data(broker.clock.now())
                assert lib.particulate_matter_10 == _reading(libdyson, data["p10r"], 1)
                if "tact" in data:  # a TP11 has no temperature sensor
                    assert lib.temperature == _reading(libdyson, data["tact"], 10)
                    assert lib.humidity == _reading(libdyson, data["hact"], 1)
                await asyncio.to_thread(lib.set_speed, 7)
                await _until(updates, lambda: lib.speed == 7)
                oscillating = lib.oscillation
                change = lib.disable_oscillation if oscillating else lib.enable_oscillation
                await asyncio.to_thread(change)
                await _until(updates, lambda: lib.oscillation is not oscillating)
            finally:
                await asyncio.to_thread(lib.disconnect)
        assert broker.device.state["fnsp"] == "0007"
        commands = [e.get("msg") for e in broker.recorder.find("dyson.command")]
        assert commands[:2] == [
            "REQUEST-CURRENT-STATE",
            "REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA",
        ]
        assert commands.count("STATE-SET") == 2


def _reading(libdyson: Any, value: str, divisor: int) -> float:
    """What libdyson reports for a sensor value (its OFF marker while the fan is off)."""
    if value == "OFF":
        return float(libdyson.const.ENVIRONMENTAL_OFF)
    return int(value) / divisor


def _speed(value: str) -> int | None:
    return None if value == "AUTO" else int(value)


async def _until(updates: queue.Queue[object], done: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not done():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError("libdyson never saw the change")
        with contextlib.suppress(queue.Empty):
            await asyncio.to_thread(updates.get, True, min(remaining, 0.25))


# Pure parts and robustness


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["live", "end", "stale", "forget"]),
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0, max_value=10),
        ),
        max_size=30,
    ),
    st.floats(min_value=0, max_value=20),
)
def test_session_table_counts_live_and_unexpired_stale_sessions(
    steps: list[tuple[str, str, float]], now: float
) -> None:
    table = SessionTable()
    pumps: dict[str, Any] = {}
    live: set[str] = set()
    stale: dict[str, float] = {}
    for action, client_id, until in steps:
        if action == "live":
            pumps[client_id] = table.live[client_id] = cast(MqttPump, object())
            live.add(client_id)
        elif action == "end" and client_id in pumps:
            table.end(client_id, pumps.pop(client_id))
            live.discard(client_id)
        elif action == "stale":
            table.leave_stale(client_id, until)
            stale[client_id] = until
        elif action == "forget":
            table.forget_stale(client_id)
            stale.pop(client_id, None)
    alive = {cid for cid, until in stale.items() if until > now}
    assert table.stale(now) == {cid: stale[cid] for cid in alive}
    assert table.count(now) == len(live | alive)
    assert table.count(now, besides="a") == len((live | alive) - {"a"})


class _Memory:
    peer = ("127.0.0.1", 1)

    def __init__(self) -> None:
        self.closed = False

    async def receive(self) -> bytes:
        return b""

    def send(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.binary(max_size=120)
    | st.lists(
        st.sampled_from(
            [
                encode(Publish(f"438M/{SERIAL}/command", b"{}", qos=2, packet_id=3)),
                encode(Pubrel(3)),
                encode(Subscribe(1, (("#", 1), (f"438M/{SERIAL}/#", 2)))),
                encode(Subscribe(2, (("elsewhere", 0),))),
                encode(Pingreq()),
                encode(Connack()),
            ]
        ),
        max_size=6,
    ).map(b"".join)
)
def test_dyson_pump_never_raises_on_any_client_bytes(garbage: bytes) -> None:
    asyncio.run(_feed_dyson_pump(garbage))


async def _feed_dyson_pump(garbage: bytes) -> None:
    async with running(quirks=LocalQuirks(foreign_drop_delay_ms=0)) as broker:
        transport = _Memory()
        pump = MqttPump(host=broker, conn_id="fuzz", transport=transport, rules=DysonRules(broker))
        await pump.feed(encode(Connect(client_id="fuzz", username=SERIAL, password=b"x")))
        pump = MqttPump(host=broker, conn_id="fuzz2", transport=transport, rules=DysonRules(broker))
        await pump.feed(encode(Connect(client_id="f", username=SERIAL, password=PASSWORD.encode())))
        for start in range(0, len(garbage), 7):
            await pump.feed(garbage[start : start + 7])
        await pump.close(DisconnectReason.CONNECTION_LOST, "test over")
        assert transport.closed
        assert broker.recorder.first("dyson.local.error") is None
        assert broker.recorder.first("gateway.error") is None
