"""The field dictionary of Dyson air devices: which values each product-state field takes.

dyson.md §5 lists every field with its values; this module turns that table into
:class:`FieldSpec` objects the device uses twice: to check a STATE-SET (a field the device
does not know, a read-only field or a value outside the table makes the device ignore the
whole command, §5 rule 6 and §1.4 ``invalid_command``) and, in the tests, to check that
every state the device reaches stays inside the table.

All values are strings; numbers are zero-padded to four digits (``"0005"``), temperatures
are deci-kelvin (§5). A field's *state* domain (what the device may report) can be wider
than what a command may set: the sleep timer counts down to ``0001`` but is set in
``0015``-``0540`` (§5 ``sltm``), and filter life is only ever reset to ``0100``
(hass-dyson sets ``hflr``/``cflr`` ``0100``, §5 ``rstf``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_FOUR_DIGITS = re.compile(r"[0-9]{4}")
#: Error and warning codes: ``NONE`` or four upper-case letters and digits (§5 ``ercd``).
_CODE = re.compile(r"NONE|[0-9A-Z]{4}")


@dataclass(frozen=True)
class FieldSpec:
    """One product-state field: the values it may hold and whether a STATE-SET may set it.

    ``values`` are the enumerated strings; ``numeric`` an inclusive range of four-digit
    numbers; ``pattern`` a regular expression for open-ended codes. ``set_values`` and
    ``set_numeric`` narrow what a command may set; ``None`` means "as the state domain".
    """

    name: str
    meaning: str
    values: frozenset[str] = frozenset()
    numeric: tuple[int, int] | None = None
    pattern: re.Pattern[str] | None = None
    writable: bool = True
    set_values: frozenset[str] | None = None
    set_numeric: tuple[int, int] | None = None

    def holds(self, value: object) -> bool:
        """True when ``value`` is a value the device may report for this field."""
        return _matches(value, self.values, self.numeric, self.pattern)

    def settable(self, value: object) -> bool:
        """True when a STATE-SET may set this field to ``value`` (§4.2: values are strings)."""
        if not self.writable:
            return False
        if self.set_values is None and self.set_numeric is None:
            return self.holds(value)
        values = self.values if self.set_values is None else self.set_values
        numeric = self.set_numeric  # with set_values alone, no number beyond them
        return _matches(value, values, numeric, None)

    def restricted(self, values: frozenset[str]) -> FieldSpec:
        """This field with its enumerated values narrowed (a profile's own subset, §3)."""
        return FieldSpec(
            name=self.name,
            meaning=self.meaning,
            values=values,
            numeric=self.numeric,
            pattern=self.pattern,
            writable=self.writable,
            set_values=None if self.set_values is None else self.set_values & values,
            set_numeric=self.set_numeric,
        )


def _matches(
    value: object,
    values: frozenset[str],
    numeric: tuple[int, int] | None,
    pattern: re.Pattern[str] | None,
) -> bool:
    if not isinstance(value, str):
        return False
    if value in values:
        return True
    if numeric is not None and _FOUR_DIGITS.fullmatch(value):
        low, high = numeric
        return low <= int(value) <= high
    return pattern is not None and pattern.fullmatch(value) is not None


def _f(
    name: str,
    meaning: str,
    *values: str,
    numeric: tuple[int, int] | None = None,
    pattern: re.Pattern[str] | None = None,
    writable: bool = True,
    set_values: tuple[str, ...] | None = None,
    set_numeric: tuple[int, int] | None = None,
) -> FieldSpec:
    return FieldSpec(
        name=name,
        meaning=meaning,
        values=frozenset(values),
        numeric=numeric,
        pattern=pattern,
        writable=writable,
        set_values=None if set_values is None else frozenset(set_values),
        set_numeric=set_numeric,
    )


ON_OFF = ("ON", "OFF")

#: Every product-state field of the air devices, from the table of dyson.md §5 (sources
#: there: libdyson, libpurecool, thoukydides ``src/dyson-air-*.ts``, dersimn). Read-only
#: fields are what the device reports about itself; a STATE-SET naming one is ignored.
FIELDS: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        # Power, fan and auto mode
        _f("fpwr", "v2 master power", *ON_OFF),
        _f("auto", "v2 auto mode", *ON_OFF),
        _f("fmod", "Link v1 fan mode; stands for fpwr + auto", "OFF", "FAN", "AUTO"),
        _f("fnst", "actual fan state (read-only)", "OFF", "FAN", writable=False),
        _f("fnsp", "fan speed; AUTO while auto is ON", "AUTO", numeric=(1, 10)),
        _f("nmod", "night mode", *ON_OFF),
        _f("nmdv", "night mode maximum speed", numeric=(1, 10)),
        _f("rhtm", "continuous monitoring (sensors run with the fan off)", *ON_OFF),
        _f("sltm", "sleep timer minutes", "OFF", numeric=(1, 540), set_numeric=(15, 540)),
        _f("qtar", "Link air-quality target", "OFF", "0001", "0002", "0003", "0004"),
        _f(
            "filf",
            "Link filter life in hours (read-only; reset by rstf)",
            numeric=(0, 9999),
            writable=False,
        ),
        # Oscillation
        _f("oson", "oscillation; OI* when auto has stopped the fan", "ON", "OFF", "OION", "OIOF"),
        _f("oscs", "actual oscillation (read-only)", "ON", "OFF", "IDLE", writable=False),
        _f("osal", "oscillation lower angle", numeric=(5, 355)),
        _f("osau", "oscillation upper angle", numeric=(5, 355)),
        _f(
            "ancp",
            "angle profile",
            "CUST",
            "BRZE",
            "0010",
            "0040",
            "0045",
            "0070",
            "0090",
            "0180",
            "0350",
        ),
        _f("fdir", "front airflow (ON = forward)", *ON_OFF),
        _f("ffoc", "jet focus (Link heaters)", *ON_OFF),
        # Heating
        _f("hmod", "heating mode", "HEAT", "OFF"),
        _f("hsta", "heating status (read-only)", "HEAT", "OFF", writable=False),
        _f("hmax", "heating target, deci-kelvin", numeric=(2740, 3100)),
        _f("tilt", "tip-over sensor (read-only)", "OK", "TILT", writable=False),
        _f(
            "psta",
            "heater or clean process state (read-only)",
            "OFF",
            "CLNG",
            "INIT",
            "INV",
            writable=False,
        ),
        # Humidifying
        _f("hume", "humidify on", "HUMD", "OFF"),
        _f("haut", "humidify auto", *ON_OFF),
        _f("msta", "actual humidifier (read-only)", "OFF", "HUMD", writable=False),
        _f("humt", "manual humidity target %", numeric=(30, 70)),
        _f("rect", "auto humidity target % (read-only)", numeric=(0, 100), writable=False),
        _f("wath", "water hardness", "2025", "1350", "0675"),
        _f("clcr", "deep-clean state (read-only)", "CLNO", "CLSE", "CLAC", "CLCM", writable=False),
        _f("cltr", "hours to the next deep clean (read-only)", numeric=(0, 9999), writable=False),
        _f("cdrr", "minutes left in the deep clean (read-only)", numeric=(0, 9999), writable=False),
        # Filters, codes, display
        _f(
            "hflr",
            "HEPA filter life %; reset by setting 0100",
            "INV",
            numeric=(0, 100),
            set_values=("0100",),
        ),
        _f(
            "cflr",
            "carbon filter life %, INV when not fitted; reset by setting 0100",
            "INV",
            numeric=(0, 100),
            set_values=("0100",),
        ),
        _f("hflt", "HEPA filter type (read-only)", "GCOM", "GHEP", "PHEP", writable=False),
        _f(
            "cflt",
            "carbon filter type (read-only)",
            "NONE",
            "CARF",
            "SCOF",
            "SCOG",
            "SCOH",
            writable=False,
        ),
        _f("ercd", "error code (read-only)", pattern=_CODE, writable=False),
        _f("wacd", "warning code (read-only)", pattern=_CODE, writable=False),
        _f("bril", "display brightness (read-only)", numeric=(1, 10), writable=False),
        _f("corf", "temperature units (ON = Celsius)", *ON_OFF),
    )
}

#: Fields a STATE-SET may carry that are commands, not state: filter-life resets (§5
#: ``rstf``/``rhtf``; ``STET`` leaves the filter as it is).
COMMAND_FIELDS: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        _f("rstf", "reset filter life", "RSTF", "STET"),
        _f("rhtf", "reset HEPA filter life", "RHTF", "RSTF", "STET"),
    )
}

#: The special sensor values of §5: warming up, sensors off, sensor failed, no reading.
SENSOR_SPECIALS = frozenset({"INIT", "OFF", "FAIL", "NONE"})


def sensor_value_ok(value: object) -> bool:
    """True for a well-formed environmental reading: four digits or a §5 special value."""
    return isinstance(value, str) and (
        value in SENSOR_SPECIALS or _FOUR_DIGITS.fullmatch(value) is not None
    )
