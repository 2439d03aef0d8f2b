"""Real names and ports for in-process Python clients: a resolver override.

A client under test often hard-codes ``<prefix>-ats.iot.<region>.amazonaws.com:443`` or
``https://cognito-identity.<region>.amazonaws.com`` (aws-iot.md §3, §6). Inside one
Python process, :func:`override` makes such clients reach the world unchanged (issue
[gateway], "Names and ports for unmodified clients"):

* the names it is given resolve to the world's address (loopback), and each name's
  well-known ports (443, 8883, 1883) turn into the ports the world actually bound (port 0
  by default), inside the address that ``socket.getaddrinfo`` returns;
* the client still believes it talks to the real name, so TLS sends it as SNI and checks
  the certificate against it; the world's certificates cover those names;
* every other name, and every name once the ``with`` block ends, resolves as before.

It patches ``socket.getaddrinfo`` (which ``socket.create_connection``, urllib3 / botocore,
paho-mqtt and asyncio's ``loop.getaddrinfo`` all call at call time) and
``socket.gethostbyname``. Clients that resolve natively are out of its reach: awscrt
(awsiotsdk) resolves in C, so point it at ``127.0.0.1`` and the bound port instead, give
it :class:`ConnectProxy` as its HTTP proxy (it then asks the proxy for the real name and
port, and TLS still runs end to end with the real name as SNI), or run it in the sandbox
(DESIGN.md, "Loopback, port 0").

Overrides nest and may be entered from several threads; the patch is installed while at
least one is active and the newest route for a name wins. The patched functions only read
an immutable snapshot of the active routes, so paho's network thread and the asyncio
executor can resolve while another thread enters or leaves an override.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, runtime_checkable

from harness.errors import ConfigError, MalformedRequest
from harness.events import Recorder

__all__ = ["ConnectProxy", "Routable", "Route", "override", "parse_connect", "route_for"]

#: The ports clients hard-code: MQTT/WSS/HTTPS on 443, MQTT over TLS on 8883, plain MQTT
#: (the Dyson local broker) on 1883 (aws-iot.md §3; dyson.md).
WELL_KNOWN_PORTS = (443, 8883, 1883)
_SERVICE_PORTS = {"https": 443, "secure-mqtt": 8883, "mqtt": 1883}


@dataclass(frozen=True)
class Route:
    """Where one name really goes: ``address`` and well-known port → bound port.

    A port that ``ports`` does not name is kept as the client asked, so an unmapped port
    reaches the world's address and is refused there, as a closed port would be.
    """

    address: str = "127.0.0.1"
    ports: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for known, bound in self.ports.items():
            if not (_valid_port(known) and _valid_port(bound)):
                raise ConfigError(f"route ports must be 0-65535, got {known!r} → {bound!r}")
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))

    def port(self, requested: int) -> int:
        return self.ports.get(requested, requested)


@runtime_checkable
class Routable(Protocol):
    """Anything that knows its own names, such as :class:`harness.world.World`."""

    def routes(self) -> Mapping[str, Route]: ...


def _valid_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _name(host: object) -> str | None:
    """The lookup key of a host argument: lower case, no trailing dot; None if not a name."""
    if isinstance(host, bytes | bytearray):
        try:
            host = bytes(host).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str):
        return None
    return host.rstrip(".").lower() or None


def _requested_port(port: object) -> int | None:
    """The numeric port a ``getaddrinfo`` caller asked for, or None if it named none."""
    if isinstance(port, bytes | bytearray):
        port = bytes(port).decode("ascii", "replace")
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        return _SERVICE_PORTS.get(port.lower())
    return None


# The one patch shared by every active override.

_lock = threading.Lock()
_active: list[tuple[int, Mapping[str, Route]]] = []
_snapshot: tuple[Mapping[str, Route], ...] = ()  # newest first; read without the lock
_original_getaddrinfo = socket.getaddrinfo
_original_gethostbyname = socket.gethostbyname


def route_for(host: object) -> Route | None:
    """The route an active override gives ``host``, or None (resolve it normally)."""
    key = _name(host)
    if key is None:
        return None
    for routes in _snapshot:
        route = routes.get(key)
        if route is not None:
            return route
    return None


def _getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[tuple[Any, ...]]:
    route = route_for(host)
    if route is None:
        return _original_getaddrinfo(host, port, family, type, proto, flags)
    requested = _requested_port(port)
    mapped: Any = port if requested is None else route.port(requested)
    return _original_getaddrinfo(route.address, mapped, family, type, proto, flags)


def _gethostbyname(host: str) -> str:
    route = route_for(host)
    return _original_gethostbyname(host) if route is None else route.address


def _refresh() -> None:
    """Rebuild the snapshot and install or remove the patch; caller holds ``_lock``."""
    global _snapshot
    _snapshot = tuple(routes for _, routes in reversed(_active))
    if _active:
        socket.getaddrinfo = _getaddrinfo
        socket.gethostbyname = _gethostbyname
    else:
        # Only undo our own patch: a patch someone put on top stays theirs (ours, left
        # below it, resolves everything normally once no override is active).
        if socket.getaddrinfo is _getaddrinfo:
            socket.getaddrinfo = _original_getaddrinfo
        if socket.gethostbyname is _gethostbyname:
            socket.gethostbyname = _original_gethostbyname


def _build(
    names: Mapping[str, str] | Mapping[str, Route] | Routable,
    ports: Mapping[int, int] | None,
) -> dict[str, Route]:
    if isinstance(names, Routable):
        if ports is not None:
            raise ConfigError("ports come from the world's own routes; pass no ports with it")
        source: Mapping[str, str | Route] = names.routes()
    elif isinstance(names, Mapping):
        source = names
    else:
        raise ConfigError(f"override() takes a mapping of names or a world, not {names!r}")
    table: dict[str, Route] = {}
    for name, target in source.items():
        key = _name(name)
        if key is None:
            raise ConfigError(f"not a host name: {name!r}")
        if isinstance(target, Route):
            if ports is not None:
                target = Route(target.address, {**ports, **target.ports})
            table[key] = target
        elif isinstance(target, str) and target:
            table[key] = Route(target, ports or {})
        else:
            raise ConfigError(f"{name!r} must map to an address or a Route, not {target!r}")
    return table


@contextlib.contextmanager
def override(
    names: Mapping[str, str] | Mapping[str, Route] | Routable,
    ports: Mapping[int, int] | None = None,
) -> Iterator[Mapping[str, Route]]:
    """Make ``names`` resolve to the world while the ``with`` block runs.

    ``names`` is either a world (anything with ``routes()``, e.g.
    :meth:`harness.world.World.resolver` uses this), or a mapping of host name → address
    (then ``ports`` maps well-known ports to bound ones for all of them) or → :class:`Route`
    (per-name ports; ``ports``, if given, fills in what a route leaves out). Names match
    case-insensitively, with or without a trailing dot; nothing else is redirected.
    Yields the route table in force.
    """
    table = MappingProxyType(_build(names, ports))
    token = object()
    with _lock:
        _active.append((id(token), table))
        _refresh()
    try:
        yield table
    finally:
        with _lock:
            _active[:] = [entry for entry in _active if entry[0] != id(token)]
            _refresh()


# A CONNECT proxy for clients that resolve natively


#: A CONNECT request head larger than this is refused (431).
MAX_CONNECT_HEAD = 8192
_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")
_AUTHORITY = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})")


def parse_connect(data: bytes | bytearray) -> tuple[str, int, int] | None:
    """Parse ``CONNECT host:port HTTP/1.1`` and its headers at the start of ``data``.

    Returns ``(host, port, head_size)``, ``None`` while the head is incomplete, or raises
    :class:`MalformedRequest` whose ``reason`` is ``head-too-large``, ``bad-request-line``,
    ``not-connect`` or ``bad-authority`` (RFC 9110 §9.3.6: the target is ``host:port``).
    Headers (e.g. ``Proxy-Authorization``) are skipped unread.
    """
    end = bytes(data[: MAX_CONNECT_HEAD + 4]).find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_CONNECT_HEAD:
            raise MalformedRequest("head-too-large", f"request head over {MAX_CONNECT_HEAD} bytes")
        return None
    line = bytes(data[: data.index(b"\r\n")])
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise MalformedRequest("bad-request-line", f"not an HTTP/1.x request line: {line[:80]!r}")
    method, target = match.group(1), match.group(2).decode("ascii", "replace")
    if method != b"CONNECT":
        raise MalformedRequest(
            "not-connect", f"{method.decode()} is not CONNECT: this proxy only tunnels"
        )
    authority = _AUTHORITY.fullmatch(target)
    if authority is None or not 0 < int(authority.group(3)) <= 65535:
        raise MalformedRequest("bad-authority", f"CONNECT target is not host:port: {target[:80]!r}")
    host = authority.group(1) or authority.group(2)
    return host, int(authority.group(3)), end + 4


_REFUSALS = {
    "head-too-large": b"431 Request Header Fields Too Large",
    "not-connect": b"405 Method Not Allowed",
    "not-routed": b"403 Forbidden",
    "upstream-unreachable": b"502 Bad Gateway",
    "timeout": b"408 Request Timeout",
}


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that tunnels only to the world's own names.

    For clients that resolve names natively but honour an HTTP proxy (awscrt's
    ``HttpProxyOptions``, ``HTTPS_PROXY`` for curl and Node): the client asks for
    ``CONNECT <endpoint>:443`` and the proxy opens the route's bound port, so the client
    keeps the real name for SNI, certificate checks and signing. A name without a route
    gets 403 and is never looked up: the proxy cannot reach the internet.

    Records ``proxy.connect`` events (``target``, ``ok``, ``reason``) when given a recorder.
    """

    def __init__(
        self,
        routes: Routable | Mapping[str, Route],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: Recorder | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._routes = routes
        self.host = host
        self.port = port
        self.recorder = recorder
        self.handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.handshake_timeout)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def _route(self, host: str) -> Route | None:
        routes = self._routes.routes() if isinstance(self._routes, Routable) else self._routes
        key = _name(host)
        for name, route in routes.items():
            if _name(name) == key:
                return route
        return None

    def _record(self, conn: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.record("proxy.connect", conn=conn, **fields)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = f"proxy-{next(self._ids)}"
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._tunnel(conn, reader, writer)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # stopping: asyncio 3.11 would log a re-raise here
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, int, bytes]:
        buffer = bytearray()
        while True:
            parsed = parse_connect(buffer)
            if parsed is not None:
                host, port, size = parsed
                return host, port, bytes(buffer[size:])
            data = await reader.read(4096)
            if not data:
                raise MalformedRequest("bad-request-line", "connection closed before a request")
            buffer += data

    async def _tunnel(
        self, conn: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            host, port, early = await asyncio.wait_for(
                self._read_head(reader), self.handshake_timeout
            )
        except MalformedRequest as exc:
            self._refuse(conn, writer, exc.reason, exc.message, target=None)
            return
        except TimeoutError:
            self._refuse(conn, writer, "timeout", "no CONNECT request in time", target=None)
            return
        target = f"{host}:{port}"
        route = self._route(host)
        if route is None:
            self._refuse(conn, writer, "not-routed", f"{host} is not a world name", target=target)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(route.address, route.port(port))
        except OSError as exc:
            self._refuse(conn, writer, "upstream-unreachable", str(exc), target=target)
            return
        self._writers.add(up_writer)
        self._record(conn, target=target, ok=True, reason="ok", upstream=route.port(port))
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        if early:
            up_writer.write(early)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            self._writers.discard(up_writer)

    def _refuse(
        self,
        conn: str,
        writer: asyncio.StreamWriter,
        reason: str,
        explain: str,
        *,
        target: str | None,
    ) -> None:
        self._record(conn, target=target, ok=False, reason=reason, explain=explain)
        status = _REFUSALS.get(reason, b"400 Bad Request")
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then close the other side too (a TLS tunnel needs no half-close)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
