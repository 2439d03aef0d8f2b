"""The session pump applies AWS IoT's MQTT behaviour (aws-iot.md §4, §5, §2.3, §1.5).

Real clients over real loopback sockets: paho-mqtt (tests/paho_client.py) where it can
express the case, and raw MQTT spoken with :mod:`harness.mqtt.codec` where it cannot
(exact packets, "nothing arrived" proofs, QoS 2). Every test asserts both what the
client sees and what the gateway recorded, reason codes included.

Raw clients use MQTT over TLS with ALPN ``mqtt`` and custom-authorizer credentials in the
CONNECT username (aws-iot.md §2.1): a signing-disabled authorizer maps the token to the
policies of the case, so each connection gets exactly the rights the test needs.

"Nothing arrived" is proven without waiting: the client sends PINGREQ and the next
packet it receives must be PINGRESP (the engine answers in order, behind anything the
pump had already let through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion

from harness.auth import custom, sigv4
from harness.events import Event
from harness.gateway import GatewayConfig
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    StreamDecoder,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from harness.mqtt.rules import DisconnectReason, Limits
from harness.world import World, WorldConfig
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop

AUTHORIZER = "pump-test-authorizer"
P = TypeVar("P", bound=Packet)


# The world and its identities


def _policy(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _policies(world: World) -> dict[str, tuple[str, ...]]:
    """The rights each test token stands for (aws-iot.md §5)."""
    gw = world.config.gateway
    arn = f"arn:aws:iot:{gw.region}:{gw.account_id}"
    default = world.default_policy
    return {
        "full": (default,),
        # AWS's own topics need a deliberate grant: the default policy denies `$aws/*`.
        "all": (_policy({"Effect": "Allow", "Action": "iot:*", "Resource": "*"}),),
        "nosub": (
            default,
            _policy(
                {
                    "Effect": "Deny",
                    "Action": "iot:Subscribe",
                    "Resource": f"{arn}:topicfilter/forbidden/*",
                }
            ),
        ),
        "nopub": (
            default,
            _policy(
                {"Effect": "Deny", "Action": "iot:Publish", "Resource": f"{arn}:topic/forbidden/*"}
            ),
        ),
        "noreceive": (
            default,
            _policy(
                {"Effect": "Deny", "Action": "iot:Receive", "Resource": f"{arn}:topic/secret/*"}
            ),
        ),
        "noconnect": (
            _policy(
                {
                    "Effect": "Allow",
                    "Action": ["iot:Publish", "iot:Subscribe", "iot:Receive"],
                    "Resource": "*",
                }
            ),
        ),
    }


def _install_authorizer(world: World) -> None:
    """A signing-disabled authorizer: token ``<policy>[:ttl=<seconds>]`` (aws-iot.md §2.3)."""
    policies = _policies(world)

    def handler(event: custom.AuthorizerEvent) -> Mapping[str, Any]:
        name, _, option = (event.token or "").partition(":")
        response: dict[str, Any] = {
            "isAuthenticated": name in policies,
            "principalId": f"pumpTest{sorted(policies).index(name) if name in policies else 0}",
            "policyDocuments": list(policies.get(name, ())),
        }
        if option.startswith("ttl="):
            response["disconnectAfterInSeconds"] = float(option.removeprefix("ttl="))
        return response

    world.gateway.add_authorizer(
        custom.Authorizer(name=AUTHORIZER, handler=handler, signing_enabled=False)
    )


@contextlib.asynccontextmanager
async def open_world(
    limits: Limits | None = None, *, engine: str | None = None
) -> AsyncIterator[World]:
    """A world whose gateway applies ``limits``; lenient custom auth (compressed time)."""
    gateway = GatewayConfig(limits=limits or Limits(), strict=False, engine=engine)
    async with World(WorldConfig(gateway=gateway, cognito=False)) as world:
        _install_authorizer(world)
        yield world


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as w:
        yield w


def custom_auth_username(rights: str) -> str:
    """The CONNECT username naming the test authorizer; its token says which rights."""
    return f"device?x-amz-customauthorizer-name={AUTHORIZER}&token={urllib.parse.quote(rights)}"


def fast_keepalive(seconds: float) -> Limits:
    """Limits whose keep-alive clamp is ``seconds`` both ways.

    ``Limits`` documents fractions of seconds for its times but types the keep-alive
    bounds as ``int``; the keyword mapping keeps the fraction without a type: ignore.
    """
    options: dict[str, Any] = {"keepalive_min": seconds, "keepalive_max": seconds}
    return Limits(**options)


# Clients


class RawClient:
    """MQTT 3.1.1 over TLS with ALPN ``mqtt``, one packet at a time, via the codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = StreamDecoder()
        self._pending: list[Packet] = []
        self._next_id = 0

    @classmethod
    async def open(cls, world: World) -> RawClient:
        context = ssl.create_default_context(cafile=str(world.pki.ca_file))
        context.set_alpn_protocols(["mqtt"])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                world.config.gateway.host,
                world.gateway.wss_port,
                ssl=context,
                server_hostname=world.gateway.endpoint,
            ),
            TIMEOUT,
        )
        return cls(reader, writer)

    def packet_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, *packets: Packet) -> None:
        for packet in packets:
            self.writer.write(encode(packet))

    async def receive(self, timeout: float = TIMEOUT) -> Packet | None:
        """The next packet; None once the gateway closed the connection."""
        while not self._pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self._pending.extend(packet for packet, _ in self._decoder.feed(data))
        return self._pending.pop(0)

    async def expect(self, kind: type[P], timeout: float = TIMEOUT) -> P:
        packet = await self.receive(timeout)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    async def expect_close(self, timeout: float = TIMEOUT) -> list[Packet]:
        """Read until the gateway closes; returns what arrived before the close."""
        seen: list[Packet] = []
        while (packet := await self.receive(timeout)) is not None:
            seen.append(packet)
        return seen

    async def expect_nothing_pending(self) -> None:
        """Prove that nothing is on its way: PINGREQ's answer is the next packet."""
        self.send(Pingreq())
        assert await self.expect(Pingresp) == Pingresp()

    async def connect(self, client_id: str, rights: str = "full", **fields: Any) -> Connack | None:
        """CONNECT with custom-auth credentials for ``rights`` (a key of :func:`_policies`);
        the CONNACK, or None if the gateway closed instead."""
        self.send(Connect(client_id=client_id, username=custom_auth_username(rights), **fields))
        packet = await self.receive()
        assert packet is None or isinstance(packet, Connack), packet
        return packet

    async def subscribe(self, *filters: tuple[str, int]) -> Suback:
        packet_id = self.packet_id()
        self.send(Subscribe(packet_id, tuple(filters)))
        suback = await self.expect(Suback)
        assert suback.packet_id == packet_id
        return suback

    async def publish_qos1(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        packet_id = self.packet_id()
        self.send(Publish(topic, payload, qos=1, retain=retain, packet_id=packet_id))
        assert await self.expect(Puback) == Puback(packet_id)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


@pytest.fixture
async def clients() -> AsyncIterator[list[RawClient | PahoClient]]:
    """Every client a test opens, closed at teardown whatever happened."""
    opened: list[RawClient | PahoClient] = []
    yield opened
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()


async def raw(world: World, clients: list[RawClient | PahoClient]) -> RawClient:
    client = await RawClient.open(world)
    clients.append(client)
    return client


async def connected(
    world: World, clients: list[RawClient | PahoClient], client_id: str, rights: str = "full"
) -> RawClient:
    client = await raw(world, clients)
    assert await client.connect(client_id, rights) == Connack(return_code=0)
    return client


def paho_sigv4(
    world: World,
    clients: list[RawClient | PahoClient],
    client_id: str,
    *,
    policies: tuple[str, ...] | None = None,
) -> PahoClient:
    """paho over WSS with a SigV4-presigned URL for a new key with ``policies`` (§1)."""
    credential = world.credentials.add_static(
        principal=f"user-{client_id}",
        policies=policies if policies is not None else (world.default_policy,),
    )
    url = sigv4.presign_url(
        host=world.gateway.endpoint,
        credential=credential,
        region=world.config.gateway.region,
        now=world.clock.now(),
    )
    parts = urllib.parse.urlsplit(url)
    client = PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=f"{parts.path}?{parts.query}",
        headers={"Host": world.gateway.endpoint},
    )
    clients.append(client)
    return client


def paho_custom(
    world: World,
    clients: list[RawClient | PahoClient],
    client_id: str,
    rights: str = "full",
    *,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
) -> PahoClient:
    """paho over TLS with ALPN ``mqtt`` and custom-auth credentials in the username (§2.1)."""
    client = PahoClient(
        client_id,
        websocket=False,
        ca_file=str(world.pki.ca_file),
        alpn=["mqtt"],
        username=custom_auth_username(rights),
        protocol=protocol,
    )
    clients.append(client)
    return client


async def paho_connect(world: World, client: PahoClient, *, websocket: bool = False) -> None:
    port = world.gateway.wss_port
    await client.connect(world.config.gateway.host, port)
    outcome = await client.next("connect", "error", "disconnect")
    assert (outcome.what, outcome.rc) == ("connect", 0), outcome


# Recorder helpers


async def closed_with(world: World, reason: str, **expected: Any) -> Event:
    """The pump's ``mqtt.close`` event with this lifecycle reason (aws-iot.md §4.6)."""
    return await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, reason=reason, **expected)


async def lifecycle_disconnect(world: World, client_id: str, reason: str) -> Event:
    return await world.recorder.wait_for(
        "lifecycle.disconnected", timeout=TIMEOUT, client_id=client_id, disconnect_reason=reason
    )


def conn_of(world: World, client_id: str) -> str:
    """The connection id the gateway gave the CONNECT of ``client_id``."""
    event = world.recorder.first("mqtt.in", packet="CONNECT", client_id=client_id)
    assert event is not None and event.conn is not None
    return event.conn


def kinds(world: World, conn: str) -> list[str]:
    return [e.kind for e in world.recorder if e.conn == conn]


# Policies: connect, publish, subscribe, receive (aws-iot.md §4.5, §5)


async def test_policy_forbids_subscribe_closes_without_suback(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    gw = world.config.gateway
    forbid = _policy(
        {
            "Effect": "Deny",
            "Action": "iot:Subscribe",
            "Resource": f"arn:aws:iot:{gw.region}:{gw.account_id}:topicfilter/forbidden/*",
        }
    )
    client = paho_sigv4(world, clients, "sub-forbidden", policies=(world.default_policy, forbid))
    await paho_connect(world, client)
    client.client.subscribe("forbidden/#", qos=1)
    outcome = await client.next("subscribe", "disconnect")
    assert outcome.what == "disconnect"  # no SUBACK: the connection just ends
    verdict = await world.recorder.wait_for(
        "policy.verdict", timeout=TIMEOUT, action="iot:Subscribe"
    )
    assert verdict.ok is False
    assert verdict.get("target") == "forbidden/#"
    assert verdict.get("resource", "").endswith(":topicfilter/forbidden/#")
    await closed_with(world, "FORBIDDEN_ACCESS")
    await lifecycle_disconnect(world, "sub-forbidden", "FORBIDDEN_ACCESS")
    assert world.recorder.first("mqtt.out", packet="SUBACK") is None


async def test_policy_forbids_publish_closes(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "pub-forbidden", "nopub")
    await client.publish_qos1("allowed/topic", b"ok")
    client.send(Publish("forbidden/topic", b"no", qos=1, packet_id=client.packet_id()))
    assert await client.expect_close() == []  # no PUBACK, just the close
    verdict = await world.recorder.wait_for("policy.verdict", timeout=TIMEOUT, action="iot:Publish")
    assert verdict.get("target") == "forbidden/topic"
    await closed_with(world, "FORBIDDEN_ACCESS")
    await lifecycle_disconnect(world, "pub-forbidden", "FORBIDDEN_ACCESS")


async def test_policy_forbids_receive_drops_silently(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    subscriber = await connected(world, clients, "receiver", "noreceive")
    assert (await subscriber.subscribe(("secret/#", 1), ("open/#", 1))).return_codes == (1, 1)
    publisher = await connected(world, clients, "sender")
    await publisher.publish_qos1("secret/plans", b"hidden")
    verdict = await world.recorder.wait_for(
        "policy.verdict", timeout=TIMEOUT, action="iot:Receive", client_id="receiver"
    )
    assert verdict.get("target") == "secret/plans"
    await publisher.publish_qos1("open/news", b"visible")
    delivered = await subscriber.expect(Publish)
    assert (delivered.topic, delivered.payload) == ("open/news", b"visible")
    subscriber.send(Puback(delivered.packet_id or 0))
    await subscriber.expect_nothing_pending()
    # The connection stays: a failed iot:Receive is not a violation of the client's.
    assert world.recorder.first("mqtt.close", client_id="receiver") is None


async def test_missing_connect_permission_closes_after_connect_without_connack(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await raw(world, clients)
    assert await client.connect("no-connect", "noconnect") is None
    verdict = await world.recorder.wait_for("policy.verdict", timeout=TIMEOUT, action="iot:Connect")
    assert verdict.get("resource", "").endswith(":client/no-connect")
    await closed_with(world, "FORBIDDEN_ACCESS")
    assert world.recorder.first("mqtt.out", packet="CONNACK") is None
    # Never connected, so no presence events (aws-iot.md §4.6 publishes them per session).
    assert world.recorder.first("lifecycle.connected", client_id="no-connect") is None


async def test_connect_policy_variables_have_their_values_at_connect(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    """``iot:Connect`` is checked with the CONNECT's own client id and the thing's name
    (aws-iot.md §5): ``client/${iot:ClientId}`` and ``client/${iot:Connection.Thing.
    ThingName}`` let a client in under its own name, and only there."""
    gw = world.config.gateway
    arn = f"arn:aws:iot:{gw.region}:{gw.account_id}"
    use = {"Effect": "Allow", "Action": ["iot:Publish", "iot:Subscribe", "iot:Receive"]}
    by_client_id = _policy(
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/${{iot:ClientId}}"},
        use | {"Resource": "*"},
    )
    user = paho_sigv4(world, clients, "self-named", policies=(by_client_id,))
    await paho_connect(world, user)
    by_thing = _policy(
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": f"{arn}:client/${{iot:Connection.Thing.ThingName}}",
        },
        use | {"Resource": "*"},
    )
    cert = world.pki.client_cert("thermostat")
    world.gateway.register_thing("thermostat", cert.cert_pem, policies=(by_thing,))
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    context.load_cert_chain(cert.cert_file, cert.key_file)

    async def thing_client() -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                gw.host,
                world.gateway.mqtts_port,
                ssl=context,
                server_hostname=world.gateway.endpoint,
            ),
            TIMEOUT,
        )
        client = RawClient(reader, writer)
        clients.append(client)
        return client

    thing = await thing_client()
    thing.send(Connect(client_id="thermostat"))
    assert await thing.expect(Connack) == Connack()
    impostor = await thing_client()
    impostor.send(Connect(client_id="not-the-thermostat"))
    assert await impostor.expect_close() == []
    verdict = await world.recorder.wait_for("policy.verdict", timeout=TIMEOUT, action="iot:Connect")
    assert (verdict.get("target"), verdict.get("reason")) == ("not-the-thermostat", "implicit-deny")
    await closed_with(world, "FORBIDDEN_ACCESS")
    assert len(world.recorder.find("policy.verdict")) == 1


async def test_default_policy_keeps_clients_out_of_aws_topics(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "nosy")
    client.send(Subscribe(client.packet_id(), (("$aws/events/presence/connected/+", 0),)))
    assert await client.expect_close() == []
    await closed_with(world, "FORBIDDEN_ACCESS")


# QoS 2 (aws-iot.md §4.2)


async def test_qos2_publish_is_ignored_and_the_connection_stays(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await connected(world, clients, "qos2-watcher")
    await watcher.subscribe(("q/#", 1))
    client = await connected(world, clients, "qos2-publisher")
    client.send(Publish("q/two", b"x", qos=2, packet_id=client.packet_id()))
    await client.expect_nothing_pending()  # no PUBACK, no PUBREC, still open
    violation = await world.recorder.wait_for(
        "rule.violation", timeout=TIMEOUT, reason="qos2-not-supported"
    )
    assert violation.get("topic") == "q/two"
    await client.publish_qos1("q/one", b"y")
    assert (await watcher.expect(Publish)).topic == "q/one"  # q/two never reached the engine


async def test_qos2_subscribe_gets_no_suback(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "qos2-subscriber")
    client.send(Subscribe(client.packet_id(), (("q/#", 2),)))
    await client.expect_nothing_pending()
    await world.recorder.wait_for("rule.violation", timeout=TIMEOUT, reason="qos2-not-supported")
    assert world.recorder.first("mqtt.out", packet="SUBACK") is None
    assert (await client.subscribe(("q/#", 1))).return_codes == (1,)


async def test_will_with_qos2_is_closed_at_connect(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = paho_custom(world, clients, "will-qos2")
    client.client.will_set("wills/will-qos2", b"gone", qos=2)
    await client.connect(world.config.gateway.host, world.gateway.wss_port)
    outcome = await client.next("connect", "disconnect", "error")
    assert outcome.what in ("disconnect", "error") or outcome.rc != 0
    await world.recorder.wait_for("rule.violation", timeout=TIMEOUT, reason="will-qos2")
    await closed_with(world, "CLIENT_ERROR")
    assert world.recorder.first("mqtt.out", packet="CONNACK") is None


# Keep-alive (aws-iot.md §4.3)


async def test_keepalive_is_clamped_to_awss_range(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await raw(world, clients)
    assert await client.connect("ka-short", keep_alive=5) == Connack()
    short = await world.recorder.wait_for("mqtt.keepalive", timeout=TIMEOUT, client_id="ka-short")
    assert (short.get("requested"), short.get("effective")) == (5, 30)
    assert short.get("cut_after") == 45
    other = await raw(world, clients)
    assert await other.connect("ka-zero", keep_alive=0) == Connack()
    zero = await world.recorder.wait_for("mqtt.keepalive", timeout=TIMEOUT, client_id="ka-zero")
    assert (zero.get("requested"), zero.get("effective")) == (0, 1200)


async def test_silent_client_is_cut_off_at_one_and_a_half_keepalives(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(fast_keepalive(0.2)) as world:
        client = await raw(world, clients)
        assert await client.connect("ka-silent", keep_alive=60) == Connack()
        assert await client.expect_close() == []
        close = await closed_with(world, "MQTT_KEEP_ALIVE_TIMEOUT")
        started = await world.recorder.wait_for("mqtt.keepalive", timeout=TIMEOUT)
        assert started.get("effective") == pytest.approx(0.2)
        assert close.t - started.t >= 0.3
        await lifecycle_disconnect(world, "ka-silent", "MQTT_KEEP_ALIVE_TIMEOUT")


# Client ids (aws-iot.md §4.3, §4.1)


async def test_duplicate_client_id_drops_the_older_connection(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(Limits(connects_per_client_id_per_second=None)) as world:
        older = await connected(world, clients, "twin")
        older_conn = conn_of(world, "twin")
        newer = await connected(world, clients, "twin")
        assert await older.expect_close() == []
        await closed_with(world, "DUPLICATE_CLIENTID", conn=older_conn)
        await lifecycle_disconnect(world, "twin", "DUPLICATE_CLIENTID")
        await newer.expect_nothing_pending()
        assert world.gateway.sessions[conn_of_latest(world, "twin")].closed is False


def conn_of_latest(world: World, client_id: str) -> str:
    events = world.recorder.find("mqtt.in", packet="CONNECT", client_id=client_id)
    assert events and events[-1].conn is not None
    return events[-1].conn


async def test_takeover_is_prompt_with_unacknowledged_qos1_in_flight(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(Limits(connects_per_client_id_per_second=None)) as world:
        older = await connected(world, clients, "busy")
        await older.subscribe(("work/#", 1))
        publisher = await connected(world, clients, "boss")
        await publisher.publish_qos1("work/item", b"1")
        assert (await older.expect(Publish)).qos == 1  # never acknowledged
        newer = await raw(world, clients)
        started = world.clock.elapsed()
        assert await newer.connect("busy") == Connack()
        assert world.clock.elapsed() - started < TIMEOUT / 5
        await closed_with(world, "DUPLICATE_CLIENTID")
        assert await older.expect_close() == []


async def test_connect_per_client_id_is_throttled_to_one_per_second(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    first = await connected(world, clients, "hasty")
    first.send(Disconnect())
    assert await first.expect_close() == []
    second = await raw(world, clients)
    assert await second.connect("hasty") is None
    violation = await world.recorder.wait_for(
        "rule.violation", timeout=TIMEOUT, reason="rate-exceeded"
    )
    assert "CONNECT" in violation.get("explain", "")
    await closed_with(world, "THROTTLED")


async def test_mqtt31_client_with_a_36_character_client_id(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client_id = str(uuid.uuid4())  # a Dyson-style id, over MQTT 3.1's 23 characters
    assert len(client_id) == 36
    client = paho_custom(world, clients, client_id, protocol=MQTTProtocolVersion.MQTTv31)
    await paho_connect(world, client)
    client.client.subscribe("438/device/status", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish("438/device/status", b'{"msg":"CURRENT-STATE"}', qos=1)
    message = await client.next("message")
    assert message.payload == b'{"msg":"CURRENT-STATE"}'
    connect = world.recorder.first("mqtt.in", packet="CONNECT")
    assert connect is not None and connect.get("protocol_level") == 3


# Limits (aws-iot.md §4.4)


async def test_payload_over_128_kb_closes_with_client_error(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = paho_custom(world, clients, "big-payload")
    await paho_connect(world, client)
    client.client.publish("big/ok", b"x" * (128 * 1024), qos=1)
    assert (await client.next("publish", "disconnect")).what == "publish"
    client.client.publish("big/too", b"x" * (128 * 1024 + 1), qos=1)
    assert (await client.next("publish", "disconnect")).what == "disconnect"
    violation = await world.recorder.wait_for(
        "rule.violation", timeout=TIMEOUT, reason="payload-too-large"
    )
    assert violation.get("topic") == "big/too"
    await closed_with(world, "CLIENT_ERROR")
    await lifecycle_disconnect(world, "big-payload", "CLIENT_ERROR")


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("t/" + "x" * 255, "topic-too-long"),
        ("a/b/c/d/e/f/g/h/i", "too-many-levels"),
    ],
)
async def test_topic_over_awss_limits_closes(
    world: World, clients: list[RawClient | PahoClient], topic: str, reason: str
) -> None:
    client = await connected(world, clients, "long-topic")
    await client.publish_qos1("a/b/c/d/e/f/g/h", b"8 levels are fine")
    client.send(Publish(topic, b"x", qos=1, packet_id=client.packet_id()))
    assert await client.expect_close() == []
    await world.recorder.wait_for("rule.violation", timeout=TIMEOUT, reason=reason)
    await closed_with(world, "CLIENT_ERROR")


async def test_more_than_eight_filters_in_one_subscribe_closes(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "greedy")
    eight = tuple((f"f/{i}", 0) for i in range(8))
    assert (await client.subscribe(*eight)).return_codes == (0,) * 8
    client.send(Subscribe(client.packet_id(), tuple((f"g/{i}", 0) for i in range(9))))
    assert await client.expect_close() == []
    await world.recorder.wait_for("rule.violation", timeout=TIMEOUT, reason="too-many-filters")
    await closed_with(world, "CLIENT_ERROR")


async def test_more_than_fifty_subscriptions_closes(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "hoarder")
    for batch in range(6):
        filters = tuple((f"s/{batch}/{i}", 0) for i in range(8))
        await client.subscribe(*filters)
    await client.subscribe(("s/6/0", 0), ("s/6/1", 0))  # 50
    await client.subscribe(("s/0/0", 1))  # replacing one is not adding one
    client.send(Subscribe(client.packet_id(), (("s/6/2", 0),)))  # 51
    assert await client.expect_close() == []
    await world.recorder.wait_for(
        "rule.violation", timeout=TIMEOUT, reason="too-many-subscriptions"
    )
    await closed_with(world, "THROTTLED")


async def test_publishes_over_the_rate_are_discarded(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(Limits(publishes_per_second=3)) as world:
        watcher = await connected(world, clients, "rate-watcher")
        await watcher.subscribe(("rate/#", 0))
        client = await connected(world, clients, "rate-publisher")
        ids = [client.packet_id() for _ in range(5)]
        client.send(*(Publish(f"rate/{i}", b"x", qos=1, packet_id=i) for i in ids))
        acks = [await client.expect(Puback) for _ in range(3)]
        assert [a.packet_id for a in acks] == ids[:3]
        await client.expect_nothing_pending()  # the last two got no PUBACK
        dropped = world.recorder.find("rule.violation", reason="rate-exceeded")
        assert [e.get("topic") for e in dropped] == ["rate/4", "rate/5"]
        assert [(await watcher.expect(Publish)).topic for _ in range(3)] == [
            "rate/1",
            "rate/2",
            "rate/3",
        ]
        assert world.recorder.first("mqtt.close") is None


# Matching and retained messages (aws-iot.md §4.3)


async def test_retained_message_reaches_only_exact_match_subscriptions(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    publisher = await connected(world, clients, "retainer")
    await publisher.publish_qos1("sensor/1", b"21.5", retain=True)
    exact = await connected(world, clients, "exact")
    await exact.subscribe(("sensor/1", 1))
    retained = await exact.expect(Publish)
    assert (retained.topic, retained.payload, retained.retain) == ("sensor/1", b"21.5", True)
    wild = await connected(world, clients, "wild")
    wild_conn = conn_of(world, "wild")
    await wild.subscribe(("sensor/+", 1))
    dropped = await world.recorder.wait_for(
        "mqtt.dropped", timeout=TIMEOUT, conn=wild_conn, reason="no-aws-match"
    )
    assert dropped.get("topic") == "sensor/1"
    await wild.expect_nothing_pending()
    # A live message still flows through the wildcard.
    await publisher.publish_qos1("sensor/1", b"22.0")
    live = await wild.expect(Publish)
    assert (live.topic, live.payload, live.retain) == ("sensor/1", b"22.0", False)


async def test_hash_wildcard_does_not_match_its_parent(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    subscriber = await connected(world, clients, "hash")
    await subscriber.subscribe(("sensor/#", 0))
    publisher = await connected(world, clients, "parent-publisher")
    await publisher.publish_qos1("sensor", b"parent")
    dropped = await world.recorder.wait_for(
        "mqtt.dropped", timeout=TIMEOUT, client_id="hash", reason="no-aws-match"
    )
    assert dropped.get("topic") == "sensor"
    await publisher.publish_qos1("sensor/child", b"child")
    assert (await subscriber.expect(Publish)).topic == "sensor/child"


# Lifecycle events (aws-iot.md §4.6)


async def _presence_watcher(world: World, clients: list[RawClient | PahoClient]) -> RawClient:
    watcher = await connected(world, clients, "presence-watcher", "all")
    assert (await watcher.subscribe(("$aws/events/presence/+/+", 1))).return_codes == (1,)
    return watcher


async def _next_lifecycle(watcher: RawClient, client_id: str) -> dict[str, Any]:
    while True:
        message = await watcher.expect(Publish)
        if message.topic.endswith(f"/{client_id}"):
            document: dict[str, Any] = json.loads(message.payload)
            document["_topic"] = message.topic
            return document


async def test_presence_connected_and_client_initiated_disconnect(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await _presence_watcher(world, clients)
    device = await connected(world, clients, "dev-1")
    up = await _next_lifecycle(watcher, "dev-1")
    assert up.pop("_topic") == "$aws/events/presence/connected/dev-1"
    assert list(up) == [
        "clientId",
        "timestamp",
        "eventType",
        "sessionIdentifier",
        "principalIdentifier",
        "ipAddress",
        "versionNumber",
    ]
    assert (up["clientId"], up["eventType"], up["ipAddress"]) == ("dev-1", "connected", "127.0.0.1")
    assert up["principalIdentifier"] == "pumpTest1"
    device.send(Disconnect())
    assert await device.expect_close() == []
    down = await _next_lifecycle(watcher, "dev-1")
    assert down.pop("_topic") == "$aws/events/presence/disconnected/dev-1"
    assert list(down) == [
        "clientId",
        "timestamp",
        "eventType",
        "sessionIdentifier",
        "principalIdentifier",
        "clientInitiatedDisconnect",
        "disconnectReason",
        "versionNumber",
    ]
    assert down["clientInitiatedDisconnect"] is True
    assert down["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert down["sessionIdentifier"] == up["sessionIdentifier"]
    assert down["timestamp"] >= up["timestamp"]
    await lifecycle_disconnect(world, "dev-1", "CLIENT_INITIATED_DISCONNECT")


async def test_presence_connection_lost(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await _presence_watcher(world, clients)
    device = await connected(world, clients, "dev-2")
    assert (await _next_lifecycle(watcher, "dev-2"))["eventType"] == "connected"
    await device.close()  # no DISCONNECT: the network went away
    down = await _next_lifecycle(watcher, "dev-2")
    assert (down["clientInitiatedDisconnect"], down["disconnectReason"]) == (
        False,
        "CONNECTION_LOST",
    )
    await lifecycle_disconnect(world, "dev-2", "CONNECTION_LOST")


async def test_presence_duplicate_client_id(clients: list[RawClient | PahoClient]) -> None:
    async with open_world(Limits(connects_per_client_id_per_second=None)) as world:
        watcher = await _presence_watcher(world, clients)
        await connected(world, clients, "dev-3")
        first = await _next_lifecycle(watcher, "dev-3")
        await connected(world, clients, "dev-3")
        down = await _next_lifecycle(watcher, "dev-3")
        assert down["eventType"] == "disconnected"
        assert down["disconnectReason"] == "DUPLICATE_CLIENTID"
        assert down["sessionIdentifier"] == first["sessionIdentifier"]
        second = await _next_lifecycle(watcher, "dev-3")
        assert second["eventType"] == "connected"
        assert second["sessionIdentifier"] != first["sessionIdentifier"]


async def test_subscription_lifecycle_events(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await connected(world, clients, "sub-watcher", "all")
    await watcher.subscribe(("$aws/events/subscriptions/+/+", 0))
    device = await connected(world, clients, "dev-4")
    await device.subscribe(("a/b", 1), ("c/#", 0))
    document = await _next_lifecycle(watcher, "dev-4")
    assert document.pop("_topic") == "$aws/events/subscriptions/subscribed/dev-4"
    assert list(document) == [
        "clientId",
        "timestamp",
        "eventType",
        "sessionIdentifier",
        "principalIdentifier",
        "topics",
    ]
    assert (document["eventType"], document["topics"]) == ("subscribed", ["a/b", "c/#"])
    device.send(Unsubscribe(device.packet_id(), ("c/#",)))
    await device.expect(Unsuback)
    document = await _next_lifecycle(watcher, "dev-4")
    assert document["_topic"] == "$aws/events/subscriptions/unsubscribed/dev-4"
    assert document["topics"] == ["c/#"]
    await world.recorder.wait_for(
        "lifecycle.unsubscribed", timeout=TIMEOUT, client_id="dev-4", topics=["c/#"]
    )


# AWS's reserved topics (aws-iot.md §4.4)


async def test_shadow_request_topic_is_routed_and_acknowledged(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    shadow_service = await connected(world, clients, "shadow-service", "all")
    await shadow_service.subscribe(("$aws/things/+/shadow/update", 0))
    lamp = await connected(world, clients, "lamp", "all")
    await lamp.publish_qos1("$aws/things/lamp/shadow/update", b'{"state":{}}')
    request = await shadow_service.expect(Publish)
    assert (request.topic, request.payload) == ("$aws/things/lamp/shadow/update", b'{"state":{}}')
    await lamp.expect_nothing_pending()


@pytest.mark.parametrize(
    ("topic", "rights", "event"),
    [
        ("$aws/things/lamp/shadow/update", "full", "policy.verdict"),  # the default denies $aws
        ("$SYS/broker/clients", "all", "rule.violation"),  # not an AWS-defined topic
        ("$aws/things/lamp/shadow/update/accepted", "all", "rule.violation"),  # AWS's reply
    ],
)
async def test_reserved_topic_publish_refused(
    world: World, clients: list[RawClient | PahoClient], topic: str, rights: str, event: str
) -> None:
    client = await connected(world, clients, "intruder", rights)
    client.send(Publish(topic, b"x", qos=1, packet_id=client.packet_id()))
    assert await client.expect_close() == []
    await world.recorder.wait_for(event, timeout=TIMEOUT, client_id="intruder")
    await closed_with(world, "FORBIDDEN_ACCESS")


# Lifetimes (aws-iot.md §2.3, §4.4)


async def test_disconnect_after_in_seconds_from_custom_authorizer(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    client = await connected(world, clients, "short-lived", "full:ttl=0.3")
    assert await client.expect_close() == []
    close = await closed_with(world, "CUSTOMAUTH_TTL_EXPIRATION")
    connack = world.recorder.first("mqtt.out", packet="CONNACK")
    assert connack is not None and close.t - connack.t >= 0.25
    await lifecycle_disconnect(world, "short-lived", "CUSTOMAUTH_TTL_EXPIRATION")


async def test_websocket_lifetime_closes_at_the_next_packet(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(Limits(websocket_lifetime=0.5)) as world:
        client = paho_sigv4(world, clients, "old-socket")
        await paho_connect(world, client, websocket=True)
        await world.recorder.wait_for("ws.expired", timeout=TIMEOUT)
        assert world.recorder.first("mqtt.close") is None  # AWS waits for a packet
        client.client.publish("old/topic", b"late", qos=1)
        assert (await client.next("publish", "disconnect")).what == "disconnect"
        await closed_with(world, "WEBSOCKET_TTL_EXPIRATION")
        await lifecycle_disconnect(world, "old-socket", "WEBSOCKET_TTL_EXPIRATION")


# Fault hooks consumed by the pump


async def test_fault_withhold_connack(world: World, clients: list[RawClient | PahoClient]) -> None:
    world.gateway.faults.withhold_connack()
    client = await raw(world, clients)
    client.send(Connect(client_id="waiting", username=custom_auth_username("full")))
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="withhold-connack")
    assert fired.get("packet") == "CONNACK"
    assert await world.gateway.drop("waiting")
    assert await client.expect_close() == []  # the CONNACK never came
    # One-shot: the next connection is answered.
    await connected(world, clients, "answered")


async def test_fault_close_after_connect(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    world.gateway.faults.close_after_connect()
    client = await raw(world, clients)
    assert await client.connect("closed-at-once") is None
    await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="close-after-connect")
    await closed_with(world, "SERVER_INITIATED_DISCONNECT")
    await connected(world, clients, "next-one")


async def test_fault_drop_by_client_id(world: World, clients: list[RawClient | PahoClient]) -> None:
    client = paho_custom(world, clients, "dropped")
    await paho_connect(world, client)
    assert await world.gateway.drop("dropped")
    outcome = await client.next("disconnect")
    assert outcome.rc != 0  # unexpected, from paho's point of view
    await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="drop", reset=False)
    await lifecycle_disconnect(world, "dropped", "SERVER_INITIATED_DISCONNECT")
    assert not await world.gateway.drop("dropped")  # gone


async def test_fault_drop_with_reset(world: World, clients: list[RawClient | PahoClient]) -> None:
    client = await connected(world, clients, "reset-me")
    assert await world.gateway.drop("reset-me", reset=True)
    with pytest.raises((ConnectionResetError, ssl.SSLError)):
        await client.receive()
    await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="drop", reset=True)
    await lifecycle_disconnect(world, "reset-me", "SERVER_INITIATED_DISCONNECT")


# Robustness of the pump


async def test_client_vanishing_right_after_connect_sends_its_will(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await connected(world, clients, "vanish-watcher")
    await watcher.subscribe(("wills/#", 0))
    device = await raw(world, clients)
    will = Will("wills/vanished", b"offline")
    device.send(Connect(client_id="vanisher", username=custom_auth_username("full"), will=will))
    await device.close()  # gone before the CONNACK could arrive
    message = await watcher.expect(Publish)
    assert (message.topic, message.payload) == ("wills/vanished", b"offline")
    await world.recorder.wait_for(
        "mqtt.close", timeout=TIMEOUT, client_id="vanisher", reason="CONNECTION_LOST"
    )


async def test_non_canonical_encoding_reaches_the_engine_canonical(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    subscriber = await connected(world, clients, "canon-sub")
    await subscriber.subscribe(("canon/#", 0))
    client = await connected(world, clients, "canon-pub")
    body = encode(Publish("canon/x", b"payload", qos=0))[2:]
    # Remaining Length 0x80|n, 0x00: a legal-looking but non-minimal encoding.
    client.writer.write(bytes((0x30, 0x80 | len(body), 0x00)) + body)
    await client.expect_nothing_pending()
    assert (await subscriber.expect(Publish)).payload == b"payload"


async def test_will_is_published_when_the_connection_is_lost(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    watcher = await connected(world, clients, "will-watcher")
    await watcher.subscribe(("wills/#", 0))
    device = await raw(world, clients)
    will = Will("wills/device", b"offline", qos=0)
    assert await device.connect("will-device", will=will) == Connack()
    await device.close()
    message = await watcher.expect(Publish)
    assert (message.topic, message.payload) == ("wills/device", b"offline")


async def _clean_disconnect_keeps_the_will(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    """A DISCONNECT ends the session cleanly: what the client published just before it is
    routed, and its Will is discarded (MQTT 3.1.1 §3.14; aws-iot.md §4.6)."""
    watcher = await connected(world, clients, "bye-watcher")
    await watcher.subscribe(("w/#", 0))
    device = await raw(world, clients)
    assert await device.connect("bye-device", will=Will("w/will", b"gone")) == Connack()
    device.send(Publish("w/bye", b"last words", qos=0), Disconnect())
    assert await device.expect_close() == []
    await lifecycle_disconnect(world, "bye-device", "CLIENT_INITIATED_DISCONNECT")
    message = await watcher.expect(Publish)
    assert (message.topic, message.payload) == ("w/bye", b"last words")
    # A Will would have been routed while the engine ended the session, before the
    # lifecycle event: the next message is a later marker, not the Will.
    marker = await connected(world, clients, "bye-marker")
    await marker.publish_qos1("w/marker", b"after")
    assert (await watcher.expect(Publish)).topic == "w/marker"


async def test_clean_disconnect_routes_the_last_publish_and_not_the_will(
    world: World, clients: list[RawClient | PahoClient]
) -> None:
    await _clean_disconnect_keeps_the_will(world, clients)


class MemoryTransport:
    """A client transport with no socket: what the pump sends, and whether it closed."""

    peer = ("127.0.0.1", 1)

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    async def receive(self) -> bytes:
        return b""

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.booleans(),
    garbage=st.binary(max_size=200)
    | st.lists(
        st.sampled_from(
            [
                encode(Publish("a/b", b"x", qos=1, packet_id=1)),
                encode(Subscribe(1, (("a/#", 1),))),
                encode(Pingreq()),
                encode(Disconnect()),
                b"\x62\x02\x00\x01",  # PUBREL
                b"\x30\xff\xff\xff\xff",  # Remaining Length too long
                b"\x82\x05\x00\x01\x00\x00\x00",  # SUBSCRIBE with an empty filter
            ]
        ),
        max_size=6,
    ).map(b"".join),
)
def test_pump_never_raises_on_any_client_bytes(before: bool, garbage: bytes) -> None:
    """Whatever a client sends, before or after a valid CONNECT, the pump answers with
    AWS's behaviour or a close with a lifecycle reason; it never raises."""
    asyncio.run(_feed_pump(garbage, connect_first=not before))


async def _feed_pump(garbage: bytes, *, connect_first: bool) -> None:
    from harness.auth.policy import PolicyDocument
    from harness.gateway.session import ConnectAuth, Principal, Session

    async with open_world() as world:
        principal = Principal(
            method="custom-auth",
            name="fuzz",
            policies=(PolicyDocument.parse(world.default_policy),),
        )

        async def authenticate(_connect: Connect) -> ConnectAuth:
            return ConnectAuth(ok=True, reason="ok", principal=principal)

        transport = MemoryTransport()
        session = Session(
            gateway=world.gateway,
            conn_id="fuzz",
            transport=transport,
            authenticate=authenticate,
            websocket=False,
        )
        if connect_first:
            await session.feed(encode(Connect(client_id="fuzzer")))
        for start in range(0, len(garbage), 7):  # in pieces, as TCP may deliver them
            await session.feed(garbage[start : start + 7])
        await session.close(DisconnectReason.CONNECTION_LOST, "test over")
        assert transport.closed
        assert session.close_reason is not None
        assert world.recorder.first("gateway.error") is None


# External engine: Debian's mosquitto (DESIGN.md "Real parts")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """A private mosquitto on 127.0.0.1 (Debian's package), as a subprocess."""

    def __init__(self, binary: str, config: Path) -> None:
        self.port = _free_port()
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.process = subprocess.Popen(  # noqa: S603 - a fixed binary and our own config
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        log: list[str] = []
        for line in self.process.stderr:  # it logs "... running" once it listens
            log.append(line)
            if " running" in line:
                return
        self.stop()
        pytest.fail(f"mosquitto did not start: {''.join(log)}")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Skips when mosquitto is not installed; always stopped at teardown."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
    broker = Mosquitto(binary, tmp_path / "mosquitto.conf")
    try:
        yield broker
    finally:
        broker.stop()


async def test_external_engine_routes_and_publishes_lifecycle(
    mosquitto: Mosquitto, clients: list[RawClient | PahoClient]
) -> None:
    async with open_world(engine=mosquitto.url) as world:
        started = world.recorder.first("gateway.started")
        assert started is not None and started.get("engine") == "external"
        watcher = await _presence_watcher(world, clients)
        subscriber = await connected(world, clients, "ext-sub")
        assert (await _next_lifecycle(watcher, "ext-sub"))["eventType"] == "connected"
        await subscriber.subscribe(("ext/#", 1))
        publisher = paho_custom(world, clients, "ext-pub")
        await paho_connect(world, publisher)
        publisher.client.publish("ext/hello", b"via mosquitto", qos=1)
        message = await subscriber.expect(Publish)
        assert (message.topic, message.payload) == ("ext/hello", b"via mosquitto")
        subscriber.send(Puback(message.packet_id or 0), Disconnect())
        assert await subscriber.expect_close() == []
        down = await _next_lifecycle(watcher, "ext-sub")
        assert down["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
        # AWS's rules still apply in front of the external engine.
        publisher.client.subscribe("ext/#", qos=2)
        await world.recorder.wait_for(
            "rule.violation", timeout=TIMEOUT, reason="qos2-not-supported"
        )


async def test_external_engine_clean_disconnect_routes_the_last_publish_and_not_the_will(
    mosquitto: Mosquitto, clients: list[RawClient | PahoClient]
) -> None:
    async with open_world(engine=mosquitto.url) as world:
        await _clean_disconnect_keeps_the_will(world, clients)


async def test_external_engine_keeps_persistent_sessions_with_in_flight_qos1(
    mosquitto: Mosquitto, clients: list[RawClient | PahoClient]
) -> None:
    limits = Limits(connects_per_client_id_per_second=None)
    async with open_world(limits, engine=mosquitto.url) as world:
        await _persistent_session_resumes(world, clients, in_flight_kept=True)


async def _persistent_session_resumes(
    world: World, clients: list[RawClient | PahoClient], *, in_flight_kept: bool
) -> None:
    """A cleanSession-0 client dropped with a QoS 1 delivery unacknowledged comes back to
    its session: CONNACK session-present, and the messages it missed (aws-iot.md §4.3)."""
    device = await raw(world, clients)
    assert await device.connect("keeper", clean_session=False) == Connack()
    await device.subscribe(("jobs/#", 1))
    boss = await connected(world, clients, "dispatcher")
    await boss.publish_qos1("jobs/1", b"in flight")
    first = await device.expect(Publish)
    assert (first.topic, first.qos) == ("jobs/1", 1)  # left unacknowledged
    assert await world.gateway.drop("keeper")
    assert await device.expect_close() == []
    await lifecycle_disconnect(world, "keeper", "SERVER_INITIATED_DISCONNECT")
    # The gateway keeps the session's filters for AWS's delivery rules on resume.
    assert world.gateway.persistent_subscriptions.resume("keeper") == {"jobs/#": 1}
    await boss.publish_qos1("jobs/2", b"while away")
    again = await raw(world, clients)
    assert await again.connect("keeper", clean_session=False) == Connack(session_present=True)
    expected = [("jobs/1", b"in flight")] if in_flight_kept else []
    expected.append(("jobs/2", b"while away"))
    received = []
    for _ in expected:
        message = await again.expect(Publish)
        assert message.retain is False  # queued, not retained: wildcard subscriptions get it
        received.append((message.topic, message.payload))
        again.send(Puback(message.packet_id or 0))
    assert sorted(received) == expected
    await again.expect_nothing_pending()
    # A clean session ends the persistent one.
    again.send(Disconnect())
    assert await again.expect_close() == []
    clean = await raw(world, clients)
    assert await clean.connect("keeper") == Connack(session_present=False)
    assert world.gateway.persistent_subscriptions.resume("keeper") == {}


async def test_persistent_session_resumes_after_a_drop(
    clients: list[RawClient | PahoClient],
) -> None:
    async with open_world(Limits(connects_per_client_id_per_second=None)) as world:
        # amqtt discards a delivery in flight when the connection drops (engine docstring).
        await _persistent_session_resumes(world, clients, in_flight_kept=False)


async def test_external_engine_outage_closes_clients_and_refuses_new_ones(
    mosquitto: Mosquitto, clients: list[RawClient | PahoClient]
) -> None:
    async with open_world(engine=mosquitto.url) as world:
        device = await connected(world, clients, "stranded")
        mosquitto.stop()
        assert await device.expect_close() == []
        await closed_with(world, "SERVER_INITIATED_DISCONNECT", client_id="stranded")
        # The presence event cannot be published: recorded, not raised.
        error = await world.recorder.wait_for("gateway.error", timeout=TIMEOUT)
        assert "presence" in error.get("explain", "")
        late = await raw(world, clients)
        assert await late.connect("late") is None
        await closed_with(world, "SERVER_ERROR", client_id="late")
