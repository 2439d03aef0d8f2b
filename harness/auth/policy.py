"""AWS IoT policy evaluation: documents, wildcards, policy variables, allow and deny.

Every MQTT operation on AWS IoT Core is authorized against the policy documents of the
connection's principal (aws-iot.md §5): ``iot:Connect`` on ``client/<clientId>`` at
CONNECT, ``iot:Publish`` and ``iot:Receive`` on ``topic/<topic>``, ``iot:Subscribe`` on
``topicfilter/<filter>`` per filter. The rules implemented here are the general IAM ones
the spec marks as such:

* a document is ``{"Version", "Statement": [{"Effect", "Action", "Resource"}]}``;
* ``*`` matches any run of characters and ``?`` exactly one, in ``Action`` and
  ``Resource``; MQTT ``+`` and ``#`` are literal (``topicfilter/a/#`` allows only the
  filter ``a/#``); ``${*}``, ``${?}``, ``${$}`` (and the ``$(*)``, ``$(?)``, ``$($)``
  spelling of the IoT guide) stand for the literal characters;
* actions match case-insensitively, resources case-sensitively;
* policy variables (``${iot:ClientId}``, ``${iot:Connection.Thing.ThingName}``,
  ``${cognito-identity.amazonaws.com:sub}``, ...) are substituted in ``Resource`` before
  matching, only in ``"Version": "2012-10-17"`` documents (in ``2008-10-17``, the default
  when ``Version`` is absent, they are literal text); a variable without a value makes
  that resource pattern match nothing; ``${name, 'default'}`` supplies a default;
* default deny; any matching ``Deny`` beats every ``Allow`` in any document.

What happens on a denial (hang-up, dropped publish, silently undelivered message) is the
session pump's business (aws-iot.md §4.5); :attr:`Decision.disconnect_reason` names the
lifecycle ``disconnectReason`` (aws-iot.md §4.6) when the denial ends the connection.

This module is I/O-free. Wildcard matching is linear-time per pattern (no regular
expressions), so a hostile 2048-character pattern cannot stall the gateway.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.errors import ProtocolError

__all__ = [
    "ACTIONS",
    "CONNECT",
    "PUBLISH",
    "RECEIVE",
    "RETAIN_PUBLISH",
    "SUBSCRIBE",
    "VERSION_2008",
    "VERSION_2012",
    "Decision",
    "MalformedPolicy",
    "PolicyDocument",
    "PolicySet",
    "Statement",
    "allow_all_outside_reserved",
    "client_arn",
    "connection_variables",
    "evaluate",
    "glob_match",
    "topic_arn",
    "topicfilter_arn",
]

# The IoT data-plane actions the gateway checks (aws-iot.md §5 table).
CONNECT = "iot:Connect"
PUBLISH = "iot:Publish"
SUBSCRIBE = "iot:Subscribe"
RECEIVE = "iot:Receive"
RETAIN_PUBLISH = "iot:RetainPublish"
ACTIONS = (CONNECT, PUBLISH, SUBSCRIBE, RECEIVE, RETAIN_PUBLISH)

VERSION_2012 = "2012-10-17"
VERSION_2008 = "2008-10-17"

_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Action", "Resource"})
_UNSUPPORTED_KEYS = {
    "Condition": "Condition blocks are not supported by the harness's policy evaluator",
    "NotAction": "NotAction is not supported by the harness's policy evaluator",
    "NotResource": "NotResource is not supported by the harness's policy evaluator",
    "Principal": "Principal does not belong in an IoT (identity) policy",
    "NotPrincipal": "NotPrincipal does not belong in an IoT (identity) policy",
}
_LITERAL_SPECIALS = {"*": "*", "?": "?", "$": "$"}


class MalformedPolicy(ProtocolError):
    """A policy document that is not valid JSON or not shaped like an IoT policy.

    Raised with reason ``malformed-policy``. It is a :class:`ProtocolError` because
    documents usually arrive from a peer (a custom authorizer's response); configuration
    loaders may wrap it in a ``ConfigError`` naming the file.
    """

    def __init__(self, message: str) -> None:
        super().__init__("malformed-policy", message)


# Resources


def client_arn(region: str, account: str, client_id: str) -> str:
    """The resource of ``iot:Connect``: ``arn:aws:iot:<region>:<account>:client/<id>``."""
    return f"arn:aws:iot:{region}:{account}:client/{client_id}"


def topic_arn(region: str, account: str, topic: str) -> str:
    """The resource of ``iot:Publish``, ``iot:Receive`` and ``iot:RetainPublish``."""
    return f"arn:aws:iot:{region}:{account}:topic/{topic}"


def topicfilter_arn(region: str, account: str, topic_filter: str) -> str:
    """The resource of ``iot:Subscribe``: ``...:topicfilter/<filter>`` (``+``/``#`` kept)."""
    return f"arn:aws:iot:{region}:{account}:topicfilter/{topic_filter}"


def connection_variables(
    *,
    client_id: str | None = None,
    thing_name: str | None = None,
    cognito_identity_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The policy variables of one connection, keyed as policies spell them.

    ``iot:Connection.Thing.IsAttached`` is ``"true"`` exactly when a thing name is known
    (aws-iot.md §5: ``ThingName`` only has a value when a thing is attached). ``None``
    leaves a variable without a value, so patterns using it match nothing.
    """
    out: dict[str, str] = {}
    if client_id is not None:
        out["iot:ClientId"] = client_id
    if thing_name is not None:
        out["iot:Connection.Thing.ThingName"] = thing_name
    out["iot:Connection.Thing.IsAttached"] = "true" if thing_name is not None else "false"
    if cognito_identity_id is not None:
        out["cognito-identity.amazonaws.com:sub"] = cognito_identity_id
    if extra:
        out.update(extra)
    return out


# Patterns

# A compiled pattern is a tuple of parts: a str is literal text, _STAR matches any run,
# _ONE matches one character, a _Var is substituted at evaluation time.
_STAR = 0
_ONE = 1


@dataclass(frozen=True)
class _Var:
    name: str  # lower-cased: IAM condition-key names are case-insensitive
    default: str | None


_Part = str | int | _Var


def _compile(pattern: str, *, variables: bool) -> tuple[_Part, ...]:
    """Split a pattern into literal text, wildcards and (2012-10-17 only) variables."""
    parts: list[_Part] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            parts.append("".join(literal))
            literal.clear()

    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            flush()
            parts.append(_STAR)
            i += 1
        elif ch == "?":
            flush()
            parts.append(_ONE)
            i += 1
        elif ch == "$" and pattern.startswith("(", i + 1) and pattern.startswith(")", i + 3):
            special = _LITERAL_SPECIALS.get(pattern[i + 2])
            if special is not None:
                literal.append(special)
                i += 4
            else:
                literal.append(ch)
                i += 1
        elif ch == "$" and variables and pattern.startswith("{", i + 1):
            end = pattern.find("}", i + 2)
            if end < 0:
                literal.append(ch)
                i += 1
                continue
            inner = pattern[i + 2 : end]
            special = _LITERAL_SPECIALS.get(inner)
            if special is not None:
                literal.append(special)
            else:
                flush()
                parts.append(_parse_variable(inner))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    flush()
    return tuple(parts)


def _parse_variable(inner: str) -> _Var:
    """``name`` or ``name, 'default'`` (IAM "Specifying default values")."""
    name, comma, rest = inner.partition(",")
    default: str | None = None
    if comma:
        rest = rest.strip()
        if len(rest) >= 2 and rest[0] == "'" and rest[-1] == "'":
            default = rest[1:-1]
        else:
            # Not a well-formed default: the variable can never resolve.
            return _Var(name="\x00invalid", default=None)
    return _Var(name=name.strip().lower(), default=default)


def _substitute(parts: tuple[_Part, ...], variables: Mapping[str, str]) -> list[str | int] | None:
    """Replace variables by their (literal) values; ``None`` if one has no value."""
    out: list[str | int] = []
    for part in parts:
        if isinstance(part, _Var):
            value = variables.get(part.name)
            if value is None:
                value = part.default
            if value is None:
                return None
            out.append(value)
        else:
            out.append(part)
    return out


def _flatten(parts: Iterable[str | int], *, fold: bool) -> list[str | int]:
    """One element per literal character (case-folded for actions) or wildcard."""
    flat: list[str | int] = []
    for part in parts:
        if isinstance(part, str):
            flat.extend(part.casefold() if fold else part)
        elif part == _STAR and flat and flat[-1] == _STAR:
            continue  # "**" matches what "*" matches
        else:
            flat.append(part)
    return flat


def _match(tokens: Sequence[str | int], text: str) -> bool:
    """Greedy wildcard matching with single backtrack point: O(len(tokens) * len(text))."""
    t = s = 0
    star_t = -1
    star_s = 0
    n_t, n_s = len(tokens), len(text)
    while s < n_s:
        if t < n_t and tokens[t] == _STAR:
            star_t, star_s = t, s
            t += 1
        elif t < n_t and (tokens[t] == _ONE or tokens[t] == text[s]):
            t += 1
            s += 1
        elif star_t >= 0:
            t = star_t + 1
            star_s += 1
            s = star_s
        else:
            return False
    while t < n_t and tokens[t] == _STAR:
        t += 1
    return t == n_t


def glob_match(
    pattern: str,
    text: str,
    *,
    case_sensitive: bool = True,
    variables: Mapping[str, str] | None = None,
) -> bool:
    """IAM wildcard match of a whole string (aws-iot.md §5).

    ``*`` is any run, ``?`` one character, ``$(*)``/``${*}`` and friends are literal;
    everything else (MQTT ``+`` and ``#`` included) is literal. With ``variables`` the
    pattern's ``${name}`` are substituted first (2012-10-17 semantics; a variable without
    a value matches nothing); without, ``${...}`` is literal text (2008-10-17 semantics).
    """
    parts = _compile(pattern, variables=variables is not None)
    substituted = _substitute(parts, {k.lower(): v for k, v in (variables or {}).items()})
    if substituted is None:
        return False
    fold = not case_sensitive
    return _match(_flatten(substituted, fold=fold), text.casefold() if fold else text)


# Documents


@dataclass(frozen=True)
class Statement:
    """One statement: its effect, action patterns and resource patterns as written.

    ``variables`` says whether ``${...}`` in resources are policy variables (documents
    with ``"Version": "2012-10-17"``) or literal text (``2008-10-17``).
    """

    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    sid: str | None = None
    variables: bool = True
    _action_tokens: tuple[tuple[str | int, ...], ...] = field(init=False, repr=False, compare=False)
    _resource_parts: tuple[tuple[_Part, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Actions take wildcards but never variables (IAM substitutes only in Resource).
        action_tokens = tuple(
            tuple(_flatten(_substitute(_compile(a, variables=False), {}) or (), fold=True))
            for a in self.actions
        )
        object.__setattr__(self, "_action_tokens", action_tokens)
        object.__setattr__(
            self,
            "_resource_parts",
            tuple(_compile(r, variables=self.variables) for r in self.resources),
        )

    def matches_action(self, action: str) -> bool:
        folded = action.casefold()
        return any(_match(tokens, folded) for tokens in self._action_tokens)

    def matching_resource(self, resource: str, variables: Mapping[str, str]) -> str | None:
        """The first resource pattern (as written) matching ``resource``, if any.

        ``variables`` must be keyed by lower-cased names.
        """
        for written, parts in zip(self.resources, self._resource_parts, strict=True):
            substituted = _substitute(parts, variables)
            if substituted is not None and _match(_flatten(substituted, fold=False), resource):
                return written
        return None


@functools.lru_cache(maxsize=512)
def _parse_text(text: str) -> PolicyDocument:
    return PolicyDocument._parse(text)


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed IoT policy document. Build it with :meth:`parse`."""

    version: str
    statements: tuple[Statement, ...]
    #: The document as received (JSON text), for explanations and re-serialisation.
    text: str = field(repr=False, compare=False, default="")

    @classmethod
    def parse(cls, source: str | bytes | Mapping[str, Any]) -> PolicyDocument:
        """Parse JSON text (or an already-decoded mapping) into a document.

        Raises :class:`MalformedPolicy` for anything that is not a policy: bad JSON, a
        non-object, a missing or empty ``Statement``, an ``Effect`` other than ``Allow``
        or ``Deny``, an ``Action`` or ``Resource`` that is not a non-empty string or list
        of them, or an element the harness does not evaluate (``Condition``, ``NotAction``,
        ``NotResource``), which it refuses rather than ignore.

        Documents are immutable, so the same JSON text parses once: every connection of a
        thing, and every credential minted with the same policies, shares one document
        (a malformed text is refused afresh each time, with the same error).
        """
        if isinstance(source, str):
            return _parse_text(source)
        return cls._parse(source)

    @classmethod
    def _parse(cls, source: str | bytes | Mapping[str, Any]) -> PolicyDocument:
        """:meth:`parse` without the cache."""
        if isinstance(source, str | bytes):
            text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
            try:
                data: object = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise MalformedPolicy(f"policy document is not valid JSON: {exc}") from None
        elif isinstance(source, Mapping):
            data = source
            try:
                text = json.dumps(source, separators=(",", ":"))
            except (TypeError, ValueError, RecursionError):
                raise MalformedPolicy("policy document holds values JSON cannot encode") from None
        else:
            raise MalformedPolicy(
                f"policy document must be JSON text or an object, got {type(source).__name__}"
            )
        if not isinstance(data, Mapping):
            raise MalformedPolicy(f"policy document must be a JSON object, got {_kind(data)}")
        for key in data:
            if key not in ("Version", "Id", "Statement"):
                raise MalformedPolicy(f"unknown top-level element {_short(key)}")
        version = data.get("Version", VERSION_2008)
        if version not in (VERSION_2012, VERSION_2008):
            raise MalformedPolicy(
                f'Version must be "{VERSION_2012}" (or "{VERSION_2008}"), got {_short(version)}'
            )
        raw_statements = data.get("Statement")
        if isinstance(raw_statements, Mapping):
            raw_statements = [raw_statements]
        if not isinstance(raw_statements, list | tuple) or not raw_statements:
            raise MalformedPolicy("Statement must be an object or a non-empty list of objects")
        statements = tuple(
            _parse_statement(i, raw, variables=version == VERSION_2012)
            for i, raw in enumerate(raw_statements)
        )
        return cls(version=version, statements=statements, text=text)


def _parse_statement(index: int, raw: object, *, variables: bool) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, Mapping):
        raise MalformedPolicy(f"{where} must be an object, got {_kind(raw)}")
    for key in raw:
        if key in _UNSUPPORTED_KEYS:
            raise MalformedPolicy(f"{where}.{key}: {_UNSUPPORTED_KEYS[key]}")
        if key not in _STATEMENT_KEYS:
            raise MalformedPolicy(f"{where} has an unknown element {_short(key)}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicy(f'{where}.Effect must be "Allow" or "Deny", got {_short(effect)}')
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise MalformedPolicy(f"{where}.Sid must be a string, got {_kind(sid)}")
    actions = _string_list(raw.get("Action"), f"{where}.Action")
    resources = _string_list(raw.get("Resource"), f"{where}.Resource")
    return Statement(
        effect="Allow" if effect == "Allow" else "Deny",
        actions=actions,
        resources=resources,
        sid=sid,
        variables=variables,
    )


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        raise MalformedPolicy(f"{where} is missing")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise MalformedPolicy(f"{where} must be a string or a non-empty list of strings")
    for item in items:
        if not isinstance(item, str) or not item:
            raise MalformedPolicy(f"{where} holds {_kind(item)}, expected non-empty strings")
    return tuple(items)


def _kind(value: object) -> str:
    if isinstance(value, str):
        return f"the string {_short(value)}"
    return {
        "NoneType": "null",
        "bool": "a boolean",
        "int": "a number",
        "float": "a number",
        "list": "a list",
        "dict": "an object",
    }.get(type(value).__name__, type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Evaluation


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorization check, with enough context to explain it."""

    allowed: bool
    reason: Literal["allowed", "explicit-deny", "implicit-deny"]
    action: str
    resource: str
    #: Index of the document and statement that decided (``None`` for implicit deny).
    document_index: int | None = None
    statement_index: int | None = None
    #: The ``Resource`` pattern, as written, that matched.
    matched_resource: str | None = None
    sid: str | None = None

    @property
    def explain(self) -> str:
        where = (
            f"document {self.document_index} statement {self.statement_index}"
            + (f" ({self.sid})" if self.sid else "")
            + f", Resource {self.matched_resource!r}"
        )
        if self.reason == "allowed":
            return f"{self.action} on {self.resource} is allowed by {where}"
        if self.reason == "explicit-deny":
            return f"{self.action} on {self.resource} is explicitly denied by {where}"
        return (
            f"{self.action} on {self.resource} is denied: no statement of the attached "
            "policies allows it (implicit deny)"
        )

    @property
    def disconnect_reason(self) -> str | None:
        """The lifecycle ``disconnectReason`` a denial causes (aws-iot.md §4.5, §4.6).

        Denied Connect, Publish and Subscribe end the connection (**inferred**:
        ``FORBIDDEN_ACCESS``); a denied Receive only drops the message (``None``).
        """
        if self.allowed or self.action.casefold() == RECEIVE.casefold():
            return None
        return "FORBIDDEN_ACCESS"


def evaluate(
    documents: Sequence[PolicyDocument],
    *,
    action: str,
    resource: str,
    variables: Mapping[str, str] | None = None,
) -> Decision:
    """Decide ``action`` on ``resource`` under all ``documents`` (aws-iot.md §5).

    Default deny; the first matching ``Deny`` wins over any ``Allow``; otherwise the
    first matching ``Allow`` is reported. ``variables`` are the connection's policy
    variables (see :func:`connection_variables`); names are case-insensitive.
    """
    folded_vars = {k.lower(): v for k, v in (variables or {}).items()}
    allow: Decision | None = None
    for d_index, document in enumerate(documents):
        for s_index, statement in enumerate(document.statements):
            if allow is not None and statement.effect == "Allow":
                continue
            if not statement.matches_action(action):
                continue
            matched = statement.matching_resource(resource, folded_vars)
            if matched is None:
                continue
            decision = Decision(
                allowed=statement.effect == "Allow",
                reason="allowed" if statement.effect == "Allow" else "explicit-deny",
                action=action,
                resource=resource,
                document_index=d_index,
                statement_index=s_index,
                matched_resource=matched,
                sid=statement.sid,
            )
            if not decision.allowed:
                return decision
            allow = decision
    if allow is not None:
        return allow
    return Decision(allowed=False, reason="implicit-deny", action=action, resource=resource)


@dataclass(frozen=True)
class PolicySet:
    """The policy documents attached to one principal (aws-iot.md §5, "a policy set")."""

    documents: tuple[PolicyDocument, ...] = ()

    @classmethod
    def parse(cls, sources: Iterable[str | bytes | Mapping[str, Any]]) -> PolicySet:
        """Parse every document; raises :class:`MalformedPolicy` naming the bad one."""
        parsed: list[PolicyDocument] = []
        for index, source in enumerate(sources):
            try:
                parsed.append(PolicyDocument.parse(source))
            except MalformedPolicy as exc:
                raise MalformedPolicy(f"policy document {index}: {exc.message}") from None
        return cls(documents=tuple(parsed))

    def evaluate(
        self, action: str, resource: str, variables: Mapping[str, str] | None = None
    ) -> Decision:
        return evaluate(self.documents, action=action, resource=resource, variables=variables)

    def allows(
        self, action: str, resource: str, variables: Mapping[str, str] | None = None
    ) -> bool:
        return self.evaluate(action, resource, variables).allowed


def allow_all_outside_reserved(region: str, account: str) -> str:
    """A policy allowing Connect/Publish/RetainPublish/Subscribe/Receive except on ``$aws/``.

    The gateway attaches it to principals configured without policies, so a newcomer's
    client works until it touches AWS-reserved topics (shadows, jobs, lifecycle events),
    which need a deliberate grant. The reserved topics are excluded with ``Deny``
    statements (the plain Effect/Action/Resource subset every IoT policy supports), so the
    document cannot be widened by attaching another one alongside it.
    """
    prefix = f"arn:aws:iot:{region}:{account}"
    document = {
        "Version": VERSION_2012,
        "Statement": [
            {"Effect": "Allow", "Action": CONNECT, "Resource": f"{prefix}:client/*"},
            {
                "Effect": "Allow",
                "Action": [PUBLISH, RETAIN_PUBLISH, RECEIVE],
                "Resource": f"{prefix}:topic/*",
            },
            {"Effect": "Allow", "Action": SUBSCRIBE, "Resource": f"{prefix}:topicfilter/*"},
            {
                "Effect": "Deny",
                "Action": [PUBLISH, RETAIN_PUBLISH, RECEIVE],
                "Resource": f"{prefix}:topic/$aws/*",
            },
            {"Effect": "Deny", "Action": SUBSCRIBE, "Resource": f"{prefix}:topicfilter/$aws/*"},
        ],
    }
    return json.dumps(document, separators=(",", ":"))
