"""The gateway's TLS as AWS IoT presents it (aws-iot.md §3).

One certificate valid for the endpoint name, ``localhost`` and 127.0.0.1; TLS 1.2 and 1.3
only; SNI optional or required; ALPN on the 443-style port choosing between WebSocket,
MQTT with a client certificate and MQTT with custom-auth credentials. A refused
handshake ends with a TLS alert the client can read, and a ``tls.handshake`` event with a
stable reason code.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.parse
import warnings
from collections.abc import AsyncIterator

import pytest

from harness.gateway import GatewayConfig
from harness.mqtt.codec import Connect, encode
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig
from tests.gateway_wire import RawClient, presigned_target
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False)) as w:
        yield w
        assert not w.recorder.find("gateway.error")


@pytest.fixture
async def strict_world() -> AsyncIterator[World]:
    """A gateway that refuses connections without SNI, as AWS documents (§3)."""
    config = GatewayConfig(sni="require")
    async with World(WorldConfig(cognito=False, gateway=config)) as w:
        yield w
        assert not w.recorder.find("gateway.error")


def _context(world: World) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(world.pki.ca_file))


# --------------------------------------------------------------------------------------
# The certificate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["endpoint", "localhost", "127.0.0.1"])
@pytest.mark.parametrize("port", ["wss", "mqtts"])
async def test_certificate_is_valid_for_the_names_clients_use(
    world: World, name: str, port: str
) -> None:
    """Hostname checking on: the client verifies the name it asked for (SNI for names)."""
    hostname = world.gateway.endpoint if name == "endpoint" else name
    context = _context(world)
    if port == "mqtts":
        cert = world.pki.client_cert("checker")
        context.load_cert_chain(cert.cert_file, cert.key_file)
    target = world.gateway.wss_port if port == "wss" else world.gateway.mqtts_port
    client = await RawClient.connect(world, port=target, context=context, server_hostname=hostname)
    ssl_object = client.writer.get_extra_info("ssl_object")
    assert ssl_object is not None
    names = {value for _kind, value in ssl_object.getpeercert()["subjectAltName"]}
    assert {world.gateway.endpoint, "localhost", "127.0.0.1"} <= names
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    # Python sends no SNI for an IP address (RFC 6066 §3).
    assert handshake.get("sni") == (None if name == "127.0.0.1" else hostname)


def _blocking_handshake(world: World, context: ssl.SSLContext, server_hostname: str) -> None:
    """A handshake by a blocking client, which (unlike asyncio) sends its alert on failure."""
    with (
        socket.create_connection(("127.0.0.1", world.gateway.wss_port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname),
    ):
        pass


async def test_certificate_is_not_valid_for_other_names(world: World) -> None:
    other = "a1other-ats.iot.eu-west-1.amazonaws.com"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await asyncio.to_thread(_blocking_handshake, world, _context(world), other)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "server-certificate-rejected"
    assert handshake.get("openssl") == "SSLV3_ALERT_BAD_CERTIFICATE"


async def test_untrusting_client_is_recorded(world: World) -> None:
    """A client without the world CA refuses the gateway (its trust store, §3)."""
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(_blocking_handshake, world, context, world.gateway.endpoint)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "server-certificate-rejected"
    assert handshake.get("openssl") == "TLSV1_ALERT_UNKNOWN_CA"


# --------------------------------------------------------------------------------------
# SNI
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["wss", "mqtts"])
async def test_sni_required_refuses_a_handshake_without_sni(strict_world: World, port: str) -> None:
    world = strict_world
    target = world.gateway.wss_port if port == "wss" else world.gateway.mqtts_port
    with pytest.raises(ssl.SSLError, match=r"(?i)unrecognized.name"):
        await RawClient.connect(world, port=target, server_hostname=None)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "no-sni"
    assert not world.recorder.find("ws.upgrade")


async def test_sni_required_accepts_a_handshake_with_sni(strict_world: World) -> None:
    world = strict_world
    credential = world.credentials.add_static(policies=(world.default_policy,))
    client = await RawClient.connect(world)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 101
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("sni") == world.gateway.endpoint


async def test_sni_ignored_by_default(world: World) -> None:
    """AWSIoTPythonSDK ≤ 1.6.0 sends no SNI; the default gateway serves it (§3, unknown)."""
    client = await RawClient.connect(world, server_hostname=None)
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("sni") is None


# --------------------------------------------------------------------------------------
# Versions and suites
# --------------------------------------------------------------------------------------


def _legacy_context(world: World, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks only ``version`` (OpenSSL 3 needs security level 0 for it)."""
    context = _context(world)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
@pytest.mark.parametrize("port", ["wss", "mqtts"])
async def test_tls_before_1_2_is_refused(world: World, version: str, port: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls_version = getattr(ssl.TLSVersion, version)
    context = _legacy_context(world, tls_version)
    target = world.gateway.wss_port if port == "wss" else world.gateway.mqtts_port
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version|unsupported.protocol"):
        await RawClient.connect(world, port=target, context=context)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "wrong-version"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_are_accepted(world: World, version: ssl.TLSVersion) -> None:
    context = _context(world)
    context.minimum_version = context.maximum_version = version
    client = await RawClient.connect(world, context=context)
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("version") == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


async def test_tls_1_2_suite_outside_awss_list_is_refused(world: World) -> None:
    context = _context(world)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake.failure"):
        await RawClient.connect(world, context=context)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "no-shared-cipher"


# --------------------------------------------------------------------------------------
# ALPN on the 443-style port (aws-iot.md §3 table)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "http-1.1"])
async def test_alpn_none_or_http_1_1_is_websocket(world: World, alpn: list[str] | None) -> None:
    """MQTT over WSS: no ALPN, or awscrt's ``http/1.1``."""
    credential = world.credentials.add_static(policies=(world.default_policy,))
    client = await RawClient.connect(world, alpn=alpn)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 101
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") == (alpn[0] if alpn else None)
    await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=True)


async def _connack(client: RawClient, connect: Connect) -> bytes:
    client.send(encode(connect))
    return await client.reader.readexactly(4)


async def test_alpn_x_amzn_mqtt_ca_is_mqtt_with_a_client_certificate(world: World) -> None:
    cert = world.pki.client_cert("sensor")
    world.gateway.register_thing("sensor", cert.cert_pem, policies=(world.default_policy,))
    context = _context(world)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    context.set_alpn_protocols(["x-amzn-mqtt-ca"])
    client = await RawClient.connect(world, context=context)
    assert await _connack(client, Connect("sensor")) == b"\x20\x02\x00\x00"
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert (handshake.get("alpn"), handshake.get("client_certificate")) == (
        "x-amzn-mqtt-ca",
        True,
    )
    assert not world.recorder.find("ws.upgrade")


async def test_alpn_x_amzn_mqtt_ca_without_a_certificate_closes_after_connect(
    world: World,
) -> None:
    client = await RawClient.connect(world, alpn=["x-amzn-mqtt-ca"])
    client.send(encode(Connect("anonymous")))
    assert await client.read_to_end() == b""  # no CONNACK (aws-iot.md §4.5)
    await client.close()
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="connect")
    assert (verdict.ok, verdict.reason) == (False, "no-client-certificate")


async def test_alpn_mqtt_is_mqtt_with_custom_auth_in_the_username(world: World) -> None:
    assert world.authorizer_key is not None
    token = "alpn-token"
    signature = urllib.parse.quote(world.authorizer_key.sign(token), safe="")
    username = (
        f"?x-amz-customauthorizer-name={DEFAULT_AUTHORIZER}"
        f"&x-amz-customauthorizer-signature={signature}&token={token}"
    )
    client = await RawClient.connect(world, alpn=["mqtt"])
    assert await _connack(client, Connect("direct", username=username)) == b"\x20\x02\x00\x00"
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") == "mqtt"


async def test_unknown_alpn_only_falls_back_to_websocket(world: World) -> None:
    """``x-amzn-http-ca`` (HTTPS with mTLS) is not served: no protocol is selected, and
    the connection is treated as HTTPS/WSS, the ``none`` row of the table."""
    client = await RawClient.connect(world, alpn=["x-amzn-http-ca"])
    reply = await client.upgrade("/topics/x", host=world.gateway.endpoint)
    assert reply.status == 404
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") is None


async def test_mqtts_port_needs_no_alpn(world: World) -> None:
    """8883: MQTT with a client certificate, no ALPN (aws-iot.md §3 table)."""
    cert = world.pki.client_cert("meter")
    world.gateway.register_thing("meter", cert.cert_pem, policies=(world.default_policy,))
    context = _context(world)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    context.set_alpn_protocols(["x-amzn-mqtt-ca"])  # offered, ignored
    client = await RawClient.connect(world, port=world.gateway.mqtts_port, context=context)
    assert await _connack(client, Connect("meter")) == b"\x20\x02\x00\x00"
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") is None


async def test_mqtts_port_requires_a_client_certificate(world: World) -> None:
    context = _context(world)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the failure is in the handshake
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake.failure|certificate.required"):
        await RawClient.connect(world, port=world.gateway.mqtts_port, context=context)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "no-client-certificate"
