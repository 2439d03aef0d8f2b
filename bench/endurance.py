"""Endurance: reconnecting clients, some misbehaving, against one gateway process.

Issue [bench] item 5. Three kinds of clients run at once until the deadline:

* well-behaved **pairs**: a long-lived subscriber and a publisher that reconnects every
  few seconds (mTLS and SigV4 in turn) and publishes QoS 1 at a fixed rate; every
  PUBACKed message must reach the subscriber (the loss count), and its latency is kept;
* **churners**: connect (SigV4, custom auth or mTLS), subscribe, stay a while, leave
  (cleanly, or by vanishing);
* **misbehaving** clients: slow upgrades (the request trickled over seconds), stalled
  upgrades (half a request, then silence until the gateway gives up), garbage WebSocket
  frames after CONNACK, and vanishing mid-packet (half a PUBLISH, then a reset).

The gateway's stats (RSS, tasks, descriptors, sessions, recorded events) are sampled every
second. A quiet run (the pairs alone) gives the reference p99. Everything is bounded: each
client loop checks the deadline, each wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import (
    Connection,
    Connector,
    LoadError,
    Target,
    percentile,
    read_stamp,
    stamp,
    upgrade_request,
    ws_frame,
)
from harness.mqtt.codec import Publish, encode

Stats = Callable[[], dict[str, Any]]


@dataclass
class PairLog:
    acked: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    pending: dict[int, int] = field(default_factory=dict)  # packet id → seq


@dataclass
class EnduranceResult:
    duration: float = 0.0
    pairs: int = 0
    churners: int = 0
    misbehaving: int = 0
    published: int = 0
    acked: int = 0
    lost: int = 0
    connects: int = 0
    connect_failures: dict[str, int] = field(default_factory=dict)
    misbehaviours: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: The mix: messages/s per pair, publisher reconnect period, hold and pause ranges.
    mix: dict[str, Any] = field(default_factory=dict)
    #: CPU seconds the load generator used (to tell a saturated client from a server).
    client_cpu_s: float = 0.0

    def fail(self, reason: str) -> None:
        self.connect_failures[reason] = self.connect_failures.get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        return {
            "duration_s": round(self.duration, 1),
            "pairs": self.pairs,
            "churners": self.churners,
            "misbehaving": self.misbehaving,
            "published": self.published,
            "acked": self.acked,
            "lost_qos1": self.lost,
            "connects": self.connects,
            "connect_failures": dict(self.connect_failures),
            "misbehaviours": dict(self.misbehaviours),
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "mix": dict(self.mix),
            "client_cpu_share": round(self.client_cpu_s / self.duration, 3)
            if self.duration
            else None,
        }


async def run(
    targets: dict[str, Target],
    *,
    duration: float,
    pairs: int,
    churners: int,
    misbehaving: int,
    pair_rate: float = 10.0,
    reconnect_every: float = 5.0,
    hold: tuple[float, float] = (2.0, 8.0),
    misbehave_pause: tuple[float, float] = (0.5, 2.0),
    stats: Stats | None = None,
    sample_every: float = 1.0,
) -> EnduranceResult:
    """Run the mix for ``duration`` seconds; ``targets`` holds ``wss-sigv4``, ``wss-custom``
    and ``mtls`` targets of one gateway."""
    result = EnduranceResult(pairs=pairs, churners=churners, misbehaving=misbehaving)
    result.mix = {
        "pair_rate": pair_rate,
        "reconnect_every": reconnect_every,
        "hold": list(hold),
        "misbehave_pause": list(misbehave_pause),
    }
    cpu_started = time.process_time()
    connectors = {kind: Connector(t) for kind, t in targets.items()}
    run_id = f"{os.getpid()}-{random.getrandbits(24):06x}"
    started = time.monotonic()
    deadline = started + duration
    logs = [PairLog() for _ in range(pairs)]
    counter = iter(range(10**9))

    async def open_as(kind: str, name: str) -> Connection | None:
        result.connects += 1
        try:
            return await connectors[kind].open(f"{name}-{next(counter)}", next(counter))
        except LoadError as exc:
            result.fail(exc.reason)
            return None

    async def pause(seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, deadline - time.monotonic())))

    async def pair(i: int) -> None:
        log = logs[i]
        topic = f"endurance/{run_id}/{i}"
        sub = None
        while sub is None and time.monotonic() < deadline:
            sub = await open_as("wss-sigv4", f"sub-{run_id}-{i}")
            if sub is None:
                await pause(0.5)
        if sub is None:
            return

        def received(publish: Publish) -> None:
            stamped = read_stamp(publish.payload)
            if stamped is None:
                return
            sent, _stream, seq = stamped
            log.received.add(seq)
            result.latencies.append((time.monotonic_ns() - sent) / 1e9)

        sub.on_publish = received
        try:
            await asyncio.wait_for(sub.subscribe(topic, 1), 10)
        except (LoadError, TimeoutError):
            result.fail("subscribe")
            await sub.close()
            return
        seq = 0
        kinds = ("mtls", "wss-sigv4")
        round_no = 0
        while time.monotonic() < deadline:
            pub = await open_as(kinds[round_no % 2], f"pub-{run_id}-{i}")
            round_no += 1
            if pub is None:
                await pause(0.5)
                continue

            def acked(packet_id: int, log: PairLog = log) -> None:
                done = log.pending.pop(packet_id, None)
                if done is not None:
                    log.acked.add(done)
                    result.acked += 1

            pub.on_puback = acked
            until = min(time.monotonic() + reconnect_every, deadline)
            next_at = time.monotonic()
            while time.monotonic() < until and not pub.closing:
                seq += 1
                packet_id = pub.publish(topic, stamp(i, seq, 64), 1)
                assert packet_id is not None
                log.pending[packet_id] = seq
                result.published += 1
                next_at += 1.0 / pair_rate
                await pause(next_at - time.monotonic())
            await pause(0.2)  # the last PUBACKs
            log.pending.clear()
            await pub.disconnect(timeout=1.0)
        # Everything acknowledged must arrive: a bounded grace period.
        grace = time.monotonic() + 5.0
        while log.acked - log.received and time.monotonic() < grace:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await sub.disconnect(timeout=1.0)

    async def churner(i: int) -> None:
        kinds = ("wss-sigv4", "wss-custom", "mtls")
        await pause(random.random() * hold[1])
        while time.monotonic() < deadline:
            connection = await open_as(random.choice(kinds), f"churn-{run_id}-{i}")
            if connection is None:
                await pause(1.0)
                continue
            with contextlib.suppress(LoadError, TimeoutError):
                await asyncio.wait_for(
                    connection.subscribe(f"churn/{run_id}/{i}/#", random.choice((0, 1))), 10
                )
            await pause(random.uniform(*hold))
            if random.random() < 0.2:
                connection.abort()
            else:
                await connection.disconnect(timeout=1.0)

    async def misbehave(i: int) -> None:
        await pause(random.random() * hold[1])
        behaviours = ("slow-upgrade", "stalled-upgrade", "garbage-frames", "vanish-mid-packet")
        while time.monotonic() < deadline:
            kind = behaviours[(i + next(counter)) % len(behaviours)]
            result.misbehaviours[kind] = result.misbehaviours.get(kind, 0) + 1
            with contextlib.suppress(LoadError, TimeoutError, ConnectionError, OSError):
                await asyncio.wait_for(_misbehave(kind, connectors, f"bad-{run_id}-{i}"), 15.0)
            await pause(random.uniform(*misbehave_pause))

    async def sampler() -> None:
        if stats is None:
            return
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            sample = await loop.run_in_executor(None, stats)
            sample["t"] = round(time.monotonic() - started, 2)
            result.samples.append(sample)
            await pause(sample_every)

    await asyncio.gather(
        sampler(),
        *(pair(i) for i in range(pairs)),
        *(churner(i) for i in range(churners)),
        *(misbehave(i) for i in range(misbehaving)),
    )
    result.duration = time.monotonic() - started
    result.client_cpu_s = time.process_time() - cpu_started
    result.lost = sum(len(log.acked - log.received) for log in logs)
    return result


async def _misbehave(kind: str, connectors: dict[str, Connector], client_id: str) -> None:
    """One misbehaving connection; returns when it is over (the caller bounds the time)."""
    connector = connectors["wss-sigv4"]
    if kind in ("slow-upgrade", "stalled-upgrade"):
        reader, writer = await connector.open_stream()
        try:
            target, _ = connector.request_target()
            host = connector.target.server_name or connector.target.host
            request = upgrade_request(target, host=host)
            pieces = 4
            step = len(request) // pieces + 1
            chunks = [request[k : k + step] for k in range(0, len(request), step)]
            if kind == "stalled-upgrade":
                writer.write(chunks[0])
                # Silence: the gateway must give up on its own (handshake timeout).
                await reader.read(65536)
                return
            for chunk in chunks:
                writer.write(chunk)
                await asyncio.sleep(0.5)
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        finally:
            writer.close()
        return
    connection = await connector.open(client_id, random.getrandbits(16))
    if kind == "garbage-frames":
        # Random bytes as MQTT: mostly malformed (the gateway closes), sometimes the start
        # of a packet that never completes (the gateway waits, as AWS would, until the
        # keep-alive runs out): either way the client leaves after a moment.
        connection.writer.write(ws_frame(os.urandom(64)))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.ended.wait(), 2.0)
        finally:
            connection.abort()
    else:  # vanish-mid-packet
        packet = encode(Publish("vanish/topic", os.urandom(200), qos=1, packet_id=1))
        connection.writer.write(ws_frame(packet[: len(packet) // 2]))
        await asyncio.sleep(0.05)
        connection.abort()
