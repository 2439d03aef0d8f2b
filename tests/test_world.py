"""The World: state folder, descriptor, routes, newcomer defaults, start-up failures."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import stat
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.auth import sigv4
from harness.errors import ConfigError
from harness.gateway import GatewayConfig
from harness.pki import TokenSigningKey, WorldPKI
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig, cognito_host
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    config = WorldConfig(
        gateway=GatewayConfig(region="eu-west-1", endpoint_prefix="a7world"),
        state_dir=tmp_path / "state",
    )
    async with World(config) as w:
        yield w


async def test_descriptor_names_bound_ports_and_real_files(world: World) -> None:
    d = world.descriptor()
    json.dumps(d)  # the contract is JSON
    iot = d["iot"]
    assert iot == {
        "endpoint": "a7world-ats.iot.eu-west-1.amazonaws.com",
        "region": "eu-west-1",
        "connect_host": "127.0.0.1",
        "wss_port": world.gateway.wss_port,
        "mqtts_port": world.gateway.mqtts_port,
        "ca_file": str(world.pki.ca_file),
        "account_id": "123456789012",
    }
    assert 0 not in (iot["wss_port"], iot["mqtts_port"])
    assert world.cognito is not None and world.pool is not None
    assert d["cognito"] == {
        "url": f"https://127.0.0.1:{world.cognito.port}",
        "identity_pool_id": world.pool.pool_id,
        "endpoint": "cognito-identity.eu-west-1.amazonaws.com",
        "region": "eu-west-1",
    }
    assert world.pool.pool_id.startswith("eu-west-1:")
    (authorizer,) = d["authorizers"]
    assert authorizer["name"] == DEFAULT_AUTHORIZER
    assert (authorizer["token_key"], authorizer["signing"]) == ("token", True)
    assert d["events_file"] == str(world.state_dir / "events.jsonl")
    assert d["state_dir"] == str(world.state_dir)
    assert await asyncio.to_thread(Path(iot["ca_file"]).read_bytes) == world.pki.ca_pem


async def test_state_folder_keeps_keys_private(world: World) -> None:
    assert stat.S_IMODE(world.state_dir.stat().st_mode) == 0o700
    key_file = Path(world.descriptor()["authorizers"][0]["private_key_file"])
    assert key_file.is_relative_to(world.state_dir)
    assert stat.S_IMODE((await asyncio.to_thread(key_file.stat)).st_mode) == 0o600
    # The key in the file is the one the authorizer trusts: a token it signs is accepted.
    loaded = TokenSigningKey.load(key_file)
    assert world.authorizer_key is not None
    assert loaded.public_key_pem == world.authorizer_key.public_key_pem


async def test_default_authorizer_accepts_a_token_signed_with_the_described_key(
    world: World,
) -> None:
    d = world.descriptor()
    key = TokenSigningKey.load(d["authorizers"][0]["private_key_file"])
    token = "newcomer-token"
    client = PahoClient(
        "newcomer-1",
        websocket=True,
        ca_file=d["iot"]["ca_file"],
        headers={
            "Host": d["iot"]["endpoint"],
            "x-amz-customauthorizer-name": d["authorizers"][0]["name"],
            "x-amz-customauthorizer-signature": key.sign(token),
            d["authorizers"][0]["token_key"]: token,
        },
    )
    await client.connect(d["iot"]["connect_host"], d["iot"]["wss_port"])
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("newcomer/#", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    await client.close()
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)


async def test_sigv4_url_signs_for_the_endpoint_on_the_world_clock(world: World) -> None:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    url = urllib.parse.urlsplit(world.sigv4_url(credential))
    assert (url.scheme, url.hostname, url.path) == ("wss", world.endpoint, "/mqtt")
    params = dict(urllib.parse.parse_qsl(url.query))
    assert params["X-Amz-Credential"].startswith(credential.access_key_id + "/")
    assert "/eu-west-1/iotdevicegateway/aws4_request" in params["X-Amz-Credential"]
    verdict = sigv4.verify_upgrade(
        method="GET",
        target=f"{url.path}?{url.query}",
        headers=[("Host", world.endpoint)],
        now=world.clock.now(),
        lookup=world.credentials.lookup,
        region=world.region,
    )
    assert verdict.ok, verdict.explain
    # Client styles pass through to presign_url.
    v1 = urllib.parse.urlsplit(world.sigv4_url(credential, service="iotdata", expires=86400))
    assert "/iotdata/" in dict(urllib.parse.parse_qsl(v1.query))["X-Amz-Credential"]


async def test_routes_cover_endpoint_and_cognito_names(world: World) -> None:
    routes = world.routes()
    assert set(routes) == {world.endpoint, cognito_host("eu-west-1")}
    assert routes[world.endpoint].ports == {
        443: world.gateway.wss_port,
        8883: world.gateway.mqtts_port,
    }


async def test_without_cognito_or_defaults(tmp_path: Path) -> None:
    config = WorldConfig(cognito=False, newcomer_defaults=False, state_dir=tmp_path)
    async with World(config) as world:
        d = world.descriptor()
        assert d["cognito"]["url"] == "" and d["cognito"]["identity_pool_id"] == ""
        assert d["authorizers"] == []
        assert set(world.routes()) == {world.endpoint}


async def test_a_temporary_state_folder_goes_away_a_given_one_stays(tmp_path: Path) -> None:
    async with World(WorldConfig(cognito=False)) as world:
        temporary = world.state_dir
        assert (temporary / "events.jsonl").is_file()
    assert not temporary.exists()
    given = tmp_path / "kept"
    async with World(WorldConfig(cognito=False, state_dir=given)):
        pass
    kinds = [json.loads(line)["kind"] for line in (given / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "gateway.started" and kinds[-1] == "gateway.stopped"


async def test_a_given_pki_is_used_and_kept_without_one_each_world_mints_its_own(
    tmp_path: Path,
) -> None:
    """``WorldConfig(pki=...)`` (the pytest plugin's session CA): the world serves and
    describes that CA and leaves its folder alone; without it, each world mints a CA."""
    shared = WorldPKI(tmp_path / "session-pki")
    config = WorldConfig(cognito=False, pki=shared)
    for _ in range(2):
        async with World(config) as world:
            assert world.pki is shared
            assert world.descriptor()["iot"]["ca_file"] == str(shared.ca_file)
            # The gateway's certificate chains to the given CA.
            context = ssl.create_default_context(cafile=str(shared.ca_file))
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", world.gateway.wss_port, ssl=context, server_hostname=world.endpoint
                ),
                TIMEOUT,
            )
            writer.close()
        assert not world.state_dir.exists()
    assert shared.ca_file.read_bytes() == shared.ca_pem
    async with (
        World(WorldConfig(cognito=False)) as first,
        World(WorldConfig(cognito=False)) as second,
    ):
        assert first.pki.ca_pem != second.pki.ca_pem != shared.ca_pem
        assert first.pki.ca_file.is_relative_to(first.state_dir)


async def test_events_file_can_live_elsewhere(tmp_path: Path) -> None:
    events = tmp_path / "logs" / "run.jsonl"
    async with World(WorldConfig(cognito=False, state_dir=tmp_path / "s", events_file=events)) as w:
        assert w.descriptor()["events_file"] == str(events)
    assert events.read_text().count("\n") >= 2


@pytest.mark.parametrize("where", ["state", "events"])
async def test_an_unusable_state_folder_is_a_config_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = (
        WorldConfig(state_dir=blocker / "state")
        if where == "state"
        else WorldConfig(state_dir=tmp_path / "ok", events_file=blocker / "events.jsonl")
    )
    with pytest.raises(ConfigError, match=f"cannot write to {blocker}.*: a file stands where"):
        async with World(config):
            pass  # pragma: no cover


async def test_a_port_in_use_fails_start_and_releases_the_rest(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = WorldConfig(state_dir=tmp_path, cognito_port=port)
        with pytest.raises(OSError, match="address already in use"):
            async with World(config):
                pass  # pragma: no cover
    # The gateway started before Cognito failed was stopped: a new world can use the port.
    async with World(WorldConfig(state_dir=tmp_path / "2", cognito_port=port)) as world:
        assert world.cognito is not None and world.cognito.port == port


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="credential_lifetime"):
        WorldConfig(credential_lifetime=0)
    with pytest.raises(ConfigError, match="cognito_port"):
        WorldConfig(cognito_port=70000)
    with pytest.raises(ConfigError, match="cognito_host"):
        WorldConfig(cognito_host="")
    with pytest.raises(ConfigError, match="keep_events"):
        WorldConfig(keep_events=0)


async def test_a_long_running_world_keeps_a_bounded_window_of_events(tmp_path: Path) -> None:
    config = WorldConfig(cognito=False, state_dir=tmp_path / "s", keep_events=10)
    async with World(config) as w:
        for n in range(100):
            w.recorder.record("test.tick", n=n)
        assert len(w.recorder.events) < 20 and len(w.recorder) >= 100
    assert (tmp_path / "s" / "events.jsonl").read_text().count("test.tick") == 100


# Cognito on an address of its own (what the sandbox uses: 127.0.0.2:443)


def bindable(address: str) -> str | None:
    """Why ``address`` cannot be bound here, or None when it can."""
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return f"cannot bind {address} on this machine outside a namespace: {exc}"
    return None


def tls_handshakes(address: str, port: int, ca_file: Path, *names: str) -> None:
    """Complete a TLS handshake with ``address:port`` for each of ``names`` (the certificate
    must cover it, or ``ssl.SSLCertVerificationError``)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    for name in names:
        with (
            socket.create_connection((address, port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=name),
        ):
            pass


async def test_cognito_listens_on_its_own_address(tmp_path: Path) -> None:
    if why := bindable("127.0.0.2"):
        pytest.skip(why)
    config = WorldConfig(
        gateway=GatewayConfig(region="eu-west-1"), cognito_host="127.0.0.2", state_dir=tmp_path
    )
    async with World(config) as world:
        assert world.cognito is not None
        port = world.cognito.port
        assert world.descriptor()["cognito"]["url"] == f"https://127.0.0.2:{port}"
        route = world.routes()[cognito_host("eu-west-1")]
        assert (route.address, dict(route.ports)) == ("127.0.0.2", {443: port})
        assert world.routes()[world.endpoint].address == "127.0.0.1"
        # Its certificate covers the address and the real name.
        name = cognito_host("eu-west-1")
        await asyncio.to_thread(
            tls_handshakes, "127.0.0.2", port, world.pki.ca_file, "127.0.0.2", name
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(
                tls_handshakes, "127.0.0.2", port, world.pki.ca_file, "x.example"
            )
        # The resolver sends the real name there, and the port is not on the gateway's address.
        with world.resolver():
            infos = await asyncio.get_running_loop().getaddrinfo(name, 443)
        assert infos[0][4] == ("127.0.0.2", port)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), TIMEOUT)
