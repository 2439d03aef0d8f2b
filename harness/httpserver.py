"""A small HTTP/1.1 server on loopback: the shell of the fake Cognito and the fake Dyson cloud.

Two layers, as in h11 (STYLE.md §1):

* a pure request parser, :func:`parse_head` / :func:`parse_request`, that takes the bytes
  received so far and returns a :class:`Request` (with how many bytes it used), ``None``
  when more bytes are needed, or raises an :class:`HttpProtocolError` whose ``status`` is
  the answer a server owes the client;
* :class:`HttpServer`, an asyncio shell that moves bytes: TLS (optional), keep-alive,
  ``Expect: 100-continue``, one :class:`Response` per request, events on the timeline.

What the parser accepts (RFC 9112, strictly, because a fake should not hide a client bug):

* ``CRLF`` line endings only; a bare ``CR`` or a control character in a header is a 400;
* ``Content-Length`` bodies; any ``Transfer-Encoding`` (chunked uploads) is refused with
  411 Length Required, and ``Transfer-Encoding`` together with ``Content-Length`` with 400
  (RFC 9112 §6.1: the combination is how requests are smuggled);
* an HTTP/1.1 request needs exactly one ``Host`` (RFC 9112 §3.2); obsolete line folding is
  a 400 (RFC 9112 §5.2); versions other than 1.0 / 1.1 get 505;
* a head larger than ``max_header_bytes`` gets 431, a body larger than ``max_body_bytes``
  gets 413, decided from ``Content-Length`` before the body is read.

Bad input never reaches the client as a traceback and never stops the server: it is
answered (through the overridable ``error_response``, so a fake AWS service can answer in
its own JSON shape), recorded as an ``http.error`` event, and the connection is closed.

Events (DESIGN.md "Events JSONL"), all with ``server`` (the server's name) and ``conn``:

* ``http.request``: ``method``, ``path`` (no query string: it may carry a presigned URL's
  token) and ``status``; never the body, never a header;
* ``http.error``: ``ok=False``, ``reason`` (kebab-case), ``explain``, ``status``;
* ``tls.handshake``: ``ok``, and ``tls_version`` / ``alpn``, or ``reason`` and ``explain``;
* ``http.handler-error``: the handler raised; the client got a 500 and the exception is
  raised again when the server closes (STYLE.md §5: a crash fails the test at teardown);
* ``fault.fired``: a response injected with :meth:`HttpServer.inject` was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import re
import ssl
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Self

from harness.clock import WorldClock
from harness.errors import MalformedRequest
from harness.events import Recorder

__all__ = [
    "BadRequest",
    "Handler",
    "Headers",
    "HeadersTooLarge",
    "HttpLimits",
    "HttpProtocolError",
    "HttpServer",
    "LengthRequired",
    "PayloadTooLarge",
    "Query",
    "Request",
    "RequestHead",
    "Response",
    "VersionNotSupported",
    "parse_head",
    "parse_request",
    "serialize_response",
]


# Errors


class HttpProtocolError(MalformedRequest):
    """An HTTP request that cannot be served; ``status`` is what the server answers."""

    status: ClassVar[int] = 400


class BadRequest(HttpProtocolError):
    """Malformed request line, header or framing (400)."""

    status = 400


class LengthRequired(HttpProtocolError):
    """A ``Transfer-Encoding`` body (chunked upload): only ``Content-Length`` is served (411)."""

    status = 411


class PayloadTooLarge(HttpProtocolError):
    """``Content-Length`` above ``max_body_bytes`` (413).

    ``body_end`` is where the declared body would end in the parsed bytes (``None`` when
    the length is absurd), so a server can drop exactly that much before closing.
    """

    status = 413

    def __init__(self, reason: str, message: str, *, body_end: int | None = None) -> None:
        super().__init__(reason, message)
        self.body_end = body_end


class HeadersTooLarge(HttpProtocolError):
    """The request line and headers exceed ``max_header_bytes`` (431)."""

    status = 431


class VersionNotSupported(HttpProtocolError):
    """A well-formed ``HTTP/x.y`` other than 1.0 and 1.1 (505)."""

    status = 505


# Wire values


class _Pairs:
    """An ordered multimap of ``(name, value)`` pairs, immutable."""

    _fold: ClassVar[bool] = False

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(items)

    def _key(self, name: str) -> str:
        return name.lower() if self._fold else name

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value named ``name``, or ``default``."""
        key = self._key(name)
        for item_name, value in self._items:
            if self._key(item_name) == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value named ``name``, in order."""
        key = self._key(name)
        return [value for item_name, value in self._items if self._key(item_name) == key]

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Pairs) and type(other) is type(self) and self._items == other._items
        )

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._items)!r})"


class Headers(_Pairs):
    """Request headers in arrival order; ``get`` is case-insensitive (RFC 9110 §5.1)."""

    _fold = True

    def __repr__(self) -> str:
        # Authorization and security tokens must not reach a log through a repr.
        shown = [(n, "<redacted>" if _is_secret_header(n) else v) for n, v in self._items]
        return f"Headers({shown!r})"


class Query(_Pairs):
    """The decoded query string (``?a=1&a=2``), case-sensitive, blank values kept."""


def _is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in {"authorization", "cookie", "proxy-authorization"} or "token" in lowered


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """How much a client may send; above it the answer is 431 or 413."""

    #: Request line + headers + the blank line.
    max_header_bytes: int = 16 * 1024
    #: ``Content-Length`` above this is refused before the body is read.
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header block; the body is still to come."""

    method: str
    target: str
    path: str
    query: Query
    version: str
    headers: Headers
    content_length: int
    #: Bytes of the head in the buffer, including leading blank lines and the final CRLFCRLF.
    size: int

    @property
    def keep_alive(self) -> bool:
        """Persistent unless ``Connection: close`` (1.1) or no ``keep-alive`` (1.0)."""
        tokens = {
            token.strip().lower()
            for value in self.headers.get_all("connection")
            for token in value.split(",")
        }
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def expect_continue(self) -> bool:
        """The client waits for ``100 Continue`` before sending the body (RFC 9110 §10.1.1)."""
        expect = self.headers.get("expect")
        return (
            self.version == "HTTP/1.1"
            and expect is not None
            and expect.strip().lower() == "100-continue"
        )


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it."""

    method: str
    #: The request target exactly as sent (``/path?query``).
    target: str
    #: The percent-decoded path, without the query string.
    path: str
    query: Query
    headers: Headers
    body: bytes = field(repr=False)
    #: ``"host:port"`` of the client.
    peer: str = ""
    #: The connection id used in events.
    conn: str | None = None
    version: str = "HTTP/1.1"
    keep_alive: bool = True

    def json(self) -> Any:
        """The body decoded as JSON; :class:`BadRequest` (``malformed-json``) if it is not."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRequest("malformed-json", f"request body is not JSON: {exc}") from None


@dataclass(frozen=True)
class Response:
    """One HTTP response. ``Content-Length`` and ``Connection`` are added when sent."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @classmethod
    def json(
        cls,
        data: Any,
        *,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> Response:
        """A compact JSON body (AWS and the Dyson cloud both send compact JSON)."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, (("Content-Type", content_type), *headers), body)

    @classmethod
    def text(
        cls,
        text: str,
        *,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "text/plain; charset=utf-8",
    ) -> Response:
        return cls(status, (("Content-Type", content_type), *headers), text.encode())

    def header(self, name: str) -> str | None:
        """The first header named ``name`` (case-insensitive)."""
        return Headers(self.headers).get(name)


Handler = Callable[[Request], Awaitable[Response]]


# The pure parser

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
#: Field values: HTAB, visible ASCII and obs-text; no NUL, CR, LF or other controls.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(r"[0-9]+")
#: Longer Content-Length values than this are certainly above any limit.
_MAX_LENGTH_DIGITS = 18


def parse_head(data: bytes | bytearray, *, limits: HttpLimits = HttpLimits()) -> RequestHead | None:
    """Parse the request line and headers at the start of ``data``.

    Returns ``None`` while the head is incomplete (every proper prefix of a valid request
    is incomplete), or raises an :class:`HttpProtocolError`. Leading blank lines are
    skipped (RFC 9112 §2.2: a server should ignore a CRLF before the request line).
    """
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if start > limits.max_header_bytes:
        raise HeadersTooLarge("headers-too-large", "too many blank lines before a request")
    end = data.find(b"\r\n\r\n", start, start + limits.max_header_bytes + 4)
    if end < 0:
        if len(data) - start > limits.max_header_bytes:
            raise HeadersTooLarge(
                "headers-too-large",
                f"request head exceeds {limits.max_header_bytes} bytes",
            )
        return None
    if end + 4 - start > limits.max_header_bytes:
        raise HeadersTooLarge(
            "headers-too-large", f"request head exceeds {limits.max_header_bytes} bytes"
        )
    lines = bytes(data[start:end]).split(b"\r\n")
    method, target, version = _parse_request_line(lines[0])
    headers = Headers(_parse_header_line(line) for line in lines[1:])
    path, query = _parse_target(method, target)
    content_length = _content_length(headers, limits, head_size=end + 4)
    if version == "HTTP/1.1":
        hosts = headers.get_all("host")
        if len(hosts) != 1:
            raise BadRequest(
                "host-header",
                f"an HTTP/1.1 request needs exactly one Host header, got {len(hosts)}",
            )
    return RequestHead(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=headers,
        content_length=content_length,
        size=end + 4,
    )


def parse_request(
    data: bytes | bytearray,
    *,
    limits: HttpLimits = HttpLimits(),
    peer: str = "",
    conn: str | None = None,
) -> tuple[Request, int] | None:
    """One complete request at the start of ``data`` and the number of bytes it used.

    ``None`` when more bytes are needed; :class:`HttpProtocolError` when the bytes cannot
    be a request the server will serve.
    """
    head = parse_head(data, limits=limits)
    if head is None:
        return None
    end = head.size + head.content_length
    if len(data) < end:
        return None
    return _request(head, bytes(data[head.size : end]), peer=peer, conn=conn), end


def _request(head: RequestHead, body: bytes, *, peer: str, conn: str | None) -> Request:
    return Request(
        method=head.method,
        target=head.target,
        path=head.path,
        query=head.query,
        headers=head.headers,
        body=body,
        peer=peer,
        conn=conn,
        version=head.version,
        keep_alive=head.keep_alive,
    )


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(
            "bad-request-line", f"request line is not 'METHOD TARGET VERSION': {line[:80]!r}"
        )
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("bad-method", f"method is not a token: {method[:40]!r}")
    if not _TARGET.fullmatch(target):
        raise BadRequest("bad-target", f"request target has invalid bytes: {target[:80]!r}")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest("bad-version", f"not an HTTP version: {version[:20]!r}")
    if match.groups() not in {(b"1", b"1"), (b"1", b"0")}:
        raise VersionNotSupported(
            "version-not-supported", f"{version.decode()} is not served (only HTTP/1.0 and 1.1)"
        )
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_header_line(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete-line-folding", "header continuation lines are not allowed")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise BadRequest("bad-header", f"malformed header line: {line[:80]!r}")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise BadRequest(
            "bad-header-value", f"header {name.decode()!r} has a control character or bare CR"
        )
    return name.decode("ascii"), value.decode("latin-1")


def _parse_target(method: str, target: str) -> tuple[str, Query]:
    if target == "*":
        if method != "OPTIONS":
            raise BadRequest("bad-target", "'*' is only a target for OPTIONS")
        return "*", Query()
    if target.startswith("/"):
        raw_path, _, raw_query = target.partition("?")
    elif target.lower().startswith(("http://", "https://")):
        try:
            split = urllib.parse.urlsplit(target)
        except ValueError as exc:
            raise BadRequest("bad-target", f"request target is not a URL: {exc}") from None
        raw_path, raw_query = split.path or "/", split.query
    else:
        raise BadRequest("bad-target", f"request target is not a path or URL: {target[:80]!r}")
    path = urllib.parse.unquote(raw_path.partition("#")[0], errors="replace")
    query = Query(urllib.parse.parse_qsl(raw_query, keep_blank_values=True, errors="replace"))
    return path, query


def _content_length(headers: Headers, limits: HttpLimits, *, head_size: int) -> int:
    transfer_encoding = headers.get_all("transfer-encoding")
    lengths = [v.strip() for value in headers.get_all("content-length") for v in value.split(",")]
    if transfer_encoding:
        if lengths:
            raise BadRequest(
                "conflicting-framing", "Transfer-Encoding and Content-Length in one request"
            )
        raise LengthRequired(
            "length-required",
            f"Transfer-Encoding {', '.join(transfer_encoding)!r} is not served; "
            "send a Content-Length",
        )
    if not lengths:
        return 0
    if any(not _DIGITS.fullmatch(v) for v in lengths) or len(set(lengths)) != 1:
        raise BadRequest("bad-content-length", f"invalid Content-Length: {', '.join(lengths)!r}")
    if len(lengths[0].lstrip("0")) > _MAX_LENGTH_DIGITS:
        raise PayloadTooLarge("body-too-large", "Content-Length is absurdly large")
    length = int(lengths[0])
    if length > limits.max_body_bytes:
        raise PayloadTooLarge(
            "body-too-large",
            f"Content-Length {length} exceeds the limit of {limits.max_body_bytes} bytes",
            body_end=head_size + length,
        )
    return length


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def serialize_response(
    response: Response,
    *,
    keep_alive: bool,
    head_only: bool = False,
    date: str | None = None,
) -> bytes:
    """The bytes of ``response``: status line, headers, ``Content-Length``, body.

    Header values that would break the framing (CR, LF, controls; a handler may echo
    client input into a header) are replaced by spaces, never sent raw.
    """
    lines = [f"HTTP/1.1 {response.status} {_reason_phrase(response.status)}"]
    if date is not None:
        lines.append(f"Date: {date}")
    for name, value in response.headers:
        if name.lower() in _HOP_BY_HOP or not _TOKEN.fullmatch(name.encode("latin-1", "replace")):
            continue
        lines.append(f"{name}: {_FORBIDDEN_IN_VALUE.sub(' ', value)}")
    no_body = response.status < 200 or response.status in (204, 304)
    if not no_body:
        lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head if no_body or head_only else head + response.body


# The asyncio shell


@dataclass
class _Injection:
    response: Response
    remaining: int


def _default_error_response(status: int, reason: str, message: str) -> Response:
    return Response.json({"message": message, "reason": reason}, status=status)


class HttpServer:
    """An HTTP/1.1 server on ``host:port`` (default ``127.0.0.1:0``), optionally over TLS.

    Use as an async context manager; ``port`` and ``url`` are the bound ones. ``handler``
    answers every well-formed request; ``error_response(status, reason, message)`` renders
    the answer to a malformed one and to a handler crash (status 500), so a fake AWS
    service can keep its own error shape.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        # Network
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: ssl.SSLContext | None = None,
        # Timeline
        name: str = "http",
        recorder: Recorder | None = None,
        clock: WorldClock | None = None,
        # Limits
        limits: HttpLimits = HttpLimits(),
        # Timeouts (seconds; None = wait forever)
        idle_timeout: float | None = 60.0,
        handshake_timeout: float | None = 10.0,
        linger_timeout: float = 2.0,
        # Errors
        error_response: Callable[[int, str, str], Response] = _default_error_response,
    ) -> None:
        self.handler = handler
        self.host = host
        self._requested_port = port
        self.ssl = ssl
        self.name = name
        self.recorder = recorder if recorder is not None else Recorder(clock=clock)
        self.clock = clock if clock is not None else self.recorder.clock
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.linger_timeout = linger_timeout
        self.error_response = error_response
        #: Exceptions raised by the handler; the first is raised again on close.
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ids = itertools.count(1)
        self._injections: deque[_Injection] = deque()

    # Lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._requested_port
        )

    async def close(self) -> None:
        """Stop listening, abort open connections and wait for their tasks."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a task waiting to read sees EOF and ends by itself
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.linger_timeout)
            for task in pending:  # a handler still busy
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc is None and self.errors:
            raise self.errors[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` (``http://`` without TLS), no trailing slash."""
        scheme = "https" if self.ssl is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # Faults

    def inject(
        self,
        status: int,
        body: bytes | str = b"",
        *,
        headers: Iterable[tuple[str, str]] = (),
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` well-formed requests with this response, not the handler's.

        Injections queue up: a second ``inject`` applies after the first is used up.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        data = body.encode() if isinstance(body, str) else body
        self._injections.append(_Injection(Response(status, tuple(headers), data), count))

    async def before_handler(self, request: Request) -> Response | None:
        """Answer ``request`` without the handler, or ``None`` to let the handler answer.

        The default serves :meth:`inject`; a subclass may override it for other faults.
        """
        if not self._injections:
            return None
        injection = self._injections[0]
        injection.remaining -= 1
        if injection.remaining <= 0:
            self._injections.popleft()
        self.recorder.record(
            "fault.fired",
            conn=request.conn,
            server=self.name,
            fault="http-inject",
            status=injection.response.status,
            path=request.path,
            remaining=injection.remaining,
        )
        return injection.response

    # Connections

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        conn = f"{self.name}-{next(self._ids)}"
        try:
            if self.ssl is None or await self._handshake(writer, conn):
                await self._serve(reader, writer, conn)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nothing left to answer
        except asyncio.CancelledError:
            # Only close() cancels a connection task. Ending it normally keeps asyncio's
            # stream callback (3.11) from logging the cancellation as an error.
            pass
        except Exception as exc:  # a bug in this shell: fail the test at teardown
            self.errors.append(exc)
            self.recorder.record(
                "http.server-error",
                conn=conn,
                server=self.name,
                ok=False,
                reason="server-error",
                explain=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._writers.discard(writer)
            self._connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.linger_timeout)
            except (OSError, TimeoutError):
                writer.transport.abort()

    async def _handshake(self, writer: asyncio.StreamWriter, conn: str) -> bool:
        assert self.ssl is not None
        try:
            await writer.start_tls(self.ssl, ssl_handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = "tls-handshake-timeout" if isinstance(exc, TimeoutError) else "tls-handshake"
            self.recorder.record(
                "tls.handshake",
                conn=conn,
                server=self.name,
                ok=False,
                reason=reason,
                explain=f"TLS handshake failed: {exc}",
            )
            return False
        ssl_object = writer.get_extra_info("ssl_object")
        self.recorder.record(
            "tls.handshake",
            conn=conn,
            server=self.name,
            ok=True,
            tls_version=ssl_object.version() if ssl_object is not None else None,
            alpn=ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
        )
        return True

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        # Not asyncio.wait_for: on Python 3.11 it returns the data and drops a cancellation
        # (close()) that arrives in the same turn of the event loop.
        async with asyncio.timeout(self.idle_timeout):
            return await reader.read(65536)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: str
    ) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else ""
        buffer = bytearray()
        while True:
            try:
                request = await self._next_request(reader, writer, buffer, peer=peer, conn=conn)
            except HttpProtocolError as exc:
                await self._reject(reader, writer, exc, conn=conn, buffered=len(buffer))
                return
            if request is None:
                return
            response = await self._respond(request)
            keep_alive = request.keep_alive and not _asks_close(response)
            writer.write(
                serialize_response(
                    response,
                    keep_alive=keep_alive,
                    head_only=request.method == "HEAD",
                    date=email.utils.formatdate(self.clock.now(), usegmt=True),
                )
            )
            await writer.drain()
            self.recorder.record(
                "http.request",
                conn=conn,
                server=self.name,
                method=request.method,
                path=request.path,
                status=response.status,
            )
            if not keep_alive:
                return

    async def _next_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffer: bytearray,
        *,
        peer: str,
        conn: str,
    ) -> Request | None:
        """The next request from ``buffer`` + the socket; ``None`` on a clean EOF."""
        head = parse_head(buffer, limits=self.limits)
        while head is None:
            data = await self._read(reader)
            if not data:
                return None
            buffer += data
            head = parse_head(buffer, limits=self.limits)
        end = head.size + head.content_length
        if len(buffer) < end and head.expect_continue:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        while len(buffer) < end:
            data = await self._read(reader)
            if not data:
                return None
            buffer += data
        body = bytes(buffer[head.size : end])
        del buffer[:end]
        return _request(head, body, peer=peer, conn=conn)

    async def _respond(self, request: Request) -> Response:
        try:
            injected = await self.before_handler(request)
            if injected is not None:
                return injected
            return await self.handler(request)
        except Exception as exc:
            self.errors.append(exc)
            self.recorder.record(
                "http.handler-error",
                conn=request.conn,
                server=self.name,
                ok=False,
                reason="handler-error",
                explain=f"{type(exc).__name__}: {exc}",
            )
            return self.error_response(500, "handler-error", "internal error")

    async def _reject(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exc: HttpProtocolError,
        *,
        conn: str,
        buffered: int,
    ) -> None:
        """Answer a request that cannot be served, then close after draining the input.

        The client may still be sending (413 is decided from ``Content-Length``, before the
        body); closing with unread input would reset the connection before the client
        reads the answer. So the input is dropped first: the rest of the declared body
        when its length is known, else everything until EOF, for at most
        ``linger_timeout`` seconds.
        """
        response = self.error_response(exc.status, exc.reason, exc.message)
        self.recorder.record(
            "http.error",
            conn=conn,
            server=self.name,
            ok=False,
            reason=exc.reason,
            explain=exc.message,
            status=response.status,
        )
        writer.write(
            serialize_response(
                response,
                keep_alive=False,
                date=email.utils.formatdate(self.clock.now(), usegmt=True),
            )
        )
        await writer.drain()
        remaining: int | None = None
        if isinstance(exc, PayloadTooLarge) and exc.body_end is not None:
            remaining = exc.body_end - buffered
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_timeout):
                while remaining is None or remaining > 0:
                    data = await reader.read(65536 if remaining is None else min(remaining, 65536))
                    if not data:
                        break
                    if remaining is not None:
                        remaining -= len(data)


def _asks_close(response: Response) -> bool:
    value = response.header("connection")
    return value is not None and "close" in value.lower()


class HttpService:
    """A fake HTTP service of the world: a pure request -> response core behind an
    :class:`HttpServer`. Subclasses build ``self.http``; this holds the lifecycle and the
    address every such service offers (Cognito, the Dyson cloud)."""

    http: HttpServer

    async def __aenter__(self) -> Self:
        await self.http.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.http.__aexit__(exc_type, exc, tb)

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        """``https://<host>:<port>`` (``http://`` without TLS): where a client points."""
        return self.http.url
