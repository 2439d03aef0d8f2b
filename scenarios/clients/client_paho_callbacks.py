"""paho-mqtt 2.x with VERSION1 or VERSION2 callbacks, reconnecting after a server-side close.

field-bugs.md FB-01: hass-dyson's disconnect handler was written for one callback API
and called through the other, so the first server-side close raised ``TypeError: ...
missing 1 required positional argument: 'rc'`` inside paho's network thread, which then
died: no ``Disconnected``, no reconnect. A correct client of either API version gets
``on_disconnect`` with the arguments its version passes and reconnects.

This client connects to the gateway's real endpoint name on port 443 over a WebSocket
with custom-authorizer headers signed with the descriptor's key (the Dyson cloud link's
shape, aws-iot.md §2.1, dyson.md §6), subscribes and publishes on each connection, lets
paho reconnect after every drop, and exits 0 once its message came back on the
``--connections``-th connection. ``--disconnect-handler`` picks ``on_disconnect``'s
signature independently of ``--api``: ``--api 1 --disconnect-handler 2`` is FB-01's
mistake. A handler that raises is a ``client.exception`` event; the client then exits 1
when paho's thread is gone.

    python client_paho_callbacks.py --api 1|2 [--disconnect-handler 1|2] [--connections N]
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from client_world import descriptor, emit, real_names, signed_token
from paho.mqtt.enums import CallbackAPIVersion

#: Seconds the whole run may take before the client gives up (exit 1).
DEADLINE = 20.0


class Progress:
    """What the callbacks saw, shared with the main thread."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.connections = 0
        self.round_trips = 0
        self.done = threading.Event()
        self.lock = threading.Lock()

    def connected(self) -> int:
        with self.lock:
            self.connections += 1
            return self.connections

    def message(self) -> None:
        """A message came back: done once it did on the ``wanted``-th connection."""
        with self.lock:
            self.round_trips += 1
            if self.connections >= self.wanted:
                self.done.set()


def custom_auth_headers(world: dict[str, Any]) -> dict[str, str]:
    """The custom authorizer's name, a token and its signature (aws-iot.md §2.1)."""
    authorizer = world["authorizers"][0]
    token = f"paho-{uuid.uuid4()}"
    return {
        "x-amz-customauthorizer-name": str(authorizer["name"]),
        str(authorizer.get("token_key") or "token"): token,
        "x-amz-customauthorizer-signature": signed_token(authorizer, token),
    }


def install_handlers(
    client: mqtt.Client, progress: Progress, topic: str, *, api: int, disconnect: int
) -> None:
    """``on_connect``, ``on_subscribe`` and ``on_message`` written for callback API
    ``api``, ``on_disconnect`` for ``disconnect`` (paho's migrations.md lists both)."""

    def after_connect(c: mqtt.Client, ok: bool, code: Any) -> None:
        if not ok:
            emit("client.error", stage="connect", reason=str(code))
            return
        number = progress.connected()
        emit("client.connected", connection=number, api=api)
        c.subscribe(topic, qos=1)

    def after_subscribe(c: mqtt.Client) -> None:
        emit("client.subscribed", topic=topic)
        c.publish(topic, f"round trip {progress.connections}".encode(), qos=1)

    def on_message(_c: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        emit("client.message", topic=message.topic, size=len(message.payload))
        progress.message()

    def on_connect_v1(c: mqtt.Client, _userdata: Any, _flags: Any, rc: int) -> None:
        after_connect(c, rc == 0, rc)

    def on_subscribe_v1(c: mqtt.Client, _userdata: Any, _mid: int, _granted: Any) -> None:
        after_subscribe(c)

    def on_disconnect_v1(_c: mqtt.Client, _userdata: Any, rc: int) -> None:
        emit("client.disconnected", rc=rc, expected=rc == 0)

    def on_connect_v2(
        c: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any = None
    ) -> None:
        after_connect(c, not reason.is_failure, reason)

    def on_subscribe_v2(
        c: mqtt.Client, _userdata: Any, _mid: int, _reasons: Any, _props: Any = None
    ) -> None:
        after_subscribe(c)

    # FB-01's handler had this shape: called the VERSION1 way, (client, userdata, rc),
    # ``rc`` lands in ``flags`` and Python reports "missing ... argument: 'rc'".
    def on_disconnect_v2(
        _c: mqtt.Client, _userdata: Any, _flags: Any, rc: Any, _props: Any = None
    ) -> None:
        emit("client.disconnected", rc=str(rc), expected=not rc.is_failure)

    if api == 1:
        client.on_connect = on_connect_v1
        client.on_subscribe = on_subscribe_v1
    else:
        client.on_connect = on_connect_v2
        client.on_subscribe = on_subscribe_v2
    client.on_disconnect = on_disconnect_v1 if disconnect == 1 else on_disconnect_v2
    client.on_message = on_message


def report_crashes() -> None:
    """An exception escaping a callback kills paho's network thread: say so as an event."""

    def hook(args: threading.ExceptHookArgs) -> None:
        emit(
            "client.exception",
            thread=args.thread.name if args.thread is not None else None,
            error=f"{args.exc_type.__name__}: {args.exc_value}",
        )

    threading.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", type=int, choices=(1, 2), required=True)
    parser.add_argument("--disconnect-handler", type=int, choices=(1, 2))
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args(argv)
    disconnect = args.disconnect_handler or args.api
    world = descriptor()
    iot = world["iot"]
    endpoint = str(iot["endpoint"])
    topic = f"paho/v{args.api}/{uuid.uuid4().hex[:8]}"
    report_crashes()
    progress = Progress(args.connections)
    version = CallbackAPIVersion.VERSION1 if args.api == 1 else CallbackAPIVersion.VERSION2
    client = mqtt.Client(version, client_id=f"paho-v{args.api}", transport="websockets")
    install_handlers(client, progress, topic, api=args.api, disconnect=disconnect)
    client.tls_set_context(ssl.create_default_context(cafile=iot["ca_file"]))
    client.ws_set_options(path="/mqtt", headers=custom_auth_headers(world))
    # AWS allows one CONNECT per second per client id (aws-iot.md §4.3): wait 1 s first.
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    emit("client.started", api=args.api, disconnect_handler=disconnect, endpoint=endpoint)
    with real_names(world):
        client.connect(endpoint, 443, keepalive=30)
        client.loop_start()
        deadline = time.monotonic() + DEADLINE
        while not progress.done.wait(0.05):
            thread = client._thread  # paho's network thread: gone after a crash
            if thread is None or not thread.is_alive() or time.monotonic() > deadline:
                emit(
                    "client.gave_up",
                    connections=progress.connections,
                    round_trips=progress.round_trips,
                    network_thread_alive=thread is not None and thread.is_alive(),
                )
                client.loop_stop()
                return 1
        client.disconnect()
        client.loop_stop()
    emit("client.done", connections=progress.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
