"""The verifier against URLs signed by real third-party signers (aws-iot.md §1.5-§1.7, §7).

awscrt's own signer (what awsiotsdk v2 uses) must pass; botocore's ``SigV4QueryAuth`` signs
the session token and must be refused as AWS IoT refuses it; a transliteration of the
field design's signer (empty canonical query) must be refused with its hint. Every refusal
carries AWS's exact 403 message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import pytest

from harness.auth.credentials import Credential, CredentialStore
from harness.auth.sigv4 import (
    MSG_SIGNATURE_MISMATCH,
    MSG_TOKEN_EXPIRED,
    SigV4Verdict,
    forbidden_body,
    format_amz_date,
    parse_amz_date,
    parse_query,
    verify_upgrade,
)
from tests.timing import TIMEOUT

ENDPOINT = "a16523t7iy5uyg-ats.iot.us-east-1.amazonaws.com"
REGION = "us-east-1"
NOW = 1_572_372_212.0  # 20191029T180332Z, the 2019 awscrt trace (aws-iot.md §1.1)
HANDSHAKE = (
    ("Host", ENDPOINT),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Protocol", "mqtt"),
)


@pytest.fixture
def store() -> CredentialStore:
    return CredentialStore()


@pytest.fixture
def temporary(store: CredentialStore) -> Credential:
    """A Cognito-style temporary key, valid for an hour from NOW."""
    return store.mint_temporary(now=NOW, lifetime=3600, principal="us-east-1:identity")


def crt_sign(
    credential: Credential,
    *,
    at: float = NOW,
    headers: Sequence[tuple[str, str]] = HANDSHAKE,
    omit_session_token: bool = True,
) -> str:
    """Sign the upgrade request with awscrt's own signer, as awsiotsdk v2 does (§1.5)."""
    crt_auth = pytest.importorskip("awscrt.auth")
    crt_http = pytest.importorskip("awscrt.http")
    provider = crt_auth.AwsCredentialsProvider.new_static(
        credential.access_key_id, credential.secret_access_key, credential.session_token
    )
    config = crt_auth.AwsSigningConfig(
        algorithm=crt_auth.AwsSigningAlgorithm.V4,
        signature_type=crt_auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS,
        credentials_provider=provider,
        region=REGION,
        service="iotdevicegateway",
        date=datetime.fromtimestamp(at, UTC),
        omit_session_token=omit_session_token,
    )
    request = crt_http.HttpRequest("GET", "/mqtt", headers=crt_http.HttpHeaders(list(headers)))
    signed = crt_auth.aws_sign_request(request, config).result(TIMEOUT)
    target: str = signed.path
    return target


def boto_presign(credential: Credential) -> tuple[str, float]:
    """Presign ``wss://…/mqtt`` with botocore's ``SigV4QueryAuth`` (the real clock; the
    signing time is read back from the URL)."""
    botocore_auth = pytest.importorskip("botocore.auth")
    awsrequest = pytest.importorskip("botocore.awsrequest")
    credentials = pytest.importorskip("botocore.credentials")
    signer = botocore_auth.SigV4QueryAuth(
        credentials.Credentials(
            credential.access_key_id, credential.secret_access_key, credential.session_token
        ),
        "iotdevicegateway",
        REGION,
    )
    request = awsrequest.AWSRequest(method="GET", url=f"https://{ENDPOINT}/mqtt")
    signer.add_auth(request)
    url = urlsplit(request.url)
    params = dict((k.decode(), v.decode()) for k, v in parse_query(url.query))
    signed_at = parse_amz_date(params["X-Amz-Date"])
    assert signed_at is not None
    return f"{url.path}?{url.query}", signed_at


def field_design_presign(credential: Credential, *, at: float = NOW) -> str:
    """The field design's JavaScript signer (field-designs/000 §4), line for line in Python:
    an empty canonical query, ``URLSearchParams`` for the URL, token after the signature."""
    timestamp = format_amz_date(at)
    date = timestamp[:8]
    scope = f"{date}/{REGION}/iotdevicegateway/aws4_request"
    canonical = "\n".join(
        ["GET", "/mqtt", "", f"host:{ENDPOINT}\n", "host", hashlib.sha256(b"").hexdigest()]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )

    def mac(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    key = mac(f"AWS4{credential.secret_access_key}".encode(), date)
    for part in (REGION, "iotdevicegateway", "aws4_request"):
        key = mac(key, part)
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{credential.access_key_id}/{scope}",
        "X-Amz-Date": timestamp,
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
        "X-Amz-Security-Token": credential.session_token or "",
    }
    return "/mqtt?" + urlencode(params)


def verify(
    store: CredentialStore,
    target: str,
    *,
    now: float = NOW,
    headers: Sequence[tuple[str, str]] = HANDSHAKE,
    accept_signed_token: bool = False,
) -> SigV4Verdict:
    return verify_upgrade(
        method="GET",
        target=target,
        headers=headers,
        now=now,
        lookup=store.lookup,
        region=REGION,
        accept_signed_token=accept_signed_token,
    )


def assert_refused(verdict: SigV4Verdict, credential: Credential, target: str) -> None:
    assert not verdict.ok and verdict.credential is None
    signature = target.split("X-Amz-Signature=")[1][:64]
    for secret in (credential.session_token, credential.secret_access_key, signature):
        assert secret and secret not in verdict.explain and secret not in verdict.canonical_request


# --- awscrt: the IoT form passes ----------------------------------------------------------


def test_awscrt_signed_upgrade_passes(store: CredentialStore, temporary: Credential) -> None:
    target = crt_sign(temporary)
    assert "X-Amz-SignedHeaders=connection%3Bhost" in target  # as measured (§1.2)
    verdict = verify(store, target, now=NOW + 299)
    assert (verdict.ok, verdict.reason, verdict.hint) == (True, "ok", None)
    assert verdict.credential == temporary
    assert verdict.signed_headers == ("connection", "host")
    assert verdict.service == "iotdevicegateway"


def test_awscrt_host_only_and_static_key(store: CredentialStore) -> None:
    static = store.add_static()
    target = crt_sign(static, headers=[("host", ENDPOINT)])
    assert "X-Amz-SignedHeaders=host&" in target and "Security-Token" not in target
    assert verify(store, target).ok


def test_awscrt_without_omit_session_token_is_token_signed(
    store: CredentialStore, temporary: Credential
) -> None:
    target = crt_sign(temporary, omit_session_token=False)
    verdict = verify(store, target)
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", "token-signed")
    assert verify(store, target, accept_signed_token=True).ok


# --- botocore SigV4QueryAuth: the token is signed -----------------------------------------


def test_botocore_presigned_url_with_token_is_refused(
    store: CredentialStore, temporary: Credential
) -> None:
    # botocore signs at the real time: a token that does not expire keeps this about signing.
    temporary = store.add(replace(temporary, expires_at=None))
    target, signed_at = boto_presign(temporary)
    assert "X-Amz-Expires=3600" in target
    verdict = verify(store, target, now=signed_at)
    assert (verdict.ok, verdict.reason, verdict.hint) == (
        False,
        "signature-mismatch",
        "token-signed",
    )
    assert verdict.message == MSG_SIGNATURE_MISMATCH
    assert "X-Amz-Security-Token=<redacted>" in verdict.explain
    assert_refused(verdict, temporary, target)
    lenient = verify(store, target, now=signed_at, accept_signed_token=True)
    assert (lenient.ok, lenient.hint) == (True, "token-signed")


def test_botocore_presigned_url_without_token_passes(store: CredentialStore) -> None:
    static = store.add_static()
    target, signed_at = boto_presign(static)
    assert verify(store, target, now=signed_at).ok


# --- The field design's signer: empty canonical query ---------------------------------------


def test_field_design_empty_canonical_query_is_refused(
    store: CredentialStore, temporary: Credential
) -> None:
    target = field_design_presign(temporary)
    verdict = verify(store, target)
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", "empty-canonical-query")
    assert verdict.message == MSG_SIGNATURE_MISMATCH
    assert len(forbidden_body(verdict.message, "0" * 36)) == 241
    assert_refused(verdict, temporary, target)


# --- Expiry, skew, Host port ------------------------------------------------------------------


def test_expired_temporary_credentials(store: CredentialStore) -> None:
    short = store.mint_temporary(now=NOW, lifetime=60, principal="us-east-1:identity")
    target = crt_sign(short, at=NOW + 100)
    verdict = verify(store, target, now=NOW + 120)
    assert (verdict.reason, verdict.message) == ("token-expired", MSG_TOKEN_EXPIRED)
    assert verdict.message == "The security token included in the request is expired"
    assert_refused(verdict, short, target)
    assert verify(store, crt_sign(short, at=NOW + 30), now=NOW + 59).ok


def test_clock_at_1970_is_clock_skew(store: CredentialStore, temporary: Credential) -> None:
    """odelot/aws-mqtt-websockets#54: a device clock never set (aws-iot.md §1.7, FB-29)."""
    target = crt_sign(temporary, at=parse_amz_date("19700101T080004Z") or 0.0)
    verdict = verify(store, target)
    assert verdict.reason == "clock-skew"
    assert verdict.message == (
        "Signature expired: 19700101T080004Z is now earlier than 20191029T175832Z "
        "(20191029T180332Z - 5 min.)"
    )
    assert len(forbidden_body(verdict.message, "5ec5d2b1-9ed6-4c53-a14a-0123456789ab")) == 163


def test_clock_ahead_is_clock_skew(store: CredentialStore, temporary: Credential) -> None:
    verdict = verify(store, crt_sign(temporary, at=NOW + 301))
    assert verdict.reason == "clock-skew"
    assert verdict.message == (
        "Signature not yet current: 20191029T180833Z is still later than 20191029T180832Z "
        "(20191029T180332Z + 5 min.)"
    )


def test_host_with_port_sent_but_signed_without(
    store: CredentialStore, temporary: Credential
) -> None:
    """paho-mqtt 1.6.1 sends ``Host: <endpoint>:443`` whatever was signed (FB-28)."""
    target = crt_sign(temporary, headers=[("Host", ENDPOINT)])
    paho_headers = [("Host", f"{ENDPOINT}:443"), *HANDSHAKE[1:]]
    verdict = verify(store, target, headers=paho_headers)
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", "host-with-port")
    assert "host:" + ENDPOINT + ":443\n" in verdict.canonical_request
    assert_refused(verdict, temporary, target)
