"""How a paho-mqtt client is built, across paho versions (field-bugs.md FB-21).

paho-mqtt 2.0.0 made ``callback_api_version`` the required first argument of
``Client``: ``mqtt.Client(client_id=...)`` raises ``TypeError: Client.__init__() missing
1 required positional argument: 'callback_api_version'`` and ``mqtt.Client("id")``
``ValueError: Unsupported callback API version``; 2.1.0 defaults to VERSION1 again, with a
``DeprecationWarning`` (hass-dyson's cloud client relies on it; libdyson-neon breaks on
2.0.0). This command client builds its client in one of two styles and then connects
once, with a signed custom-authorizer token over ALPN ``mqtt`` (aws-iot.md §2.1):

* ``explicit``: ``Client(CallbackAPIVersion.VERSION2, client_id=...)`` on paho >= 2, the
  plain constructor on paho 1.x (which has no such argument);
* ``design``: ``Client(client_id=...)`` whatever paho is installed (the field designs).

It reports ``client.constructed`` {paho, style, callback_api}, each warning paho raised
as ``client.warning`` {category, message}, a constructor failure as ``client.error``
{stage: construct} (exit 3), then ``client.connected`` or ``client.error`` {stage:
connect} (exit 1). Run it under a scenario's ``requires`` pins for the version matrix.

    python paho_constructor.py explicit|design
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import threading
import urllib.parse
import warnings
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as mqtt
from client_world import descriptor, emit, signed_token

STYLES = ("explicit", "design")
TIMEOUT = 5.0


def construct(style: str, client_id: str) -> tuple[mqtt.Client, str]:
    """The client, built as ``style`` says, and the callback API paho will use."""
    enums: Any = None
    with contextlib.suppress(ImportError):  # paho 1.x: one callback API, no enums module
        from paho.mqtt import enums
    if style == "explicit" and enums is not None:
        return mqtt.Client(enums.CallbackAPIVersion.VERSION2, client_id=client_id), "VERSION2"
    client = mqtt.Client(client_id=client_id)
    return client, "VERSION1"


def main() -> int:
    style = sys.argv[1] if len(sys.argv) > 1 else "explicit"
    if style not in STYLES:
        print(f"style must be one of {', '.join(STYLES)}", file=sys.stderr)
        return 2
    world = descriptor()
    iot, authorizer = world["iot"], world["authorizers"][0]
    paho_version = version("paho-mqtt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            client, callback_api = construct(style, "constructor-" + style)
        except (TypeError, ValueError) as exc:
            emit("client.error", stage="construct", paho=paho_version, error=str(exc))
            return 3
    for warning in caught:
        emit("client.warning", category=warning.category.__name__, message=str(warning.message))
    emit("client.constructed", paho=paho_version, style=style, callback_api=callback_api)

    token = "paho-constructor"  # noqa: S105 - what the authorizer sees, not a secret
    params = {"x-amz-customauthorizer-name": authorizer["name"], authorizer["token_key"]: token}
    if authorizer.get("private_key_file"):
        params["x-amz-customauthorizer-signature"] = signed_token(authorizer, token)
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    client.username_pw_set(f"{style}?{query}")
    context = ssl.create_default_context(cafile=iot["ca_file"])
    context.set_alpn_protocols(["mqtt"])
    client.tls_set_context(context)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(*args: Any) -> None:  # VERSION1 and VERSION2 signatures alike
        outcome["rc"] = args[3]
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(iot["connect_host"], iot["wss_port"], keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        emit("client.error", stage="connect", error=str(exc))
        return 1
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT):
            emit("client.error", stage="connect", error=f"no CONNACK within {TIMEOUT} s")
            return 1
        rc = outcome["rc"]
        if int(getattr(rc, "value", rc)) != 0:
            emit("client.error", stage="connect", error=f"CONNACK {rc}")
            return 1
        emit("client.connected", rc=str(rc), callback_api=callback_api)
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
