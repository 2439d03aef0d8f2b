"""Custom authorizers as AWS IoT Core runs them: extraction, signature, Lambda, verdict.

The flow (aws-iot.md §2), all I/O-free:

1. **Extraction** (§2.1): :func:`from_upgrade` finds ``x-amz-customauthorizer-name``,
   ``x-amz-customauthorizer-signature`` and ``<tokenKeyName>`` in the WebSocket upgrade
   headers (Dyson clients, JS v1 ``customAuthHeaders``) or query string (browsers, JS v1
   ``customAuthQueryString``); :func:`from_username` finds them after the first ``?`` of
   the MQTT CONNECT username (awsiotsdk v2). Names match case-insensitively, values are
   percent-decoded without mapping ``+`` to space (raw base64 arrives in headers), and
   newlines are stripped from signatures (``openssl base64`` wraps at 64).
2. **Selection** (§2.2): the named authorizer, else the endpoint's default.
3. **Signature** (§2.2): with signing enabled, RSASSA-PKCS1-v1_5 / SHA-256 over the raw
   token bytes must verify against one of the authorizer's public keys; on failure AWS
   "stops the request without invoking the Lambda".
4. **Lambda** (§2.3): the handler (a Python callable standing in for the Lambda) gets an
   :class:`AuthorizerEvent` whose :meth:`~AuthorizerEvent.to_json` is AWS's event shape,
   and returns AWS's response shape, checked by :func:`parse_response`.
5. **Verdict**: :func:`authenticate` returns a :class:`CustomAuthVerdict` with a stable
   kebab-case ``reason`` and an ``explain`` sentence that never quotes the token or the
   signature.

What the client sees on failure (HTTP 101, then a close after CONNECT with no CONNACK on
MQTT 3.1.1, §2.4 and §4.5) is the gateway's business; the verdict only says why.

A second ``?`` in a username or query is not repaired: split on the first ``?``, the
value before the stray one absorbs it (``...signature=abc==?SDK=JavaV2``), so the
signature fails or the authorizer name is unknown, as on AWS (aws-iot.md §2.1,
aws-iot-device-sdk-java-v2#154). The credentials remember it so the explanation can say so.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from harness.auth.policy import MalformedPolicy, PolicyDocument, PolicySet
from harness.errors import ConfigError, ProtocolError

__all__ = [
    "AUTH_ERROR",
    "CUSTOMAUTH_TTL_EXPIRATION",
    "MAX_POLICY_DOCUMENTS",
    "MAX_POLICY_DOCUMENT_CHARS",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "NAME_KEY",
    "SIGNATURE_KEY",
    "Authorizer",
    "AuthorizerEvent",
    "AuthorizerHandler",
    "AuthorizerResponse",
    "BadAuthorizerResponse",
    "CustomAuthCredentials",
    "CustomAuthVerdict",
    "HttpRequestData",
    "MqttConnectData",
    "PublicKeyLike",
    "TokenKeyLookup",
    "VerdictReason",
    "authenticate",
    "from_upgrade",
    "from_username",
    "parse_response",
    "token_key_lookup",
    "verify_token_signature",
]

#: Parameter and header names AWS reads, compared case-insensitively (aws-iot.md §2.1).
NAME_KEY = "x-amz-customauthorizer-name"
SIGNATURE_KEY = "x-amz-customauthorizer-signature"

# Response limits (aws-iot.md §2.3, [D-configca]); enforced in strict mode.
MAX_POLICY_DOCUMENTS = 10
MAX_POLICY_DOCUMENT_CHARS = 2048
MIN_SECONDS = 300
MAX_SECONDS = 86400
_PRINCIPAL_ID = re.compile(r"[a-zA-Z0-9]{1,128}")

#: Lifecycle ``disconnectReason`` values this module's outcomes map to (aws-iot.md §4.6).
AUTH_ERROR = "AUTH_ERROR"
#: Used when ``disconnectAfterInSeconds`` ends a connection (**inferred from the name**).
CUSTOMAUTH_TTL_EXPIRATION = "CUSTOMAUTH_TTL_EXPIRATION"

_REDACTED = "<redacted>"

Source: TypeAlias = Literal["headers", "query", "username"]
#: Maps an authorizer name (``None`` = none was given, use the default) to its token key.
TokenKeyLookup: TypeAlias = Callable[[str | None], str | None]
PublicKeyLike: TypeAlias = bytes | str | rsa.RSAPublicKey
VerdictReason: TypeAlias = Literal[
    "ok",
    "no-credentials",
    "unknown-authorizer",
    "authorizer-inactive",
    "signature-missing",
    "signature-invalid",
    "token-missing",
    "denied",
    "bad-response",
    "authorizer-error",
]


# Extraction (aws-iot.md §2.1)


@dataclass(frozen=True)
class CustomAuthCredentials:
    """What a client presented to a custom authorizer, and where it was found.

    Values are decoded (percent-decoding, no ``+`` to space; newlines removed from the
    signature). An empty value counts as absent. Secrets stay out of ``repr``.
    """

    authorizer_name: str | None
    signature: str | None = field(repr=False)
    token: str | None = field(repr=False)
    #: The token key the token was looked up under (``None``: no authorizer to ask).
    token_key: str | None
    source: Source
    #: For ``source="username"``: the MQTT username before the first ``?``.
    username: str | None = None
    #: The other query or username parameters (say the SDK metrics ``SDK=PythonV2&...``).
    extra_params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The parameters held a second ``?``, which corrupts the value it lands in (§2.1).
    stray_question_mark: bool = False

    @property
    def where(self) -> str:
        """Where the credentials were found, as a phrase for explanations."""
        return {
            "headers": "the WebSocket upgrade headers",
            "query": "the WebSocket upgrade query string",
            "username": "the MQTT CONNECT username",
        }[self.source]


def token_key_lookup(
    authorizers: Mapping[str, Authorizer], default_authorizer: str | None
) -> TokenKeyLookup:
    """The ``token_key_for`` argument of the extractors for a set of authorizers."""

    def lookup(name: str | None) -> str | None:
        chosen = authorizers.get(name if name is not None else (default_authorizer or ""))
        return chosen.token_key if chosen is not None else None

    return lookup


def _decode(value: str) -> str:
    # unquote, never unquote_plus: '+' in raw base64 must survive (aws-iot.md §2.1).
    return urllib.parse.unquote(value)


def _parse_params(text: str) -> list[tuple[str, str]]:
    """``k=v&k2=v2`` into decoded pairs; a piece without ``=`` is a key with value ``""``."""
    pairs: list[tuple[str, str]] = []
    for piece in text.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((_decode(key), _decode(value)))
    return pairs


def _extract(
    pairs: Sequence[tuple[str, str]],
    *,
    source: Source,
    token_key_for: TokenKeyLookup,
    username: str | None = None,
    stray_question_mark: bool = False,
) -> CustomAuthCredentials | None:
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key.lower(), value)
    name = first.get(NAME_KEY) or None
    signature = first.get(SIGNATURE_KEY, "").replace("\r", "").replace("\n", "") or None
    token_key = token_key_for(name)
    token = (first.get(token_key.lower()) or None) if token_key else None
    if name is None and signature is None and token is None:
        return None
    used = {NAME_KEY, SIGNATURE_KEY} | ({token_key.lower()} if token_key else set())
    return CustomAuthCredentials(
        authorizer_name=name,
        signature=signature,
        token=token,
        token_key=token_key,
        source=source,
        username=username,
        extra_params=()
        if source == "headers"
        else tuple((k, v) for k, v in pairs if k.lower() not in used),
        stray_question_mark=stray_question_mark,
    )


def from_upgrade(
    *, headers: Sequence[tuple[str, str]], query: str, token_key_for: TokenKeyLookup
) -> CustomAuthCredentials | None:
    """Credentials from a WebSocket upgrade: headers first, else the query string.

    The source that carries any of name, signature or token is used alone (clients send
    one or the other, aws-iot.md §2.1, §2.5). ``query`` is the raw query string, with or
    without its leading ``?``. ``None`` when neither carries anything.
    """
    from_headers = _extract(
        [(name, _decode(value)) for name, value in headers],
        source="headers",
        token_key_for=token_key_for,
    )
    if from_headers is not None:
        return from_headers
    text = query[1:] if query.startswith("?") else query
    return _extract(
        _parse_params(text),
        source="query",
        token_key_for=token_key_for,
        stray_question_mark="?" in text,
    )


def from_username(username: str, *, token_key_for: TokenKeyLookup) -> CustomAuthCredentials | None:
    """Credentials from an MQTT CONNECT username ``<user>?k=v&...`` (aws-iot.md §2.1).

    Split on the FIRST ``?``; the rest is ``&``-separated ``k=v``. SDK metrics appended
    with ``&SDK=PythonV2&Version=...`` are just extra parameters; appended with a second
    ``?`` they corrupt the value before them. ``None`` when no custom-auth parameter is
    present (a plain username, or only metrics).
    """
    user, sep, rest = username.partition("?")
    if not sep:
        return None
    return _extract(
        _parse_params(rest),
        source="username",
        token_key_for=token_key_for,
        username=user,
        stray_question_mark="?" in rest,
    )


# Signature (aws-iot.md §2.2)


def _load_public_key(key: PublicKeyLike) -> rsa.RSAPublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        loaded: object = key
    else:
        data = key.encode("ascii", "replace") if isinstance(key, str) else key
        try:
            loaded = load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"token signing key is not a PEM public key: {exc}") from None
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise ConfigError(f"token signing key must be RSA, got {type(loaded).__name__}")
    return loaded


def _decode_signature(signature_b64: str) -> bytes | None:
    cleaned = signature_b64.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_token_signature(
    token: str, signature_b64: str, public_keys: Sequence[PublicKeyLike]
) -> bool:
    """True when ``signature_b64`` is a valid signature of ``token`` by one of the keys.

    RSASSA-PKCS1-v1_5 with SHA-256 over the raw token bytes (``openssl dgst -sha256
    -sign``, then base64; aws-iot.md §2.2). Newlines in the base64 are ignored; anything
    that is not valid base64 is simply ``False``. A key that cannot be loaded is a
    :class:`~harness.errors.ConfigError` (the harness was configured wrongly).
    """
    keys = [_load_public_key(k) for k in public_keys]
    signature = _decode_signature(signature_b64)
    if signature is None:
        return False
    try:
        data = token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    for key in keys:
        try:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def _signature_problem(signature: str, keys: Sequence[rsa.RSAPublicKey]) -> str:
    """Why a signature failed, in words that never quote it."""
    decoded = _decode_signature(signature)
    if decoded is None:
        hint = ""
        if "%" in signature:
            hint = " (it still holds '%': URL-encoded twice?)"
        elif " " in signature:
            hint = " (it holds a space: a '+' decoded as space somewhere?)"
        elif "?" in signature:
            hint = " (it holds '?': a second '?' in the parameters?)"
        return f"the signature is not valid base64{hint}"
    sizes = sorted({(k.key_size + 7) // 8 for k in keys})
    if len(decoded) not in sizes:
        expected = " or ".join(str(s) for s in sizes)
        return (
            f"the signature decodes to {len(decoded)} bytes, but the authorizer's keys "
            f"sign {expected} bytes"
        )
    return (
        "the signature does not verify against any of the authorizer's "
        f"{len(keys)} public key(s) (RSA PKCS#1 v1.5, SHA-256 over the token bytes): "
        "wrong key, or a different token was signed"
    )


# Configuration (aws-iot.md §2.2)


@dataclass(frozen=True, kw_only=True)
class Authorizer:
    """One custom authorizer as configured on the endpoint (aws-iot.md §2.2).

    ``handler`` stands in for the Lambda: it receives an :class:`AuthorizerEvent` and
    returns an :class:`AuthorizerResponse` or AWS's response mapping. Misconfiguration
    (signing enabled without a token key or key, keys under 2048 bits, which AWS refuses
    at creation) raises :class:`~harness.errors.ConfigError`.
    """

    name: str
    handler: AuthorizerHandler = field(repr=False)
    # Signing
    token_key: str | None = "token"  # noqa: S105 (a parameter name, not a secret)
    signing_enabled: bool = True
    public_keys: tuple[PublicKeyLike, ...] = field(default=(), repr=False)
    # State
    status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"
    _keys: tuple[rsa.RSAPublicKey, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("an authorizer needs a non-empty name")
        status = str(self.status).upper()
        if status not in ("ACTIVE", "INACTIVE"):
            raise ConfigError(f"authorizer {self.name!r}: status must be ACTIVE or INACTIVE")
        object.__setattr__(self, "status", status)
        keys = tuple(_load_public_key(k) for k in self.public_keys)
        for key in keys:
            if key.key_size < 2048:
                raise ConfigError(
                    f"authorizer {self.name!r}: token signing keys must be at least 2048 "
                    f"bits (AWS refuses smaller ones), got {key.key_size}"
                )
        if self.signing_enabled and not self.token_key:
            raise ConfigError(f"authorizer {self.name!r}: signing needs a token_key")
        if self.signing_enabled and not keys:
            raise ConfigError(f"authorizer {self.name!r}: signing needs public_keys")
        object.__setattr__(self, "_keys", keys)

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"

    @property
    def keys(self) -> tuple[rsa.RSAPublicKey, ...]:
        """The loaded public keys."""
        return self._keys


# The Lambda's input (aws-iot.md §2.3)


@dataclass(frozen=True, kw_only=True)
class HttpRequestData:
    """The HTTP part of a connection: the WebSocket upgrade (or HTTPS publish) request."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The raw query string, with or without its leading ``?`` (``""``: there was none).
    query_string: str = field(default="", repr=False)


@dataclass(frozen=True, kw_only=True)
class MqttConnectData:
    """The MQTT CONNECT fields the Lambda sees."""

    username: str | None = field(default=None, repr=False)
    password: bytes | None = field(default=None, repr=False)
    #: Omitted from the event when ``None`` or empty ("only if sent", §2.3).
    client_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuthorizerEvent:
    """What AWS passes to the authorizer Lambda. Holds secrets: never log it."""

    token: str | None = field(repr=False)
    signature_verified: bool
    connection_id: str
    #: The TLS SNI host name, when the client sent one.
    server_name: str | None = None
    http: HttpRequestData | None = None
    mqtt: MqttConnectData | None = None

    @property
    def protocols(self) -> tuple[str, ...]:
        """``tls`` always (every IoT endpoint is TLS), then ``http`` and ``mqtt`` if present."""
        return (
            ("tls",)
            + (("http",) if self.http is not None else ())
            + (("mqtt",) if self.mqtt is not None else ())
        )

    def to_json(self) -> dict[str, Any]:
        """The event exactly as AWS shapes it, fields irrelevant to the connection omitted.

        Header values repeated under one name are joined with ``,`` (HTTP's rule); the
        query string keeps AWS's leading ``?``; the password is base64 (aws-iot.md §2.3).
        """
        out: dict[str, Any] = {}
        if self.token is not None:
            out["token"] = self.token
        out["signatureVerified"] = self.signature_verified
        out["protocols"] = list(self.protocols)
        protocol_data: dict[str, Any] = {}
        if self.server_name is not None:
            protocol_data["tls"] = {"serverName": self.server_name}
        if self.http is not None:
            headers: dict[str, str] = {}
            for name, value in self.http.headers:
                headers[name] = f"{headers[name]},{value}" if name in headers else value
            http: dict[str, Any] = {"headers": headers}
            query = self.http.query_string.removeprefix("?")
            if query:
                http["queryString"] = "?" + query
            protocol_data["http"] = http
        if self.mqtt is not None:
            mqtt: dict[str, str] = {}
            if self.mqtt.username is not None:
                mqtt["username"] = self.mqtt.username
            if self.mqtt.password is not None:
                mqtt["password"] = base64.b64encode(self.mqtt.password).decode("ascii")
            if self.mqtt.client_id:
                mqtt["clientId"] = self.mqtt.client_id
            protocol_data["mqtt"] = mqtt
        out["protocolData"] = protocol_data
        out["connectionMetadata"] = {"id": self.connection_id}
        return out


# The Lambda's output (aws-iot.md §2.3)


class BadAuthorizerResponse(ProtocolError):
    """The authorizer returned something that is not a valid response (``bad-response``)."""

    def __init__(self, message: str) -> None:
        super().__init__("bad-response", message)


@dataclass(frozen=True, kw_only=True)
class AuthorizerResponse:
    """The Lambda's answer, typed. Handlers may return this or AWS's JSON mapping."""

    is_authenticated: bool
    principal_id: str | None = None
    #: IoT policy documents as JSON text.
    policy_documents: tuple[str, ...] = ()
    disconnect_after_seconds: float | None = None
    refresh_after_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """AWS's response shape (keys with no value omitted)."""
        out: dict[str, Any] = {"isAuthenticated": self.is_authenticated}
        if self.principal_id is not None:
            out["principalId"] = self.principal_id
        out["policyDocuments"] = list(self.policy_documents)
        if self.disconnect_after_seconds is not None:
            out["disconnectAfterInSeconds"] = self.disconnect_after_seconds
        if self.refresh_after_seconds is not None:
            out["refreshAfterInSeconds"] = self.refresh_after_seconds
        return out


AuthorizerHandler: TypeAlias = Callable[[AuthorizerEvent], "AuthorizerResponse | Mapping[str, Any]"]


def parse_response(raw: object, *, strict: bool = True) -> AuthorizerResponse:
    """Check the Lambda's answer and return it typed (aws-iot.md §2.3).

    ``isAuthenticated`` must be a boolean; ``false`` needs nothing else. An
    authenticated answer needs a ``principalId`` and, in strict mode, AWS's ranges:
    ``principalId`` ``[a-zA-Z0-9]{1,128}``, at most 10 ``policyDocuments`` of at most
    2048 characters, ``disconnectAfterInSeconds`` and ``refreshAfterInSeconds`` whole
    numbers in 300..86400. Lenient mode (compressed time) accepts any non-empty
    principal, any number of documents, and any positive durations, or none.
    Policy documents may be JSON strings or objects (serialised compactly).

    Raises :class:`BadAuthorizerResponse`.
    """
    if isinstance(raw, AuthorizerResponse):
        data: Mapping[str, Any] = raw.to_json()
    elif isinstance(raw, Mapping):
        data = raw
    else:
        raise BadAuthorizerResponse(
            f"the authorizer returned {type(raw).__name__}, not a response object"
        )
    authenticated = data.get("isAuthenticated")
    if not isinstance(authenticated, bool):
        raise BadAuthorizerResponse(
            f"isAuthenticated must be a boolean, got {_describe(authenticated)}"
        )
    if not authenticated:
        return AuthorizerResponse(is_authenticated=False)
    return AuthorizerResponse(
        is_authenticated=True,
        principal_id=_principal(data.get("principalId"), strict=strict),
        policy_documents=_documents(data.get("policyDocuments"), strict=strict),
        disconnect_after_seconds=_seconds(
            data.get("disconnectAfterInSeconds"), "disconnectAfterInSeconds", strict=strict
        ),
        refresh_after_seconds=_seconds(
            data.get("refreshAfterInSeconds"), "refreshAfterInSeconds", strict=strict
        ),
    )


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"


def _principal(value: object, *, strict: bool) -> str:
    if not isinstance(value, str) or not value:
        raise BadAuthorizerResponse(f"principalId must be a string, got {_describe(value)}")
    if strict and _PRINCIPAL_ID.fullmatch(value) is None:
        raise BadAuthorizerResponse(
            f"principalId must match [a-zA-Z0-9]{{1,128}}, got {_describe(value)} ({value[:40]!r})"
        )
    return value


def _documents(value: object, *, strict: bool) -> tuple[str, ...]:
    if value is None and not strict:
        return ()
    if not isinstance(value, list | tuple):
        raise BadAuthorizerResponse(f"policyDocuments must be a list, got {_describe(value)}")
    if strict and len(value) > MAX_POLICY_DOCUMENTS:
        raise BadAuthorizerResponse(
            f"policyDocuments holds {len(value)} documents, AWS allows {MAX_POLICY_DOCUMENTS}"
        )
    texts: list[str] = []
    for index, item in enumerate(value):
        if isinstance(item, Mapping):
            try:
                item = PolicyDocument.parse(item).text
            except MalformedPolicy as exc:
                raise BadAuthorizerResponse(
                    f"policyDocuments[{index}] is not a policy: {exc.message}"
                ) from None
        if not isinstance(item, str):
            raise BadAuthorizerResponse(
                f"policyDocuments[{index}] must be a JSON string, got {_describe(item)}"
            )
        if strict and len(item) > MAX_POLICY_DOCUMENT_CHARS:
            raise BadAuthorizerResponse(
                f"policyDocuments[{index}] has {len(item)} characters, AWS allows "
                f"{MAX_POLICY_DOCUMENT_CHARS}"
            )
        texts.append(item)
    return tuple(texts)


def _seconds(value: object, name: str, *, strict: bool) -> float | None:
    if value is None and not strict:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadAuthorizerResponse(f"{name} must be a number, got {_describe(value)}")
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise BadAuthorizerResponse(f"{name} must be positive, got {value}")
    if strict and (
        (isinstance(value, float) and not value.is_integer())
        or not MIN_SECONDS <= value <= MAX_SECONDS
    ):
        raise BadAuthorizerResponse(
            f"{name} must be a whole number of seconds in {MIN_SECONDS}..{MAX_SECONDS}, "
            f"got {value} (use lenient mode for compressed time)"
        )
    return value


# The decision


@dataclass(frozen=True, kw_only=True)
class CustomAuthVerdict:
    """The outcome of custom authentication, for the gateway and the event timeline.

    ``explain`` never contains the token or the signature.
    """

    ok: bool
    reason: VerdictReason
    explain: str
    #: The authorizer that was selected (``None`` when none could be).
    authorizer: str | None = None
    signature_verified: bool = False
    #: Whether the Lambda (handler) was invoked.
    invoked: bool = False
    principal_id: str | None = None
    policy_documents: tuple[str, ...] = ()
    policies: PolicySet = field(default_factory=PolicySet)
    disconnect_after: float | None = None
    refresh_after: float | None = None

    @property
    def disconnect_reason(self) -> str | None:
        """Lifecycle ``disconnectReason`` of a failure: ``AUTH_ERROR`` (aws-iot.md §4.6)."""
        return None if self.ok else AUTH_ERROR

    def event_fields(self) -> dict[str, Any]:
        """Fields for an ``auth.verdict`` event (DESIGN.md "Events JSONL")."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "reason": self.reason,
            "explain": self.explain,
            "method": "custom",
            "authorizer": self.authorizer,
            "invoked": self.invoked,
        }
        if self.principal_id is not None:
            out["principal_id"] = self.principal_id
        if self.ok:
            out["policy_count"] = len(self.policy_documents)
            out["disconnect_after"] = self.disconnect_after
            out["refresh_after"] = self.refresh_after
        return out


def _redact(text: str, secrets: Sequence[str | None]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe="")}:
            text = text.replace(form, _REDACTED)
    return text


def authenticate(
    *,
    credentials: CustomAuthCredentials | None,
    authorizers: Mapping[str, Authorizer],
    default_authorizer: str | None,
    # The connection, as the Lambda event describes it (aws-iot.md §2.3)
    connection_id: str,
    server_name: str | None = None,
    http: HttpRequestData | None = None,
    mqtt: MqttConnectData | None = None,
    # Limits
    strict: bool = True,
) -> CustomAuthVerdict:
    """Run custom authentication for one connection and say why it passed or failed.

    Selection (named, else default; aws-iot.md §2.2), status, signature (when signing is
    enabled; on failure the handler is not invoked), the Lambda event, the handler call
    (any exception becomes ``authorizer-error``), response checks (``strict``: AWS's
    ranges), then the policy documents must parse. Never raises for anything the client
    or the handler did.
    """
    token = credentials.token if credentials else None
    signature = credentials.signature if credentials else None
    secrets = (token, signature)

    def verdict(reason: VerdictReason, explain: str, **kwargs: Any) -> CustomAuthVerdict:
        if reason != "ok" and credentials is not None and credentials.stray_question_mark:
            explain += (
                f"; note: {credentials.where} holds a second '?', which AWS does not treat "
                "as a separator, so the value before it absorbed the rest "
                "(aws-iot-device-sdk-java-v2#154)"
            )
        return CustomAuthVerdict(
            ok=reason == "ok", reason=reason, explain=_redact(explain, secrets), **kwargs
        )

    # Selection
    name = credentials.authorizer_name if credentials else None
    if name is not None:
        selected = authorizers.get(name)
        if selected is None:
            known = ", ".join(repr(n) for n in sorted(authorizers)) or "none"
            return verdict(
                "unknown-authorizer",
                f"{credentials.where if credentials else 'the request'} names authorizer "
                f"{name[:80]!r}, which is not configured (known: {known})",
            )
    elif default_authorizer is None:
        if credentials is None:
            return verdict(
                "no-credentials",
                "the connection carries no custom-authorizer credentials "
                f"({NAME_KEY}, {SIGNATURE_KEY}, token) and the endpoint has no default "
                "authorizer",
            )
        return verdict(
            "unknown-authorizer",
            f"{credentials.where} carries no {NAME_KEY} and the endpoint has no default authorizer",
        )
    else:
        selected = authorizers.get(default_authorizer)
        if selected is None:
            return verdict(
                "unknown-authorizer",
                f"the endpoint's default authorizer {default_authorizer!r} is not configured",
            )
    authorizer = selected
    chosen = {"authorizer": authorizer.name}
    if not authorizer.active:
        return verdict(
            "authorizer-inactive", f"authorizer {authorizer.name!r} is INACTIVE", **chosen
        )

    # Signature
    verified = False
    if authorizer.signing_enabled:
        where = credentials.where if credentials else "the request"
        if token is None:
            return verdict(
                "token-missing",
                f"authorizer {authorizer.name!r} signs tokens, but {where} has no "
                f"token under the key {authorizer.token_key!r}",
                **chosen,
            )
        if signature is None:
            return verdict(
                "signature-missing",
                f"authorizer {authorizer.name!r} signs tokens, but {where} has no "
                f"{SIGNATURE_KEY}; the Lambda was not invoked",
                **chosen,
            )
        if not verify_token_signature(token, signature, authorizer.keys):
            return verdict(
                "signature-invalid",
                f"authorizer {authorizer.name!r}: {_signature_problem(signature, authorizer.keys)}"
                "; the Lambda was not invoked",
                **chosen,
            )
        verified = True

    # The Lambda
    event = AuthorizerEvent(
        token=token,
        signature_verified=verified,
        connection_id=connection_id,
        server_name=server_name,
        http=http,
        mqtt=mqtt,
    )
    invoked = {"authorizer": authorizer.name, "signature_verified": verified, "invoked": True}
    try:
        raw = authorizer.handler(event)
    except Exception as exc:
        return verdict(
            "authorizer-error",
            f"authorizer {authorizer.name!r} raised {type(exc).__name__}: {exc}",
            **invoked,
        )
    try:
        response = parse_response(raw, strict=strict)
    except BadAuthorizerResponse as exc:
        return verdict(
            "bad-response",
            f"authorizer {authorizer.name!r} returned an invalid response: {exc.message}",
            **invoked,
        )
    if not response.is_authenticated:
        return verdict(
            "denied", f"authorizer {authorizer.name!r} returned isAuthenticated false", **invoked
        )
    try:
        policies = PolicySet.parse(response.policy_documents)
    except MalformedPolicy as exc:
        return verdict(
            "bad-response",
            f"authorizer {authorizer.name!r} returned an invalid policy: {exc.message}",
            **invoked,
        )
    return verdict(
        "ok",
        f"authorizer {authorizer.name!r} authenticated principal {response.principal_id!r} "
        f"with {len(policies.documents)} policy document(s)"
        + ("" if verified else " (signing disabled)")
        + f"; disconnect after {_duration(response.disconnect_after_seconds)}, "
        f"refresh after {_duration(response.refresh_after_seconds)}",
        principal_id=response.principal_id,
        policy_documents=response.policy_documents,
        policies=policies,
        disconnect_after=response.disconnect_after_seconds,
        refresh_after=response.refresh_after_seconds,
        **invoked,
    )


def _duration(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:g} s"
