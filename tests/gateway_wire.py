"""Byte-level clients for the gateway tests: raw TLS, hand-made upgrades and frames.

paho (``tests.paho_client``) shows what a real client reports; these helpers show what
was on the wire: the exact 403 bytes, the 101 in one TLS record, a WebSocket frame a real
client would never send. Every wait is bounded by ``tests.timing.TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import struct
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.events import Recorder
from harness.mqtt.codec import Publish, Subscribe, encode
from harness.world import World
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT


@dataclass(frozen=True)
class Reply:
    """An HTTP response as received: status line, headers in order, body."""

    raw: bytes
    status_line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case)."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def names(self) -> list[str]:
        return [key for key, _ in self.headers]


def parse_head(head: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    lines = head.decode("ascii").split("\r\n")
    headers = tuple(
        (name, value) for name, _, value in (line.partition(": ") for line in lines[1:] if line)
    )
    return lines[0], headers


def upgrade_request(
    target: str,
    *,
    host: str,
    headers: Sequence[tuple[str, str]] = (),
    subprotocol: str | None = "mqtt",
) -> bytes:
    """A WebSocket upgrade as awscrt sends it (aws-iot.md §1.1), plus ``headers``."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def ws_frame(
    payload: bytes,
    *,
    opcode: int = 0x2,
    fin: bool = True,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame; ``length`` overrides the announced payload length."""
    announced = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    if announced < 126:
        head += bytes([mask_bit | announced])
    elif announced < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", announced)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", announced)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """``(opcode, payload, rest)`` of the first complete unmasked frame, or None."""
    if len(data) < 2:
        return None
    opcode, length, pos = data[0] & 0x0F, data[1] & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return None
        length, pos = struct.unpack("!H", data[2:4])[0], 4
    elif length == 127:
        if len(data) < 10:
            return None
        length, pos = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < pos + length:
        return None
    return opcode, data[pos : pos + length], data[pos + length :]


class RawClient:
    """One TLS connection to the gateway, driven byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = b""

    @classmethod
    async def connect(
        cls,
        world: World,
        *,
        port: int | None = None,
        context: ssl.SSLContext | None = None,
        alpn: Sequence[str] | None = None,
        server_hostname: str | None = "",
    ) -> RawClient:
        """TLS to the WSS port (or ``port``); SNI is the endpoint unless told otherwise."""
        if context is None:
            context = ssl.create_default_context(cafile=str(world.pki.ca_file))
            if alpn:
                context.set_alpn_protocols(list(alpn))
        name = world.gateway.endpoint if server_hostname == "" else server_hostname
        if name is None:
            context.check_hostname = False
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port or world.gateway.wss_port,
                ssl=context,
                server_hostname=name,
            ),
            TIMEOUT,
        )
        return cls(reader, writer)

    @classmethod
    async def plain(cls, world: World, *, port: int | None = None) -> RawClient:
        """TCP without TLS (for garbage before the handshake)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port or world.gateway.wss_port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_reply(self) -> Reply:
        """An HTTP response: its head, then ``content-length`` bytes of body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, headers = parse_head(head[:-4])
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return Reply(head + body, status_line, headers, body)

    async def upgrade(self, target: str, **options: Any) -> Reply:
        host = options.pop("host")
        self.send(upgrade_request(target, host=host, **options))
        return await self.read_reply()

    async def read_frame(self) -> tuple[int, bytes]:
        """The next WebSocket frame from the gateway: ``(opcode, payload)``."""
        while True:
            parsed = parse_frame(self._buffer)
            if parsed is not None:
                opcode, payload, self._buffer = parsed
                return opcode, payload
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                raise EOFError("the gateway closed the connection")
            self._buffer += data

    async def read_to_end(self) -> bytes:
        """Everything until the gateway closes (EOF or reset); fails after TIMEOUT."""
        chunks = [self._buffer]
        self._buffer = b""
        try:
            while data := await asyncio.wait_for(self.reader.read(65536), TIMEOUT):
                chunks.append(data)
        except (ConnectionError, ssl.SSLError):
            pass
        return b"".join(chunks)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def presigned_target(world: World, credential: Credential, **options: Any) -> str:
    """``/mqtt?<query>`` presigned for the world's endpoint at the world's time (§1)."""
    options.setdefault("now", world.clock.now())
    url = sigv4.presign_url(
        host=options.pop("host", world.gateway.endpoint),
        credential=credential,
        region=world.config.gateway.region,
        **options,
    )
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def custom_auth_query(name: str, signature: str, token: str, *, token_key: str = "token") -> str:  # noqa: S107
    """The query-string form of custom-auth credentials (JS v1 ``customAuthQueryString``)."""
    return (
        urllib.parse.urlencode(
            {"x-amz-customauthorizer-name": name, "x-amz-customauthorizer-signature": signature},
            quote_via=urllib.parse.quote,
        )
        + f"&{token_key}={urllib.parse.quote(token, safe='')}"
    )


def assert_no_secrets(recorder: Recorder, secrets: Iterable[str | None]) -> None:
    """No secret, raw or percent-encoded, appears in any event (DESIGN.md, Events JSONL)."""
    text = "\n".join(json.dumps(event.to_json(), default=str) for event in recorder)
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, urllib.parse.quote(secret, safe=""), sigv4.uri_encode(secret)}:
            assert form not in text, "a secret reached the event timeline"


class Watcher:
    """A well-behaved paho client that proves the gateway still serves others."""

    def __init__(self, client: PahoClient, topic: str) -> None:
        self.client = client
        self.topic = topic

    @classmethod
    async def start(cls, world: World, name: str = "watcher") -> Watcher:
        credential = world.credentials.add_static(
            principal="watcher", policies=(world.default_policy,)
        )
        client = PahoClient(
            name,
            websocket=True,
            ca_file=str(world.pki.ca_file),
            path=presigned_target(world, credential),
            headers={"Host": world.gateway.endpoint},
        )
        await client.connect("127.0.0.1", world.gateway.wss_port)
        assert (await client.next("connect", "error")).rc == 0
        topic = f"watch/{name}"
        client.client.subscribe(f"{topic}/#", qos=1)
        assert (await client.next("subscribe")).rc == [1]
        return cls(client, topic)

    async def check(self) -> None:
        """Publish a fresh message and receive it back: the round trip works."""
        payload = uuid.uuid4().hex.encode("ascii")
        self.client.client.publish(f"{self.topic}/ping", payload, qos=1)
        while True:
            message = await self.client.next("message", "disconnect")
            assert message.what == "message", "the watcher lost its connection"
            if message.payload == payload:
                return

    async def close(self) -> None:
        await self.client.close()


def mqtt_subscribe(packet_id: int, topic: str) -> bytes:
    return encode(Subscribe(packet_id, ((topic, 1),)))


def mqtt_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    return encode(Publish(topic, payload, qos=1, packet_id=packet_id))
