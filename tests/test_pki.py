"""harness.pki: real TLS handshakes over loopback with good and deliberately bad certificates.

Each handshake runs a blocking server in a worker thread and a blocking client here, both
with timeouts from tests.timing.TIMEOUT; the outcome records what each side saw.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import ssl
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.pki import (
    WRONG_HOST_NAME,
    BadCert,
    ClientAuth,
    IssuedCert,
    KeyType,
    TokenSigningKey,
    WorldPKI,
    fingerprint,
    sign_token,
)
from tests.timing import TIMEOUT

ENDPOINT = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
GATEWAY_NAMES = (ENDPOINT, "localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WorldPKI:
    return WorldPKI(tmp_path_factory.mktemp("pki-state"))


@pytest.fixture(scope="module")
def gateway_cert(pki: WorldPKI) -> IssuedCert:
    return pki.server_cert(*GATEWAY_NAMES)


# A loopback handshake


@dataclass
class ServerSide:
    error: Exception | None = None
    peer_der: bytes | None = None
    sni: list[str | None] = field(default_factory=list)


@dataclass
class Outcome:
    server: ServerSide
    client_error: Exception | None = None
    version: str | None = None
    alpn: str | None = None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server.error is None


def _serve_once(listener: socket.socket, context: ssl.SSLContext, side: ServerSide) -> None:
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT)
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            side.peer_der = tls.getpeercert(binary_form=True)
            tls.sendall(b"ok")
    except (ssl.SSLError, OSError) as exc:
        side.error = exc
    finally:
        conn.close()


def handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    server_hostname: str | None,
) -> Outcome:
    """One TLS connection over 127.0.0.1; the client reads two bytes to see late alerts.

    In TLS 1.3 the server checks the client certificate after the client has finished its
    handshake, so a rejection reaches the client only as an alert on its first read.
    """
    side = ServerSide()
    server_context.sni_callback = lambda _obj, name, _ctx: side.sni.append(name)
    outcome = Outcome(server=side)
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        listener.settimeout(TIMEOUT)
        served = pool.submit(_serve_once, listener, server_context, side)
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
                client_context.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                outcome.version = tls.version()
                outcome.alpn = tls.selected_alpn_protocol()
                if tls.recv(2) != b"ok":
                    outcome.client_error = ConnectionResetError("closed without data")
        except (ssl.SSLError, OSError) as exc:
            outcome.client_error = exc
        served.result(timeout=2 * TIMEOUT)
    return outcome


# Good server certificates


@pytest.mark.parametrize("name", GATEWAY_NAMES)
def test_gateway_cert_verifies_for_each_name(
    pki: WorldPKI, gateway_cert: IssuedCert, name: str
) -> None:
    outcome = handshake(pki.server_context(cert=gateway_cert), pki.client_context(), name)
    assert outcome.ok, outcome
    assert outcome.version in ("TLSv1.2", "TLSv1.3")
    # A client connecting by IP address sends no SNI (RFC 6066 §3); by name it does.
    assert outcome.server.sni == [None if name == "127.0.0.1" else name]


def test_server_context_from_hostnames_reuses_one_cert(pki: WorldPKI) -> None:
    names = ("appapi.cp.dyson.com", "appapi.cp.dyson.cn")
    first = pki.server_context(*names)
    second = pki.server_context(*names)
    for name in names:
        assert handshake(first, pki.client_context(), name).ok
    outcome = handshake(second, pki.client_context(), "appapi.cp.dyson.cn")
    assert outcome.ok
    served = [p for p in pki.state_dir.iterdir() if p.name.startswith("server-appapi")]
    assert len(served) == 2  # one .pem and one .key: the cert was issued once


def test_chain_via_intermediate_verifies(pki: WorldPKI) -> None:
    cert = pki.server_cert(ENDPOINT, via_intermediate=True)
    assert cert.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert cert.cert_file.read_bytes() == cert.chain_pem
    assert handshake(pki.server_context(cert=cert), pki.client_context(), ENDPOINT).ok


def test_rsa_server_cert(pki: WorldPKI) -> None:
    cert = pki.server_cert("localhost", key_type=KeyType.RSA)
    key = serialization.load_pem_private_key(cert.private_key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    outcome = handshake(pki.server_context(cert=cert), pki.client_context(), "localhost")
    assert outcome.ok, outcome


def test_alpn_is_negotiated(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    server = pki.server_context(cert=gateway_cert, alpn=["x-amzn-mqtt-ca", "mqtt", "http/1.1"])
    outcome = handshake(server, pki.client_context(alpn=["mqtt"]), ENDPOINT)
    assert outcome.ok and outcome.alpn == "mqtt"


# Bad server certificates

#: kind -> (OpenSSL verify code, words of the message a user sees)
BAD_SERVER = {
    BadCert.EXPIRED: (10, "certificate has expired"),
    BadCert.NOT_YET_VALID: (9, "certificate is not yet valid"),
    BadCert.WRONG_HOST: (62, "Hostname mismatch"),
    BadCert.UNTRUSTED_CA: (20, "unable to get local issuer certificate"),
    BadCert.SELF_SIGNED: (18, "self-signed certificate"),
    BadCert.MISSING_INTERMEDIATE: (20, "unable to get local issuer certificate"),
}


@pytest.mark.parametrize("kind", list(BadCert), ids=lambda k: k.value)
def test_bad_server_cert_fails_verification(pki: WorldPKI, kind: BadCert) -> None:
    cert = pki.bad_cert(kind, *GATEWAY_NAMES)
    assert cert.defect is kind
    outcome = handshake(pki.server_context(cert=cert), pki.client_context(), ENDPOINT)
    code, words = BAD_SERVER[kind]
    error = outcome.client_error
    assert isinstance(error, ssl.SSLCertVerificationError), outcome
    assert error.verify_code == code
    assert words.lower() in error.verify_message.lower()
    assert outcome.server.error is not None  # the server got the client's alert


def test_bad_cert_shapes(pki: WorldPKI) -> None:
    now = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
    expired = pki.bad_cert(BadCert.EXPIRED, ENDPOINT, now=now)
    assert expired.not_after < now
    early = pki.bad_cert(BadCert.NOT_YET_VALID, ENDPOINT, now=now)
    assert early.not_before > now
    wrong = pki.bad_cert(BadCert.WRONG_HOST, ENDPOINT)
    assert wrong.identities == (WRONG_HOST_NAME,)
    missing = pki.bad_cert(BadCert.MISSING_INTERMEDIATE, ENDPOINT)
    assert missing.chain_pem == missing.cert_pem
    leaf = x509.load_pem_x509_certificate(missing.cert_pem)
    ca = x509.load_pem_x509_certificate(pki.ca_pem)
    assert leaf.issuer != ca.subject  # issued by the intermediate
    self_signed = x509.load_pem_x509_certificate(
        pki.bad_cert(BadCert.SELF_SIGNED, ENDPOINT).cert_pem
    )
    assert self_signed.issuer == self_signed.subject


def test_wrong_host_by_ip(pki: WorldPKI) -> None:
    cert = pki.bad_cert(BadCert.WRONG_HOST, "127.0.0.1")
    outcome = handshake(pki.server_context(cert=cert), pki.client_context(), "127.0.0.1")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in outcome.client_error.verify_message


def test_rotating_a_live_context(pki: WorldPKI) -> None:
    """A fault plan swaps the certificate of a running listener between handshakes."""
    good = pki.server_cert(ENDPOINT, via_intermediate=True)
    context = pki.server_context(cert=good)
    assert handshake(context, pki.client_context(), ENDPOINT).ok
    for kind in (BadCert.EXPIRED, BadCert.MISSING_INTERMEDIATE, BadCert.UNTRUSTED_CA):
        pki.bad_cert(kind, ENDPOINT).configure_cert(context)
        outcome = handshake(context, pki.client_context(), ENDPOINT)
        assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), kind
        assert outcome.client_error.verify_code == BAD_SERVER[kind][0]
    good.configure_cert(context)
    assert handshake(context, pki.client_context(), ENDPOINT).ok


# Protocol versions


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_refused(pki: WorldPKI, gateway_cert: IssuedCert, version: ssl.TLSVersion) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client really offer the old version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = version
        client.maximum_version = version
    outcome = handshake(pki.server_context(cert=gateway_cert), client, ENDPOINT)
    assert isinstance(outcome.server.error, ssl.SSLError)
    assert outcome.server.error.reason == "UNSUPPORTED_PROTOCOL"
    assert outcome.client_error is not None


def test_tls13_only_policy(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    server = pki.server_context(cert=gateway_cert, min_version=ssl.TLSVersion.TLSv1_3)
    assert handshake(server, pki.client_context(), ENDPOINT).version == "TLSv1.3"
    client = pki.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = handshake(server, client, ENDPOINT)
    assert outcome.client_error is not None and outcome.server.error is not None


def test_tls12_works_with_aws_suites(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    client = pki.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = handshake(pki.server_context(cert=gateway_cert), client, ENDPOINT)
    assert outcome.ok and outcome.version == "TLSv1.2"


# Client certificates (mTLS)


def _mtls(
    pki: WorldPKI,
    gateway_cert: IssuedCert,
    client_cert: IssuedCert | None,
    client_auth: ClientAuth = "required",
    client_cas: tuple[bytes, ...] = (),
) -> Outcome:
    server = pki.server_context(cert=gateway_cert, client_auth=client_auth, client_cas=client_cas)
    return handshake(server, pki.client_context(cert=client_cert), ENDPOINT)


def test_client_cert_accepted_and_fingerprinted(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    device = pki.client_cert("kitchen-sensor")
    outcome = _mtls(pki, gateway_cert, device)
    assert outcome.ok, outcome
    assert outcome.server.peer_der is not None
    assert fingerprint(outcome.server.peer_der) == device.fingerprint
    subject = x509.load_pem_x509_certificate(device.cert_pem).subject
    assert subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "kitchen-sensor"


@pytest.mark.parametrize(
    "kind", [BadCert.UNTRUSTED_CA, BadCert.SELF_SIGNED, BadCert.EXPIRED], ids=lambda k: k.value
)
def test_bad_client_cert_rejected(pki: WorldPKI, gateway_cert: IssuedCert, kind: BadCert) -> None:
    outcome = _mtls(pki, gateway_cert, pki.bad_cert(kind, common_name="rogue-thing"))
    assert isinstance(outcome.server.error, ssl.SSLError)
    assert outcome.server.error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert outcome.client_error is not None


def test_missing_client_cert(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    required = _mtls(pki, gateway_cert, None, "required")
    assert required.server.error is not None and required.client_error is not None
    optional = _mtls(pki, gateway_cert, None, "optional")
    assert optional.ok and optional.server.peer_der is None


def test_extra_client_trust_anchor(pki: WorldPKI, gateway_cert: IssuedCert) -> None:
    """A thing registered without a CA: its self-signed certificate is trusted directly."""
    own = pki.bad_cert(BadCert.SELF_SIGNED, common_name="byo-thing")
    outcome = _mtls(pki, gateway_cert, own, client_cas=(own.cert_pem,))
    assert outcome.ok, outcome
    assert outcome.server.peer_der is not None
    assert fingerprint(outcome.server.peer_der) == own.fingerprint


# Files and secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_stay_in_state_dir_with_private_keys_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    world = WorldPKI(state)
    issued = [
        world.server_cert(ENDPOINT),
        world.client_cert("thing/with:odd chars"),
        *(world.bad_cert(kind, ENDPOINT) for kind in BadCert),
    ]
    signing = world.token_signing_key("dyson")
    assert world.ca_file == state / "ca.pem"
    assert world.ca_file.read_bytes() == world.ca_pem
    assert list(tmp_path.iterdir()) == [state]
    keys = {p for p in state.iterdir() if p.suffix == ".key"}
    assert keys == {c.key_file for c in issued} | {signing.private_key_file, world.ca_key_file}
    for key in keys:
        assert _mode(key) == 0o600, key
    for cert in issued:
        assert cert.cert_file.parent == state and cert.key_file.parent == state
        assert cert.key_file.read_bytes() == cert.private_key_pem
        assert _mode(cert.cert_file) & 0o077 != 0o077  # public files are readable


def test_names_never_collide_or_reuse_files(tmp_path: Path) -> None:
    world = WorldPKI(tmp_path)
    first, second = world.client_cert("dup"), world.client_cert("dup")
    assert first.key_file != second.key_file and first.cert_file != second.cert_file
    # A stale file from an earlier run is never overwritten (or followed, if a link).
    (tmp_path / "client-other.key").symlink_to(tmp_path / "elsewhere")
    third = world.client_cert("other")
    assert third.key_file.name == "client-other-2.key"
    assert not (tmp_path / "elsewhere").exists()


def test_a_state_dir_keeps_its_ca_and_default_keys(tmp_path: Path) -> None:
    # Clients trust a folder's CA once, across restarts, and copies of the folder on
    # other machines present the same CA (README, "Running across processes and machines").
    first = WorldPKI(tmp_path)
    second = WorldPKI(tmp_path)
    assert first.ca_file == second.ca_file
    assert second.ca_file.read_bytes() == second.ca_pem == first.ca_pem
    leaf = x509.load_pem_x509_certificate(second.server_cert(ENDPOINT).cert_pem)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(first.ca_pem))
    key = first.token_signing_key("auth", reuse=True)
    assert second.token_signing_key("auth", reuse=True).public_key_pem == key.public_key_pem
    assert second.token_signing_key("auth").public_key_pem != key.public_key_pem


def test_a_ca_whose_key_is_gone_is_replaced(tmp_path: Path) -> None:
    first = WorldPKI(tmp_path)
    first.ca_key_file.unlink()
    assert WorldPKI(tmp_path).ca_pem != first.ca_pem


@pytest.mark.parametrize("damage", ["garbage", "another-key"])
def test_a_damaged_ca_is_a_config_error(tmp_path: Path, damage: str) -> None:
    WorldPKI(tmp_path / "a")
    ca_key = tmp_path / "a" / "ca.key"
    if damage == "garbage":
        ca_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    else:
        ca_key.write_bytes((WorldPKI(tmp_path / "b").ca_key_file).read_bytes())
    with pytest.raises(ConfigError, match=r"ca\.key|CA in"):
        WorldPKI(tmp_path / "a")


def test_private_key_not_in_repr(pki: WorldPKI) -> None:
    cert = pki.client_cert("quiet")
    body = cert.private_key_pem.decode().splitlines()[1]
    assert body not in repr(cert)


# Token signing (aws-iot.md §2.2, §2.5)


@pytest.fixture(scope="module")
def signing_key(pki: WorldPKI) -> TokenSigningKey:
    return pki.token_signing_key("cld-iot-credentials-lambda-authorizer")


def test_token_signing_key(signing_key: TokenSigningKey) -> None:
    key = signing_key
    assert _mode(key.private_key_file) == 0o600
    assert key.private_key.key_size == 2048
    assert key.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    token = "7b1c0b7e-2d1a-4a6f-9d5c-1f2e3d4c5b6a"
    signature = key.sign(token)
    assert len(signature) == 344  # as the Dyson cloud's TokenSignature
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(base64.b64decode(signature), token.encode(), padding.PKCS1v15(), hashes.SHA256())
    # Deterministic (PKCS#1 v1.5), and the same through the module function and a reload.
    loaded = TokenSigningKey.load(key.private_key_file, name=key.name)
    assert sign_token(loaded.private_key, token) == signature
    assert loaded.public_key_pem == key.public_key_pem
    private_body = key.private_key_file.read_text().splitlines()[1]
    assert private_body not in repr(key)


def test_token_signing_key_load_errors(tmp_path: Path, pki: WorldPKI) -> None:
    with pytest.raises(ConfigError):
        TokenSigningKey.load(tmp_path / "absent.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError):
        TokenSigningKey.load(garbage)
    with pytest.raises(ConfigError, match="not an RSA key"):
        TokenSigningKey.load(pki.client_cert("ec-thing").key_file)


def test_sign_token_rejects_unencodable(signing_key: TokenSigningKey) -> None:
    with pytest.raises(ConfigError):
        signing_key.sign("\ud800")


# Fingerprints


def test_fingerprint_forms_agree(pki: WorldPKI) -> None:
    cert = pki.client_cert("fp-thing")
    der = x509.load_pem_x509_certificate(cert.cert_pem).public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    assert fingerprint(der) == fingerprint(cert.cert_pem) == fingerprint(cert.cert_pem.decode())
    assert fingerprint(cert.chain_pem) == expected == cert.fingerprint  # first cert of a chain
    assert len(expected) == 64 and expected == expected.lower()


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "not a certificate",
    ],
)
def test_fingerprint_rejects_non_certificates(bad: bytes | str) -> None:
    with pytest.raises(ConfigError):
        fingerprint(bad)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fingerprint_fuzz(data: bytes | str) -> None:
    try:
        value = fingerprint(data)
    except ConfigError:
        return
    assert len(value) == 64


@given(st.binary(max_size=200))
def test_fingerprint_fuzz_inside_pem(body: bytes) -> None:
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ConfigError):
        fingerprint(pem)


# Misuse


def test_misuse_is_config_error(pki: WorldPKI) -> None:
    with pytest.raises(ConfigError):
        pki.server_cert()
    with pytest.raises(ConfigError, match="not a hostname"):
        pki.server_cert("bad host name")
    with pytest.raises(ConfigError):
        pki.server_cert("-leading-dash.example")
    with pytest.raises(ConfigError):
        pki.client_cert("")
    with pytest.raises(ConfigError):
        pki.bad_cert(BadCert.EXPIRED)
    with pytest.raises(ConfigError):
        pki.server_context()
    with pytest.raises(ConfigError):
        pki.server_context("localhost", ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ConfigError):
        pki.server_context("localhost", client_auth="sometimes")  # type: ignore[arg-type]


def test_wildcard_and_ipv6_names(pki: WorldPKI) -> None:
    cert = pki.server_cert("*.iot.eu-west-1.amazonaws.com", "::1")
    assert cert.identities == ("*.iot.eu-west-1.amazonaws.com", "::1")
    outcome = handshake(pki.server_context(cert=cert), pki.client_context(), ENDPOINT)
    assert outcome.ok, outcome


def test_state_dir_created_private(tmp_path: Path) -> None:
    world = WorldPKI(tmp_path / "a" / "b")
    assert world.state_dir.is_dir()
    assert _mode(world.state_dir) & 0o077 == 0
    assert os.path.samefile(world.ca_file.parent, world.state_dir)
