"""The pure Dyson device: requests, STATE-SET and derived fields, sensors, time, faults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from harness.errors import ConfigError
from simulators.dyson.device import (
    CommandHandled,
    CommandIgnored,
    DeviceResult,
    DysonDevice,
    FaultsChanged,
    SensorsSettled,
    StateChanged,
)
from simulators.dyson.fields import FieldSpec
from simulators.dyson.messages import FAULT_CATEGORIES, Outgoing
from simulators.dyson.profiles import PROFILES, Family, get_profile

SERIAL = "NK6-EU-HAA0000A"
NOW = 1_744_762_581.0  # 2025-04-16T00:16:21Z
JSONObject = dict[str, Any]


def make(name: str, **options: Any) -> DysonDevice:
    return DysonDevice(get_profile(name), serial=SERIAL, now=NOW, **options)


def send(
    device: DysonDevice, command: JSONObject | bytes, *, now: float = NOW, topic: str | None = None
) -> DeviceResult:
    payload = command if isinstance(command, bytes) else json.dumps(command).encode()
    return device.handle(device.topics.command if topic is None else topic, payload, now=now)


def state_set(
    device: DysonDevice, data: JSONObject, *, now: float = NOW, mode_reason: str = "RAPP"
) -> DeviceResult:
    return send(
        device,
        {
            "msg": "STATE-SET",
            "time": "2025-04-16T00:16:32Z",
            "mode-reason": mode_reason,
            "data": data,
        },
        now=now,
    )


def only(result: DeviceResult) -> JSONObject:
    assert len(result.outgoing) == 1, result.msgs
    return result.outgoing[0].message()


def ignored(result: DeviceResult) -> CommandIgnored:
    assert result.outgoing == ()
    [event] = result.events
    assert isinstance(event, CommandIgnored)
    return event


# Requests (§4.4) -------------------------------------------------------------------------

REQUESTS = [
    (name, request, answers, topic)
    for name, profile in PROFILES.items()
    for request, answers, topic in [
        (
            "REQUEST-CURRENT-STATE",
            ("CURRENT-STATE", "ENVIRONMENTAL-CURRENT-SENSOR-DATA")
            if profile.env_with_state
            else ("CURRENT-STATE",),
            "status/current",
        ),
        (
            "REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA",
            ("ENVIRONMENTAL-CURRENT-SENSOR-DATA",),
            "status/current",
        ),
        ("REQUEST-CURRENT-FAULTS", ("CURRENT-FAULTS",), "status/faults"),
        ("LOCATE", ("LOCATION",) if profile.supports_locate else (), "status/current"),
    ]
]


@pytest.mark.parametrize(
    ("name", "request_msg", "answers", "topic"),
    REQUESTS,
    ids=[f"{name}-{request}" for name, request, _, _ in REQUESTS],
)
@pytest.mark.parametrize("style", ["bare", "hass-dyson", "libdyson"])
def test_requests_are_answered(
    name: str, request_msg: str, answers: tuple[str, ...], topic: str, style: str
) -> None:
    """hass-dyson sends bare ``{"msg": ...}`` or ``.000Z`` times with RAPP; libdyson ``Z``."""
    device = make(name)
    command: JSONObject = {"msg": request_msg}
    if style == "hass-dyson":
        command |= {"time": "2025-07-21T18:58:52.000Z", "mode-reason": "RAPP"}
    elif style == "libdyson":
        command |= {"time": "2025-07-21T18:58:52Z"}
    result = send(device, command)
    if not answers:
        assert ignored(result).reason == "unsupported-msg"
        return
    assert result.msgs == answers
    for out in result.outgoing:
        assert out.topic == f"{name}/{SERIAL}/{topic}"
        assert (out.qos, out.retain) == (0, False)  # §1.5
    [event] = result.events
    assert isinstance(event, CommandHandled)
    assert event.answered == answers


@pytest.mark.parametrize("name", [n for n, p in PROFILES.items() if p.env_with_state])
def test_env_data_comes_with_state_at_the_same_time(name: str) -> None:
    state, env = send(make(name), {"msg": "REQUEST-CURRENT-STATE"}).outgoing
    assert state.message()["time"] == env.message()["time"] == "2025-04-16T00:16:21.000Z"


def test_link_numbers_messages_within_a_second() -> None:
    """TP02 capture: CURRENT-FAULTS ``.000Z`` then CURRENT-STATE ``.001Z`` (§4.1)."""
    device = make("475")
    faults = only(send(device, {"msg": "REQUEST-CURRENT-FAULTS"}, now=NOW + 0.2))
    state = only(send(device, {"msg": "REQUEST-CURRENT-STATE"}, now=NOW + 0.7))
    later = only(send(device, {"msg": "REQUEST-CURRENT-STATE"}, now=NOW + 1.1))
    assert faults["time"] == "2025-04-16T00:16:21.000Z"
    assert state["time"] == "2025-04-16T00:16:21.001Z"
    assert later["time"] == "2025-04-16T00:16:22.000Z"


def test_schedule_set_is_answered_on_the_scheduler_topic() -> None:
    device = make("438")
    result = send(device, {"msg": "SCHEDULE-SET", "version": "80a0"})
    out = result.outgoing[0]
    assert out.topic == f"438/{SERIAL}/status/scheduler"
    assert out.message() == {
        "msg": "SCHEDULE-UPDATED",
        "time": "2025-04-16T00:16:21.000Z",
        "version": "80a0",
    }


def test_current_faults_lists_every_category() -> None:
    message = only(send(make("527"), {"msg": "REQUEST-CURRENT-FAULTS"}))
    assert list(message) == ["msg", "time", *FAULT_CATEGORIES]
    assert message["product-errors"] == dict.fromkeys(
        ["amf1", "com1", "fs01", "psu1", "sen1", "ui01"], "OK"
    )


# STATE-SET and derived fields (§4.3, §5) -------------------------------------------------


def test_tp11_speed_while_auto_matches_the_capture() -> None:
    """§4.3: TP11 after STATE-SET ``fnsp`` 0005 while ``auto`` was ON, byte for byte."""
    result = state_set(make("438M"), {"fnsp": "0005"}, now=NOW + 11)
    assert result.outgoing[0].payload == (
        b'{"msg":"STATE-CHANGE","time":"2025-04-16T00:16:32.000Z","mode-reason":"RAPP",'
        b'"state-reason":"MODE","product-state":{"ancp":["CUST","CUST"],"auto":["ON","OFF"],'
        b'"bril":["0002","0002"],"cflr":["INV","INV"],"cflt":["NONE","NONE"],'
        b'"fnsp":["AUTO","0005"],"fnst":["OFF","FAN"],"fpwr":["ON","ON"],'
        b'"hflr":["0100","0100"],"hflt":["GCOM","GCOM"],"nmdv":["0004","0004"],'
        b'"nmod":["OFF","OFF"],"osal":["0136","0136"],"osau":["0226","0226"],'
        b'"oscs":["IDLE","ON"],"oson":["ON","ON"],"rhtm":["ON","ON"],"sltm":["OFF","OFF"],'
        b'"wacd":["NONE","NONE"]},"scheduler":{"dstv":"0001","srsc":"0000000000000000",'
        b'"tzid":"0001"}}'
    )
    [event] = result.events
    assert isinstance(event, CommandHandled)
    assert event.changed == ("auto", "fnsp", "fnst", "oscs")
    assert event.mode_reason == "RAPP"


DERIVED = [
    pytest.param(
        "438M",
        [],
        {"fpwr": "OFF"},
        {"fpwr": ("ON", "OFF"), "oscs": ("IDLE", "OFF")},
        id="438M-power-off-stops-oscillation-keeps-auto",
    ),
    pytest.param(
        "438M",
        [],
        {"auto": "OFF"},
        {
            "auto": ("ON", "OFF"),
            "fnsp": ("AUTO", "0001"),
            "fnst": ("OFF", "FAN"),
            "oscs": ("IDLE", "ON"),
        },
        id="438M-auto-off-runs-the-manual-speed",
    ),
    pytest.param("438M", [], {"sltm": "0015"}, {"sltm": ("OFF", "0015")}, id="438M-sleep-timer"),
    pytest.param(
        "438M",
        [],
        {"oson": "OFF"},
        {"oson": ("ON", "OFF"), "oscs": ("IDLE", "OFF")},
        id="438M-oscillation-off",
    ),
    pytest.param(
        "438M",
        [],
        {"osal": "0090", "osau": "0270", "ancp": "CUST", "oson": "ON"},
        {"osal": ("0136", "0090"), "osau": ("0226", "0270")},
        id="438M-custom-angles",
    ),
    pytest.param(
        "527",
        [],
        {"auto": "ON"},
        {
            "auto": ("OFF", "ON"),
            "fnsp": ("0005", "AUTO"),
            "fnst": ("FAN", "OFF"),
            "oscs": ("ON", "IDLE"),
        },
        id="527-auto-on-idles-in-clean-air",
    ),
    pytest.param(
        "527",
        [{"auto": "ON"}],
        {"auto": "OFF"},
        {
            "auto": ("ON", "OFF"),
            "fnsp": ("AUTO", "0005"),
            "fnst": ("OFF", "FAN"),
            "oscs": ("IDLE", "ON"),
        },
        id="527-auto-off-restores-speed",
    ),
    pytest.param(
        "527",
        [],
        {"fnsp": "AUTO"},
        {
            "auto": ("OFF", "ON"),
            "fnsp": ("0005", "AUTO"),
            "fnst": ("FAN", "OFF"),
            "oscs": ("ON", "IDLE"),
        },
        id="527-fnsp-auto-alone-turns-auto-on",
    ),
    pytest.param(
        "527",
        [],
        {"auto": "ON", "fnsp": "0007"},
        {
            "auto": ("OFF", "ON"),
            "fnsp": ("0005", "AUTO"),
            "fnst": ("FAN", "OFF"),
            "oscs": ("ON", "IDLE"),
        },
        id="527-explicit-auto-wins-over-speed",
    ),
    pytest.param(
        "527",
        [],
        {"fpwr": "ON", "fnsp": "0009"},
        {"fnsp": ("0005", "0009")},
        id="527-libdyson-set-speed",
    ),
    pytest.param(
        "527",
        [],
        {"hmod": "HEAT"},
        {"hmod": ("OFF", "HEAT")},
        id="527-heat-above-target-does-not-heat",
    ),
    pytest.param(
        "527",
        [],
        {"hmod": "HEAT", "hmax": "3000"},
        {"hmod": ("OFF", "HEAT"), "hmax": ("2760", "3000"), "hsta": ("OFF", "HEAT")},
        id="527-heat-below-target-heats",
    ),
    pytest.param(
        "527",
        [{"hmod": "HEAT", "hmax": "3000"}],
        {"fpwr": "OFF"},
        {
            "fpwr": ("ON", "OFF"),
            "fnst": ("FAN", "OFF"),
            "oscs": ("ON", "OFF"),
            "hsta": ("HEAT", "OFF"),
        },
        id="527-power-off-stops-heating",
    ),
    pytest.param(
        "527",
        [],
        {"rhtf": "RHTF"},
        {"cflr": ("0084", "0100"), "hflr": ("0084", "0100")},
        id="527-filter-reset",
    ),
    pytest.param(
        "527", [], {"hflr": "0100"}, {"hflr": ("0084", "0100")}, id="527-hass-dyson-filter-reset"
    ),
    pytest.param("438", [], {"fpwr": "ON"}, {"fpwr": ("OFF", "ON")}, id="438-power-on"),
    pytest.param(
        "438",
        [],
        {"nmod": "ON"},
        {"nmod": ("OFF", "ON"), "fnst": ("FAN", "OFF")},
        id="438-rules-apply-from-the-first-change",
    ),
    pytest.param(
        "438",
        [],
        {"fpwr": "ON", "oson": "OION"},
        {"fpwr": ("OFF", "ON"), "oson": ("OIOF", "OION"), "oscs": ("OFF", "ON")},
        id="438-oion-oscillates",
    ),
    pytest.param(
        "475",
        [],
        {"fmod": "OFF"},
        {"fmod": ("AUTO", "OFF"), "fnsp": ("AUTO", "0001"), "fnst": ("FAN", "OFF")},
        id="475-fmod-auto-to-off-capture",
    ),
    pytest.param(
        "475",
        [{"fmod": "OFF"}],
        {"fmod": "AUTO"},
        {"fmod": ("OFF", "AUTO"), "fnsp": ("0001", "AUTO"), "fnst": ("OFF", "FAN")},
        id="475-fmod-off-to-auto-capture",
    ),
    pytest.param(
        "475",
        [],
        {"fmod": "FAN", "fnsp": "0004"},
        {"fmod": ("AUTO", "FAN"), "fnsp": ("AUTO", "0004")},
        id="475-libdyson-set-speed",
    ),
    pytest.param(
        "475",
        [],
        {"fnsp": "0003"},
        {"fmod": ("AUTO", "FAN"), "fnsp": ("AUTO", "0003")},
        id="475-speed-under-auto-selects-fan",
    ),
    pytest.param("475", [], {"rstf": "RSTF"}, {"filf": ("2087", "4300")}, id="475-filter-reset"),
    pytest.param(
        "475",
        [],
        {"qtar": "0001", "oson": "ON"},
        {"qtar": ("0004", "0001"), "oson": ("OFF", "ON")},
        id="475-link-fields",
    ),
    pytest.param(
        "358",
        [],
        {"hume": "HUMD"},
        {"hume": ("OFF", "HUMD"), "msta": ("OFF", "HUMD")},
        id="358-humidify-below-target",
    ),
    pytest.param(
        "358",
        [],
        {"hume": "HUMD", "humt": "0030"},
        {"hume": ("OFF", "HUMD"), "humt": ("0050", "0030")},
        id="358-humidify-above-target-idles",
    ),
    pytest.param(
        "358",
        [],
        {"hume": "HUMD", "haut": "ON", "humt": "0030"},
        {
            "hume": ("OFF", "HUMD"),
            "haut": ("OFF", "ON"),
            "humt": ("0050", "0030"),
            "msta": ("OFF", "HUMD"),
        },
        id="358-humidify-auto-uses-rect",
    ),
    pytest.param(
        "358",
        [],
        {"ancp": "BRZE", "wath": "0675"},
        {"ancp": ("0090", "BRZE"), "wath": ("2025", "0675")},
        id="358-breeze-hardness",
    ),
]


@pytest.mark.parametrize(("name", "before", "data", "expected"), DERIVED)
def test_state_set_derives_fields(
    name: str, before: list[JSONObject], data: JSONObject, expected: dict[str, tuple[str, str]]
) -> None:
    device = make(name)
    for earlier in before:
        state_set(device, earlier)
    old_state = device.state
    result = state_set(device, data, mode_reason="LAPP")
    message = only(result)
    assert message["msg"] == "STATE-CHANGE"
    assert (message["mode-reason"], message["state-reason"]) == ("LAPP", "MODE")
    pairs = message["product-state"]
    assert list(pairs) == list(old_state)  # every field, not only the changed ones (§4.3)
    assert all(pairs[k][0] == v for k, v in old_state.items())
    changed = {k: tuple(v) for k, v in pairs.items() if v[0] != v[1]}
    assert changed == expected
    assert device.state == {k: v[1] for k, v in pairs.items()}
    [event] = result.events
    assert isinstance(event, CommandHandled)
    assert set(event.changed) == set(expected)


def test_current_state_follows_the_last_change() -> None:
    device = make("527")
    state_set(device, {"fnsp": "0008"}, mode_reason="LAPP")
    message = send(device, {"msg": "REQUEST-CURRENT-STATE"}, now=NOW + 5).outgoing[0].message()
    assert message["mode-reason"] == "LAPP" and message["product-state"]["fnsp"] == "0008"


def test_state_set_without_change_publishes_nothing() -> None:
    """§4.4: nothing if nothing changed (inferred)."""
    device = make("527")
    result = state_set(device, {"fpwr": "ON", "fnsp": "0005"})
    assert result.outgoing == ()
    [event] = result.events
    assert isinstance(event, CommandHandled) and event.changed == () and event.answered == ()


@pytest.mark.parametrize("reason", [None, "BOGUS", 7])
def test_state_set_without_a_known_mode_reason_records_none(reason: object) -> None:
    device = make("527")
    command: JSONObject = {"msg": "STATE-SET", "data": {"fnsp": "0002"}}
    if reason is not None:
        command["mode-reason"] = reason
    assert only(send(device, command))["mode-reason"] == "NONE"


def test_not_fitted_filter_stays_inv() -> None:
    device = make("358")
    result = state_set(device, {"cflr": "0100"})
    assert result.outgoing == () and device.state["cflr"] == "INV"


# Ignored commands (§1.4 invalid_command, §5 rule 6) --------------------------------------

IGNORED = [
    pytest.param("438M", b"{}", "438/" + SERIAL + "/command", "wrong-topic", id="wrong-root"),
    pytest.param("438M", b"\xff\xfe", None, "not-utf8", id="not-utf8"),
    pytest.param("438M", b"", None, "malformed-json", id="empty"),
    pytest.param(
        "438M", b'{"msg": "REQUEST-CURRENT-STATE"', None, "malformed-json", id="truncated-json"
    ),
    pytest.param("438M", b"[" * 100_000, None, "malformed-json", id="deeply-nested"),
    pytest.param("438M", b"1" * 5000, None, "malformed-json", id="huge-int"),
    pytest.param("438M", b"[]", None, "not-an-object", id="array"),
    pytest.param("438M", b"null", None, "not-an-object", id="null"),
    pytest.param("438M", b"{}", None, "missing-msg", id="no-msg"),
    pytest.param("438M", {"msg": 5}, None, "missing-msg", id="msg-not-string"),
    pytest.param("438M", {"msg": "START"}, None, "unknown-msg", id="robot-command"),
    pytest.param("438M", {"msg": "request-current-state"}, None, "unknown-msg", id="lower-case"),
    pytest.param("438M", {"msg": "CURRENT-STATE"}, None, "unknown-msg", id="device-message"),
    pytest.param("438", {"msg": "LOCATE"}, None, "unsupported-msg", id="locate-on-tp04"),
    pytest.param("438M", {"msg": "STATE-SET"}, None, "missing-data", id="no-data"),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": [["fpwr", "ON"]]},
        None,
        "missing-data",
        id="data-not-object",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fdir": "ON"}},
        None,
        "unknown-field",
        id="tp11-has-no-fdir",
    ),
    pytest.param(
        "475",
        {"msg": "STATE-SET", "data": {"fpwr": "ON"}},
        None,
        "unknown-field",
        id="link-has-no-fpwr",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"rstf": "RSTF", "zzzz": "1"}},
        None,
        "unknown-field",
        id="one-bad-field-voids-all",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fnst": "FAN"}},
        None,
        "read-only-field",
        id="read-only-fnst",
    ),
    pytest.param(
        "527",
        {"msg": "STATE-SET", "data": {"hsta": "HEAT"}},
        None,
        "read-only-field",
        id="read-only-hsta",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fpwr": "on"}},
        None,
        "invalid-value",
        id="lower-case-value",
    ),
    pytest.param(
        "438M", {"msg": "STATE-SET", "data": {"fnsp": "0011"}}, None, "invalid-value", id="speed-11"
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fnsp": 5}},
        None,
        "invalid-value",
        id="number-not-string",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fnsp": "5"}},
        None,
        "invalid-value",
        id="not-zero-padded",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"fnsp": "\u0660\u0660\u0660\u0665"}},
        None,
        "invalid-value",
        id="arabic-digits",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"sltm": "0010"}},
        None,
        "invalid-value",
        id="sleep-below-15",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"osal": "0200"}},
        None,
        "invalid-value",
        id="angles-26-apart",
    ),
    pytest.param(
        "438M",
        {"msg": "STATE-SET", "data": {"osal": "0300", "osau": "0100"}},
        None,
        "invalid-value",
        id="angles-reversed",
    ),
    pytest.param(
        "527",
        {"msg": "STATE-SET", "data": {"hmax": "3200"}},
        None,
        "invalid-value",
        id="heat-target-too-high",
    ),
    pytest.param(
        "527",
        {"msg": "STATE-SET", "data": {"hflr": "0050"}},
        None,
        "invalid-value",
        id="filter-life-not-a-reset",
    ),
    pytest.param(
        "358",
        {"msg": "STATE-SET", "data": {"ancp": "0350"}},
        None,
        "invalid-value",
        id="humidifier-angle-profile",
    ),
    pytest.param("438M", {"msg": "SCHEDULE-SET"}, None, "invalid-value", id="schedule-no-version"),
    pytest.param(
        "438M",
        {"msg": "SCHEDULE-SET", "version": "zz"},
        None,
        "invalid-value",
        id="schedule-bad-version",
    ),
]


@pytest.mark.parametrize(("name", "command", "topic", "reason"), IGNORED)
def test_bad_commands_are_ignored_with_an_event(
    name: str, command: JSONObject | bytes, topic: str | None, reason: str
) -> None:
    device = make(name)
    before = (device.state, device.mode_reason, device.faults)
    event = ignored(send(device, command, topic=topic))
    assert event.reason == reason
    assert event.explain
    assert event.fields()["ok"] is False and event.kind == "dyson.command.ignored"
    assert (device.state, device.mode_reason, device.faults) == before


# Sensors: OFF, INIT, settled, FAIL (§5) --------------------------------------------------


def test_gas_sensors_warm_up_then_settle() -> None:
    device = make("527")
    assert device.next_deadline() == NOW + 180
    warming = device.sensor_data(NOW + 179)
    assert (warming["va10"], warming["noxl"]) == ("INIT", "INIT")
    assert warming["tact"] == "2998" and warming["p25r"] == "0000"  # the 527 capture pattern
    assert device.tick(NOW + 100).events == ()
    result = device.tick(NOW + 180)
    assert result.outgoing == ()
    assert result.events == (SensorsSettled(SERIAL, ("noxl", "va10")),)
    settled = only(
        send(device, {"msg": "REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA"}, now=NOW + 180)
    )
    assert settled["data"]["va10"] == "0004" and settled["data"]["noxl"] == "0000"
    assert device.tick(NOW + 500).events == ()  # announced once
    assert device.next_deadline() is None


def test_a_device_that_has_been_on_a_while_is_settled() -> None:
    device = make("527", uptime_s=3600)
    assert device.sensor_data(NOW)["va10"] == "0004"
    assert device.next_deadline() is None


def test_warmup_can_be_shortened() -> None:
    device = make("358", warmup_s=5)
    assert device.sensor_data(NOW + 4)["va10"] == "INIT"
    assert device.sensor_data(NOW + 5)["va10"] == "0008"


def test_sensors_are_off_with_fan_and_monitoring_off_and_restart_warm() -> None:
    """§5: OFF while the fan is off with ``rhtm`` OFF; turning on restarts the warm-up."""
    device = make("438", uptime_s=3600)
    assert set(device.sensor_data(NOW).values()) == {"OFF"}
    state_set(device, {"fpwr": "ON"}, now=NOW + 10)
    data = device.sensor_data(NOW + 10)
    assert data["tact"] == "2924" and data["va10"] == "INIT"
    assert device.sensor_data(NOW + 190)["va10"] == "0005"


def test_continuous_monitoring_keeps_sensors_on_with_the_fan_off() -> None:
    device = make("527", uptime_s=3600)
    state_set(device, {"fpwr": "OFF"})
    assert device.sensor_data(NOW + 1)["va10"] == "0004"
    state_set(device, {"rhtm": "OFF"}, now=NOW + 2)
    assert device.sensor_data(NOW + 3)["tact"] == "OFF"


def test_link_vact_warms_up() -> None:
    """thoukydides ``475.jsonl``: ``vact`` INIT right after the fan starts."""
    device = make("475")
    assert device.sensor_data(NOW) == {
        "tact": "2967",
        "hact": "0054",
        "pact": "0004",
        "vact": "INIT",
        "sltm": "OFF",
    }


def test_sensor_fault_reads_fail() -> None:
    """``475`` capture: ``t&hs`` FAIL makes ``tact`` and ``hact`` read FAIL."""
    device = make("475", uptime_s=3600)
    device.raise_fault("t&hs", now=NOW)
    data = device.sensor_data(NOW)
    assert (data["tact"], data["hact"], data["pact"]) == ("FAIL", "FAIL", "0004")


# Time: periodic messages and the sleep timer ---------------------------------------------


def test_no_unprompted_sensor_data_by_default() -> None:
    """§4.4: the device sends sensor data only when asked."""
    device = make("438M")
    assert device.tick(NOW + 3600).outgoing == ()


def test_periodic_sensor_data() -> None:
    device = make("438M", env_push_interval_s=30)
    assert device.next_deadline() == NOW + 30
    assert device.tick(NOW + 29).outgoing == ()
    pushed = device.tick(NOW + 30)
    assert pushed.msgs == ("ENVIRONMENTAL-CURRENT-SENSOR-DATA",)
    assert pushed.outgoing[0].topic == f"438M/{SERIAL}/status/current"
    assert device.tick(NOW + 59).outgoing == ()
    assert device.tick(NOW + 125).msgs == ("ENVIRONMENTAL-CURRENT-SENSOR-DATA",)  # one, not 3
    assert device.next_deadline() == NOW + 150


def test_sleep_timer_counts_down_and_turns_the_fan_off() -> None:
    device = make("527", uptime_s=3600)
    state_set(device, {"sltm": "0015"})
    assert device.sensor_data(NOW + 1)["sltm"] == "0015"
    assert device.tick(NOW + 59).outgoing == ()
    assert device.next_deadline() == NOW + 60
    minute = device.tick(NOW + 60)
    message = only(minute)
    assert message["state-reason"] == "ENV" and message["mode-reason"] == "RAPP"
    assert message["product-state"]["sltm"] == ["0015", "0014"]
    assert minute.events == (StateChanged(SERIAL, "sleep-timer", ("sltm",)),)
    assert device.sensor_data(NOW + 61)["sltm"] == "0014"
    end = device.tick(NOW + 15 * 60)
    pairs = only(end)["product-state"]
    assert pairs["sltm"] == ["0014", "OFF"] and pairs["fpwr"] == ["ON", "OFF"]
    assert pairs["fnst"] == ["FAN", "OFF"] and pairs["oscs"] == ["ON", "OFF"]
    assert device.sensor_data(NOW + 15 * 60)["sltm"] == "OFF"
    assert device.tick(NOW + 3600).outgoing == ()


def test_turning_the_fan_off_cancels_the_sleep_timer() -> None:
    device = make("527")
    state_set(device, {"sltm": "0030"})
    pairs = only(state_set(device, {"fpwr": "OFF"}, now=NOW + 5))["product-state"]
    assert pairs["sltm"] == ["0030", "OFF"]
    assert device.next_deadline() == NOW + 180  # only the warm-up is left


def test_link_sleep_timer_lives_in_sensor_data() -> None:
    device = make("475", uptime_s=3600)
    result = state_set(device, {"sltm": "0015"})
    assert result.outgoing == ()  # no product-state field changed
    assert device.sensor_data(NOW + 61)["sltm"] == "0014"
    pairs = only(device.tick(NOW + 15 * 60))["product-state"]
    assert pairs["fmod"] == ["AUTO", "OFF"] and pairs["fnsp"] == ["AUTO", "0001"]


def test_a_command_catches_up_with_time_first() -> None:
    device = make("527", uptime_s=3600)
    state_set(device, {"sltm": "0015"})
    result = send(device, {"msg": "REQUEST-CURRENT-STATE"}, now=NOW + 16 * 60)
    assert result.msgs[0] == "STATE-CHANGE"  # the expiry, then the answer
    assert result.outgoing[1].message()["product-state"]["fpwr"] == "OFF"


def test_the_device_clock_never_runs_backwards() -> None:
    device = make("527", uptime_s=3600)
    state_set(device, {"sltm": "0015"}, now=NOW + 120)
    send(device, {"msg": "REQUEST-CURRENT-STATE"}, now=NOW)  # the world clock was shifted back
    assert device.sensor_data(NOW + 120)["sltm"] == "0015"


# Environment changes (§4.4 spontaneous STATE-CHANGEs) ------------------------------------


def test_dirty_air_wakes_the_auto_fan() -> None:
    device = make("438M")
    result = device.set_environment({"p25r": 80, "pm25": "0075"}, now=NOW + 1)
    message = only(result)
    assert (message["mode-reason"], message["state-reason"]) == ("RAPP", "ENV")
    assert message["product-state"]["fnst"] == ["OFF", "FAN"]
    assert message["product-state"]["oscs"] == ["IDLE", "ON"]
    assert result.events == (StateChanged(SERIAL, "environment", ("fnst", "oscs")),)
    assert device.sensor_data(NOW + 1)["p25r"] == "0080"
    assert device.set_environment({"p10r": 3}, now=NOW + 2).outgoing == ()


def test_room_temperature_drives_heating() -> None:
    device = make("527", uptime_s=3600)
    state_set(device, {"hmod": "HEAT", "hmax": "3000"})
    assert device.state["hsta"] == "HEAT"
    message = only(device.set_environment({"tact": 3010}, now=NOW + 60))
    assert message["product-state"]["hsta"] == ["HEAT", "OFF"]


@pytest.mark.parametrize(
    ("readings", "problem"),
    [
        ({"co2r": 5}, "not a sensor"),
        ({"tact": -1}, "outside"),
        ({"tact": "29.5"}, "four"),
        ({"tact": True}, "not a number"),
        ({"sltm": 5}, "not a sensor"),
    ],
    ids=["unknown-sensor", "negative", "decimal", "bool", "sltm-is-not-a-reading"],
)
def test_set_environment_validates(readings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make("527").set_environment(readings, now=NOW)


# LOCATE (§4.2, §4.3) ---------------------------------------------------------------------


def test_locate_reports_a_position_inside_the_arc() -> None:
    device = make("438M")
    message = only(send(device, {"msg": "LOCATE", "mode-reason": "RAPP"}))
    assert message == {"msg": "LOCATION", "apos": "0153", "time": "2025-04-16T00:16:21.000Z"}
    state_set(device, {"fnsp": "0005"}, now=NOW + 1)  # oscillation starts
    positions = {
        int(only(send(device, {"msg": "LOCATE"}, now=NOW + 1 + t))["apos"]) for t in range(60)
    }
    assert min(positions) >= 136 and max(positions) <= 226 and len(positions) > 10


# Faults (§4.3) ---------------------------------------------------------------------------


def test_raise_and_clear_a_fault() -> None:
    device = make("527")
    raised = device.raise_fault("amf1", now=NOW)
    message = only(raised)
    assert raised.outgoing[0].topic == f"527/{SERIAL}/status/faults"
    assert message["msg"] == "FAULTS-CHANGE"
    assert list(message)[2:] == list(FAULT_CATEGORIES)  # all four categories, every key
    assert message["product-errors"]["amf1"] == ["OK", "FAIL"]
    assert message["module-warnings"]["nwcs"] == ["OK", "OK"]
    assert raised.events == (FaultsChanged(SERIAL, ("product-errors/amf1",), ()),)
    faults = only(send(device, {"msg": "REQUEST-CURRENT-FAULTS"}))
    assert faults["product-errors"]["amf1"] == "FAIL"
    assert device.raise_fault("amf1", now=NOW).outgoing == ()  # already failing
    cleared = device.clear_fault("amf1", now=NOW + 1)
    assert only(cleared)["product-errors"]["amf1"] == ["FAIL", "OK"]
    assert cleared.events == (FaultsChanged(SERIAL, (), ("product-errors/amf1",)),)


def test_faults_change_with_only_the_changed_keys() -> None:
    """The §4.3 example shape: only changed keys of changed categories."""
    device = make("438", faults_change_full=False)
    message = only(device.set_cloud_link(False, now=NOW))
    assert message == {
        "msg": "FAULTS-CHANGE",
        "time": "2025-04-16T00:16:21.000Z",
        "module-warnings": {"nwcs": ["OK", "FAIL"], "nwps": ["OK", "FAIL"], "nwss": ["OK", "FAIL"]},
    }
    assert only(device.set_cloud_link(True, now=NOW + 1))["module-warnings"]["nwcs"] == [
        "FAIL",
        "OK",
    ]


def test_humidifier_tank_warning() -> None:
    message = only(make("358").raise_fault("tnke", now=NOW))
    assert message["product-warnings"]["tnke"] == ["OK", "FAIL"]


def test_unknown_fault_is_a_harness_error() -> None:
    with pytest.raises(ConfigError, match="t&hs"):
        make("438").raise_fault("t&hs", now=NOW)  # a Link key


# status/connection (§4.3, §7) ------------------------------------------------------------


def test_connection_messages() -> None:
    device = make("438M", mac_address="C8:FF:77:00:00:00")
    hello = device.hello(NOW)
    assert hello.topic == f"438M/{SERIAL}/status/connection"
    assert hello.message() == {
        "msg": "HELLO",
        "protocol": "1.0.0",
        "serialNumber": SERIAL,
        "version": "438MPF.00.01.003.0011",
        "macAddress": "C8:FF:77:00:00:00",
        "resetSource": "PWUP",
        "time": "2025-04-16T00:16:21.000Z",
    }
    goodbye = device.goodbye(NOW + 1, reason="SWITCH_TO_AP")
    assert goodbye.message() == {
        "msg": "GOODBYE",
        "reason": "SWITCH_TO_AP",
        "time": "2025-04-16T00:16:22.000Z",
    }
    will = device.gone_away(NOW)
    assert will == Outgoing(f"438M/{SERIAL}/status/connection", b'{"msg":"GONE-AWAY"}', 0, False)
    assert device.im_back(NOW + 2).message() == {
        "msg": "IM-BACK",
        "time": "2025-04-16T00:16:23.000Z",
    }
    with pytest.raises(ConfigError):
        device.goodbye(NOW, reason="BYE")


def test_default_mac_is_stable_and_dyson_shaped() -> None:
    first, second = make("438").mac_address, make("527").mac_address
    assert first == second and first.startswith("C8:FF:77:") and len(first) == 17


@pytest.mark.parametrize(
    "options",
    [{"uptime_s": -1}, {"warmup_s": -1}, {"env_push_interval_s": 0}],
    ids=["uptime", "warmup", "interval"],
)
def test_device_options_validate(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make("438", **options)


def test_bad_serial_is_a_harness_error() -> None:
    with pytest.raises(ConfigError, match="serial"):
        DysonDevice(get_profile("438"), serial="438-test", now=NOW)


def test_event_fields_are_recorder_ready() -> None:
    result = state_set(make("438M"), {"fnsp": "0005"})
    [event] = result.events
    assert event.kind == "dyson.command"
    assert event.fields() == {
        "ok": True,
        "serial": SERIAL,
        "msg": "STATE-SET",
        "answered": ["STATE-CHANGE"],
        "changed": ["auto", "fnsp", "fnst", "oscs"],
        "mode_reason": "RAPP",
    }


# Property tests --------------------------------------------------------------------------

PROFILE_NAMES = st.sampled_from(sorted(PROFILES))
COMMANDS = st.sampled_from(
    [
        "REQUEST-CURRENT-STATE",
        "REQUEST-PRODUCT-ENVIRONMENT-CURRENT-SENSOR-DATA",
        "REQUEST-CURRENT-FAULTS",
        "STATE-SET",
        "LOCATE",
        "SCHEDULE-SET",
        "START",
        "",
    ]
)
FIELD_NAMES = st.sampled_from(
    sorted(
        {name for profile in PROFILES.values() for name in profile.state} | {"rstf", "rhtf", "zzzz"}
    )
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_VALUES = (
    st.sampled_from(
        [
            "ON",
            "OFF",
            "AUTO",
            "FAN",
            "HEAT",
            "HUMD",
            "0000",
            "0001",
            "0005",
            "0010",
            "0015",
            "0100",
            "0200",
            "0355",
            "2950",
            "RSTF",
            "STET",
            "OION",
            "BRZE",
            "INV",
        ]
    )
    | JSON_VALUES
)
COMMAND_OBJECTS = st.fixed_dictionaries(
    {"msg": COMMANDS},
    optional={
        "data": st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=4) | JSON_VALUES,
        "mode-reason": st.sampled_from(["LAPP", "RAPP", "NONE"]) | JSON_VALUES,
        "time": st.text(max_size=24),
        "version": st.text(max_size=6),
    },
)


@given(PROFILE_NAMES, st.binary(max_size=200))
def test_random_bytes_never_raise_nor_change_state(name: str, payload: bytes) -> None:
    device = make(name)
    before = (device.state, device.faults)
    result = device.handle(device.topics.command, payload, now=NOW)
    assert len(result.events) == 1
    if isinstance(result.events[0], CommandIgnored):
        assert result.outgoing == ()
    assert (device.state, device.faults) == before


@given(PROFILE_NAMES, COMMAND_OBJECTS | st.dictionaries(st.text(max_size=5), JSON_VALUES))
def test_random_commands_change_state_only_by_a_valid_state_set(
    name: str, command: JSONObject
) -> None:
    device = make(name)
    before = device.state
    result = device.handle(device.topics.command, json.dumps(command).encode(), now=NOW)
    [event] = result.events
    if device.state != before:
        assert isinstance(event, CommandHandled) and event.msg == "STATE-SET"
        assert result.msgs == ("STATE-CHANGE",)
    if isinstance(event, CommandIgnored):
        assert result.outgoing == ()


def _valid_values(spec: FieldSpec) -> st.SearchStrategy[str]:
    values = spec.values if spec.set_values is None else spec.set_values
    numeric = spec.numeric if spec.set_numeric is None else spec.set_numeric
    strategies: list[st.SearchStrategy[str]] = []
    if values:
        strategies.append(st.sampled_from(sorted(values)))
    if numeric is not None and spec.set_values is None:
        low, high = numeric
        strategies.append(st.integers(low, high).map(lambda n: f"{n:04d}"))
    return st.one_of(strategies)


class DeviceMachine(RuleBasedStateMachine):
    """Random STATE-SETs, sensor changes and time keep the device's invariants (§5)."""

    def __init__(self) -> None:
        super().__init__()
        self.device = make("438")
        self.now = NOW
        self.changed_once = False

    @initialize(name=PROFILE_NAMES)
    def boot(self, name: str) -> None:
        self.device = make(name, env_push_interval_s=45)
        self.changed_once = False

    @rule(data=st.data())
    def state_set(self, data: st.DataObject) -> None:
        settable = self.device.profile.settable_fields()
        names = data.draw(
            st.lists(st.sampled_from(sorted(settable)), min_size=1, max_size=4, unique=True)
        )
        fields = {name: data.draw(_valid_values(settable[name]), label=name) for name in names}
        result = self.check(state_set(self.device, fields, now=self.now))
        [event] = result.events
        if isinstance(event, CommandIgnored):
            assert event.reason == "invalid-value" and "30" in event.explain  # angles only
        else:
            assert isinstance(event, CommandHandled)
            assert result.msgs in ((), ("STATE-CHANGE",))

    @rule(seconds=st.floats(0, 1000))
    def wait(self, seconds: float) -> None:
        self.now += seconds
        self.check(self.device.tick(self.now))

    @rule(data=st.data())
    def environment(self, data: st.DataObject) -> None:
        sensors = [n for n in self.device.profile.sensor_fields if n != "sltm"]
        name = data.draw(st.sampled_from(sensors))
        value = data.draw(st.integers(0, 3100) if name == "tact" else st.integers(0, 120))
        self.check(self.device.set_environment({name: value}, now=self.now))

    @rule(data=st.data(), failing=st.booleans())
    def fault(self, data: st.DataObject, failing: bool) -> None:
        keys = [k for keys in self.device.faults.values() for k in keys]
        key = data.draw(st.sampled_from(keys))
        result = self.check(self.device.set_faults({key: failing}, now=self.now))
        assert result.msgs in ((), ("FAULTS-CHANGE",))

    @rule()
    def request(self) -> None:
        answer = self.check(send(self.device, {"msg": "REQUEST-CURRENT-STATE"}, now=self.now))
        assert answer.outgoing[-1].message()["msg"] in (
            "CURRENT-STATE",
            "ENVIRONMENTAL-CURRENT-SENSOR-DATA",
        )

    def check(self, result: DeviceResult) -> DeviceResult:
        for out in result.outgoing:
            message = out.message()
            if message["msg"] == "STATE-CHANGE":
                self.changed_once = True
                assert list(message["product-state"]) == list(self.device.profile.state)
            if message["msg"] == "ENVIRONMENTAL-CURRENT-SENSOR-DATA":
                assert list(message["data"]) == list(self.device.profile.sensor_fields)
        return result

    @invariant()
    def values_stay_in_the_dictionary(self) -> None:
        specs = self.device.profile.field_specs()
        for name, value in self.device.state.items():
            assert specs[name].holds(value), (name, value)
        assert list(self.device.state) == list(self.device.profile.state)

    @invariant()
    def derived_fields_are_consistent(self) -> None:
        if not self.changed_once:
            return  # §3 captures are verbatim until the first change
        state = self.device.state
        if self.device.profile.family is Family.V2:
            if state["fpwr"] == "OFF":
                assert state["fnst"] == "OFF" and state["oscs"] == "OFF"
            if state["auto"] == "ON":
                assert state["fnsp"] == "AUTO"
            if state["fnst"] == "FAN":
                assert state["fpwr"] == "ON"
            if state["oscs"] != "OFF":
                assert state["oson"] in ("ON", "OION") and state["fpwr"] == "ON"
            assert (state["oscs"] == "IDLE") <= (state["fnst"] == "OFF")
            if "hsta" in state and state["hsta"] == "HEAT":
                assert state["hmod"] == "HEAT" and state["fpwr"] == "ON"
            if "msta" in state and state["msta"] == "HUMD":
                assert state["hume"] == "HUMD" and state["fpwr"] == "ON"
        else:
            assert (state["fmod"] == "AUTO") == (state["fnsp"] == "AUTO")
            assert (state["fnst"] == "OFF") == (state["fmod"] == "OFF")

    @invariant()
    def sensors_are_well_formed(self) -> None:
        for value in self.device.sensor_data(self.now).values():
            assert value in ("INIT", "OFF", "FAIL") or (len(value) == 4 and value.isdigit())


DeviceMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_device_machine = DeviceMachine.TestCase
