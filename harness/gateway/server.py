"""The fake AWS IoT Core device gateway: listeners, upgrade, authentication, sessions.

Two TLS listeners on 127.0.0.1 (port 0 unless asked otherwise):

* the **WSS port** (AWS's 443): ALPN decides what follows (aws-iot.md §3 table):
  ``x-amzn-mqtt-ca`` → MQTT with an X.509 client certificate; ``mqtt`` → MQTT with
  custom-authorizer credentials in the CONNECT username (§2.1); anything else →
  ``GET /mqtt`` WebSocket upgrade authenticated by SigV4 (§1) or a custom authorizer (§2).
* the **MQTTS port** (AWS's 8883): MQTT with an X.509 client certificate.

A SigV4 failure is answered with AWS's 403 (§1.9); a custom-auth or policy failure
completes the upgrade and closes after CONNECT without CONNACK (§2.4, §4.5). Every step
is an event on the recorder, with the reason and an explanation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import urllib.parse
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from harness.auth import custom, sigv4
from harness.auth.credentials import CredentialStore
from harness.auth.policy import PolicyDocument
from harness.clock import WorldClock
from harness.engine import Engine, engine_from_url
from harness.events import Recorder
from harness.gateway import responses
from harness.gateway.hooks import FaultHooks
from harness.gateway.session import Authenticate, ConnectAuth, Principal, Session
from harness.gateway.transports import StreamTransport, WebSocketTransport, abort_writer
from harness.mqtt import rules
from harness.mqtt.codec import Connect
from harness.pki import WorldPKI, fingerprint

ALPN_MQTT_X509 = "x-amzn-mqtt-ca"
ALPN_MQTT_CUSTOM_AUTH = "mqtt"
_SIGV4_MARKERS = ("x-amz-algorithm", "x-amz-credential", "x-amz-signature")


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """How the fake gateway presents itself and which of AWS's rules it applies."""

    # Network
    host: str = "127.0.0.1"
    wss_port: int = 0
    mqtts_port: int = 0
    # The endpoint it pretends to be (aws-iot.md §3)
    region: str = "us-east-1"
    endpoint_prefix: str = "a3harnessfake1"
    account_id: str = "123456789012"
    # TLS: AWS refuses connections without SNI (§3); "ignore" serves them anyway.
    sni: Literal["require", "ignore"] = "ignore"
    # SigV4 (§1.5, §1.7)
    max_skew: float = 300.0
    accept_signed_token: bool = False
    # Custom authorizers: strict = AWS's range checks on the Lambda's answer (§2.3)
    strict: bool = False
    # Limits and timers (§4.4), in seconds where they are times
    limits: rules.Limits = field(default_factory=rules.Limits)
    # Timeouts: a TLS handshake or upgrade request slower than this is dropped
    handshake_timeout: float = 10.0
    # Engine: None or "amqtt" (embedded), or "mqtt://host:port"
    engine: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.endpoint_prefix}-ats.iot.{self.region}.amazonaws.com"


@dataclass(frozen=True)
class Thing:
    """A registered thing with its client certificate (mTLS, aws-iot.md §3)."""

    name: str
    fingerprint: str
    policies: tuple[PolicyDocument, ...]


class Gateway:
    """The fake AWS IoT device gateway; an async context manager."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        pki: WorldPKI,
        recorder: Recorder | None = None,
        credentials: CredentialStore | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        self.pki = pki
        self.recorder = recorder if recorder is not None else Recorder()
        self.clock: WorldClock = self.recorder.clock
        self.credentials = credentials if credentials is not None else CredentialStore()
        self.engine: Engine = engine or engine_from_url(self.config.engine)
        self.limits = self.config.limits
        self.faults = FaultHooks()
        self.connect_throttle = rules.ConnectThrottle(self.limits)
        self.authorizers: dict[str, custom.Authorizer] = {}
        self.default_authorizer: str | None = None
        self.things: dict[str, Thing] = {}
        self.sessions: dict[str, Session] = {}
        self._by_client_id: dict[str, Session] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_ids = itertools.count(1)
        self._sni: dict[int, str | None] = {}
        self.wss_port = 0
        self.mqtts_port = 0

    # Lifecycle

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.engine.start()
        self._wss_context = self._server_context(alpn=True)
        self._mqtts_context = self._server_context(alpn=False)
        cfg = self.config
        wss = await asyncio.start_server(self._on_wss, cfg.host, cfg.wss_port)
        mqtts = await asyncio.start_server(self._on_mqtts, cfg.host, cfg.mqtts_port)
        self._servers = [wss, mqtts]
        self.wss_port = wss.sockets[0].getsockname()[1]
        self.mqtts_port = mqtts.sockets[0].getsockname()[1]
        self.recorder.record(
            "gateway.started",
            endpoint=cfg.endpoint,
            host=cfg.host,
            wss_port=self.wss_port,
            mqtts_port=self.mqtts_port,
            engine=self.engine.name,
        )

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.sessions.values()):
            await session.close(
                rules.DisconnectReason.SERVER_INITIATED_DISCONNECT, "gateway stopping"
            )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        await self.engine.stop()
        self.recorder.record("gateway.stopped")

    # Identities

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    def add_authorizer(self, authorizer: custom.Authorizer, *, default: bool = False) -> None:
        """Register a custom authorizer (aws-iot.md §2.2); ``default`` = SetDefaultAuthorizer."""
        self.authorizers[authorizer.name] = authorizer
        if default:
            self.default_authorizer = authorizer.name

    def register_thing(
        self, name: str, certificate_pem: bytes, *, policies: tuple[str, ...] = ()
    ) -> Thing:
        """Register a thing and its client certificate with IoT policies (aws-iot.md §5)."""
        thing = Thing(
            name=name,
            fingerprint=fingerprint(certificate_pem),
            policies=tuple(PolicyDocument.parse(p) for p in policies),
        )
        self.things[thing.fingerprint] = thing
        return thing

    def arn(self, kind: str, name: str) -> str:
        """``arn:aws:iot:<region>:<account>:<kind>/<name>`` (aws-iot.md §5)."""
        return f"arn:aws:iot:{self.config.region}:{self.config.account_id}:{kind}/{name}"

    # Fault hooks that need the gateway

    def expire_credential(self, access_key_id: str) -> None:
        """Make an access key expire now: the next handshake with it is refused."""
        self.credentials.expire(access_key_id, now=self.clock.now())
        self.recorder.record("fault.fired", fault="expire-credential", access_key_id=access_key_id)

    def shift_clock(self, seconds: float) -> None:
        """Offset the world clock (clock skew as the gateway sees it, aws-iot.md §1.7)."""
        self.clock.shift(seconds)
        self.recorder.record("fault.fired", fault="clock-offset", seconds=seconds)

    async def drop(self, target: str, *, reset: bool = False) -> bool:
        """Drop the connection with this connection id or client id now."""
        session = self.sessions.get(target) or self._by_client_id.get(target)
        if session is None:
            return False
        self.recorder.record("fault.fired", conn=session.conn_id, fault="drop", reset=reset)
        await session.close(
            rules.DisconnectReason.SERVER_INITIATED_DISCONNECT, "fault: dropped", abort=reset
        )
        return True

    # Used by sessions

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def take_over(self, client_id: str, session: Session) -> None:
        """A duplicate client id drops the OLDER connection (aws-iot.md §4.3)."""
        older = self._by_client_id.get(client_id)
        self._by_client_id[client_id] = session
        if older is not None and older is not session and not older.closed:
            await older.close(
                rules.DisconnectReason.DUPLICATE_CLIENTID,
                f"a newer connection ({session.conn_id}) took over client id {client_id!r}",
            )

    def session_ended(self, session: Session) -> None:
        self.sessions.pop(session.conn_id, None)
        if session.client_id and self._by_client_id.get(session.client_id) is session:
            del self._by_client_id[session.client_id]

    async def publish_presence(
        self,
        event_type: Literal["connected", "disconnected"],
        *,
        client_id: str,
        session_id: str,
        principal: str,
        ip_address: str | None = None,
        disconnect_reason: rules.DisconnectReason | None = None,
        client_initiated: bool | None = None,
    ) -> None:
        """Publish ``$aws/events/presence/<event>/<clientId>`` (aws-iot.md §4.6)."""
        topic = rules.presence_topic(event_type, client_id)
        self.recorder.record(
            f"lifecycle.{event_type}",
            client_id=client_id,
            disconnect_reason=str(disconnect_reason) if disconnect_reason else None,
        )
        if topic is None:
            return
        payload = rules.presence_payload(
            event_type=event_type,
            client_id=client_id,
            timestamp_ms=int(self.clock.now() * 1000),
            session_id=session_id,
            principal=principal,
            ip_address=ip_address,
            disconnect_reason=disconnect_reason,
            client_initiated=client_initiated,
        )
        await self.engine.publish_system(topic, payload)

    # Listeners

    def _server_context(self, *, alpn: bool) -> ssl.SSLContext:
        cfg = self.config
        context = self.pki.server_context(
            cfg.endpoint, "localhost", cfg.host, client_auth="optional" if alpn else "required"
        )
        if alpn:
            context.set_alpn_protocols([ALPN_MQTT_X509, ALPN_MQTT_CUSTOM_AUTH, "http/1.1"])

        def remember_sni(
            ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
        ) -> int | None:
            self._sni[id(ssl_object)] = server_name
            if server_name is None and cfg.sni == "require":
                # "Connection attempts that don't include the SNI are refused" (aws-iot.md §3)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        context.sni_callback = remember_sni
        return context

    def _new_conn(self) -> str:
        return f"c{next(self._conn_ids)}"

    async def _handshake(
        self, conn: str, writer: asyncio.StreamWriter, context: ssl.SSLContext, port: str
    ) -> tuple[str | None, str | None] | None:
        """TLS handshake; returns (sni, alpn) or None after recording why it failed."""
        peer = writer.get_extra_info("peername")
        self.recorder.record("tcp.accept", conn=conn, port=port, peer=str(peer))
        try:
            await writer.start_tls(context, ssl_handshake_timeout=self.config.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.recorder.record(
                "tls.handshake",
                conn=conn,
                ok=False,
                reason=str(reason).lower().replace("_", "-"),
                explain=str(exc),
            )
            abort_writer(writer)
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        sni = self._sni.pop(id(ssl_object), None)
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self.recorder.record(
            "tls.handshake",
            conn=conn,
            ok=True,
            sni=sni,
            alpn=alpn,
            version=ssl_object.version() if ssl_object is not None else None,
        )
        return sni, alpn

    async def _on_wss(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._new_conn()
        try:
            negotiated = await self._handshake(conn, writer, self._wss_context, "wss")
            if negotiated is None:
                return
            sni, alpn = negotiated
            if alpn == ALPN_MQTT_X509:
                await self._run_session(
                    conn,
                    StreamTransport(reader, writer),
                    self._x509_authenticator(conn, writer),
                    websocket=False,
                )
            elif alpn == ALPN_MQTT_CUSTOM_AUTH:
                authenticate = self._custom_authenticator(conn, upgrade=None, sni=sni)
                await self._run_session(
                    conn, StreamTransport(reader, writer), authenticate, websocket=False
                )
            else:
                await self._websocket(conn, reader, writer, sni)
        except asyncio.CancelledError:
            abort_writer(writer)
            raise
        except Exception as exc:  # a harness bug must not take the listener down
            self.recorder.record("gateway.error", conn=conn, explain=repr(exc))
            abort_writer(writer)

    async def _on_mqtts(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._new_conn()
        try:
            if await self._handshake(conn, writer, self._mqtts_context, "mqtts") is None:
                return
            await self._run_session(
                conn,
                StreamTransport(reader, writer),
                self._x509_authenticator(conn, writer),
                websocket=False,
            )
        except asyncio.CancelledError:
            abort_writer(writer)
            raise
        except Exception as exc:
            self.recorder.record("gateway.error", conn=conn, explain=repr(exc))
            abort_writer(writer)

    async def _run_session(
        self,
        conn: str,
        transport: StreamTransport | WebSocketTransport,
        authenticate: Authenticate,
        *,
        websocket: bool,
    ) -> None:
        session = Session(
            gateway=self,
            conn_id=conn,
            transport=transport,
            authenticate=authenticate,
            websocket=websocket,
        )
        self.sessions[conn] = session
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            if task is not None:
                self._tasks.discard(task)

    # WebSocket upgrade (aws-iot.md §1.1, §1.8, §1.9, §2.1)

    async def _read_upgrade(
        self, reader: asyncio.StreamReader, protocol: ServerProtocol
    ) -> Request | None:
        while True:
            data = await reader.read(65536)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Request):
                    return event
            if not data or protocol.handshake_exc is not None:
                return None

    async def _websocket(
        self,
        conn: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sni: str | None,
    ) -> None:
        protocol = ServerProtocol(
            subprotocols=[Subprotocol(p) for p in responses.SUBPROTOCOLS], max_size=2**20
        )
        try:
            request = await asyncio.wait_for(
                self._read_upgrade(reader, protocol), self.config.handshake_timeout
            )
        except TimeoutError:
            self.recorder.record(
                "ws.upgrade",
                conn=conn,
                ok=False,
                reason="upgrade-timeout",
                explain="no complete upgrade request in time",
            )
            abort_writer(writer)
            return
        if request is None:
            self.recorder.record(
                "ws.upgrade",
                conn=conn,
                ok=False,
                reason="malformed",
                explain=str(protocol.handshake_exc or "connection closed"),
            )
            writer.write(responses.plain_response(400, "Bad Request"))
            await _close(writer)
            return
        path, _, query = request.path.partition("?")
        headers = list(request.headers.raw_items())
        refusal = self.faults.take_upgrade_refusal()
        if refusal is not None:
            self.recorder.record(
                "fault.fired", conn=conn, fault="refuse-upgrade", status=refusal.status
            )
            self.recorder.record(
                "ws.upgrade", conn=conn, ok=False, status=refusal.status, reason="fault"
            )
            writer.write(
                responses.forbidden_raw(refusal.status, refusal.reason_phrase, refusal.body)
            )
            await _close(writer)
            return
        if path != "/mqtt":
            self.recorder.record(
                "ws.upgrade", conn=conn, ok=False, status=404, path=path, reason="not-found"
            )
            writer.write(responses.plain_response(404, "Not Found"))
            await _close(writer)
            return
        accept = protocol.accept(request)
        if accept.status_code != 101:
            self.recorder.record(
                "ws.upgrade",
                conn=conn,
                ok=False,
                status=accept.status_code,
                reason="not-websocket",
                explain=str(protocol.handshake_exc or accept.reason_phrase),
            )
            writer.write(
                responses.plain_response(
                    accept.status_code, accept.reason_phrase, accept.body or b""
                )
            )
            await _close(writer)
            return
        params = {k.lower() for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
        if params & set(_SIGV4_MARKERS):
            authenticate = self._sigv4(conn, writer, request.path, headers)
            if authenticate is None:
                await _close(writer)
                return
            writer.write(self._verdict_response(accept))
        else:
            credentials = custom.from_upgrade(
                headers=headers, query=query, token_key_for=self._token_key_for
            )
            if credentials is None and self.default_authorizer is None:
                # No SigV4 and no custom-auth credentials: AWS refuses the upgrade
                # (inferred: the message for a missing signature on other AWS services).
                self._refuse(
                    conn,
                    writer,
                    "missing-authentication",
                    "Missing Authentication Token",
                    "the upgrade carried neither SigV4 query parameters nor "
                    "custom-authorizer credentials",
                )
                await _close(writer)
                return
            authenticate = self._custom_authenticator(conn, upgrade=(headers, query), sni=sni)
            writer.write(self._verdict_response(accept))
        self.recorder.record(
            "ws.upgrade",
            conn=conn,
            ok=True,
            status=101,
            path=path,
            subprotocol=accept.headers.get("Sec-WebSocket-Protocol"),
        )
        # websockets moves to OPEN once a 101 is "sent"; the bytes were written above.
        protocol.send_response(accept)
        protocol.data_to_send()
        await self._run_session(
            conn, WebSocketTransport(reader, writer, protocol), authenticate, websocket=True
        )

    @staticmethod
    def _verdict_response(accept: Any) -> bytes:
        return responses.switching_protocols(
            accept_key=accept.headers["Sec-WebSocket-Accept"],
            subprotocol=accept.headers.get("Sec-WebSocket-Protocol"),
        )

    def _refuse(
        self, conn: str, writer: asyncio.StreamWriter, reason: str, message: str, explain: str
    ) -> None:
        self.recorder.record(
            "auth.verdict",
            conn=conn,
            stage="upgrade",
            method="sigv4",
            ok=False,
            reason=reason,
            message=message,
            explain=explain,
        )
        self.recorder.record("ws.upgrade", conn=conn, ok=False, status=403, reason=reason)
        writer.write(responses.forbidden(message))

    def _sigv4(
        self,
        conn: str,
        writer: asyncio.StreamWriter,
        target: str,
        headers: list[tuple[str, str]],
    ) -> Authenticate | None:
        """Verify a SigV4 presigned upgrade (aws-iot.md §1); None after a 403."""
        cfg = self.config
        verdict = sigv4.verify_upgrade(
            method="GET",
            target=target,
            headers=headers,
            now=self.clock.now(),
            lookup=self.credentials.lookup,
            region=cfg.region,
            max_skew=cfg.max_skew,
            accept_signed_token=cfg.accept_signed_token,
        )
        if not verdict.ok or verdict.credential is None:
            self._refuse(conn, writer, verdict.reason, verdict.message, verdict.explain)
            return None
        credential = verdict.credential
        self.recorder.record(
            "auth.verdict",
            conn=conn,
            stage="upgrade",
            method="sigv4",
            ok=True,
            reason="ok",
            access_key_id=credential.access_key_id,
            principal=credential.principal,
            explain=verdict.explain,
        )
        principal = Principal(
            method="sigv4",
            name=credential.principal,
            policies=tuple(PolicyDocument.parse(p) for p in credential.policies),
        )

        async def authenticate(_connect: Connect) -> ConnectAuth:
            return ConnectAuth(ok=True, reason="ok", principal=principal)

        return authenticate

    def _token_key_for(self, authorizer_name: str | None) -> str | None:
        name = authorizer_name or self.default_authorizer
        authorizer = self.authorizers.get(name) if name else None
        return authorizer.token_key if authorizer else None

    def _x509_authenticator(self, conn: str, writer: asyncio.StreamWriter) -> Authenticate:
        """mTLS: the client certificate must belong to a registered thing (aws-iot.md §3)."""
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

        async def authenticate(_connect: Connect) -> ConnectAuth:
            if not der:
                return ConnectAuth(
                    ok=False,
                    reason="no-client-certificate",
                    explain="MQTT over TLS needs an X.509 client certificate",
                )
            thing = self.things.get(fingerprint(der))
            if thing is None:
                return ConnectAuth(
                    ok=False,
                    reason="unknown-certificate",
                    explain="the client certificate is trusted but not registered to any thing",
                )
            return ConnectAuth(
                ok=True,
                reason="ok",
                explain=f"certificate of thing {thing.name!r}",
                principal=Principal(
                    method="x509", name=thing.name, policies=thing.policies, thing_name=thing.name
                ),
            )

        return authenticate

    def _custom_authenticator(
        self,
        conn: str,
        *,
        upgrade: tuple[list[tuple[str, str]], str] | None,
        sni: str | None,
    ) -> Authenticate:
        """Custom auth is decided at CONNECT (aws-iot.md §2.1-§2.4)."""

        async def authenticate(connect: Connect) -> ConnectAuth:
            found: custom.CustomAuthCredentials | None = None
            if upgrade is not None:
                headers, query = upgrade
                found = custom.from_upgrade(
                    headers=headers, query=query, token_key_for=self._token_key_for
                )
            if found is None and connect.username is not None:
                found = custom.from_username(connect.username, token_key_for=self._token_key_for)
            verdict = custom.authenticate(
                credentials=found,
                authorizers=self.authorizers,
                default_authorizer=self.default_authorizer,
                connection_id=conn,
                server_name=sni,
                http=(
                    custom.HttpRequestData(headers=tuple(upgrade[0]), query_string=upgrade[1])
                    if upgrade
                    else None
                ),
                mqtt=custom.MqttConnectData(
                    username=connect.username,
                    password=connect.password,
                    client_id=connect.client_id,
                ),
                strict=self.config.strict,
            )
            if not verdict.ok:
                return ConnectAuth(ok=False, reason=verdict.reason, explain=verdict.explain)
            return ConnectAuth(
                ok=True,
                reason="ok",
                explain=verdict.explain,
                principal=Principal(
                    method="custom-auth",
                    name=verdict.principal_id or "",
                    policies=tuple(verdict.policies.documents),
                    disconnect_after=verdict.disconnect_after,
                ),
            )

        return authenticate


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
