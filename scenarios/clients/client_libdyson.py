"""libdyson-neon, unmodified, talking to a simulated Dyson device's local broker.

libdyson-neon (PyPI ``libdyson-neon``) is what Home Assistant's Dyson integrations use
on the LAN (dyson.md §1): ``get_device(serial, credential, product_type)`` and
``connect(host)``, which opens paho (VERSION1 callbacks, MQTT 3.1) to ``host`` on port
1883, hard-coded, with the serial and the hashed Wi-Fi password as credentials
(dyson.md §1.1, §1.2). It then asks for the current state and waits for it.

This script calls it exactly so, with the device's mDNS-style name ``<serial>.local``:
in ``iot-harness sandbox`` that name is the device's on port 1883; for the scenario
runner :func:`client_world.real_names` routes ``<serial>.local:1883`` to the port the
device's broker really bound, inside this process (libdyson's paho resolves through
``socket.getaddrinfo``), so no line of libdyson is changed or monkeypatched.

It turns the fan on, waits for libdyson to see the new state, then waits for a
reconnect after any drop (paho's loop thread reconnects, and libdyson's VERSION1
``_on_connect`` subscribes again: field-bugs.md FB-01 done right), sets the speed and
waits for that state too. Events: ``client.connected`` (``connection``: 1, 2, ...),
``client.state`` (``is_on``, ``speed``), ``client.disconnected``, ``client.error``.

    python client_libdyson.py [--serial SERIAL] [--reconnect]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import libdyson  # type: ignore[import-untyped]
from client_world import descriptor, emit, real_names
from libdyson.const import MessageType  # type: ignore[import-untyped]

#: Seconds to wait for each state libdyson should see.
STEP_TIMEOUT = 10.0


class Watch:
    """libdyson's message listener: connection changes and states, as events."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.connections = 0
        self.was_connected = False
        self.changed = threading.Condition()

    def __call__(self, message_type: Any) -> None:
        if message_type != MessageType.STATE:
            return
        with self.changed:
            connected = bool(self.device.is_connected)
            if connected and not self.was_connected:
                self.connections += 1
                emit("client.connected", connection=self.connections, via="libdyson")
            elif self.was_connected and not connected:
                emit("client.disconnected", via="libdyson")
            self.was_connected = connected
            self.changed.notify_all()

    def wait(self, what: str, test: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + STEP_TIMEOUT
        with self.changed:
            while not test():
                left = deadline - time.monotonic()
                if left <= 0:
                    emit("client.error", stage=what, error=f"not within {STEP_TIMEOUT} s")
                    return False
                self.changed.wait(left)
        return True


def state(device: Any) -> dict[str, Any]:
    return {"is_on": bool(device.is_on), "speed": device.speed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serial", help="the device (default: the descriptor's first)")
    parser.add_argument(
        "--reconnect", action="store_true", help="after the first command, wait for a reconnect"
    )
    args = parser.parse_args(argv)
    world = descriptor()
    devices = world.get("dyson", {}).get("devices") or []
    chosen = [d for d in devices if args.serial in (None, d["serial"])]
    if not chosen:
        emit("client.error", stage="descriptor", error=f"no device {args.serial or ''} here")
        return 1
    spec = chosen[0]
    serial, host = str(spec["serial"]), f"{spec['serial']}.local"
    with warnings.catch_warnings():
        # libdyson builds paho's client without a callback API version: VERSION1, with
        # paho 2.x's DeprecationWarning (field-bugs.md FB-21). Not this script's to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        device = libdyson.get_device(serial, str(spec["local_password"]), spec["product_type"])
    if device is None:
        emit("client.error", stage="get_device", error=f"no libdyson class for {spec!r}")
        return 1
    watch = Watch(device)
    device.add_message_listener(watch)
    emit("client.started", library="libdyson-neon", serial=serial, host=host, port=1883)
    with real_names(world), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            device.connect(host)  # port 1883, as libdyson hard-codes it
        except Exception as exc:  # DysonConnectTimeout, DysonInvalidCredential, ...
            emit("client.error", stage="connect", error=f"{type(exc).__name__}: {exc}")
            return 1
        # connect() returns once the first state arrived; its own on_connect does not
        # call the listeners, so the first connection is reported here.
        watch(MessageType.STATE)
        emit("client.state", **state(device))
        try:
            device.turn_on()
            if not watch.wait("turn-on", lambda: bool(device.is_on)):
                return 1
            emit("client.state", **state(device))
            if args.reconnect and not watch.wait(
                "reconnect", lambda: watch.connections >= 2 and bool(device.is_connected)
            ):
                return 1
            device.set_speed(7)
            if not watch.wait("set-speed", lambda: device.speed == 7):
                return 1
            emit("client.state", **state(device))
        finally:
            device.disconnect()
    emit("client.done", connections=watch.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
