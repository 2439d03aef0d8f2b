"""The Dyson side of a world: descriptor, routes, ``serve --devices``, and the whole cloud
path with real clients: libdyson-rest logs in and fetches IoT credentials, paho connects
with them as hass-dyson does and drives the simulated device through the gateway."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from harness.cli import build_parser, main, world_config
from harness.errors import ConfigError
from harness.gateway import GatewayConfig
from harness.mqtt.rules import Limits
from harness.world import World, WorldConfig
from simulators.dyson.cloud_api import DYSON_API_HOSTS
from simulators.dyson.cloud_link import Backoff
from simulators.dyson.credentials import decrypt_local_credentials
from simulators.dyson.world import (
    DysonConfig,
    DysonDeviceSpec,
    SimulatedDevice,
    parse_device_list,
)
from tests.conftest import SHARED
from tests.paho_client import Happened, PahoClient, _Client
from tests.timing import TIMEOUT

CHECK_DESCRIPTOR = SHARED / "contract" / "check-descriptor"
BIN = Path(sys.executable).parent
TP11 = "NK6-EU-HAA0000A"


def dyson_config(*specs: DysonDeviceSpec, api_host: str | None = None) -> DysonConfig:
    return DysonConfig(devices=specs, backoff=Backoff(initial_s=0.05, max_s=0.2), api_host=api_host)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    config = WorldConfig(
        cognito=False,
        gateway=GatewayConfig(limits=Limits(connects_per_client_id_per_second=None)),
        dyson=dyson_config(
            DysonDeviceSpec(product_type="438M", serial=TP11, mode="cloud"),
            DysonDeviceSpec(product_type="527", mode="cloud"),
        ),
    )
    async with World(config) as running:
        assert running.dyson is not None
        for device in running.dyson:
            assert device.cloud is not None
            await device.cloud.wait_connected(TIMEOUT)
        yield running


# Configuration


def test_device_lists_parse_as_the_cli_takes_them() -> None:
    specs = parse_device_list("438, 527:cloud,438M:local@1883")
    assert [(s.product_type, s.mode, s.local_port) for s in specs] == [
        ("438", "both", 0),
        ("527", "cloud", 0),
        ("438M", "local", 1883),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty device entry"),
        ("438,", "empty device entry"),
        ("999", "no Dyson profile '999'"),
        ("438:wifi", "one of local, cloud, both"),
        ("438@", "local port after '@' is 0-65535"),
        ("438@port", "local port after '@' is 0-65535"),
        ("438@70000", "local port after '@' is 0-65535"),
        ("438@\uff11\uff18\uff18\uff13", "local port after '@' is 0-65535"),
    ],
)
def test_bad_device_lists(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_device_list(text)


@given(st.text(alphabet="438M527:cloudbthx ,@", max_size=30) | st.text(max_size=30))
def test_any_device_list_parses_or_says_why(text: str) -> None:
    outcome: tuple[DysonDeviceSpec, ...] | str
    try:
        outcome = parse_device_list(text)
    except ConfigError as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome  # a sentence naming the problem
    else:
        assert outcome and all(spec.mode in ("local", "cloud", "both") for spec in outcome)


@pytest.mark.parametrize(
    "options",
    [
        {"serial": "not-a-serial"},
        {"mode": "radio"},
        {"local_port": 70000},
        {"product_type": "N223"},
    ],
)
def test_bad_device_specs(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DysonDeviceSpec(**options)


def test_bad_dyson_configs() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        DysonConfig(devices=(DysonDeviceSpec(serial=TP11), DysonDeviceSpec(serial=TP11)))
    with pytest.raises(ConfigError, match="api_port"):
        DysonConfig(api_port=-1)


def test_serve_options_make_the_dyson_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--state-dir", str(tmp_path), "--devices", "438,527:cloud"]
    )
    config = world_config(args)
    assert config.dyson is not None
    assert [(d.product_type, d.mode) for d in config.dyson.devices] == [
        ("438", "both"),
        ("527", "cloud"),
    ]
    plain = world_config(build_parser().parse_args(["serve", "--state-dir", str(tmp_path)]))
    assert plain.dyson is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--devices", "999"], "no Dyson profile '999'"),
        (["serve", "--devices", "438:wifi"], "one of local, cloud, both"),
        (["serve", "--dyson-api-port", "70000"], "not in 0-65535"),
    ],
)
def test_bad_dyson_options_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


# The world's Dyson side


async def test_descriptor_has_the_dyson_section_of_the_contract(world: World) -> None:
    assert world.dyson is not None
    section = world.descriptor()["dyson"]
    assert section["api_url"] == f"https://127.0.0.1:{world.dyson.cloud.port}"
    assert (section["email"], section["password"], section["otp"]) == (
        "owner@example.com",
        "harness-password",
        "123456",
    )
    devices = section["devices"]
    assert [d["serial"] for d in devices] == [TP11, "SIM-EU-527X0001"]
    tp11 = devices[0]
    assert (tp11["product_type"], tp11["root_topic"], tp11["profile"]) == ("438", "438M", "438M")
    assert (tp11["local_host"], tp11["local_port"], tp11["mode"]) == ("127.0.0.1", 0, "cloud")
    assert len(tp11["local_password"]) == 88 and tp11["thing_name"] == TP11
    for device in devices:
        for key, kind in (
            ("serial", str),
            ("product_type", str),
            ("root_topic", str),
            ("local_host", str),
            ("local_port", int),
            ("local_password", str),
        ):
            assert isinstance(device[key], kind), key
    assert section["authorizer_name"] == "cld-iot-credentials-lambda-authorizer"
    # The manifest lists the same devices with the same (encrypted) local passwords.
    manifest = world.dyson.cloud.device(TP11).manifest_v3()
    mqtt = manifest["connectedConfiguration"]["mqtt"]
    assert mqtt["mqttRootTopicLevel"] == "438M"
    assert (
        decrypt_local_credentials(mqtt["localBrokerCredentials"]).ap_password_hash
        == (tp11["local_password"])
    )
    # The local passwords never reach the event timeline.
    timeline = json.dumps([e.to_json() for e in world.recorder], default=str)
    assert tp11["local_password"] not in timeline


async def test_the_api_host_names_route_to_the_fake_cloud(world: World) -> None:
    assert world.dyson is not None
    routes = world.routes()
    for name in DYSON_API_HOSTS:
        assert routes[name].port(443) == world.dyson.cloud.port
    with world.resolver():
        infos = await asyncio.get_running_loop().getaddrinfo("appapi.cp.dyson.com", 443)
    assert infos[0][4] == ("127.0.0.1", world.dyson.cloud.port)


async def test_devices_come_and_go(world: World) -> None:
    assert world.dyson is not None
    local = await world.dyson.add_device(DysonDeviceSpec(product_type="358", mode="local"))
    assert world.routes()[local.local_hostname].port(1883) == local.local_port
    await world.dyson.remove_device(local.serial)
    assert local.local_hostname not in world.routes()
    added = await world.dyson.add_device(DysonDeviceSpec(product_type="475", mode="cloud"))
    assert added.serial.startswith("SIM-EU-475X")
    assert world.dyson.cloud.device(added.serial).product_type == "475"
    assert added.cloud is not None
    await added.cloud.wait_connected(TIMEOUT)
    with pytest.raises(ConfigError, match="already running"):
        await world.dyson.add_device(DysonDeviceSpec(serial=added.serial))
    await world.dyson.remove_device(added.serial)
    with pytest.raises(ConfigError):
        world.dyson.device(added.serial)
    with pytest.raises(ConfigError):
        world.dyson.cloud.device(added.serial)
    await world.recorder.wait_for(
        "mqtt.close", timeout=TIMEOUT, client_id=added.serial, reason="CLIENT_INITIATED_DISCONNECT"
    )


async def test_enable_dyson_on_a_running_world() -> None:
    async with World(WorldConfig(cognito=False)) as world:
        assert "dyson" not in world.descriptor()
        dyson = await world.enable_dyson(dyson_config())
        assert await world.enable_dyson() is dyson
        assert world.descriptor()["dyson"]["devices"] == []
        assert "appapi.cp.dyson.cn" in world.routes()


async def test_a_device_stopped_while_it_connects_stops() -> None:
    """Stopping a device just after it started (here: after 0 to 59 turns of the event
    loop, i.e. the first few milliseconds) always ends its cloud link.

    Python 3.11's ``asyncio.wait_for(reader.read(...))`` returns the data and drops the
    cancellation when both arrive in the same turn; the link then carried on connecting
    and ``stop()`` waited for it for ever. Stops are awaited with ``asyncio.wait`` so a
    hang is a failure here, not a cancellation the stop could swallow too.
    """
    config = WorldConfig(
        cognito=False,
        newcomer_defaults=False,
        gateway=GatewayConfig(limits=Limits(connects_per_client_id_per_second=None)),
        dyson=dyson_config(),
    )
    async with World(config) as world:
        assert world.dyson is not None
        for turns in range(60):
            device = await world.dyson.add_device(DysonDeviceSpec(mode="cloud"))
            for _ in range(turns):
                await asyncio.sleep(0)
            stop = asyncio.create_task(world.dyson.remove_device(device.serial))
            done, _ = await asyncio.wait({stop}, timeout=TIMEOUT)
            assert stop in done, f"the device stopped after {turns} turns never stopped"
            stop.result()
        assert not world.recorder.find("dyson.cloud.error")


# The whole cloud path with real clients


@dataclass(frozen=True)
class IotCredentials:
    """What libdyson-rest returned, as plain strings (its models use UUIDs)."""

    endpoint: str
    client_id: str
    token_key: str
    token_value: str
    token_signature: str
    authorizer_name: str


def libdyson_rest_login(email: str, password: str, otp: str, serial: str) -> tuple[Any, str, Any]:
    """libdyson-rest, unmodified, as an app uses it: OTP login, devices, local password,
    IoT credentials (dyson.md §6)."""
    rest = pytest.importorskip("libdyson_rest")
    with rest.DysonClient(email=email, password=password) as client:
        assert client.authenticate(otp) is True
        devices = client.get_devices()
        device = next(d for d in devices if d.serial_number == serial)
        mqtt = device.connected_configuration.mqtt
        password = client.decrypt_local_credentials(mqtt.local_broker_credentials, serial)
        iot = client.get_iot_credentials(serial)
    return devices, password, iot


def hass_dyson_client(creds: IotCredentials, ca_file: str) -> PahoClient:
    """paho as hass-dyson builds its cloud client (dyson.md §7): WebSocket on /mqtt, the
    custom-auth credentials as upgrade headers, client id = ClientId, no user name."""
    return PahoClient(
        creds.client_id,
        websocket=True,
        ca_file=ca_file,
        headers={
            "Host": creds.endpoint,
            creds.token_key: creds.token_value,
            "X-Amz-CustomAuthorizer-Name": creds.authorizer_name,
            "X-Amz-CustomAuthorizer-Signature": creds.token_signature,
        },
    )


async def next_msg(client: PahoClient, msg: str, *, topic: str | None = None) -> dict[str, Any]:
    while True:
        happened = await client.next("message", "disconnect")
        assert happened.what == "message", f"the cloud client was disconnected: {happened}"
        assert happened.payload is not None
        message = json.loads(happened.payload)
        if message.get("msg") == msg and (topic is None or happened.topic == topic):
            return dict(message)


async def log_in_with_libdyson_rest(
    world: World, monkeypatch: pytest.MonkeyPatch, serial: str
) -> tuple[list[Any], str, IotCredentials]:
    """libdyson-rest under the resolver override, trusting the world CA via SSL_CERT_FILE."""
    section = world.descriptor()["dyson"]
    monkeypatch.setenv("SSL_CERT_FILE", str(world.pki.ca_file))
    with world.resolver():
        devices, password, iot = await asyncio.to_thread(
            libdyson_rest_login, section["email"], section["password"], section["otp"], serial
        )
    creds = iot.iot_credentials
    return (
        devices,
        password,
        IotCredentials(
            endpoint=iot.endpoint,
            client_id=str(creds.client_id),
            token_key=creds.token_key,
            token_value=str(creds.token_value),
            token_signature=creds.token_signature,
            authorizer_name=creds.custom_authorizer_name,
        ),
    )


@pytest.mark.interop
async def test_libdyson_rest_and_paho_drive_the_device_through_the_cloud(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("libdyson_rest")
    assert world.dyson is not None
    tp11: SimulatedDevice = world.dyson.device(TP11)
    devices, password, creds = await log_in_with_libdyson_rest(world, monkeypatch, TP11)
    assert [d.serial_number for d in devices] == [TP11, "SIM-EU-527X0001"]
    assert devices[0].connected_configuration.mqtt.mqtt_root_topic_level == "438M"
    assert password == tp11.local_password
    assert creds.endpoint == world.endpoint
    assert creds.client_id == creds.token_value

    app = hass_dyson_client(creds, str(world.pki.ca_file))
    topics = tp11.topics
    with world.resolver():  # the real endpoint name and port 443, as hass-dyson connects
        await app.connect(creds.endpoint, 443)
        try:
            assert (await app.next("connect", "error")).rc == 0
            for topic in (topics.current, topics.faults, topics.connection):
                app.client.subscribe(topic, qos=0)
                assert (await app.next("subscribe")).rc == [0]
            request = {"msg": "REQUEST-CURRENT-STATE", "time": "2025-04-16T00:16:21.000Z"}
            app.client.publish(topics.command, json.dumps(request), qos=0)
            state = await next_msg(app, "CURRENT-STATE", topic=topics.current)
            assert state["product-state"] == tp11.device.state
            state_set = {
                "msg": "STATE-SET",
                "time": "2025-04-16T00:16:22.000Z",
                "mode-reason": "RAPP",
                "data": {"fnsp": "0007", "oson": "OFF"},
            }
            app.client.publish(topics.command, json.dumps(state_set), qos=1)
            change = await next_msg(app, "STATE-CHANGE", topic=topics.current)
            assert change["product-state"]["fnsp"] == ["AUTO", "0007"]
            assert change["product-state"]["oson"] == ["ON", "OFF"]
            assert tp11.device.state["fnsp"] == "0007"

            # The device's link drops: its will tells the cloud client it is gone.
            assert tp11.cloud is not None
            assert await world.gateway.drop(tp11.cloud.client_id)
            gone = await next_msg(app, "GONE-AWAY", topic=topics.connection)
            assert gone == {"msg": "GONE-AWAY"}
            await next_msg(app, "IM-BACK", topic=topics.connection)
        finally:
            await app.close()
    verdict = world.recorder.first("auth.verdict", stage="connect", client_id=creds.client_id)
    assert verdict is not None and verdict.ok
    authorizer = world.recorder.first("dyson.api.authorizer")
    assert authorizer is not None and authorizer.get("serial") == TP11
    timeline = json.dumps([e.to_json() for e in world.recorder], default=str)
    assert creds.token_signature not in timeline


@pytest.mark.interop
async def test_the_app_may_not_subscribe_to_everything_or_command_other_devices(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """app_policy: ``<root>/<sn>/#`` is granted (hass-dyson uses it), ``#`` closes the
    connection (aws-iot.md §4.5), another device's command topic is not the app's."""
    pytest.importorskip("libdyson_rest")
    assert world.dyson is not None
    _, _, creds = await log_in_with_libdyson_rest(world, monkeypatch, TP11)
    topics = world.dyson.device(TP11).topics
    app = hass_dyson_client(creds, str(world.pki.ca_file))
    await app.connect("127.0.0.1", world.gateway.wss_port)
    try:
        assert (await app.next("connect", "error")).rc == 0
        app.client.subscribe(f"{topics.prefix}#", qos=0)
        assert (await app.next("subscribe")).rc == [0]
        other = world.dyson.device("SIM-EU-527X0001").topics
        app.client.publish(other.command, b'{"msg":"REQUEST-CURRENT-STATE"}', qos=0)
        refused = await world.recorder.wait_for(
            "policy.verdict", timeout=TIMEOUT, ok=False, action="iot:Publish"
        )
        assert refused.get("target") == other.command
        await app.next("disconnect")
    finally:
        app.client.loop_stop()
    echo = hass_dyson_client(creds, str(world.pki.ca_file))
    await echo.connect("127.0.0.1", world.gateway.wss_port)
    try:
        assert (await echo.next("connect", "error")).rc == 0
        echo.client.subscribe("#", qos=0)
        await echo.next("disconnect")
        denied = world.recorder.find("policy.verdict", ok=False, action="iot:Subscribe")
        assert [e.get("target") for e in denied] == ["#"]
    finally:
        echo.client.loop_stop()


# One device, two sinks: its local broker and its cloud link


@pytest.fixture
async def both_world() -> AsyncIterator[World]:
    """A TP04 reachable locally and through the cloud (the default mode)."""
    config = WorldConfig(cognito=False, dyson=dyson_config(DysonDeviceSpec(product_type="438")))
    async with World(config) as running:
        assert running.dyson is not None
        device = next(iter(running.dyson))
        assert device.cloud is not None and device.local is not None
        await device.cloud.wait_connected(TIMEOUT)
        yield running


class LocalPaho(PahoClient):
    """paho on a device's own broker: plain TCP, MQTT 3.1, serial and apPasswordHash
    (dyson.md §1.1, §1.2), with :class:`PahoClient`'s awaitable event queue."""

    def __init__(self, client_id: str, *, username: str, password: str) -> None:
        self.events: queue.Queue[Happened] = queue.Queue()
        self.client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv31,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish


async def cloud_app(world: World, topics: Any) -> PahoClient:
    """A cloud client with the world's own signing authorizer, subscribed to ``status/#``."""
    assert world.authorizer_key is not None
    token = "app-token-1"
    client = PahoClient(
        "cloud-app",
        websocket=True,
        ca_file=str(world.pki.ca_file),
        headers={
            "Host": world.endpoint,
            "token": token,
            "X-Amz-CustomAuthorizer-Name": "iot-harness-authorizer",
            "X-Amz-CustomAuthorizer-Signature": world.authorizer_key.sign(token),
        },
    )
    await client.connect("127.0.0.1", world.gateway.wss_port)
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe(f"{topics.prefix}status/#", qos=0)
    assert (await client.next("subscribe")).rc == [0]
    return client


async def test_local_and_cloud_clients_see_the_same_device(both_world: World) -> None:
    assert both_world.dyson is not None
    device = next(iter(both_world.dyson))
    section = both_world.descriptor()["dyson"]["devices"][0]
    assert section["local_port"] == device.local_port > 0
    topics = device.topics
    local = LocalPaho("local-app", username=device.serial, password=device.local_password)
    await local.connect(section["local_host"], section["local_port"])
    cloud = await cloud_app(both_world, topics)
    try:
        assert (await local.next("connect", "error")).rc == 0
        local.client.subscribe(topics.current, qos=0)
        assert (await local.next("subscribe")).rc == [0]
        # A command through the local broker: the cloud client sees the answer too.
        local.client.publish(
            topics.command, json.dumps({"msg": "STATE-SET", "data": {"fnsp": "0004"}})
        )
        assert (await next_msg(local, "STATE-CHANGE"))["product-state"]["fnsp"][1] == "0004"
        assert (await next_msg(cloud, "STATE-CHANGE"))["product-state"]["fnsp"][1] == "0004"
        # And the other way round.
        cloud.client.publish(
            topics.command, json.dumps({"msg": "STATE-SET", "data": {"fnsp": "0006"}})
        )
        assert (await next_msg(cloud, "STATE-CHANGE"))["product-state"]["fnsp"][1] == "0006"
        assert (await next_msg(local, "STATE-CHANGE"))["product-state"]["fnsp"][1] == "0006"
        via = [e.get("via") for e in both_world.recorder.find("dyson.command", msg="STATE-SET")]
        assert via == ["local", "cloud"]
    finally:
        await local.close()
        await cloud.close()


def libdyson_neon_set_speed(serial: str, password: str, host: str, speed: int) -> int | None:
    """libdyson-neon, unmodified: connects to ``host`` port 1883 with MQTT 3.1, reads the
    state, sets the speed, and reports the speed it then sees."""
    libdyson = pytest.importorskip("libdyson")
    device = libdyson.get_device(serial, password, "438")
    changed = threading.Event()
    device.add_message_listener(lambda _message_type: changed.set())
    device.connect(host)
    try:
        assert device.speed is None  # the TP04 capture runs in auto mode (dyson.md §3 A)
        changed.clear()
        device.set_speed(speed)
        assert changed.wait(2 * TIMEOUT), "libdyson-neon saw no STATE-CHANGE"
        seen: int | None = device.speed
        return seen
    finally:
        device.disconnect()


@pytest.mark.interop
@pytest.mark.filterwarnings("ignore:Callback API version 1 is deprecated:DeprecationWarning")
async def test_libdyson_neon_by_name_on_port_1883_and_the_cloud_sees_it(both_world: World) -> None:
    """libdyson-neon hard-codes port 1883; the resolver maps ``<serial>.local:1883`` to the
    device's broker. Its change reaches a cloud client through the device's cloud link."""
    pytest.importorskip("libdyson")
    assert both_world.dyson is not None
    device = next(iter(both_world.dyson))
    cloud = await cloud_app(both_world, device.topics)
    try:
        with both_world.resolver():
            seen = await asyncio.to_thread(
                libdyson_neon_set_speed,
                device.serial,
                device.local_password,
                device.local_hostname,
                7,
            )
        assert seen == 7
        change = await next_msg(cloud, "STATE-CHANGE")
        assert change["product-state"]["fnsp"][1] == "0007"
        assert change["mode-reason"] == "LAPP"
    finally:
        await cloud.close()


# iot-harness serve --devices: the shared contract check


@pytest.mark.interop
@pytest.mark.skipif(
    not CHECK_DESCRIPTOR.is_file(),
    reason="../shared/contract/check-descriptor is absent (a plain clone has no ../shared)",
)
@pytest.mark.skipif(
    shutil.which("iot-harness", path=str(BIN)) is None,
    reason="the iot-harness console script is not installed next to this interpreter",
)
def test_the_shared_contract_check_passes_with_devices(tmp_path: Path) -> None:
    env = {"PATH": f"{BIN}:/usr/bin:/bin"}
    result = subprocess.run(  # noqa: S603 - our own script and arguments
        [
            sys.executable,
            str(CHECK_DESCRIPTOR),
            "--state-dir",
            str(tmp_path),
            "--devices",
            "438,527",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "descriptor contract holds" in result.stdout
    assert "Dyson cloud https://127.0.0.1:" in result.stderr


# The API and each local broker on addresses of their own (the sandbox's 127.0.0.3, .4, ...)


def bindable(*addresses: str) -> str | None:
    """Why one of ``addresses`` cannot be bound here, or None when all can."""
    for address in addresses:
        try:
            with socket.socket() as probe:
                probe.bind((address, 0))
        except OSError as exc:
            return f"cannot bind {address} on this machine outside a namespace: {exc}"
    return None


def tls_handshake(address: str, port: int, ca_file: Path, name: str) -> None:
    """A TLS handshake with ``address:port`` whose certificate must cover ``name``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((address, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=name),
    ):
        pass


def test_own_addresses_must_not_be_empty() -> None:
    with pytest.raises(ConfigError, match="api_host"):
        DysonConfig(api_host="")
    with pytest.raises(ConfigError, match="local_host"):
        DysonDeviceSpec(local_host="")


async def test_the_api_and_a_local_broker_listen_on_their_own_addresses() -> None:
    if why := bindable("127.0.0.3", "127.0.0.4"):
        pytest.skip(why)
    config = WorldConfig(
        cognito=False,
        dyson=dyson_config(
            DysonDeviceSpec(product_type="438", mode="local", local_host="127.0.0.4"),
            DysonDeviceSpec(product_type="527", mode="cloud", local_host="127.0.0.5"),
            api_host="127.0.0.3",
        ),
    )
    async with World(config) as world:
        assert world.dyson is not None
        api_port = world.dyson.cloud.port
        section = world.descriptor()["dyson"]
        assert section["api_url"] == f"https://127.0.0.3:{api_port}"
        routes = world.routes()
        for name in DYSON_API_HOSTS:
            assert (routes[name].address, routes[name].port(443)) == ("127.0.0.3", api_port)
        for name in ("127.0.0.3", *DYSON_API_HOSTS):
            await asyncio.to_thread(tls_handshake, "127.0.0.3", api_port, world.pki.ca_file, name)
        local, cloud_only = list(world.dyson)
        described = section["devices"][0]
        assert (described["local_host"], described["local_port"]) == ("127.0.0.4", local.local_port)
        route = routes[local.local_hostname]
        assert (route.address, route.port(1883)) == ("127.0.0.4", local.local_port)
        # A cloud-only device has no broker; its address is only what the descriptor says.
        assert cloud_only.local_port == 0 and cloud_only.local_hostname not in routes
        # paho by name on 1883 reaches the broker on the device's own address.
        client = LocalPaho("own-address", username=local.serial, password=local.local_password)
        with world.resolver():
            await client.connect(local.local_hostname, 1883)
            assert (await client.next("connect", "error")).rc == 0
        await client.close()
