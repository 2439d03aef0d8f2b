"""Where a client script run as a ``command`` client finds its world, and how it reports.

A client under test run as a command (``kind: command``, issue [clients], "Running any
client") reads the world descriptor named by ``IOT_HARNESS_DESCRIPTOR`` (DESIGN.md
contract 1) and writes ``{"kind": "client.…", ...}`` lines on stdout, which the runner
puts on the world's timeline. The scripts ``client_*.py`` beside this module import it
(Python puts a script's folder first on ``sys.path``).

:func:`real_names` lets a Python client keep the names and ports it would use against
AWS or a Dyson device (``<prefix>-ats.iot.<region>.amazonaws.com:443``,
``cognito-identity.<region>.amazonaws.com:443``, ``<serial>.local:1883``; aws-iot.md §3,
§6, dyson.md §1.1). Outside the sandbox the world listens on loopback at ports the OS
chose, so it routes those names there inside this process with
:func:`harness.resolver.override` (which patches ``socket.getaddrinfo``: paho, botocore
and ``ssl`` then connect to the world while TLS still names the real host). In
``iot-harness sandbox`` the descriptor has a ``sandbox`` section, the names resolve
through the private hosts file at their real ports, and nothing is patched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness.resolver import Route, override

__all__ = ["descriptor", "emit", "in_sandbox", "real_names", "routes", "signed_token"]

#: The variable naming the descriptor file (DESIGN.md contract 1).
DESCRIPTOR_ENVIRONMENT = "IOT_HARNESS_DESCRIPTOR"


def emit(kind: str, **fields: Any) -> None:
    """One event for the harness's timeline (a JSON line on stdout; ``kind`` ``client.*``)."""
    print(json.dumps({"kind": kind, **fields}, default=str), flush=True)


def descriptor() -> dict[str, Any]:
    """The world descriptor; exits with status 2 and one line on stderr when there is none."""
    name = os.environ.get(DESCRIPTOR_ENVIRONMENT)
    if not name:
        sys.exit(f"error: {DESCRIPTOR_ENVIRONMENT} is not set: run this under the harness")
    data = json.loads(Path(name).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        sys.exit(f"error: {name} is not a world descriptor (a JSON object)")
    return data


def signed_token(authorizer: Mapping[str, Any], token: str) -> str:
    """``token`` signed with the custom authorizer's private key from the descriptor:
    base64 of RSA PKCS#1 v1.5 over SHA-256, as a device's backend signs it (aws-iot.md
    §2.1). The caller URL-encodes it where it goes into a query string."""
    key = serialization.load_pem_private_key(
        Path(str(authorizer["private_key_file"])).read_bytes(), password=None
    )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the authorizer's signing key is not an RSA key")
    signature = key.sign(token.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def in_sandbox(world: Mapping[str, Any]) -> bool:
    """Whether the client runs in ``iot-harness sandbox`` (the real names resolve there)."""
    return isinstance(world.get("sandbox"), Mapping)


def routes(world: Mapping[str, Any]) -> dict[str, Route]:
    """The real names of the world's parts → where the world really listens.

    The gateway's endpoint (443: WSS and ALPN ``mqtt``, 8883: MQTT over TLS), Cognito's
    host (443), the Dyson API's host (443) and each device's ``<serial>.local`` (1883).
    """
    out: dict[str, Route] = {}
    iot = world.get("iot") or {}
    if iot.get("endpoint"):
        out[str(iot["endpoint"])] = Route(
            address=str(iot.get("connect_host", "127.0.0.1")),
            ports={443: int(iot["wss_port"]), 8883: int(iot["mqtts_port"])},
        )
    cognito = world.get("cognito") or {}
    if cognito.get("url") and cognito.get("endpoint"):
        out[str(cognito["endpoint"])] = _https_route(str(cognito["url"]))
    dyson = world.get("dyson") or {}
    if dyson.get("api_url"):
        route = _https_route(str(dyson["api_url"]))
        for host in dyson.get("api_hosts") or ():
            out[str(host)] = route
    for device in dyson.get("devices") or ():
        if device.get("local_hostname") and device.get("local_port"):
            out[str(device["local_hostname"])] = Route(
                address=str(device.get("local_host") or "127.0.0.1"),
                ports={1883: int(device["local_port"])},
            )
    return out


def _https_route(url: str) -> Route:
    parts = urllib.parse.urlsplit(url)
    return Route(address=parts.hostname or "127.0.0.1", ports={443: parts.port or 443})


@contextlib.contextmanager
def real_names(world: Mapping[str, Any]) -> Iterator[None]:
    """While the block runs, the real names reach the world (module docstring)."""
    if in_sandbox(world):
        yield
        return
    with override(routes(world)):
        yield
