"""Shapes of the messages a Dyson air device publishes, and the device's time formats.

Pure builders: each takes plain values and returns the JSON object exactly as the device
sends it (dyson.md §4.3); :func:`encode` turns it into the compact bytes real devices send
(``{"msg":"CURRENT-STATE","time":...}``, no spaces, as in the captures of §3).
:class:`Outgoing` is one publish the device asks its shell (local broker or cloud link) to
make: device messages go out at QoS 0 and are never retained (§1.5).

Time formats (§4.1): air devices write ``2018-06-06T12:41:52.000Z``; the TP02 ``475``
capture numbers the milliseconds of messages sent within one second ``.000``, ``.001``,
``.002``... (thoukydides ``mqtt-logs/475.jsonl``: CURRENT-FAULTS ``.000Z``, CURRENT-STATE
``.001Z``); robots omit the milliseconds (``2026-07-17T07:19:18Z``). :class:`TimeStamper`
produces each style from an explicit ``now`` (epoch seconds, UTC).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The ``mode-reason`` values of §4.1 (who caused a change).
MODE_REASONS = frozenset({"LAPP", "RAPP", "LSCH", "PRC", "PUI", "NONE"})
#: The ``state-reason`` values of §4.1.
STATE_REASONS = frozenset({"MODE", "ENV", "FLT", "NONE"})
#: The fault categories of CURRENT-FAULTS / FAULTS-CHANGE, wire keys in kebab-case (§4.3).
FAULT_CATEGORIES = ("product-errors", "product-warnings", "module-errors", "module-warnings")
#: ``GOODBYE.reason`` values (§4.3).
GOODBYE_REASONS = frozenset({"SWITCH_TO_AP", "UNKNOWN"})


class TimeStyle(enum.Enum):
    """How a device writes the ``time`` of its messages (§4.1)."""

    #: ``...T12:41:52.000Z``: v2 air devices (every capture of §3 A, B, C, E).
    ZERO_MILLIS = "zero-millis"
    #: ``.000Z``, ``.001Z``, ... for successive messages within one second (TP02 ``475``).
    SEQUENCE_MILLIS = "sequence-millis"
    #: ``...T07:19:18Z``: robots.
    NO_MILLIS = "no-millis"


def format_device_time(now: float, style: TimeStyle, *, sequence: int = 0) -> str:
    """``now`` (epoch seconds) as the device writes it; ``sequence`` is the message's number
    within its second, used by :attr:`TimeStyle.SEQUENCE_MILLIS` only."""
    moment = dt.datetime.fromtimestamp(int(now // 1), tz=dt.UTC)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if style is TimeStyle.NO_MILLIS:
        return f"{base}Z"
    millis = min(sequence, 999) if style is TimeStyle.SEQUENCE_MILLIS else 0
    return f"{base}.{millis:03d}Z"


class TimeStamper:
    """Stamps successive messages in one device's :class:`TimeStyle` (state: the counter)."""

    def __init__(self, style: TimeStyle) -> None:
        self.style = style
        self._second: int | None = None
        self._count = 0

    def stamp(self, now: float) -> str:
        """The ``time`` of a message sent at ``now``; each call is one message."""
        second = int(now // 1)
        if second != self._second:
            self._second = second
            self._count = 0
        else:
            self._count += 1
        return format_device_time(now, self.style, sequence=self._count)


@dataclass(frozen=True)
class Outgoing:
    """One message the device publishes: QoS 0, never retained (§1.5)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False

    def message(self) -> dict[str, Any]:
        """The payload as a JSON object (every device message is one, §4.1)."""
        decoded = json.loads(self.payload)
        if not isinstance(decoded, dict):  # pragma: no cover - the builders make objects
            raise TypeError("device payloads are JSON objects")
        return decoded

    @property
    def msg(self) -> str:
        """The message's ``msg`` (every message has one, §4.1)."""
        return str(self.message()["msg"])

    def with_time(self, time: str) -> Outgoing:
        """The same message stamped ``time`` instead, keys in place: the broker's ``reorder``
        quirk sends some messages with an older ``time`` (§1.4). A message without ``time``
        (GONE-AWAY) comes back unchanged."""
        message = self.message()
        if "time" not in message:
            return self
        message["time"] = time
        return Outgoing(self.topic, encode(message), self.qos, self.retain)


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact JSON, keys in the given order, as the devices send it (§3 captures)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def current_state(
    *,
    time: str,
    mode_reason: str,
    state_reason: str,
    top_level: Mapping[str, str],
    product_state: Mapping[str, str],
    scheduler: Mapping[str, str],
) -> dict[str, Any]:
    """CURRENT-STATE (§4.3): the full state, ``mode-reason`` of the last change."""
    return {
        "msg": "CURRENT-STATE",
        "time": time,
        "mode-reason": mode_reason,
        "state-reason": state_reason,
        **top_level,
        "product-state": dict(product_state),
        "scheduler": dict(scheduler),
    }


def state_change(
    *,
    time: str,
    mode_reason: str,
    state_reason: str,
    old: Mapping[str, str],
    new: Mapping[str, str],
    scheduler: Mapping[str, str],
) -> dict[str, Any]:
    """STATE-CHANGE (§4.3): **every** product-state field as an ``[old, new]`` pair.

    Not only the changed ones: libdyson-neon's ``_update_status`` replaces its whole state
    with ``product-state``, so a partial message would wipe fields there.
    """
    return {
        "msg": "STATE-CHANGE",
        "time": time,
        "mode-reason": mode_reason,
        "state-reason": state_reason,
        "product-state": {name: [old[name], new[name]] for name in new},
        "scheduler": dict(scheduler),
    }


def environmental_data(*, time: str, data: Mapping[str, str]) -> dict[str, Any]:
    """ENVIRONMENTAL-CURRENT-SENSOR-DATA (§4.3): readings under ``data``."""
    return {"msg": "ENVIRONMENTAL-CURRENT-SENSOR-DATA", "time": time, "data": dict(data)}


def current_faults(*, time: str, faults: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """CURRENT-FAULTS (§4.3): each category's keys with ``OK``/``FAIL``."""
    return {"msg": "CURRENT-FAULTS", "time": time, **{c: dict(k) for c, k in faults.items()}}


def faults_change(
    *, time: str, changes: Mapping[str, Mapping[str, tuple[str, str]]]
) -> dict[str, Any]:
    """FAULTS-CHANGE (§4.3): the categories with ``[old, new]`` pairs."""
    return {
        "msg": "FAULTS-CHANGE",
        "time": time,
        **{c: {k: [old, new] for k, (old, new) in keys.items()} for c, keys in changes.items()},
    }


def location(*, time: str, apos: str) -> dict[str, Any]:
    """LOCATION (§4.3, TP11): the actual oscillation position ``apos``."""
    return {"msg": "LOCATION", "apos": apos, "time": time}


def schedule_updated(*, time: str, version: str) -> dict[str, Any]:
    """SCHEDULE-UPDATED ``{version}`` on ``status/scheduler`` (§2)."""
    return {"msg": "SCHEDULE-UPDATED", "time": time, "version": version}


def hello(
    *,
    time: str,
    serial: str,
    version: str,
    mac_address: str,
    reset_source: str = "PWUP",
    protocol: str = "1.0.0",
) -> dict[str, Any]:
    """HELLO on ``status/connection`` (§4.3; thoukydides ``dyson-air-msg-types.ts``)."""
    return {
        "msg": "HELLO",
        "protocol": protocol,
        "serialNumber": serial,
        "version": version,
        "macAddress": mac_address,
        "resetSource": reset_source,
        "time": time,
    }


def goodbye(*, time: str, reason: str) -> dict[str, Any]:
    """GOODBYE (§4.3); ``reason`` is ``SWITCH_TO_AP`` or ``UNKNOWN``."""
    return {"msg": "GOODBYE", "reason": reason, "time": time}


def gone_away() -> dict[str, Any]:
    """GONE-AWAY, the last will: the only message without ``time`` (§4.3)."""
    return {"msg": "GONE-AWAY"}


def im_back(*, time: str) -> dict[str, Any]:
    """IM-BACK (§4.3)."""
    return {"msg": "IM-BACK", "time": time}
