"""Bad input never crashes the gateway, and everyone else keeps being served.

Each test sends one kind of bad input over a real connection (garbage before TLS, a
stalled upgrade, a wrong path, broken WebSocket frames, broken MQTT, a client that
vanishes mid-packet) and checks three things: the offending connection is closed cleanly
and the timeline says why; a well-behaved paho client on the same gateway still publishes
and receives afterwards; and no ``gateway.error`` (a harness bug) was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.engine import EngineLink
from harness.gateway import Gateway, GatewayConfig
from harness.mqtt.codec import Connack, Connect, decode, encode
from harness.pki import WorldPKI
from harness.world import World, WorldConfig
from tests.gateway_wire import (
    RawClient,
    Watcher,
    parse_frame,
    presigned_target,
    upgrade_request,
    ws_frame,
)
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop

#: Short enough that stalled clients are cut quickly, long enough for loopback handshakes.
SHORT = TIMEOUT / 10


@pytest.fixture
async def world() -> AsyncIterator[World]:
    config = GatewayConfig(handshake_timeout=SHORT, connect_timeout=SHORT)
    async with World(WorldConfig(cognito=False, gateway=config)) as w:
        yield w


@pytest.fixture
async def watcher(world: World) -> AsyncIterator[Watcher]:
    """Connected before the bad input; checked after it; no harness bug in between."""
    watching = await Watcher.start(world)
    yield watching
    await watching.check()
    await watching.close()
    assert not world.recorder.find("gateway.error"), world.recorder.find("gateway.error")


async def upgraded(world: World) -> RawClient:
    """A raw client past a valid SigV4 upgrade and a CONNECT/CONNACK."""
    credential = world.credentials.add_static(policies=(world.default_policy,))
    client = await RawClient.connect(world)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 101
    client.send(ws_frame(encode(Connect(f"raw-{os.urandom(4).hex()}", keep_alive=60))))
    opcode, payload = await client.read_frame()
    decoded = decode(payload)
    assert opcode == 0x2 and decoded is not None and isinstance(decoded[0], Connack)
    return client


async def closed_by_gateway(client: RawClient) -> bytes:
    """What the gateway still sent, once it has closed the connection (within TIMEOUT)."""
    rest = await client.read_to_end()
    await client.close()
    return rest


# --------------------------------------------------------------------------------------
# Before and during TLS
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", id="plain-http"),
        pytest.param(bytes([0x10, 0x0C]) + b"\x00\x04MQTT\x04\x02\x00\x3c", id="plain-mqtt"),
        pytest.param(bytes(range(256)) * 4, id="binary-noise"),
        pytest.param(b"\x16\x03\x01\xff\xff" + b"\x00" * 64, id="broken-client-hello"),
    ],
)
@pytest.mark.parametrize("port", ["wss", "mqtts"])
async def test_garbage_before_tls(
    world: World, watcher: Watcher, garbage: bytes, port: str
) -> None:
    target = world.gateway.wss_port if port == "wss" else world.gateway.mqtts_port
    client = await RawClient.plain(world, port=target)
    client.send(garbage)
    await closed_by_gateway(client)
    event = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert event.reason in ("not-tls", "tls-error", "handshake-timeout"), event
    assert event.get("explain")


async def test_tcp_client_that_never_says_hello(world: World, watcher: Watcher) -> None:
    client = await RawClient.plain(world)
    await closed_by_gateway(client)
    event = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert event.reason == "handshake-timeout"


async def test_tcp_client_that_leaves_mid_handshake(world: World, watcher: Watcher) -> None:
    client = await RawClient.plain(world)
    client.send(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then gone
    client.writer.transport.abort()
    event = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert event.reason in ("eof", "tls-error"), event


# --------------------------------------------------------------------------------------
# The upgrade request
# --------------------------------------------------------------------------------------


async def test_tls_client_that_sends_nothing_is_cut(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert event.reason == "upgrade-timeout"


async def test_tls_client_that_closes_without_a_request(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    await client.close()
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert event.reason == "eof"


async def test_slow_upgrade_that_never_finishes(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    client.send(b"GET /mqtt HTTP/1.1\r\nHost: " + world.gateway.endpoint.encode() + b"\r\n")
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert event.reason == "upgrade-timeout"
    assert f"{SHORT:g} s" in event.get("explain")


async def test_path_other_than_mqtt_is_404(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    reply = await client.upgrade("/not-mqtt?x=1", host=world.gateway.endpoint)
    assert reply.status == 404
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert (event.get("status"), event.reason, event.get("path")) == (404, "not-found", "/not-mqtt")


async def test_plain_get_without_upgrade_headers(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    client.send(f"GET /mqtt HTTP/1.1\r\nHost: {world.gateway.endpoint}\r\n\r\n".encode())
    reply = await client.read_reply()
    assert reply.status == 426  # "Upgrade Required", as some AWS users report (§1.9)
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert (event.get("status"), event.reason) == (426, "not-websocket")


async def test_malformed_request_line_is_400(world: World, watcher: Watcher) -> None:
    client = await RawClient.connect(world)
    client.send(b"BLAH\r\n\r\n")
    reply = await client.read_reply()
    assert reply.status == 400
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=False)
    assert (event.get("status"), event.reason) == (400, "malformed")


# --------------------------------------------------------------------------------------
# Inside a good WebSocket
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason", "code"),
    [
        pytest.param(ws_frame(b"\x30\x00", mask=False), "protocol-error", 1002, id="unmasked"),
        pytest.param(ws_frame(b"\xc0\x00", opcode=0x3), "protocol-error", 1002, id="bad-opcode"),
        pytest.param(
            ws_frame(b"", length=2**40)[:14], "message-too-big", 1009, id="oversize-length"
        ),
        pytest.param(
            bytes([0x82 | 0x40, 0x82, 0, 0, 0, 0, 0xC0, 0x00]), "protocol-error", 1002, id="rsv1"
        ),
        pytest.param(ws_frame(b"x" * 200, opcode=0x9), "protocol-error", 1002, id="oversize-ping"),
    ],
)
async def test_malformed_websocket_frame(
    world: World, watcher: Watcher, frame: bytes, reason: str, code: int
) -> None:
    client = await upgraded(world)
    client.send(frame)
    opcode, payload = await client.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == code  # a close frame
    await closed_by_gateway(client)
    event = await world.recorder.wait_for("ws.error", timeout=TIMEOUT)
    assert (event.reason, event.get("close_code")) == (reason, code)
    # The client broke the WebSocket protocol: its error, not a lost connection.
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, conn=event.conn)
    assert closed.get("reason") == "CLIENT_ERROR"
    assert "WebSocket protocol" in closed.get("explain")
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\xf0\x00", id="reserved-packet-type"),
        pytest.param(b"\x30\xff\xff\xff\xff\x7f", id="remaining-length-too-long"),
        pytest.param(b"\x82\x05\x00\x01\x00\x01a", id="subscribe-without-qos"),
        pytest.param(encode(Connect("second")), id="second-connect"),
    ],
)
async def test_malformed_mqtt_inside_a_good_websocket(
    world: World, watcher: Watcher, packet: bytes
) -> None:
    client = await upgraded(world)
    client.send(ws_frame(packet))
    opcode, payload = await client.read_frame()
    # AWS closes without an MQTT goodbye; the close frame (1000) says it was deliberate.
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1000
    await closed_by_gateway(client)
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
    assert closed.get("reason") == "CLIENT_ERROR"


async def test_malformed_connect_as_first_packet(world: World, watcher: Watcher) -> None:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    client = await RawClient.connect(world)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 101
    client.send(ws_frame(b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00"))  # bad protocol name
    await closed_by_gateway(client)
    event = await world.recorder.wait_for("mqtt.malformed", timeout=TIMEOUT)
    assert event.reason and event.get("explain")
    assert not world.recorder.find("mqtt.out", conn=event.conn, packet="CONNACK")


async def test_upgraded_client_that_never_sends_connect_is_cut(
    world: World, watcher: Watcher
) -> None:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    client = await RawClient.connect(world)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 101
    await closed_by_gateway(client)
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
    assert "no CONNECT" in closed.get("explain")


@pytest.mark.parametrize("where", ["mid-frame", "mid-packet"])
async def test_client_vanishes_mid_packet(world: World, watcher: Watcher, where: str) -> None:
    client = await upgraded(world)
    publish = b"\x30\x40\x00\x03a/b" + b"p" * 20  # announces 64 bytes, carries 25
    if where == "mid-frame":
        client.send(ws_frame(publish, length=200)[:30])
    else:
        client.send(ws_frame(publish))
    client.writer.transport.abort()
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
    assert closed.get("reason") == "CONNECTION_LOST"
    disconnected = await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)
    assert disconnected.get("disconnect_reason") == "CONNECTION_LOST"
    assert not world.recorder.find("ws.error")  # a lost connection breaks no protocol


# --------------------------------------------------------------------------------------
# Direct MQTT over TLS (mTLS on the MQTTS port)
# --------------------------------------------------------------------------------------


async def mtls_client(world: World, name: str) -> RawClient:
    cert = world.pki.client_cert(name)
    world.gateway.register_thing(name, cert.cert_pem, policies=(world.default_policy,))
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    context.load_cert_chain(cert.cert_file, cert.key_file)
    return await RawClient.connect(world, port=world.gateway.mqtts_port, context=context)


async def test_mtls_client_that_sends_nothing_is_cut(world: World, watcher: Watcher) -> None:
    client = await mtls_client(world, "mute")
    assert await closed_by_gateway(client) == b""
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT)
    assert "no CONNECT" in closed.get("explain")


async def test_mtls_client_vanishes_mid_packet(world: World, watcher: Watcher) -> None:
    client = await mtls_client(world, "flaky")
    client.send(encode(Connect("flaky", keep_alive=60)))
    assert (await client.reader.readexactly(4))[0] == 0x20  # CONNACK
    client.send(b"\x30\x40\x00\x03a/b")
    client.writer.transport.abort()
    closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, client_id="flaky")
    assert closed.get("reason") == "CONNECTION_LOST"


async def test_mtls_garbage_after_tls(world: World, watcher: Watcher) -> None:
    client = await mtls_client(world, "noisy")
    client.send(b"\x00" * 16)
    assert await closed_by_gateway(client) == b""
    event = await world.recorder.wait_for("mqtt.malformed", timeout=TIMEOUT)
    assert event.reason


# --------------------------------------------------------------------------------------
# Random upgrade requests (hypothesis, over real connections)
# --------------------------------------------------------------------------------------

_HEADER_LINES = st.sampled_from(
    [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: mqtt",
        "Sec-WebSocket-Protocol: bogus",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        "Host: a3harnessfake1-ats.iot.us-east-1.amazonaws.com",
        "x-amz-customauthorizer-name: nope",
        "Host:",
        ": empty-name",
        "no colon",
    ]
)
_REQUEST_LINES = st.sampled_from(
    [
        "GET /mqtt HTTP/1.1",
        "GET /mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%ZZ HTTP/1.1",
        "GET /mqtt?X-Amz-Credential=a/b/c&X-Amz-Signature=00 HTTP/1.1",
        "POST /mqtt HTTP/1.1",
        "GET /mqtt HTTP/1.0",
        "GET  HTTP/1.1",
        "GET http://example.com/mqtt HTTP/1.1",
    ]
)


@st.composite
def _near_requests(draw: st.DrawFn) -> bytes:
    lines = [draw(_REQUEST_LINES)]
    if draw(st.booleans()):
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol: mqtt",
        ]
    lines += draw(st.lists(_HEADER_LINES, max_size=4))
    # Whatever follows the request is WebSocket input for a 101, or ignored.
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + draw(st.binary(max_size=16))


def _exchange(world: World, request: bytes) -> bytes:
    """Send ``request`` over a fresh TLS connection; what came back before the close."""
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    with (
        socket.create_connection(("127.0.0.1", world.gateway.wss_port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=world.gateway.endpoint) as tls,
    ):
        tls.sendall(request + b"\r\n\r\n")
        received = b""
        try:
            while data := tls.recv(65536):
                received += data
        except (ConnectionError, ssl.SSLError):
            pass
        return received


async def test_random_upgrade_requests_are_answered_or_closed(
    world: World, watcher: Watcher
) -> None:
    seen: list[int] = []

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(request=st.one_of(st.binary(max_size=300), _near_requests()))
    def answered_or_closed(request: bytes) -> None:
        received = _exchange(world, request)
        if received:
            assert received.startswith(b"HTTP/1.1 "), received[:80]
            status = int(received[9:12])
            assert status in (400, 403, 404, 426, 101), received[:80]
            seen.append(status)

    await asyncio.to_thread(answered_or_closed)
    await watcher.check()
    assert not world.recorder.find("gateway.error")


def _connected_then(world: World, target: str, client_id: str, noise: bytes) -> None:
    """Upgrade, CONNECT, read the CONNACK, send ``noise``, hang up (blocking, in a thread)."""
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    endpoint = world.gateway.endpoint
    with (
        socket.create_connection(("127.0.0.1", world.gateway.wss_port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=endpoint) as tls,
    ):
        tls.sendall(upgrade_request(target, host=endpoint))
        head = b""
        while b"\r\n\r\n" not in head:
            data = tls.recv(65536)
            assert data, "closed before the 101"
            head += data
        assert head.startswith(b"HTTP/1.1 101 "), head[:80]
        rest = head.partition(b"\r\n\r\n")[2]
        tls.sendall(ws_frame(encode(Connect(client_id, keep_alive=60))))
        while parse_frame(rest) is None:
            data = tls.recv(65536)
            assert data, "closed before the CONNACK"
            rest += data
        # The gateway may already have hung up on a prefix of the noise.
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            tls.sendall(noise)


async def test_random_bytes_after_connack_end_in_a_clean_close(
    world: World, watcher: Watcher
) -> None:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    target = presigned_target(world, credential)
    counter = iter(range(10_000))

    @settings(max_examples=20, deadline=None, database=None)
    @given(noise=st.binary(min_size=1, max_size=200))
    def closed_cleanly(noise: bytes) -> None:
        _connected_then(world, target, f"noise-{next(counter)}", noise)

    await asyncio.to_thread(closed_cleanly)
    for upgrade in world.recorder.find("ws.upgrade", ok=True):
        if upgrade.conn and upgrade.conn != watcher_conn(world):
            await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, conn=upgrade.conn)
    assert not world.recorder.find("gateway.error")


def watcher_conn(world: World) -> str | None:
    verdict = world.recorder.first("auth.verdict", stage="connect", client_id="watcher")
    return verdict.conn if verdict else None


# --------------------------------------------------------------------------------------
# A gateway that cannot start
# --------------------------------------------------------------------------------------


class RecordingEngine:
    """An engine that only remembers whether it runs (harness.engine.Engine)."""

    name = "recording"

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def connect(self, *, peer: tuple[str, int]) -> EngineLink:
        raise OSError("not a real engine")

    async def publish_system(self, topic: str, payload: bytes) -> None:
        return None


async def test_a_port_in_use_fails_the_start_and_leaves_nothing_open(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The MQTTS port is taken: start raises, the WSS listener made before it is closed
    (no socket left open) and the engine is stopped."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        wss_port = probe.getsockname()[1]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        engine = RecordingEngine()
        gateway = Gateway(
            GatewayConfig(wss_port=wss_port, mqtts_port=held.getsockname()[1]),
            pki=WorldPKI(tmp_path_factory.mktemp("pki")),
            engine=engine,
        )
        with pytest.raises(OSError, match="in use"):
            await gateway.start()
        assert not engine.running
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", wss_port)
        assert not gateway.recorder.find("gateway.started")


async def test_a_stop_as_the_upgrade_request_arrives_ends_the_connection() -> None:
    """The gateway stops 0 to 7 turns of the event loop after an upgrade request was sent:
    the connection task ends with it. ``asyncio.wait_for`` (Python 3.11) returned the
    request and dropped the stop's cancellation when both came in the same turn; with no
    ``connect_timeout`` the upgraded connection then held the stop up for ever."""
    config = WorldConfig(
        cognito=False, newcomer_defaults=False, gateway=GatewayConfig(connect_timeout=None)
    )
    for turns in range(8):
        world = World(config)
        await world.__aenter__()
        credential = world.credentials.add_static(policies=(world.default_policy,))
        client = await RawClient.connect(world)
        client.send(upgrade_request(presigned_target(world, credential), host=world.endpoint))
        for _ in range(turns):
            await asyncio.sleep(0)
        stop = asyncio.create_task(world.__aexit__(None, None, None))
        try:
            done, _ = await asyncio.wait({stop}, timeout=TIMEOUT)
            assert stop in done, f"the gateway stopped {turns} turns after a request hung"
            stop.result()
        finally:
            client.writer.transport.abort()  # what ends a hung stop
            await asyncio.wait({stop}, timeout=TIMEOUT)
