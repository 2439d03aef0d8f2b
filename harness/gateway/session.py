"""The session pump: one client's MQTT connection between its transport and the engine.

:class:`MqttPump` is the part every MQTT front of the harness shares; what a broker does
with each packet is its :class:`~harness.gateway.rules_hooks.SessionRules`. The gateway's
:class:`Session` is the pump with :class:`AwsRules`; a Dyson device's local broker
(``simulators.dyson.local_broker``) is the same pump and engine with Dyson's rules.

The pump decodes MQTT both ways with :mod:`harness.mqtt.codec`; :class:`AwsRules` applies
AWS IoT's behaviour (aws-iot.md §4, §5) before any byte reaches the engine or the client:

* CONNECT: AWS's limits, authentication of custom-auth credentials, ``iot:Connect``;
  a failure closes the connection without CONNACK (§1.8, §2.4, §4.5).
* duplicate client id: the newer connection wins, the older is dropped (§4.3).
* keep-alive clamped to 30-1200 s and enforced at 1.5x by the gateway from CONNACK on
  (§4.3); the engine is told keep-alive 0 so it never second-guesses AWS's rule.
* PUBLISH / SUBSCRIBE: AWS's quotas and ``iot:Publish`` / ``iot:Subscribe``; QoS 2 is
  ignored without an ack (§4.2); a forbidden action closes the connection (§4.5).
* deliveries: ``iot:Receive``, ``#`` not matching its parent, retained messages only for
  exact-match subscriptions (§4.3); a delivery the client must not see is acknowledged to
  the engine by the pump so nothing is redelivered.
* persistent sessions (cleanSession 0, §4.3): the engine keeps the session and its queued
  QoS 1 messages; the pump remembers the session's filters (:class:`PersistentSubscriptions`)
  so that what a resumed session is sent still passes AWS's delivery rules.
* MQTT 3.1 (``MQIsdp``) clients are carried across: their CONNECT is re-encoded as 3.1.1
  for the engine, and the engine's CONNACK loses its session-present bit, a reserved bit
  in 3.1 (§4.1; DESIGN.md, amqtt constraints).
* lifecycle messages on ``$aws/events/presence/...`` with AWS's disconnect reasons, and
  on ``$aws/events/subscriptions/...`` once the engine acknowledged a (un)subscription
  (§4.6).
* PUBLISH to the AWS-defined ``$aws/...`` request topics a client may use (shadow, jobs,
  Basic Ingest; :data:`harness.mqtt.rules.CLIENT_PUBLISHABLE_RESERVED`) goes into the
  engine as the gateway's own publish and is acknowledged by the pump: brokers refuse
  client publishes to ``$`` topics (MQTT 3.1.1 §4.7.2; amqtt closes the connection).
* lifetimes: custom auth's ``disconnectAfterInSeconds`` closes the connection when it
  elapses (§2.3); a WebSocket connection past its lifetime is closed at the next packet
  either way (§4.4), and the moment it expires is an event (``ws.expired``).

The engine only ever sees packets the codec encoded: every client packet is decoded,
vetted and re-encoded, so a byte sequence the codec tolerates (a non-minimal Remaining
Length, say) cannot reach a stricter engine, and what the engine routes is exactly what
the events say the client sent.

The pump owns no socket: a :class:`ClientTransport` moves the bytes (raw TLS stream,
WebSocket frames, or plain TCP for a Dyson device's port 1883).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from harness.auth.policy import Decision, PolicyDocument, connection_variables, evaluate
from harness.engine.base import EngineLink
from harness.errors import MalformedPacket, ProtocolError
from harness.gateway.rules_hooks import Admission, PumpHost, SessionRules
from harness.mqtt import rules
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Publish,
    StreamDecoder,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
    packet_name,
)
from harness.mqtt.rules import DisconnectReason

if TYPE_CHECKING:
    from harness.gateway.server import Gateway


class ClientTransport(Protocol):
    """How the pump talks to its client: a TLS stream or WebSocket binary frames."""

    peer: tuple[str, int]

    async def receive(self) -> bytes:
        """The next bytes from the client; ``b""`` when the client is gone.

        Raises :class:`~harness.errors.ProtocolError` when the client broke the
        transport's own protocol (a WebSocket protocol error): the pump ends the session
        as the client's error, not as a lost connection.
        """
        ...

    def send(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Close as AWS does: TLS close_notify (and a WebSocket close frame)."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection at once (a reset)."""
        ...


@dataclass(frozen=True)
class Principal:
    """Who a connection acts as, and the IoT policies that bind it (aws-iot.md §5)."""

    method: str  # "sigv4" | "custom-auth" | "x509"
    name: str
    policies: tuple[PolicyDocument, ...] = ()
    thing_name: str | None = None
    #: Custom authorizer's ``disconnectAfterInSeconds`` (aws-iot.md §2.3).
    disconnect_after: float | None = None


@dataclass(frozen=True)
class ConnectAuth:
    """The outcome of authenticating a CONNECT."""

    ok: bool
    reason: str
    explain: str = ""
    principal: Principal | None = None
    #: What the CONNECT-stage ``auth.verdict`` event says beyond ``ok``/``reason``/
    #: ``explain``: ``method`` and what identifies the credentials (the authorizer and
    #: whether it was invoked, the access key id, the thing). Never a secret.
    event_fields: Mapping[str, object] = field(default_factory=dict)


#: Decides whether a CONNECT may proceed; given the decoded CONNECT.
Authenticate = Callable[[Connect], Awaitable[ConnectAuth]]


class PersistentSubscriptions:
    """The topic filters of persistent sessions, by client id (aws-iot.md §4.3).

    With cleanSession 0 the engine keeps the session (its subscriptions and the QoS 1
    messages queued while the client is away) and says so with CONNACK session-present.
    The pump needs the filters as well: AWS's delivery rules (``#`` without its parent,
    retained messages only for exact matches, ``iot:Receive``) are applied to everything
    the engine sends, including what it redelivers to a resumed session. One store per
    gateway (``Gateway.persistent_subscriptions``); a session resumed through another
    gateway process starts without filters and so receives only what it subscribes to
    again.
    """

    def __init__(self) -> None:
        self._filters: dict[str, dict[str, int]] = {}

    def resume(self, client_id: str) -> dict[str, int]:
        """The filters (and granted QoS) a resumed session had."""
        return dict(self._filters.get(client_id, {}))

    def save(self, client_id: str, filters: dict[str, int]) -> None:
        self._filters[client_id] = dict(filters)

    def forget(self, client_id: str) -> None:
        """A clean session replaces the persistent one (MQTT 3.1.1 §3.1.2.4)."""
        self._filters.pop(client_id, None)

    def __len__(self) -> int:
        return len(self._filters)


#: The user name the pump presents to the engine: the rules have already authenticated
#: the client, and a named session is one amqtt keeps for cleanSession 0 (anonymous ones
#: it drops), so persistent sessions work on every engine.
ENGINE_USERNAME = "iot-harness-gateway"


@dataclass
class PumpState:
    """What the pump knows about its connection; rules read and update it."""

    client_id: str | None = None
    protocol_level: int = 4
    clean_session: bool = True
    #: The keep-alive the client asked for; the timer the rules choose starts at CONNACK.
    requested_keepalive: int = 0
    keepalive: rules.KeepAlive | None = None
    #: Filters the engine routes for this client, with their granted QoS.
    subscriptions: dict[str, int] = field(default_factory=dict)
    connected_at: float | None = None


class MqttPump:
    """One MQTT connection between a client's transport and the engine, under some rules.

    The generic part of every MQTT front (module docstring); ``rules`` decides what each
    packet means for this broker (:class:`~harness.gateway.rules_hooks.SessionRules`).
    """

    def __init__(
        self,
        *,
        host: PumpHost,
        conn_id: str,
        transport: ClientTransport,
        rules: SessionRules,
    ) -> None:
        self.host = host
        self.conn_id = conn_id
        self.transport = transport
        self.rules = rules
        self.state = PumpState()
        self.started = host.clock.elapsed()
        self._link: EngineLink | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = asyncio.Event()
        self.close_reason: DisconnectReason | None = None
        self._decoder = StreamDecoder(max_packet_size=rules.max_packet_size)
        self._engine_decoder = StreamDecoder()
        #: Bytes for the client held while one engine read is handled (``_engine_loop``).
        self._batch: list[bytes] | None = None

    # Public

    @property
    def client_id(self) -> str | None:
        return self.state.client_id

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def run(self) -> None:
        """Pump until the client or the server ends the connection."""
        self.rules.started(self)
        try:
            while not self.closed:
                try:
                    data = await self.transport.receive()
                except ProtocolError as exc:
                    # The transport knows the client broke its protocol (``ws.error`` says
                    # how). AWS's disconnectReason for a WebSocket protocol error is not
                    # documented; CLIENT_ERROR ("the client did something wrong",
                    # aws-iot.md §4.6) is inferred.
                    await self.close(DisconnectReason.CLIENT_ERROR, exc.message)
                    break
                if not data:
                    await self.close(DisconnectReason.CONNECTION_LOST, "the client went away")
                    break
                await self.feed(data)
        except (ConnectionError, OSError) as exc:
            await self.close(DisconnectReason.CONNECTION_LOST, f"transport error: {exc}")
        finally:
            if not self.closed:
                await self.close(DisconnectReason.CONNECTION_LOST, "the connection ended")

    async def feed(self, data: bytes) -> None:
        """Bytes from the client."""
        try:
            packets = self._decoder.feed(data)
        except MalformedPacket as exc:
            self.record("mqtt.malformed", reason=exc.reason, explain=exc.message)
            reply = self.rules.malformed_reply(self, exc)
            if reply is not None:
                self.send(reply)
            await self.close(DisconnectReason.CLIENT_ERROR, f"malformed MQTT: {exc.message}")
            return
        for packet, _raw in packets:
            if self.closed:
                return
            await self._from_client(packet)

    async def close(self, reason: DisconnectReason, explain: str, *, abort: bool = False) -> None:
        """End the connection: no MQTT goodbye on 3.1.1, just a close (or a reset).

        Order matters: the client's transport starts closing at once but is awaited last
        (a client that does not answer TLS close_notify must not delay anything); the
        engine link is closed next, so the engine has ended the MQTT session (and sent
        any Will) before the rules announce the end, which a newer connection taking over
        the client id may be waiting for (aws-iot.md §4.3, §4.6).
        """
        if self._closed.is_set():
            return
        self._flush()  # what the engine said before the close still goes out
        self._closed.set()
        self.close_reason = reason
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.record("mqtt.close", reason=str(reason), explain=explain)
        closing: asyncio.Future[None] | None = None
        if abort:
            self.transport.abort()
        else:
            closing = asyncio.ensure_future(self.transport.close())
        try:
            if self._link is not None:
                try:
                    await self._link.close()
                except Exception as exc:  # an engine that fails to close must not stop us
                    self.record("gateway.error", explain=f"engine link close failed: {exc!r}")
            if self._engine_task is not None and self._engine_task is not asyncio.current_task():
                self._engine_task.cancel()
            was_connected = self.state.connected_at is not None
            await self.rules.on_close(self, reason, was_connected=was_connected)
        finally:
            if closing is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await closing

    # What rules use

    def record(self, kind: str, **fields: object) -> None:
        """An event of this connection (with its client id once known)."""
        if self.state.client_id is not None and "client_id" not in fields:
            fields["client_id"] = self.state.client_id
        self.host.recorder.record(kind, conn=self.conn_id, **fields)

    def send(self, packet: Packet) -> None:
        """A packet of the pump's own to the client (recorded as ``mqtt.out``)."""
        self.record("mqtt.out", **describe_packet(packet))
        self._to_client(encode(packet))

    def to_engine(self, packet: Packet) -> None:
        if self._link is not None:
            self._link.write(encode(packet))

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay`` seconds unless the connection closed first."""
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))

    def close_later(
        self, delay: float, reason: DisconnectReason, explain: str, *, abort: bool = False
    ) -> None:
        """Close the connection ``delay`` seconds from now."""

        def fire() -> None:
            if not self.closed:
                self.host.spawn(self.close(reason, explain, abort=abort))

        self.call_later(delay, fire)

    def start_keepalive(self, keepalive: float, *, factor: float, explain: str) -> None:
        """Start the keep-alive timer at CONNACK: the connection is closed
        (MQTT_KEEP_ALIVE_TIMEOUT) once ``factor`` x ``keepalive`` seconds pass without a
        packet the rules count; ``explain`` says so in the close event."""
        now = self.state.connected_at
        self.state.keepalive = rules.KeepAlive(
            keepalive, factor=factor, now=now if now is not None else self.host.clock.elapsed()
        )
        self._schedule_keepalive_check(explain)

    # Client → engine

    async def _from_client(self, packet: Packet) -> None:
        self.record("mqtt.in", **describe_packet(packet))
        if not await self.rules.still_open(self):
            return
        if isinstance(packet, Connect):
            if self.state.connected_at is not None or self.state.client_id is not None:
                # A second CONNECT is a protocol violation (MQTT 3.1.1 §3.1; aws-iot.md §4.6).
                await self.close(DisconnectReason.CLIENT_ERROR, "second CONNECT on a connection")
                return
            await self._on_connect(packet)
            return
        if self.state.connected_at is None and (
            self.state.client_id is None or not self.rules.packets_before_connack
        ):
            when = "CONNACK" if self.state.client_id is not None else "CONNECT"
            await self.close(
                DisconnectReason.CLIENT_ERROR,
                f"{packet_name(packet)} before {when} (clients must await CONNACK, "
                "aws-iot.md §4.3)",
            )
            return
        if self.state.keepalive is not None and self.rules.resets_keepalive(packet):
            self.state.keepalive.touch(self.host.clock.elapsed())
        if isinstance(packet, Publish):
            await self.rules.on_publish(self, packet)
        elif isinstance(packet, Subscribe):
            await self.rules.on_subscribe(self, packet)
        elif isinstance(packet, Unsubscribe):
            await self.rules.on_unsubscribe(self, packet)
        elif isinstance(packet, Disconnect):
            # The engine gets the DISCONNECT before its link closes; the link lets the
            # engine end the session cleanly (no Will, MQTT 3.1.1 §3.14) before the close.
            self.to_engine(packet)
            await self.close(DisconnectReason.CLIENT_INITIATED_DISCONNECT, "client DISCONNECT")
        elif isinstance(packet, Pingreq | Puback):
            self.to_engine(packet)
        else:
            await self.rules.on_other(self, packet)

    async def _on_connect(self, connect: Connect) -> None:
        self.state.protocol_level = connect.protocol_level
        self.state.clean_session = connect.clean_session
        self.state.requested_keepalive = connect.keep_alive
        admission = await self.rules.admit(self, connect)
        if admission is None or self.closed:
            return
        self.state.client_id = connect.client_id
        try:
            self._link = await self.host.engine.connect(peer=self.transport.peer)
        except OSError as exc:
            await self.close(DisconnectReason.SERVER_ERROR, f"the engine is unreachable: {exc}")
            return
        if self.closed:  # dropped while the engine link was being opened
            await self._link.close()
            return
        # The engine speaks 3.1.1 only and never enforces keep-alive (the pump does). MQTT 3.1
        # allowed a password without a username; 3.1.1 does not, and the rules have
        # already authenticated, so the client's credentials are not passed on at all.
        engine_connect = dataclasses.replace(
            connect, protocol_level=4, keep_alive=0, username=ENGINE_USERNAME, password=None
        )
        self._link.write(encode(engine_connect))
        self._engine_task = asyncio.create_task(
            self._engine_loop(withhold=admission.withhold_connack),
            name=f"engine-{self.conn_id}",
        )
        if admission.lifetime is not None:
            self.close_later(
                admission.lifetime, admission.lifetime_reason, admission.lifetime_explain
            )

    # Engine → client

    async def _engine_loop(self, *, withhold: bool) -> None:
        assert self._link is not None
        try:
            while not self.closed:
                data = await self._link.read()
                if not data:
                    if not self.closed:
                        await self.close(
                            DisconnectReason.SERVER_INITIATED_DISCONNECT,
                            "the engine closed the connection",
                        )
                    return
                # Everything one engine read brings goes to the client in one write: one TLS
                # record (and one WebSocket frame, which may carry several MQTT packets,
                # MQTT 3.1.1 §6) instead of one per packet.
                self._batch = []
                try:
                    for packet, raw in self._engine_decoder.feed(data):
                        await self._from_engine(packet, raw, withhold=withhold)
                finally:
                    self._flush()
                    self._batch = None
        except MalformedPacket as exc:
            await self.close(DisconnectReason.SERVER_ERROR, f"engine sent malformed MQTT: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must not hang the client
            await self.close(DisconnectReason.SERVER_ERROR, f"engine link failed: {exc!r}")

    async def _from_engine(self, packet: Packet, raw: bytes, *, withhold: bool) -> None:
        if isinstance(packet, Connack):
            if withhold:
                self.record("fault.fired", fault="withhold-connack", packet="CONNACK")
                return
            await self._on_connack(packet, raw)
            return
        if not await self.rules.still_open(self):
            return
        out = self.rules.to_client(self, packet)
        if out is None:
            if (
                isinstance(packet, Publish)
                and packet.qos == 1
                and packet.packet_id is not None
                and self._link is not None
            ):
                self._link.write(encode(Puback(packet.packet_id)))
            return
        if out is not packet:
            raw = encode(out)
        self.record("mqtt.out", **describe_packet(out))
        self._to_client(raw)
        if isinstance(out, Suback | Unsuback):
            self._flush()
            await self.rules.acknowledged(self, out)

    async def _on_connack(self, connack: Connack, raw: bytes) -> None:
        if self.state.protocol_level == 3 and connack.session_present:
            # MQTT 3.1's CONNACK has no session-present flag: that byte is reserved.
            connack = dataclasses.replace(connack, session_present=False)
            raw = encode(connack)
        self.record("mqtt.out", **describe_packet(connack))
        self._to_client(raw)
        self._flush()
        if connack.return_code != 0 or self.state.connected_at is not None:
            return
        self.state.connected_at = self.host.clock.elapsed()
        await self.rules.on_connected(self, connack)

    # Plumbing

    def _to_client(self, data: bytes) -> None:
        if self.closed:
            return
        if self._batch is not None:
            self._batch.append(data)
        else:
            self.transport.send(data)

    def _flush(self) -> None:
        """Send what the current batch holds now (before the pump awaits anything that
        may depend on the client having it: a CONNACK, a SUBACK)."""
        batch = self._batch
        if not batch:
            return
        if not self.closed:
            self.transport.send(batch[0] if len(batch) == 1 else b"".join(batch))
        batch.clear()

    def _schedule_keepalive_check(self, explain: str) -> None:
        keepalive = self.state.keepalive
        if keepalive is None or self.closed:
            return
        if math.isinf(keepalive.deadline):
            return
        loop = asyncio.get_running_loop()
        delay = max(keepalive.deadline - self.host.clock.elapsed(), 0.0)

        def check() -> None:
            if self.closed or self.state.keepalive is None:
                return
            if self.state.keepalive.expired(self.host.clock.elapsed()):
                self.host.spawn(self.close(DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT, explain))
            else:
                self._schedule_keepalive_check(explain)

        self._timers.append(loop.call_later(delay + 0.001, check))


# AWS IoT Core


#: Policy decisions a connection remembers; a client that publishes to ever new topics
#: starts over past this, so memory stays bounded.
_MAX_DECISIONS = 256


class AwsRules:
    """AWS IoT Core's behaviour for one gateway connection (module docstring)."""

    packets_before_connack = False

    def __init__(
        self,
        *,
        gateway: Gateway,
        session: Session,
        authenticate: Authenticate,
        websocket: bool,
    ) -> None:
        self.gateway = gateway
        self.session = session
        self._authenticate = authenticate
        self.websocket = websocket
        self.principal: Principal | None = None
        self.session_id = str(uuid.uuid4())
        #: Policy decisions made for ``_decided_for``, the principal (:meth:`_allowed`).
        self._decisions: dict[tuple[str, str, str | None], Decision] = {}
        self._decided_for: Principal | None = None
        #: (Un)subscriptions sent to the engine, by packet id, until it acknowledges them.
        self._awaiting_ack: dict[int, tuple[rules.SubscriptionEvent, tuple[str, ...]]] = {}
        limits = gateway.limits
        self._rate = (
            rules.RateLimiter(limits.publishes_per_second, per_seconds=1.0)
            if limits.publishes_per_second
            else None
        )
        self.max_packet_size = (limits.max_payload + 65536 + 5) if limits.max_payload else None

    # Connection

    def started(self, pump: MqttPump) -> None:
        """Record the moment a WebSocket connection reaches its lifetime (aws-iot.md §4.4).

        AWS closes it "when an attempt is made to send a message by the client or
        server", so nothing is closed here: the event only marks the moment on the
        timeline (and lets a test wait for it instead of sleeping).
        """
        lifetime = self.gateway.limits.websocket_lifetime
        if not self.websocket or lifetime is None:
            return
        delay = max(pump.started + lifetime - self.gateway.clock.elapsed(), 0.0)

        def expired() -> None:
            if not pump.closed:
                pump.record(
                    "ws.expired",
                    lifetime=lifetime,
                    explain="the WebSocket connection reached its lifetime; the next packet "
                    "either way closes it (aws-iot.md §4.4)",
                )

        pump.call_later(delay, expired)

    async def still_open(self, pump: MqttPump) -> bool:
        lifetime = self.gateway.limits.websocket_lifetime
        if (
            self.websocket
            and lifetime is not None
            and self.gateway.clock.elapsed() - pump.started >= lifetime
        ):
            await pump.close(
                DisconnectReason.WEBSOCKET_TTL_EXPIRATION,
                "the WebSocket connection outlived its lifetime (aws-iot.md §4.4)",
            )
            return False
        return True

    def malformed_reply(self, pump: MqttPump, error: MalformedPacket) -> Packet | None:
        return None  # AWS closes without a word (aws-iot.md §4.5)

    def resets_keepalive(self, packet: Packet) -> bool:
        return rules.resets_keepalive(packet_name(packet))

    async def admit(self, pump: MqttPump, connect: Connect) -> Admission | None:
        gw = self.gateway
        will = connect.will
        violation = rules.check_connect(
            client_id=connect.client_id,
            will_qos=will.qos if will else None,
            will_topic=will.topic if will else None,
            payload_size=len(will.payload) if will else 0,
            limits=gw.limits,
        )
        if violation is not None:
            pump.record("rule.violation", reason=violation.reason, explain=violation.explain)
            await pump.close(
                violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
            )
            return None
        auth = await self._authenticate(connect)
        verdict: dict[str, object] = dict(auth.event_fields)
        verdict.update(
            stage="connect",
            ok=auth.ok,
            reason=auth.reason,
            explain=auth.explain,
            client_id=connect.client_id,
        )
        pump.record("auth.verdict", **verdict)
        if not auth.ok or auth.principal is None:
            # Custom-auth failures and missing credentials: close after CONNECT, no
            # CONNACK (aws-iot.md §2.4, §4.5).
            await pump.close(DisconnectReason.AUTH_ERROR, auth.explain or auth.reason)
            return None
        self.principal = auth.principal
        # The pump learns the client id only once the CONNECT is admitted; the policy
        # variables of the Connect check take it from the CONNECT (aws-iot.md §5).
        if not self._allowed(
            pump,
            "iot:Connect",
            gw.arn("client", connect.client_id),
            connect.client_id,
            client_id=connect.client_id,
        ):
            await pump.close(
                DisconnectReason.FORBIDDEN_ACCESS,
                f"policy does not allow iot:Connect for client id {connect.client_id!r}",
            )
            return None
        throttled = gw.connect_throttle.check(connect.client_id, gw.clock.elapsed())
        if throttled is not None:
            # At most one CONNECT per second per client id (aws-iot.md §4.4).
            pump.record("rule.violation", reason=throttled.reason, explain=throttled.explain)
            await pump.close(DisconnectReason.THROTTLED, throttled.explain)
            return None
        fault = gw.faults.take_connect_fault()
        if fault == "close-after-connect":
            pump.record("fault.fired", fault=fault)
            await pump.close(
                DisconnectReason.SERVER_INITIATED_DISCONNECT, "fault: close after CONNECT"
            )
            return None
        await gw.take_over(connect.client_id, self.session)
        return Admission(
            withhold_connack=fault == "withhold-connack",
            lifetime=self.principal.disconnect_after,
            lifetime_reason=DisconnectReason.CUSTOMAUTH_TTL_EXPIRATION,
            lifetime_explain="custom authorizer's disconnectAfterInSeconds elapsed "
            "(aws-iot.md §2.3)",
        )

    async def on_connected(self, pump: MqttPump, connack: Connack) -> None:
        gw = self.gateway
        state = pump.state
        client_id = state.client_id
        assert client_id is not None
        store = gw.persistent_subscriptions
        if state.clean_session:
            store.forget(client_id)
        elif connack.session_present:
            state.subscriptions = store.resume(client_id) | state.subscriptions
        # The keep-alive timer starts at CONNACK (aws-iot.md §4.3).
        requested = state.requested_keepalive
        effective = rules.clamp_keepalive(requested, gw.limits)
        pump.record(
            "mqtt.keepalive",
            requested=requested,
            effective=effective,
            cut_after=rules.keepalive_deadline(effective, factor=gw.limits.keepalive_factor),
            explain=f"client asked for {requested} s; AWS enforces {effective} s and "
            "drops the connection after 1.5x that without a packet (aws-iot.md §4.3)",
        )
        pump.start_keepalive(
            effective,
            factor=gw.limits.keepalive_factor,
            explain="no packet within 1.5x the keep-alive (aws-iot.md §4.3)",
        )
        try:
            await gw.publish_presence(
                "connected",
                client_id=client_id,
                session_id=self.session_id,
                principal=self.principal.name if self.principal else "",
                ip_address=pump.transport.peer[0],
            )
        except Exception as exc:
            pump.record("gateway.error", explain=f"presence event not published: {exc!r}")

    async def on_close(
        self, pump: MqttPump, reason: DisconnectReason, *, was_connected: bool
    ) -> None:
        client_id = pump.state.client_id
        if was_connected and client_id is not None and not pump.state.clean_session:
            self.gateway.persistent_subscriptions.save(client_id, pump.state.subscriptions)
        self.gateway.session_ended(self.session)
        if was_connected and client_id is not None:
            try:
                await self.gateway.publish_presence(
                    "disconnected",
                    client_id=client_id,
                    session_id=self.session_id,
                    principal=self.principal.name if self.principal else "",
                    disconnect_reason=reason,
                    client_initiated=reason == DisconnectReason.CLIENT_INITIATED_DISCONNECT,
                )
            except Exception as exc:  # the engine is gone: the event is lost, not the pump
                pump.record("gateway.error", explain=f"presence event not published: {exc!r}")

    # Client → engine

    async def on_publish(self, pump: MqttPump, publish: Publish) -> None:
        gw = self.gateway
        violation = rules.check_publish(
            topic=publish.topic,
            qos=publish.qos,
            payload_size=len(publish.payload),
            limits=gw.limits,
        )
        if violation is not None:
            pump.record(
                "rule.violation",
                reason=violation.reason,
                explain=violation.explain,
                topic=publish.topic,
            )
            if violation.outcome == rules.Outcome.CLOSE:
                await pump.close(
                    violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
                )
            return  # IGNORE / DISCARD: silently dropped, no PUBACK (aws-iot.md §4.2)
        topic_arn = gw.arn("topic", publish.topic)
        if not self._allowed(pump, "iot:Publish", topic_arn, publish.topic) or (
            publish.retain
            and not self._allowed(pump, "iot:RetainPublish", topic_arn, publish.topic)
        ):
            await pump.close(
                DisconnectReason.FORBIDDEN_ACCESS,
                f"policy does not allow iot:Publish to {publish.topic!r}",
            )
            return
        if self._rate is not None and not self._rate.allow(gw.clock.elapsed()):
            # Excess publishes are discarded (aws-iot.md §4.4).
            pump.record(
                "rule.violation",
                reason="rate-exceeded",
                topic=publish.topic,
                explain="more than the per-connection publish rate",
            )
            return
        if publish.topic.startswith("$"):
            await self._publish_reserved(pump, publish)
            return
        pump.to_engine(publish)

    async def _publish_reserved(self, pump: MqttPump, publish: Publish) -> None:
        """An allowed ``$aws/...`` request topic (shadow, jobs, ...): published as AWS itself.

        MQTT brokers refuse client publishes to ``$`` topics, so the gateway publishes it
        through the engine's own way in (QoS 0) and acknowledges a QoS 1 publish itself.
        Nothing answers shadow or jobs requests: a scenario's own client can, by
        subscribing to the request topic.
        """
        try:
            await self.gateway.engine.publish_system(publish.topic, publish.payload)
        except OSError as exc:
            await pump.close(DisconnectReason.SERVER_ERROR, f"the engine is unreachable: {exc}")
            return
        if publish.qos == 1 and publish.packet_id is not None:
            pump.send(Puback(publish.packet_id))

    async def on_subscribe(self, pump: MqttPump, subscribe: Subscribe) -> None:
        gw = self.gateway
        state = pump.state
        decision = rules.check_subscribe(
            filters=subscribe.topics,
            existing_count=len(state.subscriptions),
            limits=gw.limits,
            existing=set(state.subscriptions),
        )
        if isinstance(decision, rules.Violation):
            pump.record("rule.violation", reason=decision.reason, explain=decision.explain)
            if decision.outcome == rules.Outcome.SUBACK_FAILURE:
                pump.send(Suback(subscribe.packet_id, tuple(0x80 for _ in subscribe.topics)))
            elif decision.outcome == rules.Outcome.CLOSE:
                await pump.close(
                    decision.disconnect_reason or DisconnectReason.CLIENT_ERROR, decision.explain
                )
            return  # IGNORE: no SUBACK at all (QoS 2, aws-iot.md §4.2)
        for topic_filter, _qos in subscribe.topics:
            if not self._allowed(
                pump, "iot:Subscribe", gw.arn("topicfilter", topic_filter), topic_filter
            ):
                # Unauthorized SUBSCRIBE: connection closed, no SUBACK (aws-iot.md §4.5).
                await pump.close(
                    DisconnectReason.FORBIDDEN_ACCESS,
                    f"policy does not allow iot:Subscribe to {topic_filter!r}",
                )
                return
        granted = tuple((d.topic_filter, d.granted_qos) for d in decision)
        for topic_filter, qos in granted:
            state.subscriptions[topic_filter] = qos
        self._awaiting_ack[subscribe.packet_id] = ("subscribed", tuple(f for f, _ in granted))
        pump.to_engine(Subscribe(subscribe.packet_id, granted))

    async def on_unsubscribe(self, pump: MqttPump, unsubscribe: Unsubscribe) -> None:
        violation = rules.check_unsubscribe(unsubscribe.topics, self.gateway.limits)
        if violation is not None:
            pump.record("rule.violation", reason=violation.reason, explain=violation.explain)
            await pump.close(
                violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
            )
            return
        for topic in unsubscribe.topics:
            pump.state.subscriptions.pop(topic, None)
        self._awaiting_ack[unsubscribe.packet_id] = ("unsubscribed", unsubscribe.topics)
        pump.to_engine(unsubscribe)

    async def on_other(self, pump: MqttPump, packet: Packet) -> None:
        # PUBREC/PUBREL/PUBCOMP: AWS has no QoS 2 (aws-iot.md §4.1); CONNACK etc. are
        # server packets a client may not send.
        await pump.close(
            DisconnectReason.CLIENT_ERROR, f"{packet_name(packet)} is not supported by AWS IoT"
        )

    # Engine → client

    def to_client(self, pump: MqttPump, packet: Packet) -> Packet | None:
        if isinstance(packet, Publish):
            if not self._deliverable(pump, packet):
                return None
            if self._rate is not None:
                # The publish quota counts inbound plus outbound (aws-iot.md §4.4); an
                # outbound excess is not discarded here (the engine would redeliver QoS 1),
                # only counted.
                self._rate.allow(self.gateway.clock.elapsed())
        return packet

    async def acknowledged(self, pump: MqttPump, ack: Suback | Unsuback) -> None:
        """``$aws/events/subscriptions/<subscribed|unsubscribed>/<clientId>`` (aws-iot.md
        §4.6), for the filters the engine accepted."""
        pending = self._awaiting_ack.pop(ack.packet_id, None)
        client_id = pump.state.client_id
        if pending is None or client_id is None:
            return
        event_type, filters = pending
        if isinstance(ack, Suback):
            # One code per filter; an engine that sends fewer only loses events for the rest.
            codes = ack.return_codes
            filters = tuple(f for f, c in zip(filters, codes, strict=False) if c != 0x80)
        if not filters:
            return
        pump.record(f"lifecycle.{event_type}", topics=list(filters))
        topic = rules.subscription_topic(event_type, client_id)
        if topic is None:
            return
        payload = rules.subscription_payload(
            event_type=event_type,
            client_id=client_id,
            timestamp_ms=int(self.gateway.clock.now() * 1000),
            session_id=self.session_id,
            principal=self.principal.name if self.principal else "",
            topics=filters,
        )
        try:
            await self.gateway.engine.publish_system(topic, payload)
        except OSError as exc:
            pump.record("gateway.error", explain=f"subscription event not published: {exc!r}")

    def _deliverable(self, pump: MqttPump, publish: Publish) -> bool:
        """AWS's delivery rules (aws-iot.md §4.3, §5)."""
        subscriptions = pump.state.subscriptions
        matching = [f for f in subscriptions if rules.topic_matches(f, publish.topic)]
        if publish.retain:
            # Retained messages only reach exact-match subscriptions.
            matching = [f for f in matching if rules.retained_delivered(f, publish.topic)]
        if not matching:
            pump.record(
                "mqtt.dropped",
                topic=publish.topic,
                reason="no-aws-match",
                explain="no subscription matches under AWS's rules (aws-iot.md §4.3)",
            )
            return False
        return self._allowed(
            pump, "iot:Receive", self.gateway.arn("topic", publish.topic), publish.topic
        )

    def _allowed(
        self,
        pump: MqttPump,
        action: str,
        resource: str,
        target: str,
        *,
        client_id: str | None = None,
    ) -> bool:
        """Whether the principal's policies allow ``action`` on ``resource`` (aws-iot.md §5),
        with the connection's policy variables; ``client_id`` overrides the pump's (which
        is unset until the CONNECT is admitted). A refusal is a ``policy.verdict`` event."""
        principal = self.principal
        if principal is None:
            return False
        client_id = client_id if client_id is not None else pump.state.client_id
        if principal is not self._decided_for or len(self._decisions) >= _MAX_DECISIONS:
            self._decisions.clear()
            self._decided_for = principal
        key = (action, resource, client_id)
        decision = self._decisions.get(key)
        if decision is None:
            # A principal (and its policies) is immutable, and the policy variables are the
            # connection's, so a decision holds for every later packet of this connection
            # to the same resource: decided once, not per message.
            variables = connection_variables(
                client_id=client_id, thing_name=principal.thing_name or None
            )
            decision = self._decisions[key] = evaluate(
                principal.policies, action=action, resource=resource, variables=variables
            )
        if not decision.allowed:
            pump.record(
                "policy.verdict",
                ok=False,
                action=action,
                resource=resource,
                reason=str(decision.reason),
                target=target,
            )
        return decision.allowed


class Session(MqttPump):
    """One MQTT connection through the gateway: the pump with :class:`AwsRules`."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        conn_id: str,
        transport: ClientTransport,
        authenticate: Authenticate,
        websocket: bool,
    ) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.aws = AwsRules(
            gateway=gateway, session=self, authenticate=authenticate, websocket=websocket
        )
        super().__init__(host=gateway, conn_id=conn_id, transport=transport, rules=self.aws)

    @property
    def principal(self) -> Principal | None:
        """Who the connection acts as, once its CONNECT is authenticated."""
        return self.aws.principal

    @property
    def session_id(self) -> str:
        """The ``sessionIdentifier`` of its lifecycle events (aws-iot.md §4.6)."""
        return self.aws.session_id


def describe_packet(packet: Packet) -> dict[str, object]:
    """What an event says about a packet: never payloads or passwords."""
    out: dict[str, object] = {"packet": packet_name(packet)}
    if isinstance(packet, Connect):
        out.update(
            client_id=packet.client_id,
            protocol_level=packet.protocol_level,
            keep_alive=packet.keep_alive,
            clean_session=packet.clean_session,
            has_username=packet.username is not None,
            will=packet.will is not None,
        )
    elif isinstance(packet, Connack):
        out.update(return_code=packet.return_code, session_present=packet.session_present)
    elif isinstance(packet, Publish):
        out.update(
            topic=packet.topic,
            qos=packet.qos,
            retain=packet.retain,
            size=len(packet.payload),
            packet_id=packet.packet_id,
        )
    elif isinstance(packet, Subscribe):
        out.update(packet_id=packet.packet_id, topics=[list(t) for t in packet.topics])
    elif isinstance(packet, Suback):
        out.update(packet_id=packet.packet_id, return_codes=list(packet.return_codes))
    elif isinstance(packet, Unsubscribe):
        out.update(packet_id=packet.packet_id, topics=list(packet.topics))
    elif hasattr(packet, "packet_id"):
        out["packet_id"] = packet.packet_id
    return out
