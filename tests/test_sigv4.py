"""harness.auth.sigv4: presigning in each client's style, and verification as AWS IoT does it."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.auth.credentials import Credential
from harness.auth.sigv4 import (
    IOT_SERVICES,
    MSG_SIGNATURE_MISMATCH,
    MSG_TOKEN_EXPIRED,
    MSG_TOKEN_INVALID,
    MSG_UNKNOWN_KEY,
    SigV4Verdict,
    canonical_query,
    canonical_uri,
    forbidden_body,
    format_amz_date,
    has_sigv4_params,
    parse_amz_date,
    parse_query,
    presign_url,
    signing_key,
    uri_encode,
    verify_upgrade,
)
from harness.errors import MalformedRequest

ENDPOINT = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
REGION = "eu-west-1"
NOW = 1_760_000_000.0  # 2025-10-09T08:53:20Z
STATIC = Credential(
    access_key_id="AKIAIOSFODNN7EXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    principal="alice",
)
TEMP = Credential(
    access_key_id="ASIAQWERTYUIOPASDFGH",
    secret_access_key="9drTJvcXLB89EXAMPLELB8923FB892xMFI+/abc",
    session_token="IQoJb3JpZ2luX2VjEXAMPLE/token+with/slashes+and+plus==",
    expires_at=NOW + 3600,
    principal="eu-west-1:identity",
)
KEYS = {c.access_key_id: c for c in (STATIC, TEMP)}
SECRETS = (TEMP.session_token or "", TEMP.secret_access_key, STATIC.secret_access_key)
TRACE_ID = "5ec5d2b1-9ed6-4c53-a14a-0123456789ab"
assert len(TRACE_ID) == 36


def target_of(url: str) -> str:
    """``wss://host[:port]/mqtt?…`` → ``/mqtt?…`` (what arrives in the request line)."""
    rest = url.split("://", 1)[1]
    return rest[rest.index("/") :]


def upgrade_headers(host: str = ENDPOINT, **extra: str) -> list[tuple[str, str]]:
    """Headers of a real upgrade request, mixed case, as a WebSocket client sends them."""
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "mqtt"),
    ]
    return headers + list(extra.items())


def verify(
    target: str,
    *,
    headers: Sequence[tuple[str, str]] | None = None,
    now: float = NOW,
    method: str = "GET",
    lookup: Callable[[str], Credential | None] = KEYS.get,
    accept_signed_token: bool = False,
) -> SigV4Verdict:
    return verify_upgrade(
        method=method,
        target=target,
        headers=upgrade_headers() if headers is None else headers,
        now=now,
        lookup=lookup,
        region=REGION,
        accept_signed_token=accept_signed_token,
    )


def url_for(credential: Credential = TEMP, **options: object) -> str:
    return presign_url(
        host=ENDPOINT,
        credential=credential,
        region=REGION,
        now=NOW,
        **options,  # type: ignore[arg-type]
    )


def assert_no_secrets(verdict: SigV4Verdict, *extra: str) -> None:
    shown = " ".join(
        (verdict.explain, verdict.canonical_request, verdict.string_to_sign, repr(verdict))
    )
    for secret in (*SECRETS, *extra):
        if secret:
            assert secret not in shown
            assert uri_encode(secret) not in shown


# --- Primitives (§1.2-§1.4) -----------------------------------------------------------


def test_uri_encode_keeps_only_unreserved() -> None:
    assert uri_encode("AZaz09-_.~") == "AZaz09-_.~"
    assert uri_encode("a/b;c d+e=ሴ") == "a%2Fb%3Bc%20d%2Be%3D%E1%88%B4"
    assert uri_encode("/a b/", keep_slash=True) == "/a%20b/"


def test_parse_query_decodes_and_keeps_plus_literal() -> None:
    assert parse_query("a=1&b&&c=x%2Fy+z&=v") == (
        (b"a", b"1"),
        (b"b", b""),
        (b"c", b"x/y+z"),
        (b"", b"v"),
    )
    for bad in ("a=%", "a=%2", "a=%zz", "%G0=1"):
        with pytest.raises(MalformedRequest):
            parse_query(bad)


def test_canonical_query_sorts_encoded_names_then_values() -> None:
    pairs = parse_query("b=2&a=2&a=1&A=3&X-Amz-Date=1&%E1%88%B4=x")
    assert canonical_query(pairs) == "%E1%88%B4=x&A=3&X-Amz-Date=1&a=1&a=2&b=2"


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("/mqtt", "/mqtt"),
        ("", "/"),
        ("//example//", "/example/"),
        ("/a/./b/../c", "/a/c"),
        ("/../..", "/"),
        ("/a b", "/a%20b"),
        ("/a%20b", "/a%2520b"),  # double encoding, as CRT does by default (§1.2)
    ],
)
def test_canonical_uri(path: str, normalized: str) -> None:
    assert canonical_uri(path) == normalized


def test_amz_dates() -> None:
    assert format_amz_date(NOW + 0.9) == "20251009T085320Z"
    assert parse_amz_date("20251009T085320Z") == NOW
    for bad in ("20251009T085320", "2025-10-09T08:53:20Z", "20251309T085320Z", "00000101T000000Z"):
        assert parse_amz_date(bad) is None


def test_signing_key_is_cached() -> None:
    signing_key.cache_clear()
    target = target_of(url_for(STATIC))
    for _ in range(3):
        assert verify(target).ok
    info = signing_key.cache_info()
    assert info.misses == 1 and info.hits == 3


def test_has_sigv4_params() -> None:
    assert has_sigv4_params(target_of(url_for()))
    assert not has_sigv4_params("/mqtt?x-amz-customauthorizer-name=a&token=b")
    assert not has_sigv4_params("/mqtt")


# --- Known vectors from the spec --------------------------------------------------------

# AWSIoTPythonSDK v1 `test/core/protocol/connection/test_sigv4_core.py` (aws-iot.md §1.10):
# fake credentials published in the SDK's test, 20170628T204845Z, `iotdata`, 86400.
V1_KEY = "TRUSTMETHISIDISFAKE0"
V1_SECRET = "trustMeThisSecretKeyIsSoFakeAaBbCc00Dd11"
V1_TOKEN = (
    "FQoDYXdzEGcaDNSwicOypVyhiHj4JSLUAXTsOXu1YGT/OaltzXujI+cwvEA3zPoUdebHOkaUmRBO3o34J/3r2/+hBq"
    "ZZNSpyzKsBge1MXPwbM2G5ojz3aY4Qj+zD3hEMu9nxk3rhKkmTQWLoB4ZrPRG6GJGkoLMAL1sSEh9kqbHN6XIt3F2"
    "E+Wn2BhDoGA7ZsXSg+pgIntkSZcLT7pCX8pTEaEtRBhJQVc5GTYhG9y9mgjpeVRsbEj8yDJzSWDpLGgR7APSvCFX2"
    "H+DwsKM564Z4IzjpbntIlLXdQwOytd65dgTlWZkmmYpTwVh+KMq+0MoF"
)
V1_HOST = "data.iot.us-east-1.amazonaws.com"
V1_URL = (
    "wss://data.iot.us-east-1.amazonaws.com:443/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Cre"
    "dential=TRUSTMETHISIDISFAKE0%2F20170628%2Fus-east-1%2Fiotdata%2Faws4_request&X-Amz-Date=20"
    "170628T204845Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=b79a4d7e31ccbf"
    "96b22d93cce1b500b9ee611ec966159547e140ae32e4dcebed&X-Amz-Security-Token=FQoDYXdzEGcaDNSwic"
    "OypVyhiHj4JSLUAXTsOXu1YGT/OaltzXujI%2BcwvEA3zPoUdebHOkaUmRBO3o34J/3r2/%2BhBqZZNSpyzKsBge1M"
    "XPwbM2G5ojz3aY4Qj%2BzD3hEMu9nxk3rhKkmTQWLoB4ZrPRG6GJGkoLMAL1sSEh9kqbHN6XIt3F2E%2BWn2BhDoGA"
    "7ZsXSg%2BpgIntkSZcLT7pCX8pTEaEtRBhJQVc5GTYhG9y9mgjpeVRsbEj8yDJzSWDpLGgR7APSvCFX2H%2BDwsKM5"
    "64Z4IzjpbntIlLXdQwOytd65dgTlWZkmmYpTwVh%2BKMq%2B0MoF"
)
V1_CRED = Credential(V1_KEY, V1_SECRET, V1_TOKEN)
V1_NOW = 1498682925.0  # 20170628T204845Z


def v1_url(**options: object) -> str:
    return presign_url(
        host=f"{V1_HOST}:443",
        host_header=V1_HOST,
        credential=V1_CRED,
        region="us-east-1",
        now=V1_NOW,
        service="iotdata",
        expires=86400,
        layout="sdk-v1",
        token_encoding="quote",
        **options,  # type: ignore[arg-type]
    )


def test_v1_python_sdk_url_reproduced_byte_for_byte() -> None:
    assert parse_amz_date("20170628T204845Z") == V1_NOW
    assert v1_url() == V1_URL


def test_v1_python_sdk_url_verifies() -> None:
    verdict = verify_upgrade(
        method="GET",
        target=target_of(V1_URL),
        headers=[("Host", V1_HOST)],
        now=V1_NOW + 60,
        lookup={V1_KEY: V1_CRED}.get,
        region="us-east-1",
    )
    assert (verdict.ok, verdict.reason, verdict.service) == (True, "ok", "iotdata")


def test_empty_canonical_query_signature_matches_spec() -> None:
    """§1.3: the field design's empty canonical query yields 8d6ac69d…27b8 for these inputs."""
    signature = v1_url(empty_canonical_query=True).split("X-Amz-Signature=")[1][:64]
    assert signature.startswith("8d6ac69d") and signature.endswith("27b8")


# --- 403 body (§1.9) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "length"),
    [
        pytest.param(MSG_SIGNATURE_MISMATCH, 241, id="signature-mismatch"),
        pytest.param(
            "Signature expired: 19700101T080004Z is now earlier than 20191029T175832Z "
            "(20191029T180332Z - 5 min.)",
            163,
            id="clock-skew",
        ),
        pytest.param("Credential should be scoped to a valid region, not ''. ", 118, id="region"),
    ],
)
def test_forbidden_body_lengths_match_observed_403s(message: str, length: int) -> None:
    body = forbidden_body(message, TRACE_ID)
    assert len(body) == length
    assert body == ('{"message":"' + message + '","traceId":"' + TRACE_ID + '"}').encode()


def test_verdict_messages_give_observed_body_lengths() -> None:
    skewed = verify(target_of(presign_url(host=ENDPOINT, credential=TEMP, region=REGION, now=0)))
    assert len(forbidden_body(skewed.message, TRACE_ID)) == 163
    no_region = verify(target_of(presign_url(host=ENDPOINT, credential=TEMP, region="", now=NOW)))
    assert no_region.reason == "bad-scope"
    assert len(forbidden_body(no_region.message, TRACE_ID)) == 118


# --- Client styles (§1.10, §7) ----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="awscrt-2019-host-only"),
        pytest.param({"signed_headers": {"connection": "Upgrade"}}, id="awscrt-0.36"),
        pytest.param({"service": "iotdata", "expires": 86400, "layout": "sdk-v1"}, id="v1-py"),
        pytest.param({"layout": "sdk-v1", "token_encoding": "quote"}, id="quote-token"),
        pytest.param({"expires": 60}, id="short-expires"),
    ],
)
def test_correct_client_styles_are_accepted(options: dict[str, object]) -> None:
    for credential in (STATIC, TEMP):
        verdict = verify(target_of(url_for(credential, **options)))
        assert verdict.ok and verdict.reason == "ok" and verdict.message == ""
        assert verdict.credential == credential and verdict.hint is None
        assert verdict.access_key_id == credential.access_key_id
        assert verdict.region == REGION
        assert_no_secrets(verdict)


def test_awscrt_layout_puts_token_before_signature() -> None:
    query = url_for(signed_headers={"connection": "Upgrade"}).split("?", 1)[1]
    names = [part.split("=", 1)[0] for part in query.split("&")]
    assert names == [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
    ]
    assert "X-Amz-SignedHeaders=connection%3Bhost" in query


def test_param_order_means_nothing() -> None:
    path, query = target_of(url_for(expires=300)).split("?")
    parts = query.split("&")
    for shuffled in (parts[::-1], parts[3:] + parts[:3]):
        assert verify(f"{path}?{'&'.join(shuffled)}").ok


def test_header_values_trimmed_and_any_case() -> None:
    target = target_of(url_for(signed_headers={"connection": "Upgrade", "x-extra": "a  b"}))
    headers = [
        ("HOST", f"  {ENDPOINT} "),
        ("connection", " Upgrade\t"),
        ("X-Extra", "a \t b"),
    ]
    assert verify(target, headers=headers).ok
    lowered = [("host", ENDPOINT), ("connection", "upgrade"), ("x-extra", "a b")]
    assert verify(target, headers=lowered).reason == "signature-mismatch"  # case is kept


def test_repeated_headers_are_joined_in_order() -> None:
    target = target_of(url_for(signed_headers={"x-multi": "1,2"}))
    assert verify(target, headers=[("Host", ENDPOINT), ("X-Multi", "1"), ("x-multi", "2")]).ok
    swapped = [("Host", ENDPOINT), ("x-multi", "2"), ("x-multi", "1")]
    assert verify(target, headers=swapped).reason == "signature-mismatch"


def test_raw_plus_in_token_stays_literal() -> None:
    target = target_of(url_for())
    token = TEMP.session_token or ""
    raw = target.replace(uri_encode(token), token)  # '/', '+', '=' all raw
    assert "+" in raw.split("X-Amz-Security-Token=")[1]
    assert verify(raw).ok
    as_space = target.replace(uri_encode(token), token.replace("+", "%20"))
    assert verify(as_space).reason == "token-invalid"


def test_missing_signed_header_is_a_mismatch() -> None:
    target = target_of(url_for(signed_headers={"connection": "Upgrade"}))
    verdict = verify(target, headers=[("Host", ENDPOINT)])
    assert verdict.reason == "signature-mismatch" and verdict.hint is None
    assert "connection" in verdict.explain and "no such header" in verdict.explain


# --- Known client mistakes (§1.3, §1.5, §1.6) -------------------------------------------


def test_signed_token_refused_with_hint_and_redacted() -> None:
    verdict = verify(target_of(url_for(token_style="signed", expires=3600)))
    assert (verdict.ok, verdict.reason, verdict.hint) == (
        False,
        "signature-mismatch",
        "token-signed",
    )
    assert verdict.message == MSG_SIGNATURE_MISMATCH
    assert "X-Amz-Security-Token=<redacted>" in verdict.explain
    assert "Canonical request the gateway computed" in verdict.explain
    assert_no_secrets(verdict, url_for(token_style="signed").split("X-Amz-Signature=")[1])


def test_signed_token_accepted_when_lenient() -> None:
    verdict = verify(target_of(url_for(token_style="signed")), accept_signed_token=True)
    assert (verdict.ok, verdict.reason, verdict.hint) == (True, "ok", "token-signed")
    assert verdict.credential == TEMP
    assert "X-Amz-Security-Token=<redacted>" in verdict.canonical_request
    assert_no_secrets(verdict)


def test_empty_canonical_query_refused_with_hint() -> None:
    verdict = verify(target_of(url_for(empty_canonical_query=True, layout="sdk-v1")))
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", "empty-canonical-query")
    assert "Canonical request the client signed:\nGET\n/mqtt\n\nhost:" in verdict.explain


@pytest.mark.parametrize(
    ("signed_host", "sent_host"),
    [
        pytest.param(ENDPOINT, f"{ENDPOINT}:443", id="paho-1.6-sends-port"),
        pytest.param(f"{ENDPOINT}:443", ENDPOINT, id="signed-port-sent-none"),
    ],
)
def test_host_port_mismatch_hint(signed_host: str, sent_host: str) -> None:
    target = target_of(url_for(host_header=signed_host))
    verdict = verify(target, headers=upgrade_headers(sent_host))
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", "host-with-port")
    assert verify(target, headers=upgrade_headers(signed_host)).ok  # Host taken verbatim


def test_combined_mistakes_are_named_together() -> None:
    target = target_of(url_for(token_style="signed"))
    verdict = verify(target, headers=upgrade_headers(f"{ENDPOINT}:443"))
    assert verdict.hint == "token-signed+host-with-port"


def test_wrong_secret_has_no_hint() -> None:
    forged = Credential(TEMP.access_key_id, "not-the-secret", TEMP.session_token)
    verdict = verify(target_of(url_for(forged)))
    assert (verdict.reason, verdict.hint) == ("signature-mismatch", None)
    assert "Canonical request the gateway computed:\nGET\n/mqtt\nX-Amz-Algorithm=" in (
        verdict.explain
    )


# --- Keys, tokens, scope, time (§1.4, §1.5, §1.7) -------------------------------------------


def test_key_and_token_verdicts() -> None:
    unknown = verify(target_of(url_for(Credential("AKIAUNKNOWN000000000", "x"))))
    assert (unknown.reason, unknown.message) == ("unknown-key", MSG_UNKNOWN_KEY)

    missing = verify(target_of(url_for(token_style="omitted")))
    assert (missing.reason, missing.message) == ("token-missing", MSG_TOKEN_INVALID)

    other = Credential(TEMP.access_key_id, TEMP.secret_access_key, "another-token-value-12345")
    invalid = verify(target_of(url_for(other)))
    assert (invalid.reason, invalid.message) == ("token-invalid", MSG_TOKEN_INVALID)
    assert_no_secrets(invalid, "another-token-value-12345")

    with_token = Credential(STATIC.access_key_id, STATIC.secret_access_key, "stray-token-123456")
    assert verify(target_of(url_for(with_token))).reason == "token-invalid"

    expired_temp = Credential(
        TEMP.access_key_id, TEMP.secret_access_key, TEMP.session_token, expires_at=NOW - 1
    )
    lookup = {TEMP.access_key_id: expired_temp}.get
    expired = verify(target_of(url_for()), lookup=lookup)
    assert (expired.reason, expired.message) == ("token-expired", MSG_TOKEN_EXPIRED)
    assert expired.credential is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"region": "us-east-1"},
            "Credential should be scoped to a valid region, not 'us-east-1'. ",
            id="other-region",
        ),
        pytest.param(
            {"region": ""}, "Credential should be scoped to a valid region, not ''. ", id="empty"
        ),
        pytest.param(
            {"service": "execute-api"},
            "Credential should be scoped to correct service: 'iotdevicegateway'. ",
            id="service",
        ),
    ],
)
def test_bad_scope(options: dict[str, object], message: str) -> None:
    url = presign_url(
        host=ENDPOINT,
        credential=TEMP,
        now=NOW,
        **{"region": REGION, **options},  # type: ignore[arg-type]
    )
    verdict = verify(target_of(url))
    assert (verdict.reason, verdict.message) == ("bad-scope", message)


def test_scope_date_must_be_the_signing_day() -> None:
    target = target_of(url_for(STATIC)).replace("%2F20251009%2F", "%2F20251008%2F")
    verdict = verify(target)
    assert verdict.reason == "bad-scope"
    assert verdict.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20251008' != '20251009', from '20251009T085320Z'."
    )


@pytest.mark.parametrize(
    ("offset", "ok", "message"),
    [
        (-300, True, ""),
        (300, True, ""),
        (
            301,
            False,
            "Signature expired: 20251009T085320Z is now earlier than 20251009T085321Z "
            "(20251009T085821Z - 5 min.)",
        ),
        (
            -301,
            False,
            "Signature not yet current: 20251009T085320Z is still later than 20251009T085319Z "
            "(20251009T084819Z + 5 min.)",
        ),
    ],
)
def test_clock_window(offset: float, ok: bool, message: str) -> None:
    verdict = verify(target_of(url_for()), now=NOW + offset)
    assert (verdict.ok, verdict.message) == (ok, message)
    assert verdict.reason == ("ok" if ok else "clock-skew")


def test_x_amz_expires_only_shortens() -> None:
    target = target_of(url_for(expires=60))
    assert verify(target, now=NOW + 60).ok
    verdict = verify(target, now=NOW + 61)
    assert verdict.reason == "expired"
    assert verdict.message.startswith("Signature expired: 20251009T085320Z is now earlier than")
    long_lived = target_of(url_for(expires=86400))
    assert verify(long_lived, now=NOW + 301).reason == "clock-skew"


# --- Malformed requests -------------------------------------------------------------------

GOOD = target_of(url_for(STATIC, expires=900))


def drop(name: str) -> str:
    path, query = GOOD.split("?")
    return path + "?" + "&".join(p for p in query.split("&") if not p.startswith(name + "="))


def replace_param(name: str, value: str) -> str:
    path, query = GOOD.split("?")
    parts = [f"{name}={value}" if p.startswith(name + "=") else p for p in query.split("&")]
    return path + "?" + "&".join(parts)


@dataclass(frozen=True)
class Bad:
    target: str
    reason: str
    method: str = "GET"


MALFORMED = {
    "missing-algorithm": Bad(drop("X-Amz-Algorithm"), "malformed"),
    "missing-credential": Bad(drop("X-Amz-Credential"), "malformed"),
    "missing-date": Bad(drop("X-Amz-Date"), "malformed"),
    "missing-signed-headers": Bad(drop("X-Amz-SignedHeaders"), "malformed"),
    "missing-signature": Bad(drop("X-Amz-Signature"), "malformed"),
    "empty-signature": Bad(replace_param("X-Amz-Signature", ""), "malformed"),
    "no-query": Bad("/mqtt", "malformed"),
    "duplicate-signature": Bad(GOOD + "&X-Amz-Signature=" + "0" * 64, "malformed"),
    "duplicate-date": Bad(GOOD + "&X-Amz-Date=20251009T085320Z", "malformed"),
    "post": Bad(GOOD, "malformed", method="POST"),
    "lowercase-get": Bad(GOOD, "malformed", method="get"),
    "bad-percent": Bad(GOOD + "&x=%G1", "malformed"),
    "truncated-percent": Bad(GOOD + "&x=%2", "malformed"),
    "absolute-target": Bad("wss://" + ENDPOINT + GOOD, "malformed"),
    "absolute-target-with-token": Bad("wss://" + ENDPOINT + target_of(url_for()), "malformed"),
    "sigv4a-algorithm": Bad(
        replace_param("X-Amz-Algorithm", "AWS4-ECDSA-P256-SHA256"), "malformed"
    ),
    "bad-date": Bad(replace_param("X-Amz-Date", "2025-10-09T08:53:20Z"), "malformed"),
    "impossible-date": Bad(replace_param("X-Amz-Date", "20251332T085320Z"), "malformed"),
    "credential-4-parts": Bad(
        replace_param(
            "X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE%2F20251009%2Feu-west-1%2Faws4_request"
        ),
        "malformed",
    ),
    "credential-6-parts": Bad(
        replace_param(
            "X-Amz-Credential",
            "AKIAIOSFODNN7EXAMPLE%2F20251009%2Feu-west-1%2Fiotdata%2Fx%2Faws4_request",
        ),
        "malformed",
    ),
    "credential-empty-key": Bad(
        replace_param("X-Amz-Credential", "%2F20251009%2Feu-west-1%2Fiotdata%2Faws4_request"),
        "malformed",
    ),
    "credential-bad-terminator": Bad(
        replace_param(
            "X-Amz-Credential",
            "AKIAIOSFODNN7EXAMPLE%2F20251009%2Feu-west-1%2Fiotdata%2Faws5_request",
        ),
        "bad-scope",
    ),
    "expires-negative": Bad(replace_param("X-Amz-Expires", "-1"), "malformed"),
    "expires-not-a-number": Bad(replace_param("X-Amz-Expires", "1h"), "malformed"),
    "signed-headers-without-host": Bad(
        replace_param("X-Amz-SignedHeaders", "connection"), "malformed"
    ),
    "signed-headers-empty-name": Bad(replace_param("X-Amz-SignedHeaders", "host%3B"), "malformed"),
    "signed-headers-repeated": Bad(
        replace_param("X-Amz-SignedHeaders", "host%3Bhost"), "malformed"
    ),
    "auth-param-not-utf8": Bad(replace_param("X-Amz-Date", "%FF"), "malformed"),
    "signature-garbled": Bad(replace_param("X-Amz-Signature", "not-hex"), "signature-mismatch"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests(case: Bad) -> None:
    verdict = verify(case.target, method=case.method)
    assert (verdict.ok, verdict.reason) == (False, case.reason)
    assert verdict.message and verdict.explain
    assert_no_secrets(verdict)


def test_malformed_messages() -> None:
    assert verify(drop("X-Amz-Date")).message == (
        "AWS query-string parameters must include 'X-Amz-Date'. "
        "Re-examine the query-string parameters."
    )
    assert verify(replace_param("X-Amz-SignedHeaders", "connection")).message == (
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    )


# --- Properties ---------------------------------------------------------------------------

B64 = string.ascii_letters + string.digits + "+/="
akids = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["AKIA", "ASIA"]),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16),
)
# The prefix (with lower case) keeps a token from coinciding with an upper-case key id.
tokens = st.none() | st.text(B64, min_size=8, max_size=300).map(lambda t: "IQoJb3Jp" + t)
regions = st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True)
header_names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True).filter(
    lambda name: name != "host"
)
header_values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
hosts = st.sampled_from([ENDPOINT, f"{ENDPOINT}:443", "127.0.0.1:8443", "localhost"])


@dataclass(frozen=True)
class Upgrade:
    """A presigned upgrade as a correct client sends it, and what the gateway needs."""

    target: str
    headers: list[tuple[str, str]]
    credential: Credential
    signed_at: float  # X-Amz-Date as epoch seconds
    expires: int | None
    region: str


@st.composite
def signed_upgrades(draw: st.DrawFn) -> Upgrade:
    """A presigned URL in a random correct style, the headers its client sends, and more."""
    credential = Credential(
        access_key_id=draw(akids),
        secret_access_key=draw(st.text(min_size=1, max_size=60)),
        session_token=draw(tokens),
    )
    region = draw(regions)
    host = draw(hosts)
    extra = draw(st.dictionaries(header_names, header_values, max_size=4))
    now = draw(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
    expires = draw(st.none() | st.integers(min_value=1, max_value=604_800))
    url = presign_url(
        host=host,
        credential=credential,
        region=region,
        now=now,
        service=draw(st.sampled_from(sorted(IOT_SERVICES))),
        expires=expires,
        signed_headers=extra,
        layout=draw(st.sampled_from(["awscrt", "sdk-v1"])),
        token_encoding=draw(st.sampled_from(["strict", "quote"])),
    )
    headers = [("Host", host)] + [(name.title(), value) for name, value in extra.items()]
    headers = draw(st.permutations(headers))
    return Upgrade(target_of(url), list(headers), credential, now // 1, expires, region)


def verify_as_gateway(upgrade: Upgrade, *, target: str | None = None, now: float) -> SigV4Verdict:
    return verify_upgrade(
        method="GET",
        target=upgrade.target if target is None else target,
        headers=upgrade.headers,
        now=now,
        lookup={upgrade.credential.access_key_id: upgrade.credential}.get,
        region=upgrade.region,
    )


@given(signed_upgrades(), st.data())
def test_round_trip(upgrade: Upgrade, data: st.DataObject) -> None:
    latest = min(300, upgrade.expires or 300)
    drift = data.draw(st.floats(min_value=-300, max_value=latest))
    verdict = verify_as_gateway(upgrade, now=upgrade.signed_at + drift)
    assert verdict.ok, verdict.explain
    assert verdict.credential == upgrade.credential


def decoded(target: str) -> list[tuple[bytes, bytes]] | None:
    try:
        return sorted(parse_query(target.split("?", 1)[1]))
    except MalformedRequest:
        return None


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(signed_upgrades(), st.data())
def test_any_single_character_change_is_refused(upgrade: Upgrade, data: st.DataObject) -> None:
    target, credential = upgrade.target, upgrade.credential
    start = target.index("?") + 1
    index = data.draw(st.integers(min_value=start, max_value=len(target) - 1))
    char = data.draw(
        st.sampled_from(string.printable.strip() + " ").filter(lambda c: c != target[index])
    )
    mutated = target[:index] + char + target[index + 1 :]
    # A change of case inside a %XX escape decodes to the same request: not a change.
    assume(decoded(mutated) != decoded(target))
    verdict = verify_as_gateway(upgrade, target=mutated, now=upgrade.signed_at)
    assert not verdict.ok, mutated
    assert verdict.reason != "ok" and verdict.message
    signature = target.split("X-Amz-Signature=")[1][:64]
    for secret in (credential.session_token, signature):
        if secret:
            assert secret not in verdict.explain and secret not in verdict.canonical_request


AUTH_NAMES = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
]
params = st.builds(
    lambda name, value: f"{name}={value}",
    st.sampled_from([*AUTH_NAMES, "x", ""]),
    st.sampled_from(
        [
            "AWS4-HMAC-SHA256",
            "AKIAIOSFODNN7EXAMPLE%2F20251009%2Feu-west-1%2Fiotdata%2Faws4_request",
            "20251009T085320Z",
            "host",
            "host%3Bconnection",
            "0" * 64,
            "86400",
        ]
    )
    | st.text(),
)
targets = st.text() | st.builds(lambda ps: "/mqtt?" + "&".join(ps), st.lists(params, max_size=9))


@given(
    method=st.sampled_from(["GET", "POST"]) | st.text(max_size=8),
    target=targets,
    headers=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=6),
    accept_signed_token=st.booleans(),
)
def test_garbage_gets_a_verdict(
    method: str, target: str, headers: list[tuple[str, str]], accept_signed_token: bool
) -> None:
    verdict = verify_upgrade(
        method=method,
        target=target,
        headers=headers,
        now=NOW,
        lookup=lambda _key: TEMP,
        region=REGION,
        accept_signed_token=accept_signed_token,
    )
    assert isinstance(verdict, SigV4Verdict)
    assert verdict.ok == (verdict.reason == "ok")
    assert verdict.ok or verdict.message
    assert_no_secrets(verdict)
