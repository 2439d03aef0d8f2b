"""Dyson message shapes, device time formats and topic classification (dyson.md §2, §4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.dyson import messages
from simulators.dyson.messages import (
    Outgoing,
    TimeStamper,
    TimeStyle,
    encode,
    format_device_time,
)
from simulators.dyson.topics import DeviceTopics, FilterClass

NOW = 1_528_288_912.0  # 2018-06-06T12:41:52Z, the TP04 capture's time


@pytest.mark.parametrize(
    ("style", "sequence", "expected"),
    [
        pytest.param(TimeStyle.ZERO_MILLIS, 0, "2018-06-06T12:41:52.000Z", id="v2-devices"),
        pytest.param(TimeStyle.ZERO_MILLIS, 3, "2018-06-06T12:41:52.000Z", id="v2-ignore-seq"),
        pytest.param(TimeStyle.SEQUENCE_MILLIS, 1, "2018-06-06T12:41:52.001Z", id="link-odd-ms"),
        pytest.param(TimeStyle.SEQUENCE_MILLIS, 5000, "2018-06-06T12:41:52.999Z", id="capped"),
        pytest.param(TimeStyle.NO_MILLIS, 0, "2018-06-06T12:41:52Z", id="robots"),
    ],
)
def test_device_time_formats(style: TimeStyle, sequence: int, expected: str) -> None:
    assert format_device_time(NOW + 0.75, style, sequence=sequence) == expected


def test_time_stamper_numbers_messages_within_a_second() -> None:
    stamper = TimeStamper(TimeStyle.SEQUENCE_MILLIS)
    stamps = [stamper.stamp(NOW + t) for t in (0.1, 0.2, 0.9, 1.0, 1.5)]
    assert [s[-5:] for s in stamps] == [".000Z", ".001Z", ".002Z", ".000Z", ".001Z"]


@given(st.floats(0, 4_000_000_000), st.sampled_from(list(TimeStyle)))
def test_device_times_are_utc_iso_8601(now: float, style: TimeStyle) -> None:
    text = format_device_time(now, style)
    assert text.endswith("Z") and text[10] == "T" and len(text) in (20, 24)


def test_encode_is_compact_and_ordered() -> None:
    assert encode({"msg": "GONE-AWAY"}) == b'{"msg":"GONE-AWAY"}'
    assert encode({"b": "1", "a": ["x", "y"]}) == b'{"b":"1","a":["x","y"]}'


def test_outgoing_decodes_its_payload() -> None:
    out = Outgoing("438/S/status/current", encode(messages.im_back(time="t")))
    assert out.msg == "IM-BACK" and (out.qos, out.retain) == (0, False)


def test_with_time_restamps_in_place() -> None:
    out = Outgoing("t", encode(messages.goodbye(time="2018-06-06T12:41:52.000Z", reason="UNKNOWN")))
    older = out.with_time("2018-06-06T12:41:51.000Z")
    assert older.payload == (
        b'{"msg":"GOODBYE","reason":"UNKNOWN","time":"2018-06-06T12:41:51.000Z"}'
    )
    will = Outgoing("t", encode(messages.gone_away()))
    assert will.with_time("x") is will


def test_state_change_pairs_every_field() -> None:
    message = messages.state_change(
        time="t",
        mode_reason="LAPP",
        state_reason="MODE",
        old={"fpwr": "OFF", "fnst": "OFF"},
        new={"fpwr": "ON", "fnst": "FAN"},
        scheduler={},
    )
    assert message["product-state"] == {"fpwr": ["OFF", "ON"], "fnst": ["OFF", "FAN"]}


def test_faults_change_pairs() -> None:
    message = messages.faults_change(
        time="t", changes={"module-warnings": {"nwcs": ("OK", "FAIL")}}
    )
    assert message == {
        "msg": "FAULTS-CHANGE",
        "time": "t",
        "module-warnings": {"nwcs": ["OK", "FAIL"]},
    }


TOPICS = DeviceTopics("438M", "NK6-EU-HAA0000A")


def test_topic_names() -> None:
    assert TOPICS.command == "438M/NK6-EU-HAA0000A/command"
    assert TOPICS.current == "438M/NK6-EU-HAA0000A/status/current"
    assert TOPICS.faults == "438M/NK6-EU-HAA0000A/status/faults"
    assert TOPICS.connection == "438M/NK6-EU-HAA0000A/status/connection"
    assert TOPICS.software.endswith("/status/software")
    assert TOPICS.scheduler.endswith("/status/scheduler")
    assert TOPICS.summary.endswith("/status/summary")


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        pytest.param("438M/NK6-EU-HAA0000A/status/current", "own", id="own-status"),
        pytest.param("438M/NK6-EU-HAA0000A/#", "own", id="own-wildcard-hass-dyson"),
        pytest.param("438M/NK6-EU-HAA0000A/+/current", "own", id="own-plus"),
        pytest.param("#", "hash", id="bare-hash"),
        pytest.param("438/NK6-EU-HAA0000A/status/current", "foreign", id="wrong-root-438"),
        pytest.param("438M/NK6-EU-HAA0000B/status/current", "foreign", id="other-serial"),
        pytest.param("438M/#", "foreign", id="root-wildcard"),
        pytest.param("+/NK6-EU-HAA0000A/status/current", "foreign", id="plus-root"),
        pytest.param("438M/NK6-EU-HAA0000A", "foreign", id="no-trailing-level"),
    ],
)
def test_classify_filter(topic_filter: str, expected: FilterClass) -> None:
    """§1.4: what the device's broker makes of each SUBSCRIBE filter."""
    assert TOPICS.classify_filter(topic_filter) == expected
