"""harness.toxics: Toxiproxy-style TCP toxics (issue 5, "Fault plans").

The pure core (latency release times, bandwidth schedule, slicer cuts, data limit) is
property-tested; the proxy is tested over real loopback sockets against a tiny echo server.
Timing checks are lower bounds only ("the echo arrives no earlier than the latency"), never
"faster than" claims; every wait is bounded by a multiple of TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.events import Recorder
from harness.toxics import (
    Bandwidth,
    BandwidthPacer,
    DataLimit,
    HalfOpen,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Timeout,
    ToxicProxy,
    ToxicSpec,
    latency_release,
    slice_sizes,
)
from tests.timing import TIMEOUT

#: The size of a toxic's delays in these tests (0.2 s by default), scaled with TIMEOUT.
UNIT = TIMEOUT / 25


# The pure core


@given(
    total=st.integers(0, 5000),
    average=st.integers(1, 300),
    data=st.data(),
    seed=st.integers(0, 2**32),
)
def test_slice_sizes_cover_the_chunk_with_pieces_in_range(
    total: int, average: int, data: st.DataObject, seed: int
) -> None:
    variation = data.draw(st.integers(0, average - 1))
    sizes = slice_sizes(
        total, average_size=average, size_variation=variation, rng=random.Random(seed)
    )
    assert sum(sizes) == total
    assert all(1 <= size <= average + variation for size in sizes)
    payload = random.Random(seed).randbytes(total)
    pieces, offset = [], 0
    for size in sizes:
        pieces.append(payload[offset : offset + size])
        offset += size
    assert b"".join(pieces) == payload


@given(limit=st.integers(0, 500), chunks=st.lists(st.integers(0, 200), max_size=20))
def test_data_limit_forwards_a_prefix_never_more_than_the_limit(
    limit: int, chunks: list[int]
) -> None:
    state = DataLimit(limit)
    allowed = [state.take(size) for size in chunks]
    assert all(0 <= a <= size for a, size in zip(allowed, chunks, strict=True))
    assert sum(allowed) == min(limit, sum(chunks))
    # A prefix: once a chunk was cut short, nothing after it passes.
    cut = next(
        (i for i, (a, size) in enumerate(zip(allowed, chunks, strict=True)) if a < size), None
    )
    if cut is not None:
        assert all(a == 0 for a in allowed[cut + 1 :])
    assert state.exhausted == (sum(chunks) >= limit)


@given(
    rate=st.floats(100, 1e6),
    arrivals=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 5000)), min_size=1, max_size=12),
)
def test_bandwidth_schedule_never_exceeds_the_rate(
    rate: float, arrivals: list[tuple[float, int]]
) -> None:
    pacer = BandwidthPacer(rate)
    now, releases = 0.0, []
    for gap, size in arrivals:
        now += gap
        pieces = pacer.schedule(now, size)
        assert sum(piece for _, piece in pieces) == size
        assert all(1 <= piece <= pacer.max_piece for _, piece in pieces)
        # Each piece leaves no earlier than it could have crossed the link after arriving.
        assert all(release >= now + piece / rate - 1e-9 for release, piece in pieces)
        releases.extend(pieces)
    times = [t for t, _ in releases]
    assert times == sorted(times)
    # Over any span between two releases i < j, no more than rate * span bytes leave after
    # i: that is, sent_k / rate - t_k never increases along k, which is checked pairwise
    # for neighbours (and so holds for every pair) and from the first release to each.
    sent = 0
    for k in range(1, len(releases)):
        (t_before, _), (t_k, piece) = releases[k - 1], releases[k]
        assert piece <= rate * (t_k - t_before) * (1 + 1e-9) + 1e-6
        sent += piece
        assert sent <= rate * (t_k - releases[0][0]) * (1 + 1e-9) + 1e-6


@given(
    latency=st.floats(0, 10),
    jitter=st.floats(0, 10),
    chunks=st.lists(st.tuples(st.floats(0, 1), st.floats(-1, 1)), min_size=1, max_size=20),
)
def test_latency_keeps_order_and_bounds(
    latency: float, jitter: float, chunks: list[tuple[float, float]]
) -> None:
    arrival, previous = 0.0, -math.inf
    for gap, u in chunks:
        arrival += gap
        release = latency_release(
            arrival=arrival, previous=previous, latency_s=latency, jitter_s=jitter, u=u
        )
        assert release >= previous
        assert release >= arrival + max(0.0, latency - jitter) - 1e-9
        assert release <= max(previous, arrival + latency + jitter) + 1e-9
        previous = release


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Latency(-1), "latency_s"),
        (lambda: Latency(0.1, math.nan), "jitter_s"),
        (lambda: Bandwidth(0), "rate_kb_per_s"),
        (lambda: Timeout(math.inf), "timeout_s"),
        (lambda: ResetPeer(-0.5), "timeout_s"),
        (lambda: Slicer(0), "average_size"),
        (lambda: Slicer(10, 10), "size_variation"),
        (lambda: Slicer(10, 2, -1), "delay_s"),
        (lambda: LimitData(-1), "bytes"),
        (lambda: LimitData(1.5), "bytes"),  # type: ignore[arg-type]
        (lambda: SlowClose(True), "delay_s"),
        (lambda: Latency("1"), "latency_s"),  # type: ignore[arg-type]
    ],
)
def test_bad_toxic_values_are_config_errors(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


#: How many positional arguments each toxic takes (fewest, most).
ARITY: dict[Any, tuple[int, int]] = {
    Latency: (1, 2),
    Bandwidth: (1, 1),
    Timeout: (0, 1),
    ResetPeer: (0, 1),
    Slicer: (1, 3),
    LimitData: (1, 1),
    SlowClose: (1, 1),
}
ANY_VALUE = st.one_of(st.floats(), st.integers(-10, 10**6), st.booleans(), st.none(), st.text())


@given(kind=st.sampled_from(list(ARITY)), data=st.data())
def test_any_toxic_arguments_build_or_raise_config_error(kind: Any, data: st.DataObject) -> None:
    low, high = ARITY[kind]
    args = data.draw(st.lists(ANY_VALUE, min_size=low, max_size=high))
    with contextlib.suppress(ConfigError):
        kind(*args)


# Loopback: a tiny echo server, clients, a proxy.


class EchoServer:
    """Echoes what it receives; with ``greeting``, sends it and closes instead."""

    def __init__(self, *, greeting: bytes | None = None) -> None:
        self.greeting = greeting
        self.received = bytearray()
        self.closed_at: list[float] = []
        self.changed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
                self.closed_at.append(asyncio.get_running_loop().time())
                return
            while data := await reader.read(65536):
                self.received += data
                self.changed.set()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.closed_at.append(asyncio.get_running_loop().time())
            self.changed.set()

    async def wait_received(self, n: int) -> None:
        while len(self.received) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)

    async def wait_handler_done(self) -> None:
        while not self.closed_at:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._server.wait_closed()


class Clients:
    def __init__(self) -> None:
        self._writers: list[asyncio.StreamWriter] = []

    async def connect(self, proxy: ToxicProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", proxy.port), TIMEOUT
        )
        self._writers.append(writer)
        return reader, writer

    async def aclose(self) -> None:
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[ToxicProxy]:
    async with ToxicProxy("127.0.0.1", echo.port, name="echo", rng=random.Random(7)) as p:
        yield p


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    c = Clients()
    yield c
    await c.aclose()


def now() -> float:
    return asyncio.get_running_loop().time()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def assert_silent(reader: asyncio.StreamReader) -> None:
    """Nothing arrives, not even an end of stream, for a while."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), UNIT)


# The proxy


async def test_passes_bytes_both_ways_and_records_without_payload(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    payload = b"payload-that-must-stay-off-the-timeline"
    assert await round_trip(reader, writer, payload) == payload
    connect = await proxy.recorder.wait_for("net.connect", timeout=TIMEOUT)
    assert connect.ok is True and connect.conn == "echo-1"
    assert connect.get("upstream") == f"127.0.0.1:{proxy.upstream_port}"
    assert proxy.connections == ("echo-1",)
    writer.close()
    closed = await proxy.recorder.wait_for("net.close", timeout=TIMEOUT, conn="echo-1")
    assert closed.reason == "eof"
    assert (closed.get("bytes_up"), closed.get("bytes_down")) == (len(payload), len(payload))
    assert all("payload-that" not in str(event) for event in proxy.recorder)


async def test_latency_delays_the_echo_at_least_latency_minus_jitter(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    proxy.add(Latency(UNIT, UNIT / 4))
    started = now()
    assert await round_trip(reader, writer, b"ping") == b"ping"
    assert now() - started >= UNIT - UNIT / 4
    event = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="delay")
    assert event.get("type") == "latency" and event.get("stream") == "downstream"


async def test_latency_with_jitter_keeps_the_byte_order(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    proxy.add(Latency(UNIT / 10, UNIT / 10), direction="both")
    payload = b"".join(f"<{i}>".encode() for i in range(200))
    for i in range(0, len(payload), 37):
        writer.write(payload[i : i + 37])
        await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT) == payload


async def test_removing_a_latency_releases_the_chunk_it_holds(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    name = proxy.add(Latency(TIMEOUT * 10))
    writer.write(b"held")
    await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="delay")
    proxy.remove(name)
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"held"


async def test_bandwidth_delivers_everything_in_order_no_faster_than_the_rate(
    proxy: ToxicProxy, clients: Clients
) -> None:
    rate_kb = 100
    payload = random.Random(1).randbytes(int(UNIT * rate_kb * 1000))
    reader, writer = await clients.connect(proxy)
    proxy.add(Bandwidth(rate_kb))
    started = now()
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT) == payload
    assert now() - started >= len(payload) / (rate_kb * 1000)
    pace = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="pace")
    assert pace.get("pieces", 0) >= 1


async def test_timeout_zero_is_a_black_hole_until_removed(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"before") == b"before"
    name = proxy.add(Timeout(0))  # on a live connection
    writer.write(b"lost")
    drop = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="drop")
    assert drop.get("bytes") == 4
    await assert_silent(reader)  # no data, and the connection stays open
    proxy.remove(name)
    assert await read_to_eof(reader) == b""  # Toxiproxy's cleanup closes what it held
    closed = await proxy.recorder.wait_for("net.close", timeout=TIMEOUT)
    assert closed.reason == "toxic-removed"


async def test_timeout_closes_the_connection_after_timeout(
    proxy: ToxicProxy, echo: EchoServer, clients: Clients
) -> None:
    proxy.add(Timeout(UNIT), direction="upstream")
    started = now()
    reader, writer = await clients.connect(proxy)
    writer.write(b"never arrives")
    assert await read_to_eof(reader) == b""
    assert now() - started >= UNIT
    assert echo.received == b""
    closed = await proxy.recorder.wait_for("net.close", timeout=TIMEOUT)
    assert closed.reason == "toxic-timeout"


async def test_reset_peer_resets_the_client_after_its_timeout(
    proxy: ToxicProxy, clients: Clients
) -> None:
    proxy.add(ResetPeer(UNIT))
    reader, writer = await clients.connect(proxy)
    started = now()
    writer.write(b"hello")
    with pytest.raises(ConnectionResetError):
        await read_to_eof(reader)
    assert now() - started >= UNIT
    closed = await proxy.recorder.wait_for("net.close", timeout=TIMEOUT)
    assert (closed.reason, closed.get("rst")) == ("toxic-reset-peer", True)


async def test_slicer_cuts_chunks_and_keeps_the_bytes(proxy: ToxicProxy, clients: Clients) -> None:
    proxy.add(Slicer(average_size=16, size_variation=8, delay_s=UNIT / 200))
    reader, writer = await clients.connect(proxy)
    payload = random.Random(2).randbytes(2000)
    assert await round_trip(reader, writer, payload) == payload
    sliced = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="slice")
    assert sliced.get("pieces", 0) > 1


async def test_limit_data_passes_exactly_n_bytes_then_closes(
    proxy: ToxicProxy, clients: Clients
) -> None:
    proxy.add(LimitData(10))
    reader, writer = await clients.connect(proxy)
    payload = bytes(range(100))
    writer.write(payload)
    assert await read_to_eof(reader) == payload[:10]
    closed = await proxy.recorder.wait_for("net.close", timeout=TIMEOUT)
    assert (closed.reason, closed.get("bytes_down")) == ("toxic-limit-data", 10)


async def test_limit_data_upstream_limits_what_the_server_receives(
    proxy: ToxicProxy, echo: EchoServer, clients: Clients
) -> None:
    proxy.add(LimitData(5), direction="upstream")
    reader, writer = await clients.connect(proxy)
    writer.write(b"0123456789")
    assert b"01234".startswith(await read_to_eof(reader))  # the echo may be cut short
    await echo.wait_handler_done()
    assert echo.received == b"01234"


async def test_slow_close_delays_the_close(clients: Clients) -> None:
    server = EchoServer(greeting=b"bye")
    await server.start()
    try:
        async with ToxicProxy("127.0.0.1", server.port, name="bye") as proxy:
            proxy.add(SlowClose(UNIT))
            reader, _ = await clients.connect(proxy)
            assert await read_to_eof(reader) == b"bye"
            eof_at = now()
            await server.wait_handler_done()
            assert eof_at >= server.closed_at[0] + UNIT
            event = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="slow-close")
            assert event.get("delay_s") == UNIT
    finally:
        await server.aclose()


async def test_half_open_holds_both_ways_and_heals_when_removed(
    proxy: ToxicProxy, echo: EchoServer, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"one") == b"one"
    name = proxy.add(HalfOpen())
    assert name == "half_open_both"
    writer.write(b"two")
    hold = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="hold")
    assert hold.get("stream") == "upstream"
    await assert_silent(reader)  # no data, no end of stream: the socket is open
    assert echo.received == b"one"
    proxy.remove(name)
    assert await asyncio.wait_for(reader.readexactly(3), TIMEOUT) == b"two"


async def test_toxics_apply_to_live_connections_and_stop_when_removed(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"a") == b"a"
    name = proxy.add(Latency(UNIT), name="slow")
    assert [spec.name for spec in proxy.toxics] == ["slow"]
    started = now()
    assert await round_trip(reader, writer, b"b") == b"b"
    assert now() - started >= UNIT
    proxy.remove(name)
    assert proxy.toxics == ()
    assert await round_trip(reader, writer, b"c") == b"c"


async def test_composed_chains_keep_every_byte(proxy: ToxicProxy, clients: Clients) -> None:
    proxy.add(Slicer(7, 3), direction="both")
    proxy.add(Latency(UNIT / 20, UNIT / 20), direction="both")
    proxy.add(Bandwidth(1000), name="bw_up", direction="upstream")
    proxy.add(Bandwidth(1000), name="bw_down")
    reader, writer = await clients.connect(proxy)
    payload = random.Random(3).randbytes(5000)
    assert await round_trip(reader, writer, payload) == payload


async def test_toxicity_zero_never_applies(proxy: ToxicProxy, clients: Clients) -> None:
    proxy.add(Timeout(0), toxicity=0.0)
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"fine") == b"fine"
    attach = await proxy.recorder.wait_for("net.toxic", timeout=TIMEOUT, action="attach")
    assert attach.get("applied") is False


async def test_disable_refuses_and_closes_enable_listens_again(
    proxy: ToxicProxy, clients: Clients
) -> None:
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"x") == b"x"
    port = proxy.port
    proxy.disable()
    assert not proxy.enabled
    assert await read_to_eof(reader) == b""
    with pytest.raises(ConnectionRefusedError):
        await clients.connect(proxy)
    proxy.enable()
    assert proxy.port == port
    reader, writer = await clients.connect(proxy)
    assert await round_trip(reader, writer, b"y") == b"y"
    closed = proxy.recorder.first("net.close")
    assert closed is not None and closed.reason == "proxy-disabled"


async def test_reset_all_resets_every_live_connection(proxy: ToxicProxy, clients: Clients) -> None:
    pairs = [await clients.connect(proxy) for _ in range(2)]
    for reader, writer in pairs:
        assert await round_trip(reader, writer, b"z") == b"z"
    assert proxy.reset_all() == 2
    for reader, _ in pairs:
        with pytest.raises(ConnectionResetError):
            await read_to_eof(reader)
    assert proxy.connections == ()


async def test_unreachable_upstream_closes_the_client(clients: Clients) -> None:
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with ToxicProxy("127.0.0.1", dead_port, name="dead") as proxy:
        reader, _ = await clients.connect(proxy)
        assert await read_to_eof(reader) == b""
        event = await proxy.recorder.wait_for("net.connect", timeout=TIMEOUT)
        assert (event.ok, event.reason) == (False, "upstream-unreachable")


async def test_closing_the_proxy_ends_every_connection_and_task(
    echo: EchoServer, clients: Clients
) -> None:
    recorder = Recorder()
    async with ToxicProxy("127.0.0.1", echo.port, name="closing", recorder=recorder) as proxy:
        proxy.add(HalfOpen())
        proxy.add(Timeout(TIMEOUT * 10), direction="upstream", name="slow-timer")
        reader, writer = await clients.connect(proxy)
        writer.write(b"held")
        await recorder.wait_for("net.toxic", timeout=TIMEOUT, action="hold")
    assert await read_to_eof(reader) == b""
    assert recorder.first("net.close", reason="proxy-closed") is not None
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("closing-")]
    assert leftovers == []


async def test_misuse_is_a_config_error(proxy: ToxicProxy) -> None:
    proxy.add(Latency(0.1))
    with pytest.raises(ConfigError, match="already has"):
        proxy.add(Latency(0.2))
    with pytest.raises(ConfigError, match="no toxic"):
        proxy.remove("nope")
    with pytest.raises(ConfigError, match="direction"):
        proxy.add(Latency(0.1), direction="sideways", name="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="toxicity"):
        proxy.add(Latency(0.1), toxicity=1.5, name="y")
    with pytest.raises(ConfigError, match="not a toxic"):
        proxy.add("latency", name="z")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="name"):
        ToxicProxy("127.0.0.1", 1, name="")
    proxy.clear()
    assert proxy.toxics == ()
    assert ToxicSpec("a", Latency(0), "both", 1.0).direction == "both"
