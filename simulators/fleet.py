"""A fleet: N simulated Dyson devices in one world, each local, cloud or both.

Issue [dyson] "Serve and fleet": load and soak tests want many devices at once, each on
its own local broker (dyson.md §1), connected to the fake AWS IoT gateway as a thing
(§7), or both. A :class:`Fleet` asks the world's Dyson side
(:class:`simulators.dyson.world.DysonWorld`, started on demand) for ``count`` devices and
stops them again when it ends::

    async with World() as world, Fleet(world, count=50, product_type=("438", "527"),
                                      mode="cloud") as fleet:
        await fleet.wait_connected(timeout=10)
        for device in fleet:               # SimulatedDevice: serial, topics, cloud, local
            ...

Product types and modes given as sequences are dealt out in turn (``("438", "527")``
gives 438, 527, 438, ...). Devices start ``concurrency`` at a time: each start mints a
client certificate and opens a local broker and a TLS connection, and a fleet of hundreds
should not stampede the gateway with simultaneous handshakes (AWS allows 500 CONNECTs a
second per account, aws-iot.md §4.4; the gateway does not model that quota).

Every device is also in the world's Dyson account, so its manifest lists the whole fleet,
and in the world descriptor's ``dyson.devices``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError
from simulators.dyson.quirks import LocalQuirks
from simulators.dyson.world import MODES, DysonDeviceSpec, Mode, SimulatedDevice

if TYPE_CHECKING:
    from harness.world import World

__all__ = ["Fleet"]


def _cycle(value: str | Sequence[str], what: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ConfigError(f"a fleet needs at least one {what}")
    return values


class Fleet:
    """``count`` simulated Dyson devices in ``world``; an async context manager."""

    def __init__(
        self,
        world: World,
        *,
        count: int,
        product_type: str | Sequence[str] = "438",
        mode: Mode | Sequence[Mode] = "both",
        quirks: LocalQuirks | None = None,
        concurrency: int = 16,
    ) -> None:
        if count < 0:
            raise ConfigError(f"a fleet of {count} devices makes no sense")
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        types = _cycle(product_type, "product type")
        modes: list[Mode] = [mode] if isinstance(mode, str) else list(mode)
        if not modes:
            raise ConfigError("a fleet needs at least one mode")
        for name in modes:
            if name not in MODES:
                raise ConfigError(f"fleet mode {name!r}: one of {', '.join(MODES)}")
        self.world = world
        pairs = zip(itertools.cycle(types), itertools.cycle(modes), strict=False)
        self.specs = tuple(
            DysonDeviceSpec(
                product_type=kind,
                mode=how,
                quirks=quirks if quirks is not None else LocalQuirks(),
            )
            for kind, how in itertools.islice(pairs, count)
        )
        self.concurrency = concurrency
        self.devices: list[SimulatedDevice] = []

    # Lifecycle

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every device (``concurrency`` at a time), in the order of :attr:`specs`."""
        dyson = await self.world.enable_dyson()
        gate = asyncio.Semaphore(self.concurrency)
        started: list[SimulatedDevice | None] = [None] * len(self.specs)

        async def one(index: int, spec: DysonDeviceSpec) -> None:
            async with gate:
                started[index] = await dyson.add_device(spec)

        results = await asyncio.gather(
            *(one(i, spec) for i, spec in enumerate(self.specs)), return_exceptions=True
        )
        self.devices = [device for device in started if device is not None]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]
        self.world.recorder.record(
            "dyson.fleet.started",
            count=len(self.devices),
            product_types=sorted({s.product_type for s in self.specs}),
            modes=sorted({s.mode for s in self.specs}),
        )

    async def stop(self) -> None:
        """Stop every device of the fleet (cloud links say GOODBYE) and unlist it."""
        dyson = self.world.dyson
        devices, self.devices = self.devices, []
        if dyson is None or not devices:
            return
        await asyncio.gather(
            *(dyson.remove_device(d.serial) for d in devices), return_exceptions=True
        )
        self.world.recorder.record("dyson.fleet.stopped", count=len(devices))

    async def wait_connected(self, timeout: float) -> None:
        """Wait until every device with a cloud link is online."""
        links = [d.cloud for d in self.devices if d.cloud is not None]
        await asyncio.wait_for(
            asyncio.gather(*(link.wait_connected(timeout) for link in links)), timeout
        )

    # Views

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[SimulatedDevice]:
        return iter(list(self.devices))

    def __getitem__(self, index: int) -> SimulatedDevice:
        return self.devices[index]

    @property
    def serials(self) -> list[str]:
        return [d.serial for d in self.devices]

    def descriptor(self) -> list[dict[str, Any]]:
        """The fleet's entries of the descriptor's ``dyson.devices``."""
        return [d.descriptor() for d in self.devices]
