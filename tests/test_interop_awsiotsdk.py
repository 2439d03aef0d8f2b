"""awsiotsdk v2 (awscrt) against the fake gateway: every connection builder an AWS IoT
device uses (aws-iot.md §1, §2.1, §3, §7), each connecting, subscribing, publishing,
receiving its own message and disconnecting.

awscrt resolves names and opens sockets in C, out of reach of the resolver override, so
each builder gets ``endpoint="127.0.0.1"`` or ``"localhost"`` (the gateway's certificate
covers both) and ``port=`` the bound port. Where awscrt insists on port 443
(``direct_with_custom_authorizer``, the Cognito credentials provider) see the notes there.
"""

from __future__ import annotations

import asyncio
import queue
import uuid
from typing import Any

import pytest
from awscrt import auth, http, io, mqtt
from awsiot import mqtt_connection_builder

from harness.resolver import ConnectProxy
from harness.world import DEFAULT_AUTHORIZER, World, cognito_host
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop


def common(world: World, **overrides: Any) -> dict[str, Any]:
    """The builder arguments every test shares."""
    options: dict[str, Any] = {
        "endpoint": "127.0.0.1",
        "port": world.gateway.wss_port,
        "ca_filepath": str(world.pki.ca_file),
        "client_id": f"crt-{uuid.uuid4().hex[:12]}",
        "clean_session": True,
        "keep_alive_secs": 30,
        "reconnect_min_timeout_secs": 60,  # a refused client must not hammer the gateway
    }
    options.update(overrides)
    return options


async def result(future: Any) -> Any:
    """Wait for an awscrt future without blocking the loop the world runs in."""
    return await asyncio.to_thread(future.result, 2 * TIMEOUT)


async def round_trip(world: World, connection: mqtt.Connection, topic: str) -> None:
    """Connect, subscribe, publish, receive our own message, disconnect; assert each step."""
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def on_message(topic: str, payload: bytes, **_: Any) -> None:
        received.put((topic, payload))

    connected = await result(connection.connect())
    assert connected["session_present"] is False
    try:
        subscribed, _ = connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, on_message)
        assert (await result(subscribed))["qos"] == mqtt.QoS.AT_LEAST_ONCE
        published, _ = connection.publish(topic, b"round trip", mqtt.QoS.AT_LEAST_ONCE)
        await result(published)
        got = await asyncio.to_thread(received.get, True, 2 * TIMEOUT)
        assert got == (topic, b"round trip")
    finally:
        await result(connection.disconnect())
    # Let the gateway finish the session before the world stops.
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)


def connect_verdict(world: World) -> Any:
    verdicts = world.recorder.find("auth.verdict")
    assert verdicts and all(v.ok for v in verdicts), [str(v) for v in verdicts]
    return verdicts


# SigV4 over WSS (aws-iot.md §1, §7: awscrt signs service iotdevicegateway, token unsigned)


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "localhost"])
async def test_websockets_with_static_credentials(world: World, endpoint: str) -> None:
    key = world.credentials.add_static(policies=(world.default_policy,))
    provider = auth.AwsCredentialsProvider.new_static(key.access_key_id, key.secret_access_key)
    connection = mqtt_connection_builder.websockets_with_default_aws_signing(
        region=world.region, credentials_provider=provider, **common(world, endpoint=endpoint)
    )
    await round_trip(world, connection, "crt/static")
    (upgrade,) = [v for v in connect_verdict(world) if v.get("stage") == "upgrade"]
    assert (upgrade.get("method"), upgrade.get("access_key_id")) == ("sigv4", key.access_key_id)
    handshake = world.recorder.first("tls.handshake", ok=True)
    assert handshake is not None and handshake.get("alpn") in (None, "http/1.1")


async def test_websockets_with_cognito_credentials(world: World, cognito: Any) -> None:
    assert world.pool is not None
    identity = (await asyncio.to_thread(cognito.get_id, IdentityPoolId=world.pool.pool_id))[
        "IdentityId"
    ]
    wire = (await asyncio.to_thread(cognito.get_credentials_for_identity, IdentityId=identity))[
        "Credentials"
    ]
    provider = auth.AwsCredentialsProvider.new_static(
        wire["AccessKeyId"], wire["SecretKey"], wire["SessionToken"]
    )
    connection = mqtt_connection_builder.websockets_with_default_aws_signing(
        region=world.region, credentials_provider=provider, **common(world)
    )
    await round_trip(world, connection, "crt/cognito")
    (upgrade,) = [v for v in connect_verdict(world) if v.get("stage") == "upgrade"]
    assert (upgrade.get("access_key_id"), upgrade.get("principal")) == (
        wire["AccessKeyId"],
        identity,
    )
    timeline = str([e.to_json() for e in world.recorder])
    assert wire["SessionToken"] not in timeline and wire["SecretKey"] not in timeline


async def test_websockets_with_the_cognito_credentials_provider(world: World, cognito: Any) -> None:
    """awscrt's own Cognito provider (aws-c-auth): TLS to ``cognito-identity.<region>.
    amazonaws.com`` on port 443, fixed (aws-iot.md §6). It resolves natively, so the
    resolver override cannot help; it honours an HTTP proxy, so it goes through the
    world's :class:`ConnectProxy` and keeps the real name for SNI and the certificate."""
    assert world.pool is not None
    identity = (await asyncio.to_thread(cognito.get_id, IdentityPoolId=world.pool.pool_id))[
        "IdentityId"
    ]
    async with ConnectProxy(world, recorder=world.recorder) as proxy:
        tls = io.TlsContextOptions()
        tls.override_default_trust_store_from_path(None, str(world.pki.ca_file))
        provider = auth.AwsCredentialsProvider.new_cognito(
            endpoint=cognito_host(world.region),
            identity=identity,
            tls_ctx=io.ClientTlsContext(tls),
            http_proxy_options=http.HttpProxyOptions(
                proxy.host, proxy.port, connection_type=http.HttpProxyConnectionType.Tunneling
            ),
        )
        connection = mqtt_connection_builder.websockets_with_default_aws_signing(
            region=world.region, credentials_provider=provider, **common(world)
        )
        await round_trip(world, connection, "crt/cognito-provider")
    tunnel = world.recorder.first("proxy.connect", ok=True)
    assert tunnel is not None
    assert tunnel.get("target") == f"{cognito_host(world.region)}:443"
    issued = world.recorder.first("cognito.call", operation="GetCredentialsForIdentity", ok=True)
    assert issued is not None
    (upgrade,) = [v for v in connect_verdict(world) if v.get("stage") == "upgrade"]
    assert upgrade.get("access_key_id") == issued.get("access_key_id")


# Custom authorizers (aws-iot.md §2.1): credentials in the CONNECT username


def authorizer_args(world: World) -> dict[str, Any]:
    assert world.authorizer_key is not None
    token = f"device-{uuid.uuid4()}"
    return {
        "auth_authorizer_name": DEFAULT_AUTHORIZER,
        "auth_token_key_name": "token",
        "auth_token_value": token,
        "auth_authorizer_signature": world.authorizer_key.sign(token),
    }


async def test_websockets_with_custom_authorizer(world: World) -> None:
    connection = mqtt_connection_builder.websockets_with_custom_authorizer(
        **authorizer_args(world), **common(world, endpoint="localhost")
    )
    await round_trip(world, connection, "crt/custom-wss")
    (verdict,) = connect_verdict(world)
    assert verdict.get("stage") == "connect"
    upgrade = world.recorder.first("ws.upgrade", ok=True)
    assert upgrade is not None


async def test_direct_with_custom_authorizer(world: World) -> None:
    """Direct MQTT with ALPN ``mqtt`` on the WSS port (AWS's 443). The builder forces
    ``port=443`` whatever it is given, so the bound port is set on the connection it
    returns; everything else (ALPN, username) is the builder's."""
    connection = mqtt_connection_builder.direct_with_custom_authorizer(
        **authorizer_args(world), **common(world)
    )
    assert connection.port == 443
    connection.port = world.gateway.wss_port
    await round_trip(world, connection, "crt/custom-direct")
    handshake = world.recorder.first("tls.handshake", ok=True)
    assert handshake is not None and handshake.get("alpn") == "mqtt"
    assert not world.recorder.find("ws.upgrade")
    (verdict,) = connect_verdict(world)
    assert verdict.get("stage") == "connect"


# X.509 client certificates (aws-iot.md §3)


async def test_mtls_from_path_on_the_mqtts_port(world: World) -> None:
    cert = world.pki.client_cert("crt-thing")
    world.gateway.register_thing("crt-thing", cert.cert_pem, policies=(world.default_policy,))
    connection = mqtt_connection_builder.mtls_from_path(
        cert_filepath=str(cert.cert_file),
        pri_key_filepath=str(cert.key_file),
        **common(world, port=world.gateway.mqtts_port),
    )
    await round_trip(world, connection, "crt/mtls")
    accepted = world.recorder.first("tcp.accept")
    assert accepted is not None and accepted.get("port") == "mqtts"
    connect_verdict(world)
