"""A world: the fake AWS side a client under test connects to, and its descriptor.

One :class:`World` holds the PKI (one CA), the event recorder and clock, the key store,
the gateway and the fake Cognito, all on loopback port 0 unless told otherwise. Out of
the box it registers what a newcomer needs to connect at once (issue [gateway], "CLI"):

* an identity pool with unauthenticated access whose identities may connect, publish,
  subscribe and receive outside AWS's reserved topics;
* one custom authorizer with signing enabled, its private key in the state folder and
  named in the descriptor, that accepts any correctly signed token with the same rights.

:meth:`World.descriptor` is the contract of DESIGN.md ("World descriptor").
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.auth import custom
from harness.auth.credentials import CredentialStore
from harness.auth.policy import allow_all_outside_reserved
from harness.cognito import FakeCognito, IdentityPool
from harness.events import Recorder
from harness.gateway import Gateway, GatewayConfig
from harness.pki import TokenSigningKey, WorldPKI

DEFAULT_AUTHORIZER = "iot-harness-authorizer"


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Everything a world is made of; ``None`` means "make one / use the default"."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    # Files: keys, certificates and events go here (a temporary folder if None).
    state_dir: Path | None = None
    events_file: Path | None = None
    # Cognito: the newcomer's pool and its credential lifetime in seconds (aws-iot.md §6)
    cognito: bool = True
    credential_lifetime: float = 3600.0
    # The newcomer defaults (pool and authorizer); scenarios switch them off.
    newcomer_defaults: bool = True


class World:
    """The running fake AWS side. ``async with World() as world: ...``."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self._stack = contextlib.AsyncExitStack()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.state_dir = self.config.state_dir or Path(".")
        self.pool: IdentityPool | None = None
        self.authorizer_key: TokenSigningKey | None = None

    async def __aenter__(self) -> World:
        cfg = self.config
        if cfg.state_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="iot-harness-")
            self.state_dir = Path(self._tempdir.name)
        else:
            self.state_dir = cfg.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        events_file = cfg.events_file or self.state_dir / "events.jsonl"
        self.recorder = Recorder(path=events_file)
        self.events_file = events_file
        self.clock = self.recorder.clock
        self.pki = WorldPKI(self.state_dir / "pki")
        self.credentials = CredentialStore()
        try:
            self.gateway = Gateway(
                cfg.gateway, pki=self.pki, recorder=self.recorder, credentials=self.credentials
            )
            await self._stack.enter_async_context(self.gateway)
            self.cognito: FakeCognito | None = None
            if cfg.cognito:
                region = cfg.gateway.region
                context = self.pki.server_context(
                    cfg.gateway.host, "localhost", f"cognito-identity.{region}.amazonaws.com"
                )
                self.cognito = FakeCognito(
                    region=region,
                    store=self.credentials,
                    recorder=self.recorder,
                    clock=self.clock,
                    ssl=context,
                    host=cfg.gateway.host,
                )
                await self._stack.enter_async_context(self.cognito)
            if cfg.newcomer_defaults:
                self._newcomer_defaults()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            self.recorder.close()
            if self._tempdir is not None:
                self._tempdir.cleanup()
                self._tempdir = None

    # Defaults

    @property
    def default_policy(self) -> str:
        gw = self.config.gateway
        return allow_all_outside_reserved(gw.region, gw.account_id)

    def _newcomer_defaults(self) -> None:
        if self.cognito is not None:
            self.pool = self.cognito.create_pool(
                allow_unauthenticated=True,
                credential_lifetime=self.config.credential_lifetime,
                policies=(self.default_policy,),
            )
        self.authorizer_key = self.pki.token_signing_key(DEFAULT_AUTHORIZER)
        policy = self.default_policy

        def accept_signed_tokens(event: custom.AuthorizerEvent) -> Mapping[str, Any]:
            # Signing is enabled, so the gateway only calls this for a verified signature.
            return {
                "isAuthenticated": True,
                "principalId": "harnessClient",
                "policyDocuments": [policy],
                "disconnectAfterInSeconds": 86400,
                "refreshAfterInSeconds": 300,
            }

        self.gateway.add_authorizer(
            custom.Authorizer(
                name=DEFAULT_AUTHORIZER,
                token_key="token",  # noqa: S106 - the name of the token field
                signing_enabled=True,
                public_keys=(self.authorizer_key.public_key_pem,),
                handler=accept_signed_tokens,
            )
        )

    # The contract

    def descriptor(self) -> dict[str, Any]:
        """The world descriptor of DESIGN.md: ports are the bound ones."""
        gw = self.config.gateway
        out: dict[str, Any] = {
            "iot": {
                "endpoint": gw.endpoint,
                "region": gw.region,
                "connect_host": gw.host,
                "wss_port": self.gateway.wss_port,
                "mqtts_port": self.gateway.mqtts_port,
                "ca_file": str(self.pki.ca_file),
                "account_id": gw.account_id,
            },
            "cognito": {
                "url": self.cognito.url if self.cognito else "",
                "identity_pool_id": self.pool.pool_id if self.pool else "",
            },
            "authorizers": [],
            "events_file": str(self.events_file),
        }
        if self.authorizer_key is not None:
            out["authorizers"].append(
                {
                    "name": DEFAULT_AUTHORIZER,
                    "token_key": "token",
                    "signing": True,
                    "private_key_file": str(self.authorizer_key.private_key_file),
                }
            )
        return out
