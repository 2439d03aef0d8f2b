"""What the session pump asks of the broker it fronts: a host and a set of rules.

The pump (:class:`harness.gateway.session.MqttPump`) does what every MQTT front of the
harness does the same way: decode and re-encode every packet (:mod:`harness.mqtt.codec`),
carry MQTT 3.1 clients across to a 3.1.1 engine, record ``mqtt.in`` / ``mqtt.out`` /
``mqtt.close`` events, enforce keep-alive, and close in the right order. *Which* behaviour
a broker shows is a strategy, :class:`SessionRules`, one per connection:

* :class:`harness.gateway.session.AwsRules`: AWS IoT Core's rules (aws-iot.md §4, §5):
  limits, policies, custom-auth lifetimes, lifecycle events, close without CONNACK.
* ``simulators.dyson.local_broker.DysonRules``: a Dyson device's own broker (dyson.md §1):
  serial + ``apPasswordHash`` with CONNACK 5, MQTT 3.1 and 3.1.1, its field quirks.

The rules act through the pump's small public surface (``record``, ``send``,
``to_engine``, ``close``, ``close_later``, ``call_later``, ``start_keepalive``, ``state``);
the pump never imports a rules module, so nothing here depends on ``simulators``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from harness.clock import WorldClock
from harness.engine.base import Engine
from harness.errors import MalformedPacket
from harness.events import Recorder
from harness.mqtt.codec import (
    Connack,
    Connect,
    Packet,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from harness.mqtt.rules import DisconnectReason

if TYPE_CHECKING:
    from harness.gateway.session import MqttPump


class PumpHost(Protocol):
    """The server a pump belongs to: its clock, timeline, engine and background tasks.

    :class:`harness.gateway.server.Gateway` is one; so is a Dyson device's local broker.
    """

    clock: WorldClock
    recorder: Recorder
    engine: Engine

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the host ends when it stops."""
        ...


@dataclass(frozen=True)
class Admission:
    """A CONNECT the rules let through to the engine, and what comes with it."""

    #: Keep the engine's CONNACK from the client (a gateway fault, ``withhold-connack``).
    withhold_connack: bool = False
    #: Close the connection this many seconds after CONNECT (custom auth's
    #: ``disconnectAfterInSeconds``, aws-iot.md §2.3); ``None``: no limit.
    lifetime: float | None = None
    lifetime_reason: DisconnectReason = DisconnectReason.SERVER_INITIATED_DISCONNECT
    lifetime_explain: str = ""


class SessionRules(Protocol):
    """One connection's broker behaviour; every hook gets the pump it serves.

    Hooks that decide to end the connection call ``pump.close(...)`` themselves; the pump
    checks ``pump.closed`` after each one.
    """

    #: Largest client packet the decoder accepts (bytes); ``None``: the codec's limit.
    max_packet_size: int | None
    #: Whether a client may send packets after CONNECT before its CONNACK (MQTT 3.1.1
    #: §3.1.4 allows it; AWS closes the connection, aws-iot.md §4.3).
    packets_before_connack: bool

    def started(self, pump: MqttPump) -> None:
        """The pump is about to read its first bytes (arm timers here)."""
        ...

    async def still_open(self, pump: MqttPump) -> bool:
        """Checked before each packet either way; close the pump and say ``False`` to stop
        it (a WebSocket past its lifetime, aws-iot.md §4.4)."""
        ...

    def malformed_reply(self, pump: MqttPump, error: MalformedPacket) -> Packet | None:
        """A packet to send before closing over a malformed one (CONNACK 1 for an
        unsupported protocol level, MQTT 3.1.1 §3.1.2.2), or ``None`` to just close."""
        ...

    async def admit(self, pump: MqttPump, connect: Connect) -> Admission | None:
        """Decide a CONNECT: an :class:`Admission`, or ``None`` once the rules have
        answered (a refusing CONNACK) and closed or reset the connection."""
        ...

    def resets_keepalive(self, packet: Packet) -> bool:
        """Whether this client packet restarts the keep-alive timer."""
        ...

    async def on_connected(self, pump: MqttPump, connack: Connack) -> None:
        """The client has its CONNACK rc 0 (``pump.state.connected_at`` is set): start
        keep-alive, announce the connection."""
        ...

    async def on_publish(self, pump: MqttPump, publish: Publish) -> None: ...

    async def on_subscribe(self, pump: MqttPump, subscribe: Subscribe) -> None: ...

    async def on_unsubscribe(self, pump: MqttPump, unsubscribe: Unsubscribe) -> None: ...

    async def on_other(self, pump: MqttPump, packet: Packet) -> None:
        """A client packet the pump has no generic path for (PUBREC, PUBREL, PUBCOMP and
        server-only packets)."""
        ...

    def to_client(self, pump: MqttPump, packet: Packet) -> Packet | None:
        """What the client gets for a packet from the engine: the same packet (its bytes
        go out unchanged), another one (re-encoded), or ``None`` to keep it back (a QoS 1
        PUBLISH kept back is acknowledged to the engine by the pump)."""
        ...

    async def acknowledged(self, pump: MqttPump, ack: Suback | Unsuback) -> None:
        """A SUBACK or UNSUBACK has gone to the client."""
        ...

    async def on_close(
        self, pump: MqttPump, reason: DisconnectReason, *, was_connected: bool
    ) -> None:
        """The connection is closed (its engine link too): forget it, announce it."""
        ...
