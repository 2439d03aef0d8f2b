"""The resolver override: real names and well-known ports for in-process clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import given
from hypothesis import strategies as st

from harness import resolver
from harness.errors import ConfigError, MalformedRequest
from harness.resolver import ConnectProxy, Route, override, parse_connect, route_for
from harness.world import World, cognito_host
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

NAME = "a1example-ats.iot.eu-west-1.amazonaws.com"


def sockaddrs(host: Any, port: Any, **kwargs: Any) -> set[tuple[str, int]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, **kwargs)
    return {(str(info[4][0]), int(info[4][1])) for info in infos}


# The patch itself


def test_given_names_resolve_to_loopback_with_mapped_ports() -> None:
    with override({NAME: "127.0.0.1"}, {443: 40443, 8883: 48883}) as table:
        assert set(table) == {NAME}
        assert sockaddrs(NAME, 443) == {("127.0.0.1", 40443)}
        assert sockaddrs(NAME, "8883") == {("127.0.0.1", 48883)}
        assert sockaddrs(NAME, "https") == {("127.0.0.1", 40443)}
        assert sockaddrs(NAME.encode(), b"443") == {("127.0.0.1", 40443)}
        # Case and a trailing dot do not matter, as in DNS.
        assert sockaddrs(NAME.upper() + ".", 443) == {("127.0.0.1", 40443)}
        # An unmapped port stays as asked, at the world's address.
        assert sockaddrs(NAME, 8443) == {("127.0.0.1", 8443)}
        assert sockaddrs(NAME, None) == {("127.0.0.1", 0)}
        assert socket.gethostbyname(NAME) == "127.0.0.1"
        # Keyword arguments, as asyncio and urllib3 pass them.
        infos = socket.getaddrinfo(NAME, 443, family=socket.AF_INET, proto=socket.IPPROTO_TCP)
        assert {info[4] for info in infos} == {("127.0.0.1", 40443)}


def test_other_names_are_never_redirected() -> None:
    with override({NAME: "127.0.0.1"}, {443: 40443}):
        assert route_for("eu-west-1.amazonaws.com") is None
        assert route_for("x" + NAME) is None
        assert route_for(None) is None
        assert route_for(b"\xff") is None
        assert sockaddrs("127.0.0.1", 443) == {("127.0.0.1", 443)}
        assert ("127.0.0.1", 443) in sockaddrs("localhost", 443, family=socket.AF_INET)


def test_the_patch_is_removed_on_exit_even_after_an_error() -> None:
    original = socket.getaddrinfo, socket.gethostbyname

    def fail_inside() -> None:
        with override({NAME: "127.0.0.1"}):
            assert socket.getaddrinfo is not original[0]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_inside()
    assert (socket.getaddrinfo, socket.gethostbyname) == original
    assert route_for(NAME) is None


def test_overrides_nest_and_may_end_in_any_order() -> None:
    outer = override({NAME: "127.0.0.1", "b.example": "127.0.0.2"}, {443: 1000})
    inner = override({NAME: Route("127.0.0.3", {443: 2000})})
    outer.__enter__()
    inner.__enter__()
    assert route_for(NAME) == Route("127.0.0.3", {443: 2000})  # the newest wins
    assert route_for("b.example") == Route("127.0.0.2", {443: 1000})
    outer.__exit__(None, None, None)
    assert route_for("b.example") is None
    assert route_for(NAME) == Route("127.0.0.3", {443: 2000})
    inner.__exit__(None, None, None)
    assert route_for(NAME) is None
    assert socket.getaddrinfo is resolver._original_getaddrinfo


def test_a_patch_put_on_top_is_left_alone() -> None:
    original = socket.getaddrinfo
    try:
        with override({NAME: "127.0.0.1"}):
            ours = socket.getaddrinfo

            def on_top(*args: Any, **kwargs: Any) -> Any:
                return ours(*args, **kwargs)

            socket.getaddrinfo = on_top
        assert socket.getaddrinfo is on_top  # not clobbered by the override's exit
        assert route_for(NAME) is None
        assert sockaddrs("127.0.0.1", 443) == {("127.0.0.1", 443)}
    finally:
        socket.getaddrinfo = original


def test_threads_resolve_while_overrides_come_and_go() -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            while not done.is_set():
                found = sockaddrs(NAME, 443)
                assert found == {("127.0.0.1", 40443)}
        except BaseException as exc:
            errors.append(exc)

    with override({NAME: "127.0.0.1"}, {443: 40443}):
        threads = [threading.Thread(target=resolve) for _ in range(4)]
        for thread in threads:
            thread.start()
        for n in range(200):
            with override({f"other-{n}.example": "127.0.0.1"}):
                pass
        done.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert errors == []


@pytest.mark.parametrize(
    ("names", "ports", "match"),
    [
        ({"": "127.0.0.1"}, None, "not a host name"),
        ({NAME: ""}, None, "must map to an address"),
        ({NAME: 7}, None, "must map to an address"),
        ({NAME: "127.0.0.1"}, {443: 70000}, "0-65535"),
        ({NAME: "127.0.0.1"}, {True: 1}, "0-65535"),
        (["a"], None, "takes a mapping"),
    ],
)
def test_bad_overrides_are_config_errors(names: Any, ports: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match), override(names, ports):
        pass  # pragma: no cover


names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){1,4}", fullmatch=True)


@given(name=names, other=names, port=st.sampled_from([443, 8883, 1883]))
def test_property_only_the_given_name_is_routed(name: str, other: str, port: int) -> None:
    with override({name: "127.0.0.1"}, {port: 4242}):
        assert route_for(name.upper() + ".") == Route("127.0.0.1", {port: 4242})
        assert (route_for(other) is None) == (other != name)
    assert route_for(name) is None


@given(host=st.one_of(st.text(), st.binary(), st.none(), st.integers()))
def test_property_any_host_argument_is_looked_up_without_error(host: Any) -> None:
    with override({NAME: "127.0.0.1"}):
        assert route_for(host) in (None, Route("127.0.0.1"))


# With a world and real clients


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        yield w


async def test_world_routes_name_its_real_hosts(world: World) -> None:
    routes = world.routes()
    assert routes[world.endpoint] == Route(
        "127.0.0.1", {443: world.gateway.wss_port, 8883: world.gateway.mqtts_port}
    )
    assert world.cognito is not None
    assert routes[cognito_host(world.region)] == Route("127.0.0.1", {443: world.cognito.port})
    world.add_route("Device.Example.", ports={1883: 41883})
    assert world.routes()["device.example"] == Route("127.0.0.1", {1883: 41883})
    with pytest.raises(ConfigError):
        resolver.override(world, {443: 1}).__enter__()


async def test_paho_connects_to_the_endpoint_on_443_unchanged(world: World) -> None:
    """paho is given ``wss://<endpoint>:443``: SNI and the certificate check use the name."""
    credential = world.credentials.add_static(policies=(world.default_policy,))
    url = urllib.parse.urlsplit(world.sigv4_url(credential))
    assert url.hostname == world.endpoint and url.port is None
    client = PahoClient("resolved-1", websocket=True, ca_file=str(world.pki.ca_file))
    client.client.ws_set_options(path=f"{url.path}?{url.query}")
    with world.resolver():
        await client.connect(world.endpoint, 443)
        assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("resolved/1", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish("resolved/1", b"via the real name", qos=1)
    assert (await client.next("message")).payload == b"via the real name"
    await client.close()
    handshake = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=True)
    assert handshake.get("sni") == world.endpoint
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="upgrade")
    assert verdict.ok is True
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)


async def test_asyncio_reaches_the_mqtts_port_by_name(world: World) -> None:
    context = world.pki.client_context()
    with world.resolver():
        _reader, writer = await asyncio.open_connection(world.endpoint, 8883, ssl=context)
    ssl_object = writer.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    assert ssl_object.server_hostname == world.endpoint
    writer.close()
    await world.recorder.wait_for("tcp.accept", timeout=TIMEOUT, port="mqtts")


async def test_boto3_reaches_the_real_cognito_name(world: World, isolated_aws: None) -> None:
    assert world.pool is not None
    session = boto3.session.Session(region_name=world.region)
    client = session.client(
        "cognito-identity",
        endpoint_url=f"https://{cognito_host(world.region)}",
        verify=str(world.pki.ca_file),
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    try:
        with world.resolver():
            got = await asyncio.to_thread(client.get_id, IdentityPoolId=world.pool.pool_id)
    finally:
        client.close()
    assert got["IdentityId"].startswith(world.region + ":")
    call = await world.recorder.wait_for("cognito.call", timeout=TIMEOUT, operation="GetId")
    assert call.ok is True
    handshake = world.recorder.first("tls.handshake", server="cognito", ok=True)
    assert handshake is not None


# The CONNECT proxy for natively resolving clients

GOOD_CONNECT = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (GOOD_CONNECT, ("a.example", 443, len(GOOD_CONNECT))),
        (b"CONNECT [::1]:8883 HTTP/1.0\r\n\r\nrest", ("::1", 8883, 31)),
        (b"CONNECT a.example:443 HTTP/1.1\r\n", None),
        (b"", None),
    ],
)
def test_parse_connect(head: bytes, expected: object) -> None:
    assert parse_connect(head) == expected


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "not-connect"),
        (b"CONNECT a.example HTTP/1.1\r\n\r\n", "bad-authority"),
        (b"CONNECT a.example:0 HTTP/1.1\r\n\r\n", "bad-authority"),
        (b"CONNECT a.example:70000 HTTP/1.1\r\n\r\n", "bad-authority"),
        (b"CONNECT a b:1 HTTP/1.1\r\n\r\n", "bad-request-line"),
        (b"\r\n\r\n", "bad-request-line"),
        (b"\x16\x03\x01\x02\x00\r\n\r\n", "bad-request-line"),
        (b"CONNECT " + b"a" * 9000, "head-too-large"),
    ],
)
def test_parse_connect_refuses(head: bytes, reason: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_connect(head)
    assert caught.value.reason == reason


@given(data=st.binary(max_size=300))
def test_property_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    reason = None
    try:
        parse_connect(data)
    except MalformedRequest as exc:
        reason = exc.reason
    assert reason in {None, "head-too-large", "bad-request-line", "not-connect", "bad-authority"}


@given(cut=st.integers(min_value=0, max_value=len(GOOD_CONNECT) - 1))
def test_property_every_proper_prefix_is_incomplete(cut: int) -> None:
    assert parse_connect(GOOD_CONNECT[:cut]) is None


async def connect_via(proxy: ConnectProxy, request: bytes) -> tuple[bytes, Any, Any]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request)
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    return status, reader, writer


async def test_proxy_tunnels_to_world_names_with_tls_end_to_end(world: World) -> None:
    async with ConnectProxy(world, recorder=world.recorder) as proxy:
        head = f"CONNECT {world.endpoint.upper()}:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        status, _reader, writer = await connect_via(proxy, head)
        assert status.startswith(b"HTTP/1.1 200 ")
        await writer.start_tls(world.pki.client_context(), server_hostname=world.endpoint)
        handshake = await world.recorder.wait_for(
            "tls.handshake", timeout=TIMEOUT, ok=True, sni=world.endpoint
        )
        accepted = world.recorder.first("tcp.accept", conn=handshake.conn)
        assert accepted is not None and accepted.get("port") == "wss"
        event = world.recorder.first("proxy.connect", ok=True)
        assert event is not None and event.get("upstream") == world.gateway.wss_port
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", b"403", "not-routed"),
        (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", b"405", "not-connect"),
        (b"\x16\x03\x01 hello\r\n\r\n", b"400", "bad-request-line"),
    ],
)
async def test_proxy_refuses_what_it_must_not_tunnel(
    world: World, request_bytes: bytes, status: bytes, reason: str
) -> None:
    async with ConnectProxy(world, recorder=world.recorder) as proxy:
        answer, reader, writer = await connect_via(proxy, request_bytes)
        assert answer.split()[1] == status
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed after
        writer.close()
    event = world.recorder.first("proxy.connect", ok=False)
    assert event is not None and event.reason == reason


async def test_proxy_unreachable_route_is_502(world: World) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        routes = {"gone.example": Route("127.0.0.1", {443: port})}
        async with ConnectProxy(routes, recorder=world.recorder) as proxy:
            answer, _reader, writer = await connect_via(
                proxy, b"CONNECT gone.example:443 HTTP/1.1\r\n\r\n"
            )
            writer.close()
    assert answer.startswith(b"HTTP/1.1 502 ")
