"""Product profiles: what one kind of Dyson air device is, says and starts as (dyson.md §3).

A :class:`ProductProfile` carries the identity the cloud and the clients see (product
type, variant, **root topic** apart from the type: a TP11 is type ``438`` with root
``438M``, §2), the starting state copied verbatim from a real capture (§3 A-E: the
CURRENT-STATE and the ENVIRONMENTAL-CURRENT-SENSOR-DATA ``data``), which fields exist and
which values they take (§5, narrowed per profile), whether CURRENT-STATE brings
environmental data with it (``env_with_state``, §4.4), which sensors warm up as ``INIT``
(§5), the fault keys (§4.3) and the device's time style (§4.1).

Starting states are kept exactly as captured, even where a capture disagrees with the
derived-field rules (the TP04 capture shows ``fpwr`` OFF with ``fnst`` FAN): §5 has the
simulator apply those rules *after every STATE-SET*, so a fresh device's first
CURRENT-STATE is the capture itself. Profiles are frozen; adjust one with
:func:`dataclasses.replace` (for example ``replace(PROFILES["438"], env_with_state=True)``).

Manifest-only facts (``firmware_version``, ``capabilities``, ``product_name``) come from
the spec's manifest example for ``438M`` (§6) and are **(inferred)** for the others.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.errors import ConfigError
from simulators.dyson.fields import COMMAND_FIELDS, FIELDS, FieldSpec, sensor_value_ok
from simulators.dyson.messages import FAULT_CATEGORIES, MODE_REASONS, STATE_REASONS, TimeStyle

Pairs = tuple[tuple[str, str], ...]

_ROOT = re.compile(r"[0-9A-Z]{3,5}")


class Family(enum.Enum):
    """How a product spells power and auto mode (§3, §5)."""

    #: Link v1 (TP02 ``475``, HP02 ``455``): ``fmod`` OFF/FAN/AUTO stands for power + auto.
    LINK_V1 = "link-v1"
    #: v2 (2018+): ``fpwr`` and ``auto`` apart, ``oscs``, ``p25r``/``p10r`` sensors.
    V2 = "v2"


def _pairs(mapping: Mapping[str, str]) -> Pairs:
    return tuple(mapping.items())


@dataclass(frozen=True, kw_only=True)
class ProductProfile:
    """One kind of device: identity, starting state, fields, sensors and faults (§3)."""

    # Identity (§3 table; manifest v3, §6)
    name: str
    product_type: str
    variant: str | None
    root_topic: str
    model: str
    product_name: str
    family: Family
    category: str = "ec"
    connection_category: str = "lecAndWifi"
    firmware_version: str
    hello_version: str
    capabilities: tuple[str, ...]
    source: str
    # Starting state: the §3 capture, verbatim
    mode_reason: str
    state_reason: str
    top_level: Pairs
    product_state: Pairs
    scheduler: Pairs
    sensors: Pairs
    # Behaviour switches
    env_with_state: bool
    warmup_fields: frozenset[str] = frozenset()
    warmup_s: float = 180.0
    supports_locate: bool = False
    apos: str = "0180"
    time_style: TimeStyle = TimeStyle.ZERO_MILLIS
    # Fields and faults
    value_overrides: tuple[tuple[str, tuple[str, ...]], ...] = ()
    command_fields: frozenset[str] = frozenset()
    faults: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError(f"Dyson profile {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if not _ROOT.fullmatch(self.root_topic):
            problems.append(f"root topic {self.root_topic!r} is not like 438 or 438M")
        if self.mode_reason not in MODE_REASONS:
            problems.append(f"mode-reason {self.mode_reason!r} is not one of §4.1")
        if self.state_reason not in STATE_REASONS:
            problems.append(f"state-reason {self.state_reason!r} is not one of §4.1")
        specs = self.field_specs()
        for name, value in self.product_state:
            spec = specs.get(name)
            if spec is None:
                problems.append(f"product-state field {name!r} is not in the §5 dictionary")
            elif not spec.holds(value):
                problems.append(f"{name}={value!r} is outside the values of §5")
        for name, value in self.sensors:
            if not sensor_value_ok(value):
                problems.append(f"sensor {name}={value!r} is not four digits or a special")
        if "sltm" not in dict(self.sensors):
            problems.append("sensor data must carry sltm (§4.3)")
        if not self.warmup_fields <= set(dict(self.sensors)):
            problems.append("warm-up fields must be sensor fields")
        if self.warmup_s < 0:
            problems.append("warmup_s must not be negative")
        for name in self.command_fields:
            if name not in COMMAND_FIELDS:
                problems.append(f"command field {name!r} is unknown")
        categories = [category for category, _ in self.faults]
        if categories != list(FAULT_CATEGORIES):
            problems.append(f"faults must list the categories {FAULT_CATEGORIES} in order")
        if self.family is Family.V2 and "fpwr" not in dict(self.product_state):
            problems.append("a v2 profile needs fpwr")
        if self.family is Family.LINK_V1 and "fmod" not in dict(self.product_state):
            problems.append("a Link v1 profile needs fmod")
        return problems

    # Views

    @property
    def state(self) -> dict[str, str]:
        """The starting product-state, in capture order."""
        return dict(self.product_state)

    @property
    def sensor_fields(self) -> tuple[str, ...]:
        """The environmental fields, in capture order, ``sltm`` included (§4.3)."""
        return tuple(name for name, _ in self.sensors)

    def field_specs(self) -> dict[str, FieldSpec]:
        """§5 specs of this profile's product-state fields, narrowed by ``value_overrides``."""
        overrides = dict(self.value_overrides)
        specs: dict[str, FieldSpec] = {}
        for name, _ in self.product_state:
            spec = FIELDS.get(name)
            if spec is None:
                continue
            if name in overrides:
                spec = spec.restricted(frozenset(overrides[name]))
            specs[name] = spec
        return specs

    def settable_fields(self) -> dict[str, FieldSpec]:
        """What a STATE-SET may carry on this profile: writable state fields and commands."""
        specs = {name: spec for name, spec in self.field_specs().items() if spec.writable}
        if "sltm" not in specs and "sltm" in self.sensor_fields:
            # Link devices report the sleep timer only in their sensor data, yet take it in
            # a STATE-SET (libpurecool ``set_configuration(sleep_timer=...)``; libdyson).
            specs["sltm"] = FIELDS["sltm"]
        specs.update({name: COMMAND_FIELDS[name] for name in sorted(self.command_fields)})
        return specs

    @property
    def fault_keys(self) -> dict[str, tuple[str, ...]]:
        """Fault keys by category, in the order CURRENT-FAULTS lists them (§4.3)."""
        return dict(self.faults)


#: Fault keys of v2 air devices: the CURRENT-FAULTS example of §4.3.
_V2_FAULTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("product-errors", ("amf1", "com1", "fs01", "psu1", "sen1", "ui01")),
    ("product-warnings", ("fltr",)),
    ("module-errors", ("lspd", "szme")),
    (
        "module-warnings",
        ("nwcs", "nwds", "nwps", "nwss", "nwts", "srmi", "srmu", "srnk", "stac", "strs"),
    ),
)
#: Humidifiers add the product warnings tank empty/removed, clean due, temperature (§4.3).
_HUMIDIFIER_FAULTS = tuple(
    (c, (*keys, "tnke", "tnkp", "cldu", "etwd")) if c == "product-warnings" else (c, keys)
    for c, keys in _V2_FAULTS
)
#: Link TP02 keys, from a real CURRENT-FAULTS (thoukydides ``mqtt-logs/475.jsonl``; §4.3
#: names ``cnfg``, ``dsts``, ``fmco``, ``hall``, ``t&hs``, ``wfhb``, ...).
_LINK_FAULTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "product-errors",
        (
            "t&hs",
            "cnfg",
            "dsts",
            "fmco",
            "hall",
            "hamp",
            "ibus",
            "ilss",
            "nvmr",
            "nvmw",
            "shrt",
            "stal",
            "stto",
            "vocs",
            "wdog",
            "wfcp",
            "wfhb",
        ),
    ),
    ("product-warnings", ("fltr",)),
    (
        "module-errors",
        (
            "lspd",
            "szav",
            "szbv",
            "szed",
            "szhv",
            "szme",
            "szmw",
            "szpe",
            "szpi",
            "szpp",
            "szps",
            "szpw",
        ),
    ),
    (
        "module-warnings",
        ("nwcs", "nwds", "nwps", "nwss", "nwts", "srmi", "srmu", "srnk", "stac", "strs"),
    ),
)
_V2_CAPABILITIES = ("Scheduling", "EnvironmentalData", "ExtendedAQ", "ChangeWifi")

TP04 = ProductProfile(
    name="438",
    product_type="438",
    variant=None,
    root_topic="438",
    model="TP04",
    product_name="Dyson Pure Cool",
    family=Family.V2,
    firmware_version="438PF.00.01.003.0011",
    hello_version="438PF.00.01.003.0011",
    capabilities=_V2_CAPABILITIES,
    source="dyson.md §3 A: libdyson-neon tests/test_pure_cool.py; env thoukydides 438-v2.jsonl",
    mode_reason="RAPP",
    state_reason="MODE",
    top_level=_pairs({"dial": "OFF", "rssi": "-46", "channel": "1"}),
    product_state=_pairs(
        {
            "fpwr": "OFF",
            "fdir": "OFF",
            "auto": "OFF",
            "oscs": "OFF",
            "oson": "OIOF",
            "nmod": "OFF",
            "rhtm": "OFF",
            "fnst": "FAN",
            "ercd": "NONE",
            "wacd": "NONE",
            "nmdv": "0004",
            "fnsp": "AUTO",
            "bril": "0002",
            "corf": "ON",
            "cflr": "0100",
            "hflr": "0100",
            "sltm": "OFF",
            "osal": "0063",
            "osau": "0243",
            "ancp": "CUST",
        }
    ),
    scheduler=_pairs({"srsc": "000000005b1792f0", "dstv": "0001", "tzid": "0001"}),
    sensors=_pairs(
        {
            "tact": "2924",
            "hact": "0043",
            "pm25": "0001",
            "pm10": "0001",
            "va10": "0005",
            "noxl": "0004",
            "p25r": "0002",
            "p10r": "0002",
            "sltm": "OFF",
        }
    ),
    env_with_state=False,
    warmup_fields=frozenset({"va10", "noxl"}),
    command_fields=frozenset({"rstf", "rhtf"}),
    faults=_V2_FAULTS,
)

TP11 = ProductProfile(
    name="438M",
    product_type="438",
    variant="M",
    root_topic="438M",
    model="TP11",
    product_name="Dyson Purifier Cool PC1",
    family=Family.V2,
    firmware_version="438MPF.00.01.003.0011",
    hello_version="438MPF.00.01.003.0011",
    capabilities=(
        "AdvanceOscillationDay0",
        "AdvanceOscillationDay1",
        "Scheduling",
        "EnvironmentalData",
        "ExtendedAQ",
        "ChangeWifi",
    ),
    source="dyson.md §3 B: thoukydides mqtt-logs/438M.jsonl (ha-dyson #238); manifest §6",
    mode_reason="RAPP",
    state_reason="MODE",
    top_level=_pairs({"channel": "6", "fghp": "0", "fqhp": "0", "rssi": "-55"}),
    product_state=_pairs(
        {
            "ancp": "CUST",
            "auto": "ON",
            "bril": "0002",
            "cflr": "INV",
            "cflt": "NONE",
            "fnsp": "AUTO",
            "fnst": "OFF",
            "fpwr": "ON",
            "hflr": "0100",
            "hflt": "GCOM",
            "nmdv": "0004",
            "nmod": "OFF",
            "osal": "0136",
            "osau": "0226",
            "oscs": "IDLE",
            "oson": "ON",
            "rhtm": "ON",
            "sltm": "OFF",
            "wacd": "NONE",
        }
    ),
    scheduler=_pairs({"dstv": "0001", "srsc": "0000000000000000", "tzid": "0001"}),
    sensors=_pairs({"p10r": "0005", "p25r": "0005", "pm10": "0002", "pm25": "0003", "sltm": "OFF"}),
    env_with_state=True,
    supports_locate=True,
    apos="0153",
    command_fields=frozenset({"rstf", "rhtf"}),
    faults=_V2_FAULTS,
)

HP04 = ProductProfile(
    name="527",
    product_type="527",
    variant=None,
    root_topic="527",
    model="HP04",
    product_name="Dyson Pure Hot+Cool",
    family=Family.V2,
    category="ec",
    firmware_version="527PF.00.01.003.0011",
    hello_version="527PF.00.01.003.0011",
    capabilities=_V2_CAPABILITIES,
    source="dyson.md §3 C: thoukydides mqtt-logs/527.jsonl (homebridge-dyson-link #110)",
    mode_reason="NONE",
    state_reason="MODE",
    top_level=_pairs({"rssi": "-42", "channel": "48", "fqhp": "101096", "fghp": "0"}),
    product_state=_pairs(
        {
            "fpwr": "ON",
            "auto": "OFF",
            "oscs": "ON",
            "oson": "ON",
            "nmod": "OFF",
            "rhtm": "ON",
            "fnst": "FAN",
            "ercd": "31U2",
            "wacd": "NONE",
            "nmdv": "0004",
            "fnsp": "0005",
            "bril": "0002",
            "corf": "ON",
            "cflr": "0084",
            "hflr": "0084",
            "cflt": "CARF",
            "hflt": "GHEP",
            "sltm": "OFF",
            "osal": "0184",
            "osau": "0184",
            "ancp": "CUST",
            "hmod": "OFF",
            "hmax": "2760",
            "tilt": "OK",
            "hsta": "OFF",
            "psta": "OFF",
            "fdir": "ON",
        }
    ),
    scheduler=_pairs({"srsc": "0000000000000000", "dstv": "0000", "tzid": "0001"}),
    sensors=_pairs(
        {
            "tact": "2998",
            "hact": "0064",
            "pm25": "0000",
            "pm10": "0000",
            "va10": "0004",
            "noxl": "0000",
            "p25r": "0000",
            "p10r": "0000",
            "sltm": "OFF",
        }
    ),
    env_with_state=True,
    warmup_fields=frozenset({"va10", "noxl"}),
    command_fields=frozenset({"rstf", "rhtf"}),
    faults=_V2_FAULTS,
)

TP02 = ProductProfile(
    name="475",
    product_type="475",
    variant=None,
    root_topic="475",
    model="TP02",
    product_name="Dyson Pure Cool Link Tower",
    family=Family.LINK_V1,
    connection_category="wifiOnly",
    firmware_version="21.04.03",
    hello_version="21.04.03",
    capabilities=("EnvironmentalData",),
    source="dyson.md §3 D: libpurecool tests/data/state.json, sensor.json",
    mode_reason="LAPP",
    state_reason="ENV",
    top_level=_pairs({"dial": "OFF", "rssi": "-55"}),
    product_state=_pairs(
        {
            "fmod": "AUTO",
            "fnst": "FAN",
            "fnsp": "AUTO",
            "qtar": "0004",
            "oson": "OFF",
            "rhtm": "ON",
            "filf": "2087",
            "ercd": "02C0",
            "nmod": "ON",
            "wacd": "NONE",
        }
    ),
    scheduler=_pairs({"srsc": "cbd0", "dstv": "0001", "tzid": "0001"}),
    sensors=_pairs({"tact": "2967", "hact": "0054", "pact": "0004", "vact": "0005", "sltm": "OFF"}),
    env_with_state=False,
    # thoukydides mqtt-logs/475.jsonl: vact reads INIT right after the fan starts.
    warmup_fields=frozenset({"vact"}),
    time_style=TimeStyle.SEQUENCE_MILLIS,
    value_overrides=(("oson", ("ON", "OFF")),),
    command_fields=frozenset({"rstf"}),
    faults=_LINK_FAULTS,
)

PH01 = ProductProfile(
    name="358",
    product_type="358",
    variant=None,
    root_topic="358",
    model="PH01",
    product_name="Dyson Pure Humidify+Cool",
    family=Family.V2,
    firmware_version="358PF.00.01.003.0011",
    hello_version="358PF.00.01.003.0011",
    capabilities=_V2_CAPABILITIES,
    source="dyson.md §3 E: thoukydides mqtt-logs/358-v1.jsonl (libpurecool #16)",
    mode_reason="NONE",
    state_reason="MODE",
    top_level=_pairs({"channel": "1", "fghp": "73104", "fqhp": "103808", "rssi": "-41"}),
    product_state=_pairs(
        {
            "ancp": "0090",
            "auto": "OFF",
            "bril": "0002",
            "cdrr": "0060",
            "cflr": "INV",
            "cflt": "NONE",
            "clcr": "CLNO",
            "cltr": "1948",
            "corf": "OFF",
            "ercd": "31U2",
            "fdir": "ON",
            "fnsp": "0005",
            "fnst": "FAN",
            "fpwr": "ON",
            "haut": "OFF",
            "hflr": "0096",
            "hflt": "GCOM",
            "hume": "OFF",
            "humt": "0050",
            "msta": "OFF",
            "nmdv": "0004",
            "nmod": "OFF",
            "osal": "0135",
            "osau": "0225",
            "oscs": "ON",
            "oson": "ON",
            "psta": "OFF",
            "rect": "0035",
            "rhtm": "ON",
            "sltm": "OFF",
            "wacd": "NONE",
            "wath": "2025",
        }
    ),
    scheduler=_pairs({"dstv": "0001", "srsc": "0000000000000000", "tzid": "0001"}),
    sensors=_pairs(
        {
            "hact": "0034",
            "noxl": "0000",
            "p10r": "0000",
            "p25r": "0000",
            "pm10": "0000",
            "pm25": "0000",
            "sltm": "OFF",
            "tact": "2994",
            "va10": "0008",
        }
    ),
    env_with_state=True,
    warmup_fields=frozenset({"va10", "noxl"}),
    # §3: the humidifier's angle profiles are BRZE/0045/0090 (and CUST); libdyson ON/OFF.
    value_overrides=(("ancp", ("BRZE", "0045", "0090", "CUST")), ("oson", ("ON", "OFF"))),
    command_fields=frozenset({"rstf", "rhtf"}),
    faults=_HUMIDIFIER_FAULTS,
)

#: The profiles by name (the root topic, which is what tells the variants apart).
PROFILES: Mapping[str, ProductProfile] = {p.name: p for p in (TP04, TP11, HP04, TP02, PH01)}


def get_profile(name: str) -> ProductProfile:
    """The profile called ``name`` (``"438"``, ``"438M"``, ...); :class:`ConfigError` if none."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ConfigError(f"no Dyson profile {name!r}; known profiles: {known}") from None
