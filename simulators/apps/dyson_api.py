"""The Dyson app's client of the Dyson cloud REST API (dyson.md §6), blocking, stdlib only.

Calls are made with :mod:`http.client` over TLS verified against the world's CA file; the
app runs them in a worker thread, and the TLS context (whose CA loading blocks) is built
there too (field-bugs.md FB-02). The flow is the current one (dyson.md §6):

1. ``GET /v1/provisioningservice/application/Android/version`` first (FB-17: the API
   ignores callers that skipped it);
2. ``POST /v3/userregistration/email/userstatus`` → ``ACTIVE``;
3. ``POST /v3/userregistration/email/auth`` → ``challengeId`` (429: too frequent, FB-16);
4. ``POST /v3/userregistration/email/verify`` with the OTP and password → Bearer token;
5. ``GET /v3/manifest`` (Bearer);
6. ``POST /v2/authorize/iot-credentials`` ``{"Serial"}`` → ``Endpoint`` and
   ``IoTCredentials`` (aws-iot.md §2.5).

Every failure is a :class:`DysonApiError` with a stable ``reason``: ``unauthorized``
(401), ``throttled`` (429), ``forbidden`` (403, e.g. a regional host mismatch, FB-05),
``unavailable`` (5xx, FB-19: an outage, not a login failure), ``rejected`` (other 4xx),
``unknown-account``, ``bad-response``, ``tls-verify``, ``network``. Messages never carry
the password, the OTP or a token.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError
from simulators.dyson.credentials import IotCredentials, IotCredentialsError

__all__ = ["DysonApiError", "DysonCloudClient", "IssuedIot"]

USER_AGENT = "android client"  # libdyson-neon, libdyson-rest (dyson.md §6 "Headers")


class DysonApiError(Exception):
    """A Dyson cloud call that failed; ``reason`` is a stable code (module docstring)."""

    def __init__(self, reason: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class IssuedIot:
    """``POST /v2/authorize/iot-credentials``'s answer."""

    endpoint: str
    credentials: IotCredentials


def _reason_of(status: int) -> str:
    if status == 401:
        return "unauthorized"
    if status == 403:
        return "forbidden"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "unavailable"
    return "rejected"


class DysonCloudClient:
    """One account's session with the Dyson cloud; not thread-safe (one call at a time)."""

    def __init__(
        self,
        *,
        api_url: str,
        ca_file: str,
        timeout: float = 5.0,
        country: str = "US",
        culture: str = "en-US",
    ) -> None:
        try:
            parts = urllib.parse.urlsplit(api_url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"dyson.api_url must be an https:// URL, got {api_url!r}")
        self.host = parts.hostname
        self.port = port or 443
        self.ca_file = ca_file
        self.timeout = timeout
        self.country = country
        self.culture = culture
        self.token: str | None = None
        self._context: ssl.SSLContext | None = None

    # HTTP

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self._context

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        operation: str,
    ) -> Any:
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self._tls()
        )
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            status = response.status
            raw = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise DysonApiError("tls-verify", f"{operation}: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DysonApiError("network", f"{operation}: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        if status >= 400:
            raise DysonApiError(_reason_of(status), f"{operation}: HTTP {status}", status=status)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise DysonApiError("bad-response", f"{operation}: not JSON", status=status) from None

    # The flow

    def login(self, *, email: str, password: str, otp: str) -> str:
        """Version call, userstatus, auth, verify: the Bearer token (also kept in ``token``)."""
        self.token = None
        self.request(
            "GET", "/v1/provisioningservice/application/Android/version", operation="version"
        )
        country = {"country": self.country}
        status = self.request(
            "POST",
            "/v3/userregistration/email/userstatus",
            body={"email": email},
            query=country,
            operation="userstatus",
        )
        if not isinstance(status, Mapping) or status.get("accountStatus") != "ACTIVE":
            account = status.get("accountStatus") if isinstance(status, Mapping) else None
            raise DysonApiError("unknown-account", f"userstatus: account status {account!r}")
        locale = {"country": self.country, "culture": self.culture}
        challenge = self.request(
            "POST",
            "/v3/userregistration/email/auth",
            body={"email": email},
            query=locale,
            operation="auth",
        )
        challenge_id = challenge.get("challengeId") if isinstance(challenge, Mapping) else None
        if not isinstance(challenge_id, str):
            raise DysonApiError("bad-response", "auth: no challengeId")
        verified = self.request(
            "POST",
            "/v3/userregistration/email/verify",
            body={
                "challengeId": challenge_id,
                "email": email,
                "otpCode": otp,
                "password": password,
            },
            query=locale,
            operation="verify",
        )
        token = verified.get("token") if isinstance(verified, Mapping) else None
        if not isinstance(token, str) or not token:
            raise DysonApiError("bad-response", "verify: no token")
        self.token = token
        return token

    def manifest(self) -> list[Mapping[str, Any]]:
        devices = self.request("GET", "/v3/manifest", operation="manifest")
        if not isinstance(devices, list):
            raise DysonApiError("bad-response", "manifest: not a list")
        return [device for device in devices if isinstance(device, Mapping)]

    def iot_credentials(self, serial: str) -> IssuedIot:
        answer = self.request(
            "POST",
            "/v2/authorize/iot-credentials",
            body={"Serial": serial},
            operation="iot-credentials",
        )
        if not isinstance(answer, Mapping) or not isinstance(answer.get("Endpoint"), str):
            raise DysonApiError("bad-response", "iot-credentials: no Endpoint")
        try:
            credentials = IotCredentials.from_wire(answer.get("IoTCredentials"))
        except IotCredentialsError as exc:
            raise DysonApiError("bad-response", f"iot-credentials: {exc.message}") from None
        return IssuedIot(endpoint=answer["Endpoint"], credentials=credentials)
