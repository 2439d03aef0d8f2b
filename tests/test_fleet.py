"""simulators.fleet: N devices in one world, local, cloud or both (issue [dyson], "fleet")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.gateway import GatewayConfig
from harness.mqtt.codec import Connack, Connect, Publish, StreamDecoder, Suback, Subscribe, encode
from harness.world import World, WorldConfig
from simulators.fleet import Fleet
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(WorldConfig(cognito=False, gateway=GatewayConfig())) as running:
        yield running


def test_fleet_configuration_errors() -> None:
    world: Any = object()  # never touched before the checks
    for options in (
        {"count": -1},
        {"count": 1, "concurrency": 0},
        {"count": 1, "mode": "radio"},
        {"count": 1, "mode": ()},
        {"count": 1, "product_type": ()},
        {"count": 1, "product_type": "999"},
    ):
        with pytest.raises(ConfigError):
            Fleet(world, **options)


def test_types_and_modes_are_dealt_out_in_turn() -> None:
    world: Any = object()
    fleet = Fleet(world, count=5, product_type=("438", "527"), mode=("cloud", "local", "both"))
    assert [(s.product_type, s.mode) for s in fleet.specs] == [
        ("438", "cloud"),
        ("527", "local"),
        ("438", "both"),
        ("527", "cloud"),
        ("438", "local"),
    ]


async def cloud_watcher(world: World) -> PahoClient:
    """A cloud client (the world's signing authorizer) that hears every device's status."""
    assert world.authorizer_key is not None
    client = PahoClient(
        "fleet-watcher",
        websocket=True,
        ca_file=str(world.pki.ca_file),
        headers={
            "Host": world.endpoint,
            "token": "watcher",
            "X-Amz-CustomAuthorizer-Name": "iot-harness-authorizer",
            "X-Amz-CustomAuthorizer-Signature": world.authorizer_key.sign("watcher"),
        },
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("+/+/status/#", qos=0)
    assert (await client.next("subscribe")).rc == [0]
    return client


async def test_a_cloud_fleet_answers_through_the_gateway(world: World) -> None:
    watcher = await cloud_watcher(world)
    try:
        async with Fleet(world, count=4, product_type=("438", "527"), mode="cloud") as fleet:
            await fleet.wait_connected(TIMEOUT)
            assert len(fleet) == 4 and len(set(fleet.serials)) == 4
            assert all(d.local is None and d.cloud is not None for d in fleet)
            described = world.descriptor()["dyson"]["devices"]
            assert [d["serial"] for d in described] == fleet.serials
            assert fleet.descriptor() == described
            for device in fleet:
                request = json.dumps({"msg": "REQUEST-CURRENT-STATE"})
                watcher.client.publish(device.topics.command, request, qos=1)
            answered: set[str] = set()
            while len(answered) < 4:
                happened = await watcher.next("message")
                assert happened.topic is not None and happened.payload is not None
                if json.loads(happened.payload)["msg"] == "CURRENT-STATE":
                    answered.add(happened.topic.split("/")[1])
            assert answered == set(fleet.serials)
            started = world.recorder.first("dyson.fleet.started")
            assert started is not None and started.get("count") == 4
            assert started.get("product_types") == ["438", "527"]
        assert world.dyson is not None and not world.dyson.devices
        assert world.descriptor()["dyson"]["devices"] == []
        assert world.recorder.first("dyson.fleet.stopped", count=4) is not None
    finally:
        await watcher.close()


async def local_state(host: str, port: int, serial: str, password: str, root: str) -> bytes:
    """A raw MQTT 3.1 client on one device's broker: CURRENT-STATE's payload."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    decoder = StreamDecoder()

    async def expect(kind: type[Any]) -> Any:
        while True:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert data, "the device's broker closed the connection"
            for packet, _ in decoder.feed(data):
                if isinstance(packet, kind):
                    return packet

    try:
        writer.write(
            encode(
                Connect(
                    client_id=f"t-{serial[-4:]}",
                    protocol_level=3,
                    username=serial,
                    password=password.encode(),
                )
            )
        )
        assert (await expect(Connack)).return_code == 0
        writer.write(encode(Subscribe(1, ((f"{root}/{serial}/status/current", 0),))))
        await expect(Suback)
        command = json.dumps({"msg": "REQUEST-CURRENT-STATE"}).encode()
        writer.write(encode(Publish(f"{root}/{serial}/command", command)))
        publish: Publish = await expect(Publish)
        return publish.payload
    finally:
        writer.close()


async def test_a_local_fleet_has_one_broker_per_device(world: World) -> None:
    async with Fleet(world, count=3, product_type="438M", mode="local") as fleet:
        ports = [d.local_port for d in fleet]
        assert len(set(ports)) == 3 and all(port > 0 for port in ports)
        assert all(d.cloud is None for d in fleet)
        answers = await asyncio.gather(
            *(
                local_state(d.local_host, d.local_port, d.serial, d.local_password, d.root_topic)
                for d in fleet
            )
        )
        assert all(json.loads(answer)["msg"] == "CURRENT-STATE" for answer in answers)


async def test_a_fleet_in_both_modes_and_an_empty_one(world: World) -> None:
    async with Fleet(world, count=2, mode="both", concurrency=1) as fleet:
        await fleet.wait_connected(TIMEOUT)
        assert all(d.cloud is not None and d.cloud.online and d.local_port > 0 for d in fleet)
        assert fleet[0].serial != fleet[1].serial
    async with Fleet(world, count=0) as empty:
        await empty.wait_connected(TIMEOUT)
        assert len(empty) == 0 and list(empty) == []


async def test_a_failed_start_stops_what_started(world: World) -> None:
    dyson = await world.enable_dyson()
    taken = await dyson.add_device()
    fleet = Fleet(world, count=2, mode="cloud")
    real_add = dyson.add_device
    calls = 0

    async def flaky_add(spec: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConfigError("no room for another device")
        return await real_add(spec)

    dyson.add_device = flaky_add  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="no room"):
        await fleet.start()
    assert len(fleet) == 0
    assert list(dyson.devices) == [taken.serial]
