"""The session pump: one client's MQTT connection between its transport and the engine.

The pump decodes MQTT both ways with :mod:`harness.mqtt.codec` and applies AWS IoT's
behaviour (aws-iot.md §4, §5) before any byte reaches the engine or the client:

* CONNECT: AWS's limits, authentication of custom-auth credentials, ``iot:Connect``;
  a failure closes the connection without CONNACK (§1.8, §2.4, §4.5).
* duplicate client id: the newer connection wins, the older is dropped (§4.3).
* keep-alive clamped to 30-1200 s and enforced at 1.5x by the gateway (§4.3); the engine
  is told keep-alive 0 so it never second-guesses AWS's rule.
* PUBLISH / SUBSCRIBE: AWS's quotas and ``iot:Publish`` / ``iot:Subscribe``; QoS 2 is
  ignored without an ack (§4.2); a forbidden action closes the connection (§4.5).
* deliveries: ``iot:Receive``, ``#`` not matching its parent, retained messages only for
  exact-match subscriptions (§4.3); a delivery the client must not see is acknowledged to
  the engine by the pump so nothing is redelivered.
* MQTT 3.1 (``MQIsdp``) clients are carried across: their CONNECT is re-encoded as 3.1.1
  for the engine (§4.1; DESIGN.md, amqtt constraints).
* lifecycle messages on ``$aws/events/presence/...`` with AWS's disconnect reasons (§4.6).

The pump owns no socket: a :class:`ClientTransport` moves the bytes (raw TLS stream or
WebSocket frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from harness.auth.policy import PolicyDocument, evaluate
from harness.engine.base import EngineLink
from harness.errors import MalformedPacket
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
        """The next bytes from the client; ``b""`` when the client is gone."""
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


#: Decides whether a CONNECT may proceed; given the decoded CONNECT.
Authenticate = Callable[[Connect], Awaitable[ConnectAuth]]


@dataclass
class _State:
    client_id: str | None = None
    protocol_level: int = 4
    keepalive: rules.KeepAlive | None = None
    subscriptions: dict[str, int] = field(default_factory=dict)
    connected_at: float | None = None


class Session:
    """One MQTT connection through the gateway."""

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
        self.conn_id = conn_id
        self.transport = transport
        self._authenticate = authenticate
        self.websocket = websocket
        self.state = _State()
        self.principal: Principal | None = None
        self.session_id = str(uuid.uuid4())
        self.started = gateway.clock.elapsed()
        self._link: EngineLink | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = asyncio.Event()
        self.close_reason: DisconnectReason | None = None
        limits = gateway.limits
        self._rate = (
            rules.RateLimiter(limits.publishes_per_second, per_seconds=1.0)
            if limits.publishes_per_second
            else None
        )
        max_packet = (limits.max_payload + 65536 + 5) if limits.max_payload else None
        self._decoder = StreamDecoder(max_packet_size=max_packet)
        self._engine_decoder = StreamDecoder()

    # Public

    @property
    def client_id(self) -> str | None:
        return self.state.client_id

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def run(self) -> None:
        """Pump until the client or the gateway ends the connection."""
        try:
            while not self.closed:
                data = await self.transport.receive()
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
            self._record("mqtt.malformed", reason=exc.reason, explain=exc.message)
            await self.close(DisconnectReason.CLIENT_ERROR, f"malformed MQTT: {exc.message}")
            return
        for packet, raw in packets:
            if self.closed:
                return
            await self._from_client(packet, raw)

    async def close(self, reason: DisconnectReason, explain: str, *, abort: bool = False) -> None:
        """End the connection as AWS would: no MQTT goodbye on 3.1.1, just a close."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.close_reason = reason
        for timer in self._timers:
            timer.cancel()
        self._record("mqtt.close", reason=str(reason), explain=explain)
        if abort:
            self.transport.abort()
        else:
            with contextlib.suppress(ConnectionError, OSError):
                await self.transport.close()
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.close()
        if self._engine_task is not None and self._engine_task is not asyncio.current_task():
            self._engine_task.cancel()
        self.gateway.session_ended(self)
        if self.state.connected_at is not None and self.state.client_id is not None:
            client_initiated = reason == DisconnectReason.CLIENT_INITIATED_DISCONNECT
            await self.gateway.publish_presence(
                "disconnected",
                client_id=self.state.client_id,
                session_id=self.session_id,
                principal=self.principal.name if self.principal else "",
                disconnect_reason=reason,
                client_initiated=client_initiated,
            )

    # Client → engine

    async def _from_client(self, packet: Packet, raw: bytes) -> None:
        self._record("mqtt.in", **_describe(packet))
        if self._ttl_exceeded():
            await self.close(
                DisconnectReason.WEBSOCKET_TTL_EXPIRATION,
                "the WebSocket connection outlived its lifetime (aws-iot.md §4.4)",
            )
            return
        if isinstance(packet, Connect):
            if self.state.connected_at is not None or self.state.client_id is not None:
                # A second CONNECT is a protocol violation (MQTT 3.1.1 §3.1; aws-iot.md §4.6).
                await self.close(DisconnectReason.CLIENT_ERROR, "second CONNECT on a connection")
                return
            await self._on_connect(packet)
            return
        if self.state.connected_at is None:
            await self.close(DisconnectReason.CLIENT_ERROR, f"{packet_name(packet)} before CONNECT")
            return
        if self.state.keepalive is not None and rules.resets_keepalive(packet_name(packet)):
            self.state.keepalive.touch(self.gateway.clock.elapsed())
        if isinstance(packet, Publish):
            await self._on_publish(packet, raw)
        elif isinstance(packet, Subscribe):
            await self._on_subscribe(packet, raw)
        elif isinstance(packet, Unsubscribe):
            violation = rules.check_unsubscribe(packet.topics, self.gateway.limits)
            if violation is not None:
                self._record("rule.violation", reason=violation.reason, explain=violation.explain)
                await self.close(
                    violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
                )
                return
            for topic in packet.topics:
                self.state.subscriptions.pop(topic, None)
            self._to_engine(raw)
        elif isinstance(packet, Disconnect):
            self._to_engine(raw)
            await self.close(DisconnectReason.CLIENT_INITIATED_DISCONNECT, "client DISCONNECT")
        elif isinstance(packet, Pingreq | Puback):
            self._to_engine(raw)
        else:
            # PUBREC/PUBREL/PUBCOMP: AWS has no QoS 2 (aws-iot.md §4.1); CONNACK etc. are
            # server packets a client may not send.
            await self.close(
                DisconnectReason.CLIENT_ERROR, f"{packet_name(packet)} is not supported by AWS IoT"
            )

    async def _on_connect(self, connect: Connect) -> None:
        gw = self.gateway
        self.state.protocol_level = connect.protocol_level
        will = connect.will
        violation = rules.check_connect(
            client_id=connect.client_id,
            will_qos=will.qos if will else None,
            will_topic=will.topic if will else None,
            payload_size=len(will.payload) if will else 0,
            limits=gw.limits,
        )
        if violation is not None:
            self._record("rule.violation", reason=violation.reason, explain=violation.explain)
            await self.close(
                violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
            )
            return
        auth = await self._authenticate(connect)
        self._record(
            "auth.verdict",
            stage="connect",
            ok=auth.ok,
            reason=auth.reason,
            explain=auth.explain,
            client_id=connect.client_id,
        )
        if not auth.ok or auth.principal is None:
            # Custom-auth failures and missing credentials: close after CONNECT, no
            # CONNACK (aws-iot.md §2.4, §4.5).
            await self.close(DisconnectReason.AUTH_ERROR, auth.explain or auth.reason)
            return
        self.principal = auth.principal
        if not self._allowed("iot:Connect", gw.arn("client", connect.client_id), connect.client_id):
            await self.close(
                DisconnectReason.FORBIDDEN_ACCESS,
                f"policy does not allow iot:Connect for client id {connect.client_id!r}",
            )
            return
        throttled = gw.connect_throttle.check(connect.client_id, gw.clock.elapsed())
        if throttled is not None:
            # At most one CONNECT per second per client id (aws-iot.md §4.4).
            self._record("rule.violation", reason=throttled.reason, explain=throttled.explain)
            await self.close(DisconnectReason.THROTTLED, throttled.explain)
            return
        fault = gw.faults.take_connect_fault()
        if fault == "close-after-connect":
            self._record("fault.fired", fault=fault)
            await self.close(
                DisconnectReason.SERVER_INITIATED_DISCONNECT, "fault: close after CONNECT"
            )
            return
        await gw.take_over(connect.client_id, self)
        if self.closed:
            return
        self.state.client_id = connect.client_id
        keepalive = rules.clamp_keepalive(connect.keep_alive, gw.limits)
        self.state.keepalive = rules.KeepAlive(
            keepalive, factor=gw.limits.keepalive_factor, now=gw.clock.elapsed()
        )
        self._link = await gw.engine.connect(peer=self.transport.peer)
        # The engine speaks 3.1.1 only and never enforces keep-alive (the pump does). MQTT 3.1
        # allowed a password without a username; 3.1.1 does not, and the gateway has
        # already authenticated, so credentials are not passed on at all.
        engine_connect = dataclasses.replace(
            connect, protocol_level=4, keep_alive=0, username=None, password=None
        )
        self._link.write(encode(engine_connect))
        self._engine_task = asyncio.create_task(
            self._engine_loop(withhold=fault == "withhold-connack"), name=f"engine-{self.conn_id}"
        )
        if fault == "withhold-connack":
            self._record("fault.fired", fault=fault)
        if self.principal.disconnect_after is not None:
            self._call_later(
                self.principal.disconnect_after,
                DisconnectReason.CUSTOMAUTH_TTL_EXPIRATION,
                "custom authorizer's disconnectAfterInSeconds elapsed (aws-iot.md §2.3)",
            )
        self._schedule_keepalive_check()

    async def _on_publish(self, publish: Publish, raw: bytes) -> None:
        gw = self.gateway
        violation = rules.check_publish(
            topic=publish.topic,
            qos=publish.qos,
            payload_size=len(publish.payload),
            limits=gw.limits,
        )
        if violation is not None:
            self._record(
                "rule.violation",
                reason=violation.reason,
                explain=violation.explain,
                topic=publish.topic,
            )
            if violation.outcome == rules.Outcome.CLOSE:
                await self.close(
                    violation.disconnect_reason or DisconnectReason.CLIENT_ERROR, violation.explain
                )
            return  # IGNORE / DISCARD: silently dropped, no PUBACK (aws-iot.md §4.2)
        topic_arn = gw.arn("topic", publish.topic)
        if not self._allowed("iot:Publish", topic_arn, publish.topic) or (
            publish.retain and not self._allowed("iot:RetainPublish", topic_arn, publish.topic)
        ):
            await self.close(
                DisconnectReason.FORBIDDEN_ACCESS,
                f"policy does not allow iot:Publish to {publish.topic!r}",
            )
            return
        if self._rate is not None and not self._rate.allow(gw.clock.elapsed()):
            # Excess publishes are discarded (aws-iot.md §4.4).
            self._record(
                "rule.violation",
                reason="rate-exceeded",
                topic=publish.topic,
                explain="more than the per-connection publish rate",
            )
            return
        self._to_engine(raw)

    async def _on_subscribe(self, subscribe: Subscribe, raw: bytes) -> None:
        gw = self.gateway
        decision = rules.check_subscribe(
            filters=subscribe.topics,
            existing_count=len(self.state.subscriptions),
            limits=gw.limits,
            existing=set(self.state.subscriptions),
        )
        if isinstance(decision, rules.Violation):
            self._record("rule.violation", reason=decision.reason, explain=decision.explain)
            if decision.outcome == rules.Outcome.SUBACK_FAILURE:
                self._to_client(
                    encode(Suback(subscribe.packet_id, tuple(0x80 for _ in subscribe.topics)))
                )
            elif decision.outcome == rules.Outcome.CLOSE:
                await self.close(
                    decision.disconnect_reason or DisconnectReason.CLIENT_ERROR, decision.explain
                )
            return  # IGNORE: no SUBACK at all (QoS 2, aws-iot.md §4.2)
        for topic_filter, _qos in subscribe.topics:
            if not self._allowed(
                "iot:Subscribe", gw.arn("topicfilter", topic_filter), topic_filter
            ):
                # Unauthorized SUBSCRIBE: connection closed, no SUBACK (aws-iot.md §4.5).
                await self.close(
                    DisconnectReason.FORBIDDEN_ACCESS,
                    f"policy does not allow iot:Subscribe to {topic_filter!r}",
                )
                return
        granted = tuple((f, min(q, 1)) for f, q in subscribe.topics)
        for topic_filter, qos in granted:
            self.state.subscriptions[topic_filter] = qos
        if granted == subscribe.topics:
            self._to_engine(raw)
        else:
            self._to_engine(encode(Subscribe(subscribe.packet_id, granted)))

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
                for packet, raw in self._engine_decoder.feed(data):
                    await self._from_engine(packet, raw, withhold=withhold)
        except MalformedPacket as exc:
            await self.close(DisconnectReason.SERVER_ERROR, f"engine sent malformed MQTT: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must not hang the client
            await self.close(DisconnectReason.SERVER_ERROR, f"engine link failed: {exc!r}")

    async def _from_engine(self, packet: Packet, raw: bytes, *, withhold: bool) -> None:
        gw = self.gateway
        if isinstance(packet, Connack):
            if withhold:
                return
            self._record("mqtt.out", **_describe(packet))
            self._to_client(raw)
            if packet.return_code == 0 and self.state.connected_at is None:
                self.state.connected_at = gw.clock.elapsed()
                assert self.state.client_id is not None
                await gw.publish_presence(
                    "connected",
                    client_id=self.state.client_id,
                    session_id=self.session_id,
                    principal=self.principal.name if self.principal else "",
                    ip_address=self.transport.peer[0],
                )
            return
        if isinstance(packet, Publish) and not self._deliverable(packet):
            if packet.qos == 1 and packet.packet_id is not None and self._link is not None:
                self._link.write(encode(Puback(packet.packet_id)))
            return
        if isinstance(packet, Publish) and self._rate is not None:
            # The publish quota counts inbound plus outbound (aws-iot.md §4.4); an outbound
            # excess is not discarded here (the engine would redeliver QoS 1), only counted.
            self._rate.allow(gw.clock.elapsed())
        if self._ttl_exceeded():
            await self.close(
                DisconnectReason.WEBSOCKET_TTL_EXPIRATION,
                "the WebSocket connection outlived its lifetime (aws-iot.md §4.4)",
            )
            return
        self._record("mqtt.out", **_describe(packet))
        self._to_client(raw)

    def _deliverable(self, publish: Publish) -> bool:
        """AWS's delivery rules (aws-iot.md §4.3, §5)."""
        matching = [f for f in self.state.subscriptions if rules.topic_matches(f, publish.topic)]
        if publish.retain:
            # Retained messages only reach exact-match subscriptions.
            matching = [f for f in matching if rules.retained_delivered(f, publish.topic)]
        if not matching:
            self._record(
                "mqtt.dropped",
                topic=publish.topic,
                reason="no-aws-match",
                explain="no subscription matches under AWS's rules (aws-iot.md §4.3)",
            )
            return False
        return self._allowed("iot:Receive", self.gateway.arn("topic", publish.topic), publish.topic)

    # Plumbing

    def _allowed(self, action: str, resource: str, target: str) -> bool:
        principal = self.principal
        if principal is None:
            return False
        variables = {"iot:ClientId": self.state.client_id or ""}
        if principal.thing_name:
            variables["iot:Connection.Thing.ThingName"] = principal.thing_name
            variables["iot:Connection.Thing.IsAttached"] = "true"
        decision = evaluate(
            principal.policies, action=action, resource=resource, variables=variables
        )
        if not decision.allowed:
            self._record(
                "policy.verdict",
                ok=False,
                action=action,
                resource=resource,
                reason=str(decision.reason),
                target=target,
            )
        return decision.allowed

    def _to_engine(self, data: bytes) -> None:
        if self._link is not None:
            self._link.write(data)

    def _to_client(self, data: bytes) -> None:
        if not self.closed:
            self.transport.send(data)

    def _ttl_exceeded(self) -> bool:
        lifetime = self.gateway.limits.websocket_lifetime
        return (
            self.websocket
            and lifetime is not None
            and self.gateway.clock.elapsed() - self.started >= lifetime
        )

    def _call_later(self, delay: float, reason: DisconnectReason, explain: str) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            if not self.closed:
                self.gateway.spawn(self.close(reason, explain))

        self._timers.append(loop.call_later(delay, fire))

    def _schedule_keepalive_check(self) -> None:
        keepalive = self.state.keepalive
        if keepalive is None or self.closed:
            return
        if math.isinf(keepalive.deadline):
            return
        loop = asyncio.get_running_loop()
        delay = max(keepalive.deadline - self.gateway.clock.elapsed(), 0.0)

        def check() -> None:
            if self.closed or self.state.keepalive is None:
                return
            if self.state.keepalive.expired(self.gateway.clock.elapsed()):
                self.gateway.spawn(
                    self.close(
                        DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT,
                        "no packet within 1.5x the keep-alive (aws-iot.md §4.3)",
                    )
                )
            else:
                self._schedule_keepalive_check()

        self._timers.append(loop.call_later(delay + 0.001, check))

    def _record(self, kind: str, **fields: object) -> None:
        if self.state.client_id is not None and "client_id" not in fields:
            fields["client_id"] = self.state.client_id
        self.gateway.recorder.record(kind, conn=self.conn_id, **fields)


def _describe(packet: Packet) -> dict[str, object]:
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
