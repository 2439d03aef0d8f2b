"""A Dyson device's own MQTT broker, the "port 1883" of dyson.md §1, with the device in it.

Built from the gateway's parts (issue [dyson] "Local broker"): each connection is the
gateway's session pump (:class:`harness.gateway.session.MqttPump`) over a plain TCP
:class:`~harness.gateway.transports.StreamTransport`, routed by an engine of its own
(:class:`harness.engine.AmqttEngine` by default, so devices never see each other), under
:class:`DysonRules` instead of AWS's rules:

* Plain MQTT on TCP, no TLS, no WebSocket; MQTT 3.1 (``MQIsdp``) and 3.1.1 (§1.1). A
  level the device does not speak gets CONNACK 1 (``protocol_levels``: robots take 3.1
  only, **(inferred)**).
* Username = serial, password = ``apPasswordHash``: anything else gets CONNACK **5**, never
  4 (§1.2, :meth:`~simulators.dyson.local_auth.BrokerLogin.connack_code`).
* Keep-alive as the client asked, the connection cut after 1.5 x that without a packet
  (§1.1; MQTT 3.1.1 §3.1.2.10); a reused client id evicts a healthy session (§1.3).
* QoS 0, 1 and 2 in (the engine runs the PUBREC/PUBREL/PUBCOMP flow), device messages out
  at QoS 0, nothing retained: a client's RETAIN flag is cleared (§1.5).
* The field quirks of §1.4, each a switch of :class:`~simulators.dyson.quirks.LocalQuirks`
  (:meth:`DysonLocalBroker.set_quirks` changes them on a running broker):

  =========================  ===========================================================
  ``stale_session_rst``      a CONNECT reusing the client id of a session that ended
                             without DISCONNECT less than ``stale_window_s`` ago gets a
                             TCP RST instead of a CONNACK; the stale session stays
  ``session_cap``            at most N sessions, stale ones counted; the next CONNECT is
                             closed (no CONNACK unless ``session_cap_connack``)
  ``foreign_subscribe_drop`` a SUBSCRIBE outside ``<root>/<serial>/``: no SUBACK, TCP
                             closed ``foreign_drop_delay_ms`` later
  ``hash_wildcard``          bare ``#``: ``silent`` (granted, nothing delivered),
                             ``refuse`` (0x80), ``drop`` (as foreign), ``deliver``
  ``strict_client_id``       CONNACK 2 for an MQTT 3.1 client id outside 1-23 characters
  ``mute``                   CONNECT and SUBSCRIBE answered, commands never reach the device
  ``syn_fragile``            after M accepted connections within T s, SYNs go unanswered
                             for ``pause_s`` (clients sit in ``SYN_SENT``)
  ``duplicates``/``reorder`` each device message twice; now and then an older ``time``
  =========================  ===========================================================

  The checks of a CONNECT run in this order: protocol level, credentials, client id,
  stale session, session cap (whether a real device resets before checking the password
  is **(unknown)**; here an unauthenticated client cannot probe sessions). A session is
  *stale* only when its client vanished (EOF or reset without DISCONNECT), and stays so
  ``stale_window_s`` whatever the client's own keep-alive was (the default, 90 s, is 1.5 x
  the 60 s most clients ask for; §1.4 ties it to keep-alive, the issue makes it a
  setting). Sessions the device itself closed (keep-alive, a foreign subscribe, a fault)
  leave nothing behind, which is why a client dropped for a foreign subscribe reconnects
  with its id at once, about every second with paho's auto-reconnect (field-bugs.md
  FB-11).

The device: a client's PUBLISH to ``<root>/<serial>/command`` is routed like any other
publish (a client subscribed to ``<root>/<serial>/#`` sees it) and handed to the device;
what the device publishes goes into the engine with ``engine.publish_system`` and reaches
the clients subscribed to ``status/current``, ``status/faults``, ... Whoever runs the
device is a :class:`~simulators.dyson.host.DeviceHost` (commands with the world clock's
``now``, timers at ``next_deadline``, device events recorded, output fanned out to every
sink); the broker is one of its sinks (``name`` ``"local"``,
:meth:`DysonLocalBroker.publish`), next to the cloud link when the device has both. Given
a bare :class:`~simulators.dyson.device.DysonDevice`, the broker makes a host of its own.
Messages about one link (HELLO, IM-BACK) are each sink's own: HELLO goes out when the
broker starts (nobody is connected yet, so it only reaches the timeline).

Events (``conn`` = ``local-<serial>-<n>``): ``tcp.accept`` (``port`` ``dyson-local``),
``auth.verdict`` (``stage`` ``dyson-local``; reasons ``ok``, ``bad-password``,
``unknown-user``, ``bad-client-id``, ``unsupported-protocol``), the pump's ``mqtt.in`` /
``mqtt.out`` / ``mqtt.keepalive`` / ``mqtt.close``, ``dyson.local.quirk`` (``quirk`` names
the §1.4 switch that fired, with ``explain``), ``dyson.local.stale`` (a session left
stale, ``until`` in world seconds) and ``dyson.local.stale.ended``,
``dyson.local.publish`` (a device message went into the engine), ``fault.fired`` for the
harness's own faults (``reset-all``, ``drop``, ``go-offline``), ``dyson.local.quirks``
(switches changed), ``dyson.local.started`` / ``online`` / ``offline`` / ``stopped``,
``dyson.local.error`` (a bug of the broker, never a dead listener). The device's own events
(``dyson.command``, ``dyson.command.ignored``, ...) come from its host, with ``via``
``local`` for commands through this broker. Passwords never appear in events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable, Coroutine
from dataclasses import replace
from types import TracebackType
from typing import Any, Literal, Protocol

from harness.clock import WorldClock
from harness.engine import AmqttEngine, Engine
from harness.errors import ConfigError, MalformedPacket
from harness.events import Recorder
from harness.gateway.rules_hooks import Admission
from harness.gateway.session import MqttPump
from harness.gateway.transports import StreamTransport, abort_writer
from harness.mqtt.codec import (
    Connack,
    Connect,
    Packet,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from harness.mqtt.rules import DisconnectReason
from simulators.dyson.device import DeviceResult, DysonDevice
from simulators.dyson.host import DeviceHost
from simulators.dyson.local_auth import (
    CONNACK_ACCEPTED,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    BrokerLogin,
    client_id_code,
)
from simulators.dyson.messages import Outgoing, format_device_time
from simulators.dyson.quirks import LocalQuirks

__all__ = ["DeviceOwner", "DysonLocalBroker", "DysonRules", "SessionTable"]

#: CONNACK 1: unacceptable protocol version (MQTT 3.1.1 §3.2.2.3).
CONNACK_BAD_PROTOCOL = 1
#: Keep-alive is enforced at 1.5 x the client's value (dyson.md §1.1).
KEEPALIVE_FACTOR = 1.5
#: Every how-many-th timed device message the ``reorder`` quirk stamps older (§1.4
#: "now and then"; the real rate is **(unknown)**).
REORDER_EVERY = 3


class DeviceOwner(Protocol):
    """Whoever runs a device for its sinks: :class:`~simulators.dyson.host.DeviceHost`, or
    anything with the same three members."""

    device: DysonDevice

    def handle(self, topic: str, payload: bytes, *, via: str | None = None) -> DeviceResult:
        """A command a client published, answered with the world clock's ``now``."""
        ...

    def add_sink(self, sink: Any) -> Callable[[], None]:
        """Send the device's messages to ``sink`` too; returns a function that stops it."""
        ...


class SessionTable:
    """Live and stale sessions by client id (dyson.md §1.4 ``stale_session_rst``,
    ``session_cap``). Pure: every question takes ``now`` (world seconds)."""

    def __init__(self) -> None:
        self.live: dict[str, MqttPump] = {}
        self._stale: dict[str, float] = {}

    def stale(self, now: float) -> dict[str, float]:
        """Stale sessions still alive at ``now``: client id → the moment they end."""
        self._stale = {cid: until for cid, until in self._stale.items() if until > now}
        return dict(self._stale)

    def stale_until(self, client_id: str, now: float) -> float | None:
        return self.stale(now).get(client_id)

    def recorded_until(self, client_id: str) -> float | None:
        """When the stale session of ``client_id`` ends, as recorded (even if past)."""
        return self._stale.get(client_id)

    def leave_stale(self, client_id: str, until: float) -> None:
        self._stale[client_id] = until

    def forget_stale(self, client_id: str) -> None:
        self._stale.pop(client_id, None)

    def count(self, now: float, *, besides: str | None = None) -> int:
        """Sessions that count against the cap: live and stale, but not ``besides`` (a
        client id about to take its own slot over)."""
        ids = set(self.live) | set(self.stale(now))
        return len(ids - {besides})

    def end(self, client_id: str, pump: MqttPump) -> None:
        if self.live.get(client_id) is pump:
            del self.live[client_id]


class DysonRules:
    """A Dyson device broker's behaviour for one connection (module docstring, §1)."""

    max_packet_size: int | None = None
    #: MQTT 3.1.1 §3.1.4 lets a client go on before its CONNACK; a textbook broker does.
    packets_before_connack = True

    def __init__(self, broker: DysonLocalBroker) -> None:
        self.broker = broker
        self._key: str | None = None
        #: SUBSCRIBEs partly answered here: packet id → (filter count, index → code).
        self._local_codes: dict[int, tuple[int, dict[int, int]]] = {}
        #: QoS 2 publishes handed to the device, until their PUBREL (no double commands).
        self._qos2_seen: set[int] = set()
        self._dropping = False

    # Connection

    def started(self, pump: MqttPump) -> None:
        return None

    async def still_open(self, pump: MqttPump) -> bool:
        return True

    def malformed_reply(self, pump: MqttPump, error: MalformedPacket) -> Packet | None:
        if error.reason == "bad-protocol-level" and pump.state.client_id is None:
            return Connack(return_code=CONNACK_BAD_PROTOCOL)  # MQTT 3.1.1 §3.1.2.2
        return None

    def resets_keepalive(self, packet: Packet) -> bool:
        return True  # any control packet (MQTT 3.1.1 §3.1.2.10)

    async def admit(self, pump: MqttPump, connect: Connect) -> Admission | None:
        broker = self.broker
        quirks = broker.quirks
        if connect.protocol_level not in broker.protocol_levels:
            levels = "/".join(str(level) for level in sorted(broker.protocol_levels))
            await self._refuse(
                pump,
                CONNACK_BAD_PROTOCOL,
                "unsupported-protocol",
                f"this device speaks MQTT protocol level {levels}, not "
                f"{connect.protocol_level} (dyson.md §1.1)",
            )
            return None
        code = broker.login.connack_code(connect.username, connect.password)
        if code != CONNACK_ACCEPTED:
            unknown = connect.username != broker.login.serial
            await self._refuse(
                pump,
                code,
                "unknown-user" if unknown else "bad-password",
                "the username is not this device's serial (dyson.md §1.2: rc 5)"
                if unknown
                else "the password is not this device's apPasswordHash (dyson.md §1.2: rc 5, "
                "never 4)",
            )
            return None
        strict = client_id_code(
            connect.client_id,
            protocol_level=connect.protocol_level,
            strict=quirks.strict_client_id,
        )
        if strict != CONNACK_ACCEPTED:
            self._quirk(pump, "strict_client_id", "MQTT 3.1 allows 1-23 characters (§1.3)")
        if strict != CONNACK_ACCEPTED or not (connect.client_id or connect.clean_session):
            # An empty id also needs a clean session (MQTT 3.1.1 §3.1.3.1).
            await self._refuse(
                pump,
                CONNACK_IDENTIFIER_REJECTED,
                "bad-client-id",
                f"client id of {len(connect.client_id)} characters refused (dyson.md §1.3)",
            )
            return None
        key = connect.client_id or f"<{pump.conn_id}>"
        now = broker.clock.elapsed()
        table = broker.table
        until = table.stale_until(key, now)
        if quirks.stale_session_rst and until is not None:
            self._quirk(
                pump,
                "stale_session_rst",
                f"client id {connect.client_id!r} still has the session that ended without "
                f"DISCONNECT; it lives {until - now:.3g} s more: TCP RST, no CONNACK "
                "(dyson.md §1.4, field-bugs.md FB-07)",
            )
            await pump.close(
                DisconnectReason.DUPLICATE_CLIENTID, "stale session: connection reset", abort=True
            )
            return None
        cap = quirks.session_cap
        if cap is not None and table.count(now, besides=key) >= cap:
            live, stale = len(table.live), len(table.stale(now))
            self._quirk(
                pump,
                "session_cap",
                f"{live} live and {stale} stale sessions fill the cap of {cap}: connection "
                "closed (dyson.md §1.4, field-bugs.md FB-06)",
            )
            if quirks.session_cap_connack:
                pump.send(Connack(return_code=CONNACK_ACCEPTED))
            await pump.close(DisconnectReason.THROTTLED, f"session cap {cap} reached")
            return None
        pump.record(
            "auth.verdict",
            stage="dyson-local",
            ok=True,
            reason="ok",
            explain="serial and apPasswordHash match (dyson.md §1.2)",
            client_id=connect.client_id,
        )
        older = table.live.get(key)
        table.forget_stale(key)
        table.live[key] = pump
        self._key = key
        if older is not None and older is not pump and not older.closed:
            # Reusing the id of a healthy session evicts it (MQTT 3.1.1 §3.1.4, dyson.md §1.3).
            await older.close(
                DisconnectReason.DUPLICATE_CLIENTID,
                f"a newer connection ({pump.conn_id}) took over client id {connect.client_id!r}",
            )
        return Admission()

    async def _refuse(self, pump: MqttPump, code: int, reason: str, explain: str) -> None:
        pump.record(
            "auth.verdict",
            stage="dyson-local",
            ok=False,
            reason=reason,
            explain=explain,
            return_code=code,
        )
        pump.send(Connack(return_code=code))
        closing = DisconnectReason.AUTH_ERROR
        if code != CONNACK_NOT_AUTHORIZED:
            closing = DisconnectReason.CLIENT_ERROR
        await pump.close(closing, explain)

    async def on_connected(self, pump: MqttPump, connack: Connack) -> None:
        requested = pump.state.requested_keepalive
        pump.record(
            "mqtt.keepalive",
            requested=requested,
            effective=requested,
            cut_after=requested * KEEPALIVE_FACTOR if requested else None,
            explain=f"the device drops the client after {KEEPALIVE_FACTOR}x its {requested} s "
            "keep-alive without a packet (dyson.md §1.1)"
            if requested
            else "keep-alive 0: the device never drops a silent client",
        )
        pump.start_keepalive(
            requested,
            factor=KEEPALIVE_FACTOR,
            explain="no packet within 1.5x the keep-alive (dyson.md §1.1)",
        )

    async def on_close(
        self, pump: MqttPump, reason: DisconnectReason, *, was_connected: bool
    ) -> None:
        broker = self.broker
        broker.pumps.pop(pump.conn_id, None)
        key = self._key
        if key is None:
            return
        broker.table.end(key, pump)
        quirks = broker.quirks
        tracked = quirks.stale_session_rst or quirks.session_cap is not None
        if was_connected and reason == DisconnectReason.CONNECTION_LOST and tracked:
            broker.leave_stale(pump, key)

    # Client → engine

    async def on_publish(self, pump: MqttPump, publish: Publish) -> None:
        if publish.retain:
            publish = replace(publish, retain=False)  # nothing is retained (dyson.md §1.5)
        repeat = publish.qos == 2 and publish.packet_id in self._qos2_seen
        pump.to_engine(publish)
        if publish.qos == 2 and publish.packet_id is not None:
            self._qos2_seen.add(publish.packet_id)
        if not repeat and publish.topic == self.broker.device.topics.command:
            self.broker.command(pump, publish)

    async def on_subscribe(self, pump: MqttPump, subscribe: Subscribe) -> None:
        if self._dropping:
            return  # already on its way out: nothing more is answered
        quirks = self.broker.quirks
        topics = self.broker.device.topics
        classes = [topics.classify_filter(f) for f, _qos in subscribe.topics]
        dropped = [
            f
            for (f, _qos), kind in zip(subscribe.topics, classes, strict=True)
            if (kind == "foreign" and quirks.foreign_subscribe_drop)
            or (kind == "hash" and quirks.hash_wildcard == "drop")
        ]
        if dropped:
            self._dropping = True
            quirk = "foreign_subscribe_drop" if "#" not in dropped else "hash_wildcard"
            delay = quirks.foreign_drop_delay_ms / 1000
            explain = (
                f"SUBSCRIBE to {dropped} outside {topics.prefix}: no SUBACK, connection closed "
                f"{quirks.foreign_drop_delay_ms:g} ms later (dyson.md §1.4, field-bugs.md FB-11)"
            )
            self._quirk(pump, quirk, explain, topics=dropped)
            pump.close_later(delay, DisconnectReason.FORBIDDEN_ACCESS, explain)
            return
        local: dict[int, int] = {}
        forward: list[tuple[str, int]] = []
        for index, ((topic_filter, qos), kind) in enumerate(
            zip(subscribe.topics, classes, strict=True)
        ):
            if kind == "hash" and quirks.hash_wildcard == "silent":
                local[index] = qos
                self._quirk(
                    pump, "hash_wildcard", "bare # granted, nothing delivered (dyson.md §1.4)"
                )
            elif kind == "hash" and quirks.hash_wildcard == "refuse":
                local[index] = 0x80
                self._quirk(pump, "hash_wildcard", "bare # refused: SUBACK 0x80 (dyson.md §1.4)")
            else:
                forward.append((topic_filter, qos))
        if not forward:
            codes = tuple(local[i] for i in range(len(subscribe.topics)))
            pump.send(Suback(subscribe.packet_id, codes))
            return
        if local:
            self._local_codes[subscribe.packet_id] = (len(subscribe.topics), local)
        for topic_filter, qos in forward:
            pump.state.subscriptions[topic_filter] = qos
        pump.to_engine(Subscribe(subscribe.packet_id, tuple(forward)))

    async def on_unsubscribe(self, pump: MqttPump, unsubscribe: Unsubscribe) -> None:
        for topic in unsubscribe.topics:
            pump.state.subscriptions.pop(topic, None)
        pump.to_engine(unsubscribe)

    async def on_other(self, pump: MqttPump, packet: Packet) -> None:
        if isinstance(packet, Pubrel):
            self._qos2_seen.discard(packet.packet_id)
        if isinstance(packet, Pubrec | Pubrel | Pubcomp):
            pump.to_engine(packet)  # QoS 2 both ways (dyson.md §1.5)
            return
        await pump.close(
            DisconnectReason.CLIENT_ERROR, f"a client may not send {type(packet).__name__}"
        )

    # Engine → client

    def to_client(self, pump: MqttPump, packet: Packet) -> Packet | None:
        if isinstance(packet, Suback) and packet.packet_id in self._local_codes:
            total, local = self._local_codes.pop(packet.packet_id)
            engine_codes = iter(packet.return_codes)
            codes = tuple(
                local[i] if i in local else next(engine_codes, 0x80) for i in range(total)
            )
            return Suback(packet.packet_id, codes)
        return packet

    async def acknowledged(self, pump: MqttPump, ack: Suback | Unsuback) -> None:
        return None

    def _quirk(self, pump: MqttPump, quirk: str, explain: str, **fields: object) -> None:
        pump.record("dyson.local.quirk", quirk=quirk, explain=explain, **fields)


OfflineMode = Literal["refuse", "blackhole"]


class DysonLocalBroker:
    """One device's local MQTT broker on 127.0.0.1; an async context manager.

    ``device`` is a :class:`DysonDevice` (the broker runs it) or a :class:`DeviceOwner`
    that runs it for several sinks. ``password`` is the device's ``apPasswordHash``
    (dyson.md §1.2): the username is the device's serial.
    """

    name = "local"

    def __init__(
        self,
        device: DysonDevice | DeviceOwner,
        *,
        password: str,
        quirks: LocalQuirks | None = None,
        # Network
        host: str = "127.0.0.1",
        port: int = 0,
        protocol_levels: frozenset[int] = frozenset({3, 4}),
        connect_timeout: float | None = 10.0,
        # Timeline and routing
        recorder: Recorder | None = None,
        clock: WorldClock | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.recorder = recorder if recorder is not None else Recorder(clock=clock)
        self.clock: WorldClock = clock if clock is not None else self.recorder.clock
        if isinstance(device, DysonDevice):
            self._own_host: DeviceHost | None = DeviceHost(
                device, recorder=self.recorder, clock=self.clock
            )
            self.owner: DeviceOwner = self._own_host
        else:
            self._own_host = None
            self.owner = device
        self.device: DysonDevice = self.owner.device
        self.login = BrokerLogin(self.device.serial, password)
        self.quirks = quirks if quirks is not None else LocalQuirks()
        if not protocol_levels or not protocol_levels <= {3, 4}:
            raise ConfigError("protocol_levels: 3 (MQTT 3.1) and/or 4 (MQTT 3.1.1)")
        self.protocol_levels = protocol_levels
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.engine: Engine = engine if engine is not None else AmqttEngine()
        self.table = SessionTable()
        self.pumps: dict[str, MqttPump] = {}
        self._server: asyncio.Server | None = None
        self._blackhole: tuple[socket.socket, socket.socket] | None = None
        self._frozen: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._conn_ids = itertools.count(1)
        self._outbox: asyncio.Queue[Outgoing] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._remove_sink: Callable[[], None] | None = None
        self._accepts: list[float] = []
        self._online = False
        self._reorder_count = 0

    # Lifecycle

    async def __aenter__(self) -> DysonLocalBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.engine.start()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.create_task(
            self._publish_forever(), name=f"dyson-local-{self.serial}"
        )
        await self._listen()
        self._online = True
        self._remove_sink = self.owner.add_sink(self)
        if self._own_host is not None:
            self._own_host.start()
        self.recorder.record(
            "dyson.local.started",
            serial=self.serial,
            host=self.host,
            port=self.port,
            root_topic=self.device.topics.root,
            engine=self.engine.name,
        )
        self.publish(self.device.hello(self.clock.now()))

    async def stop(self) -> None:
        self._online = False
        if self._own_host is not None:
            await self._own_host.stop()
        if self._remove_sink is not None:
            self._remove_sink()
            self._remove_sink = None
        self._close_listener()
        for pump in list(self.pumps.values()):
            await pump.close(DisconnectReason.SERVER_INITIATED_DISCONNECT, "device broker stopping")
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await self.engine.stop()
        self.recorder.record("dyson.local.stopped", serial=self.serial)

    @property
    def serial(self) -> str:
        return self.device.serial

    @property
    def online(self) -> bool:
        return self._online

    # The device's messages (the sink side)

    def publish(self, message: Outgoing) -> None:
        """Publish a device message to local subscribers; dropped while offline (QoS 0,
        dyson.md §1.5). Never blocks, never raises."""
        if not self._online or self._outbox is None:
            return
        quirks = self.quirks
        if quirks.reorder and "time" in message.message():
            self._reorder_count += 1
            if self._reorder_count % REORDER_EVERY == 0:
                older = self.clock.now() - quirks.reorder_age_s
                message = message.with_time(
                    format_device_time(older, self.device.profile.time_style)
                )
        self._outbox.put_nowait(message)
        if quirks.duplicates:
            outbox = self._outbox

            def again() -> None:
                if self._online:
                    outbox.put_nowait(message)

            asyncio.get_running_loop().call_later(quirks.duplicate_gap_ms / 1000, again)

    def command(self, pump: MqttPump, publish: Publish) -> None:
        """A client's command: to the device, unless the device is ``mute`` (§1.4)."""
        if self.quirks.mute:
            pump.record(
                "dyson.local.quirk",
                quirk="mute",
                topic=publish.topic,
                explain="the device accepts the command and never answers (dyson.md §1.4, "
                "field-bugs.md FB-13)",
            )
            return
        try:
            self.owner.handle(publish.topic, publish.payload, via="local")
        except Exception as exc:  # a device bug is an event, not a dead connection
            self.recorder.record("dyson.local.error", serial=self.serial, explain=repr(exc))

    async def _publish_forever(self) -> None:
        assert self._outbox is not None
        while True:
            message = await self._outbox.get()
            try:
                await self.engine.publish_system(message.topic, message.payload)
            except Exception as exc:
                self.recorder.record("dyson.local.error", serial=self.serial, explain=repr(exc))
                continue
            self.recorder.record(
                "dyson.local.publish", serial=self.serial, topic=message.topic, msg=message.msg
            )

    # Fault hooks

    def set_quirks(self, quirks: LocalQuirks) -> None:
        """Switch quirks on a running broker; new packets and connections follow them."""
        self.quirks = quirks
        self.recorder.record("dyson.local.quirks", serial=self.serial, quirks=repr(quirks))

    @property
    def sessions(self) -> tuple[str, ...]:
        """Client ids of the live sessions."""
        return tuple(self.table.live)

    @property
    def stale_sessions(self) -> dict[str, float]:
        """Stale sessions (dyson.md §1.4): client id → when it ends (world seconds)."""
        return self.table.stale(self.clock.elapsed())

    async def drop(self, target: str, *, reset: bool = False) -> bool:
        """Drop the connection with this connection id or client id now."""
        pump = self.pumps.get(target) or self.table.live.get(target)
        if pump is None:
            return False
        self.recorder.record("fault.fired", conn=pump.conn_id, fault="drop", reset=reset)
        await pump.close(
            DisconnectReason.SERVER_INITIATED_DISCONNECT, "fault: dropped", abort=reset
        )
        return True

    async def reset_all(self) -> int:
        """TCP RST on every connection (the device rebooted its network stack); no
        session is left stale. Returns how many connections were reset."""
        pumps = list(self.pumps.values())
        self.recorder.record("fault.fired", fault="reset-all", serial=self.serial, count=len(pumps))
        for pump in pumps:
            await pump.close(
                DisconnectReason.SERVER_INITIATED_DISCONNECT, "fault: connection reset", abort=True
            )
        return len(pumps)

    async def go_offline(self, *, mode: OfflineMode = "refuse") -> None:
        """The device leaves the network (field-bugs.md FB-03, FB-08).

        ``refuse``: port 1883 refuses connections (a RST answers each SYN) and every
        connection is reset. ``blackhole``: SYNs go unanswered (clients sit in
        ``SYN_SENT``) and open connections fall silent, nothing in and nothing out, until
        :meth:`come_back`, which resets them (the device lost their TCP state).
        """
        if not self._online:
            return
        self._online = False
        self.recorder.record("fault.fired", fault="go-offline", serial=self.serial, mode=mode)
        self._close_listener()
        if mode == "blackhole":
            self._open_blackhole()
            self._frozen = set(self.pumps)
        else:
            for pump in list(self.pumps.values()):
                await pump.close(
                    DisconnectReason.SERVER_INITIATED_DISCONNECT, "device offline", abort=True
                )
        self.recorder.record("dyson.local.offline", serial=self.serial, mode=mode)

    async def come_back(self) -> None:
        """The device is back on the network, listening on the same port."""
        if self._online:
            return
        frozen, self._frozen = self._frozen, set()
        for conn in frozen:
            pump = self.pumps.get(conn)
            if pump is not None:
                await pump.close(
                    DisconnectReason.SERVER_INITIATED_DISCONNECT,
                    "the device came back without this connection's TCP state",
                    abort=True,
                )
        self._close_listener()
        await self._listen()
        self._online = True
        self.recorder.record("dyson.local.online", serial=self.serial, port=self.port)

    # Listener

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._blackhole is not None:
            for sock in self._blackhole:
                sock.close()
            self._blackhole = None

    def _open_blackhole(self) -> None:
        """Keep the port bound with a full accept queue: the kernel then drops every SYN,
        so clients stay in ``SYN_SENT`` (dyson.md §1.4 ``syn_fragile``) instead of being
        refused. One connection of the harness's own fills the queue of a backlog-0
        listener."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(0)
        filler = socket.create_connection((self.host, self.port), timeout=1.0)
        self._blackhole = (listener, filler)

    def _syn_fragile(self) -> None:
        """Count accepted connections; past M within T s, SYNs go unanswered for a while."""
        fragile = self.quirks.syn_fragile
        if fragile is None or not self._online:
            return
        now = self.clock.elapsed()
        self._accepts = [t for t in self._accepts if t > now - fragile.window_s] + [now]
        if len(self._accepts) < fragile.attempts:
            return
        self._accepts.clear()
        self.recorder.record(
            "dyson.local.quirk",
            quirk="syn_fragile",
            serial=self.serial,
            explain=f"{fragile.attempts} connection attempts within {fragile.window_s:g} s: "
            f"SYNs unanswered for {fragile.pause_s:g} s (dyson.md §1.4, field-bugs.md FB-08)",
        )
        self._online = False
        self._close_listener()
        self._open_blackhole()
        self.recorder.record("dyson.local.offline", serial=self.serial, mode="syn-fragile")

        async def resume() -> None:
            await self.come_back()

        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(fragile.pause_s, lambda: self.spawn(resume())))

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = f"local-{self.serial}-{next(self._conn_ids)}"
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        timer: asyncio.TimerHandle | None = None
        try:
            self.recorder.record(
                "tcp.accept",
                conn=conn,
                port="dyson-local",
                peer=str(writer.get_extra_info("peername")),
                serial=self.serial,
            )
            self._syn_fragile()
            transport = _LocalTransport(reader, writer, broker=self, conn=conn)
            pump = MqttPump(host=self, conn_id=conn, transport=transport, rules=DysonRules(self))
            self.pumps[conn] = pump
            if self.connect_timeout is not None:
                timer = asyncio.get_running_loop().call_later(
                    self.connect_timeout, self._connect_overdue, pump
                )
            await pump.run()
        except asyncio.CancelledError:
            # Only stop() cancels a connection task (as in the gateway's listeners).
            abort_writer(writer)
        except Exception as exc:  # a broker bug must not take the listener down
            self.recorder.record("dyson.local.error", conn=conn, explain=repr(exc))
            abort_writer(writer)
        finally:
            if timer is not None:
                timer.cancel()
            self.pumps.pop(conn, None)
            if task is not None:
                self._tasks.discard(task)

    def _connect_overdue(self, pump: MqttPump) -> None:
        if pump.closed or pump.client_id is not None:
            return
        self.spawn(
            pump.close(
                DisconnectReason.CLIENT_ERROR,
                f"no CONNECT within {self.connect_timeout:g} s of the connection opening",
            )
        )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def leave_stale(self, pump: MqttPump, client_id: str) -> None:
        """The client of ``pump`` vanished without DISCONNECT: the device keeps its session
        ``stale_window_s`` (dyson.md §1.4); ``dyson.local.stale.ended`` marks its end."""
        window = self.quirks.stale_window_s
        until = self.clock.elapsed() + window
        self.table.leave_stale(client_id, until)
        pump.record(
            "dyson.local.stale",
            until=until,
            explain=f"the client vanished without DISCONNECT; the device keeps its session "
            f"{window:g} s (dyson.md §1.4)",
        )

        def ended() -> None:
            if self.table.recorded_until(client_id) == until:
                self.table.stale(self.clock.elapsed())
                self.recorder.record(
                    "dyson.local.stale.ended", conn=pump.conn_id, client_id=client_id
                )

        self._timers.append(asyncio.get_running_loop().call_later(window + 0.001, ended))

    def frozen(self, conn: str) -> bool:
        return conn in self._frozen


class _LocalTransport(StreamTransport):
    """The gateway's stream transport on plain TCP, which falls silent while the device is
    off the network in ``blackhole`` mode (:meth:`DysonLocalBroker.go_offline`)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        broker: DysonLocalBroker,
        conn: str,
    ) -> None:
        super().__init__(reader, writer)
        self._broker = broker
        self._conn = conn

    async def receive(self) -> bytes:
        while True:
            data = await super().receive()
            if not data or not self._broker.frozen(self._conn):
                return data

    def send(self, data: bytes) -> None:
        if not self._broker.frozen(self._conn):
            super().send(data)
