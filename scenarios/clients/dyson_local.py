"""A local Dyson MQTT client run as a command (``kind: command``), with switchable mistakes.

It talks to one simulated device's own broker (dyson.md §1) the way libdyson does: plain
MQTT 3.1.1 over TCP to the descriptor's ``local_host:local_port``, username = serial,
password = the device's ``apPasswordHash`` (DESIGN.md contract 1: the descriptor's
``dyson.devices[].local_password``), SUBSCRIBE to ``<root>/<serial>/status/current``, then
REQUEST-CURRENT-STATE on ``command``. It reports what happens as ``client.*`` JSON lines
with ``path: local``, the shapes the reference Dyson app uses (``simulators.apps``), so one
scenario's expectations read both. Flags are the field clients' mistakes, for the
catalogue's negative controls (field-bugs.md):

``--root R``              subscribe under R, e.g. the product type ``438`` instead of the
                          manifest's ``438M`` (FB-11)
``--password encrypted``  the still-encrypted ``localBrokerCredentials`` as the password
                          (FB-12)
``--client-id random``    a new random client id for every connection (FB-06)
``--restarts N``          after each connection, vanish without DISCONNECT (a killed
                          process) and start again, N times (FB-06)
``--no-resubscribe``      subscribe after the first CONNACK only (FB-14)
``--state-timeout S``     no CURRENT-STATE within S seconds: disconnect, "Failed to connect"
                          (FB-13, shenxn/libdyson's wait)
``--reconnect-delay S``   seconds between attempts (a storm with 0, FB-08)
``--max-attempts N``      give up after N failed attempts in a row
``--phone-holds S``       first a second client (the phone app, FB-15) holds a session for
                          S seconds, then leaves

    python dyson_local.py [flags]

It runs until the harness stops it; with ``--restarts`` or ``--max-attempts`` it may exit
on its own (status 0 when its last connection worked, 1 when it gave up).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulators.dyson.credentials import encrypt_local_credentials

#: Seconds to wait for a CONNACK or a SUBACK.
CONNECT_TIMEOUT = 2.0


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, "path": "local", **fields}), flush=True)


class Link:
    """One paho connection, driven by hand (``loop``) so nothing reconnects behind us."""

    def __init__(self, client_id: str, serial: str, password: str, keepalive: int) -> None:
        self.client_id = client_id
        self.keepalive = keepalive
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.username_pw_set(serial, password)
        self.connack: int | None = None
        self.closed: str | None = None
        self.granted: list[int] | None = None
        self.messages: list[tuple[str, str | None]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = int(getattr(rc, "value", rc))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.closed = str(rc)

    def _on_subscribe(self, _c: Any, _u: Any, _m: Any, codes: Any, _p: Any = None) -> None:
        self.granted = [int(getattr(code, "value", code)) for code in codes]

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            msg = json.loads(message.payload).get("msg")
        except (ValueError, AttributeError):
            msg = None
        self.messages.append((message.topic, msg if isinstance(msg, str) else None))

    def open(self, host: str, port: int) -> tuple[bool, str, str | None]:
        """Connect and wait for the CONNACK: ``(ok, reason, error)``."""
        try:
            self.client.connect(host, port, keepalive=self.keepalive)
        except OSError as exc:
            return False, "network", f"{type(exc).__name__}: {exc}"
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while self.connack is None and self.closed is None and time.monotonic() < deadline:
            self.loop()
        if self.connack == 0:
            return True, "ok", None
        if self.connack is not None:
            return False, "refused", f"CONNACK {self.connack}: {mqtt.connack_string(self.connack)}"
        if self.closed is not None:
            return False, "closed-before-connack", self.closed
        return False, "timeout", f"no CONNACK within {CONNECT_TIMEOUT:g} s"

    def loop(self, timeout: float = 0.05) -> None:
        rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS and self.closed is None:
            self.closed = mqtt.error_string(rc)

    def vanish(self) -> None:
        """The process died: the socket closes, no DISCONNECT (dyson.md §1.4)."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.loop(0.01)


def request_state() -> bytes:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"msg": "REQUEST-CURRENT-STATE", "time": now}).encode()


def phone_app(host: str, port: int, serial: str, password: str, hold: float) -> None:
    """FB-15: the Dyson phone app takes a session for a while, then leaves cleanly."""
    link = Link("dyson-phone-app", serial, password, 60)
    ok, reason, _error = link.open(host, port)
    emit("client.phone", action="connected" if ok else "refused", reason=reason)
    deadline = time.monotonic() + hold
    while ok and link.closed is None and time.monotonic() < deadline:
        link.loop()
    if ok:
        link.close()
        emit("client.phone", action="left")


def serve(
    link: Link, args: argparse.Namespace, prefix: str, *, subscribe: bool, restart: bool
) -> str:
    """Run one connection until it ends: ``restart`` (vanished on purpose), ``no-data``
    (``--state-timeout`` gave up on it) or ``closed`` (the device or the network ended it)."""
    if subscribe:
        link.client.subscribe(f"{prefix}status/current", 0)
    started = time.monotonic()
    asked = have_state = False
    while link.closed is None:
        link.loop()
        if link.granted is not None and not asked:
            emit("client.subscribed", granted=link.granted)
            link.client.publish(f"{prefix}command", request_state())
            asked = True
        while link.messages:
            topic, msg = link.messages.pop(0)
            emit("client.message", topic=topic, msg=msg)
            have_state = have_state or msg == "CURRENT-STATE"
        if restart and (have_state or time.monotonic() - started > 1.0):
            link.vanish()  # FB-06: the process is killed and started again
            emit("client.restart")
            return "restart"
        waited = time.monotonic() - started
        if args.state_timeout is not None and not have_state and waited > args.state_timeout:
            link.close()
            emit("client.disconnected", rc="no data", deliberate=True)
            emit(
                "client.error",
                stage="connect-local",
                reason="no-data",
                error=f"Failed to connect: no CURRENT-STATE within {args.state_timeout:g} s",
            )
            return "no-data"
    emit("client.disconnected", rc=link.closed, deliberate=False)
    return "closed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device")
    parser.add_argument("--root")
    parser.add_argument("--password", choices=("plain", "encrypted"), default="plain")
    parser.add_argument("--client-id", choices=("stable", "random"), default="stable")
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--no-resubscribe", action="store_true")
    parser.add_argument("--state-timeout", type=float)
    parser.add_argument("--reconnect-delay", type=float, default=1.0)
    parser.add_argument("--max-attempts", type=int)
    parser.add_argument("--phone-holds", type=float)
    parser.add_argument("--keepalive", type=int, default=60)
    args = parser.parse_args()

    descriptor = json.loads(Path(os.environ["IOT_HARNESS_DESCRIPTOR"]).read_text())
    devices = descriptor["dyson"]["devices"]
    device = next(d for d in devices if args.device in (None, d["serial"]))
    serial, host, port = device["serial"], device["local_host"], int(device["local_port"])
    password = device["local_password"]
    if args.password == "encrypted":  # noqa: S105 - a choice, not a password
        password = encrypt_local_credentials(serial, password)
    prefix = f"{args.root or device['root_topic']}/{serial}/"
    emit("client.started", client_kind="dyson-local", serial=serial, prefix=prefix)

    if args.phone_holds is not None:
        phone = threading.Thread(
            target=phone_app,
            args=(host, port, serial, device["local_password"], args.phone_holds),
            daemon=True,
        )
        phone.start()
        time.sleep(0.3)  # the phone is connected before the client starts

    stable_id = f"dyson-local-{serial}"[:23]
    attempt = failures = connections = 0
    while True:
        attempt += 1
        client_id = stable_id if args.client_id == "stable" else uuid.uuid4().hex[:23]
        link = Link(client_id, serial, password, args.keepalive)
        ok, reason, error = link.open(host, port)
        emit(
            "client.connect",
            attempt=attempt,
            client_id=client_id,
            id_kind=args.client_id,
            ok=ok,
            reason=reason,
            error=error,
        )
        if not ok:
            failures += 1
            emit("client.error", stage="connect-local", reason=reason, error=error)
            if args.max_attempts is not None and failures >= args.max_attempts:
                emit("client.gave_up", attempts=attempt)
                return 1
            time.sleep(args.reconnect_delay)
            continue
        failures = 0
        connections += 1
        emit("client.connected", attempt=attempt, client_id=client_id)
        subscribe = connections == 1 or not args.no_resubscribe
        ended = serve(link, args, prefix, subscribe=subscribe, restart=connections <= args.restarts)
        if ended != "restart":
            time.sleep(args.reconnect_delay)


if __name__ == "__main__":
    sys.exit(main())
