"""Scenario files: YAML in, a validated :class:`~harness.scenario.model.Scenario` out.

Every problem names the file, the line and the field, and says what was expected
(DESIGN.md "Contracts" §3), for example::

    scenarios/x.yaml:12: faults[0].action: expected one of refuse-upgrade, ..., got
    'refuse-upgrad' (did you mean 'refuse-upgrade'?)

How: a :class:`yaml.SafeLoader` subclass builds mappings and lists that remember the
line of each key and item (and duplicate keys, which plain PyYAML silently merges); a
reader then walks that tree with a cursor (value, dotted field path, line) and converts
each section into the model's dataclasses. It collects every problem it can find rather
than stopping at the first, and raises one :class:`ScenarioError` listing them all.
Unknown keys are errors, with a "did you mean" where a known key is close. Booleans are
YAML 1.2's (``true``/``false`` only): ``on``, ``off``, ``yes`` and ``no`` are strings.

The loader needs only PyYAML at run time; ``schema.json`` (the same format as a JSON
Schema, shipped for editors and other tools) is checked against it by the tests.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from harness.auth.policy import MalformedPolicy, PolicyDocument, allow_all_outside_reserved
from harness.errors import ConfigError
from harness.mqtt.rules import Limits
from harness.scenario.model import (
    ACTIONS,
    AUTHORIZER_DECISIONS,
    CERTIFICATES,
    CLIENT_KINDS,
    DEVICE_TARGET_PREFIX,
    LISTENERS,
    OPERATORS,
    QUIRKS,
    AuthorizerSpec,
    ClientSpec,
    CognitoSpec,
    DysonCloudSpec,
    DysonDeviceSpec,
    DysonSpec,
    EventPattern,
    Expectation,
    FaultSpec,
    FieldMatch,
    GatewaySpec,
    Happens,
    IdentityPoolSpec,
    KnownFailure,
    Never,
    Param,
    QuirkSpec,
    Rate,
    Scenario,
    Sequence,
    ThingSpec,
    WorldSpec,
)

__all__ = [
    "Problem",
    "ScenarioError",
    "dump_scenario",
    "load_scenario",
    "load_scenario_text",
    "read_yaml",
    "scenario_from_data",
]

T = TypeVar("T")

#: Values a file may hold in its free-form parts (options, manifest, policies) before the
#: loader refuses it: YAML aliases can make a small file expand exponentially.
VALUE_BUDGET = 100_000

BUILTIN_POLICY = "allow-all"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_POOL_ID = re.compile(r"[\w-]+:[0-9a-f-]+", re.ASCII)
_PRODUCT_TYPE = re.compile(r"[0-9]{3}[A-Z]?")
_TOPIC_SAFE = re.compile(r"[^/#+\s]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario file."""

    path: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ScenarioError(ConfigError):
    """A scenario file that cannot be used; ``problems`` lists everything found.

    ``path``, ``line``, ``field`` and ``message`` are the first problem's; ``str()`` is
    every problem, one a line.
    """

    def __init__(self, problems: Collection[Problem]) -> None:
        if not problems:
            raise ValueError("ScenarioError needs at least one problem")
        self.problems = tuple(problems)
        first = self.problems[0]
        self.path = first.path
        self.line = first.line
        self.field = first.field
        self.message = first.message
        super().__init__("\n".join(str(p) for p in self.problems))


# YAML with lines


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers where its keys are."""

    line: int | None = None
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]


class _Seq(list[Any]):
    """A YAML sequence that remembers where its items are."""

    line: int | None = None
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences record the line of every key and item."""

    def construct_line_map(self, node: yaml.MappingNode) -> Iterator[_Map]:
        data = _Map()
        data.line = node.start_mark.line + 1
        data.key_lines = {}
        data.duplicates = []
        yield data
        own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        self.flatten_mapping(node)
        own_seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key (a key must be a plain value)",
                    key_node.start_mark,
                ) from None
            line = key_node.start_mark.line + 1
            is_own = id(key_node) in own
            if key in data.key_lines and is_own and key in own_seen:
                data.duplicates.append((key, data.key_lines[key], line))
            if is_own:
                own_seen.add(key)
            data.key_lines[key] = line
            data[key] = self.construct_object(value_node, deep=False)

    def construct_line_seq(self, node: yaml.SequenceNode) -> Iterator[_Seq]:
        data = _Seq()
        data.line = node.start_mark.line + 1
        data.item_lines = [item.start_mark.line + 1 for item in node.value]
        yield data
        data.extend(self.construct_sequence(node))


# YAML 1.2 booleans: only true/false. YAML 1.1's on/off/yes/no would turn a fault's `on:`
# key (and values such as a country code NO) into booleans. No timestamps either (YAML 1.2
# core has none, and no field is a date): `2024-01-01` stays a string.
_YAML_11_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_line_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_line_seq)
_LineLoader.add_constructor("tag:yaml.org,2002:omap", _LineLoader.construct_line_seq)


# The reader


class _Bad(Exception):
    """A problem was recorded; unwind to the nearest part that can go on."""


@dataclass(frozen=True)
class _Cur:
    """A value in the file with its dotted field path and line."""

    value: Any
    field: str
    line: int | None

    def key(self, key: str) -> _Cur:
        lines = getattr(self.value, "key_lines", {})
        return _Cur(self.value[key], _join(self.field, key), lines.get(key, self.line))

    def items(self) -> list[_Cur]:
        lines = getattr(self.value, "item_lines", None)
        return [
            _Cur(v, f"{self.field}[{i}]", lines[i] if lines else self.line)
            for i, v in enumerate(self.value)
        ]


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _describe(value: Any) -> str:
    """What the file holds, in the words of an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        return repr(shown)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, set | frozenset):
        return "a set"
    return f"a {type(value).__name__}"  # dates and timestamps


def _one_of(choices: Collection[str]) -> str:
    return "one of " + ", ".join(choices)


def _did_you_mean(value: object, choices: Collection[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Walks the YAML tree, converting sections and collecting problems."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.budget = VALUE_BUDGET

    # Problems

    def problem(self, cur: _Cur, message: str, *, field: str | None = None) -> None:
        self.problems.append(
            Problem(self.path, cur.line, cur.field if field is None else field, message)
        )

    def fail(self, cur: _Cur, message: str) -> NoReturn:
        self.problem(cur, message)
        raise _Bad

    def mark(self) -> int:
        return len(self.problems)

    def settle(self, mark: int) -> None:
        """Raise :class:`_Bad` if problems were recorded since ``mark``."""
        if len(self.problems) > mark:
            raise _Bad

    def attempt(self, convert: Callable[[_Cur], T], cur: _Cur) -> T | None:
        try:
            return convert(cur)
        except _Bad:
            return None

    def build(self, cur: _Cur, make: Callable[..., T], kwargs: Mapping[str, Any]) -> T:
        """``make(**kwargs)``; a ConfigError from the model becomes a problem at ``cur``."""
        try:
            return make(**kwargs)
        except ConfigError as exc:
            self.fail(cur, str(exc))

    # Containers

    def mapping(self, cur: _Cur, allowed: Collection[str], what: str) -> _Obj:
        if not isinstance(cur.value, Mapping):
            self.fail(cur, f"expected {what} (a mapping), got {_describe(cur.value)}")
        for key in cur.value:
            line = getattr(cur.value, "key_lines", {}).get(key, cur.line)
            if not isinstance(key, str):
                self.problems.append(
                    Problem(
                        self.path,
                        line,
                        cur.field or "(top level)",
                        f"keys are names, got {_describe(key)}; expected {_one_of(allowed)}",
                    )
                )
            elif key not in allowed:
                self.problems.append(
                    Problem(
                        self.path,
                        line,
                        _join(cur.field, key),
                        f"unknown key; expected {_one_of(allowed)}{_did_you_mean(key, allowed)}",
                    )
                )
        for key, first, again in getattr(cur.value, "duplicates", ()):
            self.problems.append(
                Problem(
                    self.path,
                    again,
                    _join(cur.field, str(key)),
                    f"duplicate key (first at line {first}); a key may appear once",
                )
            )
        return _Obj(self, cur)

    def sequence(self, cur: _Cur, what: str) -> list[_Cur]:
        if not isinstance(cur.value, list | tuple):
            self.fail(cur, f"expected a list of {what}, got {_describe(cur.value)}")
        return cur.items()

    def each(self, cur: _Cur, what: str, convert: Callable[[_Cur], T]) -> list[tuple[_Cur, T]]:
        """Convert every item; problems in one item do not stop the others."""
        mark = self.mark()
        out: list[tuple[_Cur, T]] = []
        for item in self.sequence(cur, what):
            value = self.attempt(convert, item)
            if value is not None:
                out.append((item, value))
        self.settle(mark)
        return out

    def unique(self, items: list[tuple[_Cur, T]], key: Callable[[T], str], what: str) -> None:
        seen: dict[str, _Cur] = {}
        for cur, value in items:
            name = key(value)
            if name in seen:
                self.problem(cur, f"duplicate {what} {name!r} (first at line {seen[name].line})")
            else:
                seen[name] = cur

    # Scalars

    def string(self, cur: _Cur) -> str:
        if not isinstance(cur.value, str):
            self.fail(cur, f"expected a string, got {_describe(cur.value)}")
        if not cur.value.strip():
            self.fail(cur, "expected a non-empty string")
        return cur.value

    def one_line(self, cur: _Cur) -> str:
        text = self.string(cur)
        if "\n" in text.strip():
            self.fail(cur, "expected one line of text")
        return text.strip()

    def name(self, cur: _Cur) -> str:
        text = self.string(cur)
        if not _NAME.fullmatch(text):
            self.fail(cur, f"expected a name of letters, digits, '.', '_' and '-', got {text!r}")
        return text

    def boolean(self, cur: _Cur) -> bool:
        if not isinstance(cur.value, bool):
            self.fail(cur, f"expected true or false, got {_describe(cur.value)}")
        return cur.value

    def integer(self, cur: _Cur, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = cur.value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(cur, f"expected a whole number, got {_describe(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(cur, f"expected a whole number {bounds}, got {value}")
        return value

    def number(self, cur: _Cur, *, minimum: float | None = 0.0, positive: bool = False) -> float:
        value = cur.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(cur, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            self.fail(cur, f"expected a finite number, got {value}")
        if positive and not value > 0:
            self.fail(cur, f"expected a positive number, got {value}")
        if minimum is not None and value < minimum:
            self.fail(cur, f"expected a number >= {minimum:g}, got {value}")
        return float(value)

    def seconds(self, cur: _Cur) -> float:
        """Seconds (fractions allowed: compressed time), never negative."""
        value = self.number(cur, minimum=None)
        if value < 0:
            self.fail(cur, f"expected seconds >= 0, got {cur.value}")
        return value

    def positive_seconds(self, cur: _Cur) -> float:
        value = self.number(cur, minimum=None)
        if not value > 0:
            self.fail(cur, f"expected seconds > 0, got {cur.value}")
        return value

    def offset(self, cur: _Cur) -> float:
        return self.number(cur, minimum=None)

    def choice(self, cur: _Cur, choices: Collection[str]) -> str:
        if not isinstance(cur.value, str) or cur.value not in choices:
            self.fail(
                cur,
                f"expected {_one_of(choices)}, got {_describe(cur.value)}"
                f"{_did_you_mean(cur.value, choices)}",
            )
        return cur.value

    def nullable(self, convert: Callable[[_Cur], T]) -> Callable[[_Cur], T | None]:
        def read(cur: _Cur) -> T | None:
            return None if cur.value is None else convert(cur)

        return read

    def strings(self, cur: _Cur, what: str = "strings") -> tuple[str, ...]:
        return tuple(v for _, v in self.each(cur, what, self.string))

    def json_value(self, cur: _Cur) -> Any:
        """A plain JSON value (mappings with string keys, lists, scalars), budgeted."""
        self.budget -= 1
        if self.budget < 0:
            self.fail(cur, f"too many values (over {VALUE_BUDGET}; YAML aliases expand)")
        value = cur.value
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int | float):
            if not math.isfinite(value):
                self.fail(cur, f"expected a finite number, got {value}")
            return value
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key in value:
                if not isinstance(key, str):
                    self.fail(cur, f"keys are strings, got {_describe(key)}")
                out[key] = self.json_value(cur.key(key))
            return out
        if isinstance(value, list | tuple):
            return [self.json_value(item) for item in cur.items()]
        self.fail(cur, f"expected a JSON value, got {_describe(value)}")

    def json_mapping(self, cur: _Cur) -> dict[str, Any]:
        if not isinstance(cur.value, Mapping):
            self.fail(cur, f"expected a mapping, got {_describe(cur.value)}")
        value: dict[str, Any] = self.json_value(cur)
        return value

    def param(self, cur: _Cur, spec: Param) -> Any:
        if cur.value is None:
            if spec.nullable:
                return None
            self.fail(cur, "expected a value, got null")
        if spec.type == "seconds":
            return self.seconds(cur)
        if spec.type == "offset":
            return self.offset(cur)
        if spec.type == "count":
            return self.integer(cur)
        if spec.type == "status":
            return self.integer(cur, minimum=100, maximum=599)
        if spec.type == "fraction":
            value = self.number(cur)
            if value > 1:
                self.fail(cur, f"expected a number from 0 to 1, got {value:g}")
            return value
        if spec.type == "choice":
            return self.choice(cur, spec.choices)
        return self.string(cur)

    def params(
        self, obj: _Obj, specs: Mapping[str, Param], *, skip: Collection[str] = ()
    ) -> dict[str, Any]:
        """Every parameter of ``specs``, from the file or its default."""
        out: dict[str, Any] = {}
        for name, spec in specs.items():
            if name in skip:
                continue
            cur = obj.get(name)
            if cur is None:
                if spec.required:
                    obj.missing(name, f"{name} ({spec.doc})")
                else:
                    out[name] = spec.default
                continue
            try:
                out[name] = self.param(cur, spec)
            except _Bad:
                continue
        return out


class _Obj:
    """A mapping in the file whose keys were checked."""

    def __init__(self, reader: _Reader, cur: _Cur) -> None:
        self.reader = reader
        self.cur = cur

    def __contains__(self, key: str) -> bool:
        return key in self.cur.value

    def get(self, key: str) -> _Cur | None:
        return self.cur.key(key) if key in self.cur.value else None

    def missing(self, key: str, what: str) -> None:
        self.reader.problems.append(
            Problem(
                self.reader.path,
                self.cur.line,
                _join(self.cur.field, key),
                f"missing; expected {what}",
            )
        )

    def put(self, kwargs: dict[str, Any], key: str, convert: Callable[[_Cur], Any]) -> None:
        """``kwargs[key] = convert(value)`` when the file has the key (else the default)."""
        cur = self.get(key)
        if cur is not None:
            with contextlib.suppress(_Bad):
                kwargs[key] = convert(cur)

    def read(self, key: str, convert: Callable[[_Cur], T], default: T) -> T:
        """``convert(value)``, or ``default`` when the key is absent or its value is bad."""
        cur = self.get(key)
        if cur is None:
            return default
        try:
            return convert(cur)
        except _Bad:
            return default

    def required(self, key: str, convert: Callable[[_Cur], T], what: str) -> T | None:
        cur = self.get(key)
        if cur is None:
            self.missing(key, what)
            return None
        return self.reader.attempt(convert, cur)


# Sections


@dataclass
class _Names:
    """What the world declares, for cross-references from clients and faults."""

    known: bool = False
    pools: frozenset[str] = frozenset()
    authorizers: frozenset[str] = frozenset()
    things: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()


_SCENARIO_KEYS = (
    "name",
    "purpose",
    "world",
    "client",
    "clients",
    "faults",
    "expectations",
    "timeout",
)


def _scenario(r: _Reader, root: _Cur, default_name: str | None) -> Scenario:
    o = r.mapping(root, _SCENARIO_KEYS, "a scenario")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    if "name" in o:
        o.put(kwargs, "name", r.name)
    elif default_name is not None:
        kwargs["name"] = default_name
    else:
        o.missing("name", "the scenario's name")
    kwargs["purpose"] = o.required("purpose", r.one_line, "one line saying what it checks")
    names = _Names(known="world" not in o)  # no world: nothing declared, all checkable
    world_cur = o.get("world")
    if world_cur is not None:
        world = r.attempt(lambda c: _world(r, c, names), world_cur)
        if world is not None:
            kwargs["world"] = world
    if "client" in o and "clients" in o:
        r.problem(o.cur.key("client"), "give either `client` (one) or `clients` (a list), not both")
    elif "client" in o:
        client_cur = o.cur.key("client")
        client = r.attempt(lambda c: _client(r, c, names), client_cur)
        kwargs["clients"] = (client,)
    elif "clients" in o:
        clients_cur = o.cur.key("clients")
        items = r.attempt(
            lambda c: r.each(c, "clients", lambda i: _client(r, i, names)), clients_cur
        )
        if items is not None:
            r.unique(items, lambda c: c.name, "client name (set `name` to tell them apart)")
            kwargs["clients"] = tuple(c for _, c in items)
    fault_items: list[tuple[_Cur, FaultSpec]] | None = []
    faults_cur = o.get("faults")
    if faults_cur is not None:
        fault_items = r.attempt(
            lambda c: r.each(c, "faults", lambda i: _fault(r, i, names)), faults_cur
        )
        kwargs["faults"] = tuple(f for _, f in fault_items or ())
    o.put(kwargs, "expectations", lambda c: _expectations(r, c, fault_items))
    o.put(kwargs, "timeout", r.positive_seconds)
    r.settle(mark)
    return r.build(root, Scenario, kwargs)


# World


_WORLD_KEYS = (
    "gateway",
    "cognito",
    "newcomer_defaults",
    "clock_offset",
    "policies",
    "identity_pools",
    "authorizers",
    "things",
    "dyson",
)


def _world(r: _Reader, cur: _Cur, names: _Names) -> WorldSpec:
    o = r.mapping(cur, _WORLD_KEYS, "the world")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    gateway = o.read("gateway", lambda c: _gateway(r, c), GatewaySpec())
    kwargs["gateway"] = gateway
    o.put(kwargs, "cognito", lambda c: _cognito(r, c))
    o.put(kwargs, "newcomer_defaults", r.boolean)
    o.put(kwargs, "clock_offset", r.offset)
    library = {BUILTIN_POLICY: allow_all_outside_reserved(gateway.region, gateway.account_id)}
    table: dict[str, str] = o.read("policies", lambda c: _policy_table(r, c), {})
    kwargs["policies"] = table
    library.update(table)

    def listed(key: str, convert: Callable[[_Cur], T], name: Callable[[T], str]) -> list[T]:
        sub = o.get(key)
        if sub is None:
            return []
        items = r.attempt(lambda c: r.each(c, key.replace("_", " "), convert), sub)
        if items is None:
            return []
        r.unique(items, name, f"{key[:-1].replace('_', ' ')} name")
        kwargs[key] = tuple(v for _, v in items)
        return [v for _, v in items]

    pools = listed("identity_pools", lambda c: _pool(r, c, library), lambda p: p.name)
    authorizers = listed("authorizers", lambda c: _authorizer(r, c, library), lambda a: a.name)
    defaults = [a.name for a in authorizers if a.default]
    if len(defaults) > 1:
        r.problem(
            o.cur.key("authorizers"),
            f"at most one authorizer can be the default, got {', '.join(defaults)}",
        )
    things = listed("things", lambda c: _thing(r, c, library), lambda t: t.name)
    dyson = o.read("dyson", lambda c: _dyson(r, c), None)
    if dyson is not None:
        kwargs["dyson"] = dyson
    r.settle(mark)
    names.known = True
    names.pools = frozenset(p.name for p in pools)
    names.authorizers = frozenset(a.name for a in authorizers)
    names.things = frozenset(t.name for t in things)
    names.devices = frozenset(d.serial for d in dyson.devices) if dyson else frozenset()
    return r.build(cur, WorldSpec, kwargs)


_GATEWAY_KEYS = tuple(f.name for f in fields(GatewaySpec))
_LIMIT_FIELDS = {f.name: f for f in fields(Limits)}


def _gateway(r: _Reader, cur: _Cur) -> GatewaySpec:
    o = r.mapping(cur, _GATEWAY_KEYS, "gateway settings")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    o.put(kwargs, "region", lambda c: _region(r, c))
    o.put(kwargs, "endpoint_prefix", lambda c: _label(r, c))
    o.put(kwargs, "account_id", lambda c: _account(r, c))
    o.put(kwargs, "sni", lambda c: r.choice(c, ("require", "ignore")))
    o.put(kwargs, "max_skew", r.seconds)
    o.put(kwargs, "accept_signed_token", r.boolean)
    o.put(kwargs, "strict", r.boolean)
    o.put(kwargs, "limits", lambda c: _limits(r, c))
    o.put(kwargs, "handshake_timeout", r.positive_seconds)
    o.put(kwargs, "engine", lambda c: _engine(r, c))
    o.put(kwargs, "certificate", lambda c: r.choice(c, CERTIFICATES))
    r.settle(mark)
    return r.build(cur, GatewaySpec, kwargs)


def _region(r: _Reader, cur: _Cur) -> str:
    text = r.string(cur)
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]+", text):
        r.fail(cur, f"expected an AWS region such as eu-west-1, got {text!r}")
    return text


def _label(r: _Reader, cur: _Cur) -> str:
    text = r.string(cur)
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", text):
        r.fail(cur, f"expected a DNS label of a-z, 0-9 and '-', got {text!r}")
    return text


def _account(r: _Reader, cur: _Cur) -> str:
    if isinstance(cur.value, int) and not isinstance(cur.value, bool):
        r.fail(cur, "expected 12 digits as a string (quote it: leading zeros matter)")
    text = r.string(cur)
    if not re.fullmatch(r"[0-9]{12}", text):
        r.fail(cur, f"expected a 12-digit AWS account id, got {text!r}")
    return text


def _engine(r: _Reader, cur: _Cur) -> str:
    text = r.string(cur)
    if text != "amqtt" and not re.fullmatch(r"mqtt://[^\s/:]+:[0-9]{1,5}", text):
        r.fail(cur, f"expected amqtt or mqtt://host:port, got {text!r}")
    return text


def _limits(r: _Reader, cur: _Cur) -> Limits:
    o = r.mapping(cur, ("base", *_LIMIT_FIELDS), "limits (overrides of AWS's quotas)")
    mark = r.mark()
    base = o.read("base", lambda c: r.choice(c, ("aws", "unlimited")), "aws")
    kwargs: dict[str, Any] = {}
    for name, f in _LIMIT_FIELDS.items():
        sub = o.get(name)
        if sub is None:
            continue
        if sub.value is None:
            if name == "keepalive_factor":
                r.problem(sub, "expected a positive number, got null")
            kwargs[name] = None
        elif "float" in str(f.type):
            kwargs[name] = r.attempt(r.seconds, sub)
        else:
            kwargs[name] = r.attempt(r.integer, sub)
    r.settle(mark)
    start = Limits.unlimited() if base == "unlimited" else Limits()
    values = {name: getattr(start, name) for name in _LIMIT_FIELDS}
    values.update(kwargs)
    return r.build(cur, Limits, values)


def _cognito(r: _Reader, cur: _Cur) -> CognitoSpec:
    o = r.mapping(cur, ("enabled", "certificate"), "Cognito settings")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    o.put(kwargs, "enabled", r.boolean)
    o.put(kwargs, "certificate", lambda c: r.choice(c, CERTIFICATES))
    r.settle(mark)
    return CognitoSpec(**kwargs)


def _policy_text(r: _Reader, cur: _Cur) -> str:
    """An inline IoT policy (mapping or JSON text), checked and made canonical."""
    if isinstance(cur.value, str):
        try:
            source: Any = json.loads(cur.value)
        except ValueError as exc:
            r.fail(cur, f"expected a policy document as JSON text: {exc}")
    else:
        source = r.json_mapping(cur)
    try:
        PolicyDocument.parse(source if isinstance(source, Mapping) else json.dumps(source))
    except MalformedPolicy as exc:
        r.fail(cur, f"not an IoT policy document (aws-iot.md §5): {exc.message}")
    return json.dumps(source, separators=(",", ":"), ensure_ascii=False)


def _policy_table(r: _Reader, cur: _Cur) -> dict[str, str]:
    if not isinstance(cur.value, Mapping):
        r.fail(cur, f"expected a mapping of policy names to documents, got {_describe(cur.value)}")
    r.mapping(cur, [k for k in cur.value if isinstance(k, str)], "policies")
    mark = r.mark()
    out: dict[str, str] = {}
    for key in cur.value:
        if not isinstance(key, str):
            continue
        sub = cur.key(key)
        if key == BUILTIN_POLICY:
            r.problem(sub, f"{BUILTIN_POLICY!r} is built in; choose another name")
            continue
        if not _NAME.fullmatch(key):
            r.problem(sub, "expected a policy name of letters, digits, '.', '_' and '-'")
            continue
        text = r.attempt(lambda c: _policy_text(r, c), sub)
        if text is not None:
            out[key] = text
    r.settle(mark)
    return out


def _builtin(library: Mapping[str, str]) -> tuple[str, ...]:
    """The default policies of a pool, authorizer or thing: the built-in ``allow-all``."""
    return (library[BUILTIN_POLICY],)


def _policy_refs(r: _Reader, cur: _Cur, library: Mapping[str, str]) -> tuple[str, ...]:
    def one(item: _Cur) -> str:
        if isinstance(item.value, str) and not item.value.lstrip().startswith("{"):
            if item.value not in library:
                r.fail(
                    item,
                    f"unknown policy {item.value!r}; expected {_one_of(library)} "
                    f"or an inline policy document{_did_you_mean(item.value, library)}",
                )
            return library[item.value]
        return _policy_text(r, item)

    return tuple(v for _, v in r.each(cur, "policy names or documents", one))


def _pool(r: _Reader, cur: _Cur, library: Mapping[str, str]) -> IdentityPoolSpec:
    keys = tuple(f.name for f in fields(IdentityPoolSpec))
    o = r.mapping(cur, keys, "an identity pool")
    mark = r.mark()
    kwargs: dict[str, Any] = {"name": o.required("name", r.name, "the pool's name")}
    o.put(kwargs, "pool_id", r.nullable(lambda c: _pool_id(r, c)))
    o.put(kwargs, "allow_unauthenticated", r.boolean)
    o.put(kwargs, "credential_lifetime", r.positive_seconds)
    kwargs["policies"] = o.read(
        "policies", lambda c: _policy_refs(r, c, library), _builtin(library)
    )
    o.put(kwargs, "rate_limit", r.nullable(lambda c: r.number(c, positive=True)))
    o.put(kwargs, "login_providers", r.strings)
    r.settle(mark)
    return IdentityPoolSpec(**kwargs)


def _pool_id(r: _Reader, cur: _Cur) -> str:
    text = r.string(cur)
    if len(text) > 55 or not _POOL_ID.fullmatch(text):
        r.fail(cur, f"expected '<region>:<uuid>' (aws-iot.md §6), got {text!r}")
    return text


def _authorizer(r: _Reader, cur: _Cur, library: Mapping[str, str]) -> AuthorizerSpec:
    keys = tuple(f.name for f in fields(AuthorizerSpec))
    o = r.mapping(cur, keys, "a custom authorizer")
    mark = r.mark()
    kwargs: dict[str, Any] = {"name": o.required("name", r.name, "the authorizer's name")}
    o.put(kwargs, "token_key", r.nullable(r.string))
    o.put(kwargs, "signing", r.boolean)
    o.put(kwargs, "default", r.boolean)
    o.put(kwargs, "status", lambda c: r.choice(c, ("ACTIVE", "INACTIVE")))
    o.put(kwargs, "decision", lambda c: r.choice(c, AUTHORIZER_DECISIONS))
    o.put(kwargs, "principal", r.string)
    kwargs["policies"] = o.read(
        "policies", lambda c: _policy_refs(r, c, library), _builtin(library)
    )
    o.put(kwargs, "disconnect_after", r.nullable(r.positive_seconds))
    o.put(kwargs, "refresh_after", r.nullable(r.positive_seconds))
    r.settle(mark)
    if kwargs.get("signing", True) and "token_key" in kwargs and kwargs["token_key"] is None:
        r.fail(cur.key("token_key"), "signing needs a token_key (aws-iot.md §2.2)")
    return AuthorizerSpec(**kwargs)


def _thing(r: _Reader, cur: _Cur, library: Mapping[str, str]) -> ThingSpec:
    o = r.mapping(cur, ("name", "certificate", "policies"), "a thing")
    mark = r.mark()
    kwargs: dict[str, Any] = {"name": o.required("name", r.name, "the thing's name")}
    o.put(kwargs, "certificate", lambda c: r.choice(c, CERTIFICATES))
    kwargs["policies"] = o.read(
        "policies", lambda c: _policy_refs(r, c, library), _builtin(library)
    )
    r.settle(mark)
    return ThingSpec(**kwargs)


# Dyson


def _dyson(r: _Reader, cur: _Cur) -> DysonSpec:
    o = r.mapping(cur, ("cloud", "devices"), "the Dyson side")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    o.put(kwargs, "cloud", lambda c: _dyson_cloud(r, c))
    devices_cur = o.get("devices")
    if devices_cur is not None:
        items = r.attempt(lambda c: r.each(c, "devices", lambda i: _device(r, i)), devices_cur)
        if items is not None:
            r.unique(items, lambda d: d.serial, "device serial")
            kwargs["devices"] = tuple(d for _, d in items)
    r.settle(mark)
    return DysonSpec(**kwargs)


def _dyson_cloud(r: _Reader, cur: _Cur) -> DysonCloudSpec:
    keys = tuple(f.name for f in fields(DysonCloudSpec))
    o = r.mapping(cur, keys, "the fake Dyson cloud's settings")
    mark = r.mark()
    kwargs: dict[str, Any] = {}
    o.put(kwargs, "enabled", r.boolean)
    o.put(kwargs, "certificate", lambda c: r.choice(c, CERTIFICATES))
    o.put(kwargs, "credential_lifetime", r.nullable(r.positive_seconds))
    o.put(kwargs, "client_id_per_call", r.boolean)
    o.put(kwargs, "require_version_call", r.boolean)
    o.put(kwargs, "rate_limit", r.nullable(lambda c: r.number(c, positive=True)))
    o.put(kwargs, "otp_min_interval", r.nullable(r.seconds))
    r.settle(mark)
    return DysonCloudSpec(**kwargs)


def _device(r: _Reader, cur: _Cur) -> DysonDeviceSpec:
    keys = tuple(f.name for f in fields(DysonDeviceSpec))
    o = r.mapping(cur, keys, "a Dyson device")
    mark = r.mark()
    kwargs: dict[str, Any] = {
        "serial": o.required("serial", lambda c: _topic_part(r, c), "the device's serial"),
        "product_type": o.required(
            "product_type", lambda c: _product_type(r, c), "a product type such as '438M'"
        ),
    }
    o.put(kwargs, "root_topic", r.nullable(lambda c: _topic_part(r, c)))
    o.put(kwargs, "name", r.nullable(r.string))
    o.put(kwargs, "local", r.boolean)
    o.put(kwargs, "cloud", r.boolean)
    o.put(kwargs, "env_with_state", r.nullable(r.boolean))
    o.put(kwargs, "quirks", lambda c: _quirks(r, c))
    o.put(kwargs, "manifest", r.json_mapping)
    r.settle(mark)
    return DysonDeviceSpec(**kwargs)


def _topic_part(r: _Reader, cur: _Cur) -> str:
    text = r.string(cur)
    if not _TOPIC_SAFE.fullmatch(text):
        r.fail(
            cur, f"expected text without '/', '#', '+' or spaces (it names topics), got {text!r}"
        )
    return text


def _product_type(r: _Reader, cur: _Cur) -> str:
    value = cur.value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `product_type: 438` is what people write
    if not isinstance(value, str) or not _PRODUCT_TYPE.fullmatch(value):
        r.fail(
            cur,
            f"expected a product type of 3 digits and an optional variant letter "
            f"(dyson.md §6: '438', '438M', '527K'), got {_describe(cur.value)}",
        )
    return value


def _quirks(r: _Reader, cur: _Cur) -> dict[str, QuirkSpec]:
    o = r.mapping(cur, QUIRKS, "Dyson quirk switches (dyson.md §1.4)")
    mark = r.mark()
    out: dict[str, QuirkSpec] = {}
    for name, specs in QUIRKS.items():
        sub = o.get(name)
        if sub is None:
            continue
        if isinstance(sub.value, bool):
            params = {k: p.default for k, p in specs.items()} if sub.value else {}
            out[name] = QuirkSpec(enabled=sub.value, params=params)
            continue
        if not specs:
            r.problem(sub, f"expected true or false ({name} has no settings)")
            continue
        try:
            q = r.mapping(sub, specs, "true, false or quirk settings")
        except _Bad:
            continue
        out[name] = QuirkSpec(enabled=True, params=r.params(q, specs))
    r.settle(mark)
    return out


# Clients


_CLIENT_KEYS = tuple(f.name for f in fields(ClientSpec))
#: Client options that name something in the world, checked by the loader.
_OPTION_REFS = {
    "identity_pool": "pools",
    "authorizer": "authorizers",
    "thing": "things",
    "device": "devices",
}


def _client(r: _Reader, cur: _Cur, names: _Names) -> ClientSpec:
    o = r.mapping(cur, _CLIENT_KEYS, "a client under test")
    mark = r.mark()
    kind = o.required("kind", lambda c: r.choice(c, CLIENT_KINDS), _one_of(CLIENT_KINDS))
    kwargs: dict[str, Any] = {"kind": kind}
    app_cur, argv_cur = o.get("app"), o.get("argv")
    if kind == "app":
        kwargs["app"] = o.required("app", r.name, "the reference app's name (simulators/apps)")
    elif app_cur is not None and kind is not None:
        r.problem(app_cur, "only for kind app")
    if kind == "command":
        kwargs["argv"] = o.required("argv", lambda c: _argv(r, c), "the command as a list")
    elif argv_cur is not None and kind is not None:
        r.problem(argv_cur, "only for kind command")
    o.put(kwargs, "env", lambda c: _env(r, c))
    options: dict[str, Any] = o.read("options", r.json_mapping, {})
    kwargs["options"] = options
    if names.known and options:
        options_cur = o.cur.key("options")
        for key, group in _OPTION_REFS.items():
            value = options.get(key)
            if isinstance(value, str):
                declared: frozenset[str] = getattr(names, group)
                if value not in declared:
                    choices = sorted(declared) or ["(none declared)"]
                    r.problem(
                        options_cur.key(key),
                        f"no {key.replace('_', ' ')} {value!r} in the world; expected "
                        f"{_one_of(choices)}{_did_you_mean(value, declared)}",
                    )
    o.put(kwargs, "requires", lambda c: r.strings(c, "pip requirements"))
    o.put(kwargs, "known_failure", lambda c: _known_failure(r, c))
    if "name" in o:
        o.put(kwargs, "name", r.name)
    elif kwargs.get("app"):
        kwargs["name"] = kwargs["app"]
    elif kind == "command" and kwargs.get("argv"):
        program = Path(kwargs["argv"][0]).name
        kwargs["name"] = program if _NAME.fullmatch(program) else "command"
    else:
        kwargs["name"] = kind
    r.settle(mark)
    return ClientSpec(**kwargs)


def _argv(r: _Reader, cur: _Cur) -> tuple[str, ...]:
    argv = r.strings(cur, "command arguments")
    if not argv:
        r.fail(cur, "expected at least the program to run")
    return argv


def _env(r: _Reader, cur: _Cur) -> dict[str, str]:
    if not isinstance(cur.value, Mapping):
        r.fail(cur, f"expected a mapping of variable names to strings, got {_describe(cur.value)}")
    mark = r.mark()
    out: dict[str, str] = {}
    for key in cur.value:
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            r.problem(cur, f"expected environment variable names, got {_describe(key)}")
            continue
        sub = cur.key(key)
        if not isinstance(sub.value, str):
            r.problem(sub, f"expected a string (quote it), got {_describe(sub.value)}")
            continue
        out[key] = sub.value
    r.settle(mark)
    return out


def _known_failure(r: _Reader, cur: _Cur) -> KnownFailure:
    o = r.mapping(cur, ("reason", "ref"), "a known failure: reason and ref")
    mark = r.mark()
    kwargs: dict[str, Any] = {
        "reason": o.required("reason", r.string, "why this client is known to fail")
    }
    o.put(kwargs, "ref", r.one_line)
    r.settle(mark)
    return KnownFailure(**kwargs)


# Faults


_FAULT_COMMON = ("name", "action", "target", "at", "on", "nth", "count", "duration")
_ALL_PARAMS = {name for spec in ACTIONS.values() for name in spec.params}


def _fault(r: _Reader, cur: _Cur, names: _Names) -> FaultSpec:
    if not isinstance(cur.value, Mapping):
        r.fail(cur, f"expected a fault (a mapping with an action), got {_describe(cur.value)}")
    mark = r.mark()
    action_cur = cur.key("action") if "action" in cur.value else None
    action = r.attempt(lambda c: r.choice(c, ACTIONS), action_cur) if action_cur else None
    spec = ACTIONS.get(action) if action is not None else None
    allowed = (*_FAULT_COMMON, *(spec.params if spec else _ALL_PARAMS))
    o = r.mapping(cur, allowed, "a fault")
    if action_cur is None:
        o.missing("action", _one_of(ACTIONS))
    kwargs: dict[str, Any] = {"action": action, "line": cur.line}
    o.put(kwargs, "name", r.name)
    if "at" in o and "on" in o:
        r.problem(o.cur.key("on"), "a fault fires either `at` a time or `on` an event, not both")
    o.put(kwargs, "at", r.seconds)
    o.put(kwargs, "on", lambda c: _pattern(r, c))
    nth = o.get("nth")
    if nth is not None:
        if "on" not in o:
            r.problem(nth, "only with `on` (the Nth matching event)")
        kwargs["nth"] = r.attempt(lambda c: r.integer(c, minimum=1), nth)
    o.put(kwargs, "count", r.nullable(lambda c: r.integer(c, minimum=1)))
    duration = o.get("duration")
    if duration is not None and spec is not None:
        if not spec.lasting:
            lasting = ", ".join(a for a, s in ACTIONS.items() if s.lasting)
            r.problem(duration, f"{action} acts once; duration applies to {lasting}")
        else:
            kwargs["duration"] = r.attempt(r.nullable(r.positive_seconds), duration)
    target = o.get("target")
    if spec is not None and action is not None:
        if target is not None:
            kwargs["target"] = r.attempt(lambda c: _target(r, c, action, names), target)
        else:
            kwargs["target"] = spec.default_target
        kwargs["params"] = r.params(o, spec.params)
    r.settle(mark)
    return r.build(cur, FaultSpec, kwargs)


def _target(r: _Reader, cur: _Cur, action: str, names: _Names) -> str:
    spec = ACTIONS[action]
    if not spec.targets:
        r.fail(cur, f"{action} has a fixed place; remove target")
    text = r.string(cur)
    choices = [t if t != "device" else f"{DEVICE_TARGET_PREFIX}<serial>" for t in spec.targets]
    if text.startswith(DEVICE_TARGET_PREFIX) and "device" in spec.targets:
        serial = text[len(DEVICE_TARGET_PREFIX) :]
        if names.known and serial not in names.devices:
            declared = sorted(names.devices) or ["(none declared)"]
            r.fail(cur, f"no Dyson device {serial!r} in the world; expected {_one_of(declared)}")
        return text
    if text not in spec.targets or text == "device":
        r.fail(
            cur,
            f"expected {_one_of(choices)}, got {text!r}{_did_you_mean(text, LISTENERS)}",
        )
    return text


# Patterns and expectations


def _pattern(r: _Reader, cur: _Cur) -> EventPattern:
    """``{kind: ws.upgrade, status: 403, attempts: {gt: 1}}`` or just ``ws.upgrade``."""
    if isinstance(cur.value, str):
        return EventPattern(r.string(cur))
    if not isinstance(cur.value, Mapping):
        r.fail(cur, f"expected an event pattern (a kind, or a mapping), got {_describe(cur.value)}")
    mark = r.mark()
    kind: str | None = None
    matches: list[FieldMatch] = []
    for key in cur.value:
        if not isinstance(key, str) or not key:
            r.problem(cur, f"field names are strings, got {_describe(key)}")
            continue
        sub = cur.key(key)
        if key == "kind":
            kind = r.attempt(r.string, sub)
            continue
        try:
            matches.extend(_conditions(r, sub, key))
        except _Bad:
            continue
    for key, first, again in getattr(cur.value, "duplicates", ()):
        r.problems.append(
            Problem(
                r.path, again, _join(cur.field, str(key)), f"duplicate key (first at line {first})"
            )
        )
    r.settle(mark)
    return EventPattern(kind, tuple(matches))


def _conditions(r: _Reader, cur: _Cur, name: str) -> list[FieldMatch]:
    value = cur.value
    if not isinstance(value, Mapping):
        return [r.build(cur, FieldMatch, {"field": name, "op": "eq", "value": r.json_value(cur)})]
    if not value:
        r.fail(cur, f"expected a value or operators ({_one_of(OPERATORS)}), got an empty mapping")
    mark = r.mark()
    out: list[FieldMatch] = []
    for op in value:
        sub = cur.key(op) if isinstance(op, str) else cur
        if not isinstance(op, str) or op not in OPERATORS:
            hint = _OPERATOR_HINTS.get(op) if isinstance(op, str) else None
            suggestion = f" (did you mean {hint!r}?)" if hint else _did_you_mean(op, OPERATORS)
            r.problem(
                sub,
                f"expected an operator, {_one_of(OPERATORS)}, got {_describe(op)}{suggestion}"
                " (to match a mapping, write {eq: ...})",
            )
            continue
        try:
            operand = r.json_value(sub)
            out.append(r.build(sub, FieldMatch, {"field": name, "op": op, "value": operand}))
        except _Bad:
            continue
    r.settle(mark)
    return out


#: Spellings of operators from other languages, for "did you mean".
_OPERATOR_HINTS = {
    "gte": "ge",
    "lte": "le",
    "neq": "ne",
    ">": "gt",
    ">=": "ge",
    "<": "lt",
    "<=": "le",
    "==": "eq",
    "!=": "ne",
    "match": "regex",
    "nin": "not_in",
}

_TYPE_KEYS = ("happens", "never", "sequence", "rate")
_EXPECTATION_COMMON = ("name", "after", "within", "why")
_EXPECTATION_KEYS = {
    "happens": (*_EXPECTATION_COMMON, "happens", "times", "at_least", "at_most"),
    "never": (*_EXPECTATION_COMMON, "never"),
    "sequence": (*_EXPECTATION_COMMON, "sequence"),
    "rate": (*_EXPECTATION_COMMON, "rate", "max", "per"),
}


def _expectations(
    r: _Reader, cur: _Cur, faults: list[tuple[_Cur, FaultSpec]] | None
) -> tuple[Expectation, ...]:
    """The expectations, with ``after`` names checked (``faults`` None: the faults were bad)."""
    items = r.each(cur, "expectations", lambda c: _expectation(r, c))
    mark = r.mark()
    by_name: dict[str, tuple[_Cur, Expectation]] = {}
    for item, expectation in items:
        if expectation.name is None:
            continue
        if expectation.name in by_name:
            first = by_name[expectation.name][0]
            r.problem(item.key("name"), f"duplicate name (first at line {first.line})")
        by_name[expectation.name] = (item, expectation)
    fault_names: dict[str, _Cur] = {f.name: c for c, f in faults or () if f.name is not None}
    for name, (item, _) in by_name.items():
        if name in fault_names:
            r.problem(
                item.key("name"),
                f"a fault has this name too (line {fault_names[name].line}); "
                "expectations and faults share names",
            )
    for item, expectation in items:
        after = expectation.after
        if not isinstance(after, str):
            continue
        after_cur = item.key("after")
        if after in by_name:
            target = by_name[after][1]
            if isinstance(target, Never | Rate):
                r.problem(
                    after_cur,
                    f"{after!r} is a `{'never' if isinstance(target, Never) else 'rate'}` "
                    "expectation, which has no event to start from; name a `happens` or "
                    "`sequence` expectation or a fault",
                )
        elif after not in fault_names and faults is not None:
            known = sorted([*by_name, *fault_names]) or ["(no names given)"]
            r.problem(
                after_cur,
                f"no expectation or fault named {after!r}; expected {_one_of(known)}"
                f"{_did_you_mean(after, known)} (or an event pattern)",
            )
    r.settle(mark)
    for item, expectation in items:
        cycle = _cycle(expectation, {n: e for n, (_, e) in by_name.items()})
        if cycle:
            r.problem(item.key("after"), f"`after` goes round in a circle: {' → '.join(cycle)}")
            break
    r.settle(mark)
    return tuple(e for _, e in items)


def _cycle(start: Expectation, by_name: Mapping[str, Expectation]) -> list[str]:
    path: list[str] = [start.label]
    current: Expectation | None = start
    seen = {start.label}
    while current is not None and isinstance(current.after, str):
        name = current.after
        path.append(name)
        if name in seen:
            return path
        seen.add(name)
        current = by_name.get(name)
    return []


def _expectation(r: _Reader, cur: _Cur) -> Expectation:
    if not isinstance(cur.value, Mapping):
        r.fail(cur, f"expected an expectation (a mapping), got {_describe(cur.value)}")
    types = [k for k in _TYPE_KEYS if k in cur.value]
    if len(types) != 1:
        got = ", ".join(types) if types else "none"
        r.fail(cur, f"expected exactly one of {', '.join(_TYPE_KEYS)}, got {got}")
    kind = types[0]
    o = r.mapping(cur, _EXPECTATION_KEYS[kind], f"a `{kind}` expectation")
    mark = r.mark()
    kwargs: dict[str, Any] = {"line": cur.line}
    o.put(kwargs, "name", r.name)
    o.put(kwargs, "after", lambda c: c.value if isinstance(c.value, str) else _pattern(r, c))
    after = o.get("after")
    if after is not None and isinstance(after.value, str):
        r.attempt(r.name, after)
    o.put(kwargs, "within", r.seconds)
    o.put(kwargs, "why", r.string)
    result: Expectation
    if kind == "happens":
        kwargs["pattern"] = o.required("happens", lambda c: _pattern(r, c), "an event pattern")
        times = o.get("times")
        if times is not None and ("at_least" in o or "at_most" in o):
            r.problem(times, "give `times`, or `at_least` / `at_most`, not both")
        elif times is not None:
            n = r.attempt(r.integer, times)
            kwargs["at_least"] = kwargs["at_most"] = n
        else:
            o.put(kwargs, "at_least", r.integer)
            o.put(kwargs, "at_most", r.integer)
            low, high = kwargs.get("at_least", 1), kwargs.get("at_most")
            if isinstance(low, int) and isinstance(high, int) and low > high:
                r.problem(o.cur.key("at_most"), f"expected at_most >= at_least ({low}), got {high}")
        r.settle(mark)
        result = Happens(**kwargs)
    elif kind == "never":
        kwargs["pattern"] = o.required("never", lambda c: _pattern(r, c), "an event pattern")
        r.settle(mark)
        result = Never(**kwargs)
    elif kind == "sequence":
        steps = o.required(
            "sequence",
            lambda c: tuple(p for _, p in r.each(c, "event patterns", lambda i: _pattern(r, i))),
            "a list of event patterns",
        )
        if steps is not None and not steps:
            r.problem(o.cur.key("sequence"), "expected at least one event pattern")
        kwargs["steps"] = steps
        r.settle(mark)
        result = Sequence(**kwargs)
    else:
        kwargs["pattern"] = o.required("rate", lambda c: _pattern(r, c), "an event pattern")
        kwargs["max"] = o.required("max", r.integer, "the most events allowed per `per` seconds")
        o.put(kwargs, "per", r.positive_seconds)
        r.settle(mark)
        result = Rate(**kwargs)
    return result


# Entry points


def read_yaml(text: str, *, path: str = "<scenario>") -> Any:
    """The YAML as plain data (YAML 1.2 booleans), before validation; for schema checks.

    Raises :class:`ScenarioError` for text that is not YAML.
    """
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "malformed"
        context = f" ({exc.context})" if exc.context else ""
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ScenarioError(
            [Problem(path, line, "", f"invalid YAML: {problem}{context}")]
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        shown = chr(exc.character) if isinstance(exc.character, int) else exc.character
        message = f"invalid YAML: character {shown!r} is not allowed ({exc.reason})"
        raise ScenarioError([Problem(path, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([Problem(path, None, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise ScenarioError([Problem(path, None, "", "invalid YAML: nested too deeply")]) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # The SafeConstructor's own conversions (a timestamp like 2024-13-45).
        raise ScenarioError([Problem(path, None, "", f"invalid YAML value: {exc}")]) from None


def scenario_from_data(data: Any, *, path: str = "<scenario>", name: str | None = None) -> Scenario:
    """Validate already-parsed data (YAML with lines, JSON, :meth:`Scenario.to_data`).

    ``name`` is the default scenario name when the data has none (the file's stem).
    """
    reader = _Reader(path)
    root = _Cur(data, "", getattr(data, "line", None))
    if data is None:
        raise ScenarioError([Problem(path, None, "", "the file is empty; expected a scenario")])
    try:
        scenario = _scenario(reader, root, name)
    except _Bad:
        scenario = None
    except RecursionError:
        reader.problems.append(Problem(path, None, "", "nested too deeply"))
        scenario = None
    if reader.problems or scenario is None:
        raise ScenarioError(sorted(reader.problems, key=lambda p: p.line or 0))
    return _with_path(scenario, path)


def _with_path(scenario: Scenario, path: str) -> Scenario:
    object.__setattr__(scenario, "path", path)
    return scenario


def load_scenario_text(text: str, *, path: str = "<scenario>", name: str | None = None) -> Scenario:
    """Parse and validate a scenario from YAML text; raises :class:`ScenarioError`."""
    return scenario_from_data(read_yaml(text, path=path), path=path, name=name)


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a scenario file; its stem is the default name."""
    file = Path(path)
    shown = os.fspath(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError([Problem(shown, None, "", f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise ScenarioError([Problem(shown, None, "", f"cannot read: {exc.strerror}")]) from None
    return load_scenario_text(text, path=shown, name=file.stem)


def dump_scenario(scenario: Scenario) -> str:
    """The scenario as YAML with every default spelled out; loads back equal."""
    return yaml.safe_dump(scenario.to_data(), sort_keys=False, allow_unicode=True, width=100)
