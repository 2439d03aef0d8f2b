"""The Dyson air device as a pure state machine: a command in, the device's messages out.

Sans-I/O (DESIGN.md "Sans-I/O core"): :class:`DysonDevice` never touches a socket or a
clock. Its shells (the local broker, the cloud link) pass every command with an explicit
``now`` (epoch seconds, the world clock) and publish what comes back::

    device = DysonDevice(get_profile("438M"), serial="NK6-EU-HAA0000A", now=clock.now())
    result = device.handle("438M/NK6-EU-HAA0000A/command", payload, now=clock.now())
    for out in result.outgoing:            # Outgoing(topic, payload, qos=0, retain=False)
        publish(out)
    for event in result.events:            # CommandHandled, CommandIgnored, ...
        recorder.record(event.kind, **event.fields())

What the device answers (dyson.md §4.4):

=================================================  ==============================================
REQUEST-CURRENT-STATE                              CURRENT-STATE; with the profile's
                                                   ``env_with_state`` also the sensor data
REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA    ENVIRONMENTAL-CURRENT-SENSOR-DATA
REQUEST-CURRENT-FAULTS                             CURRENT-FAULTS on ``status/faults``
STATE-SET                                          one STATE-CHANGE with every field as
                                                   ``[old, new]``; nothing when nothing changed
LOCATE                                             LOCATION (profiles that support it, TP11)
SCHEDULE-SET / UPDATE-SCHEDULE                     SCHEDULE-UPDATED on ``status/scheduler``
                                                   **(inferred)**
anything else                                      nothing (§1.4 ``invalid_command`` ``ignore``)
=================================================  ==============================================

A command the device ignores is never an exception: it comes back as a
:class:`CommandIgnored` event whose ``reason`` is one of these stable codes:

- ``wrong-topic``: not the device's ``<root>/<serial>/command``.
- ``not-utf8``: the payload is not UTF-8 text.
- ``malformed-json``: not JSON (also JSON nested too deeply to parse).
- ``not-an-object``: JSON, but not an object.
- ``missing-msg``: no ``msg`` string.
- ``unknown-msg``: a ``msg`` the device does not know (robot commands included).
- ``unsupported-msg``: a known command this profile has no answer for (LOCATE on a TP04).
- ``missing-data``: a STATE-SET without a ``data`` object (§4.2).
- ``unknown-field``: a STATE-SET field the profile does not have (§5 rule 6).
- ``read-only-field``: a STATE-SET of a field the device only reports (``fnst``, ``oscs``...).
- ``invalid-value``: a value outside §5 (not a string, out of range, angles closer than 30°).

The whole STATE-SET is ignored when any field is bad: "no STATE-CHANGE" (§5 rule 6).

Derived fields, applied after every STATE-SET and every change of the environment (§5):

1. v2 ``fpwr`` OFF → ``fnst`` OFF and ``oscs`` OFF; ON → ``fnst`` FAN unless auto has idled
   the fan. Auto idles the fan while the air is clean **(inferred thresholds**:
   PM2.5 > 35 µg/m³, PM10 > 50, VOC or NO2 index > 3.0 make it run; the TP11 capture idles
   at PM2.5 3, the HP04 capture runs at 36). Link ``fmod`` AUTO always runs the fan (every
   ``475`` capture).
2. ``auto`` ON → ``fnsp`` AUTO; a numeric ``fnsp`` while ``auto`` stays ON turns ``auto``
   OFF (TP11 capture); ``fnsp`` AUTO alone turns ``auto`` ON; leaving auto restores the
   last manual speed **(inferred)**.
3. ``oson`` ON/OION with the fan running → ``oscs`` ON; idled by auto → IDLE (TP11).
4. ``hmod`` HEAT, fan on and ``tact`` < ``hmax`` → ``hsta`` HEAT, else OFF **(inferred)**.
5. Link: ``fmod`` stands for ``fpwr`` + ``auto``; AUTO→OFF gives ``fnsp`` AUTO→``0001`` and
   ``fnst`` FAN→OFF (``475`` capture); a numeric ``fnsp`` under AUTO selects FAN.
6. Humidifier: ``msta`` HUMD while on, ``hume`` HUMD and ``hact`` below the target
   (``rect`` under ``haut`` ON, else ``humt``) **(inferred)**.

Starting states are the captures of §3, verbatim, even where a capture disagrees with these
rules; the rules apply from the first change on.

Not modelled: the TP11's unprompted LOCATION messages (the capture shows them after
changes made on the device itself, ``mode-reason`` NONE, never after a STATE-SET),
ENVIRONMENTAL-AND-USAGE-DATA, ``status/software`` and ``status/summary`` (schemas
**(unknown)**), robots.

Sensors (§5 "Special values"): readings are ``OFF`` while the fan is off and continuous
monitoring (``rhtm``) is OFF; when the sensors (re)start, the profile's warm-up fields
(VOC and NO2 on v2, ``vact`` on Link) read ``INIT`` for ``warmup_s`` ("roughly the first
minutes"), then settle; a failed sensor (fault ``t&hs``, ``dsts``, ``vocs``) reads ``FAIL``
(``475`` capture: ``t&hs`` FAIL with ``tact``/``hact`` FAIL).

Time: :meth:`DysonDevice.tick` runs what the device does by itself: the sleep-timer
countdown (one STATE-CHANGE per minute, ``state-reason`` ENV, as in the TP11 capture; at
zero the fan turns off), the end of the sensor warm-up, and, if ``env_push_interval_s`` is
set, unprompted sensor data. The spec says devices send sensor data only when asked
(§4.4: "TP04 needs the explicit env request"; libpurecool polls every 30 s), so that push is
off by default. Every entry point first catches up with ``now``, so a shell that ticks
rarely still sees a consistent device; :meth:`DysonDevice.next_deadline` says when the
next tick is due.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import ConfigError
from simulators.dyson import messages
from simulators.dyson.local_auth import validate_serial
from simulators.dyson.messages import (
    GOODBYE_REASONS,
    MODE_REASONS,
    Outgoing,
    TimeStamper,
)
from simulators.dyson.profiles import Family, ProductProfile
from simulators.dyson.topics import DeviceTopics

# Derived-field thresholds of auto mode (inferred; see the module docstring).
_AUTO_LIMITS = (
    ("p25r", "pm25", 35),
    ("p10r", "pm10", 50),
    ("va10", "va10", 30),
    ("noxl", "noxl", 30),
)
#: Sensors a product-error fault makes read FAIL (``t&hs`` from the ``475`` capture; the
#: dust and VOC sensor faults by their meaning in thoukydides ``dyson-air-types.ts``).
_SENSOR_FAULTS: Mapping[str, tuple[str, ...]] = {
    "t&hs": ("tact", "hact"),
    "dsts": ("pact", "pm25", "pm10", "p25r", "p10r"),
    "vocs": ("vact", "va10"),
}
#: Module warnings that go to FAIL when the Internet link drops (dersimn, §4.3).
_CLOUD_LINK_FAULTS = ("nwcs", "nwps", "nwss")
#: Oscillation speed for LOCATION's ``apos`` **(inferred)**.
_DEGREES_PER_SECOND = 6.0
_SCHEDULE_VERSION = re.compile(r"[0-9a-fA-F]{1,16}")
_FOUR_DIGITS = re.compile(r"[0-9]{4}")


# Events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceEvent:
    """Something the device did or refused; ``fields()`` is what the recorder stores."""

    kind: ClassVar[str] = "dyson.device"
    serial: str

    def fields(self) -> dict[str, Any]:
        """The event's fields for :meth:`harness.events.Recorder.record` (tuples as lists)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class CommandHandled(DeviceEvent):
    """A command the device acted on: what it answered and which fields changed."""

    kind: ClassVar[str] = "dyson.command"
    msg: str
    answered: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    mode_reason: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"ok": True, **super().fields()}


@dataclass(frozen=True)
class CommandIgnored(DeviceEvent):
    """A command the device ignored, as real devices do (§1.4 ``invalid_command``)."""

    kind: ClassVar[str] = "dyson.command.ignored"
    reason: str
    explain: str
    msg: str | None = None
    topic: str = ""

    def fields(self) -> dict[str, Any]:
        return {"ok": False, **super().fields()}


@dataclass(frozen=True)
class StateChanged(DeviceEvent):
    """A change the device made by itself: ``cause`` is ``sleep-timer`` or ``environment``."""

    kind: ClassVar[str] = "dyson.state.changed"
    cause: str
    changed: tuple[str, ...]


@dataclass(frozen=True)
class FaultsChanged(DeviceEvent):
    """Faults raised or cleared (``category/key``), announced by FAULTS-CHANGE."""

    kind: ClassVar[str] = "dyson.faults.changed"
    raised: tuple[str, ...]
    cleared: tuple[str, ...]


@dataclass(frozen=True)
class SensorsSettled(DeviceEvent):
    """The warm-up ended: these sensors read values instead of ``INIT``."""

    kind: ClassVar[str] = "dyson.sensors.settled"
    settled: tuple[str, ...]


@dataclass(frozen=True)
class DeviceResult:
    """What one call produced: messages to publish, in order, and events to record."""

    outgoing: tuple[Outgoing, ...] = ()
    events: tuple[DeviceEvent, ...] = ()

    def __add__(self, other: DeviceResult) -> DeviceResult:
        return DeviceResult(self.outgoing + other.outgoing, self.events + other.events)

    @property
    def msgs(self) -> tuple[str, ...]:
        """The ``msg`` of each outgoing message, in order."""
        return tuple(out.msg for out in self.outgoing)


class _Ignore(Exception):
    """Internal: a command the device ignores, with its reason code."""

    def __init__(self, reason: str, explain: str) -> None:
        super().__init__(explain)
        self.reason = reason
        self.explain = explain


# The device ------------------------------------------------------------------------------


class DysonDevice:
    """One simulated Dyson air device (dyson.md §3-§5); see the module docstring."""

    def __init__(
        self,
        profile: ProductProfile,
        *,
        serial: str,
        now: float,
        # Power and sensors
        uptime_s: float = 0.0,
        warmup_s: float | None = None,
        # Periodic messages
        env_push_interval_s: float | None = None,
        # Faults
        faults_change_full: bool = True,
        # Identity
        mac_address: str | None = None,
    ) -> None:
        """A device that has been powered on for ``uptime_s`` at ``now``.

        ``warmup_s`` overrides the profile's sensor warm-up; ``env_push_interval_s`` makes
        :meth:`tick` publish sensor data unprompted (off by default, §4.4).
        ``faults_change_full``: whether FAULTS-CHANGE lists every key of every category as
        ``[old, new]`` (default, like STATE-CHANGE; thoukydides' client requires all four
        categories and replaces its whole fault set from them) or only the changed keys
        (the §4.3 example). Which one devices do is **(unknown)**.
        """
        validate_serial(serial)
        if uptime_s < 0:
            raise ConfigError("uptime_s must not be negative")
        if warmup_s is not None and warmup_s < 0:
            raise ConfigError("warmup_s must not be negative")
        if env_push_interval_s is not None and env_push_interval_s <= 0:
            raise ConfigError("env_push_interval_s must be positive (None switches it off)")
        self.profile = profile
        self.serial = serial
        self.topics = DeviceTopics(profile.root_topic, serial)
        self.mac_address = mac_address or _mac_for(serial)
        self.faults_change_full = faults_change_full
        self.warmup_s = profile.warmup_s if warmup_s is None else warmup_s
        self.env_push_interval_s = env_push_interval_s
        self._stamper = TimeStamper(profile.time_style)
        self._settable = profile.settable_fields()
        self._specs = profile.field_specs()
        self._now = now
        # State (§3: the capture, verbatim)
        self._state = profile.state
        self._scheduler = dict(profile.scheduler)
        self._top_level = dict(profile.top_level)
        self._mode_reason = profile.mode_reason
        self._state_reason = profile.state_reason
        self._readings = {name: value for name, value in profile.sensors if name != "sltm"}
        self._faults = {category: dict.fromkeys(keys, "OK") for category, keys in profile.faults}
        initial_speed = self._state.get("fnsp", "AUTO")
        self._manual_speed = initial_speed if initial_speed != "AUTO" else "0001"
        # Sensors
        booted_at = now - uptime_s
        self._sensors_since: float | None = booted_at if self._sensors_on(self._state) else None
        self._warm_pending = (
            self._sensors_since is not None
            and bool(profile.warmup_fields)
            and now < self._sensors_since + self.warmup_s
        )
        # Sleep timer: (started at, minutes set)
        self._sleep: tuple[float, int] | None = None
        sltm = self._state.get("sltm", "OFF")
        if _FOUR_DIGITS.fullmatch(sltm):
            self._sleep = (now, int(sltm))
        # Oscillation position for LOCATION
        self._apos = int(profile.apos)
        self._osc_since: float | None = now if self._state.get("oscs") == "ON" else None
        # Periodic sensor data
        self._next_env_push = None if env_push_interval_s is None else now + env_push_interval_s

    # Read-only views ---------------------------------------------------------------------

    @property
    def state(self) -> dict[str, str]:
        """The product-state as CURRENT-STATE reports it (a copy)."""
        return dict(self._state)

    @property
    def mode_reason(self) -> str:
        """``mode-reason`` of the last change (§4.3)."""
        return self._mode_reason

    @property
    def state_reason(self) -> str:
        """``state-reason`` of the last change (§4.3)."""
        return self._state_reason

    @property
    def faults(self) -> dict[str, dict[str, str]]:
        """Fault categories with ``OK``/``FAIL`` per key (a copy)."""
        return {category: dict(keys) for category, keys in self._faults.items()}

    def sensor_data(self, now: float) -> dict[str, str]:
        """The ``data`` of ENVIRONMENTAL-CURRENT-SENSOR-DATA at ``now`` (§4.3, §5)."""
        failed = {
            sensor
            for key, sensors in _SENSOR_FAULTS.items()
            if any(keys.get(key) == "FAIL" for keys in self._faults.values())
            for sensor in sensors
        }
        since = self._sensors_since
        warming = since is not None and now < since + self.warmup_s
        data: dict[str, str] = {}
        for name in self.profile.sensor_fields:
            if name == "sltm":
                data[name] = self._sleep_value(now)
            elif since is None:
                data[name] = "OFF"
            elif name in failed:
                data[name] = "FAIL"
            elif warming and name in self.profile.warmup_fields:
                data[name] = "INIT"
            else:
                data[name] = self._readings[name]
        return data

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (epoch seconds), or ``None``."""
        deadlines: list[float] = []
        if self._sleep is not None:
            started, _ = self._sleep
            elapsed_minutes = int((self._now - started) // 60)
            deadlines.append(started + 60 * (elapsed_minutes + 1))
        if self._warm_pending and self._sensors_since is not None:
            deadlines.append(self._sensors_since + self.warmup_s)
        if self._next_env_push is not None:
            deadlines.append(self._next_env_push)
        return min(deadlines) if deadlines else None

    # Messages the device publishes on its own --------------------------------------------

    def current_state_message(self, now: float) -> Outgoing:
        """CURRENT-STATE on ``status/current`` (§4.3)."""
        return self._out(
            self.topics.current,
            messages.current_state(
                time=self._stamper.stamp(now),
                mode_reason=self._mode_reason,
                state_reason=self._state_reason,
                top_level=self._top_level,
                product_state=self._state,
                scheduler=self._scheduler,
            ),
        )

    def environment_message(self, now: float) -> Outgoing:
        """ENVIRONMENTAL-CURRENT-SENSOR-DATA on ``status/current`` (§4.3)."""
        data = self.sensor_data(now)
        return self._out(
            self.topics.current,
            messages.environmental_data(time=self._stamper.stamp(now), data=data),
        )

    def current_faults_message(self, now: float) -> Outgoing:
        """CURRENT-FAULTS on ``status/faults`` (§4.3)."""
        return self._out(
            self.topics.faults,
            messages.current_faults(time=self._stamper.stamp(now), faults=self._faults),
        )

    def hello(self, now: float, *, reset_source: str = "PWUP") -> Outgoing:
        """HELLO on ``status/connection`` (§4.3); ``reset_source`` PWUP or HIB."""
        return self._out(
            self.topics.connection,
            messages.hello(
                time=self._stamper.stamp(now),
                serial=self.serial,
                version=self.profile.hello_version,
                mac_address=self.mac_address,
                reset_source=reset_source,
            ),
        )

    def goodbye(self, now: float, *, reason: str = "UNKNOWN") -> Outgoing:
        """GOODBYE on ``status/connection``; ``reason`` SWITCH_TO_AP or UNKNOWN (§4.3)."""
        if reason not in GOODBYE_REASONS:
            raise ConfigError(f"GOODBYE reason {reason!r}: one of {sorted(GOODBYE_REASONS)}")
        return self._out(
            self.topics.connection,
            messages.goodbye(time=self._stamper.stamp(now), reason=reason),
        )

    def gone_away(self, now: float | None = None) -> Outgoing:
        """GONE-AWAY on ``status/connection``: the last will, without ``time`` (§4.3, §7).

        ``now`` is accepted for symmetry and unused: the broker publishes the will when the
        device is already gone.
        """
        del now
        return self._out(self.topics.connection, messages.gone_away())

    def im_back(self, now: float) -> Outgoing:
        """IM-BACK on ``status/connection`` (§4.3)."""
        return self._out(self.topics.connection, messages.im_back(time=self._stamper.stamp(now)))

    # Entry points -------------------------------------------------------------------------

    def tick(self, now: float) -> DeviceResult:
        """Advance to ``now``: sleep-timer countdown, end of warm-up, unprompted sensor data."""
        now = self._advance(now)
        result = DeviceResult()
        if self._sleep is not None:
            result += self._run_sleep_timer(now)
        since = self._sensors_since
        if self._warm_pending and since is not None and now >= since + self.warmup_s:
            self._warm_pending = False
            settled = tuple(sorted(self.profile.warmup_fields))
            result += DeviceResult(events=(SensorsSettled(self.serial, settled),))
        if self._next_env_push is not None and now >= self._next_env_push:
            interval = self.env_push_interval_s or 1.0
            missed = int((now - self._next_env_push) // interval) + 1
            self._next_env_push += missed * interval
            result += DeviceResult(outgoing=(self.environment_message(now),))
        return result

    def handle(self, topic: str, payload: bytes, *, now: float) -> DeviceResult:
        """Answer one command published to ``topic`` (§4.4); never raises for bad input."""
        result = self.tick(now)
        now = self._now
        msg: str | None = None
        try:
            if topic != self.topics.command:
                raise _Ignore("wrong-topic", f"commands go to {self.topics.command}, not {topic}")
            command = _parse_command(payload)
            msg = command["msg"]
            handler = self._handlers().get(msg)
            if handler is None:
                raise _Ignore("unknown-msg", f"the device does not know the command {msg!r}")
            return result + handler(command, now)
        except _Ignore as ignored:
            event = CommandIgnored(
                self.serial, reason=ignored.reason, explain=ignored.explain, msg=msg, topic=topic
            )
            return result + DeviceResult(events=(event,))

    def set_environment(self, readings: Mapping[str, int | str], *, now: float) -> DeviceResult:
        """Change what the sensors measure (a harness control, not a command).

        ``readings`` maps sensor fields of the profile (``tact``, ``p25r``, ...) to a number
        0-9999 or its four-digit string. Auto mode, heating and humidifying react (§4.4:
        spontaneous STATE-CHANGEs with ``state-reason`` ENV).
        """
        updates: dict[str, str] = {}
        for name, value in readings.items():
            if name not in self._readings:
                raise ConfigError(
                    f"{name!r} is not a sensor of profile {self.profile.name}: "
                    f"{sorted(self._readings)}"
                )
            updates[name] = _reading(name, value)
        result = self.tick(now)
        now = self._now
        self._readings.update(updates)
        new = dict(self._state)
        self._derive(new)
        changed = self._changed(new)
        outgoing = self._commit(new, now, mode_reason=self._mode_reason, state_reason="ENV")
        events: tuple[DeviceEvent, ...] = ()
        if changed:
            events = (StateChanged(self.serial, cause="environment", changed=changed),)
        return result + DeviceResult(outgoing, events)

    def set_faults(self, changes: Mapping[str, bool], *, now: float) -> DeviceResult:
        """Raise (``True``) or clear (``False``) faults by key; one FAULTS-CHANGE if any
        changed (§4.3). Keys are the profile's (``amf1``, ``fltr``, ``t&hs``, ``nwcs``...)."""
        located: dict[str, str] = {}
        for key in changes:
            category = next((c for c, keys in self._faults.items() if key in keys), None)
            if category is None:
                known = {c: sorted(keys) for c, keys in self._faults.items()}
                raise ConfigError(
                    f"fault {key!r} is not one of profile {self.profile.name}'s: {known}"
                )
            located[key] = category
        result = self.tick(now)
        now = self._now
        before = self.faults
        for key, failing in changes.items():
            self._faults[located[key]][key] = "FAIL" if failing else "OK"
        raised = tuple(
            f"{c}/{k}"
            for c, keys in self._faults.items()
            for k, v in keys.items()
            if v == "FAIL" and before[c][k] == "OK"
        )
        cleared = tuple(
            f"{c}/{k}"
            for c, keys in self._faults.items()
            for k, v in keys.items()
            if v == "OK" and before[c][k] == "FAIL"
        )
        if not raised and not cleared:
            return result
        pairs = {
            c: {
                k: (before[c][k], v)
                for k, v in keys.items()
                if self.faults_change_full or before[c][k] != v
            }
            for c, keys in self._faults.items()
        }
        if not self.faults_change_full:
            pairs = {c: keys for c, keys in pairs.items() if keys}
        out = self._out(
            self.topics.faults, messages.faults_change(time=self._stamper.stamp(now), changes=pairs)
        )
        event = FaultsChanged(self.serial, raised=raised, cleared=cleared)
        return result + DeviceResult((out,), (event,))

    def raise_fault(self, key: str, *, now: float) -> DeviceResult:
        """Raise one fault (FAULTS-CHANGE ``OK`` → ``FAIL``)."""
        return self.set_faults({key: True}, now=now)

    def clear_fault(self, key: str, *, now: float) -> DeviceResult:
        """Clear one fault (FAULTS-CHANGE ``FAIL`` → ``OK``)."""
        return self.set_faults({key: False}, now=now)

    def set_cloud_link(self, up: bool, *, now: float) -> DeviceResult:
        """The Internet link went down or came back: ``nwcs``, ``nwps``, ``nwss`` go to FAIL
        or back to OK (dersimn saw this when the link dropped, §4.3; use **(inferred)**)."""
        keys = [k for k in _CLOUD_LINK_FAULTS if k in self._faults.get("module-warnings", {})]
        return self.set_faults(dict.fromkeys(keys, not up), now=now)

    # Command handlers ----------------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], float], DeviceResult]]:
        return {
            "REQUEST-CURRENT-STATE": self._on_request_state,
            "REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA": self._on_request_environment,
            "REQUEST-CURRENT-FAULTS": self._on_request_faults,
            "STATE-SET": self._on_state_set,
            "LOCATE": self._on_locate,
            "SCHEDULE-SET": self._on_schedule,
            "UPDATE-SCHEDULE": self._on_schedule,
        }

    def _on_request_state(self, command: dict[str, Any], now: float) -> DeviceResult:
        outgoing = [self.current_state_message(now)]
        if self.profile.env_with_state:
            outgoing.append(self.environment_message(now))
        return self._answered(command, tuple(outgoing))

    def _on_request_environment(self, command: dict[str, Any], now: float) -> DeviceResult:
        return self._answered(command, (self.environment_message(now),))

    def _on_request_faults(self, command: dict[str, Any], now: float) -> DeviceResult:
        return self._answered(command, (self.current_faults_message(now),))

    def _on_locate(self, command: dict[str, Any], now: float) -> DeviceResult:
        if not self.profile.supports_locate:
            raise _Ignore("unsupported-msg", f"a {self.profile.model} does not answer LOCATE")
        return self._answered(command, (self._location(now),))

    def _on_schedule(self, command: dict[str, Any], now: float) -> DeviceResult:
        version = command.get("version")
        if not isinstance(version, str) or not _SCHEDULE_VERSION.fullmatch(version):
            raise _Ignore("invalid-value", f"schedule version {version!r} is not hex (§4.2)")
        out = self._out(
            self.topics.scheduler,
            messages.schedule_updated(time=self._stamper.stamp(now), version=version),
        )
        return self._answered(command, (out,))

    def _on_state_set(self, command: dict[str, Any], now: float) -> DeviceResult:
        data = command.get("data")
        if not isinstance(data, dict):
            raise _Ignore("missing-data", "a STATE-SET carries its fields under data (§4.2)")
        self._check_state_set(data)
        values: dict[str, str] = data  # checked: every value is a string
        reason = command.get("mode-reason")
        mode_reason = reason if isinstance(reason, str) and reason in MODE_REASONS else "NONE"
        new = self._apply_state_set(values, now)
        changed = self._changed(new)
        outgoing = self._commit(new, now, mode_reason=mode_reason, state_reason="MODE")
        event = CommandHandled(
            self.serial,
            msg="STATE-SET",
            answered=tuple(out.msg for out in outgoing),
            changed=changed,
            mode_reason=mode_reason,
        )
        return DeviceResult(outgoing, (event,))

    def _answered(self, command: dict[str, Any], outgoing: tuple[Outgoing, ...]) -> DeviceResult:
        reason = command.get("mode-reason")
        event = CommandHandled(
            self.serial,
            msg=str(command["msg"]),
            answered=tuple(out.msg for out in outgoing),
            mode_reason=reason if isinstance(reason, str) else None,
        )
        return DeviceResult(outgoing, (event,))

    # STATE-SET -----------------------------------------------------------------------------

    def _check_state_set(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            spec = self._settable.get(name)
            if spec is None:
                if name in self._specs:
                    raise _Ignore("read-only-field", f"{name} is reported, not set (§5)")
                raise _Ignore(
                    "unknown-field", f"a {self.profile.model} has no field {name!r} (§5 rule 6)"
                )
            if not spec.settable(value):
                raise _Ignore("invalid-value", f"{name}={value!r} is outside §5 ({spec.meaning})")
        low = data.get("osal", self._state.get("osal"))
        high = data.get("osau", self._state.get("osau"))
        if ("osal" in data or "osau" in data) and low is not None and high is not None:
            low_angle, high_angle = int(low), int(high)
            if low_angle != high_angle and high_angle - low_angle < 30:
                raise _Ignore(
                    "invalid-value",
                    f"oscillation angles {low}-{high} must be equal or at least 30° apart (§5)",
                )

    def _apply_state_set(self, data: dict[str, str], now: float) -> dict[str, str]:
        new = dict(self._state)
        for name, value in data.items():
            if name == "sltm":
                self._sleep = None if value == "OFF" else (now, int(value))
                if name in new:
                    new[name] = value
            elif name in ("rstf", "rhtf"):
                if value != "STET":
                    self._reset_filters(new)
            elif name in ("hflr", "cflr"):
                if new[name] != "INV":  # a filter that is not fitted stays INV
                    new[name] = value
            else:
                new[name] = value
        if self.profile.family is Family.V2:
            self._couple_v2_speed(new, data)
        else:
            self._couple_link_speed(new, data)
        if self._sleep is not None and not self._powered(new) and "sltm" not in data:
            self._sleep = None  # turning the fan off cancels the sleep timer (inferred)
            if "sltm" in new:
                new["sltm"] = "OFF"
        self._derive(new)
        return new

    def _reset_filters(self, new: dict[str, str]) -> None:
        """``rstf``/``rhtf``: Link filter life back to 4300 hours (§5 ``filf``), v2 filters
        back to 100 % unless not fitted **(inferred)**."""
        if "filf" in new:
            new["filf"] = "4300"
        for name in ("hflr", "cflr"):
            if name in new and new[name] != "INV":
                new[name] = "0100"

    def _couple_v2_speed(self, new: dict[str, str], data: dict[str, str]) -> None:
        if "auto" not in new or "fnsp" not in new:
            return
        speed, auto = data.get("fnsp"), data.get("auto")
        if speed is not None and speed != "AUTO":
            self._manual_speed = speed
            if auto is None:
                new["auto"] = "OFF"
        elif speed == "AUTO" and auto is None:
            new["auto"] = "ON"
        if new["auto"] == "ON":
            new["fnsp"] = "AUTO"
        elif new["fnsp"] == "AUTO" and (self._state.get("auto") == "ON" or speed is not None):
            new["fnsp"] = self._manual_speed

    def _couple_link_speed(self, new: dict[str, str], data: dict[str, str]) -> None:
        if "fmod" not in new or "fnsp" not in new:
            return
        speed, mode = data.get("fnsp"), data.get("fmod")
        if speed is not None and speed != "AUTO":
            self._manual_speed = speed
            if mode is None and new["fmod"] == "AUTO":
                new["fmod"] = "FAN"
        elif speed == "AUTO" and mode is None:
            new["fmod"] = "AUTO"
        if new["fmod"] == "AUTO":
            new["fnsp"] = "AUTO"
        elif new["fnsp"] == "AUTO":
            new["fnsp"] = self._manual_speed

    # Derived fields ------------------------------------------------------------------------

    def _powered(self, state: Mapping[str, str]) -> bool:
        if self.profile.family is Family.V2:
            return state.get("fpwr") == "ON"
        return state.get("fmod") in ("FAN", "AUTO")

    def _sensors_on(self, state: Mapping[str, str]) -> bool:
        """Sensors run while the fan is on or continuous monitoring is ON (§5 ``rhtm``)."""
        return self._powered(state) or state.get("rhtm") == "ON"

    def _air_needs_fan(self) -> bool:
        if self.profile.family is Family.LINK_V1:
            return True
        for primary, fallback, limit in _AUTO_LIMITS:
            value = self._readings.get(primary, self._readings.get(fallback))
            if value is not None and _FOUR_DIGITS.fullmatch(value) and int(value) > limit:
                return True
        return False

    def _derive(self, state: dict[str, str]) -> None:
        """Apply the §5 derived-field rules to ``state`` in place."""
        powered = self._powered(state)
        idle = (
            self.profile.family is Family.V2
            and state.get("auto") == "ON"
            and not self._air_needs_fan()
        )
        running = powered and not idle
        if "fnst" in state:
            state["fnst"] = "FAN" if running else "OFF"
        if "oscs" in state:
            oscillating = state.get("oson") in ("ON", "OION")
            if not (powered and oscillating):
                state["oscs"] = "OFF"
            else:
                state["oscs"] = "IDLE" if idle else "ON"
        if "hsta" in state:
            tact, target = _number(self._readings.get("tact")), _number(state.get("hmax"))
            heating = (
                powered
                and state.get("hmod") == "HEAT"
                and tact is not None
                and target is not None
                and tact < target
            )
            state["hsta"] = "HEAT" if heating else "OFF"
        if "msta" in state:
            hact = _number(self._readings.get("hact"))
            goal = state.get("rect") if state.get("haut") == "ON" else state.get("humt")
            target = _number(goal)
            humidifying = (
                powered
                and state.get("hume") == "HUMD"
                and hact is not None
                and target is not None
                and hact < target
            )
            state["msta"] = "HUMD" if humidifying else "OFF"

    # Commit and time -----------------------------------------------------------------------

    def _changed(self, new: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(name for name, value in new.items() if self._state.get(name) != value)

    def _commit(
        self, new: dict[str, str], now: float, *, mode_reason: str, state_reason: str
    ) -> tuple[Outgoing, ...]:
        """Make ``new`` the state; the STATE-CHANGE to publish, if any (§4.4)."""
        old = self._state
        if new == old:
            return ()
        was_on, is_on = self._sensors_on(old), self._sensors_on(new)
        if is_on and not was_on:
            self._sensors_since = now
            self._warm_pending = bool(self.profile.warmup_fields)
        elif was_on and not is_on:
            self._sensors_since = None
            self._warm_pending = False
        was_swinging, is_swinging = old.get("oscs") == "ON", new.get("oscs") == "ON"
        same_arc = all(old.get(name) == new.get(name) for name in ("osal", "osau"))
        if was_swinging and not (is_swinging and same_arc):
            self._apos = self._position(now, old)
            self._osc_since = None
        if is_swinging and self._osc_since is None:
            self._osc_since = now
        self._state = new
        self._mode_reason, self._state_reason = mode_reason, state_reason
        return (
            self._out(
                self.topics.current,
                messages.state_change(
                    time=self._stamper.stamp(now),
                    mode_reason=mode_reason,
                    state_reason=state_reason,
                    old=old,
                    new=new,
                    scheduler=self._scheduler,
                ),
            ),
        )

    def _run_sleep_timer(self, now: float) -> DeviceResult:
        assert self._sleep is not None
        started, minutes = self._sleep
        remaining = minutes - int((now - started) // 60)
        new = dict(self._state)
        if remaining <= 0:
            self._sleep = None
            if self.profile.family is Family.V2:
                new["fpwr"] = "OFF"
            elif "fmod" in new:
                new["fmod"] = "OFF"
                self._couple_link_speed(new, {})
            if "sltm" in new:
                new["sltm"] = "OFF"
            self._derive(new)
        elif "sltm" in new:
            new["sltm"] = f"{remaining:04d}"
        changed = self._changed(new)
        outgoing = self._commit(new, now, mode_reason=self._mode_reason, state_reason="ENV")
        if not changed:
            return DeviceResult()
        return DeviceResult(outgoing, (StateChanged(self.serial, "sleep-timer", changed),))

    def _sleep_value(self, now: float) -> str:
        if self._sleep is None:
            return "OFF"
        started, minutes = self._sleep
        remaining = minutes - int((now - started) // 60)
        return f"{remaining:04d}" if remaining > 0 else "OFF"

    def _position(self, now: float, state: Mapping[str, str]) -> int:
        """``apos``: a triangle wave between ``osal`` and ``osau`` while oscillating."""
        low, high = _number(state.get("osal")), _number(state.get("osau"))
        if self._osc_since is None or low is None or high is None:
            return self._apos
        span = high - low
        if span <= 0:
            return low
        travel = ((now - self._osc_since) * _DEGREES_PER_SECOND) % (2 * span)
        return int(low + (travel if travel <= span else 2 * span - travel))

    def _location(self, now: float) -> Outgoing:
        apos = f"{self._position(now, self._state):04d}"
        return self._out(
            self.topics.current, messages.location(time=self._stamper.stamp(now), apos=apos)
        )

    def _advance(self, now: float) -> float:
        """The device's clock never runs backwards (a world-clock shift back is no time)."""
        self._now = max(self._now, now)
        return self._now

    @staticmethod
    def _out(topic: str, message: Mapping[str, Any]) -> Outgoing:
        return Outgoing(topic=topic, payload=messages.encode(message))


# Parsing -----------------------------------------------------------------------------------


def _parse_command(payload: bytes) -> dict[str, Any]:
    """The command object of a payload, or :class:`_Ignore` with the reason (§1.4)."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise _Ignore("not-utf8", "the payload is not UTF-8 text") from None
    try:
        command = json.loads(text)
    except (ValueError, RecursionError):
        raise _Ignore("malformed-json", f"the payload is not JSON: {text[:60]!r}") from None
    if not isinstance(command, dict):
        raise _Ignore("not-an-object", f"a command is a JSON object, not {type(command).__name__}")
    if not isinstance(command.get("msg"), str):
        raise _Ignore("missing-msg", "a command names itself in a msg string (§4.1)")
    return command


def _reading(name: str, value: int | str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"sensor {name}: {value!r} is not a number")
    if isinstance(value, int):
        if not 0 <= value <= 9999:
            raise ConfigError(f"sensor {name}: {value} is outside 0-9999")
        return f"{value:04d}"
    if not _FOUR_DIGITS.fullmatch(value):
        raise ConfigError(f"sensor {name}: {value!r} is not four digits")
    return value


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and _FOUR_DIGITS.fullmatch(value) else None


def _mac_for(serial: str) -> str:
    """A stable MAC in Dyson's ``C8:FF:77`` block (the HELLO example, §4.3) per serial."""
    tail = hashlib.sha256(serial.encode("ascii")).digest()[:3]
    return "C8:FF:77:" + ":".join(f"{byte:02X}" for byte in tail)
