"""awsiotsdk (AWS IoT Device SDK v2 for Python, on awscrt) as the client under test.

Each AUTH is one connection made by the SDK's own builder (aws-iot.md §1, §2.1, §3, §7),
which connects, subscribes, publishes, gets its message back and disconnects:

* ``sigv4``: ``websockets_with_default_aws_signing`` with Cognito credentials (GetId,
  then GetCredentialsForIdentity; aws-iot.md §6);
* ``custom-auth``: ``direct_with_custom_authorizer``, MQTT with ALPN ``mqtt`` and the
  token in the CONNECT username;
* ``custom-auth-wss``: ``websockets_with_custom_authorizer``;
* ``mtls``: ``mtls_from_path`` with the descriptor's first thing's certificate, on the
  builder's default port: 443 with ALPN ``x-amzn-mqtt-ca``;
* ``mtls-8883``: the same on AWS's MQTT port, 8883.

awscrt resolves names and opens sockets in C, so :mod:`client_world`'s resolver override
cannot reach it. With ``--real-name`` (in ``iot-harness sandbox``, where the names are
the world's) it uses the descriptor's real endpoint name and the builders' default ports
(443; 8883 for ``mtls-8883``), and awscrt's own Cognito credentials provider, which calls
``cognito-identity.<region>.amazonaws.com:443`` itself. Without it (the scenario
runner's command client, outside any sandbox) it dials the world's address and bound
ports (the gateway's certificate covers ``127.0.0.1`` and ``localhost``; builders that
decide by port 443 are built for 443 and then pointed at the bound port), and hands the
Cognito credentials that boto3 fetched, under the real Cognito name, to the SDK.

Events (JSON lines on stdout, DESIGN.md contract 1): ``client.connected``,
``client.subscribed``, ``client.message``, ``client.disconnected``,
``client.interrupted`` / ``client.resumed``, ``client.error`` (``stage``, ``error``).
Exit status 0 when every AUTH made its round trip, else 1.

    python client_awsiotsdk.py [--real-name] AUTH [AUTH...]
"""

from __future__ import annotations

import argparse
import queue
import sys
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import boto3
from awscrt import auth, io, mqtt
from awsiot import mqtt_connection_builder
from botocore import UNSIGNED
from botocore.config import Config
from client_world import descriptor, emit, real_names, signed_token

AUTHS = ("sigv4", "custom-auth", "custom-auth-wss", "mtls", "mtls-8883")
#: Seconds for each step (connect, subscribe, publish, the message, disconnect).
STEP_TIMEOUT = 10.0


class Failed(Exception):
    """A step of the round trip failed; ``stage`` names it."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage


def cognito_identity(world: Mapping[str, Any]) -> tuple[Any, str]:
    """A Cognito client at its real host name, and a new identity of the world's pool.

    The Cognito calls a device makes are unsigned (aws-iot.md §6), so boto3 needs no
    credentials of its own; its certificate check uses the world's CA.
    """
    iot, cognito = world["iot"], world["cognito"]
    client = boto3.session.Session().client(
        "cognito-identity",
        region_name=str(cognito.get("region") or iot["region"]),
        verify=str(iot["ca_file"]),
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 2}),
    )
    answer = client.get_id(IdentityPoolId=str(cognito["identity_pool_id"]))
    return client, str(answer["IdentityId"])


def credentials_provider(world: Mapping[str, Any], *, real_name: bool) -> Any:
    """awscrt's credentials for SigV4 (module docstring)."""
    if real_name:
        _, identity = cognito_identity(world)
        tls = io.TlsContextOptions()
        tls.override_default_trust_store_from_path(None, str(world["iot"]["ca_file"]))
        return auth.AwsCredentialsProvider.new_cognito(
            endpoint=str(world["cognito"]["endpoint"]),
            identity=identity,
            tls_ctx=io.ClientTlsContext(tls),
        )
    with real_names(world):
        client, identity = cognito_identity(world)
        wire = client.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    return auth.AwsCredentialsProvider.new_static(
        wire["AccessKeyId"], wire["SecretKey"], wire["SessionToken"]
    )


def build(kind: str, world: Mapping[str, Any], *, real_name: bool) -> mqtt.Connection:
    """The SDK's connection for ``kind``, at the real name or the world's address."""
    iot = world["iot"]
    common: dict[str, Any] = {
        "endpoint": str(iot["endpoint"]) if real_name else str(iot["connect_host"]),
        "ca_filepath": str(iot["ca_file"]),
        "client_id": f"crt-{kind}-{uuid.uuid4().hex[:8]}",
        "clean_session": True,
        "keep_alive_secs": 30,
        "reconnect_min_timeout_secs": 1,  # AWS allows one CONNECT per second per client id
        "on_connection_interrupted": lambda connection, error, **_: emit(
            "client.interrupted", auth=kind, error=str(error)
        ),
        "on_connection_resumed": lambda connection, return_code, session_present, **_: emit(
            "client.resumed", auth=kind, return_code=int(return_code)
        ),
    }
    if kind == "mtls-8883":
        common["port"] = 8883 if real_name else int(iot["mqtts_port"])
    elif not real_name and kind in ("sigv4", "custom-auth-wss"):
        common["port"] = int(iot["wss_port"])
    connection = _build(kind, world, common, real_name=real_name)
    if not real_name and kind in ("custom-auth", "mtls"):
        # These builders choose by port 443 (custom auth always sets it; mTLS on 443 adds
        # ALPN x-amzn-mqtt-ca), so they are built for 443 and dialled at the bound port.
        connection.port = int(iot["wss_port"])
    return connection


def _build(
    kind: str, world: Mapping[str, Any], common: dict[str, Any], *, real_name: bool
) -> mqtt.Connection:
    """The builder call itself, with the arguments ``common`` to every connection."""
    iot = world["iot"]
    if kind == "sigv4":
        return mqtt_connection_builder.websockets_with_default_aws_signing(
            region=str(iot["region"]),
            credentials_provider=credentials_provider(world, real_name=real_name),
            **common,
        )
    if kind in ("custom-auth", "custom-auth-wss"):
        authorizer = world["authorizers"][0]
        token = f"crt-{uuid.uuid4()}"
        args: dict[str, Any] = {
            "auth_authorizer_name": str(authorizer["name"]),
            "auth_token_key_name": str(authorizer.get("token_key") or "token"),
            "auth_token_value": token,
            # The SDK puts it in the username's query unencoded: its docs say encode it.
            "auth_authorizer_signature": urllib.parse.quote(
                signed_token(authorizer, token), safe=""
            ),
        }
        if kind == "custom-auth-wss":
            return mqtt_connection_builder.websockets_with_custom_authorizer(**args, **common)
        return mqtt_connection_builder.direct_with_custom_authorizer(**args, **common)
    if kind in ("mtls", "mtls-8883"):
        thing = world["things"][0]
        return mqtt_connection_builder.mtls_from_path(
            cert_filepath=str(thing["cert_file"]), pri_key_filepath=str(thing["key_file"]), **common
        )
    raise ValueError(f"unknown auth {kind!r}; known: {', '.join(AUTHS)}")


def step(stage: str, future: Any) -> Any:
    try:
        return future.result(STEP_TIMEOUT)
    except Exception as exc:  # awscrt raises AwsCrtError, TimeoutError, ...
        raise Failed(stage, f"{type(exc).__name__}: {exc}") from None


def round_trip(kind: str, world: Mapping[str, Any], *, real_name: bool) -> None:
    """Connect, subscribe, publish, get the message back, disconnect (module docstring)."""
    try:
        connection = build(kind, world, real_name=real_name)
    except Exception as exc:  # credentials, files, builder arguments
        raise Failed("build", f"{type(exc).__name__}: {exc}") from None
    topic = f"crt/{kind}/{uuid.uuid4().hex[:8]}"
    received: queue.Queue[bytes] = queue.Queue()
    answer = step("connect", connection.connect())
    emit(
        "client.connected",
        auth=kind,
        host=connection.host_name,
        port=connection.port,
        session_present=bool(answer["session_present"]),
    )
    try:
        subscribed, _ = connection.subscribe(
            topic, mqtt.QoS.AT_LEAST_ONCE, lambda topic, payload, **_: received.put(payload)
        )
        granted = step("subscribe", subscribed)["qos"]
        emit("client.subscribed", auth=kind, topic=topic, qos=int(granted))
        published, _ = connection.publish(topic, kind.encode(), mqtt.QoS.AT_LEAST_ONCE)
        step("publish", published)
        try:
            payload = received.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise Failed("message", f"no message on {topic} in {STEP_TIMEOUT} s") from None
        emit("client.message", auth=kind, topic=topic, size=len(payload))
    finally:
        step("disconnect", connection.disconnect())
        emit("client.disconnected", auth=kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("auths", nargs="+", choices=AUTHS, metavar="AUTH")
    parser.add_argument(
        "--real-name",
        action="store_true",
        help="the real endpoint name and default ports (in iot-harness sandbox)",
    )
    args = parser.parse_args(argv)
    world = descriptor()
    emit("client.started", auths=args.auths, real_name=args.real_name)
    failed = 0
    for kind in args.auths:
        try:
            round_trip(kind, world, real_name=args.real_name)
        except Failed as exc:
            failed += 1
            emit("client.error", auth=kind, stage=exc.stage, error=str(exc))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
