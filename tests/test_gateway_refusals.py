"""The gateway accepts and refuses as AWS IoT does, seen from real clients and the timeline.

SigV4 failures are AWS's 403 (aws-iot.md §1.9), read byte for byte over a raw TLS socket;
custom-auth failures are a 101 and a close after CONNECT without CONNACK (§2.4); mTLS
failures are a failed handshake or a close after CONNECT (§3). Each refusal is also an
``auth.verdict`` (or ``tls.handshake``) event with its reason code and explanation, and no
secret reaches the timeline.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import pytest

from harness.auth import sigv4
from harness.auth.credentials import Credential, new_access_key_id
from harness.events import Event
from harness.mqtt.codec import Connack, Connect, Disconnect, Puback, Publish, Suback, decode, encode
from harness.pki import BadCert, IssuedCert
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig
from tests.gateway_wire import (
    RawClient,
    Reply,
    assert_no_secrets,
    custom_auth_query,
    mqtt_publish,
    mqtt_subscribe,
    parse_frame,
    parse_head,
    presigned_target,
    upgrade_request,
    ws_frame,
)
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop

_AMZ = r"(\d{8}T\d{6}Z)"
_TRACE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False)) as w:
        yield w
        assert not w.recorder.find("gateway.error"), "the gateway hit a harness bug"


def no_gateway_errors(world: World) -> None:
    assert not world.recorder.find("gateway.error")


# --------------------------------------------------------------------------------------
# SigV4: AWS's 403, byte for byte (aws-iot.md §1.9)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigV4Case:
    """A SigV4 client mistake: how the upgrade is made, and what AWS answers."""

    target: str
    host: str
    reason: str
    message: str | Callable[[str], bool]
    hint: str | None = None
    secrets: tuple[str | None, ...] = ()


def _wrong_secret(world: World) -> SigV4Case:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    wrong = replace(credential, secret_access_key="x" * 40)
    return SigV4Case(
        target=presigned_target(world, wrong),
        host=world.gateway.endpoint,
        reason="signature-mismatch",
        message=sigv4.MSG_SIGNATURE_MISMATCH,
        secrets=(credential.secret_access_key,),
    )


def _temporary(world: World, *, at: float, lifetime: float = 3600) -> Credential:
    return world.credentials.mint_temporary(
        now=at, lifetime=lifetime, principal="us-east-1:player", policies=(world.default_policy,)
    )


def _expired_token(world: World) -> SigV4Case:
    credential = _temporary(world, at=world.clock.now() - 7200)
    return SigV4Case(
        target=presigned_target(world, credential),
        host=world.gateway.endpoint,
        reason="token-expired",
        message=sigv4.MSG_TOKEN_EXPIRED,
        secrets=(credential.secret_access_key, credential.session_token),
    )


def _signed_400_s_ago(world: World) -> SigV4Case:
    credential = _temporary(world, at=world.clock.now())
    signed_at = world.clock.now() - 400

    def aws_text(message: str) -> bool:
        match = re.fullmatch(
            rf"Signature expired: {_AMZ} is now earlier than {_AMZ} \({_AMZ} - 5 min\.\)",
            message,
        )
        if match is None:
            return False
        date, earliest, now = (sigv4.parse_amz_date(g) for g in match.groups())
        assert date is not None and earliest is not None and now is not None
        return (
            match.group(1) == sigv4.format_amz_date(signed_at)
            and earliest == now - 300
            and abs(now - world.clock.now()) < TIMEOUT
        )

    return SigV4Case(
        target=presigned_target(world, credential, now=signed_at),
        host=world.gateway.endpoint,
        reason="clock-skew",
        message=aws_text,
        secrets=(credential.secret_access_key, credential.session_token),
    )


def _token_signed(world: World) -> SigV4Case:
    credential = _temporary(world, at=world.clock.now())
    return SigV4Case(
        target=presigned_target(world, credential, token_style="signed"),
        host=world.gateway.endpoint,
        reason="signature-mismatch",
        message=sigv4.MSG_SIGNATURE_MISMATCH,
        hint="token-signed",
        secrets=(credential.secret_access_key, credential.session_token),
    )


def _empty_canonical_query(world: World) -> SigV4Case:
    credential = _temporary(world, at=world.clock.now())
    return SigV4Case(
        target=presigned_target(world, credential, empty_canonical_query=True, layout="sdk-v1"),
        host=world.gateway.endpoint,
        reason="signature-mismatch",
        message=sigv4.MSG_SIGNATURE_MISMATCH,
        hint="empty-canonical-query",
        secrets=(credential.secret_access_key, credential.session_token),
    )


def _host_with_port(world: World) -> SigV4Case:
    """paho 1.6.1 sends ``Host: <endpoint>:443`` whatever was signed (aws-iot.md §1.6)."""
    credential = world.credentials.add_static(policies=(world.default_policy,))
    return SigV4Case(
        target=presigned_target(world, credential),
        host=f"{world.gateway.endpoint}:443",
        reason="signature-mismatch",
        message=sigv4.MSG_SIGNATURE_MISMATCH,
        hint="host-with-port",
        secrets=(credential.secret_access_key,),
    )


def _unknown_key(world: World) -> SigV4Case:
    stranger = Credential(
        access_key_id=new_access_key_id(temporary=False), secret_access_key="s" * 40
    )
    return SigV4Case(
        target=presigned_target(world, stranger),
        host=world.gateway.endpoint,
        reason="unknown-key",
        message=sigv4.MSG_UNKNOWN_KEY,
        secrets=(stranger.secret_access_key,),
    )


SIGV4_CASES = {
    "wrong-secret": _wrong_secret,
    "expired-temporary-credentials": _expired_token,
    "clock-skew-beyond-5-min": _signed_400_s_ago,
    "token-signed-into-canonical-query": _token_signed,
    "empty-canonical-query": _empty_canonical_query,
    "host-with-443-signed-without": _host_with_port,
    "unknown-access-key": _unknown_key,
}


def check_403(reply: Reply, message: str | Callable[[str], bool]) -> str:
    """AWS's 403 wire shape (aws-iot.md §1.9); returns the body's message."""
    assert reply.status_line == "HTTP/1.1 403 Forbidden"
    assert reply.header("content-type") == "application/json"
    assert reply.header("x-amzn-ErrorType") == "ForbiddenException:"
    assert "x-amzn-ErrorType" in reply.names()  # AWS's casing, not lowercased
    assert reply.header("connection") == "keep-alive"
    assert reply.header("x-amzn-RequestId")
    assert reply.header("date")
    assert reply.header("content-length") == str(len(reply.body))
    body = json.loads(reply.body)
    assert list(body) == ["message", "traceId"]
    assert _TRACE_ID.fullmatch(body["traceId"])
    # Compact JSON: the observed content lengths are exactly those of the compact form.
    assert reply.body == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if callable(message):
        assert message(body["message"]), body["message"]
    else:
        assert body["message"] == message
    return str(body["message"])


@pytest.mark.parametrize("case_name", list(SIGV4_CASES))
async def test_sigv4_refusal_is_awss_403(world: World, case_name: str) -> None:
    case = SIGV4_CASES[case_name](world)
    client = await RawClient.connect(world)
    reply = await client.upgrade(case.target, host=case.host)
    message = check_403(reply, case.message)
    assert await client.read_to_end() == b""  # nothing after the 403, then closed
    verdict = await world.recorder.wait_for(
        "auth.verdict", timeout=TIMEOUT, stage="upgrade", method="sigv4"
    )
    assert (verdict.ok, verdict.reason, verdict.get("hint")) == (False, case.reason, case.hint)
    assert verdict.get("message") == message
    assert verdict.get("explain")
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, conn=verdict.conn)
    assert (upgrade.ok, upgrade.get("status"), upgrade.reason) == (False, 403, case.reason)
    assert not world.recorder.find("mqtt.in")
    await client.close()
    assert_no_secrets(world.recorder, case.secrets + _query_secrets(case.target))


def _query_secrets(target: str) -> tuple[str, ...]:
    """The signature and session token a presigned target carries."""
    query = dict(urllib.parse.parse_qsl(target.partition("?")[2]))
    return tuple(query[k] for k in ("X-Amz-Signature", "X-Amz-Security-Token") if k in query)


async def test_signature_mismatch_body_is_241_bytes_as_observed(world: World) -> None:
    """The observed length of AWS's signature-mismatch 403 (aws-iot.md §1.9)."""
    case = _wrong_secret(world)
    client = await RawClient.connect(world)
    reply = await client.upgrade(case.target, host=case.host)
    assert reply.header("content-length") == "241"
    await client.close()


async def test_clock_skew_body_is_163_bytes_as_observed(world: World) -> None:
    case = _signed_400_s_ago(world)
    client = await RawClient.connect(world)
    reply = await client.upgrade(case.target, host=case.host)
    assert reply.header("content-length") == "163"
    await client.close()


async def test_paho_reports_awss_403_as_connection_not_upgraded(world: World) -> None:
    """AWS's ``connection: keep-alive`` makes paho say "connection not upgraded" (§1.9)."""
    case = _wrong_secret(world)
    client = PahoClient(
        "player-1",
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=case.target,
        headers={"Host": case.host},
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "error"
    assert "connection not upgraded" in str(outcome.rc)
    await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, status=403)


# --------------------------------------------------------------------------------------
# The 101 (aws-iot.md §1.8): lowercase, one TLS record, subprotocol echoed; frames flow
# --------------------------------------------------------------------------------------


def _v1_sdk_session(world: World, target: str, subprotocol: str) -> tuple[bytes, list[object]]:
    """Talk like AWSIoTPythonSDK v1: one ``recv(1024)`` for the 101, then MQTT in frames.

    Blocking on purpose (run in a thread): a blocking TLS ``recv`` returns at most one TLS
    record, so a 101 split over two writes would show up as a truncated response.
    """
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    endpoint = world.gateway.endpoint
    with (
        socket.create_connection(("127.0.0.1", world.gateway.wss_port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=endpoint) as tls,
    ):
        tls.sendall(upgrade_request(target, host=endpoint, subprotocol=subprotocol))
        response = tls.recv(1024)
        packets: list[object] = []
        tls.sendall(ws_frame(encode(Connect("v1-sdk", keep_alive=60))))
        tls.sendall(ws_frame(mqtt_subscribe(1, "v1/#")))
        tls.sendall(ws_frame(mqtt_publish("v1/state", b"hi", 2)))
        buffer = b""
        while len([p for p in packets if isinstance(p, Publish)]) < 1:
            parsed = parse_frame(buffer)
            if parsed is None:
                data = tls.recv(65536)
                assert data, "the gateway closed the connection"
                buffer += data
                continue
            opcode, payload, buffer = parsed
            assert opcode == 0x2  # one binary frame per MQTT packet
            decoded = decode(payload)
            assert decoded is not None and decoded[1] == len(payload), "one packet per frame"
            packets.append(decoded[0])
            if isinstance(decoded[0], Publish) and decoded[0].packet_id is not None:
                tls.sendall(ws_frame(encode(Puback(decoded[0].packet_id))))
        tls.sendall(ws_frame(encode(Disconnect())))
        return response, packets


@pytest.mark.parametrize("subprotocol", ["mqtt", "mqttv3.1"])
async def test_101_as_aws_sends_it_and_frames_flow(world: World, subprotocol: str) -> None:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    target = presigned_target(world, credential)
    response, packets = await asyncio.to_thread(_v1_sdk_session, world, target, subprotocol)
    assert response.endswith(b"\r\n\r\n"), "the 101 did not arrive in one TLS record"
    status_line, headers = parse_head(response[:-4])
    assert status_line == "HTTP/1.1 101 Switching Protocols"
    assert [name for name, _ in headers] == [
        "content-length",
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    ]
    assert dict(headers)["sec-websocket-protocol"] == subprotocol
    assert (dict(headers)["upgrade"], dict(headers)["connection"]) == ("websocket", "upgrade")
    assert b"sec-websocket-extensions" not in response  # never permessage-deflate
    assert isinstance(packets[0], Connack) and packets[0].return_code == 0
    assert any(isinstance(p, Suback) and p.return_codes == (1,) for p in packets)
    assert any(isinstance(p, Publish) and p.payload == b"hi" for p in packets)
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=True)
    assert (upgrade.get("subprotocol"), upgrade.get("auth")) == (subprotocol, "sigv4")


# --------------------------------------------------------------------------------------
# Custom authorizers (aws-iot.md §2): 101, then decided at CONNECT; never a 403
# --------------------------------------------------------------------------------------


def _signed_token(world: World, token: str = "device-token-1") -> tuple[str, str]:  # noqa: S107
    assert world.authorizer_key is not None
    return token, world.authorizer_key.sign(token)


def _paho_ws(
    world: World,
    client_id: str,
    *,
    headers: dict[str, str] | None = None,
    path: str = "/mqtt",
    username: str | None = None,
) -> PahoClient:
    return PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        headers={"Host": world.gateway.endpoint, **(headers or {})},
        path=path,
        username=username,
    )


async def _connected_and_working(client: PahoClient, topic: str) -> None:
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "connect" and outcome.rc == 0, outcome
    client.client.subscribe(f"{topic}/#", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish(f"{topic}/x", b"payload", qos=1)
    message = await client.next("message")
    assert (message.topic, message.payload) == (f"{topic}/x", b"payload")
    await client.close()


async def _closed_after_connect(world: World, client: PahoClient, client_id: str) -> Event:
    """101 (or TLS), CONNECT, then a close without CONNACK (aws-iot.md §2.4, §4.5)."""
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "disconnect", f"expected a close without CONNACK, got {outcome}"
    client.client.loop_stop()
    verdict = await world.recorder.wait_for(
        "auth.verdict", timeout=TIMEOUT, stage="connect", client_id=client_id
    )
    assert verdict.ok is False and verdict.get("explain")
    await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, conn=verdict.conn)
    assert not world.recorder.find("mqtt.out", conn=verdict.conn, packet="CONNACK")
    return verdict


def assert_custom_verdict(
    verdict: Event,
    *,
    invoked: bool,
    signature_verified: bool,
    authorizer: str | None = DEFAULT_AUTHORIZER,
) -> None:
    """A CONNECT-stage custom-auth verdict names its method and authorizer, and says
    whether the signature was verified and the Lambda invoked (aws-iot.md §2.2)."""
    assert verdict.get("stage") == "connect"
    assert verdict.get("method") == "custom"
    assert verdict.get("authorizer") == authorizer
    assert verdict.get("invoked") is invoked
    assert verdict.get("signature_verified") is signature_verified


async def test_custom_auth_upgrade_headers_dyson_style(world: World) -> None:
    """Dyson clients send token, name and signature as upgrade headers (aws-iot.md §2.5)."""
    token, signature = _signed_token(world)
    client = _paho_ws(
        world,
        "dyson-app",
        headers={
            "token": token,
            "X-Amz-CustomAuthorizer-Name": DEFAULT_AUTHORIZER,
            "X-Amz-CustomAuthorizer-Signature": signature,
        },
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    await _connected_and_working(client, "dyson")
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT)
    assert (upgrade.ok, upgrade.get("status"), upgrade.get("auth")) == (True, 101, "custom-auth")
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="connect")
    assert verdict.ok is True
    assert_custom_verdict(verdict, invoked=True, signature_verified=True)
    assert_no_secrets(world.recorder, [token, signature])


async def test_custom_auth_query_string(world: World) -> None:
    """Browsers cannot set headers: JS v1 ``customAuthQueryString`` (aws-iot.md §2.1)."""
    token, signature = _signed_token(world)
    query = custom_auth_query(DEFAULT_AUTHORIZER, signature, token)
    client = _paho_ws(world, "browser", path=f"/mqtt?{query}")
    await client.connect("127.0.0.1", world.gateway.wss_port)
    await _connected_and_working(client, "browser")
    assert_no_secrets(world.recorder, [token, signature])


async def test_custom_auth_bare_upgrade_with_credentials_in_connect(world: World) -> None:
    """awsiotsdk v2 ``websockets_with_custom_authorizer`` sends nothing in the upgrade and
    its credentials only in the CONNECT username (aws-iot.md §2.1): a 101, then CONNACK."""
    token, signature = _signed_token(world)
    username = (
        f"device?x-amz-customauthorizer-name={DEFAULT_AUTHORIZER}"
        f"&x-amz-customauthorizer-signature={urllib.parse.quote(signature)}&token={token}"
    )
    client = _paho_ws(world, "sdk-v2-wss", username=username)
    await client.connect("127.0.0.1", world.gateway.wss_port)
    await _connected_and_working(client, "sdkv2")
    assert_no_secrets(world.recorder, [token, signature])


async def test_custom_auth_bad_signature_is_101_then_close(world: World) -> None:
    token, _ = _signed_token(world)
    _, other_signature = _signed_token(world, "another-token")
    client = _paho_ws(
        world,
        "forger",
        headers={
            "token": token,
            "X-Amz-CustomAuthorizer-Name": DEFAULT_AUTHORIZER,
            "X-Amz-CustomAuthorizer-Signature": other_signature,
        },
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    verdict = await _closed_after_connect(world, client, "forger")
    assert verdict.reason == "signature-invalid"
    assert_custom_verdict(verdict, invoked=False, signature_verified=False)
    upgrade = world.recorder.first("ws.upgrade", conn=verdict.conn)
    assert upgrade is not None and upgrade.get("status") == 101  # never a 403 (§2.4)
    assert_no_secrets(world.recorder, [token, other_signature])


async def test_custom_auth_unknown_authorizer_is_101_then_close(world: World) -> None:
    token, signature = _signed_token(world)
    query = custom_auth_query("no-such-authorizer", signature, token)
    client = _paho_ws(world, "lost", path=f"/mqtt?{query}")
    await client.connect("127.0.0.1", world.gateway.wss_port)
    verdict = await _closed_after_connect(world, client, "lost")
    assert verdict.reason == "unknown-authorizer"
    assert "no-such-authorizer" in verdict.get("explain")
    assert_no_secrets(world.recorder, [token, signature])


async def test_bare_upgrade_without_any_credentials_is_101_then_close(world: World) -> None:
    """Neither SigV4 nor custom-auth credentials anywhere: the upgrade cannot tell (the
    CONNECT may carry them), so 101, then a close after CONNECT (aws-iot.md §2.1, §2.4)."""
    client = _paho_ws(world, "nobody")
    await client.connect("127.0.0.1", world.gateway.wss_port)
    verdict = await _closed_after_connect(world, client, "nobody")
    assert verdict.reason == "no-credentials"
    assert_custom_verdict(verdict, invoked=False, signature_verified=False, authorizer=None)


def _direct(world: World, client_id: str, username: str) -> PahoClient:
    return PahoClient(
        client_id,
        websocket=False,
        ca_file=str(world.pki.ca_file),
        alpn=["mqtt"],
        username=username,
    )


async def test_direct_mqtt_custom_auth_with_alpn_mqtt(world: World) -> None:
    """``direct_with_custom_authorizer``: 443, ALPN ``mqtt``, credentials in the username."""
    token, signature = _signed_token(world)
    username = (
        f"?x-amz-customauthorizer-name={DEFAULT_AUTHORIZER}"
        f"&x-amz-customauthorizer-signature={urllib.parse.quote(signature)}"
        f"&token={token}&SDK=PythonV2&Version=1.31.0"
    )
    client = _direct(world, "direct-ok", username)
    await client.connect("127.0.0.1", world.gateway.wss_port)
    await _connected_and_working(client, "direct")
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") == "mqtt"
    assert not world.recorder.find("ws.upgrade")
    assert_no_secrets(world.recorder, [token, signature])


async def test_direct_mqtt_custom_auth_bad_signature_closes_after_connect(world: World) -> None:
    token, _ = _signed_token(world)
    _, wrong = _signed_token(world, "not-the-token")
    username = (
        f"?x-amz-customauthorizer-name={DEFAULT_AUTHORIZER}"
        f"&x-amz-customauthorizer-signature={urllib.parse.quote(wrong)}&token={token}"
    )
    client = _direct(world, "direct-bad", username)
    await client.connect("127.0.0.1", world.gateway.wss_port)
    verdict = await _closed_after_connect(world, client, "direct-bad")
    assert verdict.reason == "signature-invalid"
    assert_no_secrets(world.recorder, [token, wrong])


# --------------------------------------------------------------------------------------
# X.509 (aws-iot.md §3): mTLS on the MQTTS port and with ALPN x-amzn-mqtt-ca on 443
# --------------------------------------------------------------------------------------


def _mtls(
    world: World, client_id: str, cert: IssuedCert, *, alpn: list[str] | None = None
) -> PahoClient:
    return PahoClient(
        client_id,
        websocket=False,
        ca_file=str(world.pki.ca_file),
        client_cert=(str(cert.cert_file), str(cert.key_file)),
        alpn=alpn,
    )


async def test_registered_thing_over_mqtts(world: World) -> None:
    cert = world.pki.client_cert("lamp-1")
    world.gateway.register_thing("lamp-1", cert.cert_pem, policies=(world.default_policy,))
    client = _mtls(world, "lamp-1", cert)
    await client.connect("127.0.0.1", world.gateway.mqtts_port)
    await _connected_and_working(client, "lamps/1")
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="connect")
    assert verdict.ok is True and "lamp-1" in verdict.get("explain")
    assert (verdict.get("method"), verdict.get("thing_name")) == ("x509", "lamp-1")


async def test_registered_thing_with_alpn_x_amzn_mqtt_ca_on_443(world: World) -> None:
    cert = world.pki.client_cert("lamp-2")
    world.gateway.register_thing("lamp-2", cert.cert_pem, policies=(world.default_policy,))
    client = _mtls(world, "lamp-2", cert, alpn=["x-amzn-mqtt-ca"])
    await client.connect("127.0.0.1", world.gateway.wss_port)
    await _connected_and_working(client, "lamps/2")
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("alpn") == "x-amzn-mqtt-ca"


async def test_trusted_but_unregistered_certificate_closes_after_connect(world: World) -> None:
    cert = world.pki.client_cert("stray")
    client = _mtls(world, "stray", cert)
    await client.connect("127.0.0.1", world.gateway.mqtts_port)
    verdict = await _closed_after_connect(world, client, "stray")
    assert verdict.reason == "unknown-certificate"
    assert (verdict.get("method"), verdict.get("thing_name")) == ("x509", None)


async def test_untrusted_client_certificate_fails_the_handshake(world: World) -> None:
    """A certificate from a CA the account does not trust: the TLS handshake fails, and the
    client hears the alert (aws-iot.md §3)."""
    cert = world.pki.bad_cert(BadCert.UNTRUSTED_CA, common_name="intruder")
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    context.load_cert_chain(cert.cert_file, cert.key_file)
    # TLS 1.2: the client's own handshake fails (with 1.3 it hears the alert on first read).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"(?i)unknown.ca"):
        await RawClient.connect(world, port=world.gateway.mqtts_port, context=context)
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "certificate-unknown"
    assert "issuer" in handshake.get("explain")
    assert not world.recorder.find("mqtt.in")


async def test_untrusted_client_certificate_seen_by_paho(world: World) -> None:
    cert = world.pki.bad_cert(BadCert.UNTRUSTED_CA, common_name="intruder")
    client = _mtls(world, "intruder", cert)
    await client.connect("127.0.0.1", world.gateway.mqtts_port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what in ("error", "disconnect"), outcome
    client.client.loop_stop()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
    assert handshake.reason == "certificate-unknown"
    assert not world.recorder.find("auth.verdict")
