"""Client transports for the session pump: a raw TLS stream, or WebSocket binary frames.

The WebSocket side uses ``websockets``' sans-I/O protocol (the version amqtt pins) for
frame parsing, masking rules, ping/pong and close handshakes; the gateway only moves
its bytes. A client that breaks the WebSocket protocol (unmasked frames, bad opcodes,
oversize frames) is closed as ``websockets`` decides, and the pump sees the end of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

_READ_SIZE = 65536


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
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.peer = _peer(writer)
        self._pending: list[bytes] = []

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk and not self.writer.is_closing():
                self.writer.write(chunk)
            elif not chunk and not self.writer.is_closing():
                # websockets asks for the TCP half-close after its close handshake.
                self.writer.close()

    async def receive(self) -> bytes:
        while not self._pending:
            if self.protocol.state is State.CLOSED or self.writer.is_closing():
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
            self._flush()
            if not data and not self._pending:
                return b""
        return self._pending.pop(0)

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
