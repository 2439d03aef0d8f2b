"""The key store: AWS access keys the fake gateway knows, static or temporary.

A temporary key (minted by the fake Cognito, or registered by a test) carries its session
token and expiry. Expiry is checked at the WebSocket handshake only (aws-iot.md §1.5): a
live connection outlives its credentials. Each credential carries the IoT policy
documents of its principal (aws-iot.md §5, "a policy set per credential in the key store").
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

_UPPER_ALNUM = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "/+"


@dataclass(frozen=True)
class Credential:
    """One AWS access key. Secrets are excluded from ``repr`` so they never reach a log."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    #: Epoch seconds after which the key is refused at handshake; ``None`` = never.
    expires_at: float | None = None
    #: Who signs with this key (an IAM user name or a Cognito identity id).
    principal: str = "anonymous"
    #: IoT policy documents (JSON text) that apply to this principal.
    policies: tuple[str, ...] = ()

    @property
    def temporary(self) -> bool:
        """Temporary keys (``ASIA…``) need their session token (aws-iot.md §1.5)."""
        return self.session_token is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_access_key_id(*, temporary: bool) -> str:
    """An access key id shaped like AWS's: ``AKIA`` (long-term) or ``ASIA`` (temporary) + 16."""
    prefix = "ASIA" if temporary else "AKIA"
    return prefix + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(16))


def new_secret_access_key() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def new_session_token() -> str:
    # Real STS tokens are long base64 blobs with '/', '+' and '=' that clients must encode.
    body = secrets.token_urlsafe(180).replace("-", "+").replace("_", "/")
    return "IQoJb3JpZ2luX2Vj" + body + "=="


class CredentialStore:
    """Access keys by id. Not thread-safe; owned by one event loop."""

    def __init__(self) -> None:
        self._keys: dict[str, Credential] = {}

    def add(self, credential: Credential) -> Credential:
        self._keys[credential.access_key_id] = credential
        return credential

    def add_static(
        self, *, principal: str = "test-user", policies: tuple[str, ...] = ()
    ) -> Credential:
        """Register a new long-term key (``AKIA…``) and return it."""
        return self.add(
            Credential(
                access_key_id=new_access_key_id(temporary=False),
                secret_access_key=new_secret_access_key(),
                principal=principal,
                policies=policies,
            )
        )

    def mint_temporary(
        self,
        *,
        now: float,
        lifetime: float,
        principal: str,
        policies: tuple[str, ...] = (),
    ) -> Credential:
        """Register a new temporary key valid for ``lifetime`` seconds (fractions allowed)."""
        return self.add(
            Credential(
                access_key_id=new_access_key_id(temporary=True),
                secret_access_key=new_secret_access_key(),
                session_token=new_session_token(),
                expires_at=now + lifetime,
                principal=principal,
                policies=policies,
            )
        )

    def lookup(self, access_key_id: str) -> Credential | None:
        return self._keys.get(access_key_id)

    def expire(self, access_key_id: str, *, now: float) -> None:
        """Make a key expire at ``now`` (a fault: "expire credentials now")."""
        cred = self._keys[access_key_id]
        self._keys[access_key_id] = replace(cred, expires_at=now)

    def __iter__(self) -> Iterator[Credential]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)
