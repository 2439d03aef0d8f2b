"""One paho-mqtt 2.x connection, driven from asyncio: the reference apps' thin MQTT shell.

paho runs its network loop in a thread of its own; :class:`MqttLink` bridges it to the
event loop. :meth:`MqttLink.open` makes exactly one connection attempt (TCP, TLS, the
WebSocket upgrade if any, CONNECT, CONNACK) and returns a :class:`LinkOutcome` with a
stable ``reason``; afterwards :meth:`MqttLink.next_event` yields what the connection does
(messages, SUBACKs, the end). Nothing here retries or decides: the apps' state machines do.

``LinkSpec.host``/``port`` are what paho *believes* it connects to (TLS SNI and hostname
check, the WebSocket ``Host`` header); ``LinkSpec.dial`` is where the TCP connection really
goes, so an app can talk to ``<endpoint>:443`` while the world listens on
``127.0.0.1:<port>`` (aws-iot.md §1.6: paho ≥ 2.0 sends ``Host: <endpoint>`` without
``:443``; dyson.md §7: paho's TLS checks the certificate against the endpoint). TLS is
always verified: the context comes from the app, built from the world's CA file.

Failure reasons of :meth:`MqttLink.open` (paho's own words in ``error``):

* ``handshake``: the WebSocket upgrade was refused (paho: ``WebSocket handshake error,
  connection not upgraded`` for AWS's 403, aws-iot.md §1.9; paho never sees the status);
* ``tls-verify``: the server's certificate did not verify; ``tls``: another TLS failure;
* ``refused``: CONNACK with a non-zero return code (e.g. the Dyson device's rc 5 for a
  wrong password, dyson.md §1.2);
* ``closed-before-connack``: the connection ended after CONNECT without a CONNACK (AWS's
  answer to a refused custom-auth or policy CONNECT, aws-iot.md §2.4; the Dyson device's
  RST on a stale session, dyson.md §1.4);
* ``timeout``: no CONNACK within ``connect_timeout`` (or TCP/TLS too slow);
* ``reset``: a TCP reset while paho was still connecting;
* ``network``: TCP refused, unreachable, or another socket error.

paho 2.2 leaks the TLS socket when the WebSocket handshake fails; the client here closes
it, so no ``ResourceWarning`` is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = [
    "PROTOCOLS",
    "LinkClosed",
    "LinkEvent",
    "LinkMessage",
    "LinkOutcome",
    "LinkProblem",
    "LinkSpec",
    "LinkSubscribed",
    "MqttLink",
]

#: MQTT protocol versions by option name (dyson.md §1.1: Dyson clients speak 3.1 or 3.1.1).
PROTOCOLS: Mapping[str, MQTTProtocolVersion] = {
    "3.1": MQTTProtocolVersion.MQTTv31,
    "3.1.1": MQTTProtocolVersion.MQTTv311,
}


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """How to build and dial one paho client."""

    client_id: str
    host: str
    port: int
    #: Where the TCP connection goes; ``None`` = ``(host, port)``.
    dial: tuple[str, int] | None = None
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str = "/mqtt"
    ws_headers: Mapping[str, str] | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    protocol: str = "3.1.1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 60
    connect_timeout: float = 5.0
    #: ``False`` builds the client without ``callback_api_version`` (FB-21): paho ≥ 2.1
    #: then calls the VERSION1 signatures, and the VERSION2-shaped handlers break (FB-01).
    callback_api_version: bool = True


@dataclass(frozen=True)
class LinkOutcome:
    """The result of :meth:`MqttLink.open`: ``ok``, or a ``reason`` and paho's ``error``."""

    ok: bool
    reason: str = "ok"
    error: str | None = None


@dataclass(frozen=True)
class LinkMessage:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class LinkSubscribed:
    mid: int
    granted: tuple[int, ...]


@dataclass(frozen=True)
class LinkClosed:
    """The connection ended; ``rc`` is paho's reason code as text."""

    rc: str


@dataclass(frozen=True)
class LinkProblem:
    """Something paho reported that the app should record (a warning, a callback crash)."""

    what: str
    detail: str


LinkEvent = LinkMessage | LinkSubscribed | LinkClosed | LinkProblem


@dataclass(frozen=True)
class _Connack:
    rc: int
    text: str


class _DialingClient(mqtt.Client):
    """A paho client that dials ``dial`` and closes its TLS socket on a failed upgrade."""

    _dial: tuple[str, int] | None = None
    _last_tls_socket: Any = None

    def _create_socket_connection(self) -> socket.socket:
        if self._dial is None:
            return super()._create_socket_connection()
        source = (self._bind_address, self._bind_port)
        return socket.create_connection(
            self._dial, timeout=self._connect_timeout, source_address=source
        )

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        """paho's TLS wrap, minus its leak: the TLS socket is closed when the handshake
        fails. The context checks the host name itself (``check_hostname``)."""
        context = self._ssl_context
        if context is None or not context.check_hostname:
            raise ValueError("the apps' TLS contexts always verify the host name")
        tls_socket = context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        self._last_tls_socket = tls_socket
        try:
            tls_socket.settimeout(self._connect_timeout)
            tls_socket.do_handshake()
        except BaseException:
            tls_socket.close()
            raise
        return tls_socket

    def _create_socket(self) -> Any:
        try:
            return super()._create_socket()
        except BaseException:
            if self._last_tls_socket is not None:
                self._last_tls_socket.close()
            raise


def _classify(exc: BaseException) -> str:
    if isinstance(exc, mqtt.WebsocketConnectionError):
        return "handshake"
    if isinstance(exc, ssl.SSLCertVerificationError | ssl.CertificateError):
        return "tls-verify"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return "network"


class MqttLink:
    """One paho connection and its events; see the module docstring.

    Not reusable: one :meth:`open`, then :meth:`close`. Safe to :meth:`close` at any time,
    also while :meth:`open` is still running in its thread (the client is then torn down
    when that thread returns).
    """

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[LinkEvent | _Connack] = asyncio.Queue()
        self._closed = False
        self._connecting = False
        self._lock = threading.Lock()
        self._started = False
        self.problems: list[LinkProblem] = []
        self.client = self._build()

    # Building

    def _build(self) -> _DialingClient:
        spec = self.spec
        protocol = PROTOCOLS[spec.protocol]
        if spec.callback_api_version:
            client = _DialingClient(
                CallbackAPIVersion.VERSION2,
                client_id=spec.client_id,
                transport=spec.transport,
                protocol=protocol,
                reconnect_on_failure=False,
            )
        else:
            # As the field design builds it (FB-21): paho 2.1+ warns and uses VERSION1.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                client = _DialingClient(
                    client_id=spec.client_id,
                    transport=spec.transport,
                    protocol=protocol,
                    reconnect_on_failure=False,
                )
            for warning in caught:
                self.problems.append(LinkProblem("warning", str(warning.message)))
            # A handler that breaks under VERSION1 must not kill paho's thread; paho logs it.
            client.suppress_exceptions = True
            client.on_log = self._on_log
        client._dial = spec.dial
        client.connect_timeout = spec.connect_timeout
        if spec.transport == "websockets":
            client.ws_set_options(
                path=spec.ws_path, headers=dict(spec.ws_headers) if spec.ws_headers else None
            )
        if spec.tls is not None:
            client.tls_set_context(spec.tls)
        if spec.username is not None:
            client.username_pw_set(spec.username, spec.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # paho's thread → the event loop

    def _post(self, item: LinkEvent | _Connack) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        value = rc.value if hasattr(rc, "value") else int(rc)
        self._post(_Connack(int(value), str(rc)))

    def _on_disconnect(
        self, _c: Any, _u: Any, _flags: Any, rc: Any, _properties: Any = None
    ) -> None:
        self._post(LinkClosed(str(rc)))

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._post(LinkMessage(message.topic, bytes(message.payload)))

    def _on_subscribe(
        self, _c: Any, _u: Any, mid: int, granted: Any, _properties: Any = None
    ) -> None:
        codes = tuple(int(getattr(code, "value", code)) for code in granted)
        self._post(LinkSubscribed(mid, codes))

    def _on_log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and text.startswith("Caught exception in"):
            self._post(LinkProblem("callback-error", text))

    # Use

    def _connect_blocking(self) -> None:
        """paho's blocking connect, in a worker thread; starts paho's loop on success."""
        spec = self.spec
        try:
            self.client.connect(spec.host, spec.port, spec.keepalive)
        except BaseException:
            with self._lock:
                self._connecting = False
                self._teardown_locked()
            raise
        with self._lock:
            self._connecting = False
            if self._closed:
                self._teardown_locked()
                raise _ClosedWhileConnecting
            self.client.loop_start()
            self._started = True

    async def open(self) -> LinkOutcome:
        """Connect once and wait for the CONNACK (at most ``connect_timeout`` for it)."""
        spec = self.spec
        self._connecting = True
        try:
            await asyncio.to_thread(self._connect_blocking)
        except asyncio.CancelledError:
            self._teardown()  # the worker thread finishes the teardown when it returns
            raise
        except _ClosedWhileConnecting:
            return LinkOutcome(False, "network", "closed while connecting")
        except (OSError, ValueError) as exc:
            return LinkOutcome(False, _classify(exc), f"{type(exc).__name__}: {exc}")
        try:
            async with asyncio.timeout(spec.connect_timeout):
                while True:
                    item = await self._events.get()
                    if isinstance(item, _Connack):
                        if item.rc == 0:
                            return LinkOutcome(True)
                        return LinkOutcome(False, "refused", f"CONNACK {item.rc}: {item.text}")
                    if isinstance(item, LinkClosed):
                        return LinkOutcome(False, "closed-before-connack", item.rc)
                    if isinstance(item, LinkProblem):
                        self.problems.append(item)
        except TimeoutError:
            return LinkOutcome(False, "timeout", f"no CONNACK within {spec.connect_timeout}s")

    async def next_event(self) -> LinkEvent:
        """The next thing the open connection did."""
        while True:
            item = await self._events.get()
            if not isinstance(item, _Connack):
                return item

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.client.subscribe(topics)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos=qos)

    async def close(self) -> None:
        """Disconnect cleanly (DISCONNECT) and stop paho's thread."""
        await asyncio.to_thread(self._teardown)

    def close_now(self) -> None:
        """:meth:`close` without awaiting (for ``finally`` blocks of cancelled tasks)."""
        self._teardown()

    def _teardown(self) -> None:
        with self._lock:
            self._teardown_locked()

    def _teardown_locked(self) -> None:
        """Idempotent; while the worker thread is connecting, it only marks the link closed
        (the worker tears down when paho's ``connect`` returns)."""
        self._closed = True
        if self._connecting:
            return
        client = self.client
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()
        # paho closes its socket and its wake-up socket pair only in ``__del__``, whose
        # order against the sockets' own finalizers is arbitrary: close them now.
        with contextlib.suppress(Exception):
            client._reset_sockets()
        tls_socket = client._last_tls_socket
        if tls_socket is not None:
            client._last_tls_socket = None
            with contextlib.suppress(Exception):
                tls_socket.close()


class _ClosedWhileConnecting(Exception):
    """:meth:`MqttLink.close` was called while paho was still connecting."""
