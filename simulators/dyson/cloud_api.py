"""The fake Dyson cloud REST API (dyson.md §6): login, manifests and AWS IoT credentials.

Two layers (DESIGN.md "Sans-I/O core"), like :mod:`harness.cognito`:

* :class:`DysonCloudService` decides. It takes a parsed :class:`~harness.httpserver.Request`
  (plain data), ``now`` (world epoch seconds, for expiries) and ``tick`` (monotonic
  seconds, for rate limits) and returns an :class:`ApiResult`; no sockets, no clocks.
* :class:`FakeDysonCloud` serves it over HTTPS on loopback with
  :class:`~harness.httpserver.HttpServer` and records one ``dyson.api.call`` event per call.
  Its certificate should cover ``appapi.cp.dyson.com`` and ``appapi.cp.dyson.cn`` as well
  as ``127.0.0.1`` (``WorldPKI.server_context``), so unmodified clients work where those
  names resolve to it (a resolver override, or the sandbox).

What it serves (dyson.md §6, libdyson-rest ``client.py`` and ``docs/mydyson_openapi.yaml``,
libdyson-neon ``libdyson/cloud/account.py``):

* ``provision``: ``GET /v1/provisioningservice/application/Android/version`` (or
  ``/ios/version``) → a JSON string such as ``"5.0.21061"``;
* ``email-userstatus``, ``email-auth``, ``email-verify``: ``POST
  /v3/userregistration/email/{userstatus,auth,verify}``; ``mobile-*`` the same under
  ``/mobile/`` with ``{"mobile": "+86..."}`` (China, no password on verify);
* ``legacy-authenticate``: ``POST /v1/userregistration/authenticate``, always 401;
* with ``Authorization: Bearer <token>``: ``manifest-v3`` (``GET /v3/manifest``),
  ``manifest-v2`` (``GET /v2/provisioningservice/manifest``, libdyson-neon),
  ``iot-credentials`` (``POST /v2/authorize/iot-credentials``), ``pending-release`` /
  ``trigger-update`` (``GET`` / ``POST /v1/assets/devices/{serial}/pendingrelease``),
  ``connection-status`` (``GET /v1/messageprocessor/devices/{serial}/connectionstatus``).

The login is the email + OTP flow: ``userstatus`` → ``{"accountStatus": "ACTIVE",
"authenticationMethod": "EMAIL_PWD_2FA"}`` (``UNREGISTERED`` for an unknown email); ``auth``
→ ``{"challengeId": <uuid>}`` (429 when OTPs are requested too often, libdyson
``DysonOTPTooFrequently``); ``verify`` with ``challengeId``, ``email``, ``otpCode``,
``password`` → ``{"account": <uuid>, "token": "<64 hex>-1", "tokenType": "Bearer"}``, 400 for
bad parameters, 401 for a wrong password or OTP. The OTP is the account's fixed ``otp``
(the fake sends no mail); the ``country`` / ``culture`` query parameters are recorded, not
required (libdyson-neon's verify sends none). The legacy password login is answered 401,
as since OTP arrived in 2021 (field-bugs.md FB-16).

Manifests list the account's :class:`CloudDevice` records: v3 in camelCase with
``connectedConfiguration.mqtt.localBrokerCredentials`` encrypted as
:mod:`simulators.dyson.credentials` describes (dyson.md §1.2), v2 in PascalCase with
``LocalCredentials``. ``POST /v2/authorize/iot-credentials`` ``{"Serial": ...}`` returns
``{"IoTCredentials": {...}, "Endpoint": <the world's IoT endpoint>}`` with ``TokenSignature``
made by the custom authorizer's private key (aws-iot.md §2.5); every issued token is kept
with its expiry so the world's authorizer Lambda can ask :meth:`DysonCloudService.token_valid`.

Switches (:class:`DysonCloudSettings`; the field bugs they reproduce in field-bugs.md):

* ``require_version_call``: 401 for callers (by address) that skipped the version call
  (dyson.md §6; FB-17);
* ``otp_interval_s``: a second ``auth`` for the same account within it gets 429 (FB-16);
* ``bearer_ttl_s``: Bearer tokens expire → 401 (real lifetime **(unknown)**);
* ``regional_tokens`` (on): a Bearer token works only on the regional host that issued it
  (``*.cn`` vs the rest), else 403 (dyson.md §6 **(inferred)**; FB-05);
* ``client_id_per_call`` (on) / ``token_ttl_s``: IoT credential rotation and lifetime
  (dyson.md §6 options of the same names; FB-22, FB-32);
* ``iot_rate`` and ``rate_limit``: 429 above a rate (dyson.md §8: 429 seen on
  iot-credentials; thoukydides falls back to cached credentials);
* per device (:class:`CloudDevice`): null ``localBrokerCredentials`` (``local_password``
  None), a missing ``connectionCategory``, null ``connectedConfiguration``, trailing data
  after the credential JSON (FB-04), and any string for the enums, e.g.
  ``remote_broker_type="mqtts"`` (FB-09);
* :meth:`DysonCloudService.fail_next`: the next calls answer a status of your choice
  (5xx outages, FB-19; 429; 401).

Error bodies of the real API are **(unknown)**; the fake answers ``{"Message": <text>}``
(the ASP.NET shape its PascalCase v1/v2 members suggest, **(inferred)**) and says why in
the event. Unknown paths get 404, known paths with the wrong method 405, a JSON body with a
non-JSON ``Content-Type`` 415 (the openapi lists 415), bad bodies 400: a client's bytes
never cause a 500.

Secrets (passwords, OTPs, Bearer tokens, ``apPasswordHash`` and its encrypted form, token
signatures) never reach an event: :class:`FakeDysonCloud` registers each with
:meth:`~harness.events.Recorder.add_secret`. ``TokenValue`` is the exception by design:
it *is* the MQTT ``ClientId`` (dyson.md §6), which the gateway's events must show to explain
a ``DUPLICATE_CLIENTID`` eviction, and without its signature it grants nothing (signing is
enabled on the authorizer); it is still never put into this module's events.
"""

from __future__ import annotations

import datetime
import hmac
import json
import re
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.auth import custom
from harness.clock import WorldClock
from harness.errors import ConfigError
from harness.events import Recorder
from harness.httpserver import HttpLimits, HttpServer, HttpService, Request, Response
from harness.mqtt.rules import RateLimiter
from harness.pki import TokenSigningKey
from simulators.dyson.credentials import (
    DYSON_AUTHORIZER_NAME,
    DYSON_TOKEN_KEY,
    IssuedIotToken,
    TokenSigner,
    as_signer,
    encrypt_local_credentials,
    issue_iot_credentials,
    new_bearer_token,
)

__all__ = [
    "APP_VERSION",
    "DYSON_API_HOSTS",
    "OPERATIONS",
    "ApiResult",
    "CloudDevice",
    "DysonAccount",
    "DysonCloudService",
    "DysonCloudSettings",
    "FakeDysonCloud",
    "region_of_host",
]

#: The real API's host names (dyson.md §6): world, China.
DYSON_API_HOSTS = ("appapi.cp.dyson.com", "appapi.cp.dyson.cn")
#: What the version call returns (dyson.md §6).
APP_VERSION = "5.0.21061"

_JSON = "application/json; charset=utf-8"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# Configuration


@dataclass(frozen=True, kw_only=True)
class CloudDevice:
    """One device as the account's manifest lists it (dyson.md §6 "Manifest v3").

    A plain record, so the world can build it from whatever the device profiles say.
    ``None`` in an optional wire field means: send ``null`` (or, for
    ``connection_category``, leave the key out), which is what field-bugs.md FB-04 needs.
    The enum fields take any string: unknown values (``remote_broker_type="mqtts"``,
    FB-09) are served as given.
    """

    serial: str
    #: ``type``: the bare product type, e.g. ``"438"``.
    product_type: str
    #: ``variant``, e.g. ``"M"`` for a TP11; ``None`` is sent as ``null``.
    variant: str | None = None
    #: ``name``; default ``"Dyson <root>"``.
    name: str | None = None
    model: str | None = None
    product_name: str | None = None
    #: ``mqttRootTopicLevel``; default ``product_type + variant`` (dyson.md §2 root rule).
    root_topic: str | None = None
    #: The local MQTT password (``apPasswordHash``); ``None`` → null ``localBrokerCredentials``.
    local_password: str | None = field(default=None, repr=False)
    #: Appended after the credential JSON before encryption (dyson.md §1.2; FB-04).
    credentials_trailing_data: str | None = None
    # Enums (any string is served)
    category: str = "ec"
    #: ``None`` leaves ``connectionCategory`` out (hass-dyson #217; FB-04).
    connection_category: str | None = "lecAndWifi"
    remote_broker_type: str = "wss"
    #: ``False`` → ``connectedConfiguration: null`` (dyson.md §6 "Nullable").
    connected: bool = True
    # Firmware
    #: Default ``"<root>PF.00.01.003.0011"``: libdyson-neon reads the variant from its prefix.
    firmware_version: str | None = None
    auto_update: bool = False
    new_version_available: bool = False
    capabilities: tuple[str, ...] = ("Scheduling", "EnvironmentalData", "ExtendedAQ", "ChangeWifi")
    minimum_app_version: str | None = None
    #: v2 ``Active``.
    active: bool | None = True

    def __post_init__(self) -> None:
        for name in ("serial", "product_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "/" in value:
                raise ConfigError(f"CloudDevice.{name} must be a non-empty string without '/'")
        if isinstance(self.capabilities, str):
            raise ConfigError("capabilities is a tuple of names, not one string")
        object.__setattr__(self, "capabilities", tuple(self.capabilities))

    @property
    def root(self) -> str:
        """``mqttRootTopicLevel`` as served (dyson.md §2: not always the product type)."""
        if self.root_topic is not None:
            return self.root_topic
        return self.product_type + (self.variant or "")

    @property
    def firmware(self) -> str:
        if self.firmware_version is not None:
            return self.firmware_version
        return f"{self.root}PF.00.01.003.0011"

    @property
    def display_name(self) -> str:
        return self.name if self.name is not None else f"Dyson {self.root}"

    def local_credentials(self) -> str | None:
        """``localBrokerCredentials`` / ``LocalCredentials``, or ``None`` (dyson.md §1.2)."""
        if self.local_password is None:
            return None
        return encrypt_local_credentials(
            self.serial, self.local_password, trailing=self.credentials_trailing_data or ""
        )

    def manifest_v3(self) -> dict[str, Any]:
        """The ``GET /v3/manifest`` entry, members in the real order (dyson.md §6)."""
        entry: dict[str, Any] = {
            "serialNumber": self.serial,
            "name": self.display_name,
            "type": self.product_type,
            "variant": self.variant,
            "model": self.model,
            "category": self.category,
        }
        if self.connection_category is not None:
            entry["connectionCategory"] = self.connection_category
        entry["productName"] = self.product_name
        if not self.connected:
            entry["connectedConfiguration"] = None
            return entry
        entry["connectedConfiguration"] = {
            "mqtt": {
                "remoteBrokerType": self.remote_broker_type,
                "localBrokerCredentials": self.local_credentials(),
                "mqttRootTopicLevel": self.root,
            },
            "firmware": {
                "version": self.firmware,
                "autoUpdateEnabled": self.auto_update,
                "newVersionAvailable": self.new_version_available,
                "capabilities": list(self.capabilities),
                "minimumAppVersion": self.minimum_app_version,
            },
        }
        return entry

    def manifest_v2(self) -> dict[str, Any]:
        """The legacy ``GET /v2/provisioningservice/manifest`` entry (dyson.md §6 "Legacy")."""
        return {
            "Serial": self.serial,
            "Name": self.display_name,
            "Version": self.firmware,
            "LocalCredentials": self.local_credentials(),
            "AutoUpdate": self.auto_update,
            "NewVersionAvailable": self.new_version_available,
            "ProductType": self.product_type,
            "ConnectionType": self.remote_broker_type,
            "Active": self.active,
        }


@dataclass(frozen=True, kw_only=True)
class DysonAccount:
    """A MyDyson account: its login and its devices (dyson.md §6 "Email OTP login").

    ``otp`` is the code every challenge of this account accepts (the fake mails nothing);
    ``mobile`` (``+86...``) enables the China mobile login. ``status`` and
    ``authentication_method`` are what ``userstatus`` answers; any string is served.
    """

    email: str = "owner@example.com"
    password: str = field(default="harness-password", repr=False)
    otp: str = field(default="123456", repr=False)
    mobile: str | None = None
    account_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "ACTIVE"
    authentication_method: str = "EMAIL_PWD_2FA"
    devices: tuple[CloudDevice, ...] = ()

    def __post_init__(self) -> None:
        if not self.email or "@" not in self.email:
            raise ConfigError(f"account email {self.email!r} is not an email address")
        if not self.password or not self.otp:
            raise ConfigError("an account needs a non-empty password and otp")
        if _UUID.fullmatch(self.account_id) is None:
            raise ConfigError("account_id must be a UUID (libdyson-rest parses it as one)")
        object.__setattr__(self, "devices", tuple(self.devices))
        serials = [d.serial for d in self.devices]
        if len(set(serials)) != len(serials):
            raise ConfigError(f"account {self.email}: duplicate device serials {serials}")


@dataclass(frozen=True, kw_only=True)
class DysonCloudSettings:
    """Behaviour switches of the fake cloud; ``None`` means off / unlimited / forever.

    Times are world seconds and may be fractions (DESIGN.md: time is compressed by
    configuration). Defaults are the friendly behaviour; scenarios switch field bugs on.
    """

    # Login (dyson.md §6)
    app_version: str = APP_VERSION
    #: 401 for every call from an address that has not made the version call (FB-17).
    require_version_call: bool = False
    #: How long one version call unlocks an address ("recently", **(unknown)**).
    version_call_ttl_s: float | None = None
    #: How long an OTP challenge can be verified (**(unknown)**).
    otp_ttl_s: float | None = 600.0
    #: A second OTP request for one account within this gets 429 (FB-16).
    otp_interval_s: float | None = None
    #: Bearer token lifetime (**(unknown)**; clients keep tokens forever).
    bearer_ttl_s: float | None = None
    #: Bearer tokens work only on the regional host that issued them, else 403 (FB-05).
    regional_tokens: bool = True
    # IoT credentials (dyson.md §6)
    #: A new ClientId / TokenValue per call; else one per account and device.
    client_id_per_call: bool = True
    #: How long an issued IoT token is valid (``token_valid``).
    token_ttl_s: float | None = None
    #: iot-credentials calls per second per account (burst ``max(1, rate)``), then 429.
    iot_rate: float | None = None
    # Limits
    #: Requests per second per client address (burst ``max(1, rate)``), then 429.
    rate_limit: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "version_call_ttl_s",
            "otp_ttl_s",
            "otp_interval_s",
            "bearer_ttl_s",
            "token_ttl_s",
            "iot_rate",
            "rate_limit",
        ):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"DysonCloudSettings.{name} must be > 0 or None, got {value!r}")


# Operations

#: Operation name → (method, path pattern). Paths are matched whole, case-sensitively.
OPERATIONS: Mapping[str, tuple[str, re.Pattern[str]]] = {
    "provision": (
        "GET",
        re.compile(r"/v1/provisioningservice/application/(?:Android|android|ios|iOS|IOS)/version"),
    ),
    "email-userstatus": ("POST", re.compile(r"/v3/userregistration/email/userstatus")),
    "email-auth": ("POST", re.compile(r"/v3/userregistration/email/auth")),
    "email-verify": ("POST", re.compile(r"/v3/userregistration/email/verify")),
    "mobile-userstatus": ("POST", re.compile(r"/v3/userregistration/mobile/userstatus")),
    "mobile-auth": ("POST", re.compile(r"/v3/userregistration/mobile/auth")),
    "mobile-verify": ("POST", re.compile(r"/v3/userregistration/mobile/verify")),
    "legacy-authenticate": ("POST", re.compile(r"/v1/userregistration/authenticate")),
    "manifest-v3": ("GET", re.compile(r"/v3/manifest")),
    "manifest-v2": ("GET", re.compile(r"/v2/provisioningservice/manifest")),
    "iot-credentials": ("POST", re.compile(r"/v2/authorize/iot-credentials")),
    "pending-release": ("GET", re.compile(r"/v1/assets/devices/(?P<serial>[^/]+)/pendingrelease")),
    "trigger-update": ("POST", re.compile(r"/v1/assets/devices/(?P<serial>[^/]+)/pendingrelease")),
    "connection-status": (
        "GET",
        re.compile(r"/v1/messageprocessor/devices/(?P<serial>[^/]+)/connectionstatus"),
    ),
}

_BEARER_OPERATIONS = frozenset(
    {
        "manifest-v3",
        "manifest-v2",
        "iot-credentials",
        "pending-release",
        "trigger-update",
        "connection-status",
    }
)
_JSON_BODY_OPERATIONS = frozenset(
    {
        "email-userstatus",
        "email-auth",
        "email-verify",
        "mobile-userstatus",
        "mobile-auth",
        "mobile-verify",
        "legacy-authenticate",
        "iot-credentials",
    }
)


def region_of_host(host: str | None) -> str:
    """``"cn"`` for ``appapi.cp.dyson.cn`` (any ``*.cn`` host), else ``"global"``.

    The ``Host`` header names the regional API a client called (dyson.md §6 "Hosts");
    loopback addresses count as the world host.
    """
    if not host:
        return "global"
    name = host.strip().lower()
    if name.startswith("["):
        return "global"
    head, sep, tail = name.rpartition(":")
    if sep and tail.isdigit():
        name = head
    return "cn" if name.rstrip(".").endswith(".cn") else "global"


# Results


@dataclass(frozen=True)
class ApiResult:
    """What one call decided: status and JSON body, and what the timeline needs."""

    status: int
    #: The JSON body; ``None`` with no body (204).
    body: Any
    operation: str | None = None
    #: Stable kebab-case code of a refusal; ``None`` on success.
    reason: str | None = None
    #: Plain words for the timeline (never a secret).
    explain: str | None = None
    account_id: str | None = None
    serial: str | None = None
    #: Values the shell must register as secrets before recording (tokens, signatures).
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: The IoT token issued by this call.
    iot_token: IssuedIotToken | None = None
    #: True when :meth:`DysonCloudService.fail_next` produced this answer.
    injected: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def response(self) -> Response:
        """The HTTP response to send."""
        if self.body is None:
            return Response(self.status, self.headers)
        body = json.dumps(self.body, separators=(",", ":")).encode()
        return Response(self.status, (("Content-Type", _JSON), *self.headers), body)


class _Reject(Exception):
    """A refusal raised inside the core and turned into an :class:`ApiResult`."""

    def __init__(
        self,
        status: int,
        reason: str,
        explain: str,
        *,
        message: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(explain)
        self.status = status
        self.reason = reason
        self.explain = explain
        self.message = message
        self.headers = headers


_MESSAGES = {
    400: "The request is invalid.",
    401: "Authorization has been denied for this request.",
    403: "Forbidden",
    404: "Not Found",
    405: "The requested resource does not support this http method.",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
}


def _error_body(status: int, message: str | None = None) -> dict[str, str]:
    if message is None:
        message = _MESSAGES.get(status, "An error has occurred.")
    return {"Message": message}


def _reject_result(exc: _Reject, operation: str | None) -> ApiResult:
    return ApiResult(
        status=exc.status,
        body=_error_body(exc.status, exc.message),
        operation=operation,
        reason=exc.reason,
        explain=exc.explain,
        headers=exc.headers,
    )


@dataclass
class _Fault:
    status: int
    body: Any
    operation: str | None
    remaining: int


@dataclass(frozen=True)
class _Session:
    account_id: str
    region: str
    expires_at: float | None


@dataclass
class _Challenge:
    account_key: str
    kind: str
    issued_at: float
    used: bool = False


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _peer_address(peer: str) -> str:
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def _email_key(email: str) -> str:
    return "email:" + email.strip().casefold()


def _mobile_key(mobile: str) -> str:
    return "mobile:" + "".join(mobile.split())


# The sans-I/O core


class DysonCloudService:
    """Accounts, devices, sessions and issued IoT tokens; decides every call (no I/O).

    ``signer`` signs IoT tokens: the custom authorizer's :class:`~harness.pki.TokenSigningKey`
    (registered in the gateway with ``authorizer_name`` and ``token_key``) or any callable
    token → base64 signature. ``endpoint`` is the ``Endpoint`` returned with IoT credentials:
    the world's data endpoint.
    """

    def __init__(
        self,
        *,
        signer: TokenSigningKey | TokenSigner,
        endpoint: str,
        accounts: Iterable[DysonAccount] = (),
        # The custom authorizer the tokens are for (aws-iot.md §2.5)
        authorizer_name: str = DYSON_AUTHORIZER_NAME,
        token_key: str = DYSON_TOKEN_KEY,
        # Behaviour
        settings: DysonCloudSettings | None = None,
    ) -> None:
        if not endpoint:
            raise ConfigError("endpoint must name the IoT data endpoint")
        if not authorizer_name or not token_key:
            raise ConfigError("authorizer_name and token_key must be non-empty")
        self.signer = as_signer(signer)
        self.public_key_pem = signer.public_key_pem if isinstance(signer, TokenSigningKey) else None
        self.endpoint = endpoint
        self.authorizer_name = authorizer_name
        self.token_key = token_key
        self.settings = settings if settings is not None else DysonCloudSettings()
        self._accounts: dict[str, DysonAccount] = {}
        self._sessions: dict[str, _Session] = {}
        self._challenges: dict[str, _Challenge] = {}
        self._iot_tokens: dict[str, IssuedIotToken] = {}
        self._stable_client_ids: dict[tuple[str, str], str] = {}
        self._version_calls: dict[str, float] = {}
        self._last_otp: dict[str, float] = {}
        self._peer_buckets: dict[str, RateLimiter] = {}
        self._iot_buckets: dict[str, RateLimiter] = {}
        self._connection_status: dict[str, tuple[str, float | None]] = {}
        self._faults: deque[_Fault] = deque()
        for account in accounts:
            self.add_account(account)

    # Configuration

    @property
    def accounts(self) -> Mapping[str, DysonAccount]:
        """Accounts by ``account_id``."""
        return dict(self._accounts)

    def add_account(self, account: DysonAccount) -> DysonAccount:
        """Register ``account``; emails and device serials must be unique across accounts."""
        for other in self._accounts.values():
            if other.account_id == account.account_id:
                continue
            if _email_key(other.email) == _email_key(account.email):
                raise ConfigError(f"an account with email {account.email} exists")
            if account.mobile and other.mobile and other.mobile == account.mobile:
                raise ConfigError(f"an account with mobile {account.mobile} exists")
            clash = {d.serial for d in other.devices} & {d.serial for d in account.devices}
            if clash:
                raise ConfigError(f"serials {sorted(clash)} belong to another account")
        self._accounts[account.account_id] = account
        return account

    def account(self, email: str) -> DysonAccount | None:
        """The account with this email (case-insensitive), if any."""
        key = _email_key(email)
        for account in self._accounts.values():
            if _email_key(account.email) == key:
                return account
        return None

    def devices(self) -> Iterator[CloudDevice]:
        """Every device of every account."""
        for account in self._accounts.values():
            yield from account.devices

    def device(self, serial: str) -> CloudDevice:
        found = self._owner(serial)
        if found is None:
            raise ConfigError(f"no device {serial!r}")
        return found[1]

    def add_device(self, device: CloudDevice, *, account_id: str | None = None) -> CloudDevice:
        """Add ``device`` to an account (the only one when ``account_id`` is None)."""
        account = self._pick_account(account_id)
        if self._owner(device.serial) is not None:
            raise ConfigError(f"device {device.serial} is already registered")
        self.add_account(replace(account, devices=(*account.devices, device)))
        return device

    def update_device(self, serial: str, /, **changes: Any) -> CloudDevice:
        """Change a device's record (e.g. ``remote_broker_type="mqtts"`` mid-scenario)."""
        found = self._owner(serial)
        if found is None:
            raise ConfigError(f"no device {serial!r}")
        account, device = found
        try:
            updated = replace(device, **changes)
        except TypeError as exc:
            raise ConfigError(f"cannot update device {serial}: {exc}") from None
        if updated.serial != serial and self._owner(updated.serial) is not None:
            raise ConfigError(f"device {updated.serial} is already registered")
        devices = tuple(updated if d.serial == serial else d for d in account.devices)
        self._accounts[account.account_id] = replace(account, devices=devices)
        return updated

    def remove_device(self, serial: str) -> None:
        found = self._owner(serial)
        if found is None:
            raise ConfigError(f"no device {serial!r}")
        account = found[0]
        devices = tuple(d for d in account.devices if d.serial != serial)
        self._accounts[account.account_id] = replace(account, devices=devices)

    def update_settings(self, **changes: Any) -> DysonCloudSettings:
        """Switch behaviours mid-scenario: ``update_settings(token_ttl_s=0.5)``."""
        try:
            self.settings = replace(self.settings, **changes)
        except TypeError as exc:
            raise ConfigError(f"cannot update settings: {exc}") from None
        if self.settings.rate_limit is None:
            self._peer_buckets.clear()
        if self.settings.iot_rate is None:
            self._iot_buckets.clear()
        return self.settings

    def set_connection_status(self, serial: str, status: str, *, now: float) -> None:
        """What ``connectionstatus`` reports for ``serial`` (default ``connected``)."""
        self._connection_status[serial] = (status, now)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        operation: str | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``n`` calls (of ``operation``, or any) with ``status``.

        ``body`` is the JSON to send (default ``{"Message": ...}``). Faults queue up in
        order and come before every other check, as an outage does (FB-19).
        """
        if n < 1:
            raise ConfigError("fail_next needs n >= 1")
        if not 100 <= status <= 599:
            raise ConfigError(f"status must be an HTTP status code, got {status}")
        if operation is not None and operation not in OPERATIONS:
            raise ConfigError(f"unknown operation {operation!r}; one of {sorted(OPERATIONS)}")
        self._faults.append(
            _Fault(status, body if body is not None else _error_body(status), operation, n)
        )

    def static_secrets(self) -> Iterator[str]:
        """Configured secrets the shell scrubs from events: passwords, OTPs, local keys."""
        for account in self._accounts.values():
            yield account.password
            yield account.otp
            for device in account.devices:
                if device.local_password is not None:
                    yield device.local_password
                    credentials = device.local_credentials()
                    if credentials is not None:
                        yield credentials

    # Tokens, for the world's authorizer Lambda

    def iot_token(self, token: str) -> IssuedIotToken | None:
        """The record of an issued IoT ``TokenValue``, if this cloud issued it."""
        return self._iot_tokens.get(token)

    @property
    def issued_iot_tokens(self) -> Mapping[str, IssuedIotToken]:
        return dict(self._iot_tokens)

    def token_valid(self, token: str | None, now: float) -> bool:
        """True when this cloud issued ``token`` and it is neither revoked nor expired."""
        if token is None:
            return False
        issued = self._iot_tokens.get(token)
        return issued is not None and issued.valid_at(now)

    def revoke_iot_tokens(self, *, serial: str | None = None) -> int:
        """Revoke every issued IoT token (of ``serial``); returns how many."""
        count = 0
        for token, issued in list(self._iot_tokens.items()):
            if (serial is None or issued.serial == serial) and not issued.revoked:
                self._iot_tokens[token] = replace(issued, revoked=True)
                count += 1
        return count

    def revoke_bearer_tokens(self) -> int:
        """Log every client out: later Bearer calls get 401."""
        count = len(self._sessions)
        self._sessions.clear()
        return count

    # Calls

    def handle(self, request: Request, *, now: float, tick: float) -> ApiResult:
        """Decide one call. Never raises for anything a client sends."""
        operation, params = _route(request.method, request.path)
        fault = self._take_fault(operation)
        if fault is not None:
            return ApiResult(
                status=fault.status,
                body=fault.body,
                operation=operation,
                reason="injected-fault",
                explain=f"fail_next: answering {request.method} {request.path} with {fault.status}",
                injected=True,
            )
        try:
            if operation is None:
                raise _route_error(request.method, request.path)
            self._throttle_peer(request, tick=tick)
            if operation != "provision":
                self._check_version_call(request, tick=tick)
            return self._dispatch(operation, params, request, now=now, tick=tick)
        except _Reject as exc:
            return _reject_result(exc, operation)

    def _dispatch(
        self,
        operation: str,
        params: Mapping[str, str],
        request: Request,
        *,
        now: float,
        tick: float,
    ) -> ApiResult:
        if operation == "provision":
            self._version_calls[_peer_address(request.peer)] = tick
            return ApiResult(200, self.settings.app_version, operation)
        body: dict[str, Any] = {}
        if operation in _JSON_BODY_OPERATIONS:
            body = _json_object(request)
        if operation == "legacy-authenticate":
            raise _Reject(
                401,
                "legacy-login-retired",
                "POST /v1/userregistration/authenticate has refused every login since the "
                "email OTP login arrived in 2021 (field-bugs.md FB-16): use "
                "/v3/userregistration/email/{userstatus,auth,verify}",
            )
        if operation in ("email-userstatus", "mobile-userstatus"):
            return self._user_status(operation, body)
        if operation in ("email-auth", "mobile-auth"):
            return self._begin_login(operation, body, now=now, tick=tick)
        if operation in ("email-verify", "mobile-verify"):
            return self._verify(operation, body, request, now=now)
        account = self._bearer(request, now=now)
        account_id = account.account_id
        if operation == "manifest-v3":
            manifest = [d.manifest_v3() for d in account.devices]
            return ApiResult(200, manifest, operation, account_id=account_id)
        if operation == "manifest-v2":
            manifest = [d.manifest_v2() for d in account.devices]
            return ApiResult(200, manifest, operation, account_id=account_id)
        if operation == "iot-credentials":
            return self._iot_credentials(account, body, now=now, tick=tick)
        serial = params["serial"]
        device = _device_of(account, serial)
        if operation == "pending-release":
            release = {"version": device.firmware, "pushed": False}
            return ApiResult(200, release, operation, account_id=account_id, serial=serial)
        if operation == "trigger-update":
            return ApiResult(204, None, operation, account_id=account_id, serial=serial)
        status, changed = self._connection_status.get(serial, ("connected", None))
        connection = {
            "Status": status,
            "LastChanged": _iso(changed if changed is not None else now),
            "BrokerHostName": None,
            "BrokerPort": 0,
        }
        return ApiResult(200, connection, operation, account_id=account_id, serial=serial)

    # Checks before the operation

    def _take_fault(self, operation: str | None) -> _Fault | None:
        for fault in self._faults:
            if fault.operation is None or fault.operation == operation:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _throttle_peer(self, request: Request, *, tick: float) -> None:
        rate = self.settings.rate_limit
        if rate is None:
            return
        address = _peer_address(request.peer)
        bucket = self._peer_buckets.get(address)
        if bucket is None or bucket.rate != rate:
            bucket = self._peer_buckets[address] = RateLimiter(rate, burst=max(1.0, rate))
        if not bucket.allow(tick):
            raise _Reject(
                429,
                "rate-limited",
                f"more than {rate:g} requests per second from {address} (rate_limit)",
            )

    def _check_version_call(self, request: Request, *, tick: float) -> None:
        if not self.settings.require_version_call:
            return
        address = _peer_address(request.peer)
        last = self._version_calls.get(address)
        ttl = self.settings.version_call_ttl_s
        if last is None or (ttl is not None and tick - last >= ttl):
            raise _Reject(
                401,
                "version-call-missing",
                f"{address} has not called GET /v1/provisioningservice/application/Android/"
                "version recently; the API ignores such callers (dyson.md §6, FB-17)",
            )

    # Login

    def _find(self, operation: str, body: Mapping[str, Any]) -> tuple[str, DysonAccount | None]:
        """The account key and the account named by an email or mobile body."""
        if operation.startswith("email-"):
            email = _string(body, "email")
            return _email_key(email), self.account(email)
        mobile = _string(body, "mobile")
        key = _mobile_key(mobile)
        for account in self._accounts.values():
            if account.mobile is not None and _mobile_key(account.mobile) == key:
                return key, account
        return key, None

    def _user_status(self, operation: str, body: Mapping[str, Any]) -> ApiResult:
        _, account = self._find(operation, body)
        if account is None:
            return ApiResult(
                200,
                {"accountStatus": "UNREGISTERED", "authenticationMethod": "EMAIL_PWD_2FA"},
                operation,
                explain="no account with this login: UNREGISTERED",
            )
        return ApiResult(
            200,
            {
                "accountStatus": account.status,
                "authenticationMethod": account.authentication_method,
            },
            operation,
            account_id=account.account_id,
        )

    def _begin_login(
        self, operation: str, body: Mapping[str, Any], *, now: float, tick: float
    ) -> ApiResult:
        key, account = self._find(operation, body)
        interval = self.settings.otp_interval_s
        last = self._last_otp.get(key)
        if interval is not None and last is not None and tick - last < interval:
            raise _Reject(
                429,
                "otp-too-frequent",
                f"an OTP was requested {tick - last:.3f}s ago; at most one per {interval:g}s "
                "(otp_interval_s; libdyson DysonOTPTooFrequently)",
            )
        self._last_otp[key] = tick
        challenge_id = str(uuid.uuid4())
        self._challenges[challenge_id] = _Challenge(key, operation.split("-")[0], now)
        # An unknown login still gets a challenge (the verify fails): no account probing.
        return ApiResult(
            200,
            {"challengeId": challenge_id},
            operation,
            account_id=account.account_id if account is not None else None,
            explain=None if account is not None else "no account with this login",
        )

    def _verify(
        self, operation: str, body: Mapping[str, Any], request: Request, *, now: float
    ) -> ApiResult:
        challenge_id = _string(body, "challengeId")
        key, account = self._find(operation, body)
        otp = _string(body, "otpCode")
        is_email = operation.startswith("email-")
        password = _string(body, "password") if is_email else _optional_string(body, "password")
        if _UUID.fullmatch(challenge_id) is None:
            raise _Reject(400, "bad-challenge-id", "challengeId is not a UUID")
        challenge = self._challenges.get(challenge_id.lower())
        if challenge is None or challenge.account_key != key:
            raise _Reject(
                401,
                "unknown-challenge",
                "no challenge with this id was issued for this login (call auth first)",
            )
        ttl = self.settings.otp_ttl_s
        if ttl is not None and now - challenge.issued_at >= ttl:
            raise _Reject(
                401, "challenge-expired", f"the challenge is older than {ttl:g}s (otp_ttl_s)"
            )
        if challenge.used:
            raise _Reject(401, "challenge-used", "this challenge already completed a login")
        if account is None:
            raise _Reject(401, "unknown-account", "no account with this login")
        if not _same(otp, account.otp):
            raise _Reject(401, "wrong-otp", "the OTP code is not the one sent for this login")
        if password is not None and not _same(password, account.password):
            raise _Reject(401, "wrong-password", "the password does not match the account")
        if account.status != "ACTIVE":
            raise _Reject(401, "account-inactive", f"the account is {account.status}")
        challenge.used = True
        token = new_bearer_token()
        ttl = self.settings.bearer_ttl_s
        region = region_of_host(request.headers.get("host"))
        self._sessions[token] = _Session(
            account.account_id, region, now + ttl if ttl is not None else None
        )
        return ApiResult(
            200,
            {"account": account.account_id, "token": token, "tokenType": "Bearer"},
            operation,
            account_id=account.account_id,
            secrets=(token,),
            explain=f"logged in on the {region} host",
        )

    def _bearer(self, request: Request, *, now: float) -> DysonAccount:
        header = request.headers.get("authorization")
        if header is None:
            raise _Reject(401, "missing-bearer", "no Authorization header: log in first")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "basic":
            raise _Reject(
                401,
                "legacy-basic-auth",
                "HTTP Basic credentials of the retired password login (FB-16): use the "
                "Bearer token of the OTP login",
            )
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Reject(401, "malformed-authorization", "Authorization is not 'Bearer <token>'")
        session = self._sessions.get(token)
        if session is None or session.account_id not in self._accounts:
            raise _Reject(401, "unknown-token", "the Bearer token was not issued by this cloud")
        if session.expires_at is not None and now >= session.expires_at:
            raise _Reject(
                401, "token-expired", f"the Bearer token expired at {_iso(session.expires_at)}"
            )
        region = region_of_host(request.headers.get("host"))
        if self.settings.regional_tokens and region != session.region:
            raise _Reject(
                403,
                "wrong-region",
                f"a Bearer token issued by the {session.region} API host was used on the "
                f"{region} host; keep authentication and calls on one host (dyson.md §6, FB-05)",
            )
        return self._accounts[session.account_id]

    # IoT credentials

    def _iot_credentials(
        self, account: DysonAccount, body: Mapping[str, Any], *, now: float, tick: float
    ) -> ApiResult:
        serial = _string(body, "Serial")
        device = _device_of(account, serial)
        rate = self.settings.iot_rate
        if rate is not None:
            bucket = self._iot_buckets.get(account.account_id)
            if bucket is None or bucket.rate != rate:
                bucket = RateLimiter(rate, burst=max(1.0, rate))
                self._iot_buckets[account.account_id] = bucket
            if not bucket.allow(tick):
                raise _Reject(
                    429,
                    "iot-rate-limited",
                    f"more than {rate:g} iot-credentials calls per second for this account "
                    "(iot_rate; dyson.md §8)",
                )
        client_id: str | None = None
        if not self.settings.client_id_per_call:
            client_id = self._stable_client_ids.setdefault(
                (account.account_id, device.serial), str(uuid.uuid4())
            )
        credentials = issue_iot_credentials(
            self.signer,
            client_id=client_id,
            authorizer_name=self.authorizer_name,
            token_key=self.token_key,
        )
        ttl = self.settings.token_ttl_s
        issued = IssuedIotToken(
            token=credentials.token_value,
            serial=device.serial,
            account_id=account.account_id,
            issued_at=now,
            expires_at=now + ttl if ttl is not None else None,
        )
        self._iot_tokens[issued.token] = issued
        return ApiResult(
            200,
            {"IoTCredentials": credentials.to_wire(), "Endpoint": self.endpoint},
            "iot-credentials",
            account_id=account.account_id,
            serial=device.serial,
            secrets=(credentials.token_signature,),
            iot_token=issued,
        )

    # Lookups

    def _owner(self, serial: str) -> tuple[DysonAccount, CloudDevice] | None:
        for account in self._accounts.values():
            for device in account.devices:
                if device.serial == serial:
                    return account, device
        return None

    def _pick_account(self, account_id: str | None) -> DysonAccount:
        if account_id is not None:
            if account_id not in self._accounts:
                raise ConfigError(f"no account {account_id!r}")
            return self._accounts[account_id]
        if len(self._accounts) != 1:
            raise ConfigError("name the account_id: there is not exactly one account")
        return next(iter(self._accounts.values()))


# Request decoding


def _route(method: str, path: str) -> tuple[str | None, Mapping[str, str]]:
    for name, (wanted, pattern) in OPERATIONS.items():
        match = pattern.fullmatch(path)
        if match is not None and method == wanted:
            return name, match.groupdict()
    return None, {}


def _route_error(method: str, path: str) -> _Reject:
    allowed = sorted({m for m, pattern in OPERATIONS.values() if pattern.fullmatch(path)})
    if allowed:
        return _Reject(
            405,
            "method-not-allowed",
            f"{method} {path}: this path serves {', '.join(allowed)}",
            headers=(("Allow", ", ".join(allowed)),),
        )
    return _Reject(404, "unknown-path", f"{method} {path}: the fake Dyson cloud has no such API")


def _json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type")
    if content_type is not None and request.body:
        media = content_type.partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise _Reject(
                415,
                "unsupported-media-type",
                f"Content-Type {media or '(empty)'} for a JSON body (the openapi lists 415)",
            )
    try:
        data = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Reject(400, "malformed-json", "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise _Reject(
            400,
            "malformed-json",
            f"the request body is a JSON {type(data).__name__}, not an object",
        )
    return data


def _string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise _Reject(400, "missing-field", f"the body has no {name}")
    if not isinstance(value, str) or not value.strip():
        raise _Reject(400, "bad-field", f"{name} must be a non-empty string")
    return value


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _string(body, name)


def _device_of(account: DysonAccount, serial: str) -> CloudDevice:
    for device in account.devices:
        if device.serial == serial:
            return device
    raise _Reject(404, "unknown-device", f"device {serial} is not in this account's manifest")


# The HTTPS shell


def _framing_error(status: int, reason: str, message: str) -> Response:
    """Dyson-shaped answers to requests the HTTP layer refuses (too large, malformed, crash)."""
    return Response.json(_error_body(status), status=status, content_type=_JSON)


class FakeDysonCloud(HttpService):
    """The fake Dyson cloud over HTTPS (or HTTP without ``ssl``) on loopback.

    ``async with FakeDysonCloud(signer=key, endpoint=gw.endpoint, accounts=[...], ssl=ctx)
    as cloud:`` then point a client at ``cloud.url`` (or resolve the real host names to it).
    Shares the world's recorder and clock when given.
    """

    def __init__(
        self,
        *,
        signer: TokenSigningKey | TokenSigner,
        endpoint: str,
        accounts: Iterable[DysonAccount] = (),
        authorizer_name: str = DYSON_AUTHORIZER_NAME,
        token_key: str = DYSON_TOKEN_KEY,
        settings: DysonCloudSettings | None = None,
        # The world
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
        self.service = DysonCloudService(
            signer=signer,
            endpoint=endpoint,
            accounts=accounts,
            authorizer_name=authorizer_name,
            token_key=token_key,
            settings=settings,
        )
        self._register_static_secrets()
        self.http = HttpServer(
            self._handle,
            host=host,
            port=port,
            ssl=ssl,
            name="dyson-cloud",
            recorder=self.recorder,
            clock=clock,
            limits=limits if limits is not None else HttpLimits(),
            error_response=_framing_error,
        )

    @property
    def settings(self) -> DysonCloudSettings:
        return self.service.settings

    @property
    def accounts(self) -> Mapping[str, DysonAccount]:
        return self.service.accounts

    @property
    def endpoint(self) -> str:
        return self.service.endpoint

    @property
    def authorizer_name(self) -> str:
        return self.service.authorizer_name

    @property
    def token_key(self) -> str:
        return self.service.token_key

    def descriptor(self) -> dict[str, Any]:
        """The ``dyson`` section of the world descriptor (DESIGN.md, contract 1).

        The first account's login and its devices; each device's ``local_host`` and
        ``local_port`` belong to its local broker, which the world adds. The descriptor
        carries the login secrets by contract: it is how a client under test gets them.
        """
        accounts = list(self.service.accounts.values())
        first = accounts[0] if accounts else None
        return {
            "api_url": self.url,
            "email": first.email if first else "",
            "password": first.password if first else "",
            "otp": first.otp if first else "",
            "devices": [
                {
                    "serial": device.serial,
                    "product_type": device.product_type,
                    "root_topic": device.root,
                    "local_password": device.local_password,
                }
                for device in (first.devices if first else ())
            ],
        }

    # Configuration and faults (see DysonCloudService)

    def add_account(self, account: DysonAccount) -> DysonAccount:
        added = self.service.add_account(account)
        self._register_static_secrets()
        return added

    def account(self, email: str) -> DysonAccount | None:
        return self.service.account(email)

    def device(self, serial: str) -> CloudDevice:
        return self.service.device(serial)

    def add_device(self, device: CloudDevice, *, account_id: str | None = None) -> CloudDevice:
        added = self.service.add_device(device, account_id=account_id)
        self._register_static_secrets()
        return added

    def update_device(self, serial: str, /, **changes: Any) -> CloudDevice:
        updated = self.service.update_device(serial, **changes)
        self._register_static_secrets()
        return updated

    def remove_device(self, serial: str) -> None:
        self.service.remove_device(serial)

    def update_settings(self, **changes: Any) -> DysonCloudSettings:
        return self.service.update_settings(**changes)

    def set_connection_status(self, serial: str, status: str) -> None:
        self.service.set_connection_status(serial, status, now=self.clock.now())

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        operation: str | None = None,
        body: Any = None,
    ) -> None:
        self.service.fail_next(n, status, operation=operation, body=body)

    # Tokens

    def iot_token(self, token: str) -> IssuedIotToken | None:
        return self.service.iot_token(token)

    def token_valid(self, token: str | None, now: float | None = None) -> bool:
        """Whether an issued IoT token is valid at ``now`` (default: the world clock)."""
        return self.service.token_valid(token, self.clock.now() if now is None else now)

    def revoke_iot_tokens(self, *, serial: str | None = None) -> int:
        return self.service.revoke_iot_tokens(serial=serial)

    def revoke_bearer_tokens(self) -> int:
        return self.service.revoke_bearer_tokens()

    def authorizer(
        self,
        *,
        policy_documents: Sequence[str] | Callable[[IssuedIotToken], Sequence[str]],
        public_keys: Sequence[str] = (),
        disconnect_after_s: float = 86400,
        refresh_after_s: float = 300,
    ) -> custom.Authorizer:
        """The custom authorizer these tokens are for, to register in the gateway.

        Named ``authorizer_name`` with ``token_key`` and signing enabled (aws-iot.md §2.2,
        §2.5); its Lambda accepts a token only while :meth:`token_valid` says so (world
        clock), with ``principalId`` = the ClientId without dashes (``[a-zA-Z0-9]{1,128}``,
        aws-iot.md §2.3) and the given policies. ``public_keys`` default to the signing
        key's public half when the signer is a :class:`~harness.pki.TokenSigningKey`.
        Each invocation records a ``dyson.api.authorizer`` event saying why it accepted or
        refused (``unknown-token``, ``token-expired``, ``token-revoked``), which the
        gateway's verdict ("returned isAuthenticated false") cannot.
        """
        keys = tuple(public_keys)
        if not keys:
            if self.service.public_key_pem is None:
                raise ConfigError("pass public_keys: the signer is a callable, not a key")
            keys = (self.service.public_key_pem,)

        def lambda_handler(event: custom.AuthorizerEvent) -> custom.AuthorizerResponse:
            now = self.clock.now()
            issued = self.service.iot_token(event.token) if event.token else None
            if issued is None:
                reason, explain = "unknown-token", "the token was not issued by the Dyson cloud"
            elif issued.revoked:
                reason, explain = "token-revoked", "the token was revoked"
            elif not issued.valid_at(now):
                reason = "token-expired"
                explain = f"the token expired {now - (issued.expires_at or now):.3f}s ago"
            else:
                reason, explain = "ok", "an issued token within its lifetime"
            # The gateway can only say "isAuthenticated false"; this event says why.
            self.recorder.record(
                "dyson.api.authorizer",
                conn=event.connection_id,
                ok=reason == "ok",
                reason=reason,
                explain=explain,
                serial=issued.serial if issued is not None else None,
                expires_at=issued.expires_at if issued is not None else None,
            )
            if issued is None or reason != "ok":
                return custom.AuthorizerResponse(is_authenticated=False)
            documents = policy_documents(issued) if callable(policy_documents) else policy_documents
            return custom.AuthorizerResponse(
                is_authenticated=True,
                principal_id=issued.client_id.replace("-", ""),
                policy_documents=tuple(documents),
                disconnect_after_seconds=disconnect_after_s,
                refresh_after_seconds=refresh_after_s,
            )

        return custom.Authorizer(
            name=self.service.authorizer_name,
            handler=lambda_handler,
            token_key=self.service.token_key,
            signing_enabled=True,
            public_keys=keys,
        )

    # Serving

    async def _handle(self, request: Request) -> Response:
        self._register_request_secrets(request)
        result = self.service.handle(request, now=self.clock.now(), tick=self.clock.elapsed())
        for secret in result.secrets:
            self.recorder.add_secret(secret)
        if result.injected:
            self.recorder.record(
                "fault.fired",
                conn=request.conn,
                server="dyson-cloud",
                fault="dyson-fail-next",
                operation=result.operation,
                status=result.status,
                path=request.path,
            )
        fields: dict[str, Any] = {
            "operation": result.operation,
            "method": request.method,
            "path": request.path,
            "status": result.status,
            "ok": result.ok,
            "host": request.headers.get("host"),
        }
        if result.account_id is not None:
            fields["account"] = result.account_id
        if result.serial is not None:
            fields["serial"] = result.serial
        if result.iot_token is not None:
            fields["expires_at"] = result.iot_token.expires_at
        if not result.ok:
            fields["reason"] = result.reason
        if result.explain is not None:
            fields["explain"] = result.explain
        self.recorder.record("dyson.api.call", conn=request.conn, **fields)
        return result.response()

    def _register_static_secrets(self) -> None:
        for secret in self.service.static_secrets():
            self.recorder.add_secret(secret)

    def _register_request_secrets(self, request: Request) -> None:
        """Whatever a client sends as a password, OTP or token is scrubbed, right or wrong."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            self.recorder.add_secret(authorization.strip().partition(" ")[2].strip())
        try:
            body = json.loads(request.body) if request.body else None
        except (ValueError, RecursionError):
            return
        if isinstance(body, dict):
            for name in ("password", "otpCode", "Password"):
                value = body.get(name)
                if isinstance(value, str):
                    self.recorder.add_secret(value)
