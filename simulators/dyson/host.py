"""One running device and the places its messages go: the local broker, the cloud link.

A real Dyson device publishes every message both on its own broker (port 1883) and, when
it has an Internet link, on AWS IoT (dyson.md §2, §7: "the same topics as locally"; a
client of the cloud sees the device exactly as a client of the local broker does). The
device logic (:class:`~simulators.dyson.device.DysonDevice`) is sans-I/O, so something
must own it, feed it commands with the world clock's ``now``, run its timers, record what
it did and fan its messages out. That is :class:`DeviceHost`::

    host = DeviceHost(device, recorder=world.recorder)
    host.add_sink(cloud_link)            # anything with .name and .publish(Outgoing)
    host.add_sink(local_broker)
    async with host:                     # runs device.tick() when next_deadline() is due
        ...
        host.handle(topic, payload, via="cloud")   # a command from a client of one sink
        host.run(lambda now: device.set_environment({"p25r": 80}, now=now))  # a control

Every answer goes to **every** sink, whichever sink the command came through: a STATE-SET
sent over the cloud changes the device for local clients too, so they see the
STATE-CHANGE (dyson.md §4.4). Messages about one connection (HELLO, IM-BACK, GOODBYE and
the GONE-AWAY last will on ``status/connection``, §4.3) are not device output: each sink
publishes its own.

A sink's :meth:`DeviceSink.publish` must not block and must not raise: a sink that is
offline drops the message (QoS 0, §1.5), as a device does. A sink that raises anyway is
recorded as ``dyson.host.error`` and the other sinks still get the message.

Events: the device's own (``dyson.command``, ``dyson.command.ignored``,
``dyson.state.changed``, ``dyson.faults.changed``, ``dyson.sensors.settled``; see
:mod:`simulators.dyson.device`) with ``via`` naming the sink a command came through
(``None`` for timers and harness controls).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

from harness.clock import WorldClock
from harness.events import Recorder
from simulators.dyson.device import DeviceResult, DysonDevice
from simulators.dyson.messages import Outgoing

__all__ = ["DeviceHost", "DeviceSink"]


@runtime_checkable
class DeviceSink(Protocol):
    """Where a device's messages are published: a local broker, a cloud link."""

    #: Short name for events (``"local"``, ``"cloud"``).
    name: str

    def publish(self, message: Outgoing) -> None:
        """Publish ``message`` now if connected, else drop it; never blocks or raises."""
        ...


class DeviceHost:
    """Owns one :class:`DysonDevice`: commands in, messages out to every sink, timers run."""

    def __init__(
        self,
        device: DysonDevice,
        *,
        recorder: Recorder | None = None,
        clock: WorldClock | None = None,
    ) -> None:
        self.device = device
        self.recorder = recorder if recorder is not None else Recorder(clock=clock)
        self.clock = clock if clock is not None else self.recorder.clock
        self._sinks: list[DeviceSink] = []
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # Identity

    @property
    def serial(self) -> str:
        return self.device.serial

    @property
    def sinks(self) -> tuple[DeviceSink, ...]:
        return tuple(self._sinks)

    # Sinks

    def add_sink(self, sink: DeviceSink) -> Callable[[], None]:
        """Send the device's messages to ``sink`` too; returns a function that stops it."""
        self._sinks.append(sink)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._sinks.remove(sink)

        return remove

    # The device

    def handle(self, topic: str, payload: bytes, *, via: str | None = None) -> DeviceResult:
        """A command a client published to ``topic`` through sink ``via`` (§4.4)."""
        result = self.device.handle(topic, payload, now=self.clock.now())
        return self.apply(result, via=via)

    def run(self, action: Callable[[float], DeviceResult]) -> DeviceResult:
        """Run a harness control such as ``lambda now: device.raise_fault("fltr", now=now)``
        with the world clock's ``now``, and publish what it produced."""
        return self.apply(action(self.clock.now()))

    def tick(self) -> DeviceResult:
        """Catch up with the world clock now (sleep timer, warm-up, pushed sensor data);
        the background ticker does this by itself, a test that shifts the clock may call it."""
        return self.apply(self.device.tick(self.clock.now()))

    def apply(self, result: DeviceResult, *, via: str | None = None) -> DeviceResult:
        """Record ``result``'s events and publish its messages on every sink, in order."""
        for event in result.events:
            self.recorder.record(event.kind, via=via, **event.fields())
        for message in result.outgoing:
            self.publish(message)
        self._wake.set()  # a change may move the next deadline
        return result

    def publish(self, message: Outgoing) -> None:
        """Fan one message out to every sink."""
        for sink in list(self._sinks):
            try:
                sink.publish(message)
            except Exception as exc:  # a broken sink must not starve the others
                self.recorder.record(
                    "dyson.host.error", serial=self.serial, sink=sink.name, explain=repr(exc)
                )

    # The ticker

    async def __aenter__(self) -> DeviceHost:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Run the device's timers in the background (needs a running event loop)."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(), name=f"dyson-{self.serial}")

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            # asyncio.wait, not a suppressed await: a cancellation of stop()'s caller
            # must reach the caller, not be taken for the ticker's own.
            await asyncio.wait({ticker})
            if not ticker.cancelled():
                ticker.result()  # a bug in the timers surfaces here

    async def _tick_forever(self) -> None:
        # The wait is asyncio.timeout around a direct await, not asyncio.wait_for: on Python
        # 3.11 wait_for drops a cancellation that arrives in the same turn as the wake-up,
        # and stop() then waited for ever. The loop also ends once stop() has let go of it.
        while self._ticker is asyncio.current_task():
            self._wake.clear()
            deadline = self.device.next_deadline()
            now = self.clock.now()
            if deadline is not None and deadline <= now:
                self.tick()
                await asyncio.sleep(0)
                continue
            delay = None if deadline is None else deadline - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
