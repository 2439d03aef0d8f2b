"""A client under test run as a command: TLS to the gateway, then a custom-auth upgrade.

The TLS scenarios' negative control (field-bugs.md FB-18: "never a fallback to
``verify=False``"). It reads the world from the descriptor named by
``IOT_HARNESS_DESCRIPTOR`` (DESIGN.md contract 1, :mod:`client_world`), opens TLS to
the gateway's WebSocket port naming the endpoint (SNI), and only if the handshake
succeeds sends a WebSocket upgrade carrying its credentials: a token signed with the
first authorizer's key in the ``x-amz-customauthorizer-*`` headers (aws-iot.md §2.1,
§2.2). Modes:

* ``verify`` (default): the certificate is checked against the world's CA and the
  endpoint name; a bad certificate ends the run before any credential is sent;
* ``insecure``: no certificate check at all;
* ``no-hostname-check``: the chain is checked, the name is not (paho's
  ``tls_insecure_set(True)``);
* ``fallback-insecure``: verifies first and, after a certificate error, tries again
  without checking (the anti-pattern FB-18 warns against).

Each step is a JSON line on stdout (``client.tls``, ``client.error``, ``client.upgrade``),
which the scenario runner records as events.

    python tls_probe.py [verify|insecure|no-hostname-check|fallback-insecure]
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import sys
from typing import Any

from client_world import descriptor, emit, signed_token

MODES = ("verify", "insecure", "no-hostname-check", "fallback-insecure")
TIMEOUT = 5.0


def tls_context(*, verify: bool, ca_file: str, check_hostname: bool = True) -> ssl.SSLContext:
    if verify:
        context = ssl.create_default_context(cafile=ca_file)
        context.check_hostname = check_hostname
        return context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def upgrade_request(endpoint: str, authorizer: dict[str, Any]) -> bytes:
    """GET /mqtt with the custom-authorizer headers (aws-iot.md §2.1)."""
    token = "tls-probe"  # noqa: S105 - what the authorizer sees, not a secret
    headers = {
        "Host": endpoint,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "mqtt",
        "x-amz-customauthorizer-name": str(authorizer["name"]),
        str(authorizer.get("token_key") or "token"): token,
    }
    if authorizer.get("private_key_file"):
        headers["x-amz-customauthorizer-signature"] = signed_token(authorizer, token)
    lines = ["GET /mqtt HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def attempt(
    iot: dict[str, Any], authorizer: dict[str, Any], *, verify: bool, check_hostname: bool = True
) -> str:
    """One connection: ``tls-verify``/``tls``/``network`` if it failed, else the status."""
    endpoint = str(iot["endpoint"])
    context = tls_context(verify=verify, ca_file=str(iot["ca_file"]), check_hostname=check_hostname)
    try:
        raw = socket.create_connection((iot["connect_host"], iot["wss_port"]), timeout=TIMEOUT)
    except OSError as exc:
        emit("client.error", stage="tcp", reason="network", error=str(exc))
        return "network"
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=endpoint)
        except ssl.SSLCertVerificationError as exc:
            emit("client.error", stage="tls", reason="tls-verify", verify=verify, error=str(exc))
            return "tls-verify"
        except (ssl.SSLError, OSError) as exc:
            emit("client.error", stage="tls", reason="tls", verify=verify, error=str(exc))
            return "tls"
        with tls:
            emit("client.tls", ok=True, verify=verify, version=tls.version())
            tls.sendall(upgrade_request(endpoint, authorizer))
            status_line = tls.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            emit("client.upgrade", status_line=status_line[:80])
            return status_line


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "verify"
    if mode not in MODES:
        print(f"mode must be one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    world = descriptor()
    iot, authorizer = world["iot"], world["authorizers"][0]
    outcome = attempt(
        iot, authorizer, verify=mode != "insecure", check_hostname=mode != "no-hostname-check"
    )
    if outcome == "tls-verify" and mode == "fallback-insecure":
        outcome = attempt(iot, authorizer, verify=False)
    return 0 if " 101 " in outcome else 1


if __name__ == "__main__":
    sys.exit(main())
