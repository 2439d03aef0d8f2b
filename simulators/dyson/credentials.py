"""Credentials the Dyson cloud hands out: local broker passwords and AWS IoT tokens.

Sans-I/O (DESIGN.md): no sockets, no clocks; callers pass ``now``. Two families:

* **Local broker credentials** (dyson.md §1.2, "Derivation A"). The manifest's
  ``localBrokerCredentials`` (v3) / ``LocalCredentials`` (v2) is base64 of
  AES-256-CBC(key = bytes 0x01..0x20, IV = 16 zero bytes, PKCS7 padding) over the JSON
  text ``{"serial": "<SN>", "apPasswordHash": "<88 chars>"}``, exactly as libdyson-neon
  (``libdyson/cloud/utils.py``, ``tests/cloud/utils.py encrypt_credential``), opendyson
  (``cloud/device_mapper.go``) and libdyson-rest (``decrypt_local_credentials``) read it.
  The plaintext uses Python's default ``json.dumps`` separators (``", "``, ``": "``), so a
  15-character serial gives 139 bytes, 144 after padding: the 192 base64 characters the
  spec names. Some robots append further JSON or text after the object ("Trailing data",
  §1.2; field-bugs.md FB-04): a strict parser fails with "Extra data", libdyson-rest
  decodes only the first object. :func:`encrypt_local_credentials` can append such data;
  :func:`decrypt_local_credentials` reads it leniently (libdyson-rest) or strictly
  (libdyson-neon's ``json.loads``).
  The MQTT password itself, ``apPasswordHash``, is 88 base64 characters (64 bytes); older
  devices derive it from the Wi-Fi sticker as base64(sha512(password)) ("Derivation B"):
  :func:`wifi_password_hash`.
* **AWS IoT custom-authorizer credentials** (dyson.md §6 "IoT credentials", aws-iot.md
  §2.5). ``POST /v2/authorize/iot-credentials`` returns ``ClientId`` = ``TokenValue`` (a
  UUID), ``TokenKey`` ``token``, ``TokenSignature`` (base64 RSASSA-PKCS1-v1_5/SHA-256 of
  ``TokenValue`` by the authorizer's 2048-bit key: 344 characters, aws-iot.md §2.2) and
  ``CustomAuthorizerName`` ``cld-iot-credentials-lambda-authorizer``. The cloud keeps an
  :class:`IssuedIotToken` per token so the world's authorizer Lambda can refuse expired
  ones (dyson.md §6: token lifetime **(unknown)**, option ``token_ttl_s``).

Bad input to the decoders raises :class:`LocalCredentialsError` or
:class:`IotCredentialsError` (:class:`~harness.errors.ProtocolError` subclasses with a stable
``reason``), never another exception. Secrets (``apPasswordHash``, the token signature) are
kept out of every ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from harness.errors import ConfigError, ProtocolError
from harness.pki import TokenSigningKey
from simulators.dyson.local_auth import ap_password_hash

__all__ = [
    "DYSON_AUTHORIZER_NAME",
    "DYSON_TOKEN_KEY",
    "LOCAL_CREDENTIALS_IV",
    "LOCAL_CREDENTIALS_KEY",
    "IotCredentials",
    "IotCredentialsError",
    "IssuedIotToken",
    "LocalCredentials",
    "LocalCredentialsError",
    "TokenSigner",
    "as_signer",
    "decrypt_local_credentials",
    "encrypt_local_credentials",
    "issue_iot_credentials",
    "local_credentials_plaintext",
    "new_ap_password_hash",
    "new_bearer_token",
    "wifi_password_hash",
]

#: AES-256 key of ``localBrokerCredentials``: the bytes 1..32 (dyson.md §1.2).
LOCAL_CREDENTIALS_KEY = bytes(range(1, 33))
#: Its CBC IV: 16 zero bytes (dyson.md §1.2).
LOCAL_CREDENTIALS_IV = bytes(16)
_BLOCK = 16

#: ``CustomAuthorizerName`` the real cloud returns (dyson.md §6; aws-iot.md §2.5).
DYSON_AUTHORIZER_NAME = "cld-iot-credentials-lambda-authorizer"
#: ``TokenKey``: the header / query name that carries ``TokenValue`` (aws-iot.md §2.5).
DYSON_TOKEN_KEY = "token"  # noqa: S105 - the name of the token field, not a token


# Local broker credentials


class LocalCredentialsError(ProtocolError):
    """A ``localBrokerCredentials`` value that does not decrypt to the credential JSON.

    Reasons: ``not-base64``, ``bad-length`` (not a whole number of AES blocks),
    ``bad-padding`` (PKCS7), ``not-utf8``, ``not-json``, ``not-an-object``, ``extra-data``
    (strict mode only, dyson.md §1.2 "Trailing data"), ``missing-field``.
    """


@dataclass(frozen=True)
class LocalCredentials:
    """The decrypted local credential: MQTT username (serial) and password."""

    serial: str
    #: The local MQTT password (dyson.md §1.2): a secret, kept out of ``repr``.
    ap_password_hash: str = field(repr=False)
    #: Text after the first JSON object (robots' trailing data, dyson.md §1.2); "" if none.
    trailing: str = field(default="", repr=False)


def local_credentials_plaintext(serial: str, ap_password_hash: str, *, trailing: str = "") -> bytes:
    """The JSON text the cloud encrypts: ``{"serial": ..., "apPasswordHash": ...}`` + trailing.

    ``json.dumps`` with its default separators, as libdyson-neon's test helper builds it
    (dyson.md §1.2).
    """
    if not isinstance(serial, str) or not isinstance(ap_password_hash, str):
        raise ConfigError("serial and ap_password_hash must be strings")
    if not isinstance(trailing, str):
        raise ConfigError("trailing must be a string")
    text = json.dumps({"serial": serial, "apPasswordHash": ap_password_hash}) + trailing
    return text.encode("utf-8", "surrogatepass")


def encrypt_local_credentials(serial: str, ap_password_hash: str, *, trailing: str = "") -> str:
    """The manifest's ``localBrokerCredentials`` for this device (dyson.md §1.2, §6).

    Deterministic: CBC with a fixed IV gives the same text for the same input, as the real
    cloud's fixed key and IV do.
    """
    plaintext = local_credentials_plaintext(serial, ap_password_hash, trailing=trailing)
    pad = _BLOCK - len(plaintext) % _BLOCK
    padded = plaintext + bytes([pad]) * pad
    encryptor = Cipher(
        algorithms.AES(LOCAL_CREDENTIALS_KEY), modes.CBC(LOCAL_CREDENTIALS_IV)
    ).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode("ascii")


def decrypt_local_credentials(value: str, *, strict: bool = False) -> LocalCredentials:
    """Decrypt a ``localBrokerCredentials`` value (dyson.md §1.2, Derivation A).

    Lenient by default, like libdyson-rest (``JSONDecoder.raw_decode``): data after the
    first JSON object is returned in ``trailing``. With ``strict=True`` it is refused with
    ``extra-data``, as libdyson-neon's ``json.loads`` fails on it ("Extra data").
    """
    if not isinstance(value, str):
        raise LocalCredentialsError("not-base64", "local credentials must be a base64 string")
    try:
        ciphertext = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise LocalCredentialsError(
            "not-base64", "local credentials are not valid base64"
        ) from None
    if not ciphertext or len(ciphertext) % _BLOCK:
        raise LocalCredentialsError(
            "bad-length",
            f"local credentials decode to {len(ciphertext)} bytes, not a whole number of "
            f"{_BLOCK}-byte AES blocks",
        )
    decryptor = Cipher(
        algorithms.AES(LOCAL_CREDENTIALS_KEY), modes.CBC(LOCAL_CREDENTIALS_IV)
    ).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise LocalCredentialsError(
            "bad-padding", "PKCS7 padding is wrong: not encrypted with the Dyson key and IV?"
        )
    try:
        text = padded[:-pad].decode("utf-8")
    except UnicodeDecodeError:
        raise LocalCredentialsError("not-utf8", "decrypted credentials are not UTF-8") from None
    try:
        obj, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as exc:
        raise LocalCredentialsError(
            "not-json", f"decrypted credentials are not JSON: {type(exc).__name__}"
        ) from None
    if not isinstance(obj, dict):
        raise LocalCredentialsError(
            "not-an-object", f"decrypted credentials are a JSON {type(obj).__name__}"
        )
    trailing = text[end:]
    if strict and trailing.strip():
        raise LocalCredentialsError(
            "extra-data",
            f"Extra data after the credential object at char {end} "
            "(dyson.md §1.2: robots' trailing data)",
        )
    serial, password = obj.get("serial"), obj.get("apPasswordHash")
    if not isinstance(serial, str) or not isinstance(password, str):
        raise LocalCredentialsError(
            "missing-field", "decrypted credentials lack a string serial or apPasswordHash"
        )
    return LocalCredentials(serial=serial, ap_password_hash=password, trailing=trailing)


#: ``apPasswordHash`` from a Wi-Fi sticker password (dyson.md §1.2, B): the device's rule.
wifi_password_hash = ap_password_hash


def new_ap_password_hash() -> str:
    """A fresh random local password of the real shape: 64 bytes, 88 base64 characters."""
    return base64.b64encode(secrets.token_bytes(64)).decode("ascii")


def new_bearer_token() -> str:
    """A login token of the real shape ``<64 hex>-1`` (dyson.md §6, verify)."""
    return f"{secrets.token_hex(32)}-1"


# AWS IoT custom-authorizer credentials

#: Signs a token: returns the base64 ``x-amz-customauthorizer-signature`` of its argument.
TokenSigner = Callable[[str], str]


def as_signer(signer: TokenSigningKey | TokenSigner) -> TokenSigner:
    """A :class:`~harness.pki.TokenSigningKey` or a signing callable, as a callable."""
    if isinstance(signer, TokenSigningKey):
        return signer.sign
    if callable(signer):
        return signer
    raise ConfigError("signer must be a TokenSigningKey or a callable token -> signature")


class IotCredentialsError(ProtocolError):
    """An ``iot-credentials`` answer that is not what the cloud returns (reason
    ``bad-iot-credentials``)."""


@dataclass(frozen=True, kw_only=True)
class IotCredentials:
    """``IoTCredentials`` of ``POST /v2/authorize/iot-credentials`` (dyson.md §6)."""

    client_id: str
    #: Equal to ``client_id`` on the real cloud (thoukydides ``dyson-cloud-types.ts``).
    token_value: str
    token_signature: str = field(repr=False)
    custom_authorizer_name: str = DYSON_AUTHORIZER_NAME
    token_key: str = DYSON_TOKEN_KEY

    def to_wire(self) -> dict[str, str]:
        """The JSON object, members in the order the real cloud sends them."""
        return {
            "ClientId": self.client_id,
            "TokenKey": self.token_key,
            "TokenValue": self.token_value,
            "TokenSignature": self.token_signature,
            "CustomAuthorizerName": self.custom_authorizer_name,
        }

    @classmethod
    def from_wire(cls, data: Any) -> IotCredentials:
        """Parse ``IoTCredentials``; every member must be a non-empty string."""
        if not isinstance(data, Mapping):
            raise IotCredentialsError("bad-iot-credentials", "IoTCredentials is not an object")
        names = ("ClientId", "TokenKey", "TokenValue", "TokenSignature", "CustomAuthorizerName")
        values: dict[str, str] = {}
        for name in names:
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise IotCredentialsError(
                    "bad-iot-credentials", f"IoTCredentials.{name} is missing or not a string"
                )
            values[name] = value
        return cls(
            client_id=values["ClientId"],
            token_key=values["TokenKey"],
            token_value=values["TokenValue"],
            token_signature=values["TokenSignature"],
            custom_authorizer_name=values["CustomAuthorizerName"],
        )


@dataclass(frozen=True, kw_only=True)
class IssuedIotToken:
    """The cloud's record of one issued IoT token, for the world's authorizer Lambda."""

    #: ``TokenValue``, equal to ``ClientId``.
    token: str
    serial: str
    account_id: str
    #: World epoch seconds.
    issued_at: float
    #: World epoch seconds, or ``None`` for a token that never expires.
    expires_at: float | None
    revoked: bool = False

    @property
    def client_id(self) -> str:
        return self.token

    def valid_at(self, now: float) -> bool:
        """Not revoked and not expired at ``now`` (expired *at* ``expires_at``)."""
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


def issue_iot_credentials(
    signer: TokenSigner,
    *,
    client_id: str | None = None,
    authorizer_name: str = DYSON_AUTHORIZER_NAME,
    token_key: str = DYSON_TOKEN_KEY,
) -> IotCredentials:
    """New IoT credentials: ``TokenValue`` = ``ClientId`` (a fresh UUID unless given), signed.

    The signature is over the raw ``TokenValue`` bytes, RSASSA-PKCS1-v1_5 / SHA-256 as the
    AWS custom-auth docs describe (dyson.md §6: **(inferred for Dyson)**).
    """
    token = client_id if client_id is not None else str(uuid.uuid4())
    return IotCredentials(
        client_id=token,
        token_value=token,
        token_signature=signer(token),
        custom_authorizer_name=authorizer_name,
        token_key=token_key,
    )
