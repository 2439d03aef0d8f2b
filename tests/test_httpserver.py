"""The HTTP/1.1 shell: the pure parser (tables + hypothesis) and the loopback server."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from hypothesis import example, given
from hypothesis import strategies as st

from harness.errors import MalformedRequest
from harness.events import Recorder
from harness.httpserver import (
    BadRequest,
    Headers,
    HeadersTooLarge,
    HttpLimits,
    HttpProtocolError,
    HttpServer,
    LengthRequired,
    PayloadTooLarge,
    Query,
    Request,
    Response,
    VersionNotSupported,
    parse_head,
    parse_request,
    serialize_response,
)
from tests.timing import TIMEOUT

LIMITS = HttpLimits(max_header_bytes=1024, max_body_bytes=4096)


# The pure parser


def test_parses_a_post_with_body_query_and_headers() -> None:
    data = (
        b"POST /v1/a%20b?x=1&x=2&empty= HTTP/1.1\r\nHost: example.com\r\n"
        b"content-type: application/json\r\nX-Thing:  spaced  \r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}GET / HTTP/1.1\r\n'
    )
    parsed = parse_request(data, limits=LIMITS, peer="1.2.3.4:5", conn="c1")
    assert parsed is not None
    request, used = parsed
    assert data[used:] == b"GET / HTTP/1.1\r\n"
    assert request.method == "POST"
    assert request.target == "/v1/a%20b?x=1&x=2&empty="
    assert request.path == "/v1/a b"
    assert request.query.get_all("x") == ["1", "2"]
    assert request.query.get("empty") == ""
    assert request.query.get("X") is None  # the query is case-sensitive
    assert request.headers.get("Content-Type") == "application/json"
    assert request.headers.get("x-thing") == "spaced"
    assert "HOST" in request.headers
    assert request.headers.items[0] == ("Host", "example.com")
    assert request.body == b'{"a":1}'
    assert request.json() == {"a": 1}
    assert (request.peer, request.conn, request.keep_alive) == ("1.2.3.4:5", "c1", True)


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_version_and_connection(head: bytes, keep_alive: bool) -> None:
    parsed = parse_head(head)
    assert parsed is not None and parsed.keep_alive is keep_alive


def test_leading_blank_lines_absolute_form_and_expect() -> None:
    data = (
        b"\r\n\r\nPUT http://h:80/p%2Fq?a=b HTTP/1.1\r\nHost: h:80\r\n"
        b"Expect: 100-Continue\r\nContent-Length: 2\r\n\r\n"
    )
    head = parse_head(data)
    assert head is not None
    assert (head.path, head.query.get("a"), head.size) == ("/p/q", "b", len(data))
    assert head.expect_continue and head.content_length == 2
    assert parse_request(data) is None  # the body has not arrived
    options = parse_head(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert options is not None and options.path == "*"


def test_repeated_identical_content_length_is_accepted() -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n")
    assert head is not None and head.content_length == 3


BIG_HEADER = b"X-Big: " + b"a" * 2000 + b"\r\n"


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"GET /\r\nHost: h\r\n\r\n", BadRequest, "bad-request-line"),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-request-line"),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-method"),
        (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-target"),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-target"),
        (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-target"),
        (b"GET http://[::1 HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-target"),
        (b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", BadRequest, "bad-version"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", VersionNotSupported, "version-not-supported"),
        (b"GET / HTTP/1.1\r\n\r\n", BadRequest, "host-header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", BadRequest, "host-header"),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  folded\r\n\r\n",
            BadRequest,
            "obsolete-line-folding",
        ),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", BadRequest, "bad-header"),
        (b"GET / HTTP/1.1\r\nHost h\r\n\r\n", BadRequest, "bad-header"),
        (b"GET / HTTP/1.1\r\nHost: h\x00\r\n\r\n", BadRequest, "bad-header-value"),
        (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", BadRequest, "bad-header-value"),
        (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", BadRequest, "bad-header-value"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            LengthRequired,
            "length-required",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n",
            BadRequest,
            "conflicting-framing",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            BadRequest,
            "bad-content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\n",
            BadRequest,
            "bad-content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            BadRequest,
            "bad-content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n",
            PayloadTooLarge,
            "body-too-large",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            HeadersTooLarge,
            "headers-too-large",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\n" + BIG_HEADER + b"\r\n",
            HeadersTooLarge,
            "headers-too-large",
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + BIG_HEADER, HeadersTooLarge, "headers-too-large"),
        (b"\r\n" * 600, HeadersTooLarge, "headers-too-large"),
    ],
)
def test_malformed_requests_raise_the_documented_error(
    data: bytes, error: type[HttpProtocolError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        parse_request(data, limits=LIMITS)
    assert caught.value.reason == reason
    assert isinstance(caught.value, MalformedRequest)
    assert caught.value.status == error.status


def test_absurd_content_length_is_too_large_not_a_crash() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 100 + b"\r\n\r\n"
    with pytest.raises(PayloadTooLarge):
        parse_request(data)


def test_request_json_rejects_bad_bodies() -> None:
    for body in (b"{", b"\xff", b"[" * 100_000):
        request = Request("POST", "/", "/", Query(), Headers(), body)
        with pytest.raises(BadRequest, match="not JSON") as caught:
            request.json()
        assert caught.value.reason == "malformed-json"


def test_headers_repr_redacts_credentials() -> None:
    headers = Headers([("Authorization", "AWS4-HMAC-SHA256 Signature=abc"), ("X", "1")])
    assert "Signature=abc" not in repr(headers)
    assert headers == Headers([("Authorization", "AWS4-HMAC-SHA256 Signature=abc"), ("X", "1")])
    assert headers != Query(headers.items)
    assert len(headers) == 2 and list(headers)[1] == ("X", "1")


_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!", min_size=1
)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
    str.strip
)
_path = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%20", max_size=8), max_size=4
).map(lambda parts: "/" + "/".join(parts))


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A well-formed request (bytes) and its body."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = draw(_path)
    headers = draw(st.lists(st.tuples(_token, _value), max_size=5))
    headers = [
        (n, v)
        for n, v in headers
        if n.lower() not in {"host", "content-length", "transfer-encoding"}
    ]
    body = draw(st.binary(max_size=200))
    lines = [f"{method} {path} HTTP/1.1", "Host: example.com"]
    lines += [f"{n}: {v}" for n, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    prefix = b"\r\n" * draw(st.integers(0, 2))
    return prefix + ("\r\n".join(lines) + "\r\n\r\n").encode() + body, body


@given(valid_requests())
def test_every_proper_prefix_of_a_valid_request_is_incomplete(case: tuple[bytes, bytes]) -> None:
    data, body = case
    for cut in range(len(data)):
        assert parse_request(data[:cut]) is None
    parsed = parse_request(data + b"GET")
    assert parsed is not None
    request, used = parsed
    assert used == len(data) and request.body == body


@given(st.binary(max_size=600))
@example(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n")
@example(b"GET /%ff%fe?%ff=%fe HTTP/1.1\r\nHost: h\r\n\r\n")
def test_any_bytes_parse_or_raise_a_protocol_error(data: bytes) -> None:
    result = parse_outcome(data)
    if isinstance(result, HttpProtocolError):
        assert result.reason and result.status in {400, 411, 413, 431, 505}
    elif result is not None:
        request, used = result
        assert 0 < used <= len(data)
        assert request.method and request.path


@given(valid_requests(), st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_corrupted_requests_parse_or_raise_a_protocol_error(
    case: tuple[bytes, bytes], where: int, junk: bytes
) -> None:
    data, _ = case
    at = where % len(data)
    result = parse_outcome(data[:at] + junk + data[at + 1 :])
    assert result is None or isinstance(result, HttpProtocolError | tuple)


def parse_outcome(data: bytes) -> tuple[Request, int] | HttpProtocolError | None:
    """What the parser made of ``data``; any exception but HttpProtocolError fails the test."""
    try:
        return parse_request(data, limits=LIMITS)
    except HttpProtocolError as exc:
        return exc


def test_serialize_response_frames_and_sanitizes() -> None:
    response = Response(
        200,
        (
            ("X-Echo", "a\r\nInjected: yes"),
            ("Content-Length", "999"),
            ("Bad Name", "x"),
        ),
        b"hello",
    )
    data = serialize_response(response, keep_alive=False, date="Mon, 01 Jan 2024 00:00:00 GMT")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"X-Echo: a  Injected: yes" in lines
    assert b"Content-Length: 5" in lines and b"Content-Length: 999" not in lines
    assert b"Connection: close" in lines and not any(b"Bad Name" in line for line in lines)
    assert body == b"hello"
    assert serialize_response(response, keep_alive=True, head_only=True).endswith(b"\r\n\r\n")
    assert serialize_response(Response(204, (), b"x"), keep_alive=True) == (
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    assert serialize_response(Response(599), keep_alive=True).startswith(b"HTTP/1.1 599 Unknown")


def test_response_helpers() -> None:
    response = Response.json({"a": [1, 2]}, status=201, headers=[("X-Id", "7")])
    assert (response.status, response.body) == (201, b'{"a":[1,2]}')
    assert response.header("content-type") == "application/json"
    assert response.header("x-id") == "7"
    assert Response.text("hi").header("Content-Type") == "text/plain; charset=utf-8"


# The loopback server


async def echo(request: Request) -> Response:
    return Response.json(
        {
            "method": request.method,
            "path": request.path,
            "query": [list(pair) for pair in request.query],
            "body": request.body.decode("utf-8", "replace"),
            "conn": request.conn,
        }
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, Headers, bytes]:
    """One response from ``reader``: status, headers and a Content-Length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = Headers(tuple(line.split(": ", 1)) for line in lines[1:])  # type: ignore[misc]
    length = int(headers.get("content-length") or 0)
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return status, headers, body


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    # Lingering longer than any wait in the tests: a close they see is not the linger timeout.
    async with HttpServer(echo, limits=LIMITS, linger_timeout=TIMEOUT * 4) as running:
        yield running


async def connect(
    server: HttpServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def test_keep_alive_pipelining_and_events(server: HttpServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    reader, writer = await connect(server)
    writer.write(
        b"POST /a?tok=SECRET HTTP/1.1\r\nHost: h\r\nAuthorization: AWS4 sig\r\n"
        b"Content-Length: 4\r\n\r\nbodyGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    status, headers, body = await read_response(reader)
    assert status == 200 and headers.get("date") and headers.get("connection") is None
    first = json.loads(body)
    assert first["body"] == "body" and first["query"] == [["tok", "SECRET"]]
    status, _, body = await read_response(reader)
    assert json.loads(body)["path"] == "/b"
    writer.write(b"HEAD /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"Connection: close\r\n\r\n")
    writer.close()
    await writer.wait_closed()

    event = await server.recorder.wait_for("http.request", timeout=TIMEOUT, path="/c")
    requests = server.recorder.find("http.request")
    assert [(e.get("method"), e.get("path"), e.get("status")) for e in requests] == [
        ("POST", "/a", 200),
        ("GET", "/b", 200),
        ("HEAD", "/c", 200),
    ]
    assert {e.conn for e in requests} == {event.conn} and event.get("server") == "http"
    timeline = json.dumps([e.to_json() for e in server.recorder])
    assert "SECRET" not in timeline and "AWS4 sig" not in timeline and "body" not in timeline


async def test_http_10_closes_after_the_response(server: HttpServer) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection") == "close"
    await assert_closed(reader)
    writer.close()


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"NONSENSE\r\n\r\n", 400, "bad-request-line"),
        (b"GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505, "version-not-supported"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            411,
            "length-required",
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + BIG_HEADER + b"\r\n", 431, "headers-too-large"),
    ],
)
async def test_bad_requests_are_answered_recorded_and_the_server_keeps_serving(
    server: HttpServer, data: bytes, status: int, reason: str
) -> None:
    reader, writer = await connect(server)
    writer.write(data)
    got, headers, body = await read_response(reader)
    assert got == status and headers.get("connection") == "close"
    assert json.loads(body)["reason"] == reason
    writer.close()
    event = await server.recorder.wait_for("http.error", timeout=TIMEOUT)
    assert (event.ok, event.reason, event.get("status")) == (False, reason, status)
    assert event.get("explain")

    reader, writer = await connect(server)
    writer.write(b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_oversized_body_gets_413_while_the_client_is_still_sending(
    server: HttpServer,
) -> None:
    reader, writer = await connect(server)
    size = 4 * 1024 * 1024
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b"x" * size)  # the server drains it rather than resetting the connection
    status, _, body = await read_response(reader)
    assert status == 413 and json.loads(body)["reason"] == "body-too-large"
    await writer.drain()
    await assert_closed(reader)  # once the declared body is dropped, not after lingering
    writer.close()
    await server.recorder.wait_for("http.error", timeout=TIMEOUT, reason="body-too-large")


async def test_expect_100_continue(server: HttpServer) -> None:
    reader, writer = await connect(server)
    writer.write(b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "ok"
    writer.close()


async def test_eof_in_the_middle_of_a_body_closes_quietly(server: HttpServer) -> None:
    reader, writer = await connect(server)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    writer.write_eof()
    await assert_closed(reader)
    writer.close()
    assert not server.errors


async def test_inject_answers_the_next_requests_then_the_handler_again(server: HttpServer) -> None:
    server.inject(503, "try later", headers=[("Retry-After", "1")], count=2)
    server.inject(404)
    reader, writer = await connect(server)
    seen = []
    for _ in range(4):
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = await read_response(reader)
        seen.append((status, headers.get("retry-after"), body[:9]))
    writer.close()
    assert seen[:3] == [(503, "1", b"try later"), (503, "1", b"try later"), (404, None, b"")]
    assert seen[3][0] == 200
    fired = server.recorder.find("fault.fired", fault="http-inject")
    assert [(e.get("status"), e.get("remaining")) for e in fired] == [(503, 1), (503, 0), (404, 0)]
    with pytest.raises(ValueError, match="count"):
        server.inject(500, count=0)


async def test_before_handler_can_be_overridden() -> None:
    class Maintenance(HttpServer):
        async def before_handler(self, request: Request) -> Response | None:
            if request.path.startswith("/down"):
                return Response.text("maintenance", status=503)
            return await super().before_handler(request)

    async with Maintenance(echo) as server:
        reader, writer = await connect(server)
        writer.write(b"GET /down HTTP/1.1\r\nHost: h\r\n\r\nGET /up HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader))[0] == 503
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_a_handler_crash_is_a_500_and_fails_at_teardown() -> None:
    async def broken(request: Request) -> Response:
        raise KeyError("bug in the handler")

    recorder = Recorder()
    server = await HttpServer(broken, recorder=recorder).__aenter__()
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 500 and b"bug" not in body
    writer.close()
    with pytest.raises(KeyError, match="bug in the handler"):
        await server.__aexit__(None, None, None)
    event = recorder.first("http.handler-error")
    assert event is not None and "KeyError" in event.get("explain")


async def test_idle_connections_are_closed() -> None:
    async with HttpServer(echo, idle_timeout=TIMEOUT / 50) as server:
        reader, writer = await connect(server)
        await assert_closed(reader)
        writer.close()


async def test_close_aborts_open_keep_alive_connections() -> None:
    server = HttpServer(echo)
    await server.start()
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await asyncio.wait_for(server.close(), TIMEOUT)
    await assert_closed(reader)
    writer.close()
    await server.close()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


# TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_tls_handshakes_are_events(ca: trustme.CA) -> None:
    async with HttpServer(echo, ssl=server_context(ca), name="api") as server:
        assert server.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=trusting, server_hostname="localhost"
        )
        writer.write(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()
        ok = await server.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
        assert ok.get("server") == "api" and str(ok.get("tls_version")).startswith("TLS")

        untrusting = ssl.create_default_context()  # does not know the harness CA
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=untrusting, server_hostname="localhost"
            )
        failed = await server.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
        assert failed.reason == "tls-handshake" and failed.get("explain")

        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=trusting, server_hostname="localhost"
        )
        writer.write(b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()
