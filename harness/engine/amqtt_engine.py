"""amqtt embedded in the gateway's process (DESIGN.md: "Known constraints of amqtt 0.12.1").

amqtt's ``external`` listener type lets connections accepted elsewhere be handed to the
broker with ``Broker.external_connected(reader, writer, listener_name)``. The gateway
gives it a pair of in-memory adapters: no socket, no second TLS, no extra copy of the
MQTT stream beyond what the pump already holds.

What amqtt 0.12.1 does differently from AWS (and from MQTT 3.1.1), and what is done about it:

* Messages queued for an offline persistent session are sent with RETAIN set, which the
  pump would take for retained messages and keep from wildcard subscriptions (aws-iot.md
  §4.3). Fixed here: :class:`_Broker` sends them with RETAIN clear.
* A delivery goes out at the subscription's QoS, not the lower of publish and
  subscription QoS: a QoS 0 publish reaches a QoS 1 subscriber as QoS 1 (its
  ``_run_broadcast``). Left as is: clients see an extra PUBACK round-trip, nothing AWS
  refuses; the external engine (mosquitto) downgrades correctly.
* A QoS 1 delivery still unacknowledged when the connection drops is discarded, not kept
  for the persistent session (and one unacknowledged for 5 s is discarded too). Messages
  queued while the client is away are kept and delivered on resume. Left as is; use the
  external engine where in-flight redelivery matters.
* A connection that ends right after its CONNECT hangs amqtt's session for good (a race
  in its handler start-up), so closing the link would wait for a timeout and the Will would
  never be sent. Fixed here (:meth:`_Broker._client_message_loop`).
* A client's DISCONNECT is handled in a task, but the end of input at once: a link closed
  right after DISCONNECT made the close abnormal (the Will published, a QoS 0 PUBLISH just
  before it lost). Fixed here: :meth:`_AmqttLink.close` lets amqtt end the session first.
* On every CONNECT it sends the new client the retained messages matching *any* client's
  subscriptions; the pump drops those the client has no subscription for.
* A client publish to a ``$`` topic closes the connection (its MQTT-4.7.2-1 check), so the
  reserved topics AWS lets devices publish to (shadow, jobs) cannot be routed by amqtt.
* Every session builds its own ``transitions.Machine`` for three states (new, connected,
  disconnected): a tenth of the CPU of a connection and kilobytes per session. Sessions
  the broker creates use :class:`_SessionStates` instead, the same states and triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.mqtt.protocol import broker_handler
from amqtt.session import Session
from transitions import MachineError

_LISTENER = "default"


class _PipeReader(ReaderAdapter):  # type: ignore[misc]
    """The broker's side of the client→broker pipe."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready = asyncio.Event()
        self._eof = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._ready.set()

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    async def read(self, n: int = -1) -> bytes:
        while not self._buffer and not self._eof:
            self._ready.clear()
            await self._ready.wait()
        if n < 0 or n > len(self._buffer):
            n = len(self._buffer)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


class _PipeWriter(WriterAdapter):  # type: ignore[misc]
    """The broker's side of the broker→client pipe."""

    def __init__(self, queue: asyncio.Queue[bytes], peer: tuple[str, int]) -> None:
        self._queue = queue
        self._peer = peer
        self._closed = False

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._queue.put_nowait(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def get_peer_info(self) -> tuple[str, int]:
        return self._peer

    def get_ssl_info(self) -> None:
        return None

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(b"")


#: How long :meth:`_AmqttLink.close` waits for amqtt to end a session once the link is
#: closed (seconds); a session still running then is cancelled.
_CLOSE_TIMEOUT = 5.0
#: After a client DISCONNECT, how long amqtt gets to end the session on its own before the
#: link feeds it EOF anyway (a fraction of :data:`_CLOSE_TIMEOUT`; amqtt needs a few
#: event-loop turns, so this bounds a stuck engine, not a normal close).
_DISCONNECT_GRACE = _CLOSE_TIMEOUT / 5

#: The first byte of a DISCONNECT packet (MQTT 3.1.1 §3.14.1).
_DISCONNECT_BYTE = 0xE0


class _AmqttLink:
    """One client's session inside amqtt, fed through in-memory pipes."""

    def __init__(self, broker: Broker, peer: tuple[str, int]) -> None:
        self._reader = _PipeReader()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer = _PipeWriter(self._queue, peer)
        self._eof = False
        self._disconnect_sent = False
        self.task = asyncio.create_task(
            broker.external_connected(self._reader, self._writer, _LISTENER),
            name=f"amqtt-session-{peer[1]}",
        )
        self.task.add_done_callback(lambda _t: self._queue.put_nowait(b""))

    def write(self, data: bytes) -> None:
        # The pump writes each packet on its own (EngineLink.write), so a write that
        # starts with DISCONNECT's byte is the client's DISCONNECT.
        if data[:1] == bytes((_DISCONNECT_BYTE,)):
            self._disconnect_sent = True
        self._reader.feed(data)

    async def read(self) -> bytes:
        """What amqtt wrote since the last read, in one piece (amqtt writes a packet in
        several pieces; the pump handles a read at a time)."""
        if self._eof:
            return b""
        data = await self._queue.get()
        if not data:
            self._eof = True
            return b""
        if self._queue.empty():
            return data
        pieces = [data]
        while not self._queue.empty():
            piece = self._queue.get_nowait()
            if not piece:  # the end: returned by the next read
                self._eof = True
                break
            pieces.append(piece)
        return b"".join(pieces)

    async def close(self) -> None:
        """End the session: EOF, as a dropped connection would; after a DISCONNECT, only
        once amqtt has ended the session itself.

        amqtt handles DISCONNECT in a task of its own but reacts to EOF at once, cancelling
        the packet tasks still running and treating the close as abnormal: the Will would be
        published and a QoS 0 PUBLISH sent just before DISCONNECT lost. A clean DISCONNECT
        never publishes the Will (MQTT 3.1.1 §3.14; aws-iot.md §4.6), so amqtt gets
        :data:`_DISCONNECT_GRACE` to finish first.
        """
        if self._disconnect_sent:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.task), timeout=_DISCONNECT_GRACE)
        self._reader.feed_eof()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self.task), timeout=_CLOSE_TIMEOUT)
        if not self.task.done():
            self.task.cancel()


class _SessionStates:
    """amqtt's session state machine, as :meth:`amqtt.session.Session._init_states` builds
    it with ``transitions``, in plain Python: ``connect`` from new or disconnected,
    ``disconnect`` from any state, each entering its state (and running the session's
    ``on_enter`` hook, also for disconnected → disconnected, as ``transitions`` does);
    any other trigger raises ``MachineError`` as the machine would."""

    def __init__(self, session: Session) -> None:
        self.state = "new"
        self._session = session

    def connect(self) -> bool:
        if self.state not in ("new", "disconnected"):
            raise MachineError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self._session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"
        self._session._on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"


class _LightSession(Session):  # type: ignore[misc]
    """amqtt's broker-side session with :class:`_SessionStates` (module docstring)."""

    def _init_states(self) -> None:
        self.transitions = _SessionStates(self)


class _Broker(Broker):  # type: ignore[misc]
    """amqtt's broker with two of its defects mended (module docstring)."""

    async def _client_message_loop(self, client_session: Any, handler: Any) -> None:
        # amqtt 0.12.1 race: when the connection ends right after CONNECT, the handler's
        # reader sees EOF, stops and resolves the disconnect waiter *before*
        # BrokerProtocolHandler.start() installs a fresh one, which nothing ever resolves:
        # the session hangs (no Will, never disconnected). A reader that already stopped
        # means the connection is gone, so resolve the fresh waiter as the reader would.
        waiter = getattr(handler, "_disconnect_waiter", None)
        stopped = getattr(handler, "_reader_stopped", None)
        if stopped is not None and stopped.is_set() and waiter is not None and not waiter.done():
            waiter.set_result(None)
        await super()._client_message_loop(client_session, handler)

    async def _publish_session_retained_messages(self, session: Any) -> None:
        # Messages queued for an offline session: amqtt's version sends them with
        # retain=True (module docstring); otherwise identical.
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)
                )
            )
        if tasks:
            await asyncio.wait(tasks)


class AmqttEngine:
    """amqtt's broker, in process, reachable only through the gateway."""

    name = "amqtt"

    def __init__(self) -> None:
        self._broker: _Broker | None = None
        self._links: set[_AmqttLink] = set()

    async def start(self) -> None:
        config: dict[str, Any] = {
            "listeners": {_LISTENER: {"type": "external"}},
            # The gateway authenticates; amqtt only routes. The gateway names every
            # session (harness.gateway.session.ENGINE_USERNAME): amqtt keeps cleanSession-0
            # sessions and queues QoS 1 messages for them only when they are not anonymous.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}
            },
        }
        # amqtt logs every connection at INFO; the gateway's event timeline says it better.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        # The broker's sessions are made in broker_handler (module docstring); amqtt's
        # client keeps its own.
        broker_handler.Session = _LightSession
        self._broker = _Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        for link in list(self._links):
            await link.close()
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()
            self._broker = None

    async def publish_system(self, topic: str, payload: bytes) -> None:
        if self._broker is not None:
            await self._broker.internal_message_broadcast(topic, payload, 0)

    async def connect(self, *, peer: tuple[str, int]) -> _AmqttLink:
        if self._broker is None:
            raise RuntimeError("engine not started")
        link = _AmqttLink(self._broker, peer)
        self._links.add(link)
        link.task.add_done_callback(lambda _t: self._links.discard(link))
        return link
