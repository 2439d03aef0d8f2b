"""The device's own link to AWS IoT: MQTT over mutual TLS to the fake gateway.

A real Dyson device also talks to Dyson's AWS IoT broker, where the app reaches it when it
is not on the same network (dyson.md §7). How the device authenticates there is
**(unknown)** (§7 "The device's own cloud link"); the simulated device does what an AWS IoT
thing does: it connects to the gateway's MQTT-over-TLS port (AWS's 8883, aws-iot.md §3)
with its X.509 client certificate, as the registered thing named by its serial, and then:

* sets the last will ``{"msg":"GONE-AWAY"}`` on ``<root>/<serial>/status/connection``
  (§4.3, §7 **(inferred)**), so a cloud client learns the device is offline while the
  broker is up;
* subscribes to ``<root>/<serial>/command`` (QoS 1: libdyson publishes STATE-SET at QoS 1,
  §1.5) and feeds every command to the device, acknowledging QoS 1 commands;
* publishes whatever the device publishes, on the same topics as locally, at QoS 0 and
  never retained (§1.5, §7 "the same topics as locally"); it is a
  :class:`~simulators.dyson.host.DeviceSink` of the device's
  :class:`~simulators.dyson.host.DeviceHost`, so answers to commands that came through
  the local broker reach cloud clients too, and the other way round;
* announces itself on ``status/connection``: HELLO (``resetSource`` PWUP) on its first
  connection, IM-BACK after a reconnection **(inferred**: thoukydides lists both message
  types, no capture shows when each is sent);
* sends PINGREQ within its keep-alive and gives up on a connection that stays silent for
  half a keep-alive after one (MQTT 3.1.1 §3.1.2.10);
* reconnects after :class:`Backoff` delays (1, 2, 4 ... 30 s by default) whenever the
  connection fails or drops; a clean :meth:`DysonCloudLink.stop` says GOODBYE and sends
  DISCONNECT, so no will is published.

:func:`thing_policy` is the IoT policy such a thing needs, and no more (aws-iot.md §5):
``iot:Connect`` as itself, ``iot:Publish`` under ``status/``, ``iot:Subscribe`` and
``iot:Receive`` on its command topic. :meth:`DysonCloudLink.for_gateway` mints the
certificate, registers the thing with that policy and points the link at the gateway.

Events (``serial`` and ``client_id`` on each):

* ``dyson.cloud.connect``: one attempt's outcome, ``ok`` and a stable ``reason``:
  ``ok``, ``unreachable`` (TCP), ``tls-failed``, ``timeout`` (no CONNACK or SUBACK within
  ``connect_timeout``), ``closed-before-connack`` (AWS's answer to a refused CONNECT,
  aws-iot.md §4.5), ``connack-refused``, ``subscribe-refused`` (SUBACK 0x80),
  ``closed-before-suback``, ``protocol-error``;
* ``dyson.cloud.disconnected``: ``reason`` ``connection-lost``, ``keepalive-timeout``,
  ``protocol-error``, ``cut`` (:meth:`DysonCloudLink.cut`) or ``stopped``
  (:meth:`DysonCloudLink.stop` while online);
* ``dyson.cloud.backoff``: the ``delay`` before the next attempt;
* ``dyson.cloud.dropped``: a device message published while offline (QoS 0, lost);
* ``dyson.cloud.error``: a bug in the link itself, after which it keeps retrying; or, on
  :meth:`DysonCloudLink.stop`, a connection task that did not end within
  ``connect_timeout`` of being cancelled (it is left behind, its connection aborted).

Every wait on the network is ``async with asyncio.timeout(...)`` around a direct
``await``, never ``asyncio.wait_for``: on Python 3.11, ``wait_for`` returns the result and
drops a cancellation that arrives in the same turn of the event loop as the data, and the
link then carried on connecting while :meth:`DysonCloudLink.stop` waited for it for ever.
The loops also check ``_stopping`` themselves, so a lost cancellation cannot keep them
going.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.auth.policy import CONNECT, PUBLISH, RECEIVE, SUBSCRIBE, VERSION_2012
from harness.clock import WorldClock
from harness.errors import ConfigError, MalformedPacket
from harness.events import Recorder
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Publish,
    StreamDecoder,
    Suback,
    Subscribe,
    Will,
    encode,
)
from harness.pki import IssuedCert
from simulators.dyson.device import DysonDevice
from simulators.dyson.host import DeviceHost
from simulators.dyson.messages import Outgoing
from simulators.dyson.topics import DeviceTopics

if TYPE_CHECKING:
    from harness.gateway import Gateway

__all__ = ["Backoff", "DysonCloudLink", "thing_policy"]

#: QoS of the command subscription: STATE-SET arrives at QoS 1 (dyson.md §1.5).
COMMAND_QOS = 1
_READ_SIZE = 65536
_SUBSCRIBE_ID = 1
_GOODBYE_ID = 2


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delays between connection attempts: ``initial_s``, times ``factor`` per failure,
    at most ``max_s``. The real device's schedule is **(unknown)**; these are the usual
    SDK defaults (1 s doubling to 30 s). Tests compress them (fractions allowed)."""

    initial_s: float = 1.0
    max_s: float = 30.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ConfigError("Backoff needs 0 < initial_s <= max_s")
        if self.factor < 1:
            raise ConfigError("Backoff factor must be at least 1")

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failed or dropped connections (>= 1)."""
        exponent = max(0, failures - 1)
        # Cap the exponent: beyond ~64 doublings the float overflows long after max_s.
        return min(self.max_s, self.initial_s * self.factor ** min(exponent, 64))


def thing_policy(*, region: str, account_id: str, topics: DeviceTopics) -> str:
    """The IoT policy of a device's thing: exactly what its cloud link does (aws-iot.md §5).

    ``iot:Connect`` with the thing name as client id (``${iot:Connection.Thing.ThingName}``),
    ``iot:Publish`` on ``<root>/<serial>/status/*`` (current, faults, connection and its
    GONE-AWAY will, scheduler, software), ``iot:Subscribe`` on the command topic as a
    filter and ``iot:Receive`` on it as a topic.
    """
    prefix = f"arn:aws:iot:{region}:{account_id}"
    document = {
        "Version": VERSION_2012,
        "Statement": [
            {
                "Effect": "Allow",
                "Action": CONNECT,
                "Resource": f"{prefix}:client/${{iot:Connection.Thing.ThingName}}",
            },
            {
                "Effect": "Allow",
                "Action": PUBLISH,
                "Resource": f"{prefix}:topic/{topics.prefix}status/*",
            },
            {
                "Effect": "Allow",
                "Action": SUBSCRIBE,
                "Resource": f"{prefix}:topicfilter/{topics.command}",
            },
            {"Effect": "Allow", "Action": RECEIVE, "Resource": f"{prefix}:topic/{topics.command}"},
        ],
    }
    return json.dumps(document)


class _Refused(Exception):
    """Internal: one connection attempt failed; ``reason`` is the event's code."""

    def __init__(self, reason: str, explain: str) -> None:
        super().__init__(explain)
        self.reason = reason
        self.explain = explain


class _Stopped(Exception):
    """Internal: :meth:`DysonCloudLink.stop` was called; the connection task ends quietly
    (:meth:`DysonCloudLink._end_task` records the ``stopped`` disconnection)."""


class _Lost(Exception):
    """Internal: an established connection ended; ``reason`` is the event's code."""

    def __init__(self, reason: str, explain: str) -> None:
        super().__init__(explain)
        self.reason = reason
        self.explain = explain


class DysonCloudLink:
    """The device as an AWS IoT thing on the fake gateway; see the module docstring.

    ``device`` is the :class:`DeviceHost` that owns the device (the link adds itself as a
    sink), or a bare :class:`DysonDevice`, which gets a host of its own with this link as
    its only sink. ``async with link:`` starts connecting in the background and stops
    cleanly; :meth:`wait_connected` waits for the first (or next) working connection.
    """

    name = "cloud"

    def __init__(
        self,
        device: DeviceHost | DysonDevice,
        *,
        # Where: the gateway's MQTT-over-TLS port, and the endpoint name it must prove
        endpoint: str,
        port: int,
        connect_host: str = "127.0.0.1",
        # Who: the thing's certificate and the CA the gateway's certificate chains to
        cert: IssuedCert | None = None,
        ca_file: Path | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
        # MQTT
        keep_alive: int = 60,
        protocol_level: int = 4,
        # Timeouts and retries
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        # Behaviour
        report_link_faults: bool = False,
        # The world
        recorder: Recorder | None = None,
        clock: WorldClock | None = None,
    ) -> None:
        """``report_link_faults`` makes the device raise its ``nwcs``/``nwps``/``nwss``
        module warnings while the link is down and clear them when it is back (dyson.md
        §4.3: dersimn saw them go FAIL when the Internet link dropped; **(inferred)**)."""
        if isinstance(device, DysonDevice):
            device = DeviceHost(device, recorder=recorder, clock=clock)
            self._own_host = True
        else:
            self._own_host = False
        if ssl_context is None and ca_file is None:
            raise ConfigError("DysonCloudLink needs ca_file (or ssl_context) to trust the gateway")
        if not 0 <= keep_alive <= 65535:
            raise ConfigError(f"keep_alive must be 0-65535 seconds, got {keep_alive}")
        if protocol_level not in (3, 4):
            raise ConfigError(f"protocol_level must be 3 (MQTT 3.1) or 4 (3.1.1): {protocol_level}")
        if connect_timeout <= 0:
            raise ConfigError("connect_timeout must be positive")
        self.host = device
        self.recorder = recorder if recorder is not None else device.recorder
        self.clock = clock if clock is not None else self.recorder.clock
        self.topics: DeviceTopics = device.device.topics
        self.serial = device.serial
        self.endpoint = endpoint
        self.connect_host = connect_host
        self.port = port
        self.client_id = client_id or self.serial
        self.keep_alive = keep_alive
        self.protocol_level = protocol_level
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self.report_link_faults = report_link_faults
        self._ssl = ssl_context or self._context(cert, ca_file)
        # State
        self.connections = 0  # working connections so far
        self.dropped = 0  # device messages lost while offline
        self._writer: asyncio.StreamWriter | None = None
        self._online = False  # CONNACK and SUBACK received on the current connection
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._remove_sink: Callable[[], None] | None = None
        self._last_sent = 0.0
        self._stopping = False
        self._cut = False
        self._decoder = StreamDecoder()
        self._pending: list[Packet] = []
        self._acks: dict[int, asyncio.Future[None]] = {}

    @staticmethod
    def _context(cert: IssuedCert | None, ca_file: Path | str | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile=str(ca_file))
            if cert is not None:
                cert.configure_cert(context)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the link's CA or certificate: {exc}") from None
        return context

    @classmethod
    def for_gateway(
        cls,
        device: DeviceHost | DysonDevice,
        gateway: Gateway,
        *,
        thing_name: str | None = None,
        **options: Any,
    ) -> DysonCloudLink:
        """Register the device as a thing of ``gateway`` and return a link to it.

        Mints a client certificate from the gateway's PKI, registers it for ``thing_name``
        (default: the serial) with :func:`thing_policy`, and points the link at the
        gateway's MQTTS port and endpoint. ``options`` are the constructor's.
        """
        topics = device.device.topics if isinstance(device, DeviceHost) else device.topics
        name = thing_name or topics.serial
        cert = gateway.pki.client_cert(name)
        cfg = gateway.config
        policy = thing_policy(region=cfg.region, account_id=cfg.account_id, topics=topics)
        gateway.register_thing(name, cert.cert_pem, policies=(policy,))
        options.setdefault("recorder", gateway.recorder)
        return cls(
            device,
            endpoint=gateway.endpoint,
            port=gateway.mqtts_port,
            connect_host=cfg.host,
            cert=cert,
            ca_file=gateway.pki.ca_file,
            client_id=name,
            **options,
        )

    # Lifecycle

    @property
    def online(self) -> bool:
        """Connected, subscribed, publishing."""
        return self._online

    async def __aenter__(self) -> DysonCloudLink:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start connecting in the background (and the device's timers, for a bare device)."""
        if self._task is not None:
            return
        self._stopping = False
        self._remove_sink = self.host.add_sink(self)
        if self._own_host:
            self.host.start()
        self._task = asyncio.create_task(self._run(), name=f"dyson-cloud-{self.serial}")

    async def stop(self, *, goodbye: bool = True) -> None:
        """Leave cleanly: GOODBYE (``reason`` UNKNOWN, if ``goodbye``) and DISCONNECT, so the
        broker publishes no will; then stop retrying.

        GOODBYE goes at QoS 1 and DISCONNECT only after its PUBACK (or ``connect_timeout``):
        a broker may drop a QoS 0 message that arrives together with the DISCONNECT.
        """
        self._stopping = True
        writer = self._writer
        if writer is not None and self._online:
            if goodbye:
                acked = asyncio.get_running_loop().create_future()
                self._acks[_GOODBYE_ID] = acked
                message = self.host.device.goodbye(self.clock.now())
                self._send(Publish(message.topic, message.payload, qos=1, packet_id=_GOODBYE_ID))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.connect_timeout):
                        await acked
            self._send(Disconnect())
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(self.connect_timeout):
                    await writer.drain()
        await self._end_task()
        if self._remove_sink is not None:
            self._remove_sink()
            self._remove_sink = None
        if self._own_host:
            await self.host.stop()

    async def _end_task(self) -> None:
        """Cancel the connection task and wait for it, at most ``connect_timeout``: a task
        that does not end is recorded as ``dyson.cloud.error`` and left behind with its
        connection aborted, rather than holding the stop (and the world's) up for ever.
        A cancellation of the caller itself propagates (``asyncio.wait`` does not take it)."""
        task, self._task = self._task, None
        stuck = False
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.connect_timeout)
            if done:
                with contextlib.suppress(asyncio.CancelledError):
                    task.result()  # _run catches every Exception: only a cancellation
            else:
                stuck = True
                self._record(
                    "dyson.cloud.error",
                    explain=f"the connection task did not end within {self.connect_timeout} s "
                    "of being cancelled; left behind, its connection aborted",
                )
        if self._online:
            self._record("dyson.cloud.disconnected", reason="stopped", explain="stop() was called")
        writer = self._writer
        self._close_writer(abort=stuck)
        if writer is not None and not stuck:
            # A peer that never answers TLS close_notify must not hold the stop up.
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(self.connect_timeout):
                    await writer.wait_closed()

    def cut(self) -> None:
        """The Internet link drops: the TCP connection is aborted without DISCONNECT, so the
        broker publishes the GONE-AWAY will; the link reconnects after its backoff."""
        writer = self._writer
        if writer is not None:
            self._cut = True
            writer.transport.abort()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until the link is online (connected and subscribed)."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    # DeviceSink

    def publish(self, message: Outgoing) -> None:
        """Publish a device message at QoS 0 if online, else drop it (dyson.md §1.5)."""
        if not self._online or self._writer is None:
            self.dropped += 1
            self._record("dyson.cloud.dropped", msg=_msg_of(message), topic=message.topic)
            return
        self._send(self._publish_packet(message))

    # The connection loop

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._cut = False
            try:
                reader = await self._connect()
            except _Stopped:
                return  # _end_task closes the connection
            except _Refused as refused:
                self._record(
                    "dyson.cloud.connect", ok=False, reason=refused.reason, explain=refused.explain
                )
                self._close_writer(abort=True)
            except Exception as exc:  # a bug in the link: say so, keep the device alive
                self._record("dyson.cloud.error", explain=repr(exc))
                self._close_writer(abort=True)
            else:
                failures = 0
                try:
                    await self._serve(reader)
                except _Stopped:
                    return  # _end_task records the disconnection and closes
                except _Lost as lost:
                    if self._stopping:  # the gateway closed after our DISCONNECT
                        reason, explain = "stopped", "stop() was called"
                    elif self._cut:
                        reason, explain = "cut", "the link was cut (no DISCONNECT)"
                    else:
                        reason, explain = lost.reason, lost.explain
                    self._went_offline(reason, explain)
                except Exception as exc:
                    self._record("dyson.cloud.error", explain=repr(exc))
                    self._went_offline("protocol-error", repr(exc))
            if self._stopping:
                return
            failures += 1
            delay = self.backoff.delay(failures)
            self._record("dyson.cloud.backoff", delay=delay, failures=failures)
            await asyncio.sleep(delay)

    async def _connect(self) -> asyncio.StreamReader:
        """One attempt: TLS, CONNECT with the will, CONNACK, SUBSCRIBE, SUBACK."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.connect_host, self.port, ssl=self._ssl, server_hostname=self.endpoint
                )
        except TimeoutError:
            raise _Refused("timeout", "no TLS connection within connect_timeout") from None
        except ssl.SSLError as exc:
            raise _Refused("tls-failed", f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise _Refused("unreachable", f"cannot reach the gateway: {exc}") from None
        self._writer = writer
        self._decoder = StreamDecoder()
        self._pending = []
        will = self.host.device.gone_away()
        self._send(
            Connect(
                client_id=self.client_id,
                protocol_level=self.protocol_level,
                clean_session=True,
                keep_alive=self.keep_alive,
                will=Will(topic=will.topic, payload=will.payload, qos=0, retain=False),
            )
        )
        connack = await self._expect(reader, Connack, "closed-before-connack")
        if connack.return_code != 0:
            raise _Refused("connack-refused", f"CONNACK return code {connack.return_code}")
        self._send(Subscribe(packet_id=_SUBSCRIBE_ID, topics=((self.topics.command, COMMAND_QOS),)))
        suback = await self._expect(reader, Suback, "closed-before-suback")
        if any(code == 0x80 for code in suback.return_codes):
            raise _Refused("subscribe-refused", f"SUBACK refused {self.topics.command}")
        self.connections += 1
        self._online = True
        self._ready.set()
        self._record(
            "dyson.cloud.connect", ok=True, reason="ok", port=self.port, connection=self.connections
        )
        device = self.host.device
        now = self.clock.now()
        hello = device.hello(now) if self.connections == 1 else device.im_back(now)
        self._send(self._publish_packet(hello))
        if self.report_link_faults:
            self.host.run(lambda at: device.set_cloud_link(True, now=at))
        for packet in self._pending:
            self._on_packet(packet)
        self._pending.clear()
        return reader

    async def _expect(self, reader: asyncio.StreamReader, kind: type[Any], closed: str) -> Any:
        """The next packet of type ``kind`` within ``connect_timeout``; commands that arrive
        first are kept for later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            if self._stopping:
                raise _Stopped
            for index, packet in enumerate(self._pending):
                if isinstance(packet, kind):
                    del self._pending[index]
                    return packet
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _Refused("timeout", f"no {kind.__name__} within connect_timeout")
            try:
                async with asyncio.timeout(remaining):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                continue
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _Refused(closed, f"the gateway closed the connection: {exc}") from None
            if not data:
                raise _Refused(closed, f"the gateway closed the connection before {kind.__name__}")
            try:
                self._pending.extend(packet for packet, _raw in self._decoder.feed(data))
            except MalformedPacket as exc:
                raise _Refused("protocol-error", exc.message) from None

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        """Read commands until the connection ends; keep it alive with PINGREQ."""
        loop = asyncio.get_running_loop()
        ping_sent: float | None = None
        ping_timeout = max(self.keep_alive / 2, 0.001)
        while True:
            # stop() waits here for its GOODBYE's PUBACK; once nothing is awaited, end.
            if self._stopping and not self._acks:
                raise _Stopped
            now = loop.time()
            if ping_sent is not None and now - ping_sent >= ping_timeout:
                raise _Lost("keepalive-timeout", "no answer to PINGREQ within half a keep-alive")
            timeout: float | None = None
            if self.keep_alive:
                due = self._last_sent + self.keep_alive - now
                if due <= 0 and ping_sent is None:
                    self._send(Pingreq())
                    ping_sent = now
                    continue
                timeout = due if ping_sent is None else ping_sent + ping_timeout - now
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                continue
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _Lost("connection-lost", f"the connection failed: {exc}") from None
            if not data:
                raise _Lost("connection-lost", "the gateway closed the connection")
            ping_sent = None  # anything from the server shows the connection is alive
            try:
                packets = self._decoder.feed(data)
            except MalformedPacket as exc:
                raise _Lost("protocol-error", exc.message) from None
            for packet, _raw in packets:
                self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> None:
        if isinstance(packet, Publish):
            if packet.qos == 1 and packet.packet_id is not None:
                self._send(Puback(packet.packet_id))
            self.host.handle(packet.topic, packet.payload, via=self.name)
        elif isinstance(packet, Puback):
            acked = self._acks.pop(packet.packet_id, None)
            if acked is not None and not acked.done():
                acked.set_result(None)
        # PINGRESP, UNSUBACK: nothing to do.

    def _went_offline(self, reason: str, explain: str) -> None:
        was_online = self._online
        self._close_writer(abort=True)
        self._record("dyson.cloud.disconnected", reason=reason, explain=explain)
        if was_online and self.report_link_faults:
            device = self.host.device
            self.host.run(lambda at: device.set_cloud_link(False, now=at))

    # Plumbing

    def _publish_packet(self, message: Outgoing) -> Publish:
        return Publish(topic=message.topic, payload=message.payload, qos=0, retain=False)

    def _send(self, packet: Packet) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        writer.write(encode(packet))
        self._last_sent = asyncio.get_running_loop().time()

    def _close_writer(self, *, abort: bool) -> None:
        self._online = False
        self._ready.clear()
        for acked in self._acks.values():  # no PUBACK will come on a closed connection
            if not acked.done():
                acked.set_result(None)
        self._acks.clear()
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if abort:
            writer.transport.abort()
        else:
            writer.close()

    def _record(self, kind: str, **fields: Any) -> None:
        self.recorder.record(kind, serial=self.serial, client_id=self.client_id, **fields)


def _msg_of(message: Outgoing) -> str | None:
    try:
        return message.msg
    except (ValueError, KeyError, TypeError):
        return None
