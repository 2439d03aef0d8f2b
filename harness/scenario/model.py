"""Scenario files as data: the frozen dataclasses the loader builds and the runner reads.

A scenario (issue [scenarios], DESIGN.md "Contracts" §3) describes one reproducible run:

* the **world** (:class:`WorldSpec`): gateway settings with AWS's limits compressed into
  seconds (DESIGN.md "Time is compressed by configuration"), the certificate each TLS
  listener serves, identity pools, custom authorizers, things, and simulated Dyson
  devices with the fake Dyson cloud;
* the **clients** under test (:class:`ClientSpec`), each optionally marked as a known
  failure (a field bug the scenario documents, ``specs/field-bugs.md``);
* a **fault plan** (:class:`FaultSpec`): protocol-aware faults and TCP toxics that fire at
  a time, on an event, or on the Nth occurrence of one;
* **expectations** (:data:`Expectation`) over the event timeline, which
  :mod:`harness.scenario.expectations` evaluates.

Everything here is plain data: no sockets, no clocks, no files. Names follow the code that
will run it: :class:`~harness.gateway.server.GatewayConfig`,
:class:`~harness.mqtt.rules.Limits`, :class:`~harness.cognito.IdentityPool`,
:class:`~harness.auth.custom.Authorizer`, :class:`~harness.pki.BadCert`. The tables
:data:`ACTIONS` and :data:`QUIRKS` are the single source of the fault actions and Dyson
quirks a file may name, with their parameters and defaults; the loader validates against
them and ``schema.json`` mirrors them (a test keeps the two in step).

Units: every time is seconds (fractions allowed), every size bytes, every rate per second,
also where Toxiproxy or the Dyson spec use milliseconds or kilobytes.
"""

from __future__ import annotations

import abc
import fnmatch
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from harness.errors import ConfigError
from harness.events import Event
from harness.mqtt.rules import Limits

if TYPE_CHECKING:
    from harness.gateway.server import GatewayConfig

__all__ = [
    "ACTIONS",
    "CERTIFICATES",
    "CLIENT_KINDS",
    "DEVICE_TARGET_PREFIX",
    "LISTENERS",
    "OPERATORS",
    "QUIRKS",
    "ActionSpec",
    "AuthorizerSpec",
    "ClientSpec",
    "CognitoSpec",
    "DysonCloudSpec",
    "DysonDeviceSpec",
    "DysonSpec",
    "EventPattern",
    "Expectation",
    "FaultSpec",
    "FieldMatch",
    "GatewaySpec",
    "Happens",
    "IdentityPoolSpec",
    "KnownFailure",
    "Never",
    "Param",
    "QuirkSpec",
    "Rate",
    "Scenario",
    "Sequence",
    "ThingSpec",
    "WorldSpec",
]

#: Certificates a TLS listener (or a thing) can present; the bad ones are
#: :class:`harness.pki.BadCert`'s values (aws-iot.md §3, field-bugs.md FB-18).
CERTIFICATES = (
    "good",
    "expired",
    "not-yet-valid",
    "wrong-host",
    "untrusted-ca",
    "self-signed",
    "missing-intermediate",
)
Certificate: TypeAlias = str

#: How a client under test is run (issue [clients]): a reference app from
#: ``simulators/apps`` (``kind: app`` + ``app: NAME``), an in-process library client, or
#: any command.
CLIENT_KINDS = ("app", "paho", "awsiotsdk", "libdyson-neon", "libdyson-rest", "command")

#: Listeners of a world a fault can target; ``device:<serial>`` names a device's broker.
LISTENERS = ("gateway", "gateway-wss", "gateway-mqtts", "cognito", "dyson-api")
DEVICE_TARGET_PREFIX = "device:"

#: Field operators of an event pattern (``status: {gt: 400}``).
OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "contains", "regex", "exists")


# Parameters of fault actions and quirks


ParamType = Literal[
    "seconds",  # finite number >= 0
    "offset",  # finite number, may be negative (clock offsets)
    "count",  # integer >= 0
    "status",  # HTTP status, integer 100-599
    "fraction",  # number 0..1
    "string",
    "choice",
]


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter of a fault action or a quirk: its type, default and meaning."""

    type: ParamType
    doc: str
    default: Any = None
    #: Must the file give it? (``default`` is then unused.)
    required: bool = False
    #: May it be ``null`` (meaning "off" / "any", as ``doc`` says)?
    nullable: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ActionSpec:
    """A fault action: its parameters, where it can be aimed, whether it lasts."""

    doc: str
    params: Mapping[str, Param] = field(default_factory=dict)
    #: Listener kinds ``target`` may name (``device`` = any ``device:<serial>``); empty when
    #: the action has one fixed place (``target`` is then refused).
    targets: tuple[str, ...] = ()
    default_target: str | None = None
    #: Lasting actions stay in effect for ``duration`` (None: to the end); one-shot actions
    #: refuse ``duration``.
    lasting: bool = False
    #: A TCP-level toxic in the manner of Toxiproxy (takes ``direction`` and ``toxicity``).
    toxic: bool = False


_ALL_TARGETS = (*LISTENERS, "device")
_TLS_TARGETS = LISTENERS
_CONN_TARGETS = ("gateway", "gateway-wss", "gateway-mqtts", "device")
_CLIENT_ID = Param(
    type="string", nullable=True, doc="only connections with this MQTT client id (null: all)"
)
_TOXIC_COMMON = {
    "direction": Param(
        type="choice",
        choices=("downstream", "upstream", "both"),
        default="downstream",
        doc="bytes towards the client (downstream, Toxiproxy's default) or the server",
    ),
    "toxicity": Param(
        type="fraction", default=1.0, doc="probability that a connection gets the toxic"
    ),
}


def _toxic(doc: str, **params: Param) -> ActionSpec:
    return ActionSpec(
        doc=doc,
        params={**params, **_TOXIC_COMMON},
        targets=_ALL_TARGETS,
        default_target="gateway",
        lasting=True,
        toxic=True,
    )


#: Every fault action a scenario may name (issue [scenarios], "Fault plans").
ACTIONS: Mapping[str, ActionSpec] = {
    # Protocol-aware: WebSocket upgrade and MQTT CONNECT (aws-iot.md §1.9, §2.4, §4.5)
    "refuse-upgrade": ActionSpec(
        doc="answer the next `count` WebSocket upgrades with `status` and `body` (aws-iot.md §1.9)",
        params={
            "status": Param(type="status", default=403, doc="HTTP status of the refusal"),
            "body": Param(type="string", nullable=True, doc="response body (null: AWS's 403 JSON)"),
            "reason_phrase": Param(
                type="string", nullable=True, doc="status line text (null: the standard one)"
            ),
        },
    ),
    "withhold-connack": ActionSpec(doc="accept the next `count` CONNECTs, never send CONNACK"),
    "delay-connack": ActionSpec(
        doc="send the CONNACK of the next `count` CONNECTs `delay` seconds late",
        params={"delay": Param(type="seconds", required=True, doc="seconds of delay")},
    ),
    "close-after-connect": ActionSpec(
        doc="close the next `count` connections right after CONNECT, no CONNACK (aws-iot.md §2.4)"
    ),
    # Connections
    "drop-connection": ActionSpec(
        doc="close live connections cleanly (TCP FIN, no MQTT DISCONNECT)",
        params={"client_id": _CLIENT_ID},
        targets=_CONN_TARGETS,
        default_target="gateway",
    ),
    "reset-connection": ActionSpec(
        doc="abort live connections with a TCP RST",
        params={"client_id": _CLIENT_ID},
        targets=_CONN_TARGETS,
        default_target="gateway",
    ),
    "half-open": ActionSpec(
        doc="stop answering live connections but keep their sockets open",
        params={"client_id": _CLIENT_ID},
        targets=_CONN_TARGETS,
        default_target="gateway",
        lasting=True,
    ),
    # Credentials and authorizers (aws-iot.md §1.5, §2.3, §6)
    "expire-credentials": ActionSpec(
        doc="make issued temporary credentials expire now",
        params={
            "identity_pool": Param(
                type="string", nullable=True, doc="only this pool's credentials (null: all)"
            )
        },
    ),
    "authorizer-deny": ActionSpec(
        doc="make a custom authorizer answer isAuthenticated=false",
        params={
            "authorizer": Param(
                type="string", nullable=True, doc="authorizer name (null: every authorizer)"
            )
        },
        lasting=True,
    ),
    # TLS (aws-iot.md §3, field-bugs.md FB-18)
    "rotate-certificate": ActionSpec(
        doc="serve another certificate from now on",
        params={
            "certificate": Param(
                type="choice", choices=CERTIFICATES, required=True, doc="what to serve"
            )
        },
        targets=_TLS_TARGETS,
        default_target="gateway",
        lasting=True,
    ),
    "legacy-tls-only": ActionSpec(
        doc="offer only TLS 1.0/1.1 (AWS requires 1.2+)",
        params={
            "max_version": Param(
                type="choice",
                choices=("TLSv1", "TLSv1.1"),
                default="TLSv1.1",
                doc="highest version offered",
            )
        },
        targets=_TLS_TARGETS,
        default_target="gateway",
        lasting=True,
    ),
    # Time (aws-iot.md §1.7)
    "clock-offset": ActionSpec(
        doc="shift the world clock by `seconds` (a client then looks skewed)",
        params={"seconds": Param(type="offset", required=True, doc="seconds, may be negative")},
    ),
    # Services (aws-iot.md §6, dyson.md §6)
    "cognito-error": ActionSpec(
        doc="answer the next `count` Cognito calls with an AWS error",
        params={
            "error": Param(
                type="string", default="InternalErrorException", doc="the __type answered"
            ),
            "status": Param(type="status", nullable=True, doc="HTTP status (null: AWS's)"),
            "operation": Param(
                type="choice",
                choices=("GetId", "GetCredentialsForIdentity"),
                nullable=True,
                doc="only this operation (null: any)",
            ),
        },
    ),
    "cognito-throttle": ActionSpec(
        doc="answer TooManyRequestsException above `rate_limit` calls per second",
        params={
            "rate_limit": Param(
                type="seconds", nullable=True, doc="calls per second allowed (null: none)"
            )
        },
        lasting=True,
    ),
    "dyson-api-error": ActionSpec(
        doc="answer the next `count` Dyson API requests with an HTTP error",
        params={
            "status": Param(type="status", default=500, doc="HTTP status"),
            "path": Param(
                type="string", nullable=True, doc="only paths starting with this (null: all)"
            ),
        },
    ),
    "dyson-api-throttle": ActionSpec(
        doc="answer 429 to Dyson API requests",
        params={
            "path": Param(
                type="string", nullable=True, doc="only paths starting with this (null: all)"
            )
        },
        lasting=True,
    ),
    # TCP toxics in the manner of Toxiproxy, times in seconds and sizes in bytes
    "latency": _toxic(
        "delay data by `latency` ± `jitter` seconds",
        latency=Param(type="seconds", required=True, doc="seconds added"),
        jitter=Param(type="seconds", default=0.0, doc="± seconds of random jitter"),
    ),
    "bandwidth": _toxic(
        "limit throughput to `rate` bytes per second",
        rate=Param(type="count", required=True, doc="bytes per second"),
    ),
    "timeout": _toxic(
        "stop all data; close after `timeout` seconds (0: black hole until removed)",
        timeout=Param(type="seconds", default=0.0, doc="seconds before closing; 0 = never"),
    ),
    "reset-peer": _toxic(
        "reset connections with a TCP RST after `timeout` seconds",
        timeout=Param(type="seconds", default=0.0, doc="seconds before the reset"),
    ),
    "slicer": _toxic(
        "cut data into small pieces with a delay between them",
        average_size=Param(type="count", required=True, doc="average bytes per piece"),
        size_variation=Param(type="count", default=0, doc="± bytes of variation"),
        delay=Param(type="seconds", default=0.0, doc="seconds between pieces"),
    ),
    "limit-data": _toxic(
        "close connections after `bytes` bytes",
        bytes=Param(type="count", required=True, doc="bytes let through"),
    ),
    "slow-close": _toxic(
        "delay the TCP close by `delay` seconds",
        delay=Param(type="seconds", required=True, doc="seconds of delay"),
    ),
}


#: The Dyson device's field quirks (dyson.md §1.4), by switch name, with their
#: parameters. Times are seconds (the spec's ``window_s`` is ``window``, ``delay_ms`` 10
#: is ``delay: 0.01``); M and T of ``syn_fragile`` are **(unknown)** in the spec, so the
#: defaults are the harness's choice.
QUIRKS: Mapping[str, Mapping[str, Param]] = {
    "stale_session_rst": {
        "window": Param(type="seconds", default=90.0, doc="seconds a stale session resets")
    },
    "session_cap": {
        "max_sessions": Param(type="count", default=4, doc="sessions, stale ones included")
    },
    "foreign_subscribe_drop": {
        "delay": Param(type="seconds", default=0.01, doc="seconds until the TCP close")
    },
    "hash_wildcard": {
        "mode": Param(
            type="choice",
            choices=("silent", "refuse", "drop"),
            default="silent",
            doc="answer to a bare '#' subscription",
        )
    },
    "syn_fragile": {
        "attempts": Param(type="count", default=5, doc="connection attempts (M)"),
        "window": Param(type="seconds", default=10.0, doc="within seconds (T)"),
        "blackout": Param(type="seconds", default=60.0, doc="seconds SYNs go unanswered"),
    },
    "mute": {},
    "duplicates": {},
    "reorder": {},
    "strict_client_id": {},
}


# Event patterns


@functools.lru_cache(maxsize=256)
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def values_equal(actual: object, expected: object) -> bool:
    """Equality as a pattern means it: ``403 == 403.0``, but ``True`` is not ``1``."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    if _is_number(actual) and _is_number(expected):
        return actual == expected
    if isinstance(actual, list | tuple) and isinstance(expected, list | tuple):
        return len(actual) == len(expected) and all(
            values_equal(a, e) for a, e in zip(actual, expected, strict=True)
        )
    return actual == expected


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class FieldMatch:
    """One condition on one event field: ``status: 403`` is ``FieldMatch("status", "eq", 403)``.

    ``field`` ``conn`` reads the event's connection id and ``t`` its time; anything else
    reads :attr:`Event.fields`. ``ne`` and ``not_in`` also match an absent field;
    ordering operators match numbers only; ``contains`` is a substring of a string or an
    element of a list; ``regex`` searches a string; ``exists`` tests presence (not null).
    """

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ConfigError(f"unknown operator {self.op!r}; expected one of {OPERATORS}")
        object.__setattr__(self, "value", _freeze(self.value))
        if self.op == "regex":
            if not isinstance(self.value, str):
                raise ConfigError(f"{self.field}: regex needs a string")
            try:
                _compiled(self.value)
            except re.error as exc:
                raise ConfigError(f"{self.field}: bad regex {self.value!r}: {exc}") from None
        if self.op in ("in", "not_in") and not isinstance(self.value, tuple):
            raise ConfigError(f"{self.field}: {self.op} needs a list of values")
        if self.op in ("gt", "ge", "lt", "le") and not _is_number(self.value):
            raise ConfigError(f"{self.field}: {self.op} needs a number")
        if self.op == "exists" and not isinstance(self.value, bool):
            raise ConfigError(f"{self.field}: exists needs true or false")

    def lookup(self, event: Event) -> tuple[bool, Any]:
        """``(present, value)`` of this field in ``event``."""
        if self.field == "conn":
            return event.conn is not None, event.conn
        if self.field == "t":
            return True, event.t
        if self.field in event.fields:
            value = event.fields[self.field]
            return value is not None, value
        return False, None

    def test(self, event: Event) -> bool:
        present, actual = self.lookup(event)
        op, expected = self.op, self.value
        if op == "exists":
            return present is expected
        if op == "ne":
            return not present or not values_equal(actual, expected)
        if op == "not_in":
            return not present or not any(values_equal(actual, v) for v in expected)
        if op == "eq":
            return values_equal(actual, expected) if present else expected is None
        if not present:
            return False
        if op == "in":
            return any(values_equal(actual, v) for v in expected)
        if op in ("gt", "ge", "lt", "le"):
            if not _is_number(actual):
                return False
            return bool(
                {
                    "gt": actual > expected,
                    "ge": actual >= expected,
                    "lt": actual < expected,
                    "le": actual <= expected,
                }[op]
            )
        if op == "contains":
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            if isinstance(actual, list | tuple):
                return any(values_equal(a, expected) for a in actual)
            return False
        # regex
        return isinstance(actual, str) and _compiled(expected).search(actual) is not None

    def describe(self) -> str:
        shown = show_value(self.value)
        if self.op == "eq":
            return f"{self.field}={shown}"
        symbols = {"ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        if self.op in symbols:
            return f"{self.field}{symbols[self.op]}{shown}"
        if self.op == "exists":
            return f"{self.field} present" if self.value else f"no {self.field}"
        return f"{self.field} {self.op.replace('_', ' ')} {shown}"

    def to_data(self) -> Any:
        value = _thaw(self.value)
        return value if self.op == "eq" and not isinstance(value, list) else {self.op: value}


_BARE = re.compile(r"[\w.:/@+#$-]+")


def show_value(value: Any, limit: int = 60) -> str:
    """A value as explanations print it: simple strings bare, the rest as Python repr."""
    bare = isinstance(value, str) and _BARE.fullmatch(value)
    text = value if bare else repr(_thaw(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind_matches(pattern: str | None, kind: str) -> bool:
    """``None`` matches all; ``mqtt.`` is a prefix; ``*``/``?`` glob; otherwise exact."""
    if pattern is None:
        return True
    if pattern.endswith("."):
        return kind.startswith(pattern)
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(kind, pattern)
    return kind == pattern


@dataclass(frozen=True)
class EventPattern:
    """Which events an expectation or a fault trigger means: a kind and field conditions."""

    kind: str | None = None
    fields: tuple[FieldMatch, ...] = ()

    @classmethod
    def of(cls, kind: str | None = None, /, **conditions: Any) -> EventPattern:
        """Build a pattern in Python as a file writes it: ``of("ws.upgrade", status=403)``.

        A mapping value is operators (``attempts={"gt": 1, "le": 3}``); anything else
        must equal. Raises :class:`~harness.errors.ConfigError` for an unknown operator.
        """
        matches: list[FieldMatch] = []
        for name, value in conditions.items():
            if isinstance(value, Mapping):
                if not value:
                    raise ConfigError(f"{name}: an empty operator mapping matches nothing")
                matches.extend(FieldMatch(name, str(op), v) for op, v in value.items())
            else:
                matches.append(FieldMatch(name, "eq", value))
        return cls(kind, tuple(matches))

    def matches(self, event: Event) -> bool:
        return kind_matches(self.kind, event.kind) and all(m.test(event) for m in self.fields)

    def describe(self) -> str:
        parts = [self.kind or "any event", *(m.describe() for m in self.fields)]
        return " ".join(parts)

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind is not None:
            out["kind"] = self.kind
        for match in self.fields:
            data = match.to_data()
            if isinstance(data, dict) and isinstance(out.get(match.field), dict):
                out[match.field].update(data)
            else:
                out[match.field] = data
        return out


# Expectations


#: ``after``: the name of another expectation (its first matching event, or the last event
#: of its sequence) or of a fault (its ``fault.fired`` event), or a pattern (its first
#: matching event).
Anchor: TypeAlias = str | EventPattern


def _anchor_data(anchor: Anchor | None) -> Any:
    return anchor.to_data() if isinstance(anchor, EventPattern) else anchor


@dataclass(frozen=True, kw_only=True)
class _ExpectationBase(abc.ABC):
    #: Unique among the scenario's expectations and faults; ``after`` refers to it.
    name: str | None = None
    #: Only events after this one count; ``within`` is measured from it.
    after: Anchor | None = None
    #: Seconds after the anchor (or the world's start) by which it must be decided.
    within: float | None = None
    #: Why the expectation matters (a field bug, a spec section): shown on failure.
    why: str | None = None
    #: Line of the expectation in its file, for failure reports.
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.within is not None and not (math.isfinite(self.within) and self.within >= 0):
            raise ConfigError(f"within must be seconds >= 0, got {self.within}")

    def _common_data(self, key: str, value: Any) -> dict[str, Any]:
        """``name``, the type's key and its pattern(s), then ``after``, ``within``, ``why``."""
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out[key] = value
        if self.after is not None:
            out["after"] = _anchor_data(self.after)
        if self.within is not None:
            out["within"] = self.within
        if self.why is not None:
            out["why"] = self.why
        return out

    @property
    def label(self) -> str:
        return self.name or self.describe()

    @abc.abstractmethod
    def describe(self) -> str:
        """The expectation in one line, for labels and failure texts."""


@dataclass(frozen=True, kw_only=True)
class Happens(_ExpectationBase):
    """An event matching ``pattern`` happens ``at_least`` to ``at_most`` times in the window."""

    pattern: EventPattern
    at_least: int = 1
    at_most: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.at_least < 0 or (self.at_most is not None and self.at_most < self.at_least):
            raise ConfigError(f"need 0 <= at_least <= at_most, got {self.at_least}, {self.at_most}")

    def describe(self) -> str:
        return f"happens {self.pattern.describe()}"

    def to_data(self) -> dict[str, Any]:
        out = self._common_data("happens", self.pattern.to_data())
        if self.at_most is not None and self.at_least == self.at_most:
            out["times"] = self.at_least
        else:
            if self.at_least != 1:
                out["at_least"] = self.at_least
            if self.at_most is not None:
                out["at_most"] = self.at_most
        return out


@dataclass(frozen=True, kw_only=True)
class Never(_ExpectationBase):
    """No event matching ``pattern`` in the window."""

    pattern: EventPattern

    def describe(self) -> str:
        return f"never {self.pattern.describe()}"

    def to_data(self) -> dict[str, Any]:
        return self._common_data("never", self.pattern.to_data())


@dataclass(frozen=True, kw_only=True)
class Sequence(_ExpectationBase):
    """Events matching ``steps`` in this order (others may come between)."""

    steps: tuple[EventPattern, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.steps:
            raise ConfigError("a sequence needs at least one step")
        object.__setattr__(self, "steps", tuple(self.steps))

    def describe(self) -> str:
        return "sequence " + " → ".join(s.describe() for s in self.steps)

    def to_data(self) -> dict[str, Any]:
        return self._common_data("sequence", [s.to_data() for s in self.steps])


@dataclass(frozen=True, kw_only=True)
class Rate(_ExpectationBase):
    """No more than ``max`` events matching ``pattern`` within any ``per`` seconds."""

    pattern: EventPattern
    max: int
    per: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max < 0 or not (math.isfinite(self.per) and self.per > 0):
            raise ConfigError(f"need max >= 0 and per > 0, got {self.max}, {self.per}")

    def describe(self) -> str:
        return f"at most {self.max} {self.pattern.describe()} per {_seconds(self.per)}"

    def to_data(self) -> dict[str, Any]:
        return {
            **self._common_data("rate", self.pattern.to_data()),
            "max": self.max,
            "per": self.per,
        }


Expectation: TypeAlias = Happens | Never | Sequence | Rate


def _seconds(value: float) -> str:
    return f"{value:g} s"


# The fault plan


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """One fault: what it does (``action``, ``params``, ``target``) and when it fires.

    Triggers: ``at`` seconds after the world starts; or ``on`` the ``nth`` event matching
    a pattern (and the following matches, up to ``count`` firings). With neither, at the
    start. ``count`` is how many times the fault acts (upgrades refused, CONNECTs
    withheld, connections dropped; ``None``: no limit); ``duration`` is how long a lasting
    fault (a toxic, a rotated certificate, a denying authorizer) stays in effect
    (``None``: to the end). The runner records ``fault.fired`` with ``fault`` (the action)
    and ``name`` each time it acts.
    """

    action: str
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    target: str | None = None
    # Trigger
    at: float | None = None
    on: EventPattern | None = None
    nth: int = 1
    # Extent
    count: int | None = 1
    duration: float | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"unknown fault action {self.action!r}")
        if self.at is not None and self.on is not None:
            raise ConfigError("a fault fires either `at` a time or `on` an event, not both")
        if self.at is None and self.on is None:
            object.__setattr__(self, "at", 0.0)
        # Parameters as the loader gives them: every one present, defaults filled in.
        specs = ACTIONS[self.action].params
        unknown = sorted(set(self.params) - set(specs))
        if unknown:
            raise ConfigError(f"{self.action} has no parameter {', '.join(unknown)}")
        missing = sorted(k for k, p in specs.items() if p.required and k not in self.params)
        if missing:
            raise ConfigError(f"{self.action} needs {', '.join(missing)}")
        filled = {k: self.params.get(k, p.default) for k, p in specs.items()}
        object.__setattr__(self, "params", filled)

    @property
    def spec(self) -> ActionSpec:
        return ACTIONS[self.action]

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.on is not None:
            out["on"] = self.on.to_data()
            out["nth"] = self.nth
        else:
            out["at"] = self.at
        out["action"] = self.action
        if self.target is not None:
            out["target"] = self.target
        out["count"] = self.count
        if self.spec.lasting:
            out["duration"] = self.duration
        out.update(self.params)
        return out


# Clients


@dataclass(frozen=True, kw_only=True)
class KnownFailure:
    """This client is known to fail the scenario (a documented field bug): xfail, not fail."""

    reason: str
    #: Where the bug is recorded (``FB-23``, ``owner/repo#N``, a URL).
    ref: str | None = None

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason}
        if self.ref is not None:
            out["ref"] = self.ref
        return out


@dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """A client under test and how to run it (issue [clients]).

    ``options`` go to the client's adapter unchanged, except that the loader checks the
    references ``identity_pool``, ``authorizer``, ``thing`` and ``device`` against the
    world. ``requires`` are pip requirement strings (``paho-mqtt<2``) the runner checks
    before starting the client; an unmet one skips the client (an environment matter,
    field-bugs.md FB-21).
    """

    name: str
    kind: str
    app: str | None = None
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    known_failure: KnownFailure | None = None

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.app is not None:
            out["app"] = self.app
        if self.argv:
            out["argv"] = list(self.argv)
        if self.env:
            out["env"] = dict(self.env)
        if self.options:
            out["options"] = dict(self.options)
        if self.requires:
            out["requires"] = list(self.requires)
        if self.known_failure is not None:
            out["known_failure"] = self.known_failure.to_data()
        return out


# The world


@dataclass(frozen=True, kw_only=True)
class GatewaySpec:
    """The fake gateway's settings; defaults as :class:`GatewayConfig` (aws-iot.md §3, §4.4)."""

    region: str = "us-east-1"
    endpoint_prefix: str = "a3harnessfake1"
    account_id: str = "123456789012"
    sni: Literal["require", "ignore"] = "ignore"
    max_skew: float = 300.0
    accept_signed_token: bool = False
    strict: bool = False
    limits: Limits = field(default_factory=Limits)
    handshake_timeout: float = 10.0
    #: ``amqtt`` (embedded) or ``mqtt://host:port`` (external broker).
    engine: str = "amqtt"
    #: What the gateway's listeners serve (a ``rotate-certificate`` fault changes it later).
    certificate: Certificate = "good"

    @property
    def endpoint(self) -> str:
        return f"{self.endpoint_prefix}-ats.iot.{self.region}.amazonaws.com"

    def gateway_config(self) -> GatewayConfig:
        """The :class:`GatewayConfig` these settings mean (``certificate`` is the runner's)."""
        from harness.gateway.server import GatewayConfig  # lazy: heavy imports

        return GatewayConfig(
            region=self.region,
            endpoint_prefix=self.endpoint_prefix,
            account_id=self.account_id,
            sni=self.sni,
            max_skew=self.max_skew,
            accept_signed_token=self.accept_signed_token,
            strict=self.strict,
            limits=self.limits,
            handshake_timeout=self.handshake_timeout,
            engine=None if self.engine == "amqtt" else self.engine,
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "endpoint_prefix": self.endpoint_prefix,
            "account_id": self.account_id,
            "sni": self.sni,
            "max_skew": self.max_skew,
            "accept_signed_token": self.accept_signed_token,
            "strict": self.strict,
            "limits": {f.name: getattr(self.limits, f.name) for f in fields(self.limits)},
            "handshake_timeout": self.handshake_timeout,
            "engine": self.engine,
            "certificate": self.certificate,
        }


@dataclass(frozen=True, kw_only=True)
class CognitoSpec:
    """The fake Cognito Identity service (aws-iot.md §6)."""

    enabled: bool = True
    certificate: Certificate = "good"

    def to_data(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "certificate": self.certificate}


@dataclass(frozen=True, kw_only=True)
class IdentityPoolSpec:
    """An identity pool (:class:`harness.cognito.IdentityPool`); ``name`` is the file's handle.

    ``policies`` are IoT policy documents as JSON text, resolved from names at load time.
    ``pool_id`` ``None`` lets the fake mint ``<region>:<uuid>``.
    """

    name: str
    pool_id: str | None = None
    allow_unauthenticated: bool = True
    credential_lifetime: float = 3600.0
    policies: tuple[str, ...] = ()
    rate_limit: float | None = None
    login_providers: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pool_id": self.pool_id,
            "allow_unauthenticated": self.allow_unauthenticated,
            "credential_lifetime": self.credential_lifetime,
            "policies": list(self.policies),
            "rate_limit": self.rate_limit,
            "login_providers": list(self.login_providers),
        }


#: What a scenario's authorizer Lambda answers (aws-iot.md §2.3).
AUTHORIZER_DECISIONS = ("allow", "deny", "error", "bad-response")


@dataclass(frozen=True, kw_only=True)
class AuthorizerSpec:
    """A custom authorizer (:class:`harness.auth.custom.Authorizer`) and its Lambda's answer.

    With ``signing`` the world mints the token-signing key pair and names the private key
    in the descriptor. ``decision``: ``allow`` answers ``isAuthenticated: true`` with
    ``principal``, ``policies``, ``disconnect_after`` and ``refresh_after`` (compressed time
    allowed: the gateway's ``strict`` mode applies AWS's 300-86400 s range); ``deny``
    answers false; ``error`` makes the Lambda fail; ``bad-response`` returns a malformed
    answer.
    """

    name: str
    token_key: str | None = "token"  # noqa: S105 - the name of the token field
    signing: bool = True
    default: bool = False
    status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"
    decision: str = "allow"
    principal: str = "harnessClient"
    policies: tuple[str, ...] = ()
    disconnect_after: float | None = 86400.0
    refresh_after: float | None = 300.0

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token_key": self.token_key,
            "signing": self.signing,
            "default": self.default,
            "status": self.status,
            "decision": self.decision,
            "principal": self.principal,
            "policies": list(self.policies),
            "disconnect_after": self.disconnect_after,
            "refresh_after": self.refresh_after,
        }


@dataclass(frozen=True, kw_only=True)
class ThingSpec:
    """A registered thing whose client certificate the world mints (aws-iot.md §3, §5)."""

    name: str
    certificate: Certificate = "good"
    policies: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "certificate": self.certificate, "policies": list(self.policies)}


@dataclass(frozen=True, kw_only=True)
class QuirkSpec:
    """A Dyson quirk switched on or off, with its parameters filled in (dyson.md §1.4)."""

    enabled: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_data(self) -> Any:
        return dict(self.params) if self.enabled and self.params else self.enabled


@dataclass(frozen=True, kw_only=True)
class DysonDeviceSpec:
    """A simulated Dyson device (issue [dyson], dyson.md §1, §6).

    ``root_topic`` defaults to ``product_type`` (``438M`` for a TP11: the manifest's
    ``mqttRootTopicLevel``). ``quirks`` lists only the switches the file sets; the rest
    keep the spec's defaults. ``manifest`` is merged into the device's manifest v3 entry
    (null credentials, odd enum values: field-bugs.md FB-04, FB-09).
    """

    serial: str
    product_type: str
    root_topic: str | None = None
    name: str | None = None
    local: bool = True
    cloud: bool = True
    env_with_state: bool | None = None
    quirks: Mapping[str, QuirkSpec] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def topic_root(self) -> str:
        return self.root_topic or self.product_type

    def to_data(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "product_type": self.product_type,
            "root_topic": self.root_topic,
            "name": self.name,
            "local": self.local,
            "cloud": self.cloud,
            "env_with_state": self.env_with_state,
            "quirks": {k: q.to_data() for k, q in self.quirks.items()},
            "manifest": dict(self.manifest),
        }


@dataclass(frozen=True, kw_only=True)
class DysonCloudSpec:
    """The fake Dyson cloud REST API (dyson.md §6).

    ``credential_lifetime``: seconds the IoT credentials of ``/v2/authorize/iot-credentials``
    stay valid at the authorizer (``None``: forever; the spec's ``token_ttl_s``).
    ``rate_limit``: requests per second before 429; ``otp_min_interval``: seconds between
    OTP requests before 429 (libdyson ``DysonOTPTooFrequently``).
    """

    enabled: bool = True
    certificate: Certificate = "good"
    credential_lifetime: float | None = None
    client_id_per_call: bool = True
    require_version_call: bool = False
    rate_limit: float | None = None
    otp_min_interval: float | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "certificate": self.certificate,
            "credential_lifetime": self.credential_lifetime,
            "client_id_per_call": self.client_id_per_call,
            "require_version_call": self.require_version_call,
            "rate_limit": self.rate_limit,
            "otp_min_interval": self.otp_min_interval,
        }


@dataclass(frozen=True, kw_only=True)
class DysonSpec:
    cloud: DysonCloudSpec = field(default_factory=DysonCloudSpec)
    devices: tuple[DysonDeviceSpec, ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {"cloud": self.cloud.to_data(), "devices": [d.to_data() for d in self.devices]}


@dataclass(frozen=True, kw_only=True)
class WorldSpec:
    """The world a scenario starts (harness.world.World, plus the Dyson side).

    ``newcomer_defaults`` also registers the world's out-of-the-box pool and authorizer
    (harness.world); ``clock_offset`` starts the world clock skewed (aws-iot.md §1.7);
    ``policies`` are named IoT policy documents (JSON text) that pools, authorizers and
    things refer to, besides the built-in ``allow-all``.
    """

    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    cognito: CognitoSpec = field(default_factory=CognitoSpec)
    newcomer_defaults: bool = True
    clock_offset: float = 0.0
    policies: Mapping[str, str] = field(default_factory=dict)
    identity_pools: tuple[IdentityPoolSpec, ...] = ()
    authorizers: tuple[AuthorizerSpec, ...] = ()
    things: tuple[ThingSpec, ...] = ()
    dyson: DysonSpec | None = None

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gateway": self.gateway.to_data(),
            "cognito": self.cognito.to_data(),
            "newcomer_defaults": self.newcomer_defaults,
            "clock_offset": self.clock_offset,
            "policies": dict(self.policies),
            "identity_pools": [p.to_data() for p in self.identity_pools],
            "authorizers": [a.to_data() for a in self.authorizers],
            "things": [t.to_data() for t in self.things],
        }
        if self.dyson is not None:
            out["dyson"] = self.dyson.to_data()
        return out


# The scenario


DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One scenario file, validated.

    ``timeout``: the run ends at this many seconds at the latest; the runner may end it
    earlier once every expectation is decided (``evaluate(..., now=...)``). ``clients``
    empty means the test drives its own client (pytest fixtures).
    """

    name: str
    purpose: str
    world: WorldSpec = field(default_factory=WorldSpec)
    clients: tuple[ClientSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    #: The file it came from (``None`` for text).
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"scenario timeout must be a positive number, got {self.timeout}")

    def to_data(self) -> dict[str, Any]:
        """The scenario in the file format, every default spelled out (round-trips)."""
        return {
            "name": self.name,
            "purpose": self.purpose,
            "world": self.world.to_data(),
            "clients": [c.to_data() for c in self.clients],
            "faults": [f.to_data() for f in self.faults],
            "expectations": [e.to_data() for e in self.expectations],
            "timeout": self.timeout,
        }
