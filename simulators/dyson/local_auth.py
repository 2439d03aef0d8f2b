"""The device's side of local MQTT authentication (dyson.md §1.2, §1.3).

The local broker's username is the serial, ``[0-9A-Z]{3}-[A-Z]{2}-[0-9A-Z]{8,}``; the
password is ``apPasswordHash``, 88 base64 characters (64 bytes). Older devices print a
Wi-Fi password on a sticker, and ``apPasswordHash`` = base64(sha512(Wi-Fi password))
(§1.2 "Derivation B"; libdyson-neon ``libdyson/utils.py``); the SSID ``DYSON-<serial>-<type>``
gives serial and product type, with ``455A`` meaning ``455``.

A wrong password gets CONNACK return code **5**, not 4 (libdyson-neon #16, ha-dyson #263):
libdyson maps 4 to ``DysonInvalidCredential`` and everything else to
``DysonConnectionRefused``, so a real device yields the latter. An unknown username gets 5
too **(inferred)**. :meth:`BrokerLogin.connack_code` is that decision, pure; the
password is compared in constant time and never appears in a ``repr``. (The cloud side,
decrypting ``localBrokerCredentials`` into serial and ``apPasswordHash``, is
:mod:`simulators.dyson.credentials`.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field

from harness.errors import ConfigError

SERIAL_PATTERN = re.compile(r"[0-9A-Z]{3}-[A-Z]{2}-[0-9A-Z]{8,}")
#: ``apPasswordHash``: 88 base64 characters encoding 64 bytes (thoukydides
#: ``src/dyson-cloud-types.ts``).
AP_PASSWORD_HASH_LENGTH = 88
_SSID = re.compile(r"DYSON-(?P<serial>[0-9A-Z]{3}-[A-Z]{2}-[0-9A-Z]{8,})-(?P<type>[0-9]{3}[A-Z]?)")
_EYE_SSID = re.compile(r"(?:360EYE-)?(?P<serial>[0-9A-Z]{3}-[A-Z]{2}-[0-9A-Z]{8,})")
#: SSID product types that differ from the MQTT type (libdyson-neon ``_DEVICE_TYPE_MAP``).
_SSID_TYPE_MAP = {"455A": "455"}

#: CONNACK return codes the device answers (§1.2, §1.3).
CONNACK_ACCEPTED = 0
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_NOT_AUTHORIZED = 5


def is_valid_serial(serial: str) -> bool:
    """True for a Dyson serial such as ``NK6-CN-HAA0000A`` (§1.2)."""
    return SERIAL_PATTERN.fullmatch(serial) is not None


def validate_serial(serial: str) -> str:
    """``serial`` itself, or :class:`ConfigError` when it is not a Dyson serial (§1.2)."""
    if not is_valid_serial(serial):
        raise ConfigError(
            f"{serial!r} is not a Dyson serial: expected [0-9A-Z]{{3}}-[A-Z]{{2}}-[0-9A-Z]{{8,}}"
            " such as NK6-CN-HAA0000A (dyson.md §1.2)"
        )
    return serial


def ap_password_hash(wifi_password: str) -> str:
    """``apPasswordHash`` from a sticker Wi-Fi password: base64(sha512(utf-8)) (§1.2 B)."""
    digest = hashlib.sha512(wifi_password.encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_wifi_password() -> str:
    """A fresh sticker-style Wi-Fi password: eight lower-case letters **(inferred)**."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


@dataclass(frozen=True)
class WifiIdentity:
    """What a setup SSID tells: the serial and the MQTT product type (§1.2 B)."""

    serial: str
    product_type: str


def parse_wifi_ssid(ssid: str) -> WifiIdentity:
    """Serial and product type from ``DYSON-<serial>-<type>`` (``455A`` → ``455``), or a
    360 Eye's ``360EYE-<serial>`` / bare serial (type ``N223``); :class:`ConfigError` else."""
    match = _SSID.fullmatch(ssid)
    if match is not None:
        product_type = match["type"]
        return WifiIdentity(match["serial"], _SSID_TYPE_MAP.get(product_type, product_type))
    match = _EYE_SSID.fullmatch(ssid)
    if match is not None:
        return WifiIdentity(match["serial"], "N223")
    raise ConfigError(f"{ssid!r} is not a Dyson setup SSID such as DYSON-<serial>-438")


@dataclass(frozen=True)
class BrokerLogin:
    """The username (serial) and password (``apPasswordHash``) the device's broker accepts."""

    serial: str
    ap_password_hash: str = field(repr=False)

    def __post_init__(self) -> None:
        validate_serial(self.serial)
        if len(self.ap_password_hash) != AP_PASSWORD_HASH_LENGTH:
            raise ConfigError(
                f"apPasswordHash must be {AP_PASSWORD_HASH_LENGTH} base64 characters "
                f"(dyson.md §1.2), got {len(self.ap_password_hash)}"
            )

    @classmethod
    def from_wifi_password(cls, serial: str, wifi_password: str) -> BrokerLogin:
        """Credentials of an older device whose sticker gives the Wi-Fi password (§1.2 B)."""
        return cls(serial, ap_password_hash(wifi_password))

    def connack_code(self, username: str | None, password: bytes | str | None) -> int:
        """The CONNACK return code for a CONNECT's username and password (§1.2).

        0 when both match; 5 (not authorised) for a wrong or missing password and, by
        inference, for an unknown or missing username. Never 4.
        """
        if username != self.serial or password is None:
            return CONNACK_NOT_AUTHORIZED
        given = password if isinstance(password, bytes) else password.encode("utf-8")
        if hmac.compare_digest(given, self.ap_password_hash.encode("ascii")):
            return CONNACK_ACCEPTED
        return CONNACK_NOT_AUTHORIZED


def client_id_code(client_id: str, *, protocol_level: int, strict: bool) -> int:
    """CONNACK code for a client id under §1.3: with ``strict_client_id``, an MQTT 3.1
    (level 3) id that is empty or longer than 23 characters gets rc 2 (3.1 allows 1-23);
    otherwise every id is accepted (the default: whether devices enforce it is unknown)."""
    if strict and protocol_level == 3 and not 1 <= len(client_id) <= 23:
        return CONNACK_IDENTIFIER_REJECTED
    return CONNACK_ACCEPTED
