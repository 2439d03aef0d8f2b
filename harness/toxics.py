"""TCP-level toxics in the manner of Toxiproxy, for any listener of the world.

Issue 5 ("Fault plans") asks for "TCP-level toxics in the manner of Toxiproxy (latency with
jitter, bandwidth, timeout / black hole, reset_peer, slicer, limit_data, slow_close), for
any listener of the world: gateway, Cognito, Dyson API, device local broker". A
:class:`ToxicProxy` listens on loopback, forwards every accepted connection to one upstream
listener, and passes the bytes of each direction through a chain of toxics::

    client ──▶ listen port ──[upstream chain: toxic, toxic, ...]──▶ upstream listener
    client ◀──────────────────[downstream chain: toxic, ...]◀────── upstream listener

What each toxic does follows Toxiproxy's ``toxics/*.go`` (times here are seconds, not
milliseconds, because the whole harness compresses time in seconds, DESIGN.md):

============  ===============================================================================
toxic         effect on its stream
============  ===============================================================================
Latency       every chunk is delayed by ``latency_s`` ± ``jitter_s`` from the moment the proxy
              read it; order is kept (a chunk never overtakes an earlier one).
Bandwidth     at most ``rate_kb_per_s`` kilobytes (1000 bytes) a second, sent in pieces of at
              most 100 ms worth, as Toxiproxy does.
Timeout       data is dropped; the connection is closed ``timeout_s`` after the toxic was
              attached. ``timeout_s=0`` is a black hole: dropped forever, never closed by the
              toxic. Removing the toxic closes the connections it held (Toxiproxy's
              ``Cleanup``): their byte streams have a hole and cannot continue.
ResetPeer     the first chunk (or end of stream) starts a ``timeout_s`` timer, then both sockets
              are reset (``SO_LINGER`` 0, a TCP RST); nothing is forwarded meanwhile.
Slicer        chunks are cut into pieces of ``average_size`` ± ``size_variation`` bytes, with
              ``delay_s`` after each piece (Toxiproxy's recursive halving).
LimitData     the first ``bytes`` bytes pass, then the connection is closed.
SlowClose     the end of stream (FIN) is forwarded only ``delay_s`` after it arrived.
HalfOpen      not in Toxiproxy: the issue's "go half-open (stop answering, keep the socket)".
              Nothing is forwarded, not even the FIN, and the sockets stay open; bytes are held
              (the proxy stops reading, so TCP flow control pushes back on the sender, as a
              partition does). Removing the toxic heals the partition: held bytes flow on.
============  ===============================================================================

A toxic is added for a ``direction`` (``"upstream"`` is client to server, ``"downstream"``
server to client, Toxiproxy's default; ``"both"`` is one named toxic on both chains) with a
``toxicity``: the probability that it applies to a given connection, rolled once per
connection when it is attached. Toxics apply to live connections as soon as they are added
and stop as soon as they are removed (a chunk waiting in a removed toxic is released at
once), as in Toxiproxy. :meth:`ToxicProxy.disable` is Toxiproxy's ``enabled=false``: the
listening socket is closed (new connections are refused) and live connections are closed.

Design (STYLE.md §1): the decisions are pure functions and small state machines over sizes
and an explicit clock, property-tested: :func:`latency_release`, :class:`BandwidthPacer`,
:func:`slice_sizes`, :class:`DataLimit`. The shell only moves bytes: per connection and
direction one reader task stamps chunks with their arrival time and queues them (a bounded
queue, so a stalled chain stops reading and TCP pushes back), and one pump task passes each
chunk through the live chain of toxic stages, each stage handing its output to the next.
An end of stream travels on as a half-close (the proxy shuts down its writing side towards
the other peer), where Toxiproxy closes the whole connection: a client that half-closes and
waits for the answer still gets it. The connection is closed once both directions ended.

Events (DESIGN.md "Events JSONL"); every one has ``proxy`` (the proxy's name), never a payload
byte:

* ``net.connect``: ``conn``, ``ok``, ``client`` (the client's address), ``upstream``
  (``host:port``), ``via`` (the proxy's own address towards the upstream, written as the
  gateway writes ``peer`` in ``tcp.accept``, so the two connections can be matched); when
  the upstream cannot be reached, ``ok=False``, ``reason="upstream-unreachable"`` and
  ``explain``;
* ``net.toxic``: ``conn``, ``toxic`` (its name), ``type``, ``stream``, ``action``:
  ``attach`` (with ``applied``, the toxicity roll), then what it did: ``delay``, ``pace``,
  ``slice``, ``hold``, ``drop`` (first time on a connection only, with sizes and times),
  ``reset``, ``close``, ``slow-close``, ``limit``;
* ``net.close``: ``conn``, ``reason`` (kebab-case: ``eof``, ``client-reset``,
  ``upstream-reset``, ``client-lost``, ``upstream-lost``, ``upstream-unreachable``,
  ``toxic-timeout``, ``toxic-removed``, ``toxic-limit-data``, ``toxic-reset-peer``,
  ``reset-all``, ``proxy-disabled``, ``proxy-closed``), ``rst`` (whether sockets were reset),
  ``bytes_up`` and ``bytes_down`` (bytes delivered);
* ``net.proxy``: ``action`` (``listen``, ``add``, ``remove``, ``disable``, ``enable``,
  ``reset-all``, ``close``, ``accept-failed``) and its details.

An exception escaping a connection task is a bug of this module: it is recorded as
``net.error`` and raised again by :meth:`ToxicProxy.aclose` (STYLE.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeAlias, get_args

from harness.errors import ConfigError
from harness.events import Recorder

Stream: TypeAlias = Literal["upstream", "downstream"]
Direction: TypeAlias = Literal["upstream", "downstream", "both"]

STREAMS: tuple[Stream, ...] = ("upstream", "downstream")
_DIRECTIONS: tuple[str, ...] = get_args(Direction)

#: Bytes asked for per read from a socket.
_READ_SIZE = 65536
#: Chunks a direction may hold before the proxy stops reading its source (flow control).
_QUEUE_CHUNKS = 16
#: Bandwidth pieces carry at most this much time's worth of bytes (Toxiproxy: 100 ms).
BANDWIDTH_PIECE_S = 0.1


# Toxics: the values a fault plan names.


def _finite_at_least(name: str, value: float, low: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number of seconds or bytes, not {value!r}")
    if not math.isfinite(value) or value < low:
        raise ConfigError(f"{name} must be a finite number >= {low}, not {value!r}")


def _whole_at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, not {value!r}")


@dataclass(frozen=True)
class Latency:
    """Delay every chunk by ``latency_s`` ± ``jitter_s`` (Toxiproxy ``latency``)."""

    type: ClassVar[str] = "latency"
    latency_s: float
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        _finite_at_least("latency_s", self.latency_s, 0)
        _finite_at_least("jitter_s", self.jitter_s, 0)


@dataclass(frozen=True)
class Bandwidth:
    """At most ``rate_kb_per_s`` kilobytes (1000 bytes) a second (Toxiproxy ``bandwidth``)."""

    type: ClassVar[str] = "bandwidth"
    rate_kb_per_s: float

    def __post_init__(self) -> None:
        _finite_at_least("rate_kb_per_s", self.rate_kb_per_s, 0)
        if self.rate_kb_per_s <= 0:
            raise ConfigError("rate_kb_per_s must be > 0 (remove the toxic for no limit)")


@dataclass(frozen=True)
class Timeout:
    """Drop data; close after ``timeout_s``, or never when 0 (Toxiproxy ``timeout``)."""

    type: ClassVar[str] = "timeout"
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        _finite_at_least("timeout_s", self.timeout_s, 0)


@dataclass(frozen=True)
class ResetPeer:
    """Reset the connection ``timeout_s`` after data first arrives (Toxiproxy ``reset_peer``)."""

    type: ClassVar[str] = "reset_peer"
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        _finite_at_least("timeout_s", self.timeout_s, 0)


@dataclass(frozen=True)
class Slicer:
    """Cut chunks into ``average_size`` ± ``size_variation`` bytes (Toxiproxy ``slicer``)."""

    type: ClassVar[str] = "slicer"
    average_size: int
    size_variation: int = 0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        _whole_at_least("average_size", self.average_size, 1)
        _whole_at_least("size_variation", self.size_variation, 0)
        if self.size_variation >= self.average_size:
            raise ConfigError("size_variation must be smaller than average_size (Toxiproxy)")
        _finite_at_least("delay_s", self.delay_s, 0)


@dataclass(frozen=True)
class LimitData:
    """Forward ``bytes`` bytes, then close the connection (Toxiproxy ``limit_data``)."""

    type: ClassVar[str] = "limit_data"
    bytes: int

    def __post_init__(self) -> None:
        _whole_at_least("bytes", self.bytes, 0)


@dataclass(frozen=True)
class SlowClose:
    """Forward the end of stream only ``delay_s`` after it came (Toxiproxy ``slow_close``)."""

    type: ClassVar[str] = "slow_close"
    delay_s: float

    def __post_init__(self) -> None:
        _finite_at_least("delay_s", self.delay_s, 0)


@dataclass(frozen=True)
class HalfOpen:
    """Forward nothing, not even FIN, and keep the sockets open: the half-open fault.

    By default it applies to both directions; removing it lets the held bytes through.
    """

    type: ClassVar[str] = "half_open"


Toxic: TypeAlias = (
    Latency | Bandwidth | Timeout | ResetPeer | Slicer | LimitData | SlowClose | HalfOpen
)
_TOXIC_TYPES = (Latency, Bandwidth, Timeout, ResetPeer, Slicer, LimitData, SlowClose, HalfOpen)


@dataclass(frozen=True)
class ToxicSpec:
    """A toxic as a proxy holds it: its name, what it is, where and how often it applies."""

    name: str
    toxic: Toxic
    direction: Direction
    toxicity: float


# The pure core: decisions over sizes and an explicit clock.


def latency_release(
    *, arrival: float, previous: float, latency_s: float, jitter_s: float, u: float
) -> float:
    """When a chunk that arrived at ``arrival`` leaves a latency toxic.

    ``u`` in [-1, 1] picks the jitter; ``previous`` is when the chunk before it left, so
    chunks keep their order (Toxiproxy's latency toxic is one goroutine per stream). The
    delay never goes below zero, whatever the jitter.
    """
    delay = max(0.0, latency_s + jitter_s * u)
    return max(previous, arrival + delay)


@dataclass
class BandwidthPacer:
    """The release schedule of a bandwidth toxic: bytes leave no faster than the rate.

    A piece of ``n`` bytes is released when it would have finished crossing a link of the
    given rate that is busy until the previous piece left, so over any span between two
    releases the bytes released never exceed ``rate * span``.
    """

    rate_bytes_per_s: float
    busy_until: float = -math.inf

    @property
    def max_piece(self) -> int:
        return max(1, int(self.rate_bytes_per_s * BANDWIDTH_PIECE_S))

    def schedule(self, now: float, size: int) -> list[tuple[float, int]]:
        """``(release time, piece size)`` for ``size`` bytes handed over at ``now``."""
        t = max(now, self.busy_until)
        out: list[tuple[float, int]] = []
        remaining = size
        while remaining > 0:
            piece = min(remaining, self.max_piece)
            t += piece / self.rate_bytes_per_s
            out.append((t, piece))
            remaining -= piece
        self.busy_until = t
        return out


def slice_sizes(
    total: int, *, average_size: int, size_variation: int, rng: random.Random
) -> list[int]:
    """Piece sizes for a chunk of ``total`` bytes, left to right (Toxiproxy ``slicer``).

    A span no longer than ``average_size + size_variation`` stays whole; a longer one is
    cut about in half (± ``size_variation``) and both halves are cut again, which gives
    evenly varying pieces with no bias to small ones at either end.
    """
    sizes: list[int] = []
    pending = [total] if total > 0 else []
    while pending:
        n = pending.pop()
        if n - average_size <= size_variation:
            sizes.append(n)
            continue
        mid = n // 2 + rng.randint(-size_variation, size_variation)
        mid = min(max(mid, 1), n - 1)
        pending.append(n - mid)
        pending.append(mid)
    return sizes


@dataclass
class DataLimit:
    """How much of each chunk a limit_data toxic lets through."""

    limit: int
    passed: int = 0

    def take(self, size: int) -> int:
        """Bytes of a ``size``-byte chunk that may pass; counts them as passed."""
        allowed = max(0, min(size, self.limit - self.passed))
        self.passed += allowed
        return allowed

    @property
    def exhausted(self) -> bool:
        return self.passed >= self.limit


# The shell: sockets, tasks, stages.


@dataclass(frozen=True)
class _Chunk:
    """Bytes read from one side (or its end, ``eof``), stamped with the loop time of the read."""

    data: bytes
    t: float
    eof: bool = False


_Emit: TypeAlias = Callable[[_Chunk], Awaitable[None]]


def _rst_socket(sock: Any) -> None:
    """Make the next close of ``sock`` a TCP RST (SO_LINGER 0), as Toxiproxy's reset_peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset_writer(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        _rst_socket(sock)
    writer.transport.abort()


@dataclass(frozen=True)
class _Entry:
    spec: ToxicSpec
    seq: int


class _Stage:
    """One toxic on one stream of one connection; ``on_chunk`` hands output to ``emit``."""

    def __init__(self, entry: _Entry, link: _Link) -> None:
        self.entry = entry
        self.link = link
        self.seq = entry.seq
        self.removed = asyncio.Event()
        self._fired: set[str] = set()

    @property
    def conn(self) -> _Connection:
        return self.link.conn

    def attached(self) -> None:
        """Called once the stage is in the chain (timers start here)."""

    def detached(self) -> None:
        """Called when the toxic is removed: waits end and held chunks move on."""
        self.removed.set()

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        await emit(chunk)

    def fire(self, action: str, *, once: bool = False, **fields: Any) -> None:
        if once:
            if action in self._fired:
                return
            self._fired.add(action)
        self.conn.proxy._record(
            "net.toxic",
            conn=self.conn.id,
            toxic=self.entry.spec.name,
            type=self.entry.spec.toxic.type,
            stream=self.link.stream,
            action=action,
            **fields,
        )

    async def sleep_until(self, deadline: float | None) -> bool:
        """Wait for the loop time ``deadline`` (forever if None); True if removed first."""
        loop = asyncio.get_running_loop()
        while not self.removed.is_set():
            if deadline is None:
                await self.removed.wait()
                break
            if loop.time() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.removed.wait()
        return True

    def now(self) -> float:
        return asyncio.get_running_loop().time()


class _LatencyStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: Latency) -> None:
        super().__init__(entry, link)
        self.toxic = toxic
        self.previous = -math.inf

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if not chunk.eof:
            u = self.conn.proxy._rng.uniform(-1.0, 1.0) if self.toxic.jitter_s else 0.0
            release = latency_release(
                arrival=chunk.t,
                previous=self.previous,
                latency_s=self.toxic.latency_s,
                jitter_s=self.toxic.jitter_s,
                u=u,
            )
            self.previous = release
            self.fire(
                "delay", once=True, bytes=len(chunk.data), delay_s=round(release - chunk.t, 6)
            )
            await self.sleep_until(release)
        await emit(chunk)


class _BandwidthStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: Bandwidth) -> None:
        super().__init__(entry, link)
        self.pacer = BandwidthPacer(toxic.rate_kb_per_s * 1000)

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        pieces = self.pacer.schedule(self.now(), len(chunk.data))
        self.fire("pace", once=True, bytes=len(chunk.data), pieces=len(pieces))
        offset = 0
        for release, size in pieces:
            if await self.sleep_until(release):
                await emit(replace(chunk, data=chunk.data[offset:]))
                return
            await emit(replace(chunk, data=chunk.data[offset : offset + size]))
            offset += size


class _TimeoutStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: Timeout) -> None:
        super().__init__(entry, link)
        self.toxic = toxic

    def attached(self) -> None:
        if self.toxic.timeout_s > 0:
            self.conn.spawn(self._expire(self.now() + self.toxic.timeout_s))

    async def _expire(self, deadline: float) -> None:
        if not await self.sleep_until(deadline):
            self.fire("close", after_s=self.toxic.timeout_s)
            self.conn.close("toxic-timeout")

    def detached(self) -> None:
        super().detached()
        if not self.conn.closed:
            self.fire("close", cause="removed")
            self.conn.close("toxic-removed")

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if chunk.eof:
            await emit(chunk)
        else:
            self.fire("drop", once=True, bytes=len(chunk.data))


class _ResetPeerStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: ResetPeer) -> None:
        super().__init__(entry, link)
        self.toxic = toxic

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if await self.sleep_until(self.now() + self.toxic.timeout_s):
            await emit(chunk)
            return
        self.fire("reset", after_s=self.toxic.timeout_s)
        self.conn.close("toxic-reset-peer", rst=True)


class _SlicerStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: Slicer) -> None:
        super().__init__(entry, link)
        self.toxic = toxic

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        sizes = slice_sizes(
            len(chunk.data),
            average_size=self.toxic.average_size,
            size_variation=self.toxic.size_variation,
            rng=self.conn.proxy._rng,
        )
        self.fire("slice", once=True, bytes=len(chunk.data), pieces=len(sizes))
        offset = 0
        for size in sizes:
            await emit(replace(chunk, data=chunk.data[offset : offset + size]))
            offset += size
            if self.toxic.delay_s and await self.sleep_until(self.now() + self.toxic.delay_s):
                await emit(replace(chunk, data=chunk.data[offset:]))
                return


class _LimitDataStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: LimitData) -> None:
        super().__init__(entry, link)
        self.limit = DataLimit(toxic.bytes)

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        allowed = self.limit.take(len(chunk.data))
        if allowed:
            await emit(replace(chunk, data=chunk.data[:allowed]))
        if self.limit.exhausted:
            self.fire("limit", bytes=self.limit.passed)
            self.conn.close("toxic-limit-data")


class _SlowCloseStage(_Stage):
    def __init__(self, entry: _Entry, link: _Link, toxic: SlowClose) -> None:
        super().__init__(entry, link)
        self.toxic = toxic

    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        if chunk.eof:
            self.fire("slow-close", delay_s=self.toxic.delay_s)
            await self.sleep_until(self.now() + self.toxic.delay_s)
        await emit(chunk)


class _HalfOpenStage(_Stage):
    async def on_chunk(self, chunk: _Chunk, emit: _Emit) -> None:
        self.fire("hold", once=True, bytes=len(chunk.data), eof=chunk.eof)
        await self.sleep_until(None)
        await emit(chunk)


def _make_stage(entry: _Entry, link: _Link) -> _Stage:
    toxic = entry.spec.toxic
    if isinstance(toxic, Latency):
        return _LatencyStage(entry, link, toxic)
    if isinstance(toxic, Bandwidth):
        return _BandwidthStage(entry, link, toxic)
    if isinstance(toxic, Timeout):
        return _TimeoutStage(entry, link, toxic)
    if isinstance(toxic, ResetPeer):
        return _ResetPeerStage(entry, link, toxic)
    if isinstance(toxic, Slicer):
        return _SlicerStage(entry, link, toxic)
    if isinstance(toxic, LimitData):
        return _LimitDataStage(entry, link, toxic)
    if isinstance(toxic, SlowClose):
        return _SlowCloseStage(entry, link, toxic)
    return _HalfOpenStage(entry, link)


class _Link:
    """One direction of one connection: source socket, chain of stages, destination socket."""

    def __init__(
        self,
        conn: _Connection,
        stream: Stream,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.source = source
        self.dest = dest
        self.source_name = "client" if stream == "upstream" else "upstream"
        self.dest_name = "upstream" if stream == "upstream" else "client"
        self.queue: asyncio.Queue[_Chunk] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self.stages: list[_Stage] = []
        self.ended = False
        self.delivered = 0

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.source.read(_READ_SIZE)
            except ConnectionResetError:
                self.conn.close(f"{self.source_name}-reset", rst=True)
                return
            except OSError:
                self.conn.close(f"{self.source_name}-lost")
                return
            await self.queue.put(_Chunk(data, loop.time(), eof=not data))
            if not data:
                return

    async def pump(self) -> None:
        while not self.conn.closed:
            chunk = await self.queue.get()
            await self._through(chunk, after=-1)
            if chunk.eof:
                return

    async def _through(self, chunk: _Chunk, *, after: int) -> None:
        """Hand ``chunk`` to the first live stage after sequence ``after``, or deliver it.

        Reading the live chain at every step is what makes added toxics apply to chunks
        already on their way and removed ones let go of them.
        """
        if self.conn.closed or not (chunk.data or chunk.eof):
            return
        stage = next((s for s in self.stages if s.seq > after), None)
        if stage is None:
            await self._deliver(chunk)
        else:
            await stage.on_chunk(chunk, functools.partial(self._through, after=stage.seq))

    async def _deliver(self, chunk: _Chunk) -> None:
        if chunk.eof:
            # A half-close travels on: the other direction may still have bytes to carry.
            self.ended = True
            if self.dest.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    self.dest.write_eof()
            self.conn.link_ended()
            return
        self.dest.write(chunk.data)
        self.delivered += len(chunk.data)
        try:
            await self.dest.drain()
        except (ConnectionError, OSError):
            self.conn.close(f"{self.dest_name}-lost")


class _Connection:
    """A client connection, its upstream connection and the two links between them."""

    def __init__(self, proxy: ToxicProxy, conn_id: str, sock: socket.socket, client: str) -> None:
        self.proxy = proxy
        self.id = conn_id
        self.client_address = client
        self._raw: socket.socket | None = sock
        self.client: asyncio.StreamWriter | None = None
        self.upstream: asyncio.StreamWriter | None = None
        self.links: dict[Stream, _Link] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.proxy._spawn(coro, name=f"{self.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        proxy = self.proxy
        sock, self._raw = self._raw, None
        assert sock is not None
        client_reader, self.client = await asyncio.open_connection(sock=sock)
        try:
            upstream_reader, self.upstream = await asyncio.open_connection(
                proxy.upstream_host, proxy.upstream_port
            )
        except OSError as exc:
            proxy._record(
                "net.connect",
                conn=self.id,
                ok=False,
                reason="upstream-unreachable",
                client=self.client_address,
                upstream=proxy.upstream,
                explain=f"cannot connect to {proxy.upstream}: {exc}",
            )
            self.close("upstream-unreachable")
            return
        if self.closed:  # closed while connecting: close() could not see this writer yet
            self.upstream.transport.abort()
            return
        self.links = {
            "upstream": _Link(self, "upstream", client_reader, self.upstream),
            "downstream": _Link(self, "downstream", upstream_reader, self.client),
        }
        proxy._record(
            "net.connect",
            conn=self.id,
            ok=True,
            client=self.client_address,
            upstream=proxy.upstream,
            via=str(self.upstream.get_extra_info("sockname")),
        )
        for entry in proxy._entries.values():
            self.attach(entry)
        for link in self.links.values():
            self.spawn(link.read())
            self.spawn(link.pump())

    def attach(self, entry: _Entry) -> None:
        if self.closed or not self.links:
            return  # a connection still connecting picks its toxics up when it is ready
        spec = entry.spec
        applied = self.proxy._roll(spec.toxicity)
        streams = STREAMS if spec.direction == "both" else (spec.direction,)
        for stream in streams:
            link = self.links[stream]
            stage = _make_stage(entry, link)
            stage.fire("attach", applied=applied, toxicity=spec.toxicity)
            if applied:
                link.stages.append(stage)
                stage.attached()

    def detach(self, name: str) -> None:
        for link in list(self.links.values()):
            for stage in [s for s in link.stages if s.entry.spec.name == name]:
                link.stages.remove(stage)
                stage.detached()

    def link_ended(self) -> None:
        if self.links and all(link.ended for link in self.links.values()):
            self.close("eof")

    def close(self, reason: str, *, rst: bool = False) -> None:
        """Close both sides now: gracefully (FIN after pending bytes), or with a TCP RST."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        if self._raw is not None:
            if rst:
                _rst_socket(self._raw)
            self._raw.close()
            self._raw = None
        for writer in (self.client, self.upstream):
            if writer is not None:
                if rst:
                    _reset_writer(writer)
                else:
                    writer.close()
        self.proxy._record(
            "net.close",
            conn=self.id,
            reason=reason,
            rst=rst,
            bytes_up=self.links["upstream"].delivered if self.links else 0,
            bytes_down=self.links["downstream"].delivered if self.links else 0,
        )
        self.proxy._closed(self)

    def abort(self) -> None:
        """Drop both transports at once, pending bytes and all (proxy shutdown)."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()

    async def wait_closed(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


class ToxicProxy:
    """A TCP proxy on loopback with Toxiproxy-style toxics, as an async context manager.

    ``name`` names the proxy in events and connection ids (``<name>-<n>``); ``rng`` makes
    jitter, slicing and toxicity reproducible. Every method but :meth:`start` and
    :meth:`aclose` is synchronous, so a fault plan can call them from an event listener.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        name: str,
        # Listening
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        # Timeline and randomness
        recorder: Recorder | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not name:
            raise ConfigError("a ToxicProxy needs a name (it names events and connections)")
        self.name = name
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.recorder = recorder if recorder is not None else Recorder()
        self._rng = rng if rng is not None else random.Random()
        self._port = listen_port
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()
        self._conn_ids = itertools.count(1)
        self._conns: dict[str, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self._started = False
        self._closing = False

    # Life cycle

    async def __aenter__(self) -> ToxicProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(raise_errors=exc is None)

    async def start(self) -> None:
        """Listen; ``port`` is the bound port from here on."""
        if self._started:
            raise ConfigError(f"proxy {self.name!r} was already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            self._listen()
        except OSError as exc:
            raise ConfigError(
                f"proxy {self.name!r} cannot listen on {self.listen_host}:{self._port}: {exc}"
            ) from exc
        self._record("net.proxy", action="listen", port=self._port, upstream=self.upstream)

    async def aclose(self, *, raise_errors: bool = True) -> None:
        """Stop listening, drop every connection, wait for every task; no task outlives this.

        Raises the first exception that escaped a connection task (a bug), if any.
        """
        if self._closing or not self._started:
            return
        self._closing = True
        self._stop_listening()
        for conn in list(self._conns.values()):
            conn.close("proxy-closed")
            conn.abort()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._record("net.proxy", action="close")
        if raise_errors and self._errors:
            raise self._errors[0]

    # Where to connect

    @property
    def port(self) -> int:
        """The bound listening port (also while disabled: ``enable`` listens on it again)."""
        if not self._started:
            raise ConfigError(f"proxy {self.name!r} is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    @property
    def enabled(self) -> bool:
        return self._listener is not None

    @property
    def connections(self) -> tuple[str, ...]:
        """Ids of the connections that are open now."""
        return tuple(c.id for c in self._conns.values() if not c.closed)

    @property
    def toxics(self) -> tuple[ToxicSpec, ...]:
        return tuple(entry.spec for entry in self._entries.values())

    # Toxics

    def add(
        self,
        toxic: Toxic,
        *,
        direction: Direction | None = None,
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> str:
        """Add ``toxic`` to new and live connections; returns its name.

        ``direction`` defaults to ``downstream`` (Toxiproxy's default), and to ``both`` for
        :class:`HalfOpen`; ``name`` defaults to ``<type>_<direction>`` (Toxiproxy's).
        """
        if not isinstance(toxic, _TOXIC_TYPES):
            raise ConfigError(f"not a toxic: {toxic!r}")
        if direction is None:
            direction = "both" if isinstance(toxic, HalfOpen) else "downstream"
        if direction not in _DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(_DIRECTIONS)}: {direction!r}")
        _finite_at_least("toxicity", toxicity, 0)
        if toxicity > 1:
            raise ConfigError(f"toxicity is a probability in [0, 1], not {toxicity!r}")
        name = name if name is not None else f"{toxic.type}_{direction}"
        if name in self._entries:
            raise ConfigError(f"proxy {self.name!r} already has a toxic named {name!r}")
        entry = _Entry(ToxicSpec(name, toxic, direction, float(toxicity)), next(self._seq))
        self._entries[name] = entry
        self._record(
            "net.proxy",
            action="add",
            toxic=name,
            type=toxic.type,
            direction=direction,
            toxicity=entry.spec.toxicity,
        )
        for conn in list(self._conns.values()):
            conn.attach(entry)
        return name

    def remove(self, name: str) -> None:
        """Remove a toxic from the proxy and from every live connection."""
        if name not in self._entries:
            known = ", ".join(self._entries) or "none"
            raise ConfigError(f"proxy {self.name!r} has no toxic {name!r} (it has: {known})")
        del self._entries[name]
        self._record("net.proxy", action="remove", toxic=name)
        for conn in list(self._conns.values()):
            conn.detach(name)

    def clear(self) -> None:
        """Remove every toxic (Toxiproxy's ``/reset`` also enables the proxy; see enable)."""
        for name in list(self._entries):
            self.remove(name)

    # The proxy itself

    def disable(self) -> None:
        """Toxiproxy's ``enabled=false``: refuse new connections, close the live ones."""
        if not self.enabled:
            return
        self._stop_listening()
        self._record("net.proxy", action="disable")
        for conn in list(self._conns.values()):
            conn.close("proxy-disabled")

    def enable(self) -> None:
        """Listen again, on the same port."""
        if self.enabled or self._closing:
            return
        if not self._started:
            raise ConfigError(f"proxy {self.name!r} is not started")
        try:
            self._listen()
        except OSError as exc:
            raise ConfigError(f"proxy {self.name!r} cannot listen on {self._port}: {exc}") from exc
        self._record("net.proxy", action="enable", port=self._port)

    def reset_all(self) -> int:
        """Reset (TCP RST) every live connection now; returns how many there were."""
        live = [c for c in self._conns.values() if not c.closed]
        self._record("net.proxy", action="reset-all", connections=len(live))
        for conn in live:
            conn.close("reset-all", rst=True)
        return len(live)

    # Internals

    def _listen(self) -> None:
        assert self._loop is not None
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.listen_host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._port = sock.getsockname()[1]
        self._loop.add_reader(sock.fileno(), self._on_acceptable)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _on_acceptable(self) -> None:
        while self._listener is not None:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._record("net.proxy", action="accept-failed", explain=str(exc))
                return
            sock.setblocking(False)
            conn = _Connection(self, f"{self.name}-{next(self._conn_ids)}", sock, str(peer))
            self._conns[conn.id] = conn
            conn.spawn(conn.run())

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        self._errors.append(exc)
        self._record("net.error", conn=task.get_name(), explain=repr(exc))
        conn = self._conns.get(task.get_name())
        if conn is not None:
            conn.close("proxy-error", rst=True)

    def _closed(self, conn: _Connection) -> None:
        """A connection was closed: forget it once its sockets are really closed."""

        async def reap() -> None:
            await conn.wait_closed()
            self._conns.pop(conn.id, None)

        self._spawn(reap(), name=f"{conn.id}-reap")

    def _roll(self, toxicity: float) -> bool:
        if toxicity >= 1:
            return True
        if toxicity <= 0:
            return False
        return self._rng.random() < toxicity

    def _record(self, kind: str, *, conn: str | None = None, **fields: Any) -> None:
        self.recorder.record(kind, conn=conn, proxy=self.name, **fields)

    def __repr__(self) -> str:
        where = f"{self.listen_host}:{self._port}" if self._started else "not started"
        return f"<ToxicProxy {self.name} {where} -> {self.upstream} toxics={list(self._entries)}>"
