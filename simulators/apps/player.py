"""The Cognito + SigV4 browser player (field design 000), done right and as written.

``browser-player`` follows ``field-designs/000_*.txt`` with its mistakes fixed:

1. Cognito ``GetId`` → ``GetCredentialsForIdentity`` (aws-iot.md §6) with boto3's
   ``cognito-identity`` client, unsigned as the browser SDKs call it, against the
   descriptor's ``cognito.url``, the certificate verified with ``iot.ca_file``; run in a
   worker thread (boto3 blocks). The identity id is kept; credentials are fetched again.
2. A SigV4-presigned ``wss://<endpoint>/mqtt`` URL (:func:`harness.auth.sigv4.presign_url`):
   ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-SignedHeaders`` in the
   canonical query, the session token appended unsigned (aws-iot.md §1.3, §1.5), signed
   with the app's own clock (a skewed world shows as a 403, FB-29).
3. paho-mqtt 2.x over that WebSocket: TLS with SNI and certificate check for the endpoint,
   ``Host: <endpoint>`` (aws-iot.md §1.6), dialled at ``iot.connect_host:iot.wss_port``;
   then SUBSCRIBE to ``topic``.
4. Fresh credentials before they expire and after any refused upgrade, exponential
   backoff with jitter, a clear ``client.error`` when the pool does not exist
   (``pool-not-found``), refuses unauthenticated access (``not-authorized``) or throttles
   (``throttled``), then a backoff: :mod:`simulators.apps.player_machine` decides.

``browser-player-as-written`` keeps the design's mistakes (field-bugs.md), each one a
name in the ``mistakes`` option (default: all of them):

* ``empty-canonical-query`` (FB-34): the URL is signed over an empty canonical query, the
  auth parameters added after signing, in the design's order (Signature, then Token);
  every upgrade gets AWS's 403 ``signature-mismatch``;
* ``credentials-once`` (FB-23): credentials are fetched once and reused for every
  reconnect, also after they expired (403 ``token-expired`` forever);
* ``no-backoff``: retries after a fixed ``retry_delay``, no growth, no jitter.

Options (all optional; times in seconds, compressed time welcome):

======================== ============= =========================================================
``topic``                ``players/#`` the filter to subscribe to (QoS ``qos``)
``qos``                  1             0 or 1 (AWS IoT has no QoS 2, aws-iot.md §4.2)
``client_id``            generated     MQTT client id, kept across reconnects
``identity_pool``        descriptor    identity pool id instead of ``cognito.identity_pool_id``
``refresh_margin``       300           fetch credentials this long before expiry (at most half
                                       their lifetime)
``backoff_base``         1.0           first backoff delay
``backoff_max``          60.0          cap of the backoff delay
``jitter``               0.5           random fraction of each delay (0..1)
``stable_after``         5.0           a connection up this long is healthy: its drop is retried
                                       at once; a shorter one counts as a failure
``give_up_after``        none          stop after this many consecutive failures
``min_connect_interval`` 1.0           spacing after an attempt that sent CONNECT (AWS: one
                                       CONNECT per second per client id, aws-iot.md §4.4); 0 in
                                       the as-written variant, which knows nothing of it
``connect_timeout``      5.0           CONNACK wait per attempt (and paho's socket timeout)
``keepalive``            60            MQTT keep-alive (AWS clamps to 30-1200, §4.3)
``http_timeout``         5.0           Cognito call timeout
``seed``                 none          seed of the jitter's random numbers
``mistakes``             all           as-written only: which mistakes to keep
``retry_delay``          0.1           as-written only: the fixed delay of ``no-backoff``
======================== ============= =========================================================

Events (all with ``app``): ``client.credentials`` {source: cognito, ok, expires_in,
identity_id, why}, ``client.error`` {stage: credentials|connect, reason, error},
``client.connect`` {attempt, url_host, client_id, ok, reason, error},
``client.connected``, ``client.subscribed`` {topic, granted}, ``client.message`` {topic,
size}, ``client.disconnected`` {rc}, ``client.backoff`` {delay, failures, why},
``client.gave_up`` {failures}, ``client.stopped``. Secrets (secret key, session token,
signature) are registered with the recorder and never put in a field.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.errors import ConfigError
from harness.events import Recorder
from simulators.apps.backoff import Backoff
from simulators.apps.mqtt_link import (
    LinkClosed,
    LinkMessage,
    LinkOutcome,
    LinkProblem,
    LinkSpec,
    MqttLink,
)
from simulators.apps.mqtt_link import LinkSubscribed as _LinkSubscribed
from simulators.apps.options import OptionReader, descriptor_section, descriptor_value
from simulators.apps.player_machine import (
    Action,
    Connect,
    CredentialsFailed,
    CredentialsReady,
    FetchCredentials,
    GiveUp,
    Input,
    LinkDown,
    LinkFailed,
    LinkUp,
    Phase,
    PlayerMachine,
    PlayerPolicy,
    Start,
    Tick,
    Wait,
)
from simulators.apps.runtime import AppRuntime

__all__ = ["PLAYER_MISTAKES", "BrowserPlayer", "CognitoFailure", "CognitoSource", "PlayerConfig"]

#: The field design's mistakes the as-written variant can keep (field-bugs.md).
PLAYER_MISTAKES = ("empty-canonical-query", "credentials-once", "no-backoff")
#: The WebSocket port the URL names (aws-iot.md §1.1); the world's bound port is dialled.
WSS_PORT = 443


@dataclass(frozen=True, kw_only=True)
class PlayerConfig:
    """Everything a player needs, from the descriptor and the options."""

    # The world (descriptor)
    endpoint: str
    region: str
    connect_host: str
    wss_port: int
    ca_file: str
    cognito_url: str
    identity_pool_id: str
    # MQTT
    client_id: str
    topic: str = "players/#"
    qos: int = 1
    keepalive: int = 60
    connect_timeout: float = 5.0
    http_timeout: float = 5.0
    # Behaviour
    policy: PlayerPolicy = field(default_factory=PlayerPolicy)
    mistakes: frozenset[str] = frozenset()
    seed: int | None = None

    @classmethod
    def from_inputs(
        cls, app: str, descriptor: Mapping[str, Any], options: Mapping[str, Any]
    ) -> PlayerConfig:
        as_written = app.endswith("-as-written")
        iot = descriptor_section(descriptor, "iot", app)
        cognito = descriptor_section(descriptor, "cognito", app)
        o = OptionReader(app, options)
        mistakes = (
            o.names("mistakes", PLAYER_MISTAKES, PLAYER_MISTAKES) if as_written else frozenset()
        )
        retry_delay = o.seconds("retry_delay", 0.1) if as_written else 0.1
        pool = o.string("identity_pool", None) or descriptor_value(
            cognito, "cognito.identity_pool_id", str, app
        )
        backoff = Backoff(
            base=o.seconds("backoff_base", 1.0, positive=True),
            cap=o.seconds("backoff_max", 60.0, positive=True),
            jitter=o.fraction("jitter", 0.5),
        )
        policy = PlayerPolicy(
            backoff=backoff,
            stable_after=o.seconds("stable_after", 5.0),
            give_up_after=o.count("give_up_after", None, minimum=1),
            min_connect_interval=o.seconds("min_connect_interval", 0.0 if as_written else 1.0),
            refresh_margin=o.seconds("refresh_margin", 300.0),
            refresh_credentials="credentials-once" not in mistakes,
            exponential_backoff="no-backoff" not in mistakes,
            retry_delay=retry_delay,
        )
        qos = o.count("qos", 1)
        if qos not in (0, 1):
            raise ConfigError(f"{app}: option 'qos' must be 0 or 1 (AWS IoT has no QoS 2)")
        cognito_url = descriptor_value(cognito, "cognito.url", str, app)
        if urllib.parse.urlsplit(cognito_url).scheme != "https":
            raise ConfigError(f"{app}: cognito.url must be an https:// URL, got {cognito_url!r}")
        config = cls(
            endpoint=descriptor_value(iot, "iot.endpoint", str, app),
            region=descriptor_value(iot, "iot.region", str, app),
            connect_host=descriptor_value(iot, "iot.connect_host", str, app),
            wss_port=descriptor_value(iot, "iot.wss_port", int, app),
            ca_file=descriptor_value(iot, "iot.ca_file", str, app),
            cognito_url=cognito_url,
            identity_pool_id=pool,
            client_id=o.string("client_id", None) or f"player-{uuid.uuid4().hex[:12]}",
            topic=o.string("topic", "players/#") or "players/#",
            qos=qos,
            keepalive=o.count("keepalive", 60, minimum=1) or 60,
            connect_timeout=o.seconds("connect_timeout", 5.0, positive=True),
            http_timeout=o.seconds("http_timeout", 5.0, positive=True),
            policy=policy,
            mistakes=mistakes,
            seed=o.count("seed", None),
        )
        o.finish()
        return config


# Cognito


class CognitoFailure(Exception):
    """A Cognito call failed; ``reason`` is a stable code, the message AWS's text."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    credential: Credential
    expires_at_epoch: float
    identity_id: str


#: Cognito error types → the player's reason codes (aws-iot.md §6 table).
_COGNITO_REASONS = {
    "ResourceNotFoundException": "pool-not-found",
    "NotAuthorizedException": "not-authorized",
    "TooManyRequestsException": "throttled",
    "InternalErrorException": "cognito-unavailable",
}


class CognitoSource:
    """GetId once, GetCredentialsForIdentity per fetch, with boto3 (blocking: call it in a
    worker thread). The boto3 client is built on first use, in that thread."""

    def __init__(self, *, url: str, region: str, pool_id: str, ca_file: str, timeout: float):
        self.url = url
        self.region = region
        self.pool_id = pool_id
        self.ca_file = ca_file
        self.timeout = timeout
        self.identity_id: str | None = None
        self._client: Any = None
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError("browser-player needs boto3 (pip install boto3)")

    def _boto(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config
            except ImportError as exc:  # boto3 is what this app is built on
                raise ConfigError(f"browser-player needs boto3: {exc}") from exc
            session = boto3.session.Session()
            self._client = session.client(
                "cognito-identity",
                region_name=self.region,
                endpoint_url=self.url,
                verify=self.ca_file,
                config=Config(
                    signature_version=UNSIGNED,
                    retries={"total_max_attempts": 1},
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                ),
            )
        return self._client

    def close(self) -> None:
        """Close boto3's connection pool (blocking; call it in a worker thread)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def fetch(self) -> Fetched:
        from botocore.exceptions import BotoCoreError, ClientError, SSLError

        client = self._boto()
        try:
            if self.identity_id is None:
                self.identity_id = str(client.get_id(IdentityPoolId=self.pool_id)["IdentityId"])
            answer = client.get_credentials_for_identity(IdentityId=self.identity_id)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or code
            reason = _COGNITO_REASONS.get(code, "cognito-error")
            if code == "ResourceNotFoundException" and message.startswith("Identity "):
                self.identity_id = None  # a forgotten identity: ask for a new one next time
                reason = "identity-not-found"
            raise CognitoFailure(reason, f"{code}: {message}") from None
        except SSLError as exc:
            raise CognitoFailure("tls-verify", str(exc)) from None
        except BotoCoreError as exc:
            raise CognitoFailure("network", str(exc)) from None
        creds = answer["Credentials"]
        expiration = creds["Expiration"]
        expires = expiration.timestamp() if hasattr(expiration, "timestamp") else float(expiration)
        return Fetched(
            credential=Credential(
                access_key_id=creds["AccessKeyId"],
                secret_access_key=creds["SecretKey"],
                session_token=creds.get("SessionToken"),
                expires_at=expires,
                principal=self.identity_id,
            ),
            expires_at_epoch=expires,
            identity_id=self.identity_id,
        )


# The app


class BrowserPlayer:
    """``browser-player`` / ``browser-player-as-written``; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        descriptor: Mapping[str, Any],
        options: Mapping[str, Any],
        recorder: Recorder,
    ) -> None:
        self.name = name
        self.recorder = recorder
        self.config = PlayerConfig.from_inputs(name, descriptor, options)
        self.machine = PlayerMachine(self.config.policy, rng=random.Random(self.config.seed))
        self.cognito = CognitoSource(
            url=self.config.cognito_url,
            region=self.config.region,
            pool_id=self.config.identity_pool_id,
            ca_file=self.config.ca_file,
            timeout=self.config.http_timeout,
        )
        self.credential: Credential | None = None
        self.link: MqttLink | None = None
        self._tls: ssl.SSLContext | None = None
        self._rt: AppRuntime[Input] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or the task is cancelled); never raises for network
        failures: they are events, then retries (module docstring)."""
        rt = self._rt = AppRuntime[Input](recorder=self.recorder, label=self.name)
        # Loading CA files blocks: not on the event loop (field-bugs.md FB-02).
        self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=self.config.ca_file)
        try:
            actions = self.machine.handle(Start(), rt.now())
            while True:
                for action in actions:
                    self._perform(action)
                event = await rt.wait_input(stop, self.machine.wake_at, Tick())
                if event is None:
                    break
                actions = self.machine.handle(event, rt.now())
        finally:
            await rt.close()
            if self.link is not None:
                self.link.close_now()
                self.link = None
            await asyncio.to_thread(self.cognito.close)
            rt.record("client.stopped", phase=self.machine.phase.value)

    # Actions

    def _perform(self, action: Action) -> None:
        rt = self._rt
        assert rt is not None
        if isinstance(action, FetchCredentials):
            rt.spawn(self._fetch(action.why))
        elif isinstance(action, Connect):
            rt.spawn(self._connect(action.attempt))
        elif isinstance(action, Wait):
            rt.record(
                "client.backoff",
                delay=round(action.delay, 6),
                failures=action.failures,
                why=action.why,
            )
        elif isinstance(action, GiveUp):
            rt.record("client.gave_up", failures=action.failures)

    async def _fetch(self, why: str) -> None:
        rt = self._rt
        assert rt is not None
        try:
            fetched = await asyncio.to_thread(self.cognito.fetch)
        except CognitoFailure as exc:
            rt.record("client.credentials", source="cognito", ok=False, why=why, reason=exc.reason)
            rt.record("client.error", stage="credentials", reason=exc.reason, error=str(exc))
            rt.post(CredentialsFailed(exc.reason))
            return
        except Exception as exc:  # a bug of this app: on the timeline, then a retry
            rt.record("client.bug", stage="credentials", error=f"{type(exc).__name__}: {exc}")
            rt.post(CredentialsFailed("bug"))
            return
        credential = fetched.credential
        rt.secret(credential.secret_access_key, credential.session_token)
        self.credential = credential
        expires_in = fetched.expires_at_epoch - time.time()
        rt.record(
            "client.credentials",
            source="cognito",
            ok=True,
            why=why,
            identity_id=fetched.identity_id,
            access_key_id=credential.access_key_id,
            expires_in=round(expires_in, 3),
        )
        rt.post(CredentialsReady(expires_at=rt.now() + expires_in))

    def _signed_path(self, credential: Credential) -> str:
        written = "empty-canonical-query" in self.config.mistakes
        url = sigv4.presign_url(
            host=self.config.endpoint,
            credential=credential,
            region=self.config.region,
            now=time.time(),  # the app's own clock, as a real client signs
            empty_canonical_query=written,
            layout="sdk-v1" if written else "awscrt",
        )
        parts = urllib.parse.urlsplit(url)
        for name, value in urllib.parse.parse_qsl(parts.query):
            if name == sigv4.P_SIGNATURE:
                assert self._rt is not None
                self._rt.secret(value)
        return f"{parts.path}?{parts.query}"

    async def _connect(self, attempt: int) -> None:
        rt = self._rt
        assert rt is not None and self.credential is not None
        cfg = self.config
        link = MqttLink(
            LinkSpec(
                client_id=cfg.client_id,
                host=cfg.endpoint,
                port=WSS_PORT,
                dial=(cfg.connect_host, cfg.wss_port),
                transport="websockets",
                ws_path=self._signed_path(self.credential),
                ws_headers={"Host": cfg.endpoint},
                tls=self._tls,
                keepalive=cfg.keepalive,
                connect_timeout=cfg.connect_timeout,
            )
        )
        try:
            outcome = await link.open()
        except Exception as exc:  # a bug below paho's documented errors: say so, go on
            link.close_now()
            rt.record("client.bug", stage="connect", error=f"{type(exc).__name__}: {exc}")
            outcome = LinkOutcome(False, "bug", f"{type(exc).__name__}: {exc}")
        except BaseException:
            link.close_now()
            raise
        rt.record(
            "client.connect",
            attempt=attempt,
            url_host=cfg.endpoint,
            client_id=cfg.client_id,
            access_key_id=self.credential.access_key_id,
            ok=outcome.ok,
            reason=outcome.reason,
            error=outcome.error,
        )
        if not outcome.ok:
            await link.close()
            rt.record("client.error", stage="connect", reason=outcome.reason, error=outcome.error)
            rt.post(LinkFailed(outcome.reason))
            return
        self.link = link
        rt.record("client.connected", attempt=attempt, client_id=cfg.client_id)
        rt.post(LinkUp())
        link.subscribe([(cfg.topic, cfg.qos)])
        await self._pump(link)

    async def _pump(self, link: MqttLink) -> None:
        """Record what the connection does until it ends."""
        rt = self._rt
        assert rt is not None
        while True:
            event = await link.next_event()
            if isinstance(event, LinkMessage):
                rt.record("client.message", topic=event.topic, size=len(event.payload))
            elif isinstance(event, _LinkSubscribed):
                rt.record("client.subscribed", topic=self.config.topic, granted=list(event.granted))
            elif isinstance(event, LinkProblem):
                rt.record("client.problem", what=event.what, detail=event.detail)
            elif isinstance(event, LinkClosed):
                rt.record("client.disconnected", rc=event.rc)
                self.link = None
                await link.close()
                rt.post(LinkDown(event.rc))
                return

    # For tests and the scenario runner

    @property
    def phase(self) -> Phase:
        return self.machine.phase
