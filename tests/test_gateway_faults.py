"""The gateway's fault hooks: each is one API call, seen by a real client, on the timeline.

The hooks scenarios drive (issue [gateway], "Hooks for faults"): refuse the next N
upgrades, withhold CONNACK, close right after CONNECT, drop a connection now (politely or
with a reset), expire a credential now, offset the world clock. Each fires a
``fault.fired`` event, and the gateway behaves normally again once the fault is used up.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest

from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.errors import ConfigError
from harness.gateway.hooks import FaultHooks
from harness.world import World, WorldConfig
from tests.gateway_wire import RawClient, presigned_target
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False)) as w:
        yield w
        assert not w.recorder.find("gateway.error")


def _credential(world: World) -> Credential:
    return world.credentials.mint_temporary(
        now=world.clock.now(),
        lifetime=3600,
        principal="us-east-1:player",
        policies=(world.default_policy,),
    )


def _paho(world: World, client_id: str, credential: Credential | None = None) -> PahoClient:
    return PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=presigned_target(world, credential or _credential(world)),
        headers={"Host": world.gateway.endpoint},
    )


async def _connects(world: World, client_id: str) -> PahoClient:
    client = _paho(world, client_id)
    await client.connect("127.0.0.1", world.gateway.wss_port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "connect" and outcome.rc == 0, outcome
    return client


# --------------------------------------------------------------------------------------
# Refuse the next N upgrades
# --------------------------------------------------------------------------------------


async def test_refuse_upgrades_then_normal(world: World) -> None:
    body = b'{"message":"Service Unavailable"}'
    world.gateway.faults.refuse_upgrades(2, status=503, body=body)
    for _ in range(2):
        client = await RawClient.connect(world)
        reply = await client.upgrade(
            presigned_target(world, _credential(world)), host=world.gateway.endpoint
        )
        assert reply.status_line == "HTTP/1.1 503 Service Unavailable"
        assert reply.body == body
        assert reply.header("content-length") == str(len(body))
        assert reply.header("x-amzn-RequestId")
        await client.close()
    fired = world.recorder.find("fault.fired", fault="refuse-upgrade")
    assert [e.get("status") for e in fired] == [503, 503]
    refused = world.recorder.find("ws.upgrade", ok=False, reason="fault")
    assert [e.get("status") for e in refused] == [503, 503]
    after = await _connects(world, "after-refusals")
    await after.close()
    assert len(world.recorder.find("fault.fired")) == 2


async def test_refuse_upgrades_default_is_a_403(world: World) -> None:
    world.gateway.faults.refuse_upgrades()
    client = _paho(world, "refused")
    await client.connect("127.0.0.1", world.gateway.wss_port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "error" and "not upgraded" in str(outcome.rc)
    event = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, reason="fault")
    assert event.get("status") == 403


def test_fault_hooks_refuse_harness_misuse() -> None:
    hooks = FaultHooks()
    with pytest.raises(ConfigError):
        hooks.refuse_upgrades(-1)
    with pytest.raises(ConfigError):
        hooks.refuse_upgrades(status=101)
    with pytest.raises(ConfigError):
        hooks.refuse_upgrades(status=700)
    with pytest.raises(ConfigError):
        hooks.refuse_upgrades(reason_phrase="Bad\r\nX-Injected: 1")
    with pytest.raises(ConfigError):
        hooks.withhold_connack(-2)
    with pytest.raises(ConfigError):
        hooks.close_after_connect(True)
    hooks.refuse_upgrades(0)
    assert hooks.take_upgrade_refusal() is None


def test_fault_hooks_are_used_up_in_order() -> None:
    hooks = FaultHooks()
    hooks.refuse_upgrades(1, status=503)
    hooks.refuse_upgrades(2, status=429)
    statuses = [hooks.take_upgrade_refusal() for _ in range(4)]
    assert [r.status if r else None for r in statuses] == [503, 429, 429, None]
    assert statuses[1] is not None and statuses[1].reason_phrase == "Too Many Requests"
    hooks.close_after_connect(1)
    hooks.withhold_connack(1)
    taken = [hooks.take_connect_fault() for _ in range(3)]
    assert taken == ["close-after-connect", "withhold-connack", None]


# --------------------------------------------------------------------------------------
# CONNECT faults
# --------------------------------------------------------------------------------------


async def test_withhold_connack(world: World) -> None:
    world.gateway.faults.withhold_connack()
    stuck = _paho(world, "stuck")
    await stuck.connect("127.0.0.1", world.gateway.wss_port)
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="withhold-connack")
    # The next connection is served normally, and the stuck one still has no CONNACK.
    other = await _connects(world, "unstuck")
    with pytest.raises(TimeoutError):
        await stuck.next("connect", "disconnect", timeout=TIMEOUT / 10)
    assert not world.recorder.find("mqtt.out", conn=fired.conn, packet="CONNACK")
    await stuck.close()
    await other.close()


async def test_close_after_connect(world: World) -> None:
    world.gateway.faults.close_after_connect()
    closed = _paho(world, "closed")
    await closed.connect("127.0.0.1", world.gateway.wss_port)
    outcome = await closed.next("connect", "error", "disconnect")
    assert outcome.what == "disconnect"  # no CONNACK, as AWS's silent close (§2.4)
    closed.client.loop_stop()
    fired = await world.recorder.wait_for(
        "fault.fired", timeout=TIMEOUT, fault="close-after-connect"
    )
    assert not world.recorder.find("mqtt.out", conn=fired.conn, packet="CONNACK")
    client = await _connects(world, "after-close")
    await client.close()


# --------------------------------------------------------------------------------------
# Drop a connection now
# --------------------------------------------------------------------------------------


async def test_drop_by_client_id(world: World) -> None:
    client = await _connects(world, "dropped")
    assert await world.gateway.drop("dropped") is True
    outcome = await client.next("disconnect")
    assert outcome.rc != 0  # not a client-initiated disconnect
    client.client.loop_stop()
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="drop")
    assert fired.get("reset") is False
    gone = await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)
    assert gone.get("disconnect_reason") == "SERVER_INITIATED_DISCONNECT"
    assert await world.gateway.drop("dropped") is False  # already gone
    assert await world.gateway.drop("never-was") is False


async def test_drop_with_reset_by_connection_id(world: World) -> None:
    client = await RawClient.connect(world)
    reply = await client.upgrade(
        presigned_target(world, _credential(world)), host=world.gateway.endpoint
    )
    assert reply.status == 101
    upgrade = await world.recorder.wait_for("ws.upgrade", timeout=TIMEOUT, ok=True)
    assert upgrade.conn is not None
    assert await world.gateway.drop(upgrade.conn, reset=True) is True
    with pytest.raises(ConnectionResetError):
        await _read_until_eof(client)
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="drop")
    assert (fired.conn, fired.get("reset")) == (upgrade.conn, True)
    await client.close()


async def _read_until_eof(client: RawClient) -> None:
    while await client.reader.read(65536):
        pass


# --------------------------------------------------------------------------------------
# Expire a credential now; offset the world clock
# --------------------------------------------------------------------------------------


async def test_expire_credential_now(world: World) -> None:
    credential = _credential(world)
    live = _paho(world, "live", credential)
    await live.connect("127.0.0.1", world.gateway.wss_port)
    assert (await live.next("connect", "error")).rc == 0
    world.gateway.expire_credential(credential.access_key_id)
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="expire-credential")
    assert fired.get("access_key_id") == credential.access_key_id
    client = await RawClient.connect(world)
    reply = await client.upgrade(presigned_target(world, credential), host=world.gateway.endpoint)
    assert reply.status == 403
    assert json.loads(reply.body)["message"] == sigv4.MSG_TOKEN_EXPIRED
    verdict = await world.recorder.wait_for(
        "auth.verdict", timeout=TIMEOUT, stage="upgrade", ok=False
    )
    assert verdict.reason == "token-expired"
    await client.close()
    # Expiry is checked at the handshake only: the live connection is untouched (§1.5).
    live.client.subscribe("still/#", qos=1)
    assert (await live.next("subscribe")).rc == [1]
    await live.close()


@pytest.mark.parametrize(
    ("seconds", "pattern"),
    [
        pytest.param(
            -400,
            r"Signature not yet current: \S+ is still later than \S+ \(\S+ \+ 5 min\.\)",
            id="gateway-behind",
        ),
        pytest.param(
            400,
            r"Signature expired: \S+ is now earlier than \S+ \(\S+ - 5 min\.\)",
            id="gateway-ahead",
        ),
    ],
)
async def test_shift_clock_is_clock_skew(world: World, seconds: float, pattern: str) -> None:
    credential = _credential(world)
    target = presigned_target(world, credential)  # signed with the right time
    world.gateway.shift_clock(seconds)
    fired = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, fault="clock-offset")
    assert fired.get("seconds") == seconds
    client = await RawClient.connect(world)
    reply = await client.upgrade(target, host=world.gateway.endpoint)
    assert reply.status == 403
    assert re.fullmatch(pattern, json.loads(reply.body)["message"])
    verdict = await world.recorder.wait_for("auth.verdict", timeout=TIMEOUT, ok=False)
    assert verdict.reason == "clock-skew"
    await client.close()
    world.gateway.shift_clock(-seconds)
    again = await _connects(world, "after-skew")
    await again.close()
