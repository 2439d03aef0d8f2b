"""A client under test run as a command (``kind: command``): MQTT with a signed token.

It reads everything from the world descriptor named by ``IOT_HARNESS_DESCRIPTOR``
(DESIGN.md contract 1), as any program in any language would: it signs a token with the
custom authorizer's private key, connects with ALPN ``mqtt`` and the credentials in the
CONNECT username (aws-iot.md §2.1, §2.2), subscribes to a topic, publishes to it, and
exits once the message came back. Lines of JSON on stdout whose ``kind`` starts with
``client.`` become events on the harness's timeline.

    python mqtt_echo.py TOPIC
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from paho.mqtt.enums import CallbackAPIVersion


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def main() -> int:
    topic = sys.argv[1] if len(sys.argv) > 1 else "echo/command"
    descriptor = json.loads(Path(os.environ["IOT_HARNESS_DESCRIPTOR"]).read_text())
    iot, authorizer = descriptor["iot"], descriptor["authorizers"][0]
    key = serialization.load_pem_private_key(
        Path(authorizer["private_key_file"]).read_bytes(), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    token = "command-client"  # noqa: S105 - what the authorizer sees, not a secret
    signature = base64.b64encode(key.sign(token.encode(), padding.PKCS1v15(), hashes.SHA256()))
    username = "command?" + urllib.parse.urlencode(
        {
            "x-amz-customauthorizer-name": authorizer["name"],
            authorizer["token_key"]: token,
            "x-amz-customauthorizer-signature": signature.decode(),
        },
        quote_via=urllib.parse.quote,
    )
    context = ssl.create_default_context(cafile=iot["ca_file"])  # also SSL_CERT_FILE
    context.set_alpn_protocols(["mqtt"])
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="command-client")
    client.tls_set_context(context)
    client.username_pw_set(username)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        emit("client.connected", rc=str(rc))
        c.subscribe(topic, qos=1)

    def on_subscribe(c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any = None) -> None:
        c.publish(topic, b"hello", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        emit("client.message", topic=message.topic, size=len(message.payload))
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(iot["connect_host"], iot["wss_port"], keepalive=60)
    client.loop_start()
    ok = done.wait(10)
    client.disconnect()
    client.loop_stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
