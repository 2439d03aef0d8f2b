"""The MQTT topics of one Dyson air device (dyson.md §2).

Everything lives under ``<root>/<serial>/``, where ``<root>`` is the manifest's
``mqttRootTopicLevel``, **not always the product type**: a TP11 reports type ``438``,
variant ``M`` and root ``438M`` (§2 "Root rule"). A client that derives the root from its
own type table subscribes under ``438/...`` and is dropped by the device (§1.4
``foreign_subscribe_drop``); :meth:`DeviceTopics.classify_filter` is the pure decision the
local broker takes for each SUBSCRIBE filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How the device's broker sees a subscription filter: under its own ``<root>/<serial>/``,
#: the bare ``#`` (§1.4 ``hash_wildcard``), or anything else (§1.4 ``foreign_subscribe_drop``).
FilterClass = Literal["own", "hash", "foreign"]


@dataclass(frozen=True)
class DeviceTopics:
    """Topic names of one device: ``command`` in, ``status/*`` out (§2 table)."""

    root: str
    serial: str

    @property
    def prefix(self) -> str:
        """``<root>/<serial>/``: every topic of the device starts with it."""
        return f"{self.root}/{self.serial}/"

    @property
    def command(self) -> str:
        """Client → device: REQUEST-*, STATE-SET, LOCATE, SCHEDULE-SET (§2, §4.2)."""
        return f"{self.prefix}command"

    @property
    def current(self) -> str:
        """CURRENT-STATE, STATE-CHANGE, ENVIRONMENTAL-CURRENT-SENSOR-DATA, LOCATION (§2)."""
        return f"{self.prefix}status/current"

    @property
    def faults(self) -> str:
        """CURRENT-FAULTS, FAULTS-CHANGE (§2; opendyson's singular ``status/fault`` is wrong)."""
        return f"{self.prefix}status/faults"

    @property
    def connection(self) -> str:
        """HELLO, GOODBYE, GONE-AWAY (the last will), IM-BACK (§2, §4.3)."""
        return f"{self.prefix}status/connection"

    @property
    def software(self) -> str:
        """Firmware-update progress; schema **(unknown)** (§2)."""
        return f"{self.prefix}status/software"

    @property
    def scheduler(self) -> str:
        """SCHEDULE-UPDATED ``{version}`` (§2)."""
        return f"{self.prefix}status/scheduler"

    @property
    def summary(self) -> str:
        """hass-dyson subscribes; no payload was ever seen (§2)."""
        return f"{self.prefix}status/summary"

    def classify_filter(self, topic_filter: str) -> FilterClass:
        """Whether a SUBSCRIBE filter is the device's own, the bare ``#``, or foreign (§1.4).

        ``<root>/<serial>/#`` is the device's own and delivers (hass-dyson uses it in the
        field); ``438/<sn>/status/current`` on a ``438M`` device is foreign.
        """
        if topic_filter == "#":
            return "hash"
        if topic_filter.startswith(self.prefix):
            return "own"
        return "foreign"
