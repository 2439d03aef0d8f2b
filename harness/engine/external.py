"""An external MQTT 3.1.1 broker reached over TCP, e.g. Debian's mosquitto.

Each client accepted by the gateway gets its own TCP connection to the broker; the
gateway stays stateless, so several gateway processes can front one broker cluster
(DESIGN.md: "nothing in the gateway may assume it is the only one").
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import uuid

from harness.engine.base import Engine
from harness.errors import ConfigError
from harness.mqtt.codec import Connect, Publish, encode


class _TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def read(self) -> bytes:
        try:
            return await self._reader.read(65536)
        except (ConnectionError, OSError):
            return b""

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class ExternalEngine:
    """A broker at ``mqtt://host:port`` that the gateway connects each client to."""

    name = "external"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: The gateway's own client (lifecycle events): unique, so that several gateway
        #: processes in front of one broker do not take each other's connection over.
        self.system_client_id = f"iot-harness-gateway-{uuid.uuid4().hex[:12]}"
        self._system: _TcpLink | None = None
        self._system_reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Fail early and clearly if nothing listens there.
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"external MQTT engine mqtt://{self.host}:{self.port} is not reachable: {exc}"
            ) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def stop(self) -> None:
        if self._system_reader is not None:
            self._system_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._system_reader
        if self._system is not None:
            await self._system.close()
            self._system = None

    async def publish_system(self, topic: str, payload: bytes) -> None:
        """Through the gateway's own client connection (whether the broker lets a client
        publish to ``$aws/...`` is the broker's choice; mosquitto does).

        The connection is opened on first use and again after the broker dropped it (a
        broker restart); an unreachable broker raises ``OSError``.
        """
        if self._system is None or self._system_reader is None or self._system_reader.done():
            if self._system is not None:
                await self._system.close()
                self._system = None
            link = await self.connect(peer=(self.host, 0))
            link.write(encode(Connect(client_id=self.system_client_id, keep_alive=0)))

            async def drain() -> None:
                while await link.read():
                    pass

            self._system = link
            self._system_reader = asyncio.create_task(drain(), name="external-engine-system")
        self._system.write(encode(Publish(topic=topic, payload=payload, qos=0)))

    async def connect(self, *, peer: tuple[str, int]) -> _TcpLink:
        """A TCP connection to the broker; ``OSError`` if it cannot be reached."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _TcpLink(reader, writer)


def engine_from_url(url: str | None) -> Engine:
    """``None`` or ``"amqtt"`` → the embedded engine; ``mqtt://host:port`` → external.

    Anything else is harness misuse: :class:`~harness.errors.ConfigError` naming the URL
    (a scheme other than ``mqtt``, no host, a port that is not a number or out of range,
    a path, query, fragment or credentials, which a plain TCP engine cannot honour).
    """
    from harness.engine.amqtt_engine import AmqttEngine

    if url is None or url == "amqtt":
        return AmqttEngine()
    # A URL with user information may hold a password: never echo it.
    shown = repr(url) if "@" not in url else "a URL with credentials"
    problem = f"engine must be 'amqtt' or mqtt://host:port, not {shown}"
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"{problem} ({exc})") from None
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ConfigError(problem)
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ConfigError(f"{problem} (no path, query or fragment)")
    if "@" in parsed.netloc:
        raise ConfigError(f"{problem} (the external engine takes no credentials)")
    return ExternalEngine(parsed.hostname, port or 1883)
