"""Dyson cloud credentials (dyson.md §1.2, §6; aws-iot.md §2.5): local broker and IoT tokens."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from harness.auth.custom import verify_token_signature
from harness.errors import ConfigError
from harness.pki import TokenSigningKey, WorldPKI
from simulators.dyson.credentials import (
    DYSON_AUTHORIZER_NAME,
    DYSON_TOKEN_KEY,
    LOCAL_CREDENTIALS_IV,
    LOCAL_CREDENTIALS_KEY,
    IotCredentials,
    IotCredentialsError,
    IssuedIotToken,
    LocalCredentials,
    LocalCredentialsError,
    as_signer,
    decrypt_local_credentials,
    encrypt_local_credentials,
    issue_iot_credentials,
    local_credentials_plaintext,
    new_ap_password_hash,
    new_bearer_token,
    wifi_password_hash,
)

SERIAL = "NK6-CN-HAA0000A"
PASSWORD = base64.b64encode(bytes(range(64))).decode()


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> TokenSigningKey:
    return WorldPKI(tmp_path_factory.mktemp("pki")).token_signing_key("dyson")


def reference_encrypt(plaintext: bytes) -> str:
    """An independent AES-256-CBC + PKCS7 (the cryptography padder), as the spec states it."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    key = bytes([0x01 + i for i in range(32)])
    encryptor = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * 16)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def raw_encrypt(plaintext: bytes) -> str:
    """Encrypt already padded bytes (to build deliberately bad plaintexts)."""
    encryptor = Cipher(
        algorithms.AES(LOCAL_CREDENTIALS_KEY), modes.CBC(LOCAL_CREDENTIALS_IV)
    ).encryptor()
    return base64.b64encode(encryptor.update(plaintext) + encryptor.finalize()).decode()


def pkcs7(data: bytes) -> bytes:
    pad = 16 - len(data) % 16
    return data + bytes([pad]) * pad


# Local broker credentials (dyson.md §1.2)


def test_key_and_iv_are_the_spec_constants() -> None:
    assert bytes(range(1, 33)) == LOCAL_CREDENTIALS_KEY
    assert bytes(16) == LOCAL_CREDENTIALS_IV


def test_encrypt_has_the_real_shape_and_matches_an_independent_implementation() -> None:
    blob = encrypt_local_credentials(SERIAL, PASSWORD)
    # 15-character serial: 139 bytes of JSON, 144 after padding, 192 base64 characters.
    plaintext = local_credentials_plaintext(SERIAL, PASSWORD)
    assert plaintext == json.dumps({"serial": SERIAL, "apPasswordHash": PASSWORD}).encode()
    assert len(plaintext) == 139
    assert len(blob) == 192 and len(base64.b64decode(blob)) == 144
    assert blob == reference_encrypt(plaintext)
    assert encrypt_local_credentials(SERIAL, PASSWORD) == blob  # fixed key and IV


def test_round_trip() -> None:
    got = decrypt_local_credentials(encrypt_local_credentials(SERIAL, PASSWORD))
    assert got == LocalCredentials(serial=SERIAL, ap_password_hash=PASSWORD)
    assert PASSWORD not in repr(got)


def test_trailing_data_lenient_and_strict() -> None:
    trailing = ' {"robot": true}'
    blob = encrypt_local_credentials(SERIAL, PASSWORD, trailing=trailing)
    lenient = decrypt_local_credentials(blob)
    assert (lenient.ap_password_hash, lenient.trailing) == (PASSWORD, trailing)
    with pytest.raises(LocalCredentialsError) as info:
        decrypt_local_credentials(blob, strict=True)
    assert info.value.reason == "extra-data" and "char 139" in info.value.message
    # Whitespace after the object is not "extra data" (json.loads accepts it too).
    spaced = encrypt_local_credentials(SERIAL, PASSWORD, trailing="  \n")
    assert decrypt_local_credentials(spaced, strict=True).ap_password_hash == PASSWORD


def test_third_party_decoders_read_the_fake_cloud_credentials() -> None:
    """libdyson-neon (strict json.loads) and libdyson-rest (raw_decode), dyson.md §1.2."""
    neon = pytest.importorskip("libdyson.cloud.utils")
    blob = encrypt_local_credentials(SERIAL, PASSWORD)
    assert neon.decrypt_password(blob) == PASSWORD
    trailing = encrypt_local_credentials(SERIAL, PASSWORD, trailing=' {"x": 1}')
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        neon.decrypt_password(trailing)  # FB-04: libdyson-neon fails on robots' credentials
    rest = pytest.importorskip("libdyson_rest.client")
    client = rest.DysonClient()
    try:
        assert client.decrypt_local_credentials(blob, SERIAL) == PASSWORD
        assert client.decrypt_local_credentials(trailing, SERIAL) == PASSWORD
    finally:
        client.close()


def _bad(plaintext_padded: bytes) -> str:
    return raw_encrypt(plaintext_padded)


BAD_VALUES = [
    ("not base64!", "not-base64"),
    ("QUJD", "bad-length"),  # 3 bytes
    ("", "bad-length"),
    (base64.b64encode(bytes(17)).decode(), "bad-length"),
    (_bad(bytes(16)), "bad-padding"),  # pad byte 0
    (_bad(b"A" * 15 + b"\x11"), "bad-padding"),  # pad > 16
    (_bad(b"A" * 14 + b"\x01\x02"), "bad-padding"),  # inconsistent pad bytes
    (_bad(pkcs7(b"\xff\xfe")), "not-utf8"),
    (_bad(pkcs7(b"not json")), "not-json"),
    (_bad(pkcs7(b"[1, 2]")), "not-an-object"),
    (_bad(pkcs7(b'{"serial": "X"}')), "missing-field"),
    (_bad(pkcs7(b'{"serial": 1, "apPasswordHash": "p"}')), "missing-field"),
    (_bad(pkcs7(b"[" * 100_000)), "not-json"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_VALUES)
def test_bad_values_raise_the_documented_error(value: str, reason: str) -> None:
    with pytest.raises(LocalCredentialsError) as info:
        decrypt_local_credentials(value)
    assert info.value.reason == reason


def test_non_string_value_is_refused() -> None:
    with pytest.raises(LocalCredentialsError):
        decrypt_local_credentials(b"bytes")  # type: ignore[arg-type]


def test_plaintext_needs_strings() -> None:
    with pytest.raises(ConfigError):
        local_credentials_plaintext(SERIAL, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        local_credentials_plaintext(SERIAL, PASSWORD, trailing=None)  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_fuzz_decrypt_text(value: str) -> None:
    with contextlib.suppress(LocalCredentialsError):
        decrypt_local_credentials(value)


@given(st.binary(max_size=200), st.booleans())
def test_fuzz_decrypt_well_encrypted_garbage(data: bytes, strict: bool) -> None:
    try:
        got = decrypt_local_credentials(raw_encrypt(pkcs7(data)), strict=strict)
    except LocalCredentialsError:
        return
    assert isinstance(got.serial, str) and isinstance(got.ap_password_hash, str)


@given(st.text(max_size=40), st.text(max_size=100), st.text(max_size=40))
def test_fuzz_round_trip(serial: str, password: str, trailing: str) -> None:
    blob = encrypt_local_credentials(serial, password, trailing=trailing)
    got = decrypt_local_credentials(blob)
    assert (got.serial, got.ap_password_hash, got.trailing) == (serial, password, trailing)


def test_wifi_password_hash_is_base64_sha512() -> None:
    expected = base64.b64encode(hashlib.sha512(b"sticker-pass").digest()).decode()
    assert wifi_password_hash("sticker-pass") == expected
    assert len(expected) == 88


def test_fresh_secrets_have_the_real_shapes() -> None:
    password = new_ap_password_hash()
    assert len(password) == 88 and len(base64.b64decode(password)) == 64
    assert new_ap_password_hash() != password
    token = new_bearer_token()
    assert re.fullmatch(r"[0-9a-f]{64}-1", token)


# IoT credentials (dyson.md §6, aws-iot.md §2.5)


def test_issue_signs_the_token_value_with_the_authorizer_key(signing_key: TokenSigningKey) -> None:
    creds = issue_iot_credentials(as_signer(signing_key))
    assert creds.client_id == creds.token_value
    assert str(uuid.UUID(creds.client_id)) == creds.client_id
    assert creds.token_key == DYSON_TOKEN_KEY == "token"
    assert creds.custom_authorizer_name == DYSON_AUTHORIZER_NAME
    assert len(creds.token_signature) == 344
    assert verify_token_signature(
        creds.token_value, creds.token_signature, [signing_key.public_key_pem]
    )
    assert not verify_token_signature(
        str(uuid.uuid4()), creds.token_signature, [signing_key.public_key_pem]
    )
    assert creds.token_signature not in repr(creds)


def test_issue_with_a_given_client_id_and_callable_signer() -> None:
    creds = issue_iot_credentials(
        as_signer(lambda token: f"signed:{token}"),
        client_id="fixed",
        authorizer_name="other",
        token_key="tok",
    )
    assert creds.to_wire() == {
        "ClientId": "fixed",
        "TokenKey": "tok",
        "TokenValue": "fixed",
        "TokenSignature": "signed:fixed",
        "CustomAuthorizerName": "other",
    }
    assert list(creds.to_wire()) == [
        "ClientId",
        "TokenKey",
        "TokenValue",
        "TokenSignature",
        "CustomAuthorizerName",
    ]


def test_as_signer_refuses_other_things() -> None:
    with pytest.raises(ConfigError):
        as_signer("not a signer")  # type: ignore[arg-type]


def test_from_wire_round_trip_and_errors() -> None:
    creds = IotCredentials(
        client_id="a", token_value="a", token_signature="s", custom_authorizer_name="n"
    )
    assert IotCredentials.from_wire(creds.to_wire()) == creds
    bad_values: list[object] = [[], {"ClientId": "a"}, {**creds.to_wire(), "TokenSignature": 5}]
    for bad in bad_values:
        with pytest.raises(IotCredentialsError) as info:
            IotCredentials.from_wire(bad)
        assert info.value.reason == "bad-iot-credentials"


@given(st.dictionaries(st.text(max_size=25), st.none() | st.text(max_size=5) | st.integers()))
def test_fuzz_from_wire(data: dict[str, object]) -> None:
    with contextlib.suppress(IotCredentialsError):
        IotCredentials.from_wire(data)


def test_issued_token_validity() -> None:
    issued = IssuedIotToken(
        token="t", serial=SERIAL, account_id="a", issued_at=100.0, expires_at=101.0
    )
    assert issued.client_id == "t"
    assert issued.valid_at(100.999) and not issued.valid_at(101.0)
    forever = IssuedIotToken(
        token="t", serial=SERIAL, account_id="a", issued_at=100.0, expires_at=None
    )
    assert forever.valid_at(1e12)
    revoked = IssuedIotToken(
        token="t", serial=SERIAL, account_id="a", issued_at=0, expires_at=None, revoked=True
    )
    assert not revoked.valid_at(0)


def test_signing_key_file_loads_back(signing_key: TokenSigningKey, tmp_path: Path) -> None:
    # The descriptor names the key file; a client that signs its own tokens loads it.
    loaded = TokenSigningKey.load(signing_key.private_key_file)
    creds = issue_iot_credentials(as_signer(loaded))
    assert verify_token_signature(
        creds.token_value, creds.token_signature, [signing_key.public_key_pem]
    )
