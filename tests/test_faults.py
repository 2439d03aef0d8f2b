"""Fault plans (harness.faults): triggers, extent, every action against a live world.

Each test starts a world on loopback, runs a :class:`FaultPlan` made of the scenario
model's :class:`FaultSpec` values, and checks what a client sees and what the timeline
says (``fault.fired`` with the fault's name, so ``after: <name>`` anchors work).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.auth.credentials import Credential
from harness.errors import ConfigError
from harness.faults import FaultPlan, _dyson_operation, _toxic, listener_names
from harness.scenario.model import ACTIONS, EventPattern, FaultSpec
from harness.toxics import Latency, Timeout
from harness.world import World, WorldConfig, cognito_host
from tests.gateway_wire import RawClient, presigned_target
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig()) as w:
        yield w
        assert not w.recorder.find("gateway.error")


def _credential(world: World) -> Credential:
    return world.credentials.mint_temporary(
        now=world.clock.now(), lifetime=3600, principal="p", policies=(world.default_policy,)
    )


async def _upgrade(world: World, port: int | None = None) -> int:
    client = await RawClient.connect(world, port=port)
    try:
        reply = await client.upgrade(
            presigned_target(world, _credential(world)), host=world.endpoint
        )
        return reply.status
    finally:
        await client.close()


def _paho(world: World, client_id: str, port: int | None = None) -> tuple[PahoClient, int]:
    client = PahoClient(
        client_id,
        websocket=True,
        ca_file=str(world.pki.ca_file),
        path=presigned_target(world, _credential(world)),
        headers={"Host": world.endpoint},
    )
    return client, port or world.gateway.wss_port


async def _connected(world: World, client_id: str, port: int | None = None) -> PahoClient:
    client, port = _paho(world, client_id, port)
    await client.connect("127.0.0.1", port)
    outcome = await client.next("connect", "error", "disconnect")
    assert outcome.what == "connect" and outcome.rc == 0, outcome
    return client


def _fired(world: World, name: str) -> list[Any]:
    return [e for e in world.recorder.find("fault.fired") if e.get("name") == name]


async def _cognito(
    world: World, operation: str, body: dict[str, Any], *, url: str | None = None
) -> int:
    """One Cognito call over HTTPS (to ``url``, else Cognito itself); the HTTP status."""
    assert world.cognito is not None
    where = urllib.parse.urlsplit(url or world.cognito.url)
    context = ssl.create_default_context(cafile=str(world.pki.ca_file))
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(where.hostname, where.port, ssl=context)
    writer.write(
        (
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
            f"X-Amz-Target: AWSCognitoIdentityService.{operation}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + payload
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    return int(head.split()[1])


# Triggers and extent


async def test_at_trigger_arms_count_refusals_then_the_gateway_answers_normally(
    world: World,
) -> None:
    spec = FaultSpec(name="refuse", action="refuse-upgrade", count=2, params={"status": 503})
    async with FaultPlan([spec], world=world) as plan:
        assert [await _upgrade(world) for _ in range(3)] == [503, 503, 101]
    (fired,) = _fired(world, "refuse")
    assert fired.get("fault") == "refuse-upgrade" and fired.get("armed") == 2
    assert fired.get("trigger") == "at" and fired.get("index") == 0
    assert len(plan.firings) == 1


async def test_at_trigger_waits_for_its_world_time(world: World) -> None:
    at = world.clock.elapsed() + 0.3
    async with FaultPlan(
        [FaultSpec(name="later", action="clock-offset", at=at, params={"seconds": 5})], world=world
    ):
        assert not _fired(world, "later")
        event = await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, name="later")
    assert event.t >= at
    assert world.clock.offset == 5


async def test_on_trigger_fires_from_the_nth_match_up_to_count(world: World) -> None:
    spec = FaultSpec(
        name="every-other",
        action="clock-offset",
        on=EventPattern.of("ws.upgrade"),
        nth=2,
        count=2,
        params={"seconds": 1},
    )
    async with FaultPlan([spec], world=world):
        for _ in range(5):
            await _upgrade(world)
    fired = _fired(world, "every-other")
    assert [e.get("firing") for e in fired] == [1, 2]
    upgrades = world.recorder.find("ws.upgrade")
    assert fired[0].t >= upgrades[1].t and fired[1].t >= upgrades[2].t
    assert world.clock.offset == 2


async def test_a_fault_on_fault_fired_never_triggers_itself(world: World) -> None:
    faults = [
        FaultSpec(name="first", action="clock-offset", params={"seconds": 1}),
        FaultSpec(
            name="echo",
            action="clock-offset",
            on=EventPattern.of("fault.fired"),
            count=None,
            params={"seconds": 10},
        ),
    ]
    async with FaultPlan(faults, world=world):
        await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, name="echo")
    assert len(_fired(world, "echo")) == 1
    assert world.clock.offset == 11


@pytest.mark.interop
async def test_on_trigger_drops_the_connection_of_the_matching_event(world: World) -> None:
    spec = FaultSpec(
        name="cut",
        action="drop-connection",
        on=EventPattern.of("mqtt.out", packet="CONNACK"),
        nth=2,
    )
    async with FaultPlan([spec], world=world):
        first = await _connected(world, "first")
        second = await _connected(world, "second")
        assert (await second.next("disconnect")).what == "disconnect"
        (fired,) = _fired(world, "cut")
        connack = world.recorder.find("mqtt.out", packet="CONNACK")[1]
        assert fired.conn == connack.conn and fired.get("connections") == [connack.conn]
        first.client.publish("still/here", b"x", qos=1)
        assert (await first.next("publish", "disconnect")).what == "publish"
        await first.close()
        await second.close()


@pytest.mark.interop
async def test_reset_connection_aborts_and_a_client_id_filter_picks_one(world: World) -> None:
    spec = FaultSpec(
        name="rst",
        action="reset-connection",
        on=EventPattern.of("lifecycle.connected", client_id="victim"),
        params={"client_id": "victim"},
    )
    async with FaultPlan([spec], world=world):
        bystander = await _connected(world, "bystander")
        victim = await _connected(world, "victim")
        assert (await victim.next("disconnect")).what == "disconnect"
        (fired,) = _fired(world, "rst")
        closed = await world.recorder.wait_for("mqtt.close", timeout=TIMEOUT, conn=fired.conn)
        assert "reset" in str(closed.get("explain"))
        bystander.client.publish("still/here", b"x", qos=1)
        assert (await bystander.next("publish", "disconnect")).what == "publish"
        await bystander.close()
        await victim.close()


# The CONNECT and CONNACK faults


@pytest.mark.interop
async def test_withhold_and_close_after_connect_use_the_gateway_hooks(world: World) -> None:
    faults = [
        FaultSpec(name="close", action="close-after-connect"),
        FaultSpec(
            name="hold", action="withhold-connack", on=EventPattern.of("fault.fired", name="close")
        ),
    ]
    async with FaultPlan(faults, world=world):
        closed, port = _paho(world, "closed")
        await closed.connect("127.0.0.1", port)
        assert (await closed.next("connect", "disconnect")).what == "disconnect"
        held, port = _paho(world, "held")
        await held.connect("127.0.0.1", port)
        await world.recorder.wait_for(
            "fault.fired", timeout=TIMEOUT, fault="withhold-connack", packet="CONNACK"
        )
        assert not world.recorder.find("mqtt.out", packet="CONNACK")
        await closed.close()
        await held.close()
    assert [e.get("armed") for e in world.recorder.find("fault.fired") if e.get("name")] == [1, 1]


@pytest.mark.interop
async def test_delay_connack_holds_the_first_connack_then_releases_it(world: World) -> None:
    spec = FaultSpec(name="slow", action="delay-connack", params={"delay": 0.3})
    async with FaultPlan([spec], world=world):
        client, port = _paho(world, "slow")
        started = time.monotonic()
        await client.connect("127.0.0.1", port)
        assert (await client.next("connect", "disconnect")).rc == 0
        assert time.monotonic() - started >= 0.3
        released = world.recorder.first("fault.released", name="slow")
        connack = world.recorder.first("mqtt.out", packet="CONNACK")
        assert released is not None and connack is not None
        assert released.t - connack.t >= 0.3 and released.conn == connack.conn
        # Once released, the connection works as usual.
        client.client.publish("a/b", b"x", qos=1)
        assert (await client.next("publish", "disconnect")).what == "publish"
        await client.close()


@pytest.mark.interop
async def test_half_open_holds_both_ways_and_heals_after_its_duration(world: World) -> None:
    spec = FaultSpec(
        name="partition",
        action="half-open",
        on=EventPattern.of("mqtt.out", packet="SUBACK"),
        duration=0.8,
    )
    async with FaultPlan([spec], world=world):
        client = await _connected(world, "partitioned")
        client.client.subscribe("half/#", qos=1)
        await world.recorder.wait_for("fault.fired", timeout=TIMEOUT, name="partition")
        client.client.publish("half/open", b"held", qos=1)
        with pytest.raises(TimeoutError):  # nothing comes back while it is open
            await client.next("message", "publish", "disconnect", timeout=0.3)
        message = await client.next("message", "disconnect")
        assert message.what == "message" and message.payload == b"held"
        assert world.recorder.first("fault.ended", name="partition") is not None
        await client.close()


# Credentials, authorizers, clock, services


async def test_expire_credentials_expires_live_temporary_keys_of_a_pool(world: World) -> None:
    assert world.pool is not None
    mine = _credential(world)
    spec = FaultSpec(name="expire", action="expire-credentials", params={"identity_pool": "other"})
    async with FaultPlan([spec], world=world, pools={"other": "us-east-1:nobody"}):
        pass
    assert world.credentials.lookup(mine.access_key_id) == mine  # not that pool's
    spec = FaultSpec(name="all", action="expire-credentials")
    async with FaultPlan([spec], world=world):
        assert await _upgrade(world) == 101  # a fresh key minted after the fault
    stored = world.credentials.lookup(mine.access_key_id)
    assert stored is not None and stored.expired(world.clock.now())
    (fired,) = _fired(world, "all")
    assert fired.get("access_key_ids") == [mine.access_key_id]


async def test_authorizer_deny_answers_false_for_its_duration(world: World) -> None:
    name = next(iter(world.gateway.authorizers))
    original = world.gateway.authorizers[name]
    spec = FaultSpec(name="deny", action="authorizer-deny", duration=0.2, params={})
    async with FaultPlan([spec], world=world):
        denied = world.gateway.authorizers[name]
        assert denied is not original
        assert denied.handler(None) == {"isAuthenticated": False}  # type: ignore[arg-type]
        await world.recorder.wait_for("fault.ended", timeout=TIMEOUT, name="deny")
        assert world.gateway.authorizers[name] is original


async def test_authorizer_deny_of_an_unknown_authorizer_is_an_event_not_a_crash(
    world: World,
) -> None:
    spec = FaultSpec(name="deny", action="authorizer-deny", params={"authorizer": "nope"})
    async with FaultPlan([spec], world=world):
        pass
    (fired,) = _fired(world, "deny")
    assert "nope" in str(fired.get("error"))


async def test_cognito_error_and_throttle(world: World) -> None:
    assert world.pool is not None
    body = {"IdentityPoolId": world.pool.pool_id}
    faults = [
        FaultSpec(name="err", action="cognito-error", count=2, params={"operation": "GetId"}),
        FaultSpec(
            name="slow", action="cognito-throttle", at=0, duration=0.3, params={"rate_limit": 1}
        ),
    ]
    async with FaultPlan(faults, world=world):
        assert await _cognito(world, "GetId", body) == 500
        assert await _cognito(world, "GetId", body) == 500
        assert await _cognito(world, "GetId", body) == 200  # the burst of one
        assert await _cognito(world, "GetId", body) == 400  # TooManyRequestsException
        await world.recorder.wait_for("fault.ended", timeout=TIMEOUT, name="slow")
        assert (
            world.cognito is not None and world.cognito.pools[world.pool.pool_id].rate_limit is None
        )


# TLS


async def test_rotate_certificate_then_back_to_a_good_one(world: World) -> None:
    spec = FaultSpec(
        name="rotate", action="rotate-certificate", duration=0.3, params={"certificate": "expired"}
    )
    async with FaultPlan([spec], world=world):
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            await RawClient.connect(world)
        await world.recorder.wait_for("fault.ended", timeout=TIMEOUT, name="rotate")
        assert await _upgrade(world) == 101
    (fired,) = _fired(world, "rotate")
    assert fired.get("certificate") == "expired"


async def test_legacy_tls_only_refuses_modern_clients(world: World) -> None:
    spec = FaultSpec(name="old", action="legacy-tls-only", target="gateway-wss", duration=0.3)
    async with FaultPlan([spec], world=world):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await RawClient.connect(world)
        failed = await world.recorder.wait_for("tls.handshake", timeout=TIMEOUT, ok=False)
        assert failed.reason in ("wrong-version", "tls-error", "no-shared-cipher")
        await world.recorder.wait_for("fault.ended", timeout=TIMEOUT, name="old")
        assert await _upgrade(world) == 101


# TCP toxics


async def test_a_toxic_puts_a_proxy_in_front_and_the_descriptor_points_at_it(world: World) -> None:
    spec = FaultSpec(
        name="lag",
        action="latency",
        target="gateway-wss",
        duration=None,
        params={"latency": 0.25},
    )
    plan = FaultPlan([spec], world=world)
    async with plan:
        proxy = plan.proxies["gateway-wss"]
        descriptor = plan.descriptor()
        assert descriptor["iot"]["wss_port"] == proxy.port != world.gateway.wss_port
        assert descriptor["iot"]["mqtts_port"] == world.gateway.mqtts_port
        assert world.routes()[world.endpoint].ports[443] == proxy.port
        started = time.monotonic()
        assert await _upgrade(world, port=proxy.port) == 101
        assert time.monotonic() - started >= 0.25
        (fired,) = _fired(world, "lag")
        assert fired.get("toxic") == "latency" and fired.get("proxies") == ["gateway-wss"]
        assert proxy.toxics and proxy.toxics[0].toxic == Latency(latency_s=0.25)
    assert world.recorder.find("net.proxy", action="close")


async def test_a_timed_toxic_is_removed_when_its_duration_ends(world: World) -> None:
    spec = FaultSpec(name="hole", action="timeout", target="cognito", duration=0.2)
    plan = FaultPlan([spec], world=world)
    async with plan:
        proxy = plan.proxies["cognito"]
        assert plan.descriptor()["cognito"]["url"].endswith(f":{proxy.port}")
        assert proxy.toxics[0].toxic == Timeout()
        await world.recorder.wait_for("fault.ended", timeout=TIMEOUT, name="hole")
        assert not proxy.toxics


def _unbindable(address: str) -> str | None:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return f"cannot bind {address} here: {exc}"
    return None


@pytest.mark.skipif(_unbindable("127.0.0.2") is not None, reason=str(_unbindable("127.0.0.2")))
async def test_a_toxic_on_cognito_at_its_own_address_reaches_cognito() -> None:
    """Cognito on 127.0.0.2 (the sandbox's layout): the proxy listens there and connects
    there, not to the gateway's 127.0.0.1; the descriptor and the route point at it."""
    spec = FaultSpec(
        name="lag", action="latency", target="cognito", duration=None, params={"latency": 0.25}
    )
    async with World(WorldConfig(cognito_host="127.0.0.2")) as world:
        assert world.pool is not None
        body = {"IdentityPoolId": world.pool.pool_id}
        async with FaultPlan([spec], world=world) as plan:
            proxy = plan.proxies["cognito"]
            url = plan.descriptor()["cognito"]["url"]
            assert url == f"https://127.0.0.2:{proxy.port}"
            route = world.routes()[cognito_host(world.region)]
            assert (route.address, route.port(443)) == ("127.0.0.2", proxy.port)
            started = time.monotonic()
            assert await _cognito(world, "GetId", body, url=url) == 200
            assert time.monotonic() - started >= 0.25
        assert not world.recorder.find("fault.error")


# Mapping and validation


@pytest.mark.parametrize("action", [a for a, spec in ACTIONS.items() if spec.toxic])
def test_every_toxic_action_maps_to_a_toxic(action: str) -> None:
    params = {
        name: (1 if param.type == "count" else 0.1) if param.default is None else param.default
        for name, param in ACTIONS[action].params.items()
    }
    if action == "slicer":
        params["average_size"] = 10
    toxic = _toxic(action, params)
    assert toxic.type.replace("_", "-") == action or action == "reset-peer"


def test_listener_names_and_dyson_operations() -> None:
    assert listener_names("gateway") == ("gateway-wss", "gateway-mqtts")
    assert listener_names("cognito") == ("cognito",)
    assert _dyson_operation(None) is None
    assert _dyson_operation("/v3/manifest") == "manifest-v3"
    with pytest.raises(ConfigError, match="no Dyson API operation"):
        _dyson_operation("/nowhere")
    with pytest.raises(ConfigError, match="not a TCP toxic"):
        _toxic("drop-connection", {})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FaultSpec(action="dyson-api-error"), "Dyson side"),
        (FaultSpec(action="latency", target="dyson-api", params={"latency": 1}), "Dyson side"),
        (FaultSpec(action="drop-connection", target="device:X"), "only TCP toxics"),
        (FaultSpec(action="dyson-api-throttle", params={"path": "/v1"}), "one path"),
    ],
)
async def test_faults_this_world_cannot_carry_out_are_config_errors(
    world: World, spec: FaultSpec, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        FaultPlan([spec], world=world)


async def test_cognito_faults_need_cognito() -> None:
    async with World(WorldConfig(cognito=False)) as world:
        with pytest.raises(ConfigError, match="needs Cognito"):
            FaultPlan([FaultSpec(action="cognito-error")], world=world)


async def test_a_plan_starts_once_and_closes_idempotently(world: World) -> None:
    plan = FaultPlan([], world=world)
    async with plan:
        with pytest.raises(ConfigError, match="starts once"):
            await plan.start()
    await plan.aclose()


async def test_a_bug_in_a_fault_is_an_event_and_raised_at_close(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: FaultPlan, state: object, trigger: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(FaultPlan, "_do_clock_offset", broken)
    spec = FaultSpec(
        name="buggy", action="clock-offset", on=EventPattern.of("ws.upgrade"), params={"seconds": 1}
    )
    plan = FaultPlan([spec], world=world)
    await plan.start()
    assert await _upgrade(world) == 101  # the gateway recording the trigger is unharmed
    error = world.recorder.first("fault.error", name="buggy")
    assert error is not None and error.get("explain") == "RuntimeError: boom"
    with pytest.raises(RuntimeError, match="boom"):
        await plan.aclose()
    with pytest.raises(RuntimeError, match="boom"):
        await plan.aclose()
    await plan.aclose(raise_errors=False)
