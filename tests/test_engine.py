"""MQTT engines behind the gateway: amqtt in process and an external broker over TCP.

The engines only route; AWS's rules are the pump's (tests/test_gateway_mqtt.py). These
tests pin what the pump relies on: a link carries a 3.1.1 byte stream both ways and ends
cleanly, the gateway can publish as AWS itself, and engine URLs are checked as config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from amqtt.session import Session
from hypothesis import given
from hypothesis import strategies as st
from transitions import MachineError

from harness.engine import AmqttEngine, EngineLink, ExternalEngine, engine_from_url
from harness.engine.amqtt_engine import _LightSession
from harness.errors import ConfigError
from harness.gateway.session import ENGINE_USERNAME
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Puback,
    Publish,
    StreamDecoder,
    Suback,
    Subscribe,
    Will,
    encode,
)
from tests.timing import TIMEOUT

# engine_from_url


def test_default_engine_is_amqtt() -> None:
    assert isinstance(engine_from_url(None), AmqttEngine)
    assert isinstance(engine_from_url("amqtt"), AmqttEngine)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("mqtt://127.0.0.1:18830", "127.0.0.1", 18830),
        ("mqtt://broker.local", "broker.local", 1883),
        ("mqtt://[::1]:1884", "::1", 1884),
        ("mqtt://broker/", "broker", 1883),
    ],
)
def test_mqtt_url_is_an_external_engine(url: str, host: str, port: int) -> None:
    engine = engine_from_url(url)
    assert isinstance(engine, ExternalEngine)
    assert (engine.host, engine.port) == (host, port)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "AMQTT",
        "mosquitto",
        "http://127.0.0.1:1883",
        "mqtts://127.0.0.1:8883",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://host:99999",
        "mqtt://host:port",
        "mqtt://host/topic",
        "mqtt://host?x=1",
        "mqtt://host#frag",
        "mqtt://[::1",
    ],
)
def test_bad_engine_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="mqtt://host:port"):
        engine_from_url(url)


def test_engine_url_credentials_are_refused_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        engine_from_url("mqtt://user:hunter2@broker:1883")
    assert "hunter2" not in str(info.value)
    assert "credentials" in str(info.value)
    with pytest.raises(ConfigError) as info:
        engine_from_url("ftp://user:hunter2@broker:1883")
    assert "hunter2" not in str(info.value)


@given(st.text(max_size=60) | st.from_regex(r"mqtt://[^\s]{0,40}", fullmatch=True))
def test_engine_from_url_is_total(url: str) -> None:
    """Any string is an engine or a ConfigError, never another exception."""
    with contextlib.suppress(ConfigError):
        engine = engine_from_url(url)
        assert isinstance(engine, AmqttEngine | ExternalEngine)


# A client on a link


class LinkClient:
    """Speaks MQTT over an :class:`EngineLink` as the pump does."""

    def __init__(self, link: EngineLink) -> None:
        self.link = link
        self._decoder = StreamDecoder()
        self._pending: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        for packet in packets:
            self.link.write(encode(packet))

    async def receive(self) -> Packet | None:
        while not self._pending:
            data = await asyncio.wait_for(self.link.read(), TIMEOUT)
            if not data:
                return None
            self._pending.extend(packet for packet, _ in self._decoder.feed(data))
        return self._pending.pop(0)

    async def connect(self, client_id: str, **fields: Any) -> Packet | None:
        self.send(Connect(client_id=client_id, keep_alive=0, **fields))
        return await self.receive()


@pytest.fixture
async def amqtt() -> AsyncIterator[AmqttEngine]:
    engine = AmqttEngine()
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def named(engine: AmqttEngine, client_id: str, *, clean_session: bool = True) -> LinkClient:
    """A client on a new link, named as the gateway names its sessions."""
    client = LinkClient(await engine.connect(peer=("127.0.0.1", 40000)))
    connack = await client.connect(client_id, username=ENGINE_USERNAME, clean_session=clean_session)
    assert connack == Connack()
    return client


# AmqttEngine


async def test_amqtt_link_lifecycle(amqtt: AmqttEngine) -> None:
    subscriber = await named(amqtt, "sub")
    subscriber.send(Subscribe(1, (("a/#", 1),)))
    assert await subscriber.receive() == Suback(1, (1,))
    publisher = await named(amqtt, "pub")
    publisher.send(Publish("a/b", b"hi", qos=1, packet_id=7))
    assert await publisher.receive() == Puback(7)
    delivered = await subscriber.receive()
    assert isinstance(delivered, Publish)
    assert (delivered.topic, delivered.payload, delivered.retain) == ("a/b", b"hi", False)
    assert len(amqtt._links) == 2
    # Closing a link ends amqtt's session for it: the link reads EOF and is forgotten.
    await publisher.link.close()
    assert await publisher.receive() is None
    assert len(amqtt._links) == 1


async def test_amqtt_refuses_anonymous_sessions(amqtt: AmqttEngine) -> None:
    """The gateway names every session (ENGINE_USERNAME): amqtt keeps cleanSession-0
    sessions only for named clients, so an unnamed CONNECT is refused."""
    client = LinkClient(await amqtt.connect(peer=("127.0.0.1", 40001)))
    connack = await client.connect("anonymous")
    assert isinstance(connack, Connack) and connack.return_code != 0


async def test_amqtt_system_publish_reaches_aws_topic_subscribers(amqtt: AmqttEngine) -> None:
    watcher = await named(amqtt, "watcher")
    watcher.send(Subscribe(1, (("$aws/events/presence/+/+", 1),)))
    assert await watcher.receive() == Suback(1, (1,))
    await amqtt.publish_system("$aws/events/presence/connected/dev", b"{}")
    message = await watcher.receive()
    assert isinstance(message, Publish)
    assert (message.topic, message.qos) == ("$aws/events/presence/connected/dev", 0)


async def test_amqtt_delivers_at_the_subscription_qos_known_deviation(
    amqtt: AmqttEngine,
) -> None:
    """amqtt 0.12.1 sends a QoS 0 publish to a QoS 1 subscriber as QoS 1 (MQTT says the
    lower of the two). Documented in harness.engine.amqtt_engine; if this starts failing,
    amqtt was fixed: update that docstring."""
    subscriber = await named(amqtt, "sub0")
    subscriber.send(Subscribe(1, (("q/#", 1),)))
    assert await subscriber.receive() == Suback(1, (1,))
    publisher = await named(amqtt, "pub0")
    publisher.send(Publish("q/zero", b"x", qos=0))
    delivered = await subscriber.receive()
    assert isinstance(delivered, Publish) and delivered.qos == 1


async def test_amqtt_queued_messages_are_not_flagged_retained(amqtt: AmqttEngine) -> None:
    """Messages queued for an offline persistent session arrive with RETAIN clear."""
    away = await named(amqtt, "away", clean_session=False)
    away.send(Subscribe(1, (("jobs/#", 1),)))
    assert await away.receive() == Suback(1, (1,))
    await away.link.close()
    publisher = await named(amqtt, "boss")
    publisher.send(Publish("jobs/1", b"queued", qos=1, packet_id=1))
    assert await publisher.receive() == Puback(1)
    back = LinkClient(await amqtt.connect(peer=("127.0.0.1", 40002)))
    connack = await back.connect("away", username=ENGINE_USERNAME, clean_session=False)
    assert connack == Connack(session_present=True)
    queued = await back.receive()
    assert isinstance(queued, Publish)
    assert (queued.topic, queued.retain) == ("jobs/1", False)


async def test_amqtt_link_closed_right_after_disconnect_is_a_clean_end(
    amqtt: AmqttEngine,
) -> None:
    """A link closed at once after DISCONNECT: the QoS 0 publish before it is routed and the
    Will is not (MQTT 3.1.1 §3.14); amqtt alone would see an abnormal close."""
    watcher = await named(amqtt, "bye-watcher")
    watcher.send(Subscribe(1, (("w/#", 0),)))
    assert await watcher.receive() == Suback(1, (0,))
    device = LinkClient(await amqtt.connect(peer=("127.0.0.1", 40004)))
    connack = await device.connect(
        "bye-device", username=ENGINE_USERNAME, will=Will("w/will", b"gone")
    )
    assert connack == Connack()
    device.send(Publish("w/bye", b"last", qos=0), Disconnect())
    await device.link.close()
    assert await device.receive() is None
    marker = await named(amqtt, "bye-marker")
    marker.send(Publish("w/marker", b"after", qos=1, packet_id=1))
    assert await marker.receive() == Puback(1)
    received = [await watcher.receive(), await watcher.receive()]
    assert [(p.topic, p.payload) for p in received if isinstance(p, Publish)] == [
        ("w/bye", b"last"),
        ("w/marker", b"after"),
    ]


async def test_amqtt_link_closed_right_after_connect_ends_promptly_with_the_will(
    amqtt: AmqttEngine,
) -> None:
    """amqtt 0.12.1 would hang such a session (a start-up race); the engine mends it."""
    watcher = await named(amqtt, "will-watcher")
    watcher.send(Subscribe(1, (("wills/#", 0),)))
    assert await watcher.receive() == Suback(1, (0,))
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        link = await amqtt.connect(peer=("127.0.0.1", 40003))
        will = Will(f"wills/{attempt}", b"gone")
        connect = Connect(
            client_id=f"brief-{attempt}", keep_alive=0, username=ENGINE_USERNAME, will=will
        )
        link.write(encode(connect))  # keep-alive 0, as the pump sends it
        for _ in range(attempt):  # let amqtt get a little further each time
            await asyncio.sleep(0)
        started = loop.time()
        await link.close()
        assert loop.time() - started < TIMEOUT / 5
        assert link.task.done()
        message = await watcher.receive()
        assert isinstance(message, Publish) and message.topic == f"wills/{attempt}"


async def test_amqtt_connect_before_start_is_misuse() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await AmqttEngine().connect(peer=("127.0.0.1", 1))


async def test_amqtt_stop_closes_open_links() -> None:
    engine = AmqttEngine()
    await engine.start()
    client = await named(engine, "left-open")
    await engine.stop()
    assert await client.receive() is None
    assert not engine._links


# ExternalEngine, against a stand-in broker that records what it is sent


class StandInBroker:
    """Accepts TCP connections and decodes what arrives; can hang up on everyone."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[int, Packet]] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StandInBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.hang_up()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.writers)
        self.writers.append(writer)
        decoder = StreamDecoder()
        while data := await reader.read(65536):
            for packet, _ in decoder.feed(data):
                await self.received.put((index, packet))
                if isinstance(packet, Connect):
                    writer.write(encode(Connack()))
        writer.close()

    def hang_up(self) -> None:
        for writer in self.writers:
            writer.close()

    async def next(self) -> tuple[int, Packet]:
        return await asyncio.wait_for(self.received.get(), TIMEOUT)


async def test_external_engine_start_fails_clearly_when_unreachable() -> None:
    async with StandInBroker() as broker:
        port = broker.port
    with pytest.raises(ConfigError, match=f"mqtt://127.0.0.1:{port} is not reachable"):
        await ExternalEngine("127.0.0.1", port).start()


async def test_external_engine_link_carries_bytes_both_ways() -> None:
    async with StandInBroker() as broker:
        engine = ExternalEngine("127.0.0.1", broker.port)
        await engine.start()
        client = LinkClient(await engine.connect(peer=("127.0.0.1", 1)))
        assert await client.connect("dev") == Connack()
        assert (await broker.next())[1] == Connect(client_id="dev", keep_alive=0)
        broker.hang_up()
        assert await client.receive() is None
        await client.link.close()
        await engine.stop()


async def test_external_engine_system_client_reconnects_after_the_broker_dropped_it() -> None:
    async with StandInBroker() as broker:
        engine = ExternalEngine("127.0.0.1", broker.port)
        await engine.start()
        await engine.publish_system("$aws/events/presence/connected/a", b"1")
        first, connect = await broker.next()
        assert connect == Connect(client_id=engine.system_client_id, keep_alive=0)
        assert (await broker.next())[1] == Publish("$aws/events/presence/connected/a", b"1")
        broker.hang_up()
        assert engine._system_reader is not None
        await asyncio.wait_for(engine._system_reader, TIMEOUT)
        await engine.publish_system("$aws/events/presence/connected/b", b"2")
        second, connect = await broker.next()
        assert second != first and isinstance(connect, Connect)
        assert (await broker.next())[1] == Publish("$aws/events/presence/connected/b", b"2")
        await engine.stop()


def test_external_engines_have_distinct_system_client_ids() -> None:
    """Several gateway processes may front one broker (DESIGN.md): their own clients
    must not take each other over."""
    a, b = ExternalEngine("h", 1), ExternalEngine("h", 1)
    assert a.system_client_id != b.system_client_id
    assert a.system_client_id.startswith("iot-harness-gateway-")


async def test_external_engine_connect_to_a_vanished_broker_raises_oserror() -> None:
    async with StandInBroker() as broker:
        engine = ExternalEngine("127.0.0.1", broker.port)
    with pytest.raises(ConnectionRefusedError):
        await engine.connect(peer=("127.0.0.1", 1))


@given(st.lists(st.sampled_from(["connect", "disconnect"]), max_size=12))
def test_light_session_states_behave_as_amqtts_machine(triggers: list[str]) -> None:
    """``_SessionStates`` stands in for amqtt's ``transitions.Machine`` (amqtt_engine
    docstring): same states, same refusals, same hooks, for any sequence of triggers."""
    real, light = Session(), _LightSession()
    for trigger in triggers:
        outcomes = []
        for session in (real, light):
            try:
                getattr(session.transitions, trigger)()
                outcomes.append("ok")
            except MachineError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1], trigger
        assert real.transitions.state == light.transitions.state
        assert real.transitions.is_connected() == light.transitions.is_connected()
        assert (real.last_connect_time is None) == (light.last_connect_time is None)
        assert (real.last_disconnect_time is None) == (light.last_disconnect_time is None)
