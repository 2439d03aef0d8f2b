"""Dyson product profiles, the field dictionary, local credentials and broker quirks."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from simulators.dyson.device import DysonDevice
from simulators.dyson.fields import COMMAND_FIELDS, FIELDS, sensor_value_ok
from simulators.dyson.local_auth import (
    CONNACK_ACCEPTED,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    BrokerLogin,
    WifiIdentity,
    ap_password_hash,
    client_id_code,
    is_valid_serial,
    new_wifi_password,
    parse_wifi_ssid,
    validate_serial,
)
from simulators.dyson.messages import FAULT_CATEGORIES
from simulators.dyson.profiles import PROFILES, Family, ProductProfile, get_profile
from simulators.dyson.quirks import LocalQuirks, SynFragile

from .conftest import SHARED

SERIAL = "NK6-EU-HAA0000A"
NOW = 1_744_762_581.0  # 2025-04-16T00:16:21Z, the TP11 capture's time
SPEC = SHARED / "specs" / "dyson.md"


# Profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "product_type", "variant", "model", "family"),
    [
        pytest.param("438", "438", None, "TP04", Family.V2, id="438-TP04"),
        pytest.param("438M", "438", "M", "TP11", Family.V2, id="438M-TP11"),
        pytest.param("527", "527", None, "HP04", Family.V2, id="527-HP04"),
        pytest.param("475", "475", None, "TP02", Family.LINK_V1, id="475-TP02-link"),
        pytest.param("358", "358", None, "PH01", Family.V2, id="358-PH01-humidifier"),
    ],
)
def test_profile_identity(
    name: str, product_type: str, variant: str | None, model: str, family: Family
) -> None:
    profile = get_profile(name)
    assert (profile.product_type, profile.variant, profile.model) == (product_type, variant, model)
    assert profile.family is family
    assert profile.root_topic == name  # the root tells variants apart (§2)


def test_tp11_root_differs_from_its_product_type() -> None:
    """§2 "Root rule": a TP11 reports type 438, variant M and root 438M."""
    profile = get_profile("438M")
    assert profile.product_type == "438"
    assert profile.root_topic == "438M"
    device = DysonDevice(profile, serial=SERIAL, now=NOW)
    assert device.topics.command == f"438M/{SERIAL}/command"


@pytest.mark.parametrize(
    ("name", "env_with_state"),
    [("438", False), ("438M", True), ("527", True), ("475", False), ("358", True)],
)
def test_env_with_state_per_spec(name: str, env_with_state: bool) -> None:
    assert get_profile(name).env_with_state is env_with_state


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="438M"):
        get_profile("999")


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_starting_state_is_inside_the_field_dictionary(profile: ProductProfile) -> None:
    specs = profile.field_specs()
    assert set(specs) == set(profile.state)
    for name, value in profile.product_state:
        assert specs[name].holds(value), (name, value)
    for name, value in profile.sensors:
        assert sensor_value_ok(value), (name, value)
    assert [c for c, _ in profile.faults] == list(FAULT_CATEGORIES)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_settable_fields_are_writable_or_commands(profile: ProductProfile) -> None:
    settable = profile.settable_fields()
    for name in settable:
        assert name in COMMAND_FIELDS or FIELDS[name].writable
    for read_only in ("fnst", "oscs", "hsta", "msta", "ercd", "wacd"):
        assert read_only not in settable


def test_link_takes_the_sleep_timer_although_only_its_sensors_report_it() -> None:
    profile = get_profile("475")
    assert "sltm" not in profile.state
    assert "sltm" in profile.settable_fields()


def test_humidifier_narrows_its_angle_profiles() -> None:
    """§3: the PH01 uses ``ancp`` BRZE/0045/0090 (and CUST)."""
    spec = get_profile("358").field_specs()["ancp"]
    assert spec.settable("BRZE") and spec.settable("0045")
    assert not spec.settable("0350")
    assert get_profile("438").field_specs()["ancp"].settable("0350")


def _replace(profile: ProductProfile, **changes: Any) -> ProductProfile:
    return dataclasses.replace(profile, **changes)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"root_topic": "438/x"}, "root topic", id="bad-root"),
        pytest.param({"mode_reason": "XAPP"}, "mode-reason", id="bad-mode-reason"),
        pytest.param({"state_reason": "WHY"}, "state-reason", id="bad-state-reason"),
        pytest.param(
            {"product_state": (("fpwr", "ON"), ("zzzz", "1"))}, "not in the", id="unknown-field"
        ),
        pytest.param({"product_state": (("fpwr", "MAYBE"),)}, "outside", id="bad-value"),
        pytest.param({"sensors": (("tact", "hot"), ("sltm", "OFF"))}, "four digits", id="sensor"),
        pytest.param({"sensors": (("tact", "2950"),)}, "sltm", id="no-sltm"),
        pytest.param({"warmup_fields": frozenset({"co2r"})}, "warm-up", id="warmup-field"),
        pytest.param({"warmup_s": -1.0}, "warmup_s", id="negative-warmup"),
        pytest.param({"command_fields": frozenset({"zap"})}, "command field", id="command"),
        pytest.param({"faults": ()}, "categories", id="faults"),
        pytest.param({"product_state": (("auto", "ON"),)}, "fpwr", id="v2-without-fpwr"),
        pytest.param({"family": Family.LINK_V1}, "fmod", id="link-without-fmod"),
    ],
)
def test_profile_validation(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        _replace(get_profile("438"), **changes)


def _spec_captures() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """§3 A-E: each profile's CURRENT-STATE and sensor data, parsed from the spec."""
    text = SPEC.read_text(encoding="utf-8")
    captures: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    pattern = re.compile(r"\*\*[A-E]\. `(?P<root>\w+)`.*?```json\n(?P<block>.*?)```", re.S)
    for match in pattern.finditer(text):
        block = match["block"]
        decoder = json.JSONDecoder()
        state, end = decoder.raw_decode(block)
        env, _ = decoder.raw_decode(block[end:].lstrip())
        captures[match["root"]] = (state, env)
    return captures


@pytest.mark.parametrize("name", list(PROFILES))
def test_first_current_state_is_the_spec_capture(name: str) -> None:
    """A fresh device's CURRENT-STATE is §3's capture verbatim, except the time."""
    if not SPEC.is_file():
        pytest.skip("../shared/specs/dyson.md is absent (a plain clone has no ../shared)")
    state, env = _spec_captures()[name]
    device = DysonDevice(get_profile(name), serial=SERIAL, now=NOW, uptime_s=3600)
    out = device.current_state_message(NOW).message()
    out["time"] = state["time"]
    assert out == state
    assert json.dumps(out) == json.dumps(state)  # key order too
    data = device.sensor_data(NOW)
    if name == "438":
        # The TP04 capture has the fan off and monitoring off: §5 says sensors read OFF.
        assert {k: v for k, v in data.items() if k != "sltm"} == dict.fromkeys(
            [k for k in env if k != "sltm"], "OFF"
        )
    else:
        assert data == env


# Local credentials (§1.2, §1.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "valid"),
    [
        pytest.param("NK6-CN-HAA0000A", True, id="spec-example"),
        pytest.param("VS6-EU-HJA1234A", True, id="spec-example-2"),
        pytest.param("AB1-CD-EFG2345HJK", True, id="longer-tail"),
        pytest.param("NK6-CN-HAA000", False, id="tail-too-short"),
        pytest.param("nk6-cn-haa0000a", False, id="lower-case"),
        pytest.param("NK6-C1-HAA0000A", False, id="digit-in-region"),
        pytest.param("NK6CNHAA0000A", False, id="no-dashes"),
        pytest.param("NK6-CN-HAA0000A\n", False, id="trailing-newline"),
        pytest.param("", False, id="empty"),
    ],
)
def test_serial_format(serial: str, valid: bool) -> None:
    assert is_valid_serial(serial) is valid
    if valid:
        assert validate_serial(serial) == serial
    else:
        with pytest.raises(ConfigError, match="not a Dyson serial"):
            validate_serial(serial)


def test_ap_password_hash_is_base64_sha512() -> None:
    """§1.2 derivation B; the value is a fixed vector (sha512 of ``password``)."""
    value = ap_password_hash("password")
    assert value == (
        "sQnzu7wkTrgkQZF+0G1hi5AI3Qmzvv0bXgc5THBqi7mAsdd4Xll27ASbRt9fEyavWi6m0QP9B8lThf+rDKy8hg=="
    )
    assert len(value) == 88 and len(base64.b64decode(value)) == 64


def test_new_wifi_passwords_are_sticker_like() -> None:
    passwords = {new_wifi_password() for _ in range(20)}
    assert all(re.fullmatch(r"[a-z]{8}", p) for p in passwords)
    assert len(passwords) > 1


@pytest.mark.parametrize(
    ("ssid", "identity"),
    [
        pytest.param("DYSON-NK6-CN-HAA0000A-438", WifiIdentity("NK6-CN-HAA0000A", "438"), id="438"),
        pytest.param(
            "DYSON-NK6-CN-HAA0000A-455A", WifiIdentity("NK6-CN-HAA0000A", "455"), id="455A-is-455"
        ),
        pytest.param(
            "DYSON-NK6-CN-HAA0000A-438M", WifiIdentity("NK6-CN-HAA0000A", "438M"), id="variant-kept"
        ),
        pytest.param(
            "360EYE-NK6-CN-HAA0000A", WifiIdentity("NK6-CN-HAA0000A", "N223"), id="360-eye"
        ),
    ],
)
def test_parse_wifi_ssid(ssid: str, identity: WifiIdentity) -> None:
    assert parse_wifi_ssid(ssid) == identity


@pytest.mark.parametrize("ssid", ["DYSON-438", "MyHomeWifi", "DYSON-NK6-CN-HAA0000A-43"])
def test_parse_wifi_ssid_rejects_others(ssid: str) -> None:
    with pytest.raises(ConfigError):
        parse_wifi_ssid(ssid)


@pytest.fixture
def credentials() -> BrokerLogin:
    return BrokerLogin.from_wifi_password(SERIAL, "abcdefgh")


@pytest.mark.parametrize(
    ("username", "password", "code"),
    [
        pytest.param(SERIAL, None, CONNACK_NOT_AUTHORIZED, id="no-password"),
        pytest.param(SERIAL, "wrong", CONNACK_NOT_AUTHORIZED, id="wrong-password-is-5-not-4"),
        pytest.param("VS6-EU-HJA1234A", "RIGHT", CONNACK_NOT_AUTHORIZED, id="unknown-user"),
        pytest.param(None, "RIGHT", CONNACK_NOT_AUTHORIZED, id="no-user"),
        pytest.param(SERIAL, "RIGHT", CONNACK_ACCEPTED, id="right"),
        pytest.param(SERIAL, b"RIGHT", CONNACK_ACCEPTED, id="right-as-bytes"),
    ],
)
def test_connack_code(
    credentials: BrokerLogin, username: str | None, password: str | bytes | None, code: int
) -> None:
    if password == "RIGHT":
        password = credentials.ap_password_hash
    elif password == b"RIGHT":
        password = credentials.ap_password_hash.encode()
    assert credentials.connack_code(username, password) == code


def test_credentials_hide_the_password(credentials: BrokerLogin) -> None:
    assert credentials.ap_password_hash not in repr(credentials)


@pytest.mark.parametrize(
    ("serial", "password", "problem"),
    [("bad", "x" * 88, "serial"), (SERIAL, "short", "88")],
)
def test_credentials_validate(serial: str, password: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        BrokerLogin(serial, password)


@given(st.binary(max_size=100), st.text(max_size=30) | st.none())
def test_connack_code_never_raises(password: bytes, username: str | None) -> None:
    credentials = BrokerLogin.from_wifi_password(SERIAL, "abcdefgh")
    assert credentials.connack_code(username, password) in (0, 5)


@pytest.mark.parametrize(
    ("client_id", "level", "strict", "code"),
    [
        pytest.param("a" * 24, 3, False, CONNACK_ACCEPTED, id="lenient-default"),
        pytest.param("a" * 23, 3, True, CONNACK_ACCEPTED, id="23-ok"),
        pytest.param("a" * 24, 3, True, CONNACK_IDENTIFIER_REJECTED, id="24-on-3.1"),
        pytest.param("", 3, True, CONNACK_IDENTIFIER_REJECTED, id="empty-on-3.1"),
        pytest.param("a" * 64, 4, True, CONNACK_ACCEPTED, id="3.1.1-has-no-limit"),
    ],
)
def test_client_id_code(client_id: str, level: int, strict: bool, code: int) -> None:
    assert client_id_code(client_id, protocol_level=level, strict=strict) == code


# Broker quirks (§1.4) --------------------------------------------------------------------


def test_quirk_defaults_are_the_spec_defaults() -> None:
    quirks = LocalQuirks()
    assert quirks.stale_session_rst and quirks.stale_window_s == 90.0
    assert quirks.session_cap == 4 and not quirks.session_cap_connack
    assert quirks.foreign_subscribe_drop and quirks.foreign_drop_delay_ms == 10.0
    assert quirks.hash_wildcard == "silent"
    assert quirks.syn_fragile is None and not quirks.mute
    assert not quirks.duplicates and not quirks.reorder
    assert not quirks.strict_client_id
    assert quirks.invalid_command == "ignore"


def test_textbook_broker_has_no_quirks() -> None:
    quirks = LocalQuirks.textbook()
    assert not quirks.stale_session_rst
    assert quirks.session_cap is None
    assert not quirks.foreign_subscribe_drop
    assert quirks.hash_wildcard == "deliver"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"stale_window_s": 0}, id="window"),
        pytest.param({"session_cap": 0}, id="cap"),
        pytest.param({"foreign_drop_delay_ms": -1}, id="delay"),
        pytest.param({"duplicate_gap_ms": -1}, id="gap"),
        pytest.param({"reorder_age_s": -1}, id="age"),
        pytest.param({"hash_wildcard": "maybe"}, id="hash-mode"),
        pytest.param({"invalid_command": "reject"}, id="invalid-command"),
    ],
)
def test_quirks_validate(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LocalQuirks(**changes)


@pytest.mark.parametrize(
    "changes", [{"attempts": 0}, {"window_s": 0}, {"pause_s": -1}], ids=["m", "t", "pause"]
)
def test_syn_fragile_validates(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SynFragile(**changes)


def test_quirks_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LocalQuirks().mute = True  # type: ignore[misc]
