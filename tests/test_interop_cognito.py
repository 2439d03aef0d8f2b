"""boto3 Cognito → temporary credentials → SigV4 WSS with paho (aws-iot.md §6, §1.5).

The flow of the browser-player field design: GetId, GetCredentialsForIdentity, presign
the IoT URL with the session token appended after signing, connect over WSS.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import pytest

from harness.auth.credentials import Credential
from harness.auth.sigv4 import presign_url
from harness.world import World
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop


async def fetch_credentials(cognito: Any, pool_id: str) -> tuple[Credential, float]:
    """GetId then GetCredentialsForIdentity; the credential and its expiration (epoch s)."""
    identity = (await asyncio.to_thread(cognito.get_id, IdentityPoolId=pool_id))["IdentityId"]
    answer = await asyncio.to_thread(cognito.get_credentials_for_identity, IdentityId=identity)
    wire = answer["Credentials"]
    credential = Credential(
        access_key_id=wire["AccessKeyId"],
        secret_access_key=wire["SecretKey"],
        session_token=wire["SessionToken"],
    )
    return credential, wire["Expiration"].timestamp()


def wss_client(world: World, client_id: str, credential: Credential) -> PahoClient:
    url = urllib.parse.urlsplit(
        presign_url(
            host=world.endpoint, credential=credential, region=world.region, now=world.clock.now()
        )
    )
    return PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=f"{url.path}?{url.query}",
        headers={"Host": world.endpoint},
    )


async def test_cognito_credentials_open_a_sigv4_wss_connection(world: World, cognito: Any) -> None:
    assert world.pool is not None
    credential, _ = await fetch_credentials(cognito, world.pool.pool_id)
    assert credential.access_key_id.startswith("ASIA")
    client = wss_client(world, "player-cognito", credential)
    await client.connect(world.config.gateway.host, world.gateway.wss_port)
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("players/cognito", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish("players/cognito", b"played", qos=1)
    message = await client.next("message")
    assert (message.topic, message.payload) == ("players/cognito", b"played")
    await client.close()
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, stage="upgrade")
    assert verdict.ok is True
    assert verdict.get("access_key_id") == credential.access_key_id
    assert str(verdict.get("principal")).startswith(world.region + ":")  # the identity id
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)
    timeline = str([e.to_json() for e in world.recorder])
    assert credential.session_token is not None and credential.session_token not in timeline
    assert credential.secret_access_key not in timeline


async def test_unauthenticated_access_disabled(world: World, cognito: Any) -> None:
    assert world.cognito is not None
    pool = world.cognito.create_pool(allow_unauthenticated=False)
    with pytest.raises(cognito.exceptions.NotAuthorizedException) as caught:
        await asyncio.to_thread(cognito.get_id, IdentityPoolId=pool.pool_id)
    assert caught.value.response["Error"]["Message"] == (
        "Unauthenticated access is not supported for this identity pool."
    )
    event = await world.recorder.wait_for("cognito.call", timeout=TIMEOUT, ok=False)
    assert event.get("error") == "NotAuthorizedException"


async def test_expired_credentials_are_refused_at_the_next_connect(
    world: World, cognito: Any
) -> None:
    assert world.cognito is not None
    pool = world.cognito.create_pool(credential_lifetime=0.5, policies=(world.default_policy,))
    credential, expiration = await fetch_credentials(cognito, pool.pool_id)

    first = wss_client(world, "player-short", credential)
    await first.connect(world.config.gateway.host, world.gateway.wss_port)
    assert (await first.next("connect", "error")).rc == 0
    await first.close()
    await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)

    # Wait on the world clock for the expiry, never a fixed sleep.
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while world.clock.now() < expiration:
        assert asyncio.get_running_loop().time() < deadline, "credentials never expired"
        await asyncio.sleep(0.05)

    mark = len(world.recorder)
    again = wss_client(world, "player-short", credential)  # reused after expiry (FB-23)
    await again.connect(world.config.gateway.host, world.gateway.wss_port)
    outcome = await again.next("connect", "error", "disconnect")
    assert outcome.what in ("error", "disconnect") or outcome.rc != 0
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, since=mark)
    assert (verdict.ok, verdict.reason) == (False, "token-expired")
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, since=mark)
    assert upgrade.get("status") == 403
    await again.close()
