"""Option types shared by ``iot-harness serve`` (:mod:`harness.cli`) and ``iot-harness
sandbox`` (:mod:`harness.sandbox_command`).

Each is an argparse ``type=``: it returns the value or raises ``ArgumentTypeError`` with a
sentence argparse prints after the option's name (one line, exit status 2). They live here,
not in :mod:`harness.cli`, because ``harness.cli`` mounts the sandbox's subcommand, so the
sandbox cannot import them from there without a cycle.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.errors import ConfigError

if TYPE_CHECKING:
    from simulators.dyson.world import DysonDeviceSpec

__all__ = [
    "account_id",
    "device_list",
    "endpoint_prefix",
    "engine",
    "host_address",
    "lifetime",
    "port_number",
    "region",
    "thing_name",
    "worker_count",
]


def _matching(pattern: str, what: str, example: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(text: str) -> str:
        if not compiled.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (like {example})")
        return text

    return check


#: ``us-east-1``, ``ap-southeast-2``, ``us-gov-west-1`` (aws-iot.md §3).
region = _matching(r"[a-z]{2}(-[a-z]+)+-\d+", "an AWS region", "us-east-1")
#: The account-specific part of ``<prefix>-ats.iot.<region>.amazonaws.com`` (aws-iot.md §3).
endpoint_prefix = _matching(
    r"[a-z0-9]{1,40}", "an endpoint prefix: lower-case letters and digits", "a3example1"
)
account_id = _matching(r"\d{12}", "a 12-digit AWS account id", "123456789012")
#: AWS IoT thing names (aws-iot.md §5).
thing_name = _matching(r"[a-zA-Z0-9:_-]{1,128}", "a thing name", "my-thing")


def port_number(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not in 0-65535 (0 = any free port)")
    return value


def host_address(text: str) -> str:
    """An IP address literal a client can connect to (not ``0.0.0.0`` or ``::``)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address; use a literal such as 127.0.0.1"
        ) from None
    if address.is_unspecified:
        raise argparse.ArgumentTypeError(
            f"{text} is not an address a client can connect to; name one, such as 127.0.0.1"
        )
    return str(address)


def lifetime(text: str) -> float:
    """A credential lifetime in seconds: finite and > 0, fractions allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the lifetime must be > 0 seconds, got {text}")
    return value


def engine(text: str) -> str:
    """``amqtt`` (embedded) or ``mqtt://HOST:PORT`` (an external broker)."""
    if text == "amqtt":
        return text
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme != "mqtt" or not parsed.hostname or port == -1 or parsed.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'amqtt' nor mqtt://host:port")
    return text


def worker_count(text: str) -> int:
    """``serve --workers``: gateway processes, 1 to :data:`harness.workers.MAX_WORKERS`."""
    from harness.workers import MAX_WORKERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is not in 1-{MAX_WORKERS}")
    return value


def device_list(text: str) -> tuple[DysonDeviceSpec, ...]:
    """``438,527:cloud,438M:local@1883``: :func:`simulators.dyson.world.parse_device_list`."""
    from simulators.dyson.world import parse_device_list  # the Dyson side only when asked

    try:
        return parse_device_list(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
