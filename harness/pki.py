"""The world's PKI: a CA per world, good and deliberately bad certificates, TLS contexts.

Real clients trust the harness through a CA file (``ca_filepath``, ``CAFilePath``,
``SSL_CERT_FILE``; aws-iot.md §3), so every world mints its own root with ``trustme`` and
issues from it:

* **server certificates** for the data endpoint ``<prefix>-ats.iot.<region>.amazonaws.com``,
  ``localhost`` and ``127.0.0.1`` (DNS and IP SANs), or the Dyson cloud's names;
* **device client certificates** for mTLS (the gateway maps a presented certificate to a
  thing by its SHA-256 fingerprint, which is also AWS's certificate id);
* **deliberately bad certificates** (:class:`BadCert`) that a fault plan rotates in:
  expired, not yet valid, wrong host, signed by an untrusted CA, self-signed, and a chain
  served without its intermediate;
* the **RSA-2048 token signing key** of a custom authorizer (aws-iot.md §2.2, §2.5).

Private keys are written only into the world's state folder, created with mode 0600 from
the start (``os.open(..., 0o600)``, never written then chmod-ed); nothing is written
anywhere else. Keys are ECDSA P-256 by default: handshakes are fast, which the
benchmarks want. One :class:`WorldPKI` issues any number of leaves, so a pytest session
can make the CA once.

Server contexts follow AWS's TLS shape (aws-iot.md §3): TLS 1.2 and 1.3 only, AWS's TLS 1.2
suites, no session tickets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import ipaddress
import itertools
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from trustme import KeyType

from harness.errors import ConfigError

__all__ = [
    "AWS_TLS12_CIPHERS",
    "BadCert",
    "ClientAuth",
    "IssuedCert",
    "KeyType",
    "TokenSigningKey",
    "WorldPKI",
    "fingerprint",
    "sign_token",
]

#: AWS IoT's TLS 1.2 suites (aws-iot.md §3, 2023 list), in OpenSSL names. TLS 1.3 suites
#: are OpenSSL's defaults, which are exactly AWS's three.
AWS_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES128-SHA256",
        "AES128-SHA",
        "AES256-GCM-SHA384",
        "AES256-SHA256",
        "AES256-SHA",
    ]
)

#: Whether a server asks for a client certificate: ``optional`` on 443, where ALPN decides
#: between mTLS and WSS, ``required`` on 8883 (aws-iot.md §3 table).
ClientAuth = Literal["none", "optional", "required"]

_VERIFY_MODES: dict[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

_ORGANIZATION = "iot-harness"
# Good certificates are valid for a fixed, very wide window (as trustme's are): no clock.
_DEFAULT_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_DEFAULT_NOT_AFTER = datetime.datetime(3000, 1, 1, tzinfo=datetime.UTC)
#: The only name a WRONG_HOST certificate covers (``.invalid`` never resolves, RFC 2606).
WRONG_HOST_NAME = "wrong-host.invalid"

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\.?")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


class BadCert(Enum):
    """The deliberately bad certificates a fault plan can serve (aws-iot.md §3, §8)."""

    #: ``notAfter`` is in the past: "certificate has expired".
    EXPIRED = "expired"
    #: ``notBefore`` is in the future: "certificate is not yet valid".
    NOT_YET_VALID = "not-yet-valid"
    #: Signed by the world CA, but only for :data:`WRONG_HOST_NAME`: "Hostname mismatch".
    WRONG_HOST = "wrong-host"
    #: Right names, signed by a CA the client does not trust: "unable to get local issuer".
    UNTRUSTED_CA = "untrusted-ca"
    #: Right names, signed by its own key: "self-signed certificate".
    SELF_SIGNED = "self-signed"
    #: Issued by the world's intermediate CA but served without it: "unable to get local
    #: issuer certificate" (the good case, ``server_cert(via_intermediate=True)``, serves
    #: the chain).
    MISSING_INTERMEDIATE = "missing-intermediate"


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate, its served chain and its private key, written to the state folder.

    ``cert_file`` holds ``chain_pem`` (what a server or client presents: the leaf, then any
    intermediates); ``key_file`` holds the private key, mode 0600. The key is kept out of
    ``repr`` so it never reaches a log.
    """

    #: The file stem in the state folder (unique per world).
    name: str
    #: Subject alternative names (DNS names and IP addresses), possibly empty.
    identities: tuple[str, ...]
    common_name: str
    #: The leaf certificate alone.
    cert_pem: bytes
    #: The leaf and the intermediates it is served with.
    chain_pem: bytes
    cert_file: Path
    key_file: Path
    not_before: datetime.datetime
    not_after: datetime.datetime
    private_key_pem: bytes = field(repr=False)
    #: ``None`` for a good certificate.
    defect: BadCert | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER in lowercase hex (AWS's certificate id)."""
        return fingerprint(self.cert_pem)

    def configure_cert(self, context: ssl.SSLContext) -> None:
        """Make ``context`` present this certificate, also on a live server context.

        Handshakes that start afterwards present the new chain, which is how a fault plan
        rotates a listener's certificate. OpenSSL keeps one certificate per key type, so
        rotate between certificates of the same key type (a world issues one type unless
        told otherwise).
        """
        context.load_cert_chain(self.cert_file, self.key_file)


@dataclass(frozen=True)
class TokenSigningKey:
    """A custom authorizer's RSA-2048 token signing key (aws-iot.md §2.2, §2.5).

    ``public_key_pem`` (SubjectPublicKeyInfo) is what the authorizer's
    ``tokenSigningPublicKeys`` holds; ``private_key_file`` (mode 0600) is what the world
    descriptor names for clients that sign their own tokens.
    """

    name: str
    private_key_file: Path
    public_key_pem: str
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)

    def sign(self, token: str) -> str:
        """The ``x-amz-customauthorizer-signature`` value for ``token``."""
        return sign_token(self.private_key, token)

    @classmethod
    def load(cls, private_key_file: Path | str, *, name: str = "authorizer") -> TokenSigningKey:
        """Read a key file written by :meth:`WorldPKI.token_signing_key` (or ``openssl``)."""
        path = Path(private_key_file)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load token signing key {path}: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"token signing key {path} is not an RSA key")
        return cls(
            name=name,
            private_key_file=path,
            public_key_pem=_public_pem(key),
            private_key=key,
        )


def sign_token(private_key: rsa.RSAPrivateKey, token: str) -> str:
    """Base64 RSASSA-PKCS1-v1_5 / SHA-256 signature over the raw token bytes.

    The same bytes ``openssl dgst -sha256 -sign key | base64`` produces (aws-iot.md §2.2);
    a 2048-bit key gives the 344 characters the Dyson cloud returns (§2.5).
    """
    try:
        data = token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ConfigError("a token to sign must be encodable as UTF-8") from None
    signature = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def fingerprint(certificate: bytes | str) -> str:
    """SHA-256 of a certificate's DER in lowercase hex: 64 characters.

    AWS IoT's certificate id is this hash, so the gateway finds the thing a presented
    client certificate belongs to by it (aws-iot.md §3). Accepts PEM (the first
    certificate in it) or DER (``getpeercert(binary_form=True)``). Anything that is not a
    certificate is a :class:`~harness.errors.ConfigError`.
    """
    data = certificate.encode("ascii", "replace") if isinstance(certificate, str) else certificate
    der = data
    if b"-----BEGIN" in data:
        match = _PEM_CERT.search(data)
        if match is None:
            raise ConfigError("PEM data holds no CERTIFICATE block")
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the PEM CERTIFICATE block is not valid base64") from None
    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        raise ConfigError("not an X.509 certificate (PEM or DER)") from None
    return hashlib.sha256(der).hexdigest()


class WorldPKI:
    """A world's CA and everything it issues, written only under ``state_dir``.

    ``ca_file`` (``<state_dir>/ca.pem``, public) is the descriptor's ``iot.ca_file`` and
    what ``SSL_CERT_FILE`` / ``NODE_EXTRA_CA_CERTS`` name in the sandbox (DESIGN.md).
    """

    def __init__(self, state_dir: Path | str, *, key_type: KeyType = KeyType.ECDSA) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.key_type = key_type
        self.ca_file = self.state_dir / "ca.pem"
        #: The CA's private key (mode 0600). A state folder that already holds ``ca.pem``
        #: and ``ca.key`` keeps its CA: clients trust it once, across restarts, and gateways
        #: on several machines given copies of the folder present one CA (README, "Running
        #: across processes and machines").
        self.ca_key_file = self.state_dir / "ca.key"
        self._ca = self._load_ca() or self._mint_ca()
        self._intermediate: trustme.CA | None = None
        self._rogue: trustme.CA | None = None
        self._server_certs: dict[tuple[str, ...], IssuedCert] = {}
        self._ca_keys: dict[int, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {}
        self._loaded_token_keys: dict[Path, TokenSigningKey] = {}

    def _load_ca(self) -> trustme.CA | None:
        if not (self.ca_file.exists() and self.ca_key_file.exists()):
            return None
        try:
            ca = trustme.CA.from_pem(self.ca_file.read_bytes(), self.ca_key_file.read_bytes())
            key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
            certificate = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"cannot load the CA in {self.state_dir} (ca.pem, ca.key): {exc}"
            ) from None
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
            raise ConfigError(f"{self.ca_key_file} is not the key of {self.ca_file}")
        # Leaves are issued with the CA's own kind of key.
        self.key_type = KeyType.RSA if isinstance(key, rsa.RSAPrivateKey) else KeyType.ECDSA
        return ca

    def _mint_ca(self) -> trustme.CA:
        ca = trustme.CA(
            organization_name=_ORGANIZATION,
            organization_unit_name="iot-harness world CA",
            key_type=self.key_type,
        )
        with contextlib.suppress(FileNotFoundError):
            self.ca_key_file.unlink()  # a lone key without its certificate is useless
        _write_file(self.ca_key_file, ca.private_key_pem.bytes(), mode=0o600, exclusive=True)
        _write_file(self.ca_file, ca.cert_pem.bytes(), mode=0o644, exclusive=False)
        return ca

    # Trust

    @property
    def ca_pem(self) -> bytes:
        """The world's root certificate, PEM: what clients trust."""
        return bytes(self._ca.cert_pem.bytes())

    def configure_trust(self, context: ssl.SSLContext) -> None:
        """Make ``context`` trust the world CA (server verification, or client certs)."""
        context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))

    # Certificates

    def server_cert(
        self,
        *hostnames: str,
        key_type: KeyType | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        via_intermediate: bool = False,
    ) -> IssuedCert:
        """A good server certificate for ``hostnames`` (DNS names or IP addresses).

        ``via_intermediate`` issues it from the world's intermediate CA and serves the
        intermediate with it, as AWS's ATS chain has one (aws-iot.md §3).
        """
        if not hostnames:
            raise ConfigError("a server certificate needs at least one hostname")
        issuer = self._intermediate_ca() if via_intermediate else self._ca
        return self._issue(
            stem=f"server-{hostnames[0]}",
            issuer=issuer,
            identities=hostnames,
            common_name=hostnames[0],
            usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
            key_type=key_type,
            not_before=not_before,
            not_after=not_after,
        )

    def client_cert(
        self,
        thing_name: str,
        *,
        key_type: KeyType | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCert:
        """A device certificate for mTLS; its subject CN is ``thing_name``, no SAN."""
        if not thing_name:
            raise ConfigError("a client certificate needs a thing name")
        return self._issue(
            stem=f"client-{thing_name}",
            issuer=self._ca,
            identities=(),
            common_name=thing_name,
            usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            key_type=key_type,
            not_before=not_before,
            not_after=not_after,
        )

    def bad_cert(
        self,
        kind: BadCert,
        *hostnames: str,
        common_name: str | None = None,
        key_type: KeyType | None = None,
        now: datetime.datetime | None = None,
    ) -> IssuedCert:
        """A certificate with ``kind``'s defect, otherwise good for ``hostnames``.

        Bad certificates carry both the server and client EKU, so an expired or untrusted
        *device* certificate is ``bad_cert(kind, common_name="thing")``. ``now`` is the
        real wall time the validity window is placed around (clients check certificates
        against their own clock, not the world's); it defaults to the current time.
        """
        if not hostnames and not common_name:
            raise ConfigError("a bad certificate needs a hostname or a common name")
        moment = now or datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        identities: tuple[str, ...] = hostnames
        not_before: datetime.datetime | None = None
        not_after: datetime.datetime | None = None
        issuer: trustme.CA | None = self._ca
        served_with_chain = True
        if kind is BadCert.EXPIRED:
            not_before, not_after = moment - 30 * day, moment - day
        elif kind is BadCert.NOT_YET_VALID:
            not_before, not_after = moment + day, moment + 30 * day
        elif kind is BadCert.WRONG_HOST:
            identities = (WRONG_HOST_NAME,)
        elif kind is BadCert.UNTRUSTED_CA:
            issuer = self._rogue_ca()
        elif kind is BadCert.SELF_SIGNED:
            issuer = None
        elif kind is BadCert.MISSING_INTERMEDIATE:
            issuer = self._intermediate_ca()
            served_with_chain = False
        return self._issue(
            stem=f"bad-{kind.value}",
            issuer=issuer,
            identities=identities,
            common_name=common_name or identities[0],
            usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
            key_type=key_type,
            not_before=not_before,
            not_after=not_after,
            served_with_chain=served_with_chain,
            defect=kind,
        )

    def token_signing_key(
        self, name: str = "authorizer", *, reuse: bool = False
    ) -> TokenSigningKey:
        """A new RSA-2048 custom-authorizer signing key; the private half goes to a 0600 file.

        AWS requires at least 2048 bits (aws-iot.md §2.2); the Dyson cloud's signatures are
        256 bytes (§2.5). With ``reuse``, the key this folder already holds for ``name``
        (``token-<name>.key``) is loaded instead: a world's default authorizer keeps its
        key across restarts and machines, and worlds sharing the pytest session's PKI do
        not each generate one (RSA key generation is most of a world's start-up time).
        """
        existing = self.state_dir / f"{_safe_stem(f'token-{name}')}.key"
        if reuse and existing.exists():
            # Loading checks the RSA key (35 ms): once per process and file.
            loaded = self._loaded_token_keys.get(existing)
            if loaded is None or loaded.name != name:
                loaded = self._loaded_token_keys[existing] = TokenSigningKey.load(
                    existing, name=name
                )
            return loaded
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self._reserve(f"token-{name}", (".key",))[0]
        _write_file(path, pem, mode=0o600, exclusive=True)
        return TokenSigningKey(
            name=name, private_key_file=path, public_key_pem=_public_pem(key), private_key=key
        )

    # Contexts

    def server_context(
        self,
        *hostnames: str,
        cert: IssuedCert | None = None,
        # Clients
        client_auth: ClientAuth = "none",
        client_cas: Sequence[bytes] = (),
        # Protocol
        alpn: Sequence[str] | None = None,
        min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        max_version: ssl.TLSVersion | None = None,
        ciphers: str | None = AWS_TLS12_CIPHERS,
    ) -> ssl.SSLContext:
        """A server context shaped like AWS IoT's (aws-iot.md §3).

        It presents ``cert``, or else one good certificate for ``hostnames`` (issued once
        and reused, so several listeners share it). TLS 1.2 and 1.3 only by default, AWS's
        TLS 1.2 suites, no session tickets. With ``client_auth`` other than ``none`` it
        verifies client certificates against the world CA and ``client_cas`` (extra PEM
        trust anchors, e.g. a thing's self-signed certificate registered without a CA).
        The caller may still set ``sni_callback``.
        """
        if cert is None:
            if not hostnames:
                raise ConfigError("server_context needs hostnames or a cert")
            cert = self._server_certs.get(hostnames)
            if cert is None:
                cert = self._server_certs[hostnames] = self.server_cert(*hostnames)
        if client_auth not in _VERIFY_MODES:
            raise ConfigError(f"client_auth must be none, optional or required: {client_auth!r}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = min_version
        if max_version is not None:
            context.maximum_version = max_version
        if ciphers is not None:
            try:
                context.set_ciphers(ciphers)
            except ssl.SSLError:
                raise ConfigError(f"no usable cipher in {ciphers!r}") from None
        # "SessionTicket extension not supported" (aws-iot.md §3); also saves work per
        # handshake.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        cert.configure_cert(context)
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        if client_auth != "none":
            self.configure_trust(context)
            for pem in client_cas:
                context.load_verify_locations(cadata=pem.decode("ascii"))
            context.verify_mode = _VERIFY_MODES[client_auth]
        return context

    def client_context(
        self,
        *,
        cert: IssuedCert | None = None,
        alpn: Sequence[str] | None = None,
        check_hostname: bool = True,
    ) -> ssl.SSLContext:
        """A client context that trusts only the world CA and presents ``cert`` if given."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.configure_trust(context)
        context.check_hostname = check_hostname
        if cert is not None:
            cert.configure_cert(context)
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        return context

    # Internals

    def _intermediate_ca(self) -> trustme.CA:
        if self._intermediate is None:
            self._intermediate = self._ca.create_child_ca(key_type=self.key_type)
        return self._intermediate

    def _rogue_ca(self) -> trustme.CA:
        """A CA nobody trusts, made once per world."""
        if self._rogue is None:
            self._rogue = trustme.CA(
                organization_name=_ORGANIZATION,
                organization_unit_name="untrusted CA",
                key_type=self.key_type,
            )
        return self._rogue

    def _ca_key(self, ca: trustme.CA) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        """The CA's signing key, parsed once (trustme exposes it only as PEM)."""
        key = self._ca_keys.get(id(ca))
        if key is None:
            loaded = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise ConfigError(f"unsupported CA key type {type(loaded).__name__}")
            key = self._ca_keys[id(ca)] = loaded
        return key

    def _reserve(self, stem: str, suffixes: Sequence[str]) -> list[Path]:
        """Fresh paths in the state folder: ``<stem>[-n]<suffix>`` that do not exist yet."""
        safe = _safe_stem(stem)
        for n in itertools.count(1):
            base = safe if n == 1 else f"{safe}-{n}"
            paths = [self.state_dir / f"{base}{suffix}" for suffix in suffixes]
            if not any(os.path.lexists(p) for p in paths):
                return paths
        raise AssertionError("unreachable")  # pragma: no cover

    def _issue(
        self,
        *,
        stem: str,
        issuer: trustme.CA | None,
        identities: Iterable[str],
        common_name: str,
        usages: Sequence[x509.ObjectIdentifier],
        key_type: KeyType | None,
        not_before: datetime.datetime | None,
        not_after: datetime.datetime | None,
        served_with_chain: bool = True,
        defect: BadCert | None = None,
    ) -> IssuedCert:
        """Build, sign and write one leaf; ``issuer=None`` makes it self-signed."""
        sans = tuple(identities)
        names = [_general_name(s) for s in sans]
        key = _generate_key(key_type or self.key_type)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            ]
        )
        start = not_before or _DEFAULT_NOT_BEFORE
        end = not_after or _DEFAULT_NOT_AFTER
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        chain: list[bytes] = []
        signing_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if issuer is None:
            builder = builder.issuer_name(subject)
            signing_key = key
        else:
            issuer_cert = x509.load_pem_x509_certificate(issuer.cert_pem.bytes())
            issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            builder = builder.issuer_name(issuer_cert.subject).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
                critical=False,
            )
            signing_key = self._ca_key(issuer)
            if served_with_chain:
                ca: trustme.CA | None = issuer
                while ca is not None and ca.parent_cert is not None:
                    chain.append(bytes(ca.cert_pem.bytes()))
                    ca = ca.parent_cert
        certificate = builder.sign(signing_key, hashes.SHA256())
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain_pem = cert_pem + b"".join(chain)
        cert_file, key_file = self._reserve(stem, (".pem", ".key"))
        _write_file(key_file, key_pem, mode=0o600, exclusive=True)
        _write_file(cert_file, chain_pem, mode=0o644, exclusive=True)
        return IssuedCert(
            name=cert_file.stem,
            identities=sans,
            common_name=common_name,
            cert_pem=cert_pem,
            chain_pem=chain_pem,
            cert_file=cert_file,
            key_file=key_file,
            not_before=start,
            not_after=end,
            defect=defect,
            private_key_pem=key_pem,
        )


def _general_name(identity: str) -> x509.GeneralName:
    """A SAN entry: an IP address, or an ASCII DNS name (wildcards allowed)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        pass
    if len(identity) > 253 or not _HOSTNAME.fullmatch(identity):
        raise ConfigError(f"not a hostname or IP address: {identity!r}")
    return x509.DNSName(identity.rstrip(".").lower())


def _generate_key(key_type: KeyType) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _safe_stem(stem: str) -> str:
    """``stem`` as a file name in the state folder."""
    return _UNSAFE_FILE_CHARS.sub("_", stem).strip("._") or "cert"


def _public_der(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigError(f"unsupported CA key type {type(key).__name__}")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _write_file(path: Path, data: bytes, *, mode: int, exclusive: bool) -> None:
    """Write ``data`` to a file created with ``mode`` (never widened later).

    ``exclusive`` refuses an existing file, so a private key file can only ever be one we
    created with mode 0600; symlinks are never followed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
