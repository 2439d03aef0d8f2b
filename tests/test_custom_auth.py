"""Custom authorizers (aws-iot.md §2): extraction, signatures, the Lambda contract, verdicts."""

from __future__ import annotations

import base64
import functools
import json
import re
import textwrap
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from harness.auth.custom import (
    AUTH_ERROR,
    Authorizer,
    AuthorizerEvent,
    AuthorizerResponse,
    BadAuthorizerResponse,
    CustomAuthCredentials,
    CustomAuthVerdict,
    HttpRequestData,
    MqttConnectData,
    authenticate,
    from_upgrade,
    from_username,
    parse_response,
    token_key_lookup,
    verify_token_signature,
)
from harness.auth.policy import allow_all_outside_reserved, client_arn
from harness.errors import ConfigError, ProtocolError

AUTH = "cld-iot-credentials-lambda-authorizer"
TOKEN = "3f2a6a55-0bd1-4a2e-9a52-3f1c0a8c6f7e"
POLICY = allow_all_outside_reserved("eu-west-1", "123456789012")


# Keys: generated once per module (RSA key generation is slow).


_KEYS: dict[int, rsa.RSAPrivateKey] = {}


def private_key(which: int = 0) -> rsa.RSAPrivateKey:
    if which not in _KEYS:
        _KEYS[which] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[which]


def public_pem(which: int = 0) -> bytes:
    return (
        private_key(which)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@functools.cache
def sign(token: str, which: int = 0) -> str:
    raw = private_key(which).sign(token.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode()


@functools.cache
def signature_with(chars: str) -> tuple[str, str]:
    """A token whose signature contains all of ``chars`` (to exercise '+' and '/')."""
    for n in range(500):
        token = f"{TOKEN}-{n}"
        if all(c in sign(token) for c in chars):
            return token, sign(token)
    raise AssertionError("no such signature")  # pragma: no cover


def lookup(name: str | None) -> str | None:
    return {None: "token", AUTH: "token", "js": "TestAuthorizerToken"}.get(name)


# Extraction (§2.1)


def test_dyson_headers_raw_base64() -> None:
    token, sig = signature_with("+/")
    creds = from_upgrade(
        headers=[
            ("Host", "a1b2-ats.iot.eu-west-1.amazonaws.com"),
            ("token", token),
            ("X-Amz-CustomAuthorizer-Name", AUTH),
            ("X-Amz-CustomAuthorizer-Signature", sig),
        ],
        query="",
        token_key_for=lookup,
    )
    assert creds == CustomAuthCredentials(
        authorizer_name=AUTH, signature=sig, token=token, token_key="token", source="headers"
    )
    assert creds.signature == sig  # '+' survives: never mapped to space


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        pytest.param(
            [
                ("X-AMZ-CUSTOMAUTHORIZER-NAME", AUTH),
                ("TOKEN", "t"),
                ("x-amz-customauthorizer-signature", "c2ln"),
            ],
            "",
            (AUTH, "c2ln", "t", "headers"),
            id="headers-mixed-case",
        ),
        pytest.param(
            [("x-amz-customauthorizer-signature", "YWJj%2B%2Fw%3D%3D"), ("token", "t")],
            "",
            (None, "YWJj+/w==", "t", "headers"),
            id="headers-url-encoded-signature-default-authorizer",
        ),
        pytest.param(
            [("x-amz-customauthorizer-signature", "YWJj%0AZGVm")],
            "",
            (None, "YWJjZGVm", None, "headers"),
            id="headers-newline-stripped",
        ),
        pytest.param(
            [],
            "?X-Amz-CustomAuthorizer-Name=js&X-Amz-CustomAuthorizer-Signature=YWJj%2B%2Fw%3D%3D"
            "&TestAuthorizerToken=tok",
            ("js", "YWJj+/w==", "tok", "query"),
            id="query-js-v1",
        ),
        pytest.param(
            [],
            "x-amz-customauthorizer-name=js&testauthorizertoken=tok",
            ("js", None, "tok", "query"),
            id="query-no-leading-question-mark-lowercase-key",
        ),
        pytest.param(
            [],
            "x-amz-customauthorizer-signature=ab+c%2Bd%3D",
            (None, "ab+c+d=", None, "query"),
            id="query-plus-is-not-space",
        ),
        pytest.param(
            [("token", "from-header")],
            "token=from-query",
            (None, None, "from-header", "headers"),
            id="headers-win-over-query",
        ),
        pytest.param(
            [("Host", "x"), ("Sec-WebSocket-Protocol", "mqtt")],
            "x-amz-customauthorizer-name=" + AUTH,
            (AUTH, None, None, "query"),
            id="query-when-headers-have-nothing",
        ),
        pytest.param(
            [("x-amz-customauthorizer-name", "nobody"), ("token", "t")],
            "",
            ("nobody", None, None, "headers"),
            id="unknown-authorizer-has-no-token-key",
        ),
        pytest.param(
            [("x-amz-customauthorizer-name", ""), ("token", "t")],
            "",
            (None, None, "t", "headers"),
            id="empty-name-is-absent",
        ),
        pytest.param(
            [("token", "first"), ("Token", "second")],
            "",
            (None, None, "first", "headers"),
            id="first-duplicate-wins",
        ),
    ],
)
def test_from_upgrade(
    headers: list[tuple[str, str]],
    query: str,
    expected: tuple[str | None, str | None, str | None, str],
) -> None:
    creds = from_upgrade(headers=headers, query=query, token_key_for=lookup)
    assert creds is not None
    assert (creds.authorizer_name, creds.signature, creds.token, creds.source) == expected


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        pytest.param([], "", id="empty"),
        pytest.param([("Host", "x"), ("Sec-WebSocket-Protocol", "mqtt")], "", id="plain-upgrade"),
        pytest.param([], "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab", id="sigv4"),
        pytest.param([("token", "")], "?&&=", id="only-empty-values"),
    ],
)
def test_from_upgrade_none(headers: list[tuple[str, str]], query: str) -> None:
    assert from_upgrade(headers=headers, query=query, token_key_for=lookup) is None


def _username(sig: str, *, name: str = AUTH, token: str = TOKEN, user: str = "user") -> str:
    return (
        f"{user}?x-amz-customauthorizer-name={name}"
        f"&x-amz-customauthorizer-signature={sig}&token={token}"
    )


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        pytest.param(
            _username("YWJj%2B%2Fw%3D%3D") + "&SDK=PythonV2&Version=1.21.0",
            (AUTH, "YWJj+/w==", TOKEN, "user", (("SDK", "PythonV2"), ("Version", "1.21.0"))),
            id="python-v2-quoted-with-metrics",
        ),
        pytest.param(
            _username("YWJj+/w=="),
            (AUTH, "YWJj+/w==", TOKEN, "user", ()),
            id="raw-base64-plus-kept",
        ),
        pytest.param(
            "?X-Amz-CustomAuthorizer-Name="
            + AUTH
            + "&TOKEN=t&x-amz-customauthorizer-SIGNATURE=c2ln",
            (AUTH, "c2ln", "t", "", ()),
            id="mixed-case-empty-user",
        ),
        pytest.param(
            _username("YWJj%0AZGVm%0D%0A"),
            (AUTH, "YWJjZGVm", TOKEN, "user", ()),
            id="newline-wrapped-signature",
        ),
        pytest.param(
            "a?b?x-amz-customauthorizer-name=" + AUTH,
            (None, None, None, "a", (("b?x-amz-customauthorizer-name", AUTH),)),
            id="second-question-mark-eats-a-key",
        ),
        pytest.param(
            "u?token=t&x-amz-customauthorizer-name=n%3Fx&other",
            ("n?x", None, None, "u", (("token", "t"), ("other", ""))),
            id="encoded-question-mark-is-not-stray",
        ),
    ],
)
def test_from_username(
    username: str,
    expected: tuple[str | None, str | None, str | None, str, tuple[tuple[str, str], ...]],
) -> None:
    creds = from_username(username, token_key_for=lookup)
    if expected[:3] == (None, None, None):
        assert creds is None
        return
    assert creds is not None and creds.source == "username"
    got = (creds.authorizer_name, creds.signature, creds.token, creds.username, creds.extra_params)
    assert got == expected


@pytest.mark.parametrize(
    ("username", "field", "corrupted"),
    [
        pytest.param(
            _username(sign(TOKEN)) + "?SDK=Python&Version=1.5.4",
            "token",
            TOKEN + "?SDK=Python",
            id="v1-python-suffix-corrupts-token",
        ),
        pytest.param(
            f"username?x-amz-customauthorizer-name={AUTH}&token={TOKEN}"
            f"&x-amz-customauthorizer-signature=c2ln?SDK=JavaV2&Version=0.15",
            "signature",
            "c2ln?SDK=JavaV2",
            id="java-v2-154-corrupts-signature",
        ),
        pytest.param(
            "Test?x-amz-customauthorizer-name=TestAuth2?SDK=FreeRTOS&Version=1",
            "authorizer_name",
            "TestAuth2?SDK=FreeRTOS",
            id="embedded-c-corrupts-name",
        ),
    ],
)
def test_second_question_mark_corrupts(username: str, field: str, corrupted: str) -> None:
    creds = from_username(username, token_key_for=lookup)
    assert creds is not None and creds.stray_question_mark
    assert getattr(creds, field) == corrupted


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("alice", id="plain"),
        pytest.param("", id="empty"),
        pytest.param("alice?SDK=PythonV2&Version=1.21.0", id="metrics-only"),
        pytest.param("alice?", id="bare-question-mark"),
    ],
)
def test_from_username_none(username: str) -> None:
    assert from_username(username, token_key_for=lookup) is None


def test_credentials_repr_hides_secrets() -> None:
    creds = from_username(_username("c2lnbmF0dXJl"), token_key_for=lookup)
    assert creds is not None
    assert TOKEN not in repr(creds) and "c2lnbmF0dXJl" not in repr(creds)


def test_token_key_lookup() -> None:
    authorizers = {"a": _authorizer(name="a", token_key="tk"), "b": _authorizer(name="b")}
    assert token_key_lookup(authorizers, "b")(None) == "token"
    assert token_key_lookup(authorizers, "b")("a") == "tk"
    assert token_key_lookup(authorizers, None)(None) is None
    assert token_key_lookup(authorizers, None)("zzz") is None


# Signature (§2.2)


def test_verify_token_signature() -> None:
    sig = sign(TOKEN)
    assert verify_token_signature(TOKEN, sig, [public_pem()])
    assert verify_token_signature(TOKEN, sig, [public_pem().decode()])
    assert verify_token_signature(TOKEN, sig, [private_key().public_key()])
    assert verify_token_signature(TOKEN, sig, [public_pem(1), public_pem()]), "any key"
    assert verify_token_signature(TOKEN, "\n".join(textwrap.wrap(sig, 64)) + "\n", [public_pem()])
    assert not verify_token_signature(TOKEN + "x", sig, [public_pem()])
    assert not verify_token_signature(TOKEN, sig, [public_pem(1)])
    assert not verify_token_signature(TOKEN, sig, [])


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param("YWJj", id="too-short"),
        pytest.param("YWJ", id="bad-padding"),
        pytest.param("é" * 8, id="non-ascii"),
        pytest.param("c2ln?SDK=JavaV2", id="stray-query"),
        pytest.param(urllib.parse.quote(sign(TOKEN), safe=""), id="still-url-encoded"),
    ],
)
def test_verify_bad_signatures_are_false(signature: str) -> None:
    assert verify_token_signature(TOKEN, signature, [public_pem()]) is False


def test_plus_turned_into_space_fails() -> None:
    """What happens when something on the way decodes '+' as a space (aws-iot.md §2.1)."""
    token, sig = signature_with("+")
    assert verify_token_signature(token, sig, [public_pem()])
    assert not verify_token_signature(token, sig.replace("+", " "), [public_pem()])
    creds = from_username(_username(sig, token=token), token_key_for=lookup)
    assert creds is not None and creds.signature == sig


def test_verify_odd_token_never_raises() -> None:
    assert verify_token_signature("\udcff\ud800", sign(TOKEN), [public_pem()]) is False


def test_bad_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="PEM"):
        verify_token_signature(TOKEN, sign(TOKEN), [b"not a key"])
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="RSA"):
        verify_token_signature(TOKEN, sign(TOKEN), [ec_pem])


# Configuration


def _allow(event: AuthorizerEvent) -> Mapping[str, Any]:
    return {
        "isAuthenticated": True,
        "principalId": "dyson42",
        "policyDocuments": [POLICY],
        "disconnectAfterInSeconds": 3600,
        "refreshAfterInSeconds": 300,
    }


def _authorizer(**overrides: Any) -> Authorizer:
    settings: dict[str, Any] = {"name": AUTH, "handler": _allow, "public_keys": (public_pem(),)}
    settings.update(overrides)
    return Authorizer(**settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"name": ""}, "non-empty name", id="empty-name"),
        pytest.param({"public_keys": ()}, "public_keys", id="signing-without-keys"),
        pytest.param({"token_key": None}, "token_key", id="signing-without-token-key"),
        pytest.param({"status": "PAUSED"}, "ACTIVE or INACTIVE", id="bad-status"),
        pytest.param({"public_keys": (b"junk",)}, "PEM", id="bad-pem"),
    ],
)
def test_authorizer_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _authorizer(**overrides)


def test_authorizer_refuses_small_keys() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    with pytest.raises(ConfigError, match="2048"):
        _authorizer(public_keys=(small,))


def test_authorizer_config_ok() -> None:
    unsigned = _authorizer(signing_enabled=False, public_keys=(), token_key=None)
    assert unsigned.active and unsigned.keys == ()
    inactive = _authorizer(status=cast(Any, "inactive"))
    assert inactive.status == "INACTIVE" and not inactive.active
    assert len(_authorizer().keys) == 1
    assert "BEGIN PUBLIC KEY" not in repr(_authorizer())


# The Lambda event (§2.3)


def test_event_json_full_shape() -> None:
    event = AuthorizerEvent(
        token="aToken",
        signature_verified=True,
        connection_id="6f9c3d2e-0000-4000-8000-000000000001",
        server_name="a1b2-ats.iot.eu-west-1.amazonaws.com",
        http=HttpRequestData(
            headers=(("token", "aToken"), ("X-Multi", "a"), ("X-Multi", "b")),
            query_string="x-amz-customauthorizer-name=n",
        ),
        mqtt=MqttConnectData(username="user?x=1", password=b"\x00pw\xff", client_id="dev-1"),
    )
    assert event.to_json() == {
        "token": "aToken",
        "signatureVerified": True,
        "protocols": ["tls", "http", "mqtt"],
        "protocolData": {
            "tls": {"serverName": "a1b2-ats.iot.eu-west-1.amazonaws.com"},
            "http": {
                "headers": {"token": "aToken", "X-Multi": "a,b"},
                "queryString": "?x-amz-customauthorizer-name=n",
            },
            "mqtt": {
                "username": "user?x=1",
                "password": base64.b64encode(b"\x00pw\xff").decode(),
                "clientId": "dev-1",
            },
        },
        "connectionMetadata": {"id": "6f9c3d2e-0000-4000-8000-000000000001"},
    }
    json.dumps(event.to_json())  # serialisable as is
    assert "aToken" not in repr(event)


def test_event_json_omits_irrelevant_fields() -> None:
    direct = AuthorizerEvent(
        token=None, signature_verified=False, connection_id="c", mqtt=MqttConnectData()
    )
    assert direct.to_json() == {
        "signatureVerified": False,
        "protocols": ["tls", "mqtt"],
        "protocolData": {"mqtt": {}},
        "connectionMetadata": {"id": "c"},
    }
    assert AuthorizerEvent(
        token=None,
        signature_verified=False,
        connection_id="c",
        mqtt=MqttConnectData(username="u", client_id=""),
    ).to_json()["protocolData"] == {"mqtt": {"username": "u"}}, "an empty client id was not sent"
    https = AuthorizerEvent(
        token="t",
        signature_verified=True,
        connection_id="c",
        http=HttpRequestData(query_string="?a=b"),
    )
    assert https.to_json()["protocolData"]["http"]["queryString"] == "?a=b"
    https = AuthorizerEvent(
        token="t", signature_verified=True, connection_id="c", http=HttpRequestData()
    )
    assert https.to_json()["protocols"] == ["tls", "http"]
    assert https.to_json()["protocolData"] == {"http": {"headers": {}}}


# The Lambda response (§2.3)


def _response(**fields: Any) -> dict[str, Any]:
    out = dict(_allow(cast(AuthorizerEvent, None)))
    for key, value in fields.items():
        if value is _MISSING:
            out.pop(key, None)
        else:
            out[key] = value
    return out


_MISSING = object()


@pytest.mark.parametrize(
    ("fields", "strict_ok", "lenient_ok"),
    [
        pytest.param({}, True, True, id="valid"),
        pytest.param({"isAuthenticated": "true"}, False, False, id="authenticated-string"),
        pytest.param({"isAuthenticated": _MISSING}, False, False, id="authenticated-missing"),
        pytest.param({"principalId": "a" * 128}, True, True, id="principal-128"),
        pytest.param({"principalId": "a" * 129}, False, True, id="principal-129"),
        pytest.param({"principalId": "user-1"}, False, True, id="principal-dash"),
        pytest.param({"principalId": "ünï"}, False, True, id="principal-non-ascii"),
        pytest.param({"principalId": ""}, False, False, id="principal-empty"),
        pytest.param({"principalId": _MISSING}, False, False, id="principal-missing"),
        pytest.param({"principalId": 42}, False, False, id="principal-number"),
        pytest.param({"policyDocuments": [POLICY] * 10}, True, True, id="ten-documents"),
        pytest.param({"policyDocuments": [POLICY] * 11}, False, True, id="eleven-documents"),
        pytest.param({"policyDocuments": [POLICY.ljust(2048)]}, True, True, id="doc-2048"),
        pytest.param({"policyDocuments": [POLICY.ljust(2049)]}, False, True, id="doc-over-2048"),
        pytest.param({"policyDocuments": _MISSING}, False, True, id="documents-missing"),
        pytest.param({"policyDocuments": POLICY}, False, False, id="documents-not-a-list"),
        pytest.param({"policyDocuments": [7]}, False, False, id="document-number"),
        pytest.param({"policyDocuments": [json.loads(POLICY)]}, True, True, id="document-object"),
        pytest.param({"policyDocuments": [{"Statement": 1}]}, False, False, id="bad-object"),
        pytest.param({"disconnectAfterInSeconds": 300}, True, True, id="disconnect-300"),
        pytest.param({"disconnectAfterInSeconds": 86400}, True, True, id="disconnect-86400"),
        pytest.param({"disconnectAfterInSeconds": 299}, False, True, id="disconnect-299"),
        pytest.param({"disconnectAfterInSeconds": 86401}, False, True, id="disconnect-86401"),
        pytest.param({"disconnectAfterInSeconds": 2}, False, True, id="disconnect-2-compressed"),
        pytest.param({"disconnectAfterInSeconds": 0.5}, False, True, id="disconnect-fraction"),
        pytest.param({"disconnectAfterInSeconds": 3600.0}, True, True, id="disconnect-float-whole"),
        pytest.param({"disconnectAfterInSeconds": 0}, False, False, id="disconnect-zero"),
        pytest.param({"disconnectAfterInSeconds": -5}, False, False, id="disconnect-negative"),
        pytest.param({"disconnectAfterInSeconds": float("inf")}, False, False, id="disconnect-inf"),
        pytest.param({"disconnectAfterInSeconds": 10**400}, False, True, id="disconnect-huge"),
        pytest.param({"disconnectAfterInSeconds": True}, False, False, id="disconnect-bool"),
        pytest.param({"disconnectAfterInSeconds": "300"}, False, False, id="disconnect-string"),
        pytest.param({"disconnectAfterInSeconds": _MISSING}, False, True, id="disconnect-missing"),
        pytest.param({"refreshAfterInSeconds": 299}, False, True, id="refresh-299"),
        pytest.param({"refreshAfterInSeconds": 86400}, True, True, id="refresh-86400"),
        pytest.param({"refreshAfterInSeconds": _MISSING}, False, True, id="refresh-missing"),
        pytest.param({"unexpected": 1}, True, True, id="extra-keys-ignored"),
    ],
)
def test_response_range_checks(fields: dict[str, Any], strict_ok: bool, lenient_ok: bool) -> None:
    raw = _response(**fields)
    for strict, ok in ((True, strict_ok), (False, lenient_ok)):
        if ok:
            response = parse_response(raw, strict=strict)
            assert response.is_authenticated and response.principal_id
        else:
            with pytest.raises(BadAuthorizerResponse) as info:
                parse_response(raw, strict=strict)
            assert info.value.reason == "bad-response" and isinstance(info.value, ProtocolError)


def test_response_denied_needs_nothing_else() -> None:
    assert parse_response({"isAuthenticated": False, "principalId": "!!"}) == AuthorizerResponse(
        is_authenticated=False
    )


def test_response_typed_and_other_values() -> None:
    typed = AuthorizerResponse(
        is_authenticated=True,
        principal_id="p1",
        policy_documents=(POLICY,),
        disconnect_after_seconds=2,
        refresh_after_seconds=1.5,
    )
    assert parse_response(typed, strict=False) == typed
    with pytest.raises(BadAuthorizerResponse, match=re.escape("300..86400")):
        parse_response(typed, strict=True)
    for junk in (None, "{}", [True], 1):
        with pytest.raises(BadAuthorizerResponse, match="not a response object"):
            parse_response(junk)


# authenticate() (§2.2, §2.3)


class Lambda:
    """A recording handler."""

    def __init__(self, answer: Callable[[AuthorizerEvent], Any] = _allow) -> None:
        self.answer = answer
        self.events: list[AuthorizerEvent] = []

    def __call__(self, event: AuthorizerEvent) -> Any:
        self.events.append(event)
        return self.answer(event)


def _run(
    creds: CustomAuthCredentials | None,
    *,
    handler: Lambda | None = None,
    default: str | None = None,
    strict: bool = True,
    **overrides: Any,
) -> tuple[CustomAuthVerdict, Lambda]:
    handler = handler or Lambda()
    authorizer = _authorizer(handler=handler, **overrides)
    verdict = authenticate(
        credentials=creds,
        authorizers={AUTH: authorizer},
        default_authorizer=default,
        connection_id="conn-1",
        server_name="a1b2-ats.iot.eu-west-1.amazonaws.com",
        http=HttpRequestData(headers=(("token", TOKEN),)),
        mqtt=MqttConnectData(client_id="dev-1"),
        strict=strict,
    )
    assert verdict.ok is (verdict.reason == "ok")
    return verdict, handler


def _creds(
    *,
    name: str | None = AUTH,
    token: str | None = TOKEN,
    signature: str | None = "",
    stray: bool = False,
) -> CustomAuthCredentials:
    return CustomAuthCredentials(
        authorizer_name=name,
        signature=sign(TOKEN) if signature == "" else signature,
        token=token,
        token_key="token",
        source="headers",
        stray_question_mark=stray,
    )


def _raise(event: AuthorizerEvent) -> Any:
    raise RuntimeError(f"lambda crashed on token {event.token}")


CASES: list[Any] = [
    pytest.param(_creds(), {}, "ok", True, id="ok"),
    pytest.param(None, {}, "no-credentials", False, id="no-credentials"),
    pytest.param(_creds(name="nobody"), {}, "unknown-authorizer", False, id="unknown-name"),
    pytest.param(_creds(name=None), {}, "unknown-authorizer", False, id="no-name-no-default"),
    pytest.param(
        _creds(name=None), {"default": "gone"}, "unknown-authorizer", False, id="default-missing"
    ),
    pytest.param(_creds(name=None), {"default": AUTH}, "ok", True, id="default-authorizer"),
    pytest.param(None, {"default": AUTH}, "token-missing", False, id="default-nothing-sent"),
    pytest.param(_creds(), {"status": "INACTIVE"}, "authorizer-inactive", False, id="inactive"),
    pytest.param(_creds(token=None), {}, "token-missing", False, id="token-missing"),
    pytest.param(_creds(signature=None), {}, "signature-missing", False, id="signature-missing"),
    pytest.param(_creds(signature=sign(TOKEN, 1)), {}, "signature-invalid", False, id="wrong-key"),
    pytest.param(
        _creds(token=TOKEN + "?SDK=Python", stray=True),
        {},
        "signature-invalid",
        False,
        id="stray-question-mark",
    ),
    pytest.param(
        _creds(signature="%%%"), {}, "signature-invalid", False, id="signature-not-base64"
    ),
    pytest.param(
        _creds(signature=None, token=None),
        {"signing_enabled": False},
        "ok",
        True,
        id="signing-disabled",
    ),
    pytest.param(
        _creds(),
        {"handler": Lambda(lambda e: {"isAuthenticated": False})},
        "denied",
        True,
        id="denied",
    ),
    pytest.param(
        _creds(),
        {"handler": Lambda(lambda e: {**_allow(e), "principalId": "no-dash"})},
        "bad-response",
        True,
        id="bad-response",
    ),
    pytest.param(
        _creds(),
        {"handler": Lambda(lambda e: {**_allow(e), "policyDocuments": ["{"]})},
        "bad-response",
        True,
        id="bad-policy",
    ),
    pytest.param(_creds(), {"handler": Lambda(_raise)}, "authorizer-error", True, id="raises"),
]


@pytest.mark.parametrize(("creds", "options", "reason", "invoked"), CASES)
def test_authenticate_reasons(
    creds: CustomAuthCredentials | None, options: dict[str, Any], reason: str, invoked: bool
) -> None:
    options = dict(options)
    verdict, handler = _run(creds, default=options.pop("default", None), **options)
    assert verdict.reason == reason, verdict.explain
    assert verdict.invoked is invoked
    assert len(handler.events) == (1 if invoked else 0)
    # Secrets never reach the explanation, raw or URL-encoded.
    for secret in (TOKEN, sign(TOKEN), sign(TOKEN, 1)):
        assert secret not in verdict.explain
        assert urllib.parse.quote(secret, safe="") not in verdict.explain
    assert verdict.disconnect_reason == (None if verdict.ok else AUTH_ERROR)
    fields = verdict.event_fields()
    assert fields["ok"] is verdict.ok and fields["reason"] == reason
    assert TOKEN not in json.dumps(fields)


def test_ok_verdict_carries_the_response() -> None:
    verdict, handler = _run(_creds())
    assert verdict.ok and verdict.authorizer == AUTH and verdict.signature_verified
    assert verdict.principal_id == "dyson42"
    assert verdict.policy_documents == (POLICY,)
    assert verdict.policies.allows("iot:Connect", client_arn("eu-west-1", "123456789012", "dev-1"))
    assert (verdict.disconnect_after, verdict.refresh_after) == (3600, 300)
    assert "dyson42" in verdict.explain and "disconnect after 3600 s" in verdict.explain
    (event,) = handler.events
    body = event.to_json()
    assert body["token"] == TOKEN and body["signatureVerified"] is True
    assert body["protocols"] == ["tls", "http", "mqtt"]
    assert body["connectionMetadata"] == {"id": "conn-1"}
    assert body["protocolData"]["mqtt"] == {"clientId": "dev-1"}


def test_signing_disabled_event_is_unverified() -> None:
    creds = from_username("alice", token_key_for=lookup)
    verdict, handler = _run(creds, default=AUTH, signing_enabled=False)
    assert verdict.ok and not verdict.signature_verified
    assert "signing disabled" in verdict.explain
    (event,) = handler.events
    assert event.to_json()["signatureVerified"] is False and "token" not in event.to_json()


def test_lenient_mode_accepts_compressed_time() -> None:
    def short(event: AuthorizerEvent) -> Mapping[str, Any]:
        return {**_allow(event), "disconnectAfterInSeconds": 2, "refreshAfterInSeconds": 1}

    strict, _ = _run(_creds(), handler=Lambda(short))
    assert strict.reason == "bad-response" and "disconnectAfterInSeconds" in strict.explain
    lenient, _ = _run(_creds(), handler=Lambda(short), strict=False)
    assert lenient.ok and (lenient.disconnect_after, lenient.refresh_after) == (2, 1)


def test_typed_response_from_handler() -> None:
    def typed(event: AuthorizerEvent) -> AuthorizerResponse:
        return AuthorizerResponse(
            is_authenticated=True,
            principal_id="p",
            policy_documents=(POLICY,),
            disconnect_after_seconds=86400,
            refresh_after_seconds=600,
        )

    verdict, _ = _run(_creds(), handler=Lambda(typed))
    assert verdict.ok and verdict.principal_id == "p"


@pytest.mark.parametrize(
    ("signature", "phrase"),
    [
        pytest.param("%%%", "not valid base64", id="not-base64"),
        pytest.param(urllib.parse.quote(sign(TOKEN), safe=""), "URL-encoded twice", id="percent"),
        pytest.param("YWJj", "decodes to 3 bytes", id="short"),
        pytest.param(sign(TOKEN, 1), "does not verify", id="wrong-key"),
    ],
)
def test_signature_invalid_explains(signature: str, phrase: str) -> None:
    verdict, _ = _run(_creds(signature=signature))
    assert verdict.reason == "signature-invalid" and phrase in verdict.explain
    assert "Lambda was not invoked" in verdict.explain


def test_stray_question_mark_is_explained() -> None:
    creds = from_username(
        _username(sign(TOKEN)) + "?SDK=Python&Version=1.5.4", token_key_for=lookup
    )
    verdict, _ = _run(creds)
    assert verdict.reason == "signature-invalid"
    assert "second '?'" in verdict.explain and TOKEN not in verdict.explain


def test_handler_exception_text_is_redacted() -> None:
    verdict, _ = _run(_creds(), handler=Lambda(_raise))
    assert "RuntimeError" in verdict.explain and "<redacted>" in verdict.explain


# Properties

_headers = st.lists(
    st.tuples(
        st.sampled_from(
            ["token", "X-Amz-CustomAuthorizer-Name", "x-amz-customauthorizer-signature"]
        )
        | st.text(max_size=10),
        st.text(max_size=30),
    ),
    max_size=6,
)
_params = st.text(alphabet=st.sampled_from("ab=&?%+ 2\n\r0x-") | st.characters(), max_size=60)


@given(_headers, _params)
def test_from_upgrade_never_raises(headers: list[tuple[str, str]], query: str) -> None:
    creds = from_upgrade(headers=headers, query=query, token_key_for=lookup)
    if creds is not None:
        assert creds.signature is None or ("\n" not in creds.signature and creds.signature)
        assert creds.source in ("headers", "query")


@given(_params, _params)
def test_from_username_never_raises(user: str, params: str) -> None:
    for username in (user, f"{user}?{params}"):
        creds = from_username(username, token_key_for=lookup)
        if creds is not None:
            assert creds.username is not None and "?" not in creds.username
            assert creds.signature is None or "\r" not in creds.signature


_value = st.text(min_size=1, max_size=40).filter(lambda s: s.strip("\r\n"))


@given(_value, _value, _value, st.sampled_from(["headers", "query", "username"]))
def test_extraction_round_trip(name: str, signature: str, token: str, where: str) -> None:
    """Whatever a client URL-encodes comes back decoded, newlines aside."""

    def encode(s: str) -> str:
        return urllib.parse.quote(s, safe="")

    def tokens(asked: str | None) -> str | None:
        return "token" if asked == name else None

    params = (
        f"x-amz-customauthorizer-name={encode(name)}"
        f"&x-amz-customauthorizer-signature={encode(signature)}&token={encode(token)}"
    )
    if where == "headers":
        creds = from_upgrade(
            headers=[
                ("x-amz-customauthorizer-name", encode(name)),
                ("x-amz-customauthorizer-signature", encode(signature)),
                ("token", encode(token)),
            ],
            query="",
            token_key_for=tokens,
        )
    elif where == "query":
        creds = from_upgrade(headers=[], query="?" + params, token_key_for=tokens)
    else:
        creds = from_username("u?" + params, token_key_for=tokens)
    assert creds is not None
    assert creds.authorizer_name == name and creds.token == token
    assert creds.signature == signature.replace("\r", "").replace("\n", "")
    assert not creds.stray_question_mark


@given(st.text(max_size=400))
def test_verify_never_raises(signature: str) -> None:
    assert verify_token_signature(TOKEN, signature, [public_pem()]) in (True, False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "isAuthenticated",
                    "principalId",
                    "policyDocuments",
                    "disconnectAfterInSeconds",
                    "refreshAfterInSeconds",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@given(_json, st.booleans())
def test_parse_response_raises_only_bad_response(raw: object, strict: bool) -> None:
    try:
        response = parse_response(raw, strict=strict)
    except BadAuthorizerResponse:
        return
    assert isinstance(response, AuthorizerResponse)
