"""The aws-c-auth SigV4 test suite, presigned-URL (``query-*``) half (aws-iot.md §1.10).

Each of the 38 cases is presigned with :func:`presign_request` (canonical request, string to
sign, signature and signed URL must match the vector byte for byte), then the vector's own
signed request is verified with :func:`verify_presigned` as the gateway would receive it.
The vectors use service ``service``, POST, bodies and unnormalised paths: the general
functions take those as parameters; AWS IoT upgrades use the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.auth.credentials import Credential
from harness.auth.sigv4 import presign_request, verify_presigned

pytestmark = pytest.mark.conformance

SUITE = "aws-signing-test-suite/v4"
QUERY_FILES = (
    "query-canonical-request.txt",
    "query-string-to-sign.txt",
    "query-signature.txt",
    "query-signed-request.txt",
)
#: The 38 cases of aws-c-auth @495329c (listed here so ids are stable and none goes missing).
CASES = (
    "get-header-key-duplicate",
    "get-header-value-multiline",
    "get-header-value-order",
    "get-header-value-trim",
    "get-relative-normalized",
    "get-relative-relative-normalized",
    "get-relative-relative-unnormalized",
    "get-relative-unnormalized",
    "get-slash-dot-slash-normalized",
    "get-slash-dot-slash-unnormalized",
    "get-slash-normalized",
    "get-slash-pointless-dot-normalized",
    "get-slash-pointless-dot-unnormalized",
    "get-slash-unnormalized",
    "get-slashes-normalized",
    "get-slashes-unnormalized",
    "get-space-normalized",
    "get-space-unnormalized",
    "get-unreserved",
    "get-utf8",
    "get-vanilla",
    "get-vanilla-empty-query-key",
    "get-vanilla-query",
    "get-vanilla-query-order-encoded",
    "get-vanilla-query-order-key-case",
    "get-vanilla-query-unreserved",
    "get-vanilla-utf8-query",
    "get-vanilla-with-session-token",
    "post-header-key-case",
    "post-header-key-sort",
    "post-header-value-case",
    "post-sts-header-after",
    "post-sts-header-before",
    "post-vanilla",
    "post-vanilla-empty-query-value",
    "post-vanilla-query",
    "post-x-www-form-urlencoded",
    "post-x-www-form-urlencoded-parameters",
)


@dataclass(frozen=True)
class HttpRequest:
    """A request as the vectors write it (``request.txt``, ``query-signed-request.txt``)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def parse_http(text: str) -> HttpRequest:
    """Request line (the target may hold spaces), ``Name:value`` headers with obs-fold
    continuation lines (kept with their line break), blank line, body."""
    head, _, body = text.partition("\n\n")
    request_line, *lines = head.split("\n")
    method, _, rest = request_line.partition(" ")
    target = rest.removesuffix(" HTTP/1.1")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\n{line}")
        elif line:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return HttpRequest(method, target, tuple(headers), body.encode())


@dataclass(frozen=True)
class Case:
    name: str
    context: dict[str, Any]
    request: HttpRequest
    files: dict[str, str]

    @property
    def credential(self) -> Credential:
        creds = self.context["credentials"]
        return Credential(
            access_key_id=creds["access_key_id"],
            secret_access_key=creds["secret_access_key"],
            session_token=creds.get("token"),
        )

    @property
    def now(self) -> float:
        return datetime.fromisoformat(self.context["timestamp"]).timestamp()

    @property
    def body(self) -> bytes:
        """The payload hashed into the canonical request (``sign_body``), else empty."""
        return self.request.body if self.context["sign_body"] else b""

    @property
    def omit_session_token(self) -> bool:
        return bool(self.context.get("omit_session_token", False))


def load(conformance_dir: Path, name: str) -> Case:
    folder = conformance_dir / SUITE / name
    return Case(
        name=name,
        context=json.loads((folder / "context.json").read_text()),
        request=parse_http((folder / "request.txt").read_text()),
        files={f: (folder / f).read_text() for f in QUERY_FILES},
    )


def test_suite_has_38_cases_all_with_query_vectors(conformance_dir: Path) -> None:
    folders = sorted(p.name for p in (conformance_dir / SUITE).iterdir() if p.is_dir())
    assert folders == sorted(CASES)
    for name in CASES:
        assert all((conformance_dir / SUITE / name / f).is_file() for f in QUERY_FILES), name


@pytest.mark.parametrize("name", CASES)
def test_conformance_presign(conformance_dir: Path, name: str) -> None:
    case = load(conformance_dir, name)
    signed = presign_request(
        method=case.request.method,
        path=case.request.path,
        query=case.request.query,
        headers=case.request.headers,
        credential=case.credential,
        region=case.context["region"],
        service=case.context["service"],
        now=case.now,
        expires=case.context["expiration_in_seconds"],
        omit_session_token=case.omit_session_token,
        body=case.body,
        normalize_path=case.context["normalize"],
    )
    expected = parse_http(case.files["query-signed-request.txt"])
    assert signed.canonical_request == case.files["query-canonical-request.txt"]
    assert signed.string_to_sign == case.files["query-string-to-sign.txt"]
    assert signed.signature == case.files["query-signature.txt"].strip()
    assert signed.target == expected.target
    assert signed.query == expected.query


@pytest.mark.parametrize("name", CASES)
def test_conformance_verify(conformance_dir: Path, name: str) -> None:
    case = load(conformance_dir, name)
    received = parse_http(case.files["query-signed-request.txt"])
    credential = case.credential

    def verify(*, accept_signed_token: bool) -> tuple[bool, str, str | None]:
        verdict = verify_presigned(
            method=received.method,
            target=received.target,
            headers=received.headers,
            now=case.now,
            lookup={credential.access_key_id: credential}.get,
            region=case.context["region"],
            services=frozenset({case.context["service"]}),
            methods=frozenset({"GET", "POST"}),
            body=case.body,
            normalize_path=case.context["normalize"],
            accept_signed_token=accept_signed_token,
        )
        return verdict.ok, verdict.reason, verdict.hint

    signs_token = credential.session_token is not None and not case.omit_session_token
    if signs_token:
        # The general SigV4 rule signs the token: AWS IoT's strict mode refuses it, and says
        # why; the lenient option accepts it.
        assert verify(accept_signed_token=False) == (False, "signature-mismatch", "token-signed")
        assert verify(accept_signed_token=True) == (True, "ok", "token-signed")
    else:
        assert verify(accept_signed_token=False) == (True, "ok", None)
