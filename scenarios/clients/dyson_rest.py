"""A Dyson cloud REST client run as a command (``kind: command``), with switchable mistakes.

It logs in to the world's fake Dyson cloud and reads the manifest (dyson.md §6), taking the
API URL, the account and the CA from the world descriptor named by
``IOT_HARNESS_DESCRIPTOR`` (DESIGN.md contract 1), and reports what happened as ``client.*``
JSON lines. By default it does what a current client does (libdyson-rest): the version call,
``userstatus``, ``auth``, ``verify`` with the OTP, then ``GET /v3/manifest``, every call on
one host. Each flag is a mistake of a field client, for the catalogue's negative controls
(``scenarios/field-fb*.yaml``, field-bugs.md):

``--legacy``            the pre-2021 password login ``/v1/userregistration/authenticate``
                        (FB-16: 401 since OTP arrived)
``--skip-version``      no version call first (FB-17: the API ignores such callers)
``--manifest-host H``   log in on the world host, read the manifest with ``Host: H``
                        (FB-05: a token from one regional host used on another)
``--insecure``          no certificate verification (FB-18: ``verify=False``)
``--strict-enums``      refuse a manifest with an enum value it does not know (FB-09:
                        ``'mqtts' is not a valid RemoteBrokerType``)

    python dyson_rest.py [--legacy] [--skip-version] [--manifest-host H] [--insecure]
                         [--strict-enums]

Exit status 0 when the manifest was read and understood, 1 otherwise. Secrets (password,
OTP, Bearer token) are never printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import urllib.parse
from pathlib import Path
from typing import Any

USER_AGENT = "android client"
#: libdyson-rest's RemoteBrokerType and ConnectionCategory enums (FB-09).
REMOTE_BROKER_TYPES = ("wss",)
CONNECTION_CATEGORIES = ("lecAndWifi", "lecOnly", "nonConnected", "wifiOnly")


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


class ApiError(Exception):
    def __init__(self, operation: str, status: int | None, message: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status


class Api:
    """Blocking calls to the fake Dyson cloud, one connection each."""

    def __init__(self, api_url: str, ca_file: str, *, insecure: bool) -> None:
        parts = urllib.parse.urlsplit(api_url)
        self.address = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        if insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=ca_file)
        self.context = context
        self.token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        body: dict[str, Any] | None = None,
        host: str | None = None,
    ) -> Any:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if host is not None:
            headers["Host"] = host
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = http.client.HTTPSConnection(
            self.address, self.port, timeout=5, context=self.context
        )
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except ssl.SSLCertVerificationError as exc:
            raise ApiError(
                operation, None, f"certificate verify failed: {exc.verify_message}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(operation, None, f"{type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        if status >= 400:
            raise ApiError(operation, status, f"Client error '{status}' for {path}")
        return json.loads(raw) if raw else None


def login(api: Api, account: dict[str, Any], args: argparse.Namespace) -> None:
    email = account["email"]
    if args.legacy:
        # FB-16: the pre-2021 login; Dyson answers 401 since OTP arrived.
        api.call(
            "POST",
            "/v1/userregistration/authenticate?country=US",
            "legacy-authenticate",
            body={"Email": email, "Password": account["password"]},
        )
        return
    if not args.skip_version:
        api.call("GET", "/v1/provisioningservice/application/Android/version", "version")
    api.call(
        "POST",
        "/v3/userregistration/email/userstatus?country=US",
        "userstatus",
        body={"email": email},
    )
    challenge = api.call(
        "POST",
        "/v3/userregistration/email/auth?country=US&culture=en-US",
        "auth",
        body={"email": email},
    )
    verified = api.call(
        "POST",
        "/v3/userregistration/email/verify?country=US&culture=en-US",
        "verify",
        body={
            "challengeId": challenge["challengeId"],
            "email": email,
            "otpCode": account["otp"],
            "password": account["password"],
        },
    )
    api.token = str(verified["token"])


def check_enums(devices: list[dict[str, Any]]) -> None:
    """libdyson-rest before v0.34.0-beta.8: one unknown value fails the whole account."""
    for device in devices:
        mqtt = (device.get("connectedConfiguration") or {}).get("mqtt") or {}
        broker = mqtt.get("remoteBrokerType")
        if broker is not None and broker not in REMOTE_BROKER_TYPES:
            raise ValueError(f"'{broker}' is not a valid RemoteBrokerType")
        category = device.get("connectionCategory")
        if category is not None and category not in CONNECTION_CATEGORIES:
            raise ValueError(f"'{category}' is not a valid ConnectionCategory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", action="store_true")
    parser.add_argument("--skip-version", action="store_true")
    parser.add_argument("--manifest-host")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--strict-enums", action="store_true")
    args = parser.parse_args()
    descriptor = json.loads(Path(os.environ["IOT_HARNESS_DESCRIPTOR"]).read_text())
    dyson = descriptor["dyson"]
    api = Api(dyson["api_url"], descriptor["iot"]["ca_file"], insecure=args.insecure)
    emit("client.started", client_kind="dyson-rest", mistakes=_mistakes(args))
    try:
        login(api, dyson, args)
    except ApiError as exc:
        reason = "unauthorized" if exc.status == 401 else "error"
        emit("client.login", ok=False, reason=reason, status=exc.status, error=str(exc))
        emit("client.error", stage="login", reason=reason, error=f"{exc.operation}: {exc}")
        return 1
    emit("client.login", ok=True)
    try:
        devices = api.call("GET", "/v3/manifest", "manifest", host=args.manifest_host)
    except ApiError as exc:
        emit("client.error", stage="manifest", status=exc.status, error=str(exc))
        return 1
    if args.strict_enums:
        try:
            check_enums(devices)
        except ValueError as exc:
            text = f"Invalid devices response: {exc}"
            emit("client.error", stage="manifest", reason="invalid-manifest", error=text)
            return 1
    emit("client.manifest", devices=len(devices))
    return 0


def _mistakes(args: argparse.Namespace) -> list[str]:
    flags = ("legacy", "skip_version", "manifest_host", "insecure", "strict_enums")
    return [name.replace("_", "-") for name in flags if getattr(args, name)]


if __name__ == "__main__":
    sys.exit(main())
