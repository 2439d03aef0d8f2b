"""The load generator of bench/ against an in-process World: a smoke run, not a benchmark.

Each way in (SigV4 WSS, custom-auth WSS, mTLS) opens a few connections to CONNACK, one
publish → subscribe stream carries a few messages at QoS 0 and 1, and the endurance mix
runs for a second. Nothing here asserts a rate or a latency (issue [bench]: benchmarks
are never timed assertions); it only proves the tools still speak to the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench import endurance, loadgen
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig
from tests.timing import TIMEOUT


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False)) as w:
        yield w


def targets(world: World) -> dict[str, loadgen.Target]:
    policy = world.default_policy
    credential = world.credentials.add_static(principal="bench", policies=(policy,))
    issued = world.pki.client_cert("bench-thing")
    world.gateway.register_thing(issued.common_name, issued.cert_pem, policies=(policy,))
    assert world.authorizer_key is not None
    return {
        "wss-sigv4": loadgen.Target(
            name="sigv4",
            kind="wss-sigv4",
            port=world.gateway.wss_port,
            credentials=((credential.access_key_id, credential.secret_access_key),),
            server_name=world.endpoint,
            ca_file=str(world.pki.ca_file),
        ),
        "wss-custom": loadgen.Target(
            name="custom",
            kind="wss-custom",
            port=world.gateway.wss_port,
            authorizer=DEFAULT_AUTHORIZER,
            authorizer_key_file=str(world.authorizer_key.private_key_file),
            server_name=world.endpoint,
            ca_file=str(world.pki.ca_file),
        ),
        "mtls": loadgen.Target(
            name="mtls",
            kind="mtls",
            port=world.gateway.mqtts_port,
            client_certs=((str(issued.cert_file), str(issued.key_file)),),
            server_name=world.endpoint,
            ca_file=str(world.pki.ca_file),
        ),
    }


@pytest.mark.parametrize("kind", ["wss-sigv4", "wss-custom", "mtls"])
async def test_connections_reach_connack(world: World, kind: str) -> None:
    result = await loadgen.connect_rate(
        targets(world)[kind], total=4, concurrency=2, time_limit=4 * TIMEOUT, timeout=TIMEOUT
    )
    assert (result.ok, result.failures) == (4, {})
    assert len(result.latencies) == 4
    summary = result.summary()
    assert summary["ok"] == 4 and summary["connect_p50_ms"] is not None


@pytest.mark.parametrize("qos", [0, 1])
async def test_messages_flow_with_timestamps(world: World, qos: int) -> None:
    result = await loadgen.message_run(
        targets(world)["mtls"],
        pairs=1,
        qos=qos,
        duration=0.5,
        warmup=0.05,
        window=4,
        rate=40,  # under AWS's 100 publishes/s per connection, which the world enforces
        timeout=TIMEOUT,
    )
    assert result.connect_failures == 0
    assert result.sent > 0 and result.received == result.sent
    assert result.measured > 0 and len(result.latencies) == result.measured
    assert (result.acked == result.sent) if qos else result.acked == 0


async def test_held_connections_close(world: World) -> None:
    held = await loadgen.hold(
        targets(world)["mtls"], count=3, concurrency=3, subscribe=True, timeout=TIMEOUT
    )
    assert len(held.connections) == 3 and held.failures == {}
    await held.close()
    assert held.connections == []


async def test_refused_signature_is_a_failure_reason(world: World) -> None:
    target = targets(world)["wss-sigv4"]
    key, _secret = target.credentials[0]
    wrong = loadgen.Target(
        name="wrong",
        kind="wss-sigv4",
        port=target.port,
        server_name=target.server_name,
        ca_file=target.ca_file,
        credentials=((key, "not-the-secret"),),
    )
    result = await loadgen.connect_rate(
        wrong, total=1, concurrency=1, time_limit=2 * TIMEOUT, timeout=TIMEOUT
    )
    assert result.ok == 0 and result.failures == {"upgrade-403": 1}


async def test_endurance_mix_runs_and_loses_nothing(world: World) -> None:
    result = await endurance.run(
        targets(world), duration=1.0, pairs=1, churners=2, misbehaving=2, hold=(0.1, 0.3)
    )
    assert result.published > 0 and result.lost == 0
    assert sum(result.misbehaviours.values()) > 0


def test_wire_helpers() -> None:
    frame = loadgen.ws_frame(b"\x10\x00", opcode=0x2)
    assert frame[0] == 0x82 and frame[1] == 0x80 | 2 and len(frame) == 2 + 4 + 2
    payload = loadgen.stamp(3, 7, 32)
    assert len(payload) == 32
    stamped = loadgen.read_stamp(payload)
    assert stamped is not None and stamped[1:] == (3, 7)
    assert loadgen.read_stamp(b"short") is None
    assert loadgen.percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert loadgen.percentile([], 0.5) is None
