"""The fake Amazon Cognito Identity service: GetId and GetCredentialsForIdentity (aws-iot.md §6).

Two layers (DESIGN.md "Sans-I/O core"):

* :class:`CognitoIdentityService` decides: it takes the ``X-Amz-Target`` header, the body
  bytes, ``now`` (world epoch seconds, for expirations) and ``tick`` (monotonic seconds,
  for rate limits) and returns a :class:`CallResult`; no sockets, no clocks;
* :class:`FakeCognito` serves it over HTTPS on loopback with :class:`~harness.httpserver.HttpServer`
  and records one ``cognito.call`` event per call.

The wire protocol is AWS JSON 1.1 (aws-iot.md §6): ``POST /`` with
``X-Amz-Target: AWSCognitoIdentityService.<Operation>``; answers carry
``Content-Type: application/x-amz-json-1.1`` and ``x-amzn-RequestId``. Both operations are
public APIs (``authtype: none``): signed and unsigned requests are accepted alike and a
signature is never verified. Credentials come back as ``SecretKey`` (not
``SecretAccessKey``) with ``Expiration`` as an epoch-seconds JSON *number* (aws-sdk-js v3
throws on a string; moto's ISO string is wrong). Issued keys enter the shared
:class:`~harness.auth.credentials.CredentialStore` with their session token, expiry and
the pool's IoT policies (aws-iot.md §1.5, §5), so the gateway accepts them until they
expire.

Errors are 400 with ``{"__type", "message"}`` and ``x-amzn-ErrorType: <Type>:`` (trailing
colon, aws-iot.md §6), except ``InternalErrorException``, a service fault, which is 500:

* ``NotAuthorizedException``: ``Unauthenticated access is not supported for this identity
  pool.`` (a call without ``Logins`` on a pool with ``allow_unauthenticated=False``);
* ``ResourceNotFoundException``: ``IdentityPool '<id>' not found.`` (wrong pool or region),
  ``Identity '<id>' not found.`` (an identity id GetId never issued);
* ``TooManyRequestsException``: ``Rate exceeded`` (above the pool's ``rate_limit``);
* ``ValidationException``: a member missing or breaking the model's constraints (pattern
  ``[\\w-]+:[0-9a-f-]+``, length 1 to 55), as "1 validation error detected: ...";
* ``SerializationException``: a body that is not a JSON object with the right member
  types, and requests the HTTP layer refuses (too large, malformed framing);
* ``UnknownOperationException``: a missing or unknown ``X-Amz-Target``, or not ``POST /``.

``ValidationException`` is what AmazonCognitoIdentity answers for a constraint violation
(awslabs/serverless-automated-ui-testing#2, aws/aws-sdk-net#445), ``SerializationException``
what cognito-identity answers for an undecodable body (epsagon/epsagon-browser#50), and
``UnknownOperationException`` what the AWS JSON front end answers for an unknown target
(boto/boto3#3985); these three are the front end's, not modeled in service-2.json, and
their exact message texts are **(inferred)**.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness.auth.credentials import Credential, CredentialStore
from harness.clock import WorldClock
from harness.errors import ConfigError
from harness.events import Recorder
from harness.httpserver import HttpLimits, HttpServer, HttpService, Request, Response
from harness.mqtt.rules import RateLimiter

__all__ = [
    "JSON_11",
    "TARGET_PREFIX",
    "CallResult",
    "CognitoIdentityService",
    "FakeCognito",
    "Identity",
    "IdentityPool",
]

#: ``Content-Type`` of every request and answer (botocore service-2.json: jsonVersion 1.1).
JSON_11 = "application/x-amz-json-1.1"
#: ``X-Amz-Target`` prefix (botocore service-2.json: targetPrefix).
TARGET_PREFIX = "AWSCognitoIdentityService."
#: Operations the fake serves; other real ones get UnknownOperationException.
OPERATIONS = ("GetId", "GetCredentialsForIdentity")

#: IdentityPoolId and IdentityId (botocore service-2.json), matched whole, ASCII ``\w``.
_ID_PATTERN = re.compile(r"[\w-]+:[0-9a-f-]+", re.ASCII)
_ID_PATTERN_TEXT = r"[\w-]+:[0-9a-f-]+"
_ID_MAX = 55
_ACCOUNT_PATTERN = re.compile(r"\d+", re.ASCII)
_LOGINS_MAX = 10
_PROVIDER_MAX = 128
_TOKEN_MAX = 50000
_ARN_MIN, _ARN_MAX = 20, 2048

UNAUTHENTICATED_MESSAGE = "Unauthenticated access is not supported for this identity pool."
UNSUPPORTED_PROVIDER_MESSAGE = "Token is not from a supported provider of this identity pool."
RATE_EXCEEDED_MESSAGE = "Rate exceeded"


# Configuration


@dataclass(frozen=True, kw_only=True)
class IdentityPool:
    """One identity pool as the fake serves it.

    ``credential_lifetime`` is compressed time (DESIGN.md): AWS issues 1 h credentials
    (aws-iot.md §6), a scenario may issue 0.5 s ones. ``login_providers`` names the
    providers whose ``Logins`` tokens the pool accepts (the tokens themselves are never
    verified); with none, every ``Logins`` entry is refused.
    """

    #: ``<region>:<uuid>``.
    pool_id: str
    allow_unauthenticated: bool = True
    #: Seconds the issued credentials live (fractions allowed).
    credential_lifetime: float = 3600.0
    #: IoT policy documents (JSON text) attached to every identity of this pool.
    policies: tuple[str, ...] = ()
    #: Requests per second before TooManyRequestsException; ``None`` = unlimited.
    rate_limit: float | None = None
    login_providers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not _valid_id(self.pool_id):
            raise ConfigError(
                f"identity pool id {self.pool_id!r} does not match {_ID_PATTERN_TEXT} "
                f"(length 1-{_ID_MAX}); use '<region>:<uuid>'"
            )
        if not self.credential_lifetime > 0:
            raise ConfigError(f"credential_lifetime must be > 0, got {self.credential_lifetime}")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigError(f"rate_limit must be > 0 or None, got {self.rate_limit}")
        if isinstance(self.policies, str):
            raise ConfigError("policies is a tuple of policy documents, not one string")
        if isinstance(self.login_providers, str):
            raise ConfigError("login_providers is a set of provider names, not one string")
        # Frozen, yet given as lists by callers and scenario files: normalize once.
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "login_providers", frozenset(self.login_providers))

    @property
    def region(self) -> str:
        return self.pool_id.partition(":")[0]


@dataclass(frozen=True)
class Identity:
    """An identity id handed out by GetId, and how it was obtained."""

    identity_id: str
    pool_id: str
    #: Providers of the ``Logins`` given at GetId; empty = an unauthenticated identity.
    providers: frozenset[str] = frozenset()

    @property
    def authenticated(self) -> bool:
        return bool(self.providers)


@dataclass(frozen=True)
class CallResult:
    """What one call decided: the HTTP status and JSON body, and what the timeline needs."""

    status: int
    body: Mapping[str, Any]
    operation: str | None = None
    #: ``__type`` of an error answer, ``None`` on success.
    error_type: str | None = None
    #: Stable kebab-case code of an error answer.
    reason: str | None = None
    #: The plain-words explanation for the timeline (never a secret).
    explain: str | None = None
    pool_id: str | None = None
    identity_id: str | None = None
    #: The credential issued by GetCredentialsForIdentity.
    credential: Credential | None = field(default=None, repr=False)
    #: True when an injected fault (``fail_next``) produced this answer.
    injected: bool = False

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def message(self) -> str | None:
        value = self.body.get("message")
        return value if isinstance(value, str) else None


class _Rejected(Exception):
    """An AWS error answer, raised inside the core and turned into a :class:`CallResult`."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        reason: str,
        explain: str | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.reason = reason
        self.explain = explain or message
        self.status = status


@dataclass
class _Fault:
    error_type: str
    status: int
    message: str
    operation: str | None
    remaining: int


def _valid_id(value: str) -> bool:
    return 1 <= len(value) <= _ID_MAX and _ID_PATTERN.fullmatch(value) is not None


def error_result(
    error_type: str,
    message: str,
    *,
    reason: str,
    explain: str | None = None,
    status: int = 400,
    operation: str | None = None,
) -> CallResult:
    """An AWS JSON 1.1 error answer: ``{"__type": <Type>, "message": <message>}``."""
    return CallResult(
        status=status,
        body={"__type": error_type, "message": message},
        operation=operation,
        error_type=error_type,
        reason=reason,
        explain=explain or message,
    )


# The sans-I/O core


class CognitoIdentityService:
    """Identity pools, identities and issued credentials; decides every call (no I/O)."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        store: CredentialStore | None = None,
        pools: Iterable[IdentityPool] = (),
    ) -> None:
        self.region = region
        self.store = store if store is not None else CredentialStore()
        self.pools: dict[str, IdentityPool] = {}
        self.identities: dict[str, Identity] = {}
        self._by_login: dict[tuple[str, str, str], str] = {}
        self._buckets: dict[str, RateLimiter] = {}
        self._faults: deque[_Fault] = deque()
        for pool in pools:
            self.add_pool(pool)

    # Configuration

    def add_pool(self, pool: IdentityPool) -> IdentityPool:
        """Register ``pool``; its id must be in this service's region (pools are regional)."""
        if pool.region != self.region:
            raise ConfigError(
                f"identity pool {pool.pool_id!r} is not in region {self.region!r}; a client "
                "calling the wrong region is simulated by not registering the pool"
            )
        self.pools[pool.pool_id] = pool
        return pool

    def create_pool(
        self,
        *,
        allow_unauthenticated: bool = True,
        credential_lifetime: float = 3600.0,
        policies: tuple[str, ...] = (),
        rate_limit: float | None = None,
        login_providers: Iterable[str] = (),
    ) -> IdentityPool:
        """Register a new pool with a fresh ``<region>:<uuid>`` id."""
        return self.add_pool(
            IdentityPool(
                pool_id=f"{self.region}:{uuid.uuid4()}",
                allow_unauthenticated=allow_unauthenticated,
                credential_lifetime=credential_lifetime,
                policies=policies,
                rate_limit=rate_limit,
                login_providers=frozenset(login_providers),
            )
        )

    def update_pool(self, pool_id: str, /, **changes: Any) -> IdentityPool:
        """Change a registered pool (e.g. ``allow_unauthenticated=False`` mid-scenario)."""
        if pool_id not in self.pools:
            raise ConfigError(f"no identity pool {pool_id!r}")
        if "pool_id" in changes:
            raise ConfigError("a pool's id cannot change; add a new pool instead")
        try:
            updated = replace(self.pools[pool_id], **changes)
        except TypeError as exc:
            raise ConfigError(f"cannot update pool {pool_id}: {exc}") from None
        return self.add_pool(updated)

    def set_rate_limit(self, rate: float | None, *, pool_id: str | None = None) -> None:
        """Requests per second for ``pool_id`` (every registered pool if ``None``)."""
        targets = [pool_id] if pool_id is not None else list(self.pools)
        for target in targets:
            self.update_pool(target, rate_limit=rate)

    def fail_next(
        self,
        n: int = 1,
        error_type: str = "InternalErrorException",
        status: int | None = None,
        *,
        message: str | None = None,
        operation: str | None = None,
    ) -> None:
        """Answer the next ``n`` calls (of ``operation``, or any) with this error.

        ``status`` defaults to 500 for ``InternalErrorException`` (a service fault) and
        400 for anything else (aws-iot.md §6). Faults queue up in order.
        """
        if n < 1:
            raise ConfigError("fail_next needs n >= 1")
        if operation is not None and operation not in OPERATIONS:
            raise ConfigError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        if status is None:
            status = 500 if error_type == "InternalErrorException" else 400
        if message is None:
            message = "An internal error occurred." if status >= 500 else f"{error_type}"
        self._faults.append(_Fault(error_type, status, message, operation, n))

    # Calls

    def call(self, target: str | None, body: bytes, *, now: float, tick: float) -> CallResult:
        """Decide one call: ``target`` is ``X-Amz-Target``, ``body`` the raw request body.

        Never raises for anything a client sends: every outcome is a :class:`CallResult`.
        """
        operation: str | None = None
        try:
            operation = self._operation(target)
            fault = self._take_fault(operation)
            if fault is not None:
                return replace(
                    error_result(
                        fault.error_type,
                        fault.message,
                        reason="injected-fault",
                        explain=f"fail_next: answering {operation} with {fault.error_type}",
                        status=fault.status,
                        operation=operation,
                    ),
                    injected=True,
                )
            params = _decode(body)
            if operation == "GetId":
                return self._get_id(params, tick=tick)
            return self._get_credentials(params, now=now, tick=tick)
        except _Rejected as exc:
            return error_result(
                exc.error_type,
                exc.message,
                reason=exc.reason,
                explain=exc.explain,
                status=exc.status,
                operation=operation,
            )

    def _operation(self, target: str | None) -> str:
        if target is None:
            raise _Rejected(
                "UnknownOperationException",
                "Missing X-Amz-Target header",
                reason="unknown-operation",
            )
        prefix, _, name = target.partition(".")
        if f"{prefix}." != TARGET_PREFIX or name not in OPERATIONS:
            known = f"{prefix}." == TARGET_PREFIX and bool(name)
            raise _Rejected(
                "UnknownOperationException",
                f"Unknown operation {target[:100]!r}",
                reason="unknown-operation",
                explain=(
                    f"X-Amz-Target {target[:100]!r}: "
                    + (
                        "a Cognito operation this fake does not serve"
                        if known
                        else f"expected {TARGET_PREFIX}<Operation> with one of {OPERATIONS}"
                    )
                ),
            )
        return name

    def _take_fault(self, operation: str) -> _Fault | None:
        for fault in self._faults:
            if fault.operation in (None, operation):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _throttle(self, pool: IdentityPool, *, tick: float) -> None:
        if pool.rate_limit is None:
            return
        bucket = self._buckets.get(pool.pool_id)
        if bucket is None or bucket.rate != pool.rate_limit:
            bucket = self._buckets[pool.pool_id] = RateLimiter(
                pool.rate_limit, burst=max(1.0, pool.rate_limit)
            )
        if not bucket.allow(tick):
            raise _Rejected(
                "TooManyRequestsException",
                RATE_EXCEEDED_MESSAGE,
                reason="rate-exceeded",
                explain=f"pool {pool.pool_id} allows {pool.rate_limit:g} requests per second",
            )

    def _check_logins(
        self, pool: IdentityPool, logins: Mapping[str, str], *, identity: str | None
    ) -> None:
        if not logins:
            if not pool.allow_unauthenticated:
                raise _Rejected(
                    "NotAuthorizedException",
                    UNAUTHENTICATED_MESSAGE,
                    reason="unauthenticated-not-allowed",
                    explain=(
                        f"pool {pool.pool_id} has allow_unauthenticated=False and the "
                        f"request{' for ' + identity if identity else ''} carried no Logins"
                    ),
                )
            return
        unsupported = sorted(set(logins) - pool.login_providers)
        if unsupported:
            raise _Rejected(
                "NotAuthorizedException",
                UNSUPPORTED_PROVIDER_MESSAGE,
                reason="unsupported-login-provider",
                explain=(
                    f"Logins from {unsupported!r}; pool {pool.pool_id} accepts "
                    f"{sorted(pool.login_providers)!r}"
                ),
            )

    def _get_id(self, params: Mapping[str, Any], *, tick: float) -> CallResult:
        errors: list[str] = []
        pool_id = _id_member(params, "IdentityPoolId", errors)
        account = _string_member(params, "AccountId")
        if account is not None and not (
            1 <= len(account) <= 15 and _ACCOUNT_PATTERN.fullmatch(account)
        ):
            errors.append(
                f"Value '{account[:20]}' at 'accountId' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: \\d+"
            )
        logins = _logins_member(params, errors)
        _raise_validation(errors)
        assert pool_id is not None
        pool = self._pool(pool_id)
        self._throttle(pool, tick=tick)
        self._check_logins(pool, logins, identity=None)
        existing = self._known_login(pool_id, logins)
        if existing is not None:
            identity = self.identities[existing]
        else:
            identity = Identity(f"{self.region}:{uuid.uuid4()}", pool_id, frozenset(logins))
            self.identities[identity.identity_id] = identity
            for provider, token in logins.items():
                self._by_login[(pool_id, provider, token)] = identity.identity_id
        return CallResult(
            status=200,
            body={"IdentityId": identity.identity_id},
            operation="GetId",
            pool_id=pool_id,
            identity_id=identity.identity_id,
        )

    def _known_login(self, pool_id: str, logins: Mapping[str, str]) -> str | None:
        # The same login maps to the same identity (Cognito links a login to one id).
        for provider, token in logins.items():
            found = self._by_login.get((pool_id, provider, token))
            if found is not None and found in self.identities:
                return found
        return None

    def _pool(self, pool_id: str) -> IdentityPool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise _Rejected(
                "ResourceNotFoundException",
                f"IdentityPool '{pool_id}' not found.",
                reason="pool-not-found",
                explain=(
                    f"no identity pool {pool_id} in region {self.region} (wrong pool id or "
                    f"region; known: {sorted(self.pools)!r})"
                ),
            )
        return pool

    def _get_credentials(self, params: Mapping[str, Any], *, now: float, tick: float) -> CallResult:
        errors: list[str] = []
        identity_id = _id_member(params, "IdentityId", errors)
        logins = _logins_member(params, errors)
        role = _string_member(params, "CustomRoleArn")
        if role is not None and not _ARN_MIN <= len(role) <= _ARN_MAX:
            errors.append(
                f"Value '{role[:40]}' at 'customRoleArn' failed to satisfy constraint: "
                f"Member must have length between {_ARN_MIN} and {_ARN_MAX}"
            )
        _raise_validation(errors)
        assert identity_id is not None
        identity = self.identities.get(identity_id)
        if identity is None:
            raise _Rejected(
                "ResourceNotFoundException",
                f"Identity '{identity_id}' not found.",
                reason="identity-not-found",
                explain=f"GetId never issued {identity_id} here",
            )
        pool = self._pool(identity.pool_id)
        self._throttle(pool, tick=tick)
        self._check_logins(pool, logins, identity=identity_id)
        credential = self.store.mint_temporary(
            now=now,
            lifetime=pool.credential_lifetime,
            principal=identity_id,
            policies=pool.policies,
        )
        assert credential.expires_at is not None
        return CallResult(
            status=200,
            body={
                "IdentityId": identity_id,
                "Credentials": {
                    "AccessKeyId": credential.access_key_id,
                    "SecretKey": credential.secret_access_key,
                    "SessionToken": credential.session_token,
                    "Expiration": credential.expires_at,
                },
            },
            operation="GetCredentialsForIdentity",
            pool_id=pool.pool_id,
            identity_id=identity_id,
            credential=credential,
        )


# Request decoding (AWS JSON 1.1 members)


def _decode(body: bytes) -> Mapping[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Rejected(
            "SerializationException",
            "Request body is not valid JSON",
            reason="malformed-json",
            explain=f"the body could not be decoded as JSON: {exc}",
        ) from None
    if not isinstance(params, dict):
        raise _Rejected(
            "SerializationException",
            "Start of structure or map expected",
            reason="malformed-json",
            explain=f"the body is a JSON {type(params).__name__}, not an object",
        )
    return params


def _camel(member: str) -> str:
    return member[:1].lower() + member[1:]


def _string_member(params: Mapping[str, Any], member: str) -> str | None:
    value = params.get(member)
    if value is None or isinstance(value, str):
        return value
    raise _Rejected(
        "SerializationException",
        f"Expected a string for member '{member}'",
        reason="malformed-json",
        explain=f"{member} is a JSON {type(value).__name__}, the model says string",
    )


def _id_member(params: Mapping[str, Any], member: str, errors: list[str]) -> str | None:
    value = _string_member(params, member)
    at = _camel(member)
    if value is None:
        errors.append(f"Value null at '{at}' failed to satisfy constraint: Member must not be null")
    elif not 1 <= len(value) <= _ID_MAX:
        bound = (
            f"less than or equal to {_ID_MAX}"
            if len(value) > _ID_MAX
            else "greater than or equal to 1"
        )
        errors.append(
            f"Value '{value[:80]}' at '{at}' failed to satisfy constraint: "
            f"Member must have length {bound}"
        )
    elif _ID_PATTERN.fullmatch(value) is None:
        errors.append(
            f"Value '{value}' at '{at}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {_ID_PATTERN_TEXT}"
        )
    return value


def _logins_member(params: Mapping[str, Any], errors: list[str]) -> dict[str, str]:
    logins = params.get("Logins")
    if logins is None:
        return {}
    if not isinstance(logins, dict) or not all(isinstance(v, str) for v in logins.values()):
        raise _Rejected(
            "SerializationException",
            "Expected a map of strings for member 'Logins'",
            reason="malformed-json",
            explain="Logins must be a JSON object of provider name to token string",
        )
    if len(logins) > _LOGINS_MAX:
        errors.append(
            "Value at 'logins' failed to satisfy constraint: "
            f"Member must have length less than or equal to {_LOGINS_MAX}"
        )
    for provider, token in logins.items():
        # Token values are secrets (IdentityProviderToken is "sensitive"): never quoted.
        if not 1 <= len(provider) <= _PROVIDER_MAX:
            errors.append(
                "Value at 'logins' failed to satisfy constraint: Map keys must have length "
                f"between 1 and {_PROVIDER_MAX}"
            )
        if not 1 <= len(token) <= _TOKEN_MAX:
            errors.append(
                "Value at 'logins' failed to satisfy constraint: Map values must have length "
                f"between 1 and {_TOKEN_MAX}"
            )
    return dict(logins)


def _raise_validation(errors: list[str]) -> None:
    if not errors:
        return
    count = len(errors)
    plural = "error" if count == 1 else "errors"
    raise _Rejected(
        "ValidationException",
        f"{count} validation {plural} detected: " + "; ".join(errors),
        reason="validation-failed",
    )


# The HTTPS shell


def _http_response(result: CallResult, *, request_id: str) -> Response:
    headers = [("x-amzn-RequestId", request_id)]
    if result.error_type is not None:
        headers.append(("x-amzn-ErrorType", f"{result.error_type}:"))
        if result.message:
            headers.append(("x-amzn-ErrorMessage", result.message))
    return Response.json(result.body, status=result.status, headers=headers, content_type=JSON_11)


def _framing_error(status: int, reason: str, message: str) -> Response:
    """AWS-shaped answers to requests the HTTP layer refuses (too large, malformed, crash)."""
    if status >= 500:
        result = error_result(
            "InternalErrorException", "An internal error occurred.", reason=reason, status=500
        )
    else:
        result = error_result("SerializationException", message, reason=reason)
    return _http_response(result, request_id=str(uuid.uuid4()))


class FakeCognito(HttpService):
    """The fake Cognito Identity endpoint over HTTPS (or HTTP without ``ssl``) on loopback.

    Shares the world's key store, recorder and clock when given (creates its own
    otherwise). Point a client at ``url`` as its Cognito endpoint.
    """

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        pools: Iterable[IdentityPool] = (),
        # The world
        store: CredentialStore | None = None,
        recorder: Recorder | None = None,
        clock: WorldClock | None = None,
        # Network
        ssl: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        # Limits
        limits: HttpLimits | None = None,
    ) -> None:
        if clock is None:
            clock = recorder.clock if recorder is not None else WorldClock()
        self.clock = clock
        self.recorder = recorder if recorder is not None else Recorder(clock=clock)
        self.service = CognitoIdentityService(region=region, store=store, pools=pools)
        self.http = HttpServer(
            self._handle,
            host=host,
            port=port,
            ssl=ssl,
            name="cognito",
            recorder=self.recorder,
            clock=clock,
            limits=limits if limits is not None else HttpLimits(),
            error_response=_framing_error,
        )

    @property
    def region(self) -> str:
        return self.service.region

    @property
    def store(self) -> CredentialStore:
        return self.service.store

    @property
    def pools(self) -> Mapping[str, IdentityPool]:
        return self.service.pools

    @property
    def identities(self) -> Mapping[str, Identity]:
        return self.service.identities

    # Configuration and faults (see CognitoIdentityService)

    def add_pool(self, pool: IdentityPool) -> IdentityPool:
        return self.service.add_pool(pool)

    def create_pool(
        self,
        *,
        allow_unauthenticated: bool = True,
        credential_lifetime: float = 3600.0,
        policies: tuple[str, ...] = (),
        rate_limit: float | None = None,
        login_providers: Iterable[str] = (),
    ) -> IdentityPool:
        return self.service.create_pool(
            allow_unauthenticated=allow_unauthenticated,
            credential_lifetime=credential_lifetime,
            policies=policies,
            rate_limit=rate_limit,
            login_providers=login_providers,
        )

    def update_pool(self, pool_id: str, /, **changes: Any) -> IdentityPool:
        return self.service.update_pool(pool_id, **changes)

    def set_rate_limit(self, rate: float | None, *, pool_id: str | None = None) -> None:
        self.service.set_rate_limit(rate, pool_id=pool_id)

    def fail_next(
        self,
        n: int = 1,
        error_type: str = "InternalErrorException",
        status: int | None = None,
        *,
        message: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.service.fail_next(n, error_type, status, message=message, operation=operation)

    # Serving

    async def _handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        if request.method != "POST" or request.path != "/":
            result = error_result(
                "UnknownOperationException",
                "Unknown operation",
                reason="unknown-operation",
                explain=f"{request.method} {request.path}: Cognito serves only POST /",
            )
        else:
            self._register_login_secrets(request)
            result = self.service.call(
                request.headers.get("x-amz-target"),
                request.body,
                now=self.clock.now(),
                tick=self.clock.elapsed(),
            )
        self._record(result, request=request, request_id=request_id)
        return _http_response(result, request_id=request_id)

    def _register_login_secrets(self, request: Request) -> None:
        try:
            params = json.loads(request.body)
        except (ValueError, RecursionError):
            return
        logins = params.get("Logins") if isinstance(params, dict) else None
        if isinstance(logins, dict):
            for token in logins.values():
                if isinstance(token, str):
                    self.recorder.add_secret(token)

    def _record(self, result: CallResult, *, request: Request, request_id: str) -> None:
        credential = result.credential
        if credential is not None:
            self.recorder.add_secret(credential.secret_access_key)
            self.recorder.add_secret(credential.session_token)
        if result.injected:
            self.recorder.record(
                "fault.fired",
                conn=request.conn,
                server="cognito",
                fault="cognito-fail-next",
                operation=result.operation,
                error=result.error_type,
                status=result.status,
            )
        fields: dict[str, Any] = {
            "operation": result.operation,
            "ok": result.ok,
            "status": result.status,
            "pool_id": result.pool_id,
            "identity_id": result.identity_id,
            "request_id": request_id,
            "signed": "authorization" in request.headers,
        }
        if not result.ok:
            fields.update(error=result.error_type, reason=result.reason, explain=result.explain)
        if credential is not None:
            fields.update(access_key_id=credential.access_key_id, expiration=credential.expires_at)
        self.recorder.record("cognito.call", conn=request.conn, **fields)
