"""The HTTP responses of AWS IoT's WebSocket endpoint, byte for byte (aws-iot.md §1.8, §1.9).

Pure functions: the listener writes what they return in one TLS write.
"""

from __future__ import annotations

import email.utils
import json
import uuid

#: Subprotocols AWS IoT echoes (aws-iot.md §1.8): clients offer ``mqtt`` or ``mqttv3.1``.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")


def switching_protocols(*, accept_key: str, subprotocol: str | None) -> bytes:
    """AWS's 101: lowercase names, ``": "`` separators, no extensions (aws-iot.md §1.8).

    AWSIoTPythonSDK v1 reads the whole response with one ``read(1024)`` and searches for
    ``sec-websocket-accept: `` case-sensitively, so the shape matters.
    """
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "content-length: 0",
        "upgrade: websocket",
        "connection: upgrade",
        f"sec-websocket-accept: {accept_key}",
    ]
    if subprotocol is not None:
        lines.append(f"sec-websocket-protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def forbidden_json(message: str, trace_id: str) -> bytes:
    """AWS's compact 403 body ``{"message":…,"traceId":…}`` (aws-iot.md §1.9)."""
    return json.dumps(
        {"message": message, "traceId": trace_id}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def forbidden(
    message: str,
    *,
    status: int = 403,
    reason_phrase: str = "Forbidden",
    error_type: str = "ForbiddenException",
    trace_id: str | None = None,
    request_id: str | None = None,
    date: str | None = None,
) -> bytes:
    """AWS's refusal of an upgrade, headers as observed (aws-iot.md §1.9).

    ``connection: keep-alive`` is what AWS sends; paho-mqtt reports it as
    "WebSocket handshake error, connection not upgraded".
    """
    body = forbidden_json(message, trace_id or str(uuid.uuid4()))
    lines = [
        f"HTTP/1.1 {status} {reason_phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"date: {date or email.utils.formatdate(usegmt=True)}",
        f"x-amzn-RequestId: {request_id or uuid.uuid4()}",
        "connection: keep-alive",
        f"x-amzn-ErrorType: {error_type}:",
        "access-control-allow-origin: *",
        "access-control-expose-headers: x-amzn-ErrorMessage",
        "access-control-expose-headers: x-amzn-RequestId",
        "access-control-expose-headers: x-amzn-ErrorType",
        "access-control-expose-headers: Date",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def plain_response(status: int, reason_phrase: str, body: bytes = b"") -> bytes:
    """A minimal response for requests that are not WebSocket upgrades at all."""
    head = (
        f"HTTP/1.1 {status} {reason_phrase}\r\n"
        "content-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def forbidden_raw(
    status: int,
    reason_phrase: str,
    body: bytes,
    *,
    request_id: str | None = None,
    date: str | None = None,
) -> bytes:
    """A refusal with a status and body chosen by a fault plan, in AWS's header shape
    (aws-iot.md §1.9) without ``x-amzn-ErrorType``, which would claim a type the body
    may not have."""
    lines = [
        f"HTTP/1.1 {status} {reason_phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"date: {date or email.utils.formatdate(usegmt=True)}",
        f"x-amzn-RequestId: {request_id or uuid.uuid4()}",
        "connection: keep-alive",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
