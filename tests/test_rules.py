"""AWS IoT's MQTT semantics (harness.mqtt.rules; aws-iot.md §4): tables and properties."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.mqtt import rules
from harness.mqtt.rules import (
    AWS_LIMITS,
    CLIENT_PUBLISHABLE_RESERVED,
    ConnectThrottle,
    DisconnectReason,
    KeepAlive,
    Limits,
    Outcome,
    RateLimiter,
    SubscribeDecision,
    Violation,
    check_connect,
    check_publish,
    check_rate,
    check_subscribe,
    check_unsubscribe,
    clamp_keepalive,
    keepalive_deadline,
    presence_payload,
    presence_topic,
    resets_keepalive,
    retained_delivered,
    subscription_payload,
    subscription_topic,
    topic_matches,
)

CLIENT_ERROR = DisconnectReason.CLIENT_ERROR
FORBIDDEN = DisconnectReason.FORBIDDEN_ACCESS
THROTTLED = DisconnectReason.THROTTLED


@dataclass(frozen=True)
class Expect:
    """An expected verdict: reason, outcome and (for closes) the lifecycle reason."""

    reason: str
    outcome: Outcome = Outcome.CLOSE
    disconnect: DisconnectReason | None = CLIENT_ERROR

    def check(self, verdict: object) -> None:
        assert isinstance(verdict, Violation), verdict
        assert (verdict.reason, verdict.outcome, verdict.disconnect_reason) == (
            self.reason,
            self.outcome,
            self.disconnect,
        ), verdict
        assert verdict.explain


IGNORED = Outcome.IGNORE


# Limits


def test_limits_defaults_are_aws_values() -> None:
    limits = Limits()
    assert limits == AWS_LIMITS
    assert (limits.max_payload, limits.max_topic_bytes, limits.max_topic_slashes) == (
        131072,
        256,
        7,
    )
    assert (limits.max_client_id_bytes, limits.max_filters_per_subscribe) == (128, 8)
    assert (limits.max_subscriptions_per_connection, limits.publishes_per_second) == (50, 100)
    assert (limits.throughput_bytes_per_second, limits.max_inflight) == (524288, 100)
    assert (limits.keepalive_min, limits.keepalive_max, limits.keepalive_factor) == (30, 1200, 1.5)
    assert (limits.websocket_lifetime, limits.connects_per_client_id_per_second) == (86400.0, 1)


def test_limits_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Limits(1024)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        AWS_LIMITS.max_payload = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_payload": -1}, id="negative"),
        pytest.param({"keepalive_factor": 0}, id="zero-factor"),
        pytest.param({"keepalive_min": 60, "keepalive_max": 30}, id="min-above-max"),
        pytest.param({"max_topic_bytes": "256"}, id="not-a-number"),
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_unlimited_switches_every_quota_off() -> None:
    limits = Limits.unlimited()
    assert check_publish("a/b/c/d/e/f/g/h/i/j", 1, 10**9, limits) is None
    assert check_connect("x" * 1000, payload_size=10**9, limits=limits) is None
    many = [(f"t/{i}", 1) for i in range(100)]
    assert isinstance(check_subscribe(many, 10**6, limits), list)
    assert clamp_keepalive(0, limits) == 0
    assert clamp_keepalive(5, limits) == 5
    assert clamp_keepalive(65535, limits) == 65535


# Keep-alive (§4.3)


@pytest.mark.parametrize(
    ("requested", "enforced"),
    [(0, 1200), (1, 30), (29, 30), (30, 30), (31, 31), (1200, 1200), (1201, 1200), (65535, 1200)],
    ids=lambda v: str(v),
)
def test_clamp_keepalive_boundaries(requested: int, enforced: int) -> None:
    assert clamp_keepalive(requested, AWS_LIMITS) == enforced


def test_keepalive_deadline_is_one_and_a_half_times() -> None:
    assert keepalive_deadline(30) == 45.0
    assert keepalive_deadline(1200) == 1800.0
    assert keepalive_deadline(10, factor=2.0) == 20.0
    assert keepalive_deadline(0) == math.inf


def test_keepalive_tracker() -> None:
    keepalive = KeepAlive(30, now=100.0)
    assert keepalive.deadline == 145.0
    assert not keepalive.expired(145.0)
    assert keepalive.expired(145.001)
    keepalive.touch(140.0)
    assert keepalive.deadline == 185.0
    keepalive.touch(120.0)  # a clock going backwards does not shorten the deadline
    assert keepalive.deadline == 185.0
    assert not keepalive.expired(180.0)
    assert "KeepAlive(30" in repr(keepalive)


def test_keepalive_zero_never_expires() -> None:
    keepalive = KeepAlive(0)
    assert keepalive.deadline == math.inf
    assert not keepalive.expired(1e12)


def test_keepalive_custom_factor() -> None:
    assert KeepAlive(10, factor=1.0, now=5.0).deadline == 15.0
    with pytest.raises(ConfigError):
        KeepAlive(10, factor=0)


@pytest.mark.parametrize(
    ("packet", "resets"),
    [
        ("PUBLISH", True),
        ("SUBSCRIBE", True),
        ("PINGREQ", True),
        ("PUBACK", True),
        ("pingreq", True),
        ("UNSUBSCRIBE", False),
        ("DISCONNECT", False),
        ("CONNECT", False),
    ],
)
def test_packets_that_reset_keepalive(packet: str, resets: bool) -> None:
    assert resets_keepalive(packet) is resets


# CONNECT (§4.2, §4.4)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"client_id": "c" * 129}, Expect("client-id-too-long"), id="id-129-bytes"),
        pytest.param({"client_id": "é" * 65}, Expect("client-id-too-long"), id="id-130-utf8-bytes"),
        pytest.param({"client_id": "$dev"}, Expect("client-id-reserved"), id="id-dollar"),
        pytest.param({"client_id": "a\x00b"}, Expect("invalid-string"), id="id-nul"),
        pytest.param({"client_id": "a\udc80"}, Expect("invalid-string"), id="id-surrogate"),
        pytest.param(
            {"client_id": "d", "payload_size": 131073}, Expect("payload-too-large"), id="payload"
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 2, "will_topic": "w"},
            Expect("will-qos2"),
            id="will-qos2",
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 3, "will_topic": "w"}, Expect("bad-qos"), id="will-qos3"
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 1, "will_topic": "w/+"},
            Expect("wildcard-in-topic"),
            id="will-topic-wildcard",
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 0, "will_topic": ""},
            Expect("empty-topic"),
            id="will-topic-empty",
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 0, "will_topic": "/".join("abcdefghi")},
            Expect("too-many-levels"),
            id="will-topic-levels",
        ),
        pytest.param(
            {"client_id": "d", "will_qos": 0, "will_topic": "t" * 257},
            Expect("topic-too-long"),
            id="will-topic-long",
        ),
    ],
)
def test_check_connect_violations(kwargs: dict[str, object], expected: Expect) -> None:
    expected.check(check_connect(**kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"client_id": "c" * 128}, id="id-128-bytes"),
        pytest.param({"client_id": ""}, id="id-empty"),
        pytest.param({"client_id": "a$b#+"}, id="id-with-wildcards"),
        pytest.param({"client_id": "d", "payload_size": 131072}, id="payload-at-limit"),
        pytest.param({"client_id": "d", "will_qos": 1, "will_topic": "dev/d/lwt"}, id="will"),
        pytest.param(
            {"client_id": "38f2c0de-5a77-4c53-a7a8-5e1d0e8a9b3c"}, id="dyson-uuid-36-chars"
        ),
    ],
)
def test_check_connect_accepts(kwargs: dict[str, object]) -> None:
    assert check_connect(**kwargs) is None  # type: ignore[arg-type]


def test_check_connect_positional_form() -> None:
    assert check_connect("dev", None, None, 0, AWS_LIMITS) is None


# PUBLISH (§4.2, §4.4)

NINE_LEVELS = "/".join("abcdefghi")  # 8 slashes


@pytest.mark.parametrize(
    ("topic", "qos", "size", "expected"),
    [
        pytest.param("t", 2, 1, Expect("qos2-not-supported", IGNORED, None), id="qos2-ignored"),
        pytest.param("t", 3, 1, Expect("bad-qos"), id="qos3"),
        pytest.param("t", -1, 1, Expect("bad-qos"), id="qos-negative"),
        pytest.param("t", 1, 131073, Expect("payload-too-large"), id="payload"),
        pytest.param("t", 2, 131073, Expect("payload-too-large"), id="payload-before-qos2"),
        pytest.param("", 0, 0, Expect("empty-topic"), id="empty"),
        pytest.param("a/+/c", 0, 0, Expect("wildcard-in-topic"), id="plus"),
        pytest.param("a/#", 0, 0, Expect("wildcard-in-topic"), id="hash"),
        pytest.param("a\x00", 0, 0, Expect("invalid-string"), id="nul"),
        pytest.param("t" * 257, 0, 0, Expect("topic-too-long"), id="257-bytes"),
        pytest.param("é" * 129, 0, 0, Expect("topic-too-long"), id="258-utf8-bytes"),
        pytest.param(NINE_LEVELS, 0, 0, Expect("too-many-levels"), id="8-slashes"),
        pytest.param("$SYS/x", 0, 0, Expect("reserved-topic", disconnect=FORBIDDEN), id="sys"),
        pytest.param(
            "$aws/events/presence/connected/x",
            0,
            0,
            Expect("reserved-topic", disconnect=FORBIDDEN),
            id="lifecycle-topic",
        ),
        pytest.param(
            "$aws/things/t/shadow/update/accepted",
            1,
            0,
            Expect("reserved-topic", disconnect=FORBIDDEN),
            id="shadow-reply",
        ),
        pytest.param(
            "$aws/rules/r", 0, 0, Expect("reserved-topic", disconnect=FORBIDDEN), id="bare-rule"
        ),
        pytest.param(
            "$aws/rules/r/" + NINE_LEVELS, 0, 0, Expect("too-many-levels"), id="ingest-8-slashes"
        ),
    ],
)
def test_check_publish_violations(topic: str, qos: int, size: int, expected: Expect) -> None:
    expected.check(check_publish(topic, qos, size, AWS_LIMITS))


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("t", id="one-level"),
        pytest.param("/".join("abcdefgh"), id="7-slashes"),
        pytest.param("t" * 256, id="256-bytes"),
        pytest.param("a//b/", id="empty-levels"),
        pytest.param("$aws/things/lamp/shadow/update", id="shadow-update"),
        pytest.param("$aws/things/lamp/shadow/name/cfg/get", id="named-shadow"),
        pytest.param("$aws/things/lamp/jobs/j1/update", id="jobs"),
        pytest.param("$aws/rules/r/" + "/".join("abcdefgh"), id="ingest-prefix-not-counted"),
        pytest.param("$aws/rules/r/" + "t" * 256, id="ingest-prefix-not-sized"),
        pytest.param("$aws/provisioning-templates/tpl/provision/json", id="provisioning"),
    ],
)
def test_check_publish_accepts(topic: str) -> None:
    assert check_publish(topic, 1, 131072, AWS_LIMITS) is None


def test_check_publish_retain_on_reserved_topic() -> None:
    Expect("reserved-retain").check(check_publish("$aws/things/t/shadow/update", 0, 1, retain=True))
    assert check_publish("plain/topic", 0, 1, retain=True) is None


def test_check_publish_outbound_skips_client_only_rules() -> None:
    assert check_publish("$aws/events/presence/connected/x", 1, 10, direction="out") is None
    Expect("payload-too-large").check(check_publish("t", 1, 131073, direction="out"))
    with pytest.raises(ConfigError):
        check_publish("t", 0, 0, direction="sideways")  # type: ignore[arg-type]


def test_allow_list_entries_are_publishable() -> None:
    for entry in CLIENT_PUBLISHABLE_RESERVED:
        topic = entry.replace("+", "x").replace("#", "y")
        assert check_publish(topic, 1, 0) is None, entry


# SUBSCRIBE (§4.2, §4.4, §4.5)


@pytest.mark.parametrize(
    ("filters", "existing", "expected"),
    [
        pytest.param([], 0, Expect("no-filters"), id="empty-request"),
        pytest.param([("a", 3)], 0, Expect("bad-qos"), id="qos3"),
        pytest.param([("a", 2)], 0, Expect("qos2-not-supported", IGNORED, None), id="qos2"),
        pytest.param(
            [("a", 0), ("b", 2)], 0, Expect("qos2-not-supported", IGNORED, None), id="one-qos2"
        ),
        pytest.param(
            [(f"t/{i}", 0) for i in range(9)], 0, Expect("too-many-filters"), id="9-filters"
        ),
        pytest.param([("a/#/b", 0)], 0, Expect("bad-filter"), id="hash-not-last"),
        pytest.param([("a/b#", 0)], 0, Expect("bad-filter"), id="hash-not-whole-level"),
        pytest.param([("a/b+/c", 0)], 0, Expect("bad-filter"), id="plus-not-whole-level"),
        pytest.param([("$share/g", 0)], 0, Expect("bad-filter"), id="share-without-filter"),
        pytest.param([("$share//a", 0)], 0, Expect("bad-filter"), id="share-without-name"),
        pytest.param([("$share/g+/a", 0)], 0, Expect("bad-filter"), id="share-wildcard-name"),
        pytest.param(
            [(f"$share/{'n' * 129}/a", 0)], 0, Expect("topic-too-long"), id="share-name-long"
        ),
        pytest.param([("", 0)], 0, Expect("empty-topic"), id="empty-filter"),
        pytest.param([("a\x00", 0)], 0, Expect("invalid-string"), id="nul"),
        pytest.param([("f" * 257, 0)], 0, Expect("topic-too-long"), id="257-bytes"),
        pytest.param([(NINE_LEVELS, 0)], 0, Expect("too-many-levels"), id="8-slashes"),
        pytest.param(
            [("+/+/+/+/+/+/+/+/#", 0)], 0, Expect("too-many-levels"), id="wildcard-levels"
        ),
        pytest.param([("$SYS/#", 0)], 0, Expect("reserved-topic", disconnect=FORBIDDEN), id="sys"),
        pytest.param(
            [("$aws/rules/r/#", 0)],
            0,
            Expect("reserved-topic", disconnect=FORBIDDEN),
            id="basic-ingest",
        ),
        pytest.param(
            [("a", 0), ("b", 0)],
            49,
            Expect("too-many-subscriptions", disconnect=THROTTLED),
            id="51-subscriptions",
        ),
    ],
)
def test_check_subscribe_violations(
    filters: list[tuple[str, int]], existing: int, expected: Expect
) -> None:
    expected.check(check_subscribe(filters, existing, AWS_LIMITS))


def test_check_subscribe_grants_at_most_qos1() -> None:
    decisions = check_subscribe([("a/+", 0), ("b/#", 1), ("#", 1)], 0, AWS_LIMITS)
    assert decisions == [
        SubscribeDecision("a/+", 0, 0),
        SubscribeDecision("b/#", 1, 1),
        SubscribeDecision("#", 1, 1),
    ]


@pytest.mark.parametrize(
    ("filters", "existing_count", "existing"),
    [
        pytest.param([(f"t/{i}", 0) for i in range(8)], 42, frozenset(), id="8-filters-to-50"),
        pytest.param([("a", 0), ("a", 1)], 49, frozenset(), id="repeated-filter-counts-once"),
        pytest.param([("a", 1)], 50, frozenset({"a"}), id="resubscribe-replaces"),
        pytest.param([("$aws/things/t/shadow/update/accepted", 1)], 0, frozenset(), id="aws-topic"),
        pytest.param([("$aws/events/presence/+/+", 1)], 0, frozenset(), id="lifecycle"),
        pytest.param([("$share/g/" + "/".join("abcdefgh"), 1)], 0, frozenset(), id="share"),
        pytest.param([("f" * 256, 0)], 0, frozenset(), id="256-bytes"),
    ],
)
def test_check_subscribe_accepts(
    filters: list[tuple[str, int]], existing_count: int, existing: frozenset[str]
) -> None:
    decision = check_subscribe(filters, existing_count, AWS_LIMITS, existing=existing)
    assert isinstance(decision, list) and len(decision) == len(filters)


# UNSUBSCRIBE (§4.3)


@pytest.mark.parametrize(
    ("filters", "flags", "expected"),
    [
        pytest.param(["a"], 0x0, Expect("bad-flags"), id="flags-0"),
        pytest.param([], None, Expect("no-filters"), id="empty-request"),
        pytest.param(["a/#/b"], None, Expect("bad-filter"), id="hash-not-last"),
        pytest.param([""], None, Expect("empty-topic"), id="empty-filter"),
        pytest.param(["\udc00"], None, Expect("invalid-string"), id="surrogate"),
    ],
)
def test_check_unsubscribe_violations(
    filters: list[str], flags: int | None, expected: Expect
) -> None:
    expected.check(check_unsubscribe(filters, AWS_LIMITS, header_flags=flags))


def test_check_unsubscribe_accepts() -> None:
    assert check_unsubscribe(["a/#", "$SYS/#", NINE_LEVELS], header_flags=0x2) is None


# Topic matching (§4.3; MQTT 3.1.1 §4.7)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        pytest.param("sensor/#", "sensor", False, id="hash-excludes-parent"),
        pytest.param("sensor/#", "sensor/a", True, id="hash-child"),
        pytest.param("sensor/#", "sensor/a/b", True, id="hash-grandchild"),
        pytest.param("sensor/#", "sensor/", True, id="hash-empty-child"),
        pytest.param("sensor/#", "sensors/a", False, id="hash-other-prefix"),
        pytest.param("#", "a", True, id="hash-alone"),
        pytest.param("#", "a/b/c", True, id="hash-alone-deep"),
        pytest.param("+", "a", True, id="plus-one-level"),
        pytest.param("+", "a/b", False, id="plus-not-two-levels"),
        pytest.param("+", "/a", False, id="plus-leading-slash"),
        pytest.param("+/+", "/a", True, id="plus-empty-level"),
        pytest.param("a/+/c", "a/b/c", True, id="plus-middle"),
        pytest.param("a/+/c", "a/c", False, id="plus-needs-a-level"),
        pytest.param("a/+", "a", False, id="plus-not-parent"),
        pytest.param("a/+/#", "a/b", False, id="plus-then-hash-parent"),
        pytest.param("a/+/#", "a/b/c", True, id="plus-then-hash"),
        pytest.param("a/b", "a/b", True, id="exact"),
        pytest.param("a/b", "A/b", False, id="case-sensitive"),
        pytest.param("a/b", "a/b/", False, id="trailing-slash"),
        pytest.param("#", "$SYS/x", False, id="hash-not-dollar"),
        pytest.param("+/x", "$SYS/x", False, id="plus-not-dollar"),
        pytest.param("$SYS/#", "$SYS/x", True, id="dollar-explicit"),
        pytest.param(
            "$aws/events/presence/+/+", "$aws/events/presence/connected/c", True, id="lifecycle"
        ),
        pytest.param("$share/g/a/+", "a/b", True, id="shared"),
        pytest.param("$share/g/#", "$aws/x", False, id="shared-hash-not-dollar"),
        pytest.param("a/#/b", "a/x/b", False, id="bad-filter-hash-not-last"),
        pytest.param("a+", "a+", False, id="bad-topic-wildcard"),
        pytest.param("", "", False, id="empty"),
        pytest.param("$share/g", "g", False, id="bad-share"),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "delivered"),
    [
        pytest.param("a/b", "a/b", True, id="exact"),
        pytest.param("a/+", "a/b", False, id="plus"),
        pytest.param("a/#", "a/b", False, id="hash"),
        pytest.param("#", "a/b", False, id="hash-alone"),
        pytest.param("a/c", "a/b", False, id="other"),
        pytest.param("$share/g/a/b", "a/b", False, id="shared"),
    ],
)
def test_retained_only_for_exact_filters(topic_filter: str, topic: str, delivered: bool) -> None:
    assert retained_delivered(topic_filter, topic) is delivered


# Rates (§4.3, §4.4)


def test_rate_limiter_100_per_second() -> None:
    limiter = RateLimiter(100, per_seconds=1.0)
    assert all(limiter.allow(10.0) for _ in range(100))
    assert not limiter.allow(10.0)
    assert not limiter.allow(10.005)  # half a token
    assert limiter.allow(10.01)  # one token back after 10 ms
    assert not limiter.allow(10.01)
    assert sum(limiter.allow(11.01) for _ in range(150)) == 100  # refills to the burst only


def test_rate_limiter_one_connect_per_second() -> None:
    limiter = RateLimiter(1)
    assert limiter.allow(5.0)
    assert not limiter.allow(5.5)
    assert not limiter.allow(5.999)
    assert limiter.allow(6.0)


def test_rate_limiter_clock_going_backwards_gives_nothing() -> None:
    limiter = RateLimiter(1)
    assert limiter.allow(5.0)
    assert not limiter.allow(3.0)
    assert not limiter.allow(5.5)
    assert limiter.allow(6.0)


def test_rate_limiter_reserve_delays_excess_bytes() -> None:
    limiter = RateLimiter(512 * 1024)
    assert limiter.reserve(0.0, 256 * 1024) == 0.0
    assert limiter.reserve(0.0, 512 * 1024) == pytest.approx(0.5)
    assert limiter.tokens(0.5) == pytest.approx(0.0)
    assert limiter.idle(1.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0}, {"rate": 1, "per_seconds": 0}, {"rate": 1, "burst": 0}],
    ids=["rate-0", "per-0", "burst-0"],
)
def test_rate_limiter_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RateLimiter(**kwargs)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("publish", Expect("rate-exceeded", Outcome.DISCARD, None)),
        ("subscribe", Expect("rate-exceeded", Outcome.SUBACK_FAILURE, None)),
        ("connect", Expect("rate-exceeded", disconnect=THROTTLED)),
    ],
)
def test_check_rate_outcomes(action: rules.RateAction, expected: Expect) -> None:
    limiter = RateLimiter(1)
    assert check_rate(limiter, 0.0, action=action) is None
    expected.check(check_rate(limiter, 0.1, action=action))
    assert check_rate(None, 0.1, action=action) is None


def test_connect_throttle_per_client_id() -> None:
    throttle = ConnectThrottle(AWS_LIMITS)
    assert throttle.check("a", 0.0) is None
    assert throttle.check("b", 0.1) is None
    Expect("rate-exceeded", disconnect=THROTTLED).check(throttle.check("a", 0.5))
    assert throttle.check("a", 1.0) is None
    assert ConnectThrottle(Limits.unlimited()).check("a", 0.0) is None


def test_connect_throttle_forgets_idle_client_ids() -> None:
    throttle = ConnectThrottle()
    for i in range(5000):
        assert throttle.check(f"dev-{i}", float(i)) is None
    assert len(throttle) < 2100


# Verdict invariants


def test_violation_has_disconnect_reason_exactly_when_it_closes() -> None:
    with pytest.raises(ConfigError):
        Violation("x", Outcome.CLOSE, "no reason")
    with pytest.raises(ConfigError):
        Violation("x", Outcome.IGNORE, "reason", CLIENT_ERROR)
    assert Violation("x", Outcome.CLOSE, "e", CLIENT_ERROR).closes


# Lifecycle (§4.6)


def test_disconnect_reasons_are_the_documented_values() -> None:
    assert {r.value for r in DisconnectReason} == {
        "AUTH_ERROR",
        "CLIENT_INITIATED_DISCONNECT",
        "CLIENT_ERROR",
        "CONNECTION_LOST",
        "DUPLICATE_CLIENTID",
        "FORBIDDEN_ACCESS",
        "MQTT_KEEP_ALIVE_TIMEOUT",
        "SERVER_INITIATED_DISCONNECT",
        "THROTTLED",
        "SERVER_ERROR",
        "API_INITIATED_DISCONNECT",
        "WEBSOCKET_TTL_EXPIRATION",
        "CUSTOMAUTH_TTL_EXPIRATION",
        "UNKNOWN",
        "NONE",
    }
    assert f"{DisconnectReason.THROTTLED}" == "THROTTLED"


@pytest.mark.parametrize(
    ("client_id", "topic"),
    [
        ("186b5", "$aws/events/presence/connected/186b5"),
        ("a#", None),
        ("a+b", None),
    ],
)
def test_presence_topic(client_id: str, topic: str | None) -> None:
    assert presence_topic("connected", client_id) == topic
    if topic is not None:
        assert presence_topic("disconnected", client_id) == topic.replace(
            "connected", "disconnected"
        )


def test_subscription_topic() -> None:
    assert subscription_topic("subscribed", "c1") == "$aws/events/subscriptions/subscribed/c1"
    assert subscription_topic("unsubscribed", "c1") == "$aws/events/subscriptions/unsubscribed/c1"
    assert subscription_topic("subscribed", "c#") is None
    with pytest.raises(ConfigError):
        subscription_topic("connected", "c1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        presence_topic("subscribed", "c1")  # type: ignore[arg-type]


def test_disconnect_payload_is_aws_example_byte_for_byte() -> None:
    payload = presence_payload(
        event_type="disconnected",
        client_id="186b5",
        timestamp_ms=1573002340451,
        session_id="a4666d2a7d844ae4ac5d7b38c9cb7967",
        principal="12345678901234567890123456789012",
        disconnect_reason=DisconnectReason.CLIENT_INITIATED_DISCONNECT,
    )
    assert payload == (
        b'{"clientId":"186b5","timestamp":1573002340451,"eventType":"disconnected",'
        b'"sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967",'
        b'"principalIdentifier":"12345678901234567890123456789012",'
        b'"clientInitiatedDisconnect":true,"disconnectReason":"CLIENT_INITIATED_DISCONNECT",'
        b'"versionNumber":0}'
    )


def test_connect_payload_is_aws_example_byte_for_byte() -> None:
    payload = presence_payload(
        event_type="connected",
        client_id="186b5",
        timestamp_ms=1573002230757,
        session_id="a4666d2a7d844ae4ac5d7b38c9cb7967",
        principal="12345678901234567890123456789012",
        ip_address="192.0.2.0",
    )
    assert payload == (
        b'{"clientId":"186b5","timestamp":1573002230757,"eventType":"connected",'
        b'"sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967",'
        b'"principalIdentifier":"12345678901234567890123456789012",'
        b'"ipAddress":"192.0.2.0","versionNumber":0}'
    )


def test_disconnect_payload_server_side_reason() -> None:
    document = json.loads(
        presence_payload(
            event_type="disconnected",
            client_id="dev",
            timestamp_ms=1,
            session_id="s",
            principal="p",
            disconnect_reason=DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT,
            version=7,
        )
    )
    assert document["clientInitiatedDisconnect"] is False
    assert document["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    assert document["versionNumber"] == 7


def test_presence_payload_keeps_unicode_and_survives_bad_strings() -> None:
    common = {"timestamp_ms": 1, "session_id": "s", "principal": "p"}
    payload = presence_payload(event_type="connected", client_id="gerät", **common)  # type: ignore[arg-type]
    assert "gerät".encode() in payload
    odd = presence_payload(event_type="connected", client_id="\udc80", **common)  # type: ignore[arg-type]
    assert json.loads(odd)["clientId"] == "\udc80"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"event_type": "connected", "disconnect_reason": CLIENT_ERROR}, id="c-reason"),
        pytest.param({"event_type": "connected", "client_initiated": True}, id="c-initiated"),
        pytest.param({"event_type": "disconnected"}, id="d-no-reason"),
        pytest.param(
            {"event_type": "disconnected", "disconnect_reason": CLIENT_ERROR, "ip_address": "x"},
            id="d-ip",
        ),
        pytest.param({"event_type": "subscribed"}, id="wrong-type"),
    ],
)
def test_presence_payload_misuse(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        presence_payload(client_id="c", timestamp_ms=1, session_id="s", principal="p", **kwargs)  # type: ignore[arg-type]


def test_subscription_payload_shape() -> None:
    payload = subscription_payload(
        event_type="subscribed",
        client_id="186b5",
        timestamp_ms=1460065214626,
        session_id="00000000-0000-0000-0000-000000000000",
        principal="p",
        topics=("foo/bar", "device/data"),
    )
    assert payload == (
        b'{"clientId":"186b5","timestamp":1460065214626,"eventType":"subscribed",'
        b'"sessionIdentifier":"00000000-0000-0000-0000-000000000000",'
        b'"principalIdentifier":"p","topics":["foo/bar","device/data"]}'
    )
    with pytest.raises(ConfigError):
        subscription_payload(
            event_type="connected",  # type: ignore[arg-type]
            client_id="c",
            timestamp_ms=1,
            session_id="s",
            principal="p",
            topics=[],
        )


# Properties

LEVEL = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]),
    max_size=6,
)
TOPIC = st.lists(LEVEL, min_size=1, max_size=10).map("/".join).filter(bool)
ANY_TEXT = st.text(alphabet=st.characters(), max_size=300)  # surrogates and NUL included


@given(TOPIC)
def test_topic_matches_itself(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert retained_delivered(topic, topic)


@given(TOPIC)
def test_hash_never_matches_its_parent(topic: str) -> None:
    assert not topic_matches(topic + "/#", topic)


@given(TOPIC, LEVEL)
def test_hash_matches_every_child(topic: str, child: str) -> None:
    assert topic_matches(topic + "/#", f"{topic}/{child}")


@given(TOPIC, st.data())
def test_plus_matches_exactly_one_level(topic: str, data: st.DataObject) -> None:
    levels = topic.split("/")
    i = data.draw(st.integers(0, len(levels) - 1))
    with_plus = "/".join([*levels[:i], "+", *levels[i + 1 :]])
    matches = topic_matches(with_plus, topic)
    assert matches is not (topic.startswith("$") and i == 0)
    assert not topic_matches(with_plus, topic + "/x")
    assert not retained_delivered(with_plus, topic)
    if len(levels) > 1:
        assert not topic_matches(with_plus, "/".join(levels[:-1]))


@given(TOPIC)
def test_wildcard_first_filters_never_match_dollar_topics(topic: str) -> None:
    dollar = "$" + topic
    assert not topic_matches("#", dollar)
    assert not topic_matches("/".join(["+"] * len(dollar.split("/"))), dollar)


@given(ANY_TEXT, ANY_TEXT)
def test_topic_functions_never_raise(topic_filter: str, topic: str) -> None:
    assert isinstance(topic_matches(topic_filter, topic), bool)
    assert isinstance(retained_delivered(topic_filter, topic), bool)


def _is_verdict(value: object) -> bool:
    return value is None or isinstance(value, Violation)


@given(ANY_TEXT, st.one_of(st.none(), st.integers()), st.one_of(st.none(), ANY_TEXT), st.integers())
def test_check_connect_never_raises(
    client_id: str, will_qos: int | None, will_topic: str | None, size: int
) -> None:
    assert _is_verdict(check_connect(client_id, will_qos, will_topic, size, AWS_LIMITS))


@given(ANY_TEXT, st.integers(), st.integers(), st.booleans(), st.sampled_from(["in", "out"]))
def test_check_publish_never_raises(
    topic: str, qos: int, size: int, retain: bool, direction: rules.Direction
) -> None:
    assert _is_verdict(check_publish(topic, qos, size, retain=retain, direction=direction))


@given(st.lists(st.tuples(ANY_TEXT, st.integers()), max_size=12), st.integers())
def test_check_subscribe_never_raises(filters: list[tuple[str, int]], existing: int) -> None:
    verdict = check_subscribe(filters, existing, AWS_LIMITS)
    if isinstance(verdict, list):
        assert [d.topic_filter for d in verdict] == [f for f, _ in filters]
        assert all(d.granted_qos in (0, 1) for d in verdict)
    else:
        assert isinstance(verdict, Violation)


@given(st.lists(ANY_TEXT, max_size=10), st.one_of(st.none(), st.integers()))
def test_check_unsubscribe_never_raises(filters: list[str], flags: int | None) -> None:
    assert _is_verdict(check_unsubscribe(filters, header_flags=flags))


@given(TOPIC, st.integers(0, 1), st.integers(0, 131072))
def test_valid_short_topics_pass(topic: str, qos: int, size: int) -> None:
    verdict = check_publish(topic, qos, size)
    if topic.startswith("$"):
        return
    if len(topic.encode()) <= 256 and topic.count("/") <= 7:
        assert verdict is None
    else:
        assert verdict is not None and verdict.reason in ("topic-too-long", "too-many-levels")


@given(st.integers(-(2**31), 2**31))
def test_clamped_keepalive_is_in_aws_range(requested: int) -> None:
    assert 30 <= clamp_keepalive(requested) <= 1200


@given(
    st.integers(1, 200),
    st.lists(st.floats(0, 0.05, allow_nan=False), min_size=1, max_size=400),
)
def test_rate_limiter_never_exceeds_rate_plus_burst(rate: int, gaps: list[float]) -> None:
    limiter = RateLimiter(rate)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow(now)
    assert allowed <= rate + now * rate + 1e-6


def test_rate_limiter_tolerates_float_rounding() -> None:
    limiter = RateLimiter(1)
    assert limiter.allow(5.1)
    assert limiter.allow(6.1)  # 6.1 - 5.1 == 0.9999999999999996


def test_check_rate_unknown_action_is_misuse() -> None:
    limiter = RateLimiter(1)
    limiter.allow(0.0)
    with pytest.raises(ConfigError):
        check_rate(limiter, 0.0, action="retain")  # type: ignore[arg-type]
