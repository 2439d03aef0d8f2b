"""paho-mqtt over WSS through the fake gateway with SigV4 presigned URLs (aws-iot.md §1)."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator

import pytest

from harness.auth import sigv4
from harness.world import World, WorldConfig
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False)) as w:
        yield w


def presigned_path(world: World, **options: object) -> str:
    credential = world.credentials.add_static(policies=(world.default_policy,))
    url = sigv4.presign_url(
        host=world.gateway.endpoint,
        credential=credential,
        region=world.config.gateway.region,
        now=world.clock.now(),
        **options,  # type: ignore[arg-type]
    )
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def paho(world: World, client_id: str, path: str) -> PahoClient:
    return PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=path,
        headers={"Host": world.gateway.endpoint},
    )


async def test_paho_connects_subscribes_and_receives(world: World) -> None:
    client = paho(world, "player-1", presigned_path(world))
    await client.connect("127.0.0.1", world.gateway.wss_port)
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("players/1/#", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish("players/1/state", b"hello", qos=1)
    message = await client.next("message")
    assert (message.topic, message.payload) == ("players/1/state", b"hello")
    await client.close()
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="upgrade")
    assert verdict.ok is True
    # The CONNECT-stage verdict says how the connection was authenticated, too.
    at_connect = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="connect")
    assert at_connect.ok is True
    assert at_connect.get("method") == "sigv4"
    assert at_connect.get("access_key_id") == verdict.get("access_key_id") is not None
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)


async def test_token_signed_url_gets_awss_403(world: World) -> None:
    credential = world.credentials.mint_temporary(
        now=world.clock.now(),
        lifetime=3600,
        principal="us-east-1:x",
        policies=(world.default_policy,),
    )
    url = sigv4.presign_url(
        host=world.gateway.endpoint,
        credential=credential,
        region="us-east-1",
        now=world.clock.now(),
        token_style="signed",
    )
    parts = urllib.parse.urlsplit(url)
    client = paho(world, "player-2", f"{parts.path}?{parts.query}")
    await client.connect("127.0.0.1", world.gateway.wss_port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what in ("error", "disconnect") or outcome.rc != 0
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT)
    assert verdict.ok is False
    assert verdict.reason == "signature-mismatch"
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT)
    assert upgrade.get("status") == 403
    assert credential.session_token is not None
    assert all(credential.session_token not in str(e.to_json()) for e in world.recorder)
