"""libdyson-neon reads the simulated device's messages and drives it, without a network.

libdyson-neon (PyPI ``libdyson-neon``) is the client the interop suite runs over real
sockets later; here its device classes get our messages through their own
``_on_message`` handler, and their commands are taken from a stand-in for the paho client
they publish with. Skipped when libdyson-neon is not installed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage

from simulators.dyson.device import CommandHandled, CommandIgnored, DeviceResult, DysonDevice
from simulators.dyson.local_auth import ap_password_hash, parse_wifi_ssid
from simulators.dyson.profiles import PROFILES, get_profile

libdyson = pytest.importorskip("libdyson")

SERIAL = "NK6-EU-HAA0000A"
NOW = 1_744_762_581.0


class RecordingClient:
    """Takes the place of libdyson's paho client: keeps what it publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: str, qos: int = 0) -> None:
        self.published.append((topic, payload.encode(), qos))


class Pair:
    """A simulated device and a libdyson device object talking through the stand-in."""

    def __init__(self, name: str) -> None:
        self.device = DysonDevice(get_profile(name), serial=SERIAL, now=NOW, uptime_s=3600)
        self.client = RecordingClient()
        self.lib: Any = libdyson.get_device(SERIAL, ap_password_hash("abcdefgh"), name)
        self.lib._mqtt_client = self.client
        self.lib._connected.set()
        self.now = NOW
        self.results: list[DeviceResult] = []

    def deliver(self, result: DeviceResult) -> None:
        for out in result.outgoing:
            message = MQTTMessage(topic=out.topic.encode())
            message.payload = out.payload
            self.lib._on_message(None, None, message)

    def pump(self) -> None:
        """Hand every command libdyson published to the device, its answers back."""
        while self.client.published:
            topic, payload, _ = self.client.published.pop(0)
            self.now += 1
            result = self.device.handle(topic, payload, now=self.now)
            self.results.append(result)
            self.deliver(result)

    def start(self) -> None:
        """libdyson's ``_request_first_data``: state, then environmental data."""
        self.lib.request_current_status()
        self.lib.request_environmental_data()
        self.pump()


@pytest.mark.parametrize("name", list(PROFILES))
def test_libdyson_picks_the_class_and_topic(name: str) -> None:
    pair = Pair(name)
    assert pair.lib._command_topic == pair.device.topics.command
    assert pair.lib._status_topic == pair.device.topics.current


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "438",
            {
                "is_on": False,
                "speed": None,
                "auto_mode": False,
                "oscillation": False,
                "temperature": -1,
                "humidity": -1,
                "particulate_matter_2_5": -1,
            },
            id="438-TP04-off",
        ),
        pytest.param(
            "438M",
            {
                "is_on": True,
                "speed": None,
                "auto_mode": True,
                "oscillation": True,
                "fan_state": False,
                "particulate_matter_2_5": 5,
                "carbon_filter_life": None,
            },
            id="438M-TP11",
        ),
        pytest.param(
            "527",
            {
                "is_on": True,
                "speed": 5,
                "auto_mode": False,
                "oscillation": True,
                "temperature": 299.8,
                "humidity": 64,
                "heat_mode_is_on": False,
                "heat_target": 276.0,
                "volatile_organic_compounds": 0.4,
            },
            id="527-HP04",
        ),
        pytest.param(
            "475",
            {
                "is_on": True,
                "speed": None,
                "auto_mode": True,
                "oscillation": False,
                "temperature": 296.7,
                "humidity": 54,
                "particulates": 4,
                "filter_life": 2087,
            },
            id="475-TP02",
        ),
        pytest.param(
            "358",
            {
                "is_on": True,
                "speed": 5,
                "humidification": False,
                "target_humidity": 50,
                "auto_target_humidity": 35,
                "time_until_next_clean": 1948,
                "temperature": 299.4,
            },
            id="358-PH01",
        ),
    ],
)
def test_libdyson_reads_state_and_environment(name: str, expected: dict[str, Any]) -> None:
    pair = Pair(name)
    pair.start()
    assert pair.lib._status_data_available.is_set()
    assert pair.lib._environmental_data_available.is_set()
    assert {attribute: getattr(pair.lib, attribute) for attribute in expected} == expected


def test_libdyson_drives_a_tp11() -> None:
    pair = Pair("438M")
    pair.start()
    pair.lib.set_speed(7)  # fpwr=ON, fnsp=0007 at QoS 1 (§1.5)
    assert pair.client.published[0][2] == 1
    pair.pump()
    assert (pair.lib.speed, pair.lib.auto_mode, pair.lib.fan_state) == (7, False, True)
    pair.lib.enable_oscillation(90, 270)
    pair.pump()
    assert pair.lib.oscillation and pair.lib.oscillation_status
    assert (pair.lib.oscillation_angle_low, pair.lib.oscillation_angle_high) == (90, 270)
    pair.lib.enable_auto_mode()
    pair.pump()
    assert pair.lib.auto_mode and pair.lib.speed is None
    pair.lib.enable_night_mode()
    pair.lib.turn_off()
    pair.pump()
    assert pair.lib.night_mode and not pair.lib.is_on and not pair.lib.oscillation_status
    pair.lib.enable_continuous_monitoring()
    pair.lib.reset_filter()
    pair.pump()
    assert all(isinstance(r.events[-1], CommandHandled) for r in pair.results)


def test_libdyson_drives_a_heater() -> None:
    pair = Pair("527")
    pair.start()
    pair.lib.set_heat_target(300)  # hmod=HEAT, hmax=3000; the room is 299.8 K
    pair.pump()
    assert pair.lib.heat_mode_is_on and pair.lib.heat_status_is_on
    assert pair.lib.heat_target == 300.0
    pair.lib.disable_heat_mode()
    pair.pump()
    assert not pair.lib.heat_status_is_on


def test_libdyson_drives_a_link_fan() -> None:
    pair = Pair("475")
    pair.start()
    pair.lib.set_speed(4)  # fmod=FAN, fnsp=0004
    pair.pump()
    assert (pair.lib.is_on, pair.lib.auto_mode, pair.lib.speed) == (True, False, 4)
    pair.lib.turn_off()
    pair.pump()
    assert not pair.lib.is_on and not pair.lib.fan_state
    pair.lib.enable_auto_mode()
    pair.pump()
    assert pair.lib.is_on and pair.lib.auto_mode
    pair.lib.set_air_quality_target(libdyson.const.AirQualityTarget.SENSITIVE)
    pair.pump()
    assert pair.lib.air_quality_target is libdyson.const.AirQualityTarget.SENSITIVE


def test_libdyson_drives_a_humidifier() -> None:
    pair = Pair("358")
    pair.start()
    pair.lib.set_target_humidity(60)  # humt=0060, haut=OFF
    pair.lib.enable_humidification()
    pair.lib.set_water_hardness(libdyson.const.WaterHardness.HARD)
    pair.pump()
    assert pair.lib.humidification and pair.lib.target_humidity == 60
    assert pair.lib.water_hardness is libdyson.const.WaterHardness.HARD
    assert pair.device.state["msta"] == "HUMD"  # 34 % is below the 60 % target


def test_libdyson_short_sleep_timer_is_outside_the_spec_range() -> None:
    """libdyson allows 1-540 minutes; §5 gives 0015-0540, so the device ignores 5."""
    pair = Pair("438M")
    pair.start()
    pair.lib.set_sleep_timer(5)
    pair.lib.set_sleep_timer(30)
    pair.pump()
    short, thirty = pair.results[-2:]
    assert isinstance(short.events[-1], CommandIgnored)
    assert short.events[-1].reason == "invalid-value"
    assert json.loads(thirty.outgoing[0].payload)["product-state"]["sltm"] == ["OFF", "0030"]
    assert pair.lib.sleep_timer == -1  # libdyson reads the timer from sensor data only
    pair.lib.request_environmental_data()
    pair.pump()
    assert pair.lib.sleep_timer == 30


def test_wifi_credentials_agree_with_libdyson() -> None:
    """§1.2 derivation B, as libdyson-neon's ``get_mqtt_info_from_wifi_info`` computes it."""
    serial, credential, device_type = libdyson.get_mqtt_info_from_wifi_info(
        "DYSON-NK6-EU-HAA0000A-455A", "abcdefgh"
    )
    identity = parse_wifi_ssid("DYSON-NK6-EU-HAA0000A-455A")
    assert (identity.serial, identity.product_type) == (serial, device_type)
    assert ap_password_hash("abcdefgh") == credential
