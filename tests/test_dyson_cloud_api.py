"""The fake Dyson cloud REST API (dyson.md §6): the pure core, then real HTTPS on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.auth import custom
from harness.auth.custom import verify_token_signature
from harness.errors import ConfigError
from harness.events import Recorder
from harness.httpserver import Headers, Query, Request
from harness.pki import TokenSigningKey, WorldPKI
from harness.world import World, WorldConfig
from simulators.dyson.cloud_api import (
    APP_VERSION,
    DYSON_API_HOSTS,
    OPERATIONS,
    ApiResult,
    CloudDevice,
    DysonAccount,
    DysonCloudService,
    DysonCloudSettings,
    FakeDysonCloud,
    region_of_host,
)
from simulators.dyson.credentials import (
    DYSON_AUTHORIZER_NAME,
    decrypt_local_credentials,
    new_ap_password_hash,
)
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

ENDPOINT = "a3harnessfake1-ats.iot.eu-west-1.amazonaws.com"
EMAIL = "owner@example.com"
PASSWORD = "correct horse"
OTP = "424242"
TP11 = "NK6-CN-HAA0000A"
HP04 = "VS6-EU-HJA1234A"
TP11_PASSWORD = new_ap_password_hash()
HP04_PASSWORD = new_ap_password_hash()
WORLD_HOST = "appapi.cp.dyson.com"
CHINA_HOST = "appapi.cp.dyson.cn"


def devices() -> tuple[CloudDevice, ...]:
    return (
        CloudDevice(
            serial=TP11,
            product_type="438",
            variant="M",
            model="TP11",
            name="Theater Fan",
            product_name="Dyson Purifier Cool PC1",
            local_password=TP11_PASSWORD,
        ),
        CloudDevice(serial=HP04, product_type="527", model="HP04", local_password=HP04_PASSWORD),
    )


def account(**changes: Any) -> DysonAccount:
    options: dict[str, Any] = {
        "email": EMAIL,
        "password": PASSWORD,
        "otp": OTP,
        "mobile": "+8613800000000",
        "devices": devices(),
    }
    options.update(changes)
    return DysonAccount(**options)


def fake_signer(token: str) -> str:
    return f"sig({token})"


# The pure core


@dataclass
class Core:
    """A service and a tiny client for it: requests in, results out, time passed in."""

    service: DysonCloudService
    now: float = 1_700_000_000.0
    tick: float = 0.0
    host: str = WORLD_HOST
    peer: str = "127.0.0.1:50000"
    token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        auth: bool = True,
        host: str | None = None,
    ) -> ApiResult:
        all_headers = [("Host", host or self.host), *headers]
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
            all_headers.append(("Content-Type", "application/json"))
        if auth and self.token is not None:
            all_headers.append(("Authorization", f"Bearer {self.token}"))
        request = Request(
            method, path, path, Query(), Headers(all_headers), raw or b"", peer=self.peer
        )
        return self.service.handle(request, now=self.now, tick=self.tick)

    def login(self, *, email: str = EMAIL, host: str | None = None) -> str:
        challenge = self.call(
            "POST", "/v3/userregistration/email/auth", {"email": email}, host=host
        ).body["challengeId"]
        verified = self.call(
            "POST",
            "/v3/userregistration/email/verify",
            {"challengeId": challenge, "email": email, "otpCode": OTP, "password": PASSWORD},
            host=host,
        )
        assert verified.status == 200, verified
        self.token = verified.body["token"]
        return self.token

    def iot(self, serial: str = TP11) -> ApiResult:
        return self.call("POST", "/v2/authorize/iot-credentials", {"Serial": serial})


def core(**settings_changes: Any) -> Core:
    return Core(
        DysonCloudService(
            signer=fake_signer,
            endpoint=ENDPOINT,
            accounts=[account()],
            settings=DysonCloudSettings(**settings_changes),
        )
    )


def test_version_call() -> None:
    c = core()
    for platform in ("Android", "ios"):
        got = c.call("GET", f"/v1/provisioningservice/application/{platform}/version")
        assert (got.status, got.body, got.operation) == (200, APP_VERSION, "provision")
    assert (
        core(app_version="6.0.1")
        .call("GET", "/v1/provisioningservice/application/Android/version")
        .response()
        .body
        == b'"6.0.1"'
    )


def test_user_status() -> None:
    c = core()
    got = c.call("POST", "/v3/userregistration/email/userstatus", {"email": "Owner@Example.com"})
    assert got.body == {"accountStatus": "ACTIVE", "authenticationMethod": "EMAIL_PWD_2FA"}
    unknown = c.call("POST", "/v3/userregistration/email/userstatus", {"email": "x@y.z"})
    assert unknown.body == {
        "accountStatus": "UNREGISTERED",
        "authenticationMethod": "EMAIL_PWD_2FA",
    }


def test_login_flow_gives_a_bearer_token_of_the_real_shape() -> None:
    c = core()
    challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL})
    assert challenge.status == 200 and set(challenge.body) == {"challengeId"}
    challenge_id = challenge.body["challengeId"]
    assert str(uuid.UUID(challenge_id)) == challenge_id
    verified = c.call(
        "POST",
        "/v3/userregistration/email/verify",
        {"challengeId": challenge_id, "email": EMAIL, "otpCode": OTP, "password": PASSWORD},
    )
    assert verified.status == 200 and list(verified.body) == ["account", "token", "tokenType"]
    assert verified.body["account"] == account_id(c)
    assert verified.body["tokenType"] == "Bearer"
    assert re.fullmatch(r"[0-9a-f]{64}-1", verified.body["token"])
    assert verified.secrets == (verified.body["token"],)
    # The challenge completed a login: it cannot be replayed.
    again = c.call(
        "POST",
        "/v3/userregistration/email/verify",
        {"challengeId": challenge_id, "email": EMAIL, "otpCode": OTP, "password": PASSWORD},
    )
    assert (again.status, again.reason) == (401, "challenge-used")


def account_id(c: Core) -> str:
    return next(iter(c.service.accounts))


def verify_body(challenge: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "challengeId": challenge,
        "email": EMAIL,
        "otpCode": OTP,
        "password": PASSWORD,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"otpCode": "000000"}, 401, "wrong-otp"),
        ({"password": "wrong"}, 401, "wrong-password"),
        ({"password": None}, 400, "missing-field"),
        ({"otpCode": 123456}, 400, "bad-field"),
        ({"challengeId": "not-a-uuid"}, 400, "bad-challenge-id"),
        ({"challengeId": str(uuid.uuid4())}, 401, "unknown-challenge"),
        ({"email": "other@example.com"}, 401, "unknown-challenge"),
    ],
)
def test_verify_refusals(changes: dict[str, Any], status: int, reason: str) -> None:
    c = core()
    challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL}).body[
        "challengeId"
    ]
    got = c.call("POST", "/v3/userregistration/email/verify", verify_body(challenge, **changes))
    assert (got.status, got.reason) == (status, reason)
    assert set(got.body) == {"Message"}
    # A failed attempt does not burn the challenge.
    ok = c.call("POST", "/v3/userregistration/email/verify", verify_body(challenge))
    assert ok.status == 200


def test_unknown_email_gets_a_challenge_that_never_verifies() -> None:
    c = core()
    challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": "x@y.z"})
    assert challenge.status == 200 and challenge.account_id is None
    got = c.call(
        "POST",
        "/v3/userregistration/email/verify",
        verify_body(challenge.body["challengeId"], email="x@y.z"),
    )
    assert (got.status, got.reason) == (401, "unknown-account")


def test_inactive_account_cannot_log_in() -> None:
    c = Core(
        DysonCloudService(
            signer=fake_signer, endpoint=ENDPOINT, accounts=[account(status="UNREGISTERED")]
        )
    )
    status = c.call("POST", "/v3/userregistration/email/userstatus", {"email": EMAIL})
    assert status.body["accountStatus"] == "UNREGISTERED"
    challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL})
    got = c.call(
        "POST", "/v3/userregistration/email/verify", verify_body(challenge.body["challengeId"])
    )
    assert (got.status, got.reason) == (401, "account-inactive")


def test_challenge_expires() -> None:
    c = core(otp_ttl_s=0.5)
    challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL}).body[
        "challengeId"
    ]
    c.now += 0.5
    got = c.call("POST", "/v3/userregistration/email/verify", verify_body(challenge))
    assert (got.status, got.reason) == (401, "challenge-expired")


def test_otp_requested_too_often_is_429() -> None:
    """field-bugs.md FB-16: two quick OTP requests → 429 (libdyson DysonOTPTooFrequently)."""
    c = core(otp_interval_s=30)
    assert c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL}).status == 200
    c.tick += 29
    again = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL})
    assert (again.status, again.reason) == (429, "otp-too-frequent")
    c.tick += 1
    assert c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL}).status == 200


def test_mobile_login_for_china() -> None:
    c = core()
    c.host = CHINA_HOST
    mobile = "+86 138 0000 0000"
    status = c.call("POST", "/v3/userregistration/mobile/userstatus", {"mobile": mobile})
    assert status.body["accountStatus"] == "ACTIVE"
    challenge = c.call("POST", "/v3/userregistration/mobile/auth", {"mobile": mobile}).body[
        "challengeId"
    ]
    # libdyson-rest sends no password on the mobile verify.
    got = c.call(
        "POST",
        "/v3/userregistration/mobile/verify",
        {"challengeId": challenge, "mobile": mobile, "otpCode": OTP},
    )
    assert got.status == 200 and got.explain == "logged in on the cn host"
    c.token = got.body["token"]
    assert c.call("GET", "/v3/manifest").status == 200
    # An email challenge does not complete a mobile login.
    email_challenge = c.call("POST", "/v3/userregistration/email/auth", {"email": EMAIL}).body[
        "challengeId"
    ]
    crossed = c.call(
        "POST",
        "/v3/userregistration/mobile/verify",
        {"challengeId": email_challenge, "mobile": mobile, "otpCode": OTP},
    )
    assert crossed.reason == "unknown-challenge"


def test_legacy_password_login_is_refused() -> None:
    """field-bugs.md FB-16: the pre-2021 login answers 401."""
    c = core()
    got = c.call(
        "POST", "/v1/userregistration/authenticate", {"Email": EMAIL, "Password": PASSWORD}
    )
    assert (got.status, got.reason) == (401, "legacy-login-retired")
    c.login()
    basic = c.call("GET", "/v3/manifest", auth=False, headers=(("Authorization", "Basic YTpi"),))
    assert (basic.status, basic.reason) == (401, "legacy-basic-auth")


def test_manifest_v3_lists_the_devices_as_the_spec_shows() -> None:
    c = core()
    c.login()
    got = c.call("GET", "/v3/manifest")
    assert got.status == 200 and got.account_id == account_id(c)
    tp11, hp04 = got.body
    assert list(tp11) == [
        "serialNumber",
        "name",
        "type",
        "variant",
        "model",
        "category",
        "connectionCategory",
        "productName",
        "connectedConfiguration",
    ]
    assert tp11["serialNumber"] == TP11 and tp11["name"] == "Theater Fan"
    assert (tp11["type"], tp11["variant"], tp11["model"]) == ("438", "M", "TP11")
    assert (tp11["category"], tp11["connectionCategory"]) == ("ec", "lecAndWifi")
    mqtt = tp11["connectedConfiguration"]["mqtt"]
    assert mqtt["remoteBrokerType"] == "wss" and mqtt["mqttRootTopicLevel"] == "438M"
    assert len(mqtt["localBrokerCredentials"]) == 192
    local = decrypt_local_credentials(mqtt["localBrokerCredentials"], strict=True)
    assert (local.serial, local.ap_password_hash) == (TP11, TP11_PASSWORD)
    firmware = tp11["connectedConfiguration"]["firmware"]
    assert firmware["version"] == "438MPF.00.01.003.0011"
    assert firmware["autoUpdateEnabled"] is False and firmware["newVersionAvailable"] is False
    assert "EnvironmentalData" in firmware["capabilities"]
    assert hp04["variant"] is None and hp04["name"] == "Dyson 527"
    assert hp04["connectedConfiguration"]["mqtt"]["mqttRootTopicLevel"] == "527"


def test_manifest_v2_for_libdyson_neon() -> None:
    c = core()
    c.login()
    got = c.call("GET", "/v2/provisioningservice/manifest")
    tp11 = got.body[0]
    assert list(tp11) == [
        "Serial",
        "Name",
        "Version",
        "LocalCredentials",
        "AutoUpdate",
        "NewVersionAvailable",
        "ProductType",
        "ConnectionType",
        "Active",
    ]
    assert (tp11["Serial"], tp11["ProductType"], tp11["ConnectionType"]) == (TP11, "438", "wss")
    assert tp11["Version"].startswith("438M")  # libdyson-neon reads the variant from it
    assert decrypt_local_credentials(tp11["LocalCredentials"]).ap_password_hash == TP11_PASSWORD


def test_field_bug_manifest_switches() -> None:
    """field-bugs.md FB-04 and FB-09: nulls, a missing key, trailing data, unknown enums."""
    c = core()
    c.login()
    c.service.update_device(TP11, credentials_trailing_data=' {"extra": 1}')
    c.service.update_device(HP04, local_password=None, connection_category=None)
    c.service.add_device(
        CloudDevice(
            serial="LGT-US-ABC1234A",
            product_type="552",
            category="light",
            remote_broker_type="mqtts",
            connected=False,
        )
    )
    c.service.add_device(
        CloudDevice(
            serial="ODD-US-ABC1234A",
            product_type="999",
            category="oc",
            connection_category="bluetoothOnly",
            remote_broker_type="quic",
        )
    )
    tp11, hp04, light, odd = c.call("GET", "/v3/manifest").body
    blob = tp11["connectedConfiguration"]["mqtt"]["localBrokerCredentials"]
    assert decrypt_local_credentials(blob).trailing == ' {"extra": 1}'
    with pytest.raises(Exception, match="Extra data"):
        decrypt_local_credentials(blob, strict=True)
    assert hp04["connectedConfiguration"]["mqtt"]["localBrokerCredentials"] is None
    assert "connectionCategory" not in hp04
    assert light["connectedConfiguration"] is None
    assert odd["category"] == "oc" and odd["connectionCategory"] == "bluetoothOnly"
    assert odd["connectedConfiguration"]["mqtt"]["remoteBrokerType"] == "quic"
    v2 = c.call("GET", "/v2/provisioningservice/manifest").body
    assert v2[1]["LocalCredentials"] is None and v2[2]["ConnectionType"] == "mqtts"


def test_empty_manifest() -> None:
    """field-bugs.md FB-20: login works, the manifest is empty."""
    c = Core(
        DysonCloudService(signer=fake_signer, endpoint=ENDPOINT, accounts=[account(devices=())])
    )
    c.login()
    assert c.call("GET", "/v3/manifest").body == []


def test_iot_credentials() -> None:
    c = core()
    c.login()
    got = c.iot()
    assert got.status == 200 and list(got.body) == ["IoTCredentials", "Endpoint"]
    assert got.body["Endpoint"] == ENDPOINT
    wire = got.body["IoTCredentials"]
    assert wire["ClientId"] == wire["TokenValue"] and uuid.UUID(wire["ClientId"])
    assert wire["TokenKey"] == "token"
    assert wire["CustomAuthorizerName"] == DYSON_AUTHORIZER_NAME
    assert wire["TokenSignature"] == fake_signer(wire["TokenValue"])
    assert got.secrets == (wire["TokenSignature"],)
    assert got.serial == TP11 and got.iot_token is not None
    assert got.iot_token.expires_at is None
    assert c.service.token_valid(wire["TokenValue"], c.now + 1e9)
    assert not c.service.token_valid("not-issued", c.now)
    assert not c.service.token_valid(None, c.now)
    # A new ClientId per call by default (dyson.md §6 client_id_per_call).
    assert c.iot().body["IoTCredentials"]["ClientId"] != wire["ClientId"]


def test_iot_credentials_lifetime_and_revocation() -> None:
    c = core(token_ttl_s=0.5)
    c.login()
    token = c.iot().body["IoTCredentials"]["TokenValue"]
    issued = c.service.iot_token(token)
    assert issued is not None and issued.expires_at == c.now + 0.5
    assert c.service.token_valid(token, c.now + 0.499)
    assert not c.service.token_valid(token, c.now + 0.5)
    other = c.iot(HP04).body["IoTCredentials"]["TokenValue"]
    assert c.service.revoke_iot_tokens(serial=HP04) == 1
    assert not c.service.token_valid(other, c.now)
    assert c.service.token_valid(token, c.now)
    assert set(c.service.issued_iot_tokens) == {token, other}


def test_iot_credentials_stable_client_id() -> None:
    c = core(client_id_per_call=False, token_ttl_s=10)
    c.login()
    first = c.iot().body["IoTCredentials"]
    c.now += 5
    second = c.iot().body["IoTCredentials"]
    assert first == second  # deterministic signature over the same token
    assert c.iot(HP04).body["IoTCredentials"]["ClientId"] != first["ClientId"]
    issued = c.service.iot_token(first["TokenValue"])
    assert issued is not None and issued.expires_at == c.now + 10  # renewed by the call


def test_iot_credentials_refusals() -> None:
    c = core(iot_rate=1.0)
    c.login()
    missing = c.call("POST", "/v2/authorize/iot-credentials", {})
    assert (missing.status, missing.reason) == (400, "missing-field")
    unknown = c.iot("XXX-XX-XXXXXXXX")
    assert (unknown.status, unknown.reason) == (404, "unknown-device")
    assert c.iot().status == 200
    limited = c.iot()
    assert (limited.status, limited.reason) == (429, "iot-rate-limited")
    c.tick += 1.0
    assert c.iot().status == 200


def test_bearer_refusals() -> None:
    c = core(bearer_ttl_s=60)
    missing = c.call("GET", "/v3/manifest")
    assert (missing.status, missing.reason) == (401, "missing-bearer")
    c.token = "0" * 64 + "-1"
    assert c.call("GET", "/v3/manifest").reason == "unknown-token"
    c.token = ""
    bad = c.call("GET", "/v3/manifest", headers=(("Authorization", "Bearer"),), auth=False)
    assert bad.reason == "malformed-authorization"
    c.login()
    assert c.call("GET", "/v3/manifest").status == 200
    c.now += 60
    expired = c.call("GET", "/v3/manifest")
    assert (expired.status, expired.reason) == (401, "token-expired")
    c.now -= 60
    assert c.service.revoke_bearer_tokens() == 1
    assert c.call("GET", "/v3/manifest").reason == "unknown-token"


def test_regional_tokens() -> None:
    """field-bugs.md FB-05: a token works only on the regional host that issued it."""
    c = core()
    c.login(host=CHINA_HOST)
    assert c.call("GET", "/v3/manifest", host=f"{CHINA_HOST}:443").status == 200
    wrong = c.call("GET", "/v3/manifest", host=WORLD_HOST)
    assert (wrong.status, wrong.reason) == (403, "wrong-region")
    c.service.update_settings(regional_tokens=False)
    assert c.call("GET", "/v3/manifest", host=WORLD_HOST).status == 200


@pytest.mark.parametrize(
    ("host", "region"),
    [
        (None, "global"),
        ("", "global"),
        (WORLD_HOST, "global"),
        ("APPAPI.CP.DYSON.CN.", "cn"),
        ("appapi.cp.dyson.cn:8443", "cn"),
        ("127.0.0.1:4430", "global"),
        ("[::1]:443", "global"),
    ],
)
def test_region_of_host(host: str | None, region: str) -> None:
    assert region_of_host(host) == region


def test_require_version_call() -> None:
    """field-bugs.md FB-17: callers that skipped the version call get 401."""
    c = core(require_version_call=True, version_call_ttl_s=100)
    got = c.call("POST", "/v3/userregistration/email/userstatus", {"email": EMAIL})
    assert (got.status, got.reason) == (401, "version-call-missing")
    c.call("GET", "/v1/provisioningservice/application/Android/version")
    assert c.call("POST", "/v3/userregistration/email/userstatus", {"email": EMAIL}).status == 200
    c.peer = "10.0.0.2:1234"  # another address (a VPN) is not unlocked
    assert c.call("POST", "/v3/userregistration/email/userstatus", {"email": EMAIL}).status == 401
    c.peer = "127.0.0.1:50001"
    c.tick += 100
    assert c.call("POST", "/v3/userregistration/email/userstatus", {"email": EMAIL}).status == 401


def test_rate_limit_per_address() -> None:
    c = core(rate_limit=2.0)
    version = "/v1/provisioningservice/application/Android/version"
    assert [c.call("GET", version).status for _ in range(3)] == [200, 200, 429]
    c.peer = "10.0.0.9:1"
    assert c.call("GET", version).status == 200
    c.peer = "127.0.0.1:2"
    c.tick += 0.5
    assert c.call("GET", version).status == 200
    c.service.update_settings(rate_limit=None)
    assert all(c.call("GET", version).status == 200 for _ in range(5))


def test_fail_next() -> None:
    """field-bugs.md FB-19: an outage answers 5xx; faults queue in order."""
    c = core()
    c.login()
    c.service.fail_next(2, 503, operation="iot-credentials")
    c.service.fail_next(1, 429, body={"Message": "slow down"})
    assert c.call("GET", "/v3/manifest").status == 429  # the any-operation fault
    first = c.iot()
    assert (first.status, first.reason, first.injected) == (503, "injected-fault", True)
    assert first.body == {"Message": "An error has occurred."}
    assert c.iot().status == 503
    assert c.iot().status == 200
    with pytest.raises(ConfigError):
        c.service.fail_next(0)
    with pytest.raises(ConfigError):
        c.service.fail_next(1, 42)
    with pytest.raises(ConfigError):
        c.service.fail_next(1, operation="nope")


def test_other_endpoints() -> None:
    c = core()
    c.login()
    release = c.call("GET", f"/v1/assets/devices/{TP11}/pendingrelease")
    assert release.body == {"version": "438MPF.00.01.003.0011", "pushed": False}
    trigger = c.call("POST", f"/v1/assets/devices/{TP11}/pendingrelease")
    assert trigger.status == 204 and trigger.response().body == b""
    status = c.call("GET", f"/v1/messageprocessor/devices/{TP11}/connectionstatus")
    assert status.body["Status"] == "connected" and status.body["BrokerPort"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", status.body["LastChanged"])
    c.service.set_connection_status(TP11, "disconnected", now=0.25)
    status = c.call("GET", f"/v1/messageprocessor/devices/{TP11}/connectionstatus")
    assert status.body["Status"] == "disconnected"
    assert status.body["LastChanged"] == "1970-01-01T00:00:00.250Z"
    unknown = c.call("GET", "/v1/assets/devices/XXX/pendingrelease")
    assert (unknown.status, unknown.reason) == (404, "unknown-device")


def test_routing_errors() -> None:
    c = core()
    missing = c.call("GET", "/v4/nothing")
    assert (missing.status, missing.reason) == (404, "unknown-path")
    wrong = c.call("DELETE", "/v3/manifest")
    assert (wrong.status, wrong.reason) == (405, "method-not-allowed")
    assert ("Allow", "GET") in wrong.headers
    both = c.call("PUT", f"/v1/assets/devices/{TP11}/pendingrelease")
    assert ("Allow", "GET, POST") in both.headers
    media = c.call(
        "POST",
        "/v3/userregistration/email/userstatus",
        raw=b"email=x",
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
    )
    assert (media.status, media.reason) == (415, "unsupported-media-type")
    for raw in (b"", b"[]", b"{", b"\xff", b"[" * 10_000):
        got = c.call("POST", "/v3/userregistration/email/userstatus", raw=raw)
        assert (got.status, got.reason) == (400, "malformed-json"), raw[:10]


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        CloudDevice(serial="", product_type="438")
    with pytest.raises(ConfigError):
        CloudDevice(serial="A/B", product_type="438")
    with pytest.raises(ConfigError):
        CloudDevice(serial="A", product_type="438", capabilities="Scheduling")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DysonAccount(email="nobody")
    with pytest.raises(ConfigError):
        DysonAccount(otp="")
    with pytest.raises(ConfigError):
        DysonAccount(account_id="42")
    with pytest.raises(ConfigError):
        DysonAccount(devices=(CloudDevice(serial="A", product_type="1"),) * 2)
    with pytest.raises(ConfigError):
        DysonCloudSettings(token_ttl_s=0)
    with pytest.raises(ConfigError):
        DysonCloudService(signer=fake_signer, endpoint="")
    with pytest.raises(ConfigError):
        DysonCloudService(signer=fake_signer, endpoint=ENDPOINT, authorizer_name="")
    service = DysonCloudService(signer=fake_signer, endpoint=ENDPOINT, accounts=[account()])
    with pytest.raises(ConfigError):
        service.add_account(account(account_id=str(uuid.uuid4()), devices=()))  # same email
    with pytest.raises(ConfigError):
        service.add_account(DysonAccount(email="b@example.com", devices=devices()))
    with pytest.raises(ConfigError):
        service.add_device(CloudDevice(serial=TP11, product_type="438"))
    with pytest.raises(ConfigError):
        service.update_device("nope", name="x")
    with pytest.raises(ConfigError):
        service.update_device(TP11, colour="red")
    with pytest.raises(ConfigError):
        service.update_device(TP11, serial=HP04)
    with pytest.raises(ConfigError):
        service.remove_device("nope")
    with pytest.raises(ConfigError):
        service.device("nope")
    with pytest.raises(ConfigError):
        service.update_settings(colour="red")
    with pytest.raises(ConfigError):
        service.add_device(CloudDevice(serial="N", product_type="1"), account_id="nope")
    service.add_account(DysonAccount(email="b@example.com"))
    with pytest.raises(ConfigError):
        service.add_device(CloudDevice(serial="N", product_type="1"))  # which account?


def test_device_management() -> None:
    service = DysonCloudService(signer=fake_signer, endpoint=ENDPOINT, accounts=[account()])
    assert [d.serial for d in service.devices()] == [TP11, HP04]
    service.remove_device(HP04)
    assert [d.serial for d in service.devices()] == [TP11]
    assert service.device(TP11).root == "438M"
    assert service.update_device(TP11, root_topic="438").root == "438"
    assert service.account("OWNER@example.com") is not None
    assert service.account("x@example.com") is None
    secrets = set(service.static_secrets())
    assert {PASSWORD, OTP, TP11_PASSWORD} <= secrets
    assert service.device(TP11).local_credentials() in secrets


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["email", "mobile", "challengeId", "otpCode", "password", "Serial", "Email", "Password"]
)
BODIES = (
    st.dictionaries(FIELD_NAMES, JSON | st.text(max_size=40) | st.uuids().map(str), max_size=5).map(
        lambda d: json.dumps(d).encode()
    )
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
)
PATHS = st.sampled_from(
    [
        "/v1/provisioningservice/application/Android/version",
        "/v3/userregistration/email/userstatus",
        "/v3/userregistration/email/auth",
        "/v3/userregistration/email/verify",
        "/v3/userregistration/mobile/userstatus",
        "/v3/userregistration/mobile/auth",
        "/v3/userregistration/mobile/verify",
        "/v1/userregistration/authenticate",
        "/v3/manifest",
        "/v2/provisioningservice/manifest",
        "/v2/authorize/iot-credentials",
        f"/v1/assets/devices/{TP11}/pendingrelease",
        f"/v1/messageprocessor/devices/{TP11}/connectionstatus",
    ]
) | st.text(max_size=30).map(lambda s: "/" + s)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    PATHS,
    BODIES,
    st.booleans(),
    st.sampled_from([None, "application/json", "text/plain", "", "application/vnd+json; x=1"]),
    st.sampled_from([None, WORLD_HOST, CHINA_HOST, "::::", "a:b:c"]),
)
def test_fuzz_requests_never_crash_or_500(
    method: str,
    path: str,
    body: bytes,
    logged_in: bool,
    content_type: str | None,
    host: str | None,
) -> None:
    """Every request gets a 2xx or 4xx, never an exception or a 5xx (STYLE.md §8)."""
    c = core(require_version_call=True, rate_limit=1000.0, otp_interval_s=1.0, iot_rate=1000.0)
    c.call("GET", "/v1/provisioningservice/application/Android/version")
    if logged_in:
        c.login()
    headers: list[tuple[str, str]] = []
    if host is not None:
        headers.append(("Host", host))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if c.token is not None:
        headers.append(("Authorization", f"Bearer {c.token}"))
    request = Request(method, path, path, Query(), Headers(headers), body, peer="127.0.0.1:1")
    result = c.service.handle(request, now=c.now, tick=c.tick)
    assert 200 <= result.status < 500
    response = result.response()
    if response.body:
        json.loads(response.body)
    if result.operation is not None:
        assert result.operation in OPERATIONS


# Real HTTPS on loopback


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WorldPKI:
    return WorldPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def signing_key(pki: WorldPKI) -> TokenSigningKey:
    return pki.token_signing_key("dyson")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def cloud(
    pki: WorldPKI, signing_key: TokenSigningKey, recorder: Recorder
) -> AsyncIterator[FakeDysonCloud]:
    fake = FakeDysonCloud(
        signer=signing_key,
        endpoint=ENDPOINT,
        accounts=[account()],
        recorder=recorder,
        ssl=pki.server_context("127.0.0.1", "localhost", *DYSON_API_HOSTS),
    )
    async with fake:
        yield fake


class Https:
    """A blocking HTTPS client (stdlib) for the fake; call it through ``asyncio.to_thread``."""

    def __init__(self, cloud: FakeDysonCloud, ca_file: Path, *, host: str = WORLD_HOST) -> None:
        self.port = cloud.port
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.host = host
        self.token: str | None = None

    def __call__(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        # Connect to 127.0.0.1 but verify the certificate for the real API host (SNI too).
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        wrapped = self.context.wrap_socket(sock, server_hostname=self.host)
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT)
        conn.sock = wrapped
        headers = {"User-Agent": "android client", "Host": self.host}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, json.loads(raw) if raw else None


async def test_https_login_manifest_decrypt_and_iot_credentials(
    cloud: FakeDysonCloud, pki: WorldPKI, signing_key: TokenSigningKey, recorder: Recorder
) -> None:
    client = Https(cloud, pki.ca_file)

    async def call(method: str, target: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(client, method, target, body)

    assert await call("GET", "/v1/provisioningservice/application/Android/version") == (
        200,
        APP_VERSION,
    )
    status, user = await call(
        "POST", "/v3/userregistration/email/userstatus?country=US", {"email": EMAIL}
    )
    assert (status, user["accountStatus"]) == (200, "ACTIVE")
    _, challenge = await call(
        "POST", "/v3/userregistration/email/auth?country=US&culture=en-US", {"email": EMAIL}
    )
    status, login = await call(
        "POST",
        "/v3/userregistration/email/verify?country=US&culture=en-US",
        verify_body(challenge["challengeId"]),
    )
    assert status == 200 and login["tokenType"] == "Bearer"
    client.token = login["token"]
    status, manifest = await call("GET", "/v3/manifest")
    assert status == 200 and [d["serialNumber"] for d in manifest] == [TP11, HP04]
    blob = manifest[0]["connectedConfiguration"]["mqtt"]["localBrokerCredentials"]
    local = decrypt_local_credentials(blob)
    assert (local.serial, local.ap_password_hash) == (TP11, TP11_PASSWORD)
    status, iot = await call("POST", "/v2/authorize/iot-credentials", {"Serial": TP11})
    assert status == 200 and iot["Endpoint"] == ENDPOINT
    creds = iot["IoTCredentials"]
    assert len(creds["TokenSignature"]) == 344
    assert verify_token_signature(
        creds["TokenValue"], creds["TokenSignature"], [signing_key.public_key_pem]
    )
    assert cloud.token_valid(creds["TokenValue"])

    calls = recorder.find("dyson.api.call")
    assert [(e.get("operation"), e.get("status"), e.ok) for e in calls] == [
        ("provision", 200, True),
        ("email-userstatus", 200, True),
        ("email-auth", 200, True),
        ("email-verify", 200, True),
        ("manifest-v3", 200, True),
        ("iot-credentials", 200, True),
    ]
    assert calls[-1].get("serial") == TP11 and calls[-1].get("host") == WORLD_HOST
    assert calls[-1].get("path") == "/v2/authorize/iot-credentials"
    assert recorder.first("tls.handshake", ok=True) is not None
    timeline = json.dumps([e.to_json() for e in recorder], default=str)
    for secret in (
        PASSWORD,
        OTP,
        login["token"],
        TP11_PASSWORD,
        HP04_PASSWORD,
        blob,
        creds["TokenSignature"],
    ):
        assert secret not in timeline


async def test_https_errors_and_faults(
    cloud: FakeDysonCloud, pki: WorldPKI, recorder: Recorder
) -> None:
    client = Https(cloud, pki.ca_file)

    async def call(method: str, target: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(client, method, target, body)

    assert (await call("GET", "/v3/manifest"))[0] == 401
    client.token = "deadbeef-1"
    assert (await call("GET", "/v3/manifest"))[0] == 401
    wrong = await call(
        "POST",
        "/v3/userregistration/email/verify",
        verify_body(str(uuid.uuid4()), password="guess-1", otpCode="999999"),
    )
    assert wrong[0] == 401 and set(wrong[1]) == {"Message"}
    cloud.fail_next(1, 502)
    assert (await call("GET", "/v1/provisioningservice/application/Android/version"))[0] == 502
    fault = await recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="dyson-fail-next")
    assert fault.get("status") == 502
    refused = recorder.find("dyson.api.call", ok=False)
    assert [e.get("reason") for e in refused] == [
        "missing-bearer",
        "unknown-token",
        "unknown-challenge",
        "injected-fault",
    ]
    assert all(e.get("explain") for e in refused)
    timeline = json.dumps([e.to_json() for e in recorder], default=str)
    assert "guess-1" not in timeline and "999999" not in timeline and "deadbeef-1" not in timeline


async def test_https_regional_host_mismatch(cloud: FakeDysonCloud, pki: WorldPKI) -> None:
    """field-bugs.md FB-05 over the wire: login on the .cn host, manifest on .com → 403."""
    china = Https(cloud, pki.ca_file, host=CHINA_HOST)
    _, challenge = await asyncio.to_thread(
        china, "POST", "/v3/userregistration/email/auth", {"email": EMAIL}
    )
    _, login = await asyncio.to_thread(
        china, "POST", "/v3/userregistration/email/verify", verify_body(challenge["challengeId"])
    )
    china.token = login["token"]
    assert (await asyncio.to_thread(china, "GET", "/v3/manifest"))[0] == 200
    world = Https(cloud, pki.ca_file)
    world.token = login["token"]
    assert (await asyncio.to_thread(world, "GET", "/v3/manifest"))[0] == 403


async def test_https_malformed_framing_gets_a_dyson_shaped_answer(cloud: FakeDysonCloud) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cloud.port, ssl=context, server_hostname=WORLD_HOST
    )
    writer.write(b"POST /v3/manifest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    # Read the answer by its Content-Length: the server lingers for input before it closes.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    writer.close()
    assert head.startswith(b"HTTP/1.1 411 ")
    assert json.loads(body) == {"Message": "An error has occurred."}


# Real clients: libdyson-rest (httpx) and libdyson-neon (requests), unmodified


@pytest.fixture
def resolve_dyson_hosts(cloud: FakeDysonCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """``appapi.cp.dyson.{com,cn}:443`` resolve to the fake (a minimal resolver override).

    Both httpx (via ``socket.create_connection``) and urllib3 call ``socket.getaddrinfo``;
    the client still sends the real name as SNI and ``Host`` and verifies the certificate
    for it.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.lower() in DYSON_API_HOSTS and str(port) == "443":
            return [
                (
                    socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    ("127.0.0.1", cloud.port),
                )
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def trust_world_ca(pki: WorldPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx reads ``SSL_CERT_FILE``, requests ``REQUESTS_CA_BUNDLE`` (DESIGN.md: sandbox env)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))


def run_libdyson_rest(country: str, serial: str) -> tuple[list[Any], str, Any]:
    rest = pytest.importorskip("libdyson_rest")
    with rest.DysonClient(email=EMAIL, password=PASSWORD, country=country) as client:
        assert client.authenticate(OTP) is True
        found = client.get_devices()
        device = next(d for d in found if d.serial_number == serial)
        assert device.connected_configuration is not None
        mqtt = device.connected_configuration.mqtt
        assert mqtt is not None
        password = client.decrypt_local_credentials(mqtt.local_broker_credentials, serial)
        iot = client.get_iot_credentials(serial)
    return found, password, iot


@pytest.mark.interop
@pytest.mark.usefixtures("resolve_dyson_hosts", "trust_world_ca")
async def test_libdyson_rest_logs_in_lists_decrypts_and_gets_iot_credentials(
    cloud: FakeDysonCloud, signing_key: TokenSigningKey, recorder: Recorder
) -> None:
    pytest.importorskip("libdyson_rest")
    found, password, iot = await asyncio.to_thread(run_libdyson_rest, "US", TP11)
    assert [d.serial_number for d in found] == [TP11, HP04]
    tp11 = found[0]
    assert (tp11.type, tp11.variant, tp11.model) == ("438", "M", "TP11")
    assert tp11.connected_configuration.mqtt.mqtt_root_topic_level == "438M"
    assert password == TP11_PASSWORD
    assert iot.endpoint == ENDPOINT
    creds = iot.iot_credentials
    assert creds.custom_authorizer_name == DYSON_AUTHORIZER_NAME and creds.token_key == "token"
    assert creds.client_id == creds.token_value
    assert verify_token_signature(
        str(creds.token_value), creds.token_signature, [signing_key.public_key_pem]
    )
    assert cloud.token_valid(str(creds.token_value))
    hosts = {e.get("host") for e in recorder.find("dyson.api.call")}
    assert hosts == {WORLD_HOST}


@pytest.mark.interop
@pytest.mark.usefixtures("resolve_dyson_hosts", "trust_world_ca")
async def test_libdyson_rest_china_host(cloud: FakeDysonCloud, recorder: Recorder) -> None:
    pytest.importorskip("libdyson_rest")
    _, password, _ = await asyncio.to_thread(run_libdyson_rest, "CN", HP04)
    assert password == HP04_PASSWORD
    assert {e.get("host") for e in recorder.find("dyson.api.call")} == {CHINA_HOST}


@pytest.mark.interop
@pytest.mark.usefixtures("resolve_dyson_hosts", "trust_world_ca")
async def test_libdyson_rest_sees_the_field_bugs(cloud: FakeDysonCloud) -> None:
    """FB-09: one unknown enum value fails the whole list; FB-04: so does a missing key."""
    rest = pytest.importorskip("libdyson_rest")
    cloud.update_device(HP04, remote_broker_type="quic")

    def devices_error() -> BaseException:
        with rest.DysonClient(email=EMAIL, password=PASSWORD) as client:
            client.authenticate(OTP)
            try:
                client.get_devices()
            except Exception as exc:
                return exc
        raise AssertionError("get_devices accepted the manifest")

    error = await asyncio.to_thread(devices_error)
    assert isinstance(error, rest.DysonAPIError)
    assert "'quic' is not a valid RemoteBrokerType" in str(error)
    cloud.update_device(HP04, remote_broker_type="mqtts", connection_category=None)
    error = await asyncio.to_thread(devices_error)
    assert "connectionCategory" in str(error)


@pytest.mark.interop
@pytest.mark.usefixtures("resolve_dyson_hosts", "trust_world_ca")
async def test_libdyson_rest_errors(cloud: FakeDysonCloud) -> None:
    rest = pytest.importorskip("libdyson_rest")

    def login(otp: str) -> BaseException | None:
        with rest.DysonClient(email=EMAIL, password=PASSWORD) as client:
            try:
                client.authenticate(otp)
            except Exception as exc:
                return exc
        return None

    assert isinstance(await asyncio.to_thread(login, "000000"), rest.DysonAuthError)
    cloud.fail_next(1, 503, operation="email-userstatus")
    assert isinstance(await asyncio.to_thread(login, OTP), rest.DysonConnectionError)
    assert await asyncio.to_thread(login, OTP) is None


def run_libdyson_neon() -> list[Any]:
    account_module = pytest.importorskip("libdyson.cloud.account")
    account = account_module.DysonAccount()
    verify: Callable[[str, str], dict[str, Any]] = account.login_email_otp(EMAIL, "US")
    auth_info = verify(OTP, PASSWORD)
    assert auth_info["tokenType"] == "Bearer"
    found: list[Any] = account.devices()
    return found


@pytest.mark.interop
@pytest.mark.usefixtures("resolve_dyson_hosts", "trust_world_ca")
async def test_libdyson_neon_logs_in_and_lists_devices_from_the_v2_manifest(
    cloud: FakeDysonCloud, recorder: Recorder
) -> None:
    pytest.importorskip("libdyson")
    found = await asyncio.to_thread(run_libdyson_neon)
    by_serial = {d.serial: d for d in found}
    assert set(by_serial) == {TP11, HP04}
    assert by_serial[TP11].credential == TP11_PASSWORD
    assert by_serial[HP04].credential == HP04_PASSWORD
    # libdyson-neon reads the variant from the firmware version prefix (v2 has no variant).
    # Note: its get_device_type() (1.6.0) still answers "438" for it, the wrong topic root
    # of field-bugs.md FB-11; callers must pass "438M" to libdyson.get_device themselves.
    assert (by_serial[TP11].product_type, by_serial[TP11].variant) == ("438", "M")
    assert by_serial[HP04].variant is None
    operations = [e.get("operation") for e in recorder.find("dyson.api.call")]
    assert "manifest-v2" in operations and "provision" in operations


# The whole cloud path: IoT credentials from the fake cloud, accepted by the fake gateway


async def cloud_iot_credentials(cloud: FakeDysonCloud, ca_file: Path) -> dict[str, Any]:
    client = Https(cloud, ca_file)
    _, challenge = await asyncio.to_thread(
        client, "POST", "/v3/userregistration/email/auth", {"email": EMAIL}
    )
    _, login = await asyncio.to_thread(
        client, "POST", "/v3/userregistration/email/verify", verify_body(challenge["challengeId"])
    )
    client.token = login["token"]
    status, iot = await asyncio.to_thread(
        client, "POST", "/v2/authorize/iot-credentials", {"Serial": TP11}
    )
    assert status == 200
    return dict(iot)


def dyson_paho(world: World, iot: dict[str, Any]) -> PahoClient:
    """A client as hass-dyson builds it (dyson.md §7): the credentials as upgrade headers."""
    creds = iot["IoTCredentials"]
    return PahoClient(
        creds["ClientId"],
        websocket=True,
        ca_file=str(world.pki.ca_file),
        headers={
            "Host": iot["Endpoint"],
            creds["TokenKey"]: creds["TokenValue"],
            "X-Amz-CustomAuthorizer-Name": creds["CustomAuthorizerName"],
            "X-Amz-CustomAuthorizer-Signature": creds["TokenSignature"],
        },
    )


@pytest.mark.interop
async def test_paho_connects_to_the_gateway_with_the_cloud_credentials_until_they_expire() -> None:
    """aws-iot.md §2.5 end to end; field-bugs.md FB-22: a replayed expired token is refused."""
    async with World(WorldConfig(cognito=False)) as world:
        key = world.pki.token_signing_key("dyson-cloud")
        cloud = FakeDysonCloud(
            signer=key,
            endpoint=world.gateway.endpoint,
            accounts=[account()],
            settings=DysonCloudSettings(token_ttl_s=60),
            recorder=world.recorder,
            ssl=world.pki.server_context("127.0.0.1", "localhost", *DYSON_API_HOSTS),
        )
        world.gateway.add_authorizer(cloud.authorizer(policy_documents=(world.default_policy,)))
        async with cloud:
            iot = await cloud_iot_credentials(cloud, world.pki.ca_file)
            assert iot["Endpoint"] == world.gateway.endpoint
            client_id = iot["IoTCredentials"]["ClientId"]

            paho = dyson_paho(world, iot)
            await paho.connect("127.0.0.1", world.gateway.wss_port)
            assert (await paho.next("connect", "error")).rc == 0
            await paho.close()
            verdict = await world.recorder.wait_for(
                "auth.verdict", timeout=TIMEOUT, stage="connect", ok=True
            )
            assert verdict.get("client_id") == client_id

            world.clock.shift(60)  # the token's lifetime, compressed by moving the clock
            assert not cloud.token_valid(iot["IoTCredentials"]["TokenValue"])
            since = len(world.recorder)
            replay = dyson_paho(world, iot)
            await replay.connect("127.0.0.1", world.gateway.wss_port)
            refused = await world.recorder.wait_for(
                "auth.verdict", timeout=TIMEOUT, since=since, stage="connect"
            )
            assert refused.ok is False
            why = await world.recorder.wait_for(
                "dyson.api.authorizer", timeout=TIMEOUT, since=since, ok=False
            )
            assert (why.reason, why.get("serial"), why.conn) == (
                "token-expired",
                TP11,
                refused.conn,
            )
            outcome = await replay.next("connect", "disconnect", "error")
            assert not (outcome.what == "connect" and outcome.rc == 0)
            replay.client.loop_stop()

            # A correct client (thoukydides) fetches fresh credentials before reconnecting.
            fresh = dyson_paho(world, await cloud_iot_credentials(cloud, world.pki.ca_file))
            await fresh.connect("127.0.0.1", world.gateway.wss_port)
            assert (await fresh.next("connect", "error")).rc == 0
            await fresh.close()
        timeline = json.dumps([e.to_json() for e in world.recorder], default=str)
        assert iot["IoTCredentials"]["TokenSignature"] not in timeline


def test_authorizer_lambda_accepts_only_live_issued_tokens(signing_key: TokenSigningKey) -> None:
    recorder = Recorder()
    cloud = FakeDysonCloud(
        signer=signing_key,
        endpoint=ENDPOINT,
        accounts=[account()],
        settings=DysonCloudSettings(token_ttl_s=10),
        recorder=recorder,
    )
    seen: list[str] = []

    def policies(issued: Any) -> tuple[str, ...]:
        seen.append(issued.serial)
        return ('{"Version": "2012-10-17", "Statement": []}',)

    authorizer = cloud.authorizer(policy_documents=policies, disconnect_after_s=600)
    assert authorizer.name == DYSON_AUTHORIZER_NAME and authorizer.token_key == "token"
    assert authorizer.signing_enabled is True

    c = Core(cloud.service, now=cloud.clock.now())
    c.login()
    token = c.iot().body["IoTCredentials"]["TokenValue"]

    def invoke(value: str | None) -> Any:
        event = custom.AuthorizerEvent(token=value, signature_verified=True, connection_id="c9")
        answer = authorizer.handler(event)
        assert isinstance(answer, custom.AuthorizerResponse)
        return answer

    accepted = invoke(token)
    assert accepted.is_authenticated and accepted.principal_id == token.replace("-", "")
    assert accepted.disconnect_after_seconds == 600 and seen == [TP11]
    assert invoke("not-issued").is_authenticated is False
    assert invoke(None).is_authenticated is False
    cloud.clock.shift(10)
    assert invoke(token).is_authenticated is False
    cloud.clock.shift(-10)
    assert cloud.revoke_iot_tokens() == 1
    assert invoke(token).is_authenticated is False
    reasons = [(e.reason, e.conn) for e in recorder.find("dyson.api.authorizer")]
    assert reasons == [
        ("ok", "c9"),
        ("unknown-token", "c9"),
        ("unknown-token", "c9"),
        ("token-expired", "c9"),
        ("token-revoked", "c9"),
    ]
    with pytest.raises(ConfigError):
        FakeDysonCloud(signer=fake_signer, endpoint=ENDPOINT).authorizer(policy_documents=())
    callable_signed = FakeDysonCloud(signer=fake_signer, endpoint=ENDPOINT).authorizer(
        policy_documents=(), public_keys=(signing_key.public_key_pem,)
    )
    assert callable_signed.name == DYSON_AUTHORIZER_NAME


async def test_shell_configuration_passthrough(cloud: FakeDysonCloud, recorder: Recorder) -> None:
    assert cloud.url == f"https://127.0.0.1:{cloud.port}"
    assert (cloud.endpoint, cloud.authorizer_name, cloud.token_key) == (
        ENDPOINT,
        DYSON_AUTHORIZER_NAME,
        "token",
    )
    assert cloud.account(EMAIL) is not None and len(cloud.accounts) == 1
    section = cloud.descriptor()
    assert section["api_url"] == cloud.url
    assert (section["email"], section["password"], section["otp"]) == (EMAIL, PASSWORD, OTP)
    assert section["devices"][0] == {
        "serial": TP11,
        "product_type": "438",
        "root_topic": "438M",
        "local_password": TP11_PASSWORD,
    }
    secret = new_ap_password_hash()
    cloud.add_device(
        CloudDevice(serial="NEW-US-ABC1234A", product_type="520", local_password=secret)
    )
    assert cloud.device("NEW-US-ABC1234A").product_type == "520"
    cloud.update_device("NEW-US-ABC1234A", name="Desk")
    cloud.remove_device("NEW-US-ABC1234A")
    cloud.add_account(DysonAccount(email="second@example.com", password="pw-second", otp="777777"))
    assert cloud.update_settings(token_ttl_s=5).token_ttl_s == 5 == cloud.settings.token_ttl_s
    cloud.set_connection_status(TP11, "disconnected")
    assert cloud.revoke_bearer_tokens() == 0 and cloud.revoke_iot_tokens() == 0
    assert cloud.iot_token("nope") is None
    recorder.record("probe", text=f"{secret} pw-second 777777")
    assert recorder.events[-1].get("text") == "<redacted> <redacted> <redacted>"
