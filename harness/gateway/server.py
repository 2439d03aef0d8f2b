"""The fake AWS IoT Core device gateway: listeners, upgrade, authentication, sessions.

Two TLS listeners on 127.0.0.1 (port 0 unless asked otherwise):

* the **WSS port** (AWS's 443): ALPN decides what follows (aws-iot.md §3 table):
  ``x-amzn-mqtt-ca`` → MQTT with an X.509 client certificate; ``mqtt`` → MQTT with
  custom-authorizer credentials in the CONNECT username (§2.1); anything else →
  ``GET /mqtt`` WebSocket upgrade authenticated by SigV4 (§1) or a custom authorizer (§2).
* the **MQTTS port** (AWS's 8883): MQTT with an X.509 client certificate.

A SigV4 failure is answered with AWS's 403 (§1.9); a custom-auth or policy failure
completes the upgrade and closes after CONNECT without CONNACK (§2.4, §4.5). An upgrade
without SigV4 parameters is always a 101: its custom-auth credentials may be in the
headers, the query or only in the CONNECT username (awsiotsdk v2 sends a bare upgrade,
§2.1), so the decision waits for CONNECT. A refused TLS handshake ends with its TLS alert
(:class:`~harness.gateway.transports.AlertingSSLObject`).

Every step is an event on the recorder, with a stable reason code and an explanation:
``tcp.accept``, ``tls.handshake`` (reasons in :func:`tls_failure`), ``ws.upgrade``
(``upgrade-timeout``, ``eof``, ``malformed``, ``not-found``, ``not-websocket``,
``fault``, or the SigV4 reason), ``auth.verdict`` (SigV4 at the upgrade, with the
``hint`` of a known client mistake; every method at CONNECT, with its ``method`` and what
names the credentials: ``access_key_id``, ``thing_name``, or the custom authorizer with
``invoked`` and ``signature_verified``), ``ws.error`` / ``ws.close`` (WebSocket protocol
errors and client close frames), then the session pump's events. A bug in the gateway
itself is a ``gateway.error`` event, never a dead listener.

Slow or silent clients are cut: ``handshake_timeout`` bounds the TLS handshake and the
upgrade request, ``connect_timeout`` the wait for the first CONNECT.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import itertools
import ssl
import urllib.parse
import weakref
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from websockets.http11 import Request, Response
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
from harness.gateway.session import (
    Authenticate,
    ConnectAuth,
    PersistentSubscriptions,
    Principal,
    Session,
)
from harness.gateway.transports import (
    AlertingSSLObject,
    StreamTransport,
    WebSocketTransport,
    abort_writer,
    handshake_alerts_to,
)
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
    # Timeouts: a TLS handshake or upgrade request slower than this is dropped; so is a
    # connection whose first CONNECT has not been accepted this long after it opened for
    # MQTT (MQTT 3.1.1 §3.1.4 "reasonable amount of time"; AWS's value is unknown).
    handshake_timeout: float = 10.0
    connect_timeout: float | None = 10.0
    # Engine: None or "amqtt" (embedded), or "mqtt://host:port"
    engine: str | None = None
    # SO_REUSEPORT on both listeners: several gateway processes (harness.workers) listen on
    # the same ports and the kernel spreads new connections across them. Off by default:
    # with it, a second gateway started on a taken port would share it instead of failing.
    reuse_port: bool = False

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
        #: The filters of persistent sessions, kept across their connections (§4.3).
        self.persistent_subscriptions = PersistentSubscriptions()
        self._by_client_id: dict[str, Session] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_ids = itertools.count(1)
        # SNI seen by the callback, by SSL object (weak: a failed handshake leaves no entry)
        self._sni: weakref.WeakKeyDictionary[ssl.SSLObject, str | None] = (
            weakref.WeakKeyDictionary()
        )
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
        """Start the engine, then both listeners.

        A listener that cannot be made (its port in use, say) leaves nothing behind: the
        listeners already made are closed and the engine stopped before the error is
        raised again, so a failed start needs no :meth:`stop`.
        """
        _small_tls_read_buffers()
        await self.engine.start()
        cfg = self.config
        try:
            self._wss_context = self._server_context(alpn=True)
            self._mqtts_context = self._server_context(alpn=False)
            wss = await asyncio.start_server(
                self._on_wss, cfg.host, cfg.wss_port, reuse_port=cfg.reuse_port
            )
            self._servers.append(wss)
            mqtts = await asyncio.start_server(
                self._on_mqtts, cfg.host, cfg.mqtts_port, reuse_port=cfg.reuse_port
            )
            self._servers.append(mqtts)
        except BaseException:
            await self._close_servers()
            with contextlib.suppress(Exception):  # the start's own error is the one to see
                await self.engine.stop()
            raise
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
        await self._close_servers()
        await self.engine.stop()
        self.recorder.record("gateway.stopped")

    async def _close_servers(self) -> None:
        """Close the listeners and forget them (bounded: a stuck one is not waited for)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

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
        # A refused handshake ends with its TLS alert, as on a real server (aws-iot.md §3).
        context.sslobject_class = AlertingSSLObject

        def remember_sni(
            ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
        ) -> int | None:
            self._sni[ssl_object] = server_name
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
        """TLS handshake; returns (sni, alpn), or None after recording why it failed.

        The failure ``reason`` is a stable code (see :func:`tls_failure`); OpenSSL's own
        words go to ``explain``.
        """
        peer = writer.get_extra_info("peername")
        self.recorder.record("tcp.accept", conn=conn, port=port, peer=str(peer))
        try:
            with handshake_alerts_to(writer):
                await writer.start_tls(context, ssl_handshake_timeout=self.config.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            failure = tls_failure(exc)
            self.recorder.record(
                "tls.handshake",
                conn=conn,
                ok=False,
                reason=failure.reason,
                openssl=failure.openssl,
                explain=failure.explain,
            )
            abort_writer(writer)
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        sni = self._sni.pop(ssl_object, None) if ssl_object is not None else None
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self.recorder.record(
            "tls.handshake",
            conn=conn,
            ok=True,
            sni=sni,
            alpn=alpn,
            version=ssl_object.version() if ssl_object is not None else None,
            client_certificate=bool(ssl_object and ssl_object.getpeercert(binary_form=True)),
        )
        return sni, alpn

    @contextlib.contextmanager
    def _connection_task(self) -> Iterator[None]:
        """Track a listener's connection task from accept on, so :meth:`stop` ends it even
        mid-handshake or mid-upgrade."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _on_wss(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The 443 port: ALPN picks the protocol (aws-iot.md §3 table, §2.1)."""
        conn = self._new_conn()
        with self._connection_task():
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
                # Only stop() cancels a connection task. It ends normally: asyncio's stream
                # server (3.11) reports a cancelled handler as an "Exception in callback".
                abort_writer(writer)
            except Exception as exc:  # a harness bug must not take the listener down
                self.recorder.record("gateway.error", conn=conn, explain=repr(exc))
                abort_writer(writer)

    async def _on_mqtts(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The 8883 port: MQTT with an X.509 client certificate (aws-iot.md §3)."""
        conn = self._new_conn()
        with self._connection_task():
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
                # Only stop() cancels a connection task. It ends normally: asyncio's stream
                # server (3.11) reports a cancelled handler as an "Exception in callback".
                abort_writer(writer)
            except Exception as exc:  # a harness bug must not take the listener down
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
        timeout = self.config.connect_timeout
        timer = (
            asyncio.get_running_loop().call_later(timeout, self._connect_overdue, session)
            if timeout is not None
            else None
        )
        try:
            await session.run()
        finally:
            if timer is not None:
                timer.cancel()

    def _connect_overdue(self, session: Session) -> None:
        """A connection that never got as far as an accepted CONNECT is dropped, so a
        silent or trickling client cannot hold a socket forever (``connect_timeout``)."""
        if session.closed or session.client_id is not None:
            return
        self.spawn(
            session.close(
                rules.DisconnectReason.CLIENT_ERROR,
                f"no CONNECT within {self.config.connect_timeout:g} s of the connection opening",
            )
        )

    # WebSocket upgrade (aws-iot.md §1.1, §1.8, §1.9, §2.1)

    async def _read_upgrade(
        self, reader: asyncio.StreamReader, protocol: ServerProtocol
    ) -> tuple[Request | None, int]:
        """The upgrade request (or None once the input cannot be one) and the bytes read."""
        received = 0
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            received += len(data)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Request):
                    return event, received
            if not data or protocol.handshake_exc is not None:
                return None, received

    async def _websocket(
        self,
        conn: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sni: str | None,
    ) -> None:
        """``GET /mqtt`` → 101 (SigV4 valid, or custom auth to be decided at CONNECT) or
        AWS's 403 (SigV4 invalid); other requests get a plain HTTP error."""
        protocol = ServerProtocol(
            subprotocols=[Subprotocol(p) for p in responses.SUBPROTOCOLS], max_size=2**20
        )
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns the request and drops a
            # cancellation (stop()) that arrives in the same turn of the event loop.
            async with asyncio.timeout(self.config.handshake_timeout):
                request, received = await self._read_upgrade(reader, protocol)
        except TimeoutError:
            self.recorder.record(
                "ws.upgrade",
                conn=conn,
                ok=False,
                reason="upgrade-timeout",
                explain=f"no complete upgrade request within {self.config.handshake_timeout:g} s",
            )
            abort_writer(writer)
            return
        if request is None:
            if received == 0:
                self.recorder.record(
                    "ws.upgrade",
                    conn=conn,
                    ok=False,
                    reason="eof",
                    explain="the client closed the connection without sending a request",
                )
                await _close(writer)
                return
            self.recorder.record(
                "ws.upgrade",
                conn=conn,
                ok=False,
                status=400,
                reason="malformed",
                explain=_exception_text(protocol.handshake_exc, "the request ended early"),
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
                "ws.upgrade", conn=conn, ok=False, status=404, path=path[:200], reason="not-found"
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
                explain=_exception_text(protocol.handshake_exc, accept.reason_phrase),
            )
            writer.write(
                responses.plain_response(
                    accept.status_code, accept.reason_phrase, accept.body or b""
                )
            )
            await _close(writer)
            return
        params = {k.lower() for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
        method: Literal["sigv4", "custom-auth"]
        if params & set(_SIGV4_MARKERS):
            method = "sigv4"
            authenticate = self._sigv4(conn, writer, request.path, headers)
            if authenticate is None:
                await _close(writer)
                return
        else:
            # Custom auth is decided at CONNECT whatever the upgrade carries: the
            # credentials may be in the headers or query (JS v1, Dyson, §2.1, §2.5) or only
            # in the CONNECT username (awsiotsdk v2's websockets_with_custom_authorizer
            # sends a bare upgrade, §2.1). A failure is a close after CONNECT, never a 403
            # (§2.4).
            method = "custom-auth"
            authenticate = self._custom_authenticator(conn, upgrade=(headers, query), sni=sni)
        # AWS's 101 in one write (§1.8). websockets' own 101 is discarded: send_response
        # only moves its state machine to OPEN so that frames flow.
        writer.write(self._verdict_response(accept))
        protocol.send_response(accept)
        protocol.data_to_send()
        self.recorder.record(
            "ws.upgrade",
            conn=conn,
            ok=True,
            status=101,
            path=path,
            auth=method,
            subprotocol=accept.headers.get("Sec-WebSocket-Protocol"),
        )

        def observe(kind: str, fields: dict[str, object]) -> None:
            self.recorder.record(kind, conn=conn, **fields)

        transport = WebSocketTransport(reader, writer, protocol, observer=observe)
        await self._run_session(conn, transport, authenticate, websocket=True)

    @staticmethod
    def _verdict_response(accept: Response) -> bytes:
        return responses.switching_protocols(
            accept_key=accept.headers["Sec-WebSocket-Accept"],
            subprotocol=accept.headers.get("Sec-WebSocket-Protocol"),
        )

    def _refuse(self, conn: str, writer: asyncio.StreamWriter, verdict: sigv4.SigV4Verdict) -> None:
        """AWS's 403 for a SigV4 failure (aws-iot.md §1.9), and the verdict that explains it."""
        self.recorder.record(
            "auth.verdict",
            conn=conn,
            stage="upgrade",
            method="sigv4",
            ok=False,
            reason=verdict.reason,
            hint=verdict.hint,
            message=verdict.message,
            access_key_id=verdict.access_key_id,
            explain=verdict.explain,
        )
        self.recorder.record(
            "ws.upgrade", conn=conn, ok=False, status=403, reason=verdict.reason, hint=verdict.hint
        )
        writer.write(responses.forbidden(verdict.message))

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
            self._refuse(conn, writer, verdict)
            return None
        credential = verdict.credential
        self.recorder.record(
            "auth.verdict",
            conn=conn,
            stage="upgrade",
            method="sigv4",
            ok=True,
            reason="ok",
            hint=verdict.hint,
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
            # SigV4 authenticates the upgrade only; CONNECT carries nothing to check (§1.8).
            return ConnectAuth(
                ok=True,
                reason="ok",
                explain=f"authenticated at the upgrade by SigV4 as {principal.name!r}",
                principal=principal,
                event_fields={
                    "method": "sigv4",
                    "access_key_id": credential.access_key_id,
                    "principal": principal.name,
                },
            )

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
                    event_fields={"method": "x509"},
                )
            thing = self.things.get(fingerprint(der))
            if thing is None:
                return ConnectAuth(
                    ok=False,
                    reason="unknown-certificate",
                    explain="the client certificate is trusted but not registered to any thing",
                    event_fields={"method": "x509"},
                )
            return ConnectAuth(
                ok=True,
                reason="ok",
                explain=f"certificate of thing {thing.name!r}",
                principal=Principal(
                    method="x509", name=thing.name, policies=thing.policies, thing_name=thing.name
                ),
                event_fields={"method": "x509", "thing_name": thing.name},
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
            # The verdict's own event fields (method, authorizer, invoked; never the token
            # or the signature), and whether the token's signature was verified.
            fields = verdict.event_fields() | {"signature_verified": verdict.signature_verified}
            if not verdict.ok:
                return ConnectAuth(
                    ok=False, reason=verdict.reason, explain=verdict.explain, event_fields=fields
                )
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
                event_fields=fields,
            )

        return authenticate


def _small_tls_read_buffers() -> None:
    """Give each TLS connection a 32 KiB read buffer instead of asyncio's 256 KiB.

    asyncio allocates (and zero-fills) ``SSLProtocol.max_size`` bytes per TLS connection;
    it is only the largest chunk read at once, and an MQTT packet AWS accepts is at most
    128 KB plus headers, read in pieces anyway. Measured by ``bench`` (scale, 10,000
    connections): 359 KB -> 136 KB per connection. It is a class attribute, so this sets
    it for the process; nothing else here depends on the larger chunk.
    """
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _exception_text(exc: BaseException | None, default: str) -> str:
    """An exception as one line, with its cause (websockets wraps the parser's error)."""
    if exc is None:
        return default
    cause = exc.__cause__
    return f"{exc}: {cause}" if cause is not None else str(exc)


@dataclass(frozen=True)
class TlsFailure:
    """Why a TLS handshake failed: a stable ``reason``, OpenSSL's own code and words."""

    reason: str
    openssl: str | None
    explain: str


#: OpenSSL's reason for a failed server-side handshake → the stable ``tls.handshake`` code.
_TLS_REASONS: dict[str, str] = {
    # mTLS: the client's certificate (aws-iot.md §3); CERTIFICATE_VERIFY_FAILED is below.
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-client-certificate",
    # TLS 1.2 and 1.3 only, AWS's suites (aws-iot.md §3)
    "UNSUPPORTED_PROTOCOL": "wrong-version",
    "VERSION_TOO_LOW": "wrong-version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "wrong-version",
    "NO_SHARED_CIPHER": "no-shared-cipher",
    # Not TLS at all: plain HTTP or MQTT on a TLS port, garbage
    "HTTP_REQUEST": "not-tls",
    "WRONG_VERSION_NUMBER": "not-tls",
    "UNKNOWN_PROTOCOL": "not-tls",
    "PACKET_LENGTH_TOO_LONG": "not-tls",
    # The SNI callback fails a handshake only for a missing SNI (GatewayConfig.sni)
    "CALLBACK_FAILED": "no-sni",
    # The client gave up on the gateway's certificate (its trust store or name check)
    "TLSV1_ALERT_UNKNOWN_CA": "server-certificate-rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "server-certificate-rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "server-certificate-rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "server-certificate-rejected",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
}

#: X509_V_ERR codes of a rejected client certificate with a code of their own.
_VERIFY_REASONS = {9: "certificate-not-yet-valid", 10: "certificate-expired"}


def tls_failure(exc: BaseException) -> TlsFailure:
    """Classify a failed server-side handshake into a stable kebab-case code.

    Codes: ``certificate-unknown`` (client certificate not issued by a trusted CA),
    ``certificate-expired``, ``certificate-not-yet-valid``, ``no-client-certificate``,
    ``wrong-version`` (TLS < 1.2), ``no-shared-cipher``, ``not-tls`` (plain bytes on a TLS
    port), ``no-sni`` (``sni="require"``), ``server-certificate-rejected`` (the client
    refused the gateway's certificate), ``handshake-timeout``, ``eof`` (the client left
    mid-handshake), else ``tls-error``.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsFailure(
            reason=_VERIFY_REASONS.get(exc.verify_code, "certificate-unknown"),
            openssl=exc.reason,
            explain=f"the client certificate was refused: {exc.verify_message}",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TlsFailure(reason="eof", openssl=exc.reason, explain=str(exc))
    if isinstance(exc, ssl.SSLError):
        code = exc.reason
        return TlsFailure(
            reason=_TLS_REASONS.get(code or "", "tls-error"), openssl=code, explain=str(exc)
        )
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        # asyncio aborts a handshake that outlives ssl_handshake_timeout with
        # ConnectionAbortedError (3.11) or TimeoutError; nothing else aborts it.
        return TlsFailure(reason="handshake-timeout", openssl=None, explain=str(exc))
    if isinstance(exc, ConnectionError):
        return TlsFailure(
            reason="eof",
            openssl=None,
            explain=f"the client closed the connection mid-handshake ({type(exc).__name__})",
        )
    return TlsFailure(reason="tls-error", openssl=None, explain=repr(exc))
