"""A world: the fake AWS side a client under test connects to, and its descriptor.

One :class:`World` holds the PKI (one CA), the event recorder and clock, the key store,
the gateway and the fake Cognito, all on the gateway's address (loopback) and port 0
unless told otherwise. Cognito may have an address and port of its own
(``cognito_host``, ``cognito_port``), as may the Dyson API and each device's local broker
(:mod:`simulators.dyson.world`): the sandbox (:mod:`harness.sandbox`) puts each real name
on its own loopback address at its well-known port that way. Out of
the box it registers what a newcomer needs to connect at once (issue [gateway], "CLI"):

* an identity pool with unauthenticated access whose identities may connect, publish,
  subscribe and receive outside AWS's reserved topics;
* one custom authorizer with signing enabled, its private key in the state folder and
  named in the descriptor, that accepts any correctly signed token with the same rights.

With ``WorldConfig(dyson=DysonConfig(...))`` (or :meth:`World.enable_dyson` later) it also
runs the Dyson side (:mod:`simulators.dyson.world`): the fake Dyson cloud, its custom
authorizer in the gateway, routes for the Dyson API host names, and simulated devices with
their local brokers and cloud links; the descriptor then has its ``dyson`` section.

:meth:`World.descriptor` is the contract of DESIGN.md ("World descriptor").
:meth:`World.routes` names the real host names the world pretends to be (the endpoint,
``cognito-identity.<region>.amazonaws.com``) with their well-known ports; its
certificates cover those names, and :meth:`World.resolver` makes in-process clients that
hard-code them reach the world (:mod:`harness.resolver`).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness import resolver
from harness.auth import custom, sigv4
from harness.auth.credentials import Credential, CredentialStore
from harness.auth.policy import allow_all_outside_reserved
from harness.cognito import FakeCognito, IdentityPool
from harness.errors import ConfigError
from harness.events import Recorder
from harness.gateway import Gateway, GatewayConfig
from harness.pki import TokenSigningKey, WorldPKI
from harness.resolver import Route

if TYPE_CHECKING:
    # The Dyson side lives in simulators; imported when a world starts it.
    from simulators.dyson.world import DysonConfig, DysonWorld

DEFAULT_AUTHORIZER = "iot-harness-authorizer"
#: The well-known ports clients hard-code (aws-iot.md §3): WSS / ALPN MQTT, MQTT over TLS.
HTTPS_PORT = 443
MQTTS_PORT = 8883


def cognito_host(region: str) -> str:
    """The real Cognito Identity endpoint name of ``region`` (aws-iot.md §6)."""
    return f"cognito-identity.{region}.amazonaws.com"


def default_authorizer(key: TokenSigningKey, policy: str) -> custom.Authorizer:
    """The newcomer's custom authorizer: signing enabled with ``key``, and any correctly
    signed token gets ``policy`` (aws-iot.md §2.2, §2.3).

    A function of its own so that every gateway process of :mod:`harness.workers` registers
    the same authorizer with the same key.
    """

    def accept_signed_tokens(event: custom.AuthorizerEvent) -> Mapping[str, Any]:
        # Signing is enabled, so the gateway only calls this for a verified signature.
        return {
            "isAuthenticated": True,
            "principalId": "harnessClient",
            "policyDocuments": [policy],
            "disconnectAfterInSeconds": 86400,
            "refreshAfterInSeconds": 300,
        }

    return custom.Authorizer(
        name=DEFAULT_AUTHORIZER,
        token_key="token",  # noqa: S106 - the name of the token field
        signing_enabled=True,
        public_keys=(key.public_key_pem,),
        handler=accept_signed_tokens,
    )


def world_descriptor(
    gw: GatewayConfig,
    *,
    ports: tuple[int, int],
    ca_file: Path,
    cognito_url: str,
    pool_id: str,
    authorizer_key: TokenSigningKey | None,
    events_file: Path,
    state_dir: Path,
) -> dict[str, Any]:
    """The world descriptor of DESIGN.md ("Contracts") for a gateway on ``ports`` (WSS,
    MQTTS): what :meth:`World.descriptor` and the workers' supervisor
    (:mod:`harness.workers`) both print. Beyond the contract's keys: ``cognito.endpoint``
    (the real Cognito host name, which the certificate also covers), ``cognito.region``
    and ``state_dir``."""
    authorizers = []
    if authorizer_key is not None:
        authorizers.append(
            {
                "name": DEFAULT_AUTHORIZER,
                "token_key": "token",
                "signing": True,
                "private_key_file": str(authorizer_key.private_key_file),
            }
        )
    return {
        "iot": {
            "endpoint": gw.endpoint,
            "region": gw.region,
            "connect_host": gw.host,
            "wss_port": ports[0],
            "mqtts_port": ports[1],
            "ca_file": str(ca_file),
            "account_id": gw.account_id,
        },
        "cognito": {
            "url": cognito_url,
            "identity_pool_id": pool_id,
            "endpoint": cognito_host(gw.region),
            "region": gw.region,
        },
        "authorizers": authorizers,
        "events_file": str(events_file),
        "state_dir": str(state_dir),
    }


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Everything a world is made of; ``None`` means "make one / use the default"."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    # Files: keys, certificates and events go here (a temporary folder, removed when the
    # world stops, if None; a given folder is created if missing and kept).
    state_dir: Path | None = None
    events_file: Path | None = None
    # Events held in memory (the newest this many; the events file has them all). None
    # keeps all, as a test or scenario reading its timeline needs; a long-running world
    # (``serve``, a soak) bounds it, or its memory and GC pauses grow with every event.
    keep_events: int | None = None
    # Cognito: the newcomer's pool and its credential lifetime in seconds (aws-iot.md §6);
    # its own address (None = the gateway's host) and port (0 = any free one)
    cognito: bool = True
    cognito_host: str | None = None
    cognito_port: int = 0
    credential_lifetime: float = 3600.0
    # The newcomer defaults (pool and authorizer); scenarios switch them off.
    newcomer_defaults: bool = True
    # The Dyson cloud and simulated Dyson devices (simulators.dyson.world); None = none
    dyson: DysonConfig | None = None
    # A PKI (CA and what it issues) to use instead of minting one under state_dir: the
    # pytest plugin's session CA (issue [scenarios], "CA made once per session"). Its
    # folder is its owner's: the world adds certificates and keys there, never removes it.
    pki: WorldPKI | None = None

    def __post_init__(self) -> None:
        if not self.credential_lifetime > 0:
            raise ConfigError(
                f"credential_lifetime must be > 0 seconds, got {self.credential_lifetime}"
            )
        if not 0 <= self.cognito_port <= 65535:
            raise ConfigError(f"cognito_port must be 0-65535, got {self.cognito_port}")
        if self.cognito_host == "":
            raise ConfigError("cognito_host must be an address (or None: the gateway's host)")
        if self.keep_events is not None and self.keep_events < 1:
            raise ConfigError(f"keep_events must be at least 1 (or None), got {self.keep_events}")

    @property
    def cognito_address(self) -> str:
        """Where Cognito listens: ``cognito_host``, else the gateway's host."""
        return self.cognito_host if self.cognito_host is not None else self.gateway.host


def _unwritable(exc: OSError, path: Path) -> ConfigError:
    """A state folder or events file that cannot be written, said in one line."""
    where = exc.filename or path
    if isinstance(exc, FileExistsError | NotADirectoryError):
        why = "a file stands where a folder is needed"
    else:
        why = exc.strerror or str(exc)
    return ConfigError(f"cannot write to {where}: {why}")


class World:
    """The running fake AWS side. ``async with World() as world: ...``."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self._stack = contextlib.AsyncExitStack()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.state_dir = self.config.state_dir or Path(".")
        self.pool: IdentityPool | None = None
        self.authorizer_key: TokenSigningKey | None = None
        self.cognito: FakeCognito | None = None
        self.dyson: DysonWorld | None = None
        self._extra_routes: dict[str, Route] = {}

    async def __aenter__(self) -> World:
        cfg = self.config
        self._open_state()
        try:
            self.gateway = Gateway(
                cfg.gateway, pki=self.pki, recorder=self.recorder, credentials=self.credentials
            )
            try:
                await self._stack.enter_async_context(self.gateway)
            except BaseException:
                # A listener that fails to bind after the engine started must not leave
                # the engine running.
                with contextlib.suppress(Exception):
                    await self.gateway.stop()
                raise
            if cfg.cognito:
                region = cfg.gateway.region
                # The certificate covers the address a client may connect to by number.
                context = self.pki.server_context(
                    cfg.cognito_address, "localhost", cognito_host(region)
                )
                self.cognito = FakeCognito(
                    region=region,
                    store=self.credentials,
                    recorder=self.recorder,
                    clock=self.clock,
                    ssl=context,
                    host=cfg.cognito_address,
                    port=cfg.cognito_port,
                )
                await self._stack.enter_async_context(self.cognito)
            if cfg.newcomer_defaults:
                self._newcomer_defaults()
            if cfg.dyson is not None:
                await self.enable_dyson(cfg.dyson)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _open_state(self) -> None:
        """The state folder (0700: it holds private keys), the recorder and the PKI."""
        cfg = self.config
        if cfg.state_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="iot-harness-")
            self.state_dir = Path(self._tempdir.name)
        else:
            self.state_dir = cfg.state_dir
        events_file = cfg.events_file or self.state_dir / "events.jsonl"
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.recorder = Recorder(path=events_file, keep=cfg.keep_events)
        except OSError as exc:
            self._cleanup_tempdir()
            raise _unwritable(exc, events_file) from exc
        self.events_file = events_file
        self.clock = self.recorder.clock
        try:
            self.pki = cfg.pki if cfg.pki is not None else WorldPKI(self.state_dir / "pki")
        except OSError as exc:
            self.recorder.close()
            self._cleanup_tempdir()
            raise _unwritable(exc, self.state_dir) from exc
        self.credentials = CredentialStore()

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

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
            self._cleanup_tempdir()

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
        self.authorizer_key = self.pki.token_signing_key(DEFAULT_AUTHORIZER, reuse=True)
        self.gateway.add_authorizer(default_authorizer(self.authorizer_key, self.default_policy))

    # The Dyson side

    async def enable_dyson(self, config: DysonConfig | None = None) -> DysonWorld:
        """Start the Dyson side (fake cloud, its authorizer and routes, the configured
        devices) if it is not running yet, and return it; it stops with the world.

        ``config`` applies only when it starts now; a running side is returned as it is.
        """
        if self.dyson is not None:
            return self.dyson
        from simulators.dyson.world import DysonWorld

        dyson = DysonWorld(self, config)
        await self._stack.enter_async_context(dyson)
        self.dyson = dyson
        return dyson

    # Conveniences

    @property
    def endpoint(self) -> str:
        """``<prefix>-ats.iot.<region>.amazonaws.com`` (aws-iot.md §3)."""
        return self.config.gateway.endpoint

    @property
    def region(self) -> str:
        return self.config.gateway.region

    def sigv4_url(self, credential: Credential, **options: Any) -> str:
        """A SigV4-presigned ``wss://<endpoint>/mqtt?...`` for ``credential`` (aws-iot.md §1).

        Signed now on the world clock, for the world's region, in awscrt's style by default;
        ``options`` are :func:`harness.auth.sigv4.presign_url`'s (``token_style``,
        ``expires``, ``layout``, ...). The URL names the real endpoint: connect to it under
        :meth:`resolver`, or to ``connect_host:wss_port`` sending ``Host: <endpoint>``.
        """
        options.setdefault("host", self.endpoint)
        options.setdefault("region", self.region)
        options.setdefault("now", self.clock.now())
        return sigv4.presign_url(credential=credential, **options)

    # Names and ports (issue [gateway], "Names and ports for unmodified clients")

    def add_route(self, name: str, *, ports: Mapping[int, int], address: str | None = None) -> None:
        """Pretend to be ``name`` too (e.g. a Dyson host): its well-known ports → bound ones.

        The caller serves it with a certificate covering ``name``
        (``world.pki.server_context(name, ...)``).
        """
        self._extra_routes[name.rstrip(".").lower()] = Route(
            address or self.config.gateway.host, ports
        )

    def remove_route(self, name: str) -> None:
        """Stop pretending to be ``name`` (added by :meth:`add_route`); unknown names are
        ignored."""
        self._extra_routes.pop(name.rstrip(".").lower(), None)

    def routes(self) -> Mapping[str, Route]:
        """Every real host name the world answers for, with its well-known → bound ports."""
        host = self.config.gateway.host
        out = {
            self.endpoint: Route(
                host, {HTTPS_PORT: self.gateway.wss_port, MQTTS_PORT: self.gateway.mqtts_port}
            )
        }
        if self.cognito is not None:
            out[cognito_host(self.region)] = Route(
                self.config.cognito_address, {HTTPS_PORT: self.cognito.port}
            )
        out.update(self._extra_routes)
        return out

    @contextlib.contextmanager
    def resolver(self) -> Iterator[Mapping[str, Route]]:
        """``with world.resolver(): ...``: in-process clients reach the world by its real
        names and well-known ports (:func:`harness.resolver.override`)."""
        with resolver.override(self) as table:
            yield table

    # The contract

    def descriptor(self) -> dict[str, Any]:
        """The world descriptor (:func:`world_descriptor`): ports are the bound ones. The
        ``dyson`` section is there when the Dyson side runs (:meth:`enable_dyson`)."""
        out = world_descriptor(
            self.config.gateway,
            ports=(self.gateway.wss_port, self.gateway.mqtts_port),
            ca_file=self.pki.ca_file,
            cognito_url=self.cognito.url if self.cognito else "",
            pool_id=self.pool.pool_id if self.pool else "",
            authorizer_key=self.authorizer_key,
            events_file=self.events_file,
            state_dir=self.state_dir,
        )
        if self.dyson is not None:
            out["dyson"] = self.dyson.descriptor()
        return out
