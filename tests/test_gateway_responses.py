"""AWS's upgrade responses, byte for byte (aws-iot.md §1.8, §1.9)."""

from __future__ import annotations

import json

import pytest

from harness.gateway import responses

TRACE_ID = "612ceea9-0000-4000-8000-000000000000"


def test_101_is_lowercase_and_echoes_the_subprotocol() -> None:
    raw = responses.switching_protocols(
        accept_key="s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", subprotocol="mqttv3.1"
    )
    assert raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in raw
    assert b"sec-websocket-protocol: mqttv3.1\r\n" in raw
    assert b"upgrade: websocket\r\n" in raw
    assert b"connection: upgrade\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")
    assert len(raw) < 1024  # AWSIoTPythonSDK v1 reads it with one read(1024)


@pytest.mark.parametrize(
    ("message", "length"),
    [
        pytest.param(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.",
            241,
            id="signature-mismatch",
        ),
        pytest.param(
            "Signature expired: 19700101T080004Z is now earlier than 20190101T000000Z "
            "(20190101T000500Z - 5 min.)",
            163,
            id="clock-skew",
        ),
        pytest.param(
            "Credential should be scoped to a valid region, not ''. ", 118, id="empty-region"
        ),
    ],
)
def test_403_body_lengths_match_aws(message: str, length: int) -> None:
    body = responses.forbidden_json(message, TRACE_ID)
    assert len(body) == length
    assert json.loads(body) == {"message": message, "traceId": TRACE_ID}


def test_403_headers_as_observed() -> None:
    raw = responses.forbidden("nope", trace_id=TRACE_ID)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 403 Forbidden"
    assert "x-amzn-ErrorType: ForbiddenException:" in lines
    assert "connection: keep-alive" in lines
    assert f"content-length: {len(body)}" in lines
    assert json.loads(body)["message"] == "nope"
