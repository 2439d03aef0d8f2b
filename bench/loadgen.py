"""An asyncio MQTT load generator that signs like AWS IoT clients (issue [bench], "Load generator").

No existing MQTT load tool signs SigV4 URLs or custom-authorizer tokens, so this one speaks
the wire itself: TCP or TLS, an optional WebSocket upgrade (hand-made, as awscrt sends it,
aws-iot.md §1.1) with frames masked by ``websockets``' C helper, and MQTT 3.1.1 with
:mod:`harness.mqtt.codec`. A :class:`Target` says how to reach a server:

* ``tcp`` / ``ws`` / ``wss``: a plain broker (amqtt, mosquitto), no authentication;
* ``wss-sigv4``: a SigV4-presigned ``/mqtt`` upgrade (aws-iot.md §1), signed per connection;
* ``wss-custom``: custom-authorizer token and signature headers (aws-iot.md §2.1), a few
  tokens signed once per process (RSA signing costs a millisecond; clients cache tokens);
* ``mtls``: MQTT over TLS with a device certificate (aws-iot.md §3).

The measurements (:func:`connect_rate`, :func:`message_run`, :func:`hold`) are bounded in
count and time, run on one event loop, and :func:`in_processes` spreads the first two over
several processes (``spawn``) and merges their results. Latency comes from a
``CLOCK_MONOTONIC`` timestamp in each payload, which is system-wide on Linux, so a
publisher and a subscriber in different processes still agree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import random
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Literal

from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.errors import MalformedPacket
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Publish,
    StreamDecoder,
    Suback,
    Subscribe,
    encode,
)
from harness.pki import TokenSigningKey

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on CPython

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


Kind = Literal["tcp", "ws", "wss", "wss-sigv4", "wss-custom", "mtls"]
_WEBSOCKET_KINDS = frozenset({"ws", "wss", "wss-sigv4", "wss-custom"})
_TLS_KINDS = frozenset({"wss", "wss-sigv4", "wss-custom", "mtls"})
#: The payload header: send time (monotonic ns), stream number, sequence number.
_STAMP = struct.Struct("!QII")


class LoadError(Exception):
    """A connection attempt that did not end in CONNACK 0; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Target:
    """How to reach one server under test. Plain values only: it crosses process bounds."""

    name: str
    kind: Kind
    port: int
    host: str = "127.0.0.1"
    #: SNI and the ``Host`` header (the endpoint the server pretends to be).
    server_name: str | None = None
    ca_file: str | None = None
    path: str = "/mqtt"
    region: str = "us-east-1"
    #: SigV4 keys as (access key id, secret access key); secrets stay out of ``repr``.
    credentials: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    authorizer: str | None = None
    token_key: str = "token"  # noqa: S105 - the name of the token header
    authorizer_key_file: str | None = None
    #: Device certificates as (certificate file, key file), used round-robin.
    client_certs: tuple[tuple[str, str], ...] = ()

    @property
    def websocket(self) -> bool:
        return self.kind in _WEBSOCKET_KINDS

    @property
    def tls(self) -> bool:
        return self.kind in _TLS_KINDS


# Wire helpers -----------------------------------------------------------------------------


def ws_frame(payload: bytes, *, opcode: int = 0x2) -> bytes:
    """One masked client frame (RFC 6455 §5.2), FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + _apply_mask(payload, mask)


def _parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete unmasked server frames at the front of ``buf`` (consumed), in order."""
    out: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                break
            length, pos = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                break
            length, pos = struct.unpack_from("!Q", buf, 2)[0], 10
        if buf[1] & 0x80:  # a masked server frame is a protocol error; read it anyway
            pos += 4
        if len(buf) < pos + length:
            break
        out.append((opcode, bytes(buf[pos : pos + length])))
        del buf[: pos + length]
    return out


def upgrade_request(target: str, *, host: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A WebSocket upgrade for MQTT as awscrt sends it (aws-iot.md §1.1)."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: mqtt",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def stamp(stream: int, seq: int, size: int) -> bytes:
    """A payload of ``size`` bytes (at least the header) carrying its send time."""
    head = _STAMP.pack(time.monotonic_ns(), stream, seq)
    return head + b"x" * max(size - len(head), 0)


def read_stamp(payload: bytes) -> tuple[int, int, int] | None:
    """(send time ns, stream, seq) from a :func:`stamp` payload, or None."""
    if len(payload) < _STAMP.size:
        return None
    sent, stream, seq = _STAMP.unpack_from(payload)
    return sent, stream, seq


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` (0-1) quantile of already sorted values, nearest rank; None if empty."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


# One connection ---------------------------------------------------------------------------


class Connection:
    """One MQTT client connection: a reader task dispatching what the server sends."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, websocket: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.websocket = websocket
        self.on_publish: Callable[[Publish], None] | None = None
        self.on_puback: Callable[[int], None] | None = None
        self._decoder = StreamDecoder()
        self._frames = bytearray()
        self._connack: asyncio.Future[Connack] = asyncio.get_running_loop().create_future()
        self._subacks: dict[int, asyncio.Future[Suback]] = {}
        self._ids = itertools.cycle(range(1, 65536))
        self._task: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())

    @property
    def closing(self) -> bool:
        return self.ended.is_set() or self.writer.is_closing()

    def send_raw(self, data: bytes) -> None:
        """MQTT bytes to the server (one WebSocket frame on a WebSocket connection)."""
        if self.writer.is_closing():
            return
        self.writer.write(ws_frame(data) if self.websocket else data)

    def next_id(self) -> int:
        return next(self._ids)

    async def connect(
        self, client_id: str, *, keep_alive: int = 1200, clean_session: bool = True
    ) -> Connack:
        self.send_raw(
            encode(Connect(client_id=client_id, keep_alive=keep_alive, clean_session=clean_session))
        )
        return await self._connack

    async def subscribe(self, topic: str, qos: int) -> tuple[int, ...]:
        packet_id = self.next_id()
        future: asyncio.Future[Suback] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future
        self.send_raw(encode(Subscribe(packet_id, ((topic, qos),))))
        return (await future).return_codes

    def publish(self, topic: str, payload: bytes, qos: int) -> int | None:
        packet_id = self.next_id() if qos else None
        self.send_raw(encode(Publish(topic, payload, qos=qos, packet_id=packet_id)))
        return packet_id

    def ping(self) -> None:
        self.send_raw(encode(Pingreq()))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.drain()

    async def disconnect(self, *, timeout: float = 2.0) -> None:
        """DISCONNECT and close; the TLS goodbye is awaited at most ``timeout``."""
        if not self.writer.is_closing():
            self.send_raw(encode(Disconnect()))
        await self.close(timeout=timeout)

    async def close(self, *, timeout: float = 2.0) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        await self._stop_reader()

    def abort(self) -> None:
        """Vanish: reset the TCP connection without a goodbye."""
        transport = self.writer.transport
        if not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        if self._task is not None:
            self._task.cancel()
        self.ended.set()

    async def _stop_reader(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.ended.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError, ssl.SSLError):
                    data = b""
                if not data:
                    break
                if self.websocket:
                    self._frames += data
                    chunks: list[bytes] = []
                    for opcode, payload in _parse_frames(self._frames):
                        if opcode in (0x0, 0x2):
                            chunks.append(payload)
                        elif opcode == 0x9:  # ping → pong
                            self.writer.write(ws_frame(payload, opcode=0xA))
                        elif opcode == 0x8:
                            self.writer.close()
                    data = b"".join(chunks)
                    if not data:
                        continue
                try:
                    packets = self._decoder.feed(data)
                except MalformedPacket:
                    break
                for packet, _raw in packets:
                    self._dispatch(packet)
        finally:
            self.ended.set()
            if not self._connack.done():
                self._connack.set_exception(LoadError("closed-before-connack"))
            for future in self._subacks.values():
                if not future.done():
                    future.set_exception(LoadError("closed-before-suback"))

    def _dispatch(self, packet: object) -> None:
        if isinstance(packet, Publish):
            if packet.qos == 1 and packet.packet_id is not None:
                self.send_raw(encode(Puback(packet.packet_id)))
            if self.on_publish is not None:
                self.on_publish(packet)
        elif isinstance(packet, Puback):
            if self.on_puback is not None:
                self.on_puback(packet.packet_id)
        elif isinstance(packet, Connack):
            if not self._connack.done():
                self._connack.set_result(packet)
        elif isinstance(packet, Suback):
            future = self._subacks.pop(packet.packet_id, None)
            if future is not None and not future.done():
                future.set_result(packet)


# Opening connections ----------------------------------------------------------------------


class Connector:
    """Opens connections to one :class:`Target`; TLS contexts and tokens made once."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._contexts: dict[int, ssl.SSLContext] = {}
        self._credentials = tuple(
            Credential(access_key_id=key, secret_access_key=secret)
            for key, secret in target.credentials
        )
        self._tokens: list[tuple[str, str]] = []
        if target.kind == "wss-custom":
            if not target.authorizer_key_file or not target.authorizer:
                raise ValueError("a wss-custom target needs an authorizer and its key file")
            key = TokenSigningKey.load(target.authorizer_key_file)
            for i in range(4):
                token = f"bench-token-{os.getpid()}-{i}"
                self._tokens.append((token, key.sign(token)))
        if target.kind == "wss-sigv4" and not self._credentials:
            raise ValueError("a wss-sigv4 target needs credentials")
        if target.kind == "mtls" and not target.client_certs:
            raise ValueError("an mtls target needs client certificates")

    def context(self, index: int = 0) -> ssl.SSLContext | None:
        """The client TLS context (with device certificate ``index`` for mTLS)."""
        t = self.target
        if not t.tls:
            return None
        slot = index % len(t.client_certs) if t.kind == "mtls" else 0
        context = self._contexts.get(slot)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if t.ca_file:
                context.load_verify_locations(cafile=t.ca_file)
            context.check_hostname = t.server_name is not None
            if t.kind == "mtls":
                cert, key = t.client_certs[slot]
                context.load_cert_chain(cert, key)
            self._contexts[slot] = context
        return context

    def request_target(self, index: int = 0) -> tuple[str, list[tuple[str, str]]]:
        """The upgrade's request target and extra headers for connection ``index``."""
        t = self.target
        if t.kind == "wss-sigv4":
            credential = self._credentials[index % len(self._credentials)]
            url = sigv4.presign_url(
                host=t.server_name or t.host,
                credential=credential,
                region=t.region,
                now=time.time(),
                path=t.path,
            )
            parts = urllib.parse.urlsplit(url)
            return f"{parts.path}?{parts.query}", []
        if t.kind == "wss-custom":
            token, signature = self._tokens[index % len(self._tokens)]
            assert t.authorizer is not None
            return t.path, [
                ("x-amz-customauthorizer-name", t.authorizer),
                ("x-amz-customauthorizer-signature", signature),
                (t.token_key, token),
            ]
        return t.path, []

    async def open_stream(
        self, index: int = 0, *, timeout: float = 10.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP, then TLS if the target has it; ``LoadError`` on failure."""
        t = self.target
        context = self.context(index)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    t.host,
                    t.port,
                    ssl=context,
                    server_hostname=(t.server_name or "") if context is not None else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise LoadError("connect-timeout") from None
        except ssl.SSLError as exc:
            raise LoadError("tls", exc.reason or str(exc)) from None
        except OSError as exc:
            raise LoadError("tcp", exc.strerror or str(exc)) from None

    async def upgrade(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int = 0,
        *,
        timeout: float = 10.0,
    ) -> None:
        """Send the upgrade and read the 101; ``LoadError("upgrade-<status>")`` otherwise."""
        target, headers = self.request_target(index)
        host = self.target.server_name or self.target.host
        writer.write(upgrade_request(target, host=host, headers=headers))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except TimeoutError:
            raise LoadError("upgrade-timeout") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise LoadError("upgrade-eof", type(exc).__name__) from None
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
        if status != b"101":
            raise LoadError(f"upgrade-{status.decode('ascii', 'replace')}")

    async def open(
        self,
        client_id: str,
        index: int = 0,
        *,
        keep_alive: int = 1200,
        clean_session: bool = True,
        timeout: float = 10.0,
    ) -> Connection:
        """A connected client: transport, upgrade, CONNECT and CONNACK 0."""
        reader, writer = await self.open_stream(index, timeout=timeout)
        try:
            if self.target.websocket:
                await self.upgrade(reader, writer, index, timeout=timeout)
            connection = Connection(reader, writer, websocket=self.target.websocket)
            connection.start()
            try:
                connack = await asyncio.wait_for(
                    connection.connect(
                        client_id, keep_alive=keep_alive, clean_session=clean_session
                    ),
                    timeout,
                )
            except TimeoutError:
                raise LoadError("connack-timeout") from None
            if connack.return_code != 0:
                raise LoadError(f"connack-{connack.return_code}")
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                writer.transport.abort()
            raise
        return connection


# Measurements -----------------------------------------------------------------------------


@dataclass
class ConnectResult:
    """Connections opened to CONNACK and closed again, per second."""

    target: str
    attempted: int = 0
    ok: int = 0
    elapsed: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    #: CPU seconds the load generator itself used (all its processes).
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def merge(self, other: ConnectResult) -> None:
        self.attempted += other.attempted
        self.ok += other.ok
        self.elapsed = max(self.elapsed, other.elapsed)
        self.client_cpu_s += other.client_cpu_s
        for reason, count in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count
        self.latencies += other.latencies

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "target": self.target,
            "attempted": self.attempted,
            "ok": self.ok,
            "failures": dict(self.failures),
            "elapsed_s": round(self.elapsed, 3),
            "connections_per_s": round(self.rate, 1),
            "connect_p50_ms": _ms(percentile(lat, 0.50)),
            "connect_p99_ms": _ms(percentile(lat, 0.99)),
            "client_cpu_s": round(self.client_cpu_s, 3),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def connect_rate(
    target: Target,
    *,
    total: int,
    concurrency: int,
    rate: float | None = None,
    time_limit: float = 60.0,
    worker: int = 0,
    timeout: float = 10.0,
) -> ConnectResult:
    """Open ``total`` connections (TLS, upgrade, auth, CONNECT/CONNACK) and close each.

    At most ``concurrency`` are in progress at once; ``rate`` (per second) paces the starts.
    Stops after ``time_limit`` seconds whatever is left.
    """
    connector = Connector(target)
    result = ConnectResult(target.name)
    counter = itertools.count()
    run = f"{os.getpid()}-{worker}-{random.getrandbits(24):06x}"
    started = time.monotonic()
    cpu_started = time.process_time()
    deadline = started + time_limit

    async def one_worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= total:
                return
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            result.attempted += 1
            t0 = time.monotonic()
            try:
                connection = await connector.open(f"cr-{run}-{i}", i, timeout=timeout)
            except LoadError as exc:
                result.failures[exc.reason] = result.failures.get(exc.reason, 0) + 1
                continue
            result.latencies.append(time.monotonic() - t0)
            result.ok += 1
            await connection.disconnect(timeout=1.0)

    await asyncio.gather(*(one_worker() for _ in range(max(1, concurrency))))
    result.elapsed = time.monotonic() - started
    result.client_cpu_s = time.process_time() - cpu_started
    return result


@dataclass
class MessageResult:
    """Publish → subscribe through one server: throughput and latency."""

    target: str
    qos: int
    sent: int = 0
    received: int = 0
    measured: int = 0
    duration: float = 0.0
    stalls: int = 0
    acked: int = 0
    connect_failures: int = 0
    latencies: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    #: CPU seconds the server process used during the measured window (if its pid is known).
    server_cpu_s: float | None = None

    @property
    def rate(self) -> float:
        return self.measured / self.duration if self.duration > 0 else 0.0

    def merge(self, other: MessageResult) -> None:
        self.sent += other.sent
        self.received += other.received
        self.measured += other.measured
        self.duration = max(self.duration, other.duration)
        self.stalls += other.stalls
        self.acked += other.acked
        self.connect_failures += other.connect_failures
        self.latencies += other.latencies
        self.client_cpu_s += other.client_cpu_s
        if other.server_cpu_s is not None:
            self.server_cpu_s = max(self.server_cpu_s or 0.0, other.server_cpu_s)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        server_cpu = self.server_cpu_s
        return {
            "target": self.target,
            "qos": self.qos,
            "sent": self.sent,
            "received": self.received,
            "acked": self.acked,
            "stalls": self.stalls,
            "connect_failures": self.connect_failures,
            "duration_s": round(self.duration, 3),
            "msgs_per_s": round(self.rate, 1),
            "p50_ms": _ms(percentile(lat, 0.50)),
            "p99_ms": _ms(percentile(lat, 0.99)),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
            "server_cpu_share": None
            if server_cpu is None or not self.duration
            else round(server_cpu / self.duration, 3),
            "msgs_per_server_cpu_s": round(self.measured / server_cpu, 1) if server_cpu else None,
        }


async def message_run(
    target: Target,
    *,
    pairs: int = 10,
    qos: int = 0,
    duration: float = 5.0,
    warmup: float = 1.0,
    window: int = 10,
    rate: float | None = None,
    payload_size: int = 64,
    worker: int = 0,
    timeout: float = 10.0,
    server_pid: int | None = None,
) -> MessageResult:
    """``pairs`` publisher → subscriber streams, one topic each.

    Closed loop: a publisher keeps at most ``window`` messages between its send and its
    subscriber's receipt (both QoS), so the server is saturated without unbounded queues
    and latency reads as the server's. ``rate`` (messages per second over all pairs) turns
    it into an open loop at that pace, for latency at a fixed load. Messages received in
    the ``duration`` after ``warmup`` are counted and their latencies kept.
    """
    connector = Connector(target)
    result = MessageResult(target.name, qos)
    run = f"{os.getpid()}-{worker}-{random.getrandbits(24):06x}"
    subs: list[Connection] = []
    pubs: list[Connection] = []
    inflight = [0] * pairs
    wakeups = [asyncio.Event() for _ in range(pairs)]
    window_start = window_end = 0.0

    def on_message(stream: int) -> Callable[[Publish], None]:
        def receive(publish: Publish) -> None:
            now = time.monotonic_ns()
            result.received += 1
            inflight[stream] = max(inflight[stream] - 1, 0)
            wakeups[stream].set()
            stamped = read_stamp(publish.payload)
            t = now / 1e9
            if stamped is not None and window_start <= t < window_end:
                result.measured += 1
                result.latencies.append((now - stamped[0]) / 1e9)

        return receive

    def on_puback(_packet_id: int) -> None:
        result.acked += 1

    try:
        for i in range(pairs):
            try:
                sub = await connector.open(f"ms-{run}-s{i}", 2 * i, timeout=timeout)
                subs.append(sub)
                pub = await connector.open(f"ms-{run}-p{i}", 2 * i + 1, timeout=timeout)
                pubs.append(pub)
            except LoadError:
                result.connect_failures += 1
                raise
            sub.on_publish = on_message(i)
            pub.on_puback = on_puback
            codes = await asyncio.wait_for(sub.subscribe(f"bench/{run}/{i}", qos), timeout)
            if codes[0] == 0x80:
                raise LoadError("subscribe-refused")
        loop_start = time.monotonic()
        window_start = loop_start + warmup
        window_end = window_start + duration
        interval = pairs / rate if rate else 0.0
        cpu_started = time.process_time()

        async def publisher(i: int) -> None:
            pub, topic, seq = pubs[i], f"bench/{run}/{i}", 0
            next_at = loop_start + random.random() * interval
            while time.monotonic() < window_end and not pub.closing:
                if inflight[i] >= window:
                    wakeups[i].clear()
                    try:
                        await asyncio.wait_for(wakeups[i].wait(), 2.0)
                    except TimeoutError:
                        result.stalls += 1
                        inflight[i] = 0
                    continue
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + interval, time.monotonic() - 1.0)
                seq += 1
                inflight[i] += 1
                result.sent += 1
                pub.publish(topic, stamp(i, seq, payload_size), qos)
                if pub.writer.transport.get_write_buffer_size() > 1 << 16:
                    await pub.drain()
                elif not interval and seq % 16 == 0:
                    await asyncio.sleep(0)

        async def server_cpu() -> None:
            if server_pid is None:
                return
            await asyncio.sleep(max(window_start - time.monotonic(), 0.0))
            before = process_cpu(server_pid)
            await asyncio.sleep(max(window_end - time.monotonic(), 0.0))
            after = process_cpu(server_pid)
            if before is not None and after is not None:
                result.server_cpu_s = after - before

        await asyncio.gather(server_cpu(), *(publisher(i) for i in range(pairs)))
        # Let the last messages arrive (bounded): they are outside the window anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_settled(inflight), 2.0)
        result.duration = duration
        result.client_cpu_s = time.process_time() - cpu_started
    finally:
        await asyncio.gather(
            *(c.disconnect(timeout=1.0) for c in subs + pubs), return_exceptions=True
        )
    return result


async def _settled(inflight: list[int]) -> None:
    while any(inflight):  # noqa: ASYNC110 - plain counters, polled under wait_for
        await asyncio.sleep(0.01)


@dataclass
class Held:
    """Connections kept open (the scale measurement); close them with :meth:`close`."""

    connections: list[Connection] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    async def close(self, *, concurrency: int = 200) -> None:
        semaphore = asyncio.Semaphore(concurrency)

        async def close_one(connection: Connection) -> None:
            async with semaphore:
                await connection.disconnect(timeout=1.0)

        await asyncio.gather(*(close_one(c) for c in self.connections), return_exceptions=True)
        self.connections.clear()


async def hold(
    target: Target,
    *,
    count: int,
    concurrency: int = 64,
    subscribe: bool = False,
    prefix: str = "hold",
    time_limit: float = 300.0,
    timeout: float = 10.0,
) -> Held:
    """Open ``count`` connections and keep them (devices also subscribe to their topic)."""
    connector = Connector(target)
    held = Held()
    counter = itertools.count()
    run = f"{os.getpid()}-{random.getrandbits(24):06x}"
    started = time.monotonic()
    deadline = started + time_limit

    async def one_worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= count:
                return
            try:
                connection = await connector.open(f"{prefix}-{run}-{i}", i, timeout=timeout)
                if subscribe:
                    await asyncio.wait_for(
                        connection.subscribe(f"devices/{prefix}-{run}-{i}/cmd", 1), timeout
                    )
            except (LoadError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, LoadError) else "suback-timeout"
                held.failures[reason] = held.failures.get(reason, 0) + 1
                continue
            held.connections.append(connection)

    await asyncio.gather(*(one_worker() for _ in range(max(1, concurrency))))
    held.elapsed = time.monotonic() - started
    return held


# Several processes --------------------------------------------------------------------------


def _worker_entry(name: str, target: Target, worker: int, kwargs: dict[str, Any]) -> Any:
    if name == "connect_rate":
        return asyncio.run(connect_rate(target, worker=worker, **kwargs))
    return asyncio.run(message_run(target, worker=worker, **kwargs))


def in_processes(
    name: Literal["connect_rate", "message_run"],
    target: Target,
    *,
    workers: int,
    split: str,
    **kwargs: Any,
) -> ConnectResult | MessageResult:
    """Run :func:`connect_rate` or :func:`message_run` in ``workers`` processes and merge.

    ``split`` names the keyword divided among the workers (``total`` or ``pairs``).
    """
    whole = int(kwargs[split])
    shares = [whole // workers + (1 if w < whole % workers else 0) for w in range(workers)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_worker_entry, name, target, w, {**kwargs, split: share})
            for w, share in enumerate(shares)
            if share > 0
        ]
        results = [f.result() for f in futures]
    merged = results[0]
    for other in results[1:]:
        merged.merge(other)
    return merged  # type: ignore[no-any-return]
