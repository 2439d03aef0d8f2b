"""Client transports for the session pump: a raw TLS stream, or WebSocket binary frames.

The WebSocket side uses ``websockets``' sans-I/O protocol (the version amqtt pins) for
frame parsing, masking rules, ping/pong and close handshakes; the gateway only moves
its bytes. A client that breaks the WebSocket protocol (unmasked frames, bad opcodes,
oversize frames) is closed as ``websockets`` decides (close code 1002 or 1009), the
observer hears why (a ``ws.error`` event), and the pump's next read raises
:class:`~harness.errors.ProtocolError` so that it ends the session as the client's error.
A TCP close without a close frame (even mid-frame) is the connection going away, not a
protocol error: the pump just sees the end of input.

Also here: :class:`AlertingSSLObject`, which makes a failed TLS handshake end with the
TLS alert OpenSSL chose, as a real TLS server's does; asyncio alone drops the connection
without sending it, so a client would see a reset where AWS's clients see, say,
"tlsv1 alert unknown ca" (aws-iot.md §3).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Any

from websockets.exceptions import PayloadTooBig
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from harness.errors import ProtocolError

_READ_SIZE = 65536

#: Hears WebSocket happenings the timeline should show: ``(kind, fields)``.
WebSocketObserver = Callable[[str, dict[str, object]], None]

# Where a failing handshake's alert goes: the raw TCP transport's ``write``, set by
# :func:`handshake_alerts_to` around ``start_tls`` (which creates the SSL object
# synchronously, so the context variable is the connection's own).
_ALERT_SINK: contextvars.ContextVar[Callable[[bytes], object] | None] = contextvars.ContextVar(
    "iot_harness_alert_sink", default=None
)


class AlertingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that sends its fatal handshake alert before asyncio drops the socket.

    asyncio's SSL protocol reacts to a handshake error by closing the TCP transport at once,
    leaving the alert OpenSSL wrote (``unknown_ca``, ``protocol_version``,
    ``unrecognized_name``, ``certificate_required``) unsent in the outgoing buffer. This
    class hands those bytes to the connection's sink first. Install it with
    ``context.sslobject_class = AlertingSSLObject`` (a documented hook) and wrap
    ``start_tls`` in :func:`handshake_alerts_to`. ``_create`` is CPython's private
    constructor (same signature 3.7-3.13); if it ever changes, the only loss is the alert.
    """

    _alert_sink: Callable[[bytes], object] | None = None
    _alert_bio: ssl.MemoryBIO | None = None

    @classmethod
    def _create(  # type: ignore[no-untyped-def]
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ):
        created = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        created._alert_bio = outgoing
        created._alert_sink = _ALERT_SINK.get()
        return created

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError:
            bio, sink = self._alert_bio, self._alert_sink
            if bio is not None and sink is not None and bio.pending:
                with contextlib.suppress(Exception):
                    sink(bio.read())
            raise


@contextlib.contextmanager
def handshake_alerts_to(writer: asyncio.StreamWriter) -> Iterator[None]:
    """Send the alert of a handshake that fails inside this block to ``writer``'s socket."""
    token = _ALERT_SINK.set(writer.transport.write)
    try:
        yield
    finally:
        _ALERT_SINK.reset(token)


def _peer(writer: asyncio.StreamWriter) -> tuple[str, int]:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return ("unknown", 0)


def abort_writer(writer: asyncio.StreamWriter) -> None:
    """Reset the TCP connection (SO_LINGER 0), the way a crashed peer or a fault would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class StreamTransport:
    """MQTT straight over TLS (mTLS on 8883 / ALPN ``x-amzn-mqtt-ca``, custom auth on ``mqtt``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = _peer(writer)

    async def receive(self) -> bytes:
        try:
            return await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def abort(self) -> None:
        abort_writer(self.writer)


class WebSocketTransport:
    """MQTT in binary WebSocket messages over an upgraded connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ServerProtocol,
        *,
        observer: WebSocketObserver | None = None,
    ) -> None:
        if protocol.state is not State.OPEN:
            raise ValueError(f"the WebSocket must be OPEN, not {protocol.state.name}")
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.peer = _peer(writer)
        self._observer = observer
        self._pending: list[bytes] = []
        self._reported_error = False

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk and not self.writer.is_closing():
                self.writer.write(chunk)
            elif not chunk and not self.writer.is_closing():
                # websockets asks for the TCP half-close after its close handshake.
                self.writer.close()

    async def receive(self) -> bytes:
        """The next MQTT bytes; ``b""`` once the connection ended. Raises
        :class:`~harness.errors.ProtocolError` (after any bytes that came before the fault)
        once the client broke the WebSocket protocol."""
        while not self._pending:
            if self.protocol.state is State.CLOSED or self.writer.is_closing():
                self._raise_client_error()
                return b""
            try:
                data = await self.reader.read(_READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode in (
                    Opcode.BINARY,
                    Opcode.CONT,
                    Opcode.TEXT,
                ):
                    self._pending.append(bytes(event.data))
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    self._observe_close(event)
            self._observe_error()
            self._flush()
            if not self._pending:
                self._raise_client_error()
            if not data and not self._pending:
                return b""
        return self._pending.pop(0)

    def _client_error(self) -> tuple[str, Exception] | None:
        """Why ``websockets`` failed the connection, if the client broke the protocol:
        ``(reason, exception)``; ``None`` for no failure or an end of input (a lost
        connection, even mid-frame, is not a protocol error)."""
        exc = self.protocol.parser_exc
        if exc is None or isinstance(exc, EOFError):
            return None
        return ("message-too-big" if isinstance(exc, PayloadTooBig) else "protocol-error"), exc

    def _raise_client_error(self) -> None:
        failure = self._client_error()
        if failure is not None:
            reason, exc = failure
            raise ProtocolError(reason, f"the client broke the WebSocket protocol: {exc}")

    def _observe_close(self, frame: Frame) -> None:
        if self._observer is None:
            return
        try:
            close = Close.parse(bytes(frame.data))
        except Exception:  # websockets reports the bad close frame as a parser error
            return
        self._observer("ws.close", {"by": "client", "code": close.code, "why": close.reason})

    def _observe_error(self) -> None:
        """Say once why ``websockets`` failed the connection (1002 protocol error, 1009 size)."""
        failure = self._client_error()
        if failure is None or self._reported_error or self._observer is None:
            return
        self._reported_error = True
        reason, exc = failure
        sent = self.protocol.close_sent
        self._observer(
            "ws.error",
            {
                "reason": reason,
                "close_code": sent.code if sent is not None else None,
                "explain": f"the client broke the WebSocket protocol: {exc}",
            },
        )

    def send(self, data: bytes) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_binary(data)
            self._flush()

    async def close(self) -> None:
        # AWS IoT closes an MQTT-over-WSS connection without an MQTT goodbye; a clean
        # WebSocket close frame lets clients tell the close from a network failure.
        if self.protocol.state is State.OPEN:
            with contextlib.suppress(Exception):
                self.protocol.send_close(1000)
                self._flush()
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def abort(self) -> None:
        abort_writer(self.writer)
