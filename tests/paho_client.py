"""A paho-mqtt 2.x client under test, driven from async tests without fixed sleeps.

paho runs its network loop in its own thread; callbacks put what happened on a queue
that the test awaits with a timeout scaled from ``tests.timing.TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.timing import TIMEOUT


@dataclass(frozen=True)
class Happened:
    what: str  # "connect" | "disconnect" | "message" | "subscribe" | "publish"
    rc: Any = None
    topic: str | None = None
    payload: bytes | None = None


class _Client(mqtt.Client):
    """paho 2.2 leaks the TLS socket when the WebSocket handshake fails; close it."""

    def _ssl_wrap_socket(self, tcp_sock: Any) -> Any:
        self._last_tls_socket = super()._ssl_wrap_socket(tcp_sock)
        return self._last_tls_socket

    def _create_socket(self) -> Any:
        try:
            return super()._create_socket()
        except BaseException:
            tls_socket = getattr(self, "_last_tls_socket", None)
            if tls_socket is not None:
                tls_socket.close()
            raise


class PahoClient:
    def __init__(
        self,
        client_id: str,
        *,
        websocket: bool,
        ca_file: str,
        path: str = "/mqtt",
        headers: dict[str, str] | None = None,
        client_cert: tuple[str, str] | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        username: str | None = None,
        alpn: list[str] | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.events: queue.Queue[Happened] = queue.Queue()
        self.client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport="websockets" if websocket else "tcp",
            protocol=protocol,
            reconnect_on_failure=False,
        )
        if websocket:
            self.client.ws_set_options(path=path, headers=headers)
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
        if alpn:
            context.set_alpn_protocols(alpn)
        if server_hostname is not None:
            context.check_hostname = False  # SNI set below; the cert is checked by IP
        self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(username)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.events.put(Happened("connect", rc=rc))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.events.put(Happened("disconnect", rc=rc))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.events.put(Happened("message", topic=msg.topic, payload=bytes(msg.payload)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any = None) -> None:
        self.events.put(Happened("subscribe", rc=[int(r.value) for r in rcs]))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any = None) -> None:
        self.events.put(Happened("publish", rc=rc))

    async def connect(self, host: str, port: int) -> None:
        try:
            await asyncio.to_thread(self.client.connect, host, port, 60)
        except Exception as exc:  # the failure is what the test looks at
            self.events.put(Happened("error", rc=exc))
            return
        self.client.loop_start()

    async def next(self, *kinds: str, timeout: float = TIMEOUT) -> Happened:
        """The next event of one of ``kinds`` (others are skipped)."""
        loop_deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = loop_deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"paho: no {kinds} within {timeout}s")
            try:
                event = await asyncio.to_thread(self.events.get, True, min(remaining, 0.25))
            except queue.Empty:
                continue
            if not kinds or event.what in kinds:
                return event

    async def close(self) -> None:
        await asyncio.to_thread(self.client.disconnect)
        self.client.loop_stop()
