"""AWS IoT Core's MQTT semantics, as pure functions over plain values (aws-iot.md §4).

AWS IoT is not a generic MQTT broker (aws-iot.md §4, summary point 4): it has no QoS 2,
its ``#`` does not match the parent level, retained messages reach exact-match
subscriptions only, keep-alive is clamped to 30-1200 s, and a long list of quotas
applies (§4.4). On MQTT 3.1.1 it can say "no" in only three ways: silence (no ack), a
SUBACK 0x80 (throttling only) or closing the connection without a word (§4.5). This
module decides which, and why; the gateway's session pump acts on the verdict.

Nothing here touches a socket, a clock or a file: every function takes topics, QoS
integers, client ids, sizes and an explicit ``now``. The module deliberately does not
import :mod:`harness.mqtt.codec`, so it can be tested (and fuzzed) on its own.

Verdicts are :class:`Violation` values with a stable kebab-case ``reason`` (used in events
and expectations), an :class:`Outcome` telling the pump what AWS does on the wire, a
sentence for humans, and for closes the lifecycle :class:`DisconnectReason` (§4.6).
Where AWS does not document the wire behaviour, the choice is marked **(inferred)**.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Sequence, Set
from dataclasses import dataclass, fields
from typing import Literal

from harness.errors import ConfigError

__all__ = [
    "AWS_LIMITS",
    "CLIENT_PUBLISHABLE_RESERVED",
    "KEEPALIVE_RESET_PACKETS",
    "ConnectThrottle",
    "Direction",
    "DisconnectReason",
    "KeepAlive",
    "Limits",
    "Outcome",
    "RateAction",
    "RateLimiter",
    "SubscribeDecision",
    "Violation",
    "check_connect",
    "check_publish",
    "check_rate",
    "check_subscribe",
    "check_unsubscribe",
    "clamp_keepalive",
    "keepalive_deadline",
    "presence_payload",
    "presence_topic",
    "resets_keepalive",
    "retained_delivered",
    "subscription_payload",
    "subscription_topic",
    "topic_matches",
]


Direction = Literal["in", "out"]
"""A PUBLISH from the client (``"in"``) or a delivery to it (``"out"``)."""
RateAction = Literal["publish", "subscribe", "connect"]
"""What a rate limit counts; decides what AWS does with the excess (:func:`check_rate`)."""


# Limits


@dataclass(frozen=True, kw_only=True)
class Limits:
    """AWS IoT Core's message-broker quotas; the defaults are AWS's values (aws-iot.md §4.4).

    ``None`` switches a limit off. Sizes are bytes of UTF-8, times are seconds (fractions
    allowed, so a scenario can compress the 24 h WebSocket lifetime into a second).
    """

    # Sizes (§4.4): "payload (PUBLISH and CONNECT) 128 KB", topics 256 bytes UTF-8.
    max_payload: int | None = 128 * 1024
    max_topic_bytes: int | None = 256
    # ≤7 slashes (8 levels) in topics and filters; `$aws/rules/<rule>/` is not counted.
    max_topic_slashes: int | None = 7
    max_client_id_bytes: int | None = 128
    # MQTT 5 shared subscriptions: `$share/<name>/<filter>`, name ≤128 bytes (§4.1).
    max_share_name_bytes: int | None = 128

    # Subscriptions (§4.4)
    max_filters_per_subscribe: int | None = 8
    max_subscriptions_per_connection: int | None = 50

    # Rates (§4.4, §4.3): per connection, inbound + outbound; CONNECT per client id.
    publishes_per_second: int | None = 100
    throughput_bytes_per_second: int | None = 512 * 1024
    max_inflight: int | None = 100
    connects_per_client_id_per_second: int | None = 1

    # Timeouts (§4.3, §4.4)
    keepalive_min: float | None = 30
    keepalive_max: float | None = 1200
    keepalive_factor: float = 1.5
    websocket_lifetime: float | None = 86400.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ConfigError(f"Limits.{f.name} must be a non-negative number or None")
        if not self.keepalive_factor > 0:
            raise ConfigError("Limits.keepalive_factor must be positive")
        lo, hi = self.keepalive_min, self.keepalive_max
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError("Limits.keepalive_min must not exceed Limits.keepalive_max")

    @classmethod
    def unlimited(cls) -> Limits:
        """Every quota off: generic-MQTT sizes and rates, no keep-alive clamp.

        The AWS semantics that are not quotas (no QoS 2, ``#`` excluding its parent,
        reserved ``$`` topics) still apply.
        """
        return cls(
            max_payload=None,
            max_topic_bytes=None,
            max_topic_slashes=None,
            max_client_id_bytes=None,
            max_share_name_bytes=None,
            max_filters_per_subscribe=None,
            max_subscriptions_per_connection=None,
            publishes_per_second=None,
            throughput_bytes_per_second=None,
            max_inflight=None,
            connects_per_client_id_per_second=None,
            keepalive_min=None,
            keepalive_max=None,
            websocket_lifetime=None,
        )


AWS_LIMITS = Limits()
"""The AWS defaults (aws-iot.md §4.4), used when a check is given no ``limits``."""


# Keep-alive


def clamp_keepalive(requested: float, limits: Limits = AWS_LIMITS) -> float:
    """The keep-alive AWS actually enforces for a CONNECT's request (aws-iot.md §4.3).

    "Keep-alive 30-1200 s: 0 or >1200 → 1200, 1-29 → 30". With ``keepalive_max`` off, 0
    keeps its MQTT meaning (no keep-alive); with ``keepalive_min`` off, small values stay.
    """
    lo, hi = limits.keepalive_min, limits.keepalive_max
    if requested <= 0:
        return hi if hi is not None else 0
    if hi is not None and requested > hi:
        return hi
    if lo is not None and requested < lo:
        return lo
    return requested


def keepalive_deadline(keepalive: float, *, factor: float = 1.5) -> float:
    """Seconds of silence after which AWS drops the client: 1.5x keep-alive (§4.3).

    A keep-alive of 0 (possible only with the clamp off) never expires: ``math.inf``.
    """
    if keepalive <= 0:
        return math.inf
    return keepalive * factor


KEEPALIVE_RESET_PACKETS = frozenset({"PUBLISH", "SUBSCRIBE", "PINGREQ", "PUBACK"})
"""The packets that reset AWS's keep-alive timer, exactly as §4.3 lists them."""


def resets_keepalive(packet_type: str) -> bool:
    """Whether a client packet of this type (e.g. ``"PINGREQ"``) resets the timer (§4.3)."""
    return packet_type.upper() in KEEPALIVE_RESET_PACKETS


class KeepAlive:
    """AWS's keep-alive timer for one connection, with an explicit clock (aws-iot.md §4.3).

    The timer starts at CONNACK (pass that moment as ``now``) and is reset by the packets
    in :data:`KEEPALIVE_RESET_PACKETS`; the connection is cut once more than
    ``factor`` x ``keepalive_s`` seconds pass without one (MQTT_KEEP_ALIVE_TIMEOUT, §4.6).
    """

    def __init__(self, keepalive_s: float, *, factor: float = 1.5, now: float = 0.0) -> None:
        if not factor > 0:
            raise ConfigError("KeepAlive factor must be positive")
        self.keepalive = keepalive_s
        self.factor = factor
        self.last_activity = now

    def touch(self, now: float) -> None:
        """A resetting packet arrived at ``now`` (a clock going backwards is ignored)."""
        self.last_activity = max(self.last_activity, now)

    @property
    def deadline(self) -> float:
        """The moment after which the connection is dead; ``math.inf`` if keep-alive is 0."""
        return self.last_activity + keepalive_deadline(self.keepalive, factor=self.factor)

    def expired(self, now: float) -> bool:
        """True once ``now`` is past :attr:`deadline`."""
        return now > self.deadline

    def __repr__(self) -> str:
        return (
            f"KeepAlive({self.keepalive!r}, factor={self.factor!r}, "
            f"last_activity={self.last_activity!r})"
        )


# Lifecycle disconnect reasons


class DisconnectReason(enum.StrEnum):
    """``disconnectReason`` of the lifecycle disconnect event (aws-iot.md §4.6).

    The first nine are documented on the lifecycle page [D-lifecycle]; the rest come from
    the API model's ``DisconnectReasonValue`` [R-botocore-iot]. The harness uses the two
    TTL values for the 24 h WebSocket close and custom auth's ``disconnectAfterInSeconds``
    **(inferred from the names)**.
    """

    AUTH_ERROR = "AUTH_ERROR"
    CLIENT_INITIATED_DISCONNECT = "CLIENT_INITIATED_DISCONNECT"
    CLIENT_ERROR = "CLIENT_ERROR"
    CONNECTION_LOST = "CONNECTION_LOST"
    DUPLICATE_CLIENTID = "DUPLICATE_CLIENTID"
    FORBIDDEN_ACCESS = "FORBIDDEN_ACCESS"
    MQTT_KEEP_ALIVE_TIMEOUT = "MQTT_KEEP_ALIVE_TIMEOUT"
    SERVER_INITIATED_DISCONNECT = "SERVER_INITIATED_DISCONNECT"
    THROTTLED = "THROTTLED"
    SERVER_ERROR = "SERVER_ERROR"
    API_INITIATED_DISCONNECT = "API_INITIATED_DISCONNECT"
    WEBSOCKET_TTL_EXPIRATION = "WEBSOCKET_TTL_EXPIRATION"
    CUSTOMAUTH_TTL_EXPIRATION = "CUSTOMAUTH_TTL_EXPIRATION"
    UNKNOWN = "UNKNOWN"
    NONE = "NONE"


# Verdicts


class Outcome(enum.Enum):
    """What AWS does on the wire about a violation, on MQTT 3.1.1 (aws-iot.md §4.2, §4.5)."""

    IGNORE = "ignore"
    """Drop the packet silently: no PUBACK/SUBACK, connection stays (QoS 2, §4.2)."""
    CLOSE = "close"
    """Close the connection without any MQTT reply (no CONNACK code, no SUBACK, §4.5)."""
    SUBACK_FAILURE = "suback-failure"
    """Answer SUBACK 0x80 for every filter; only ever for throttling (§4.5)."""
    DISCARD = "discard"
    """Discard the excess publish, keep the connection (publish rate, §4.4)."""


@dataclass(frozen=True)
class Violation:
    """Why AWS refuses a packet, and what it does about it.

    ``reason`` is a stable kebab-case code (events, expectations); ``explain`` a sentence
    for humans; ``disconnect_reason`` the lifecycle reason (§4.6), set exactly when the
    outcome is :attr:`Outcome.CLOSE`.
    """

    reason: str
    outcome: Outcome
    explain: str
    disconnect_reason: DisconnectReason | None = None

    def __post_init__(self) -> None:
        if (self.outcome is Outcome.CLOSE) != (self.disconnect_reason is not None):
            raise ConfigError("a Violation has a disconnect_reason exactly when it closes")

    @property
    def closes(self) -> bool:
        """Whether the connection ends."""
        return self.outcome is Outcome.CLOSE


def _close(
    reason: str, explain: str, why: DisconnectReason = DisconnectReason.CLIENT_ERROR
) -> Violation:
    return Violation(reason, Outcome.CLOSE, explain, why)


def _show(value: str, limit: int = 80) -> str:
    """A topic or client id for an explanation: repr'd (safe for any string), shortened."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


def _invalid_string(value: str) -> bool:
    """MQTT 3.1.1 §1.5.3: no U+0000 and no surrogates (ill-formed UTF-8) in any string."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


# Topic names and filters

_RULES_PREFIX = re.compile(r"\$aws/rules/[^/]+/")
_SHARE = "$share/"

CLIENT_PUBLISHABLE_RESERVED: tuple[str, ...] = (
    # Device Shadow requests, classic and named (the /accepted, /rejected, /delta and
    # /documents replies are AWS's to publish).
    "$aws/things/+/shadow/get",
    "$aws/things/+/shadow/update",
    "$aws/things/+/shadow/delete",
    "$aws/things/+/shadow/name/+/get",
    "$aws/things/+/shadow/name/+/update",
    "$aws/things/+/shadow/name/+/delete",
    # Jobs requests.
    "$aws/things/+/jobs/get",
    "$aws/things/+/jobs/start-next",
    "$aws/things/+/jobs/+/get",
    "$aws/things/+/jobs/+/update",
    # Basic Ingest: `$aws/rules/<rule>/<topic>` (publish only; `#` excludes the bare rule).
    "$aws/rules/+/#",
    # Fleet provisioning.
    "$aws/certificates/create/json",
    "$aws/certificates/create/cbor",
    "$aws/certificates/create-from-csr/json",
    "$aws/certificates/create-from-csr/cbor",
    "$aws/provisioning-templates/+/provision/json",
    "$aws/provisioning-templates/+/provision/cbor",
    # Device Defender metrics.
    "$aws/things/+/defender/metrics/json",
    "$aws/things/+/defender/metrics/cbor",
)
"""Reserved topics a client may PUBLISH to: a small allow-list, not AWS's full catalogue.

"`$` topics: reserved; only AWS-defined ones usable" (aws-iot.md §4.4). These are the
request topics of the AWS features a device publishes to; anything else starting with
``$`` (``$SYS/...``, ``$aws/events/...``, shadow replies) is refused. Extend it here when
a scenario needs another AWS feature.
"""


def _counted(name: str) -> str:
    """The part of a topic that counts towards size and slashes: no `$aws/rules/<rule>/`.

    §4.4 excludes the Basic Ingest prefix from the slash count; AWS's current quota page
    excludes it from the 256-byte size too (both applied here).
    """
    match = _RULES_PREFIX.match(name)
    return name[match.end() :] if match else name


def _check_topic_name(topic: str, limits: Limits, *, what: str) -> Violation | None:
    """Structure and size of a topic *name* (PUBLISH, Will): no wildcards (§4.4, §4.7)."""
    if not topic:
        return _close("empty-topic", f"{what} is empty (MQTT 3.1.1 §4.7.3)")
    if _invalid_string(topic):
        return _close(
            "invalid-string",
            f"{what} {_show(topic)} contains U+0000 or ill-formed UTF-8 (MQTT 3.1.1 §1.5.3)",
        )
    if "+" in topic or "#" in topic:
        return _close(
            "wildcard-in-topic",
            f"{what} {_show(topic)} contains a wildcard, allowed only in filters "
            "(MQTT 3.1.1 §3.3.2.1)",
        )
    return _check_size_and_levels(_counted(topic), topic, limits, what=what)


def _check_size_and_levels(
    counted: str, shown: str, limits: Limits, *, what: str
) -> Violation | None:
    if limits.max_topic_bytes is not None and _utf8_len(counted) > limits.max_topic_bytes:
        return _close(
            "topic-too-long",
            f"{what} {_show(shown)} is {_utf8_len(counted)} bytes, more than AWS's "
            f"{limits.max_topic_bytes} (aws-iot.md §4.4)",
        )
    if limits.max_topic_slashes is not None and counted.count("/") > limits.max_topic_slashes:
        return _close(
            "too-many-levels",
            f"{what} {_show(shown)} has {counted.count('/')} slashes, more than AWS's "
            f"{limits.max_topic_slashes} (aws-iot.md §4.4)",
        )
    return None


def _split_share(topic_filter: str) -> tuple[str | None, str] | None:
    """``$share/<name>/<filter>`` → (name, filter); a plain filter → (None, filter).

    None when the share syntax is broken (no name, no filter, wildcard in the name).
    """
    if not topic_filter.startswith(_SHARE):
        return None, topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) != 3:
        return None
    _, name, inner = parts
    if not name or not inner or "+" in name or "#" in name:
        return None
    return name, inner


def _wildcards_ok(topic_filter: str) -> bool:
    """MQTT 3.1.1 §4.7.1: ``#`` alone and last, ``+`` a whole level."""
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _subscribable_reserved(topic_filter: str) -> bool:
    """``$`` filters a client may subscribe to: AWS's own ``$aws/...`` namespace, except
    Basic Ingest, which nobody can subscribe to (aws-iot.md §4.4; iot-basic-ingest)."""
    return topic_filter.startswith("$aws/") and not topic_filter.startswith("$aws/rules/")


def _check_filter(topic_filter: str, limits: Limits, *, full: bool) -> Violation | None:
    """A SUBSCRIBE (``full``) or UNSUBSCRIBE filter: structure, then AWS's quotas."""
    what = "topic filter"
    if not topic_filter:
        return _close("empty-topic", f"a {what} is empty (MQTT 3.1.1 §4.7.3)")
    if _invalid_string(topic_filter):
        return _close(
            "invalid-string",
            f"{what} {_show(topic_filter)} contains U+0000 or ill-formed UTF-8 (MQTT 3.1.1 §1.5.3)",
        )
    split = _split_share(topic_filter)
    if split is None:
        return _close(
            "bad-filter",
            f"{what} {_show(topic_filter)} is not `$share/<name>/<filter>` (aws-iot.md §4.1)",
        )
    share_name, inner = split
    if not _wildcards_ok(inner):
        return _close(
            "bad-filter",
            f"{what} {_show(topic_filter)}: `#` must be a whole last level and `+` a whole "
            "level (MQTT 3.1.1 §4.7.1)",
        )
    if not full:
        return None
    if (
        share_name is not None
        and limits.max_share_name_bytes is not None
        and _utf8_len(share_name) > limits.max_share_name_bytes
    ):
        return _close(
            "topic-too-long",
            f"shared subscription name in {_show(topic_filter)} is longer than "
            f"{limits.max_share_name_bytes} bytes (aws-iot.md §4.1)",
        )
    violation = _check_size_and_levels(_counted(inner), topic_filter, limits, what=what)
    if violation is not None:
        return violation
    if inner.startswith("$") and not _subscribable_reserved(inner):
        # `$SYS/#` → disconnect (aws-iot.md §4.5); reason FORBIDDEN_ACCESS (inferred).
        return _close(
            "reserved-topic",
            f"{what} {_show(topic_filter)} is in a reserved `$` namespace AWS does not "
            "offer (aws-iot.md §4.4, §4.5)",
            DisconnectReason.FORBIDDEN_ACCESS,
        )
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether AWS delivers a message on ``topic`` to a subscription on ``topic_filter``.

    MQTT 3.1.1 §4.7 with AWS's twist (aws-iot.md §4.3): ``#`` matches the children of its
    level but NOT the parent (``sensor/#`` does not match ``sensor``); ``+`` matches
    exactly one level (possibly empty); a filter starting with a wildcard never matches
    a ``$`` topic (MQTT 3.1.1 §4.7.2). ``$share/<name>/`` is stripped first (§4.1).
    Malformed filters and topic names containing wildcards match nothing; never raises.
    """
    split = _split_share(topic_filter)
    if split is None or not topic or "+" in topic or "#" in topic:
        return False
    inner = split[1]
    if not inner:
        return False
    f_levels = inner.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(f_levels):
        if level == "#":
            # AWS: at least one child level; the parent itself is not matched.
            return i == len(f_levels) - 1 and len(t_levels) > i
        if i >= len(t_levels):
            return False
        if level == "+":
            continue
        if "+" in level or "#" in level or level != t_levels[i]:
            return False
    return len(t_levels) == len(f_levels)


def retained_delivered(topic_filter: str, topic: str) -> bool:
    """Whether a retained message on ``topic`` is sent to a new ``topic_filter`` subscription.

    AWS delivers retained messages only to exact-match subscriptions, never through
    wildcards (aws-iot.md §4.3); shared subscriptions get none (MQTT 5 §4.8.2).
    """
    return (
        bool(topic)
        and topic_filter == topic
        and "+" not in topic
        and "#" not in topic
        and not topic.startswith(_SHARE)
    )


# Checks


def check_connect(
    client_id: str,
    will_qos: int | None = None,
    will_topic: str | None = None,
    payload_size: int = 0,
    limits: Limits = AWS_LIMITS,
) -> Violation | None:
    """AWS's verdict on a CONNECT's own content, before authentication (aws-iot.md §4).

    ``payload_size`` is the CONNECT payload AWS measures against the 128 KB quota (the
    gateway passes the Will message). Every violation closes the connection without a
    CONNACK (§4.5): client id over 128 bytes or starting with the reserved ``$``
    (§4.4), oversize payload, a Will with QoS 2 ("IoT closes the TCP connection at
    CONNECT", §4.2), an invalid Will topic. An empty client id is not refused: no
    source says AWS does. The per-client-id CONNECT rate is :class:`ConnectThrottle`'s.
    """
    if _invalid_string(client_id):
        return _close(
            "invalid-string",
            f"client id {_show(client_id)} contains U+0000 or ill-formed UTF-8 (MQTT 3.1.1 §1.5.3)",
        )
    if limits.max_client_id_bytes is not None and _utf8_len(client_id) > limits.max_client_id_bytes:
        return _close(
            "client-id-too-long",
            f"client id is {_utf8_len(client_id)} bytes, more than AWS's "
            f"{limits.max_client_id_bytes} (aws-iot.md §4.4)",
        )
    if client_id.startswith("$"):
        return _close(
            "client-id-reserved",
            f"client id {_show(client_id)} starts with `$`, reserved by AWS (aws-iot.md §4.4)",
        )
    if limits.max_payload is not None and payload_size > limits.max_payload:
        return _close(
            "payload-too-large",
            f"CONNECT payload is {payload_size} bytes, more than AWS's {limits.max_payload} "
            "(aws-iot.md §4.4)",
        )
    if will_qos is not None:
        if will_qos == 2:
            return _close(
                "will-qos2",
                "the Will has QoS 2, which AWS IoT does not support: it closes the "
                "connection at CONNECT (aws-iot.md §4.2)",
            )
        if will_qos not in (0, 1):
            return _close("bad-qos", f"Will QoS {will_qos} does not exist (MQTT 3.1.1 §3.1.2.6)")
    if will_topic is not None:
        return _check_topic_name(will_topic, limits, what="Will topic")
    return None


def check_publish(
    topic: str,
    qos: int,
    payload_size: int,
    limits: Limits = AWS_LIMITS,
    *,
    retain: bool = False,
    direction: Direction = "in",
) -> Violation | None:
    """AWS's verdict on a PUBLISH (aws-iot.md §4.2, §4.4), before policy.

    ``direction="in"`` is a client's publish; ``"out"`` a delivery to a client, where
    only the structural checks apply (AWS itself publishes on reserved topics).

    Order: QoS that does not exist, payload size, topic (empty, ill-formed, wildcard,
    size, slashes), reserved ``$`` topics, retain on a reserved topic, then QoS 2. Size
    and topic violations close with CLIENT_ERROR (AWS names "oversize payload" as a
    CLIENT_ERROR, §4.6; "rejected" on 3.1.1 can only be a close **(inferred)**). A
    reserved topic outside :data:`CLIENT_PUBLISHABLE_RESERVED` closes with
    FORBIDDEN_ACCESS **(inferred)**. QoS 2 is ignored without any ack (§4.2).
    """
    if direction not in ("in", "out"):
        raise ConfigError(f"direction must be 'in' or 'out', not {direction!r}")
    if qos not in (0, 1, 2):
        return _close("bad-qos", f"PUBLISH QoS {qos} does not exist (MQTT 3.1.1 §3.3.1.2)")
    if limits.max_payload is not None and payload_size > limits.max_payload:
        return _close(
            "payload-too-large",
            f"PUBLISH payload is {payload_size} bytes, more than AWS's {limits.max_payload} "
            "(aws-iot.md §4.4)",
        )
    violation = _check_topic_name(topic, limits, what="topic")
    if violation is not None:
        return violation
    if direction == "out":
        return None
    if topic.startswith("$"):
        if not any(topic_matches(f, topic) for f in CLIENT_PUBLISHABLE_RESERVED):
            return _close(
                "reserved-topic",
                f"topic {_show(topic)} is reserved: clients may publish only to AWS-defined "
                "`$` topics (aws-iot.md §4.4)",
                DisconnectReason.FORBIDDEN_ACCESS,
            )
        if retain:
            return _close(
                "reserved-retain",
                f"RETAIN on reserved topic {_show(topic)} is not allowed (aws-iot.md §4.3)",
            )
    if qos == 2:
        return Violation(
            "qos2-not-supported",
            Outcome.IGNORE,
            f"PUBLISH QoS 2 on {_show(topic)}: AWS IoT ignores it and sends no ack "
            "(aws-iot.md §4.2)",
        )
    return None


@dataclass(frozen=True)
class SubscribeDecision:
    """One accepted filter of a SUBSCRIBE: AWS grants at most QoS 1 (aws-iot.md §4.1)."""

    topic_filter: str
    requested_qos: int
    granted_qos: int


def check_subscribe(
    filters: Sequence[tuple[str, int]],
    existing_count: int = 0,
    limits: Limits = AWS_LIMITS,
    *,
    existing: Set[str] = frozenset(),
) -> list[SubscribeDecision] | Violation:
    """AWS's verdict on a SUBSCRIBE, before policy (aws-iot.md §4.2, §4.4, §4.5).

    ``existing_count`` is how many subscriptions the connection holds; filters in
    ``existing`` (or repeated in the request) replace a subscription instead of adding
    one (MQTT 3.1.1 §3.8.4).

    Order: no filters or a QoS that does not exist (malformed, close); more than 8
    filters (close); each filter's structure, size, levels and namespace (close);
    any QoS 2 request (ignored, no SUBACK, §4.2); more than 50 subscriptions on the
    connection ("may be rejected … and the connection will be closed", §4.4: close with
    THROTTLED **(inferred)**). SUBACK 0x80 is for throttling only: see :func:`check_rate`.
    On success, one :class:`SubscribeDecision` per requested filter, in order.
    """
    if not filters:
        return _close("no-filters", "SUBSCRIBE carries no topic filter (MQTT 3.1.1 §3.8.3)")
    for _, qos in filters:
        if qos not in (0, 1, 2):
            return _close("bad-qos", f"requested QoS {qos} does not exist (MQTT 3.1.1 §3.8.3.1)")
    if limits.max_filters_per_subscribe is not None and len(filters) > (
        limits.max_filters_per_subscribe
    ):
        return _close(
            "too-many-filters",
            f"SUBSCRIBE carries {len(filters)} filters, more than AWS's "
            f"{limits.max_filters_per_subscribe} (aws-iot.md §4.4)",
        )
    for topic_filter, _ in filters:
        violation = _check_filter(topic_filter, limits, full=True)
        if violation is not None:
            return violation
    qos2 = [f for f, q in filters if q == 2]
    if qos2:
        return Violation(
            "qos2-not-supported",
            Outcome.IGNORE,
            f"SUBSCRIBE requests QoS 2 for {_show(qos2[0])}: AWS IoT sends no SUBACK "
            "(aws-iot.md §4.2)",
        )
    added = len({f for f, _ in filters} - set(existing))
    cap = limits.max_subscriptions_per_connection
    if cap is not None and existing_count + added > cap:
        return _close(
            "too-many-subscriptions",
            f"{existing_count} + {added} subscriptions exceed AWS's {cap} per connection "
            "(aws-iot.md §4.4)",
            DisconnectReason.THROTTLED,
        )
    return [SubscribeDecision(f, q, min(q, 1)) for f, q in filters]


def check_unsubscribe(
    filters: Sequence[str],
    limits: Limits = AWS_LIMITS,
    *,
    header_flags: int | None = None,
) -> Violation | None:
    """AWS's verdict on an UNSUBSCRIBE (aws-iot.md §4.3).

    UNSUBSCRIBE without the mandatory 0x2 header flags → disconnect [I-mqttclient312];
    pass ``header_flags`` when the decoder has not already enforced them. No filter, or
    a filter that breaks MQTT's wildcard rules, is malformed (close). Quotas are not
    applied: unsubscribing from something never subscribed is harmless.
    """
    if header_flags is not None and header_flags != 0x02:
        return _close(
            "bad-flags",
            f"UNSUBSCRIBE header flags are {header_flags:#x}, MQTT requires 0x2 "
            "(MQTT 3.1.1 §3.10.1; aws-iot.md §4.3)",
        )
    if not filters:
        return _close("no-filters", "UNSUBSCRIBE carries no topic filter (MQTT 3.1.1 §3.10.3)")
    for topic_filter in filters:
        violation = _check_filter(topic_filter, limits, full=False)
        if violation is not None:
            return violation
    return None


# Rates


_EPSILON = 1e-9


class RateLimiter:
    """A token bucket with an explicit clock, for AWS's rate quotas (aws-iot.md §4.3, §4.4).

    ``rate`` tokens per ``per_seconds``, holding at most ``burst`` (default ``rate``)
    and starting full. One token per publish gives "100 publishes/s"; one per CONNECT
    gives "≤1 CONNECT per client id per second" (a second CONNECT must wait a full
    second); one per byte with :meth:`reserve` gives the 512 KiB/s throughput shaping.
    AWS's exact algorithm is not documented; a token bucket is the usual one.
    """

    def __init__(
        self, rate: float, *, per_seconds: float = 1.0, burst: float | None = None
    ) -> None:
        if not rate > 0 or not per_seconds > 0:
            raise ConfigError("RateLimiter rate and per_seconds must be positive")
        self.rate = rate
        self.per_seconds = per_seconds
        self.burst = float(rate if burst is None else burst)
        if not self.burst > 0:
            raise ConfigError("RateLimiter burst must be positive")
        self._tokens = self.burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate / self.per_seconds)
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (negative after an over-reservation)."""
        self._refill(now)
        return self._tokens

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if they are there; False (and take nothing) otherwise."""
        self._refill(now)
        # Tolerate float rounding: 6.1 - 5.1 is 0.9999999999999996, yet a full second.
        if self._tokens >= cost - _EPSILON:
            self._tokens = max(self._tokens - cost, 0.0)
            return True
        return False

    def reserve(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens unconditionally; return how long to delay (0 if none).

        For quotas whose excess is "delayed", not dropped (throughput, §4.4).
        """
        self._refill(now)
        self._tokens -= cost
        if self._tokens >= -_EPSILON:
            return 0.0
        return -self._tokens * self.per_seconds / self.rate

    def idle(self, now: float) -> bool:
        """Whether the bucket is full again: its state carries no information."""
        return self.tokens(now) >= self.burst - _EPSILON


def check_rate(
    limiter: RateLimiter | None,
    now: float,
    *,
    action: RateAction,
    cost: float = 1.0,
) -> Violation | None:
    """Apply ``limiter`` (None = no limit) and say what AWS does with the excess.

    * publish: "excess discarded" (aws-iot.md §4.4): DISCARD, the connection stays.
    * subscribe: SUBACK 0x80, AWS's one throttling answer (§4.5).
    * connect: over the CONNECT rate per client id (§4.3): close without CONNACK,
      THROTTLED **(inferred)**.
    """
    if limiter is None or limiter.allow(now, cost):
        return None
    if action == "publish":
        return Violation(
            "rate-exceeded",
            Outcome.DISCARD,
            f"more than {limiter.rate:g} publishes per {limiter.per_seconds:g} s on this "
            "connection: AWS discards the excess (aws-iot.md §4.4)",
        )
    if action == "subscribe":
        return Violation(
            "rate-exceeded",
            Outcome.SUBACK_FAILURE,
            "subscribe throttled: AWS answers SUBACK 0x80 (aws-iot.md §4.5)",
        )
    if action == "connect":
        return _close(
            "rate-exceeded",
            f"more than {limiter.rate:g} CONNECT per {limiter.per_seconds:g} s for this "
            "client id (aws-iot.md §4.3)",
            DisconnectReason.THROTTLED,
        )
    raise ConfigError(f"unknown rate action {action!r}")


class ConnectThrottle:
    """AWS's "CONNECT per client id ≤1/s" (aws-iot.md §4.3), one bucket per client id.

    Buckets that have refilled are forgotten now and then, so a fleet of short-lived
    client ids does not grow the table without bound.
    """

    def __init__(self, limits: Limits = AWS_LIMITS) -> None:
        self.rate = limits.connects_per_client_id_per_second
        self._buckets: dict[str, RateLimiter] = {}
        self._prune_at = 1024

    def check(self, client_id: str, now: float) -> Violation | None:
        """Count a CONNECT for ``client_id`` at ``now``; a Violation if it is one too many."""
        if self.rate is None or self.rate <= 0:
            return None
        if len(self._buckets) >= self._prune_at:
            self._buckets = {k: b for k, b in self._buckets.items() if not b.idle(now)}
            self._prune_at = max(1024, 2 * len(self._buckets))
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = self._buckets[client_id] = RateLimiter(self.rate)
        return check_rate(bucket, now, action="connect")

    def __len__(self) -> int:
        return len(self._buckets)


# Lifecycle events

PresenceEvent = Literal["connected", "disconnected"]
SubscriptionEvent = Literal["subscribed", "unsubscribed"]


def _lifecycle_topic(
    kind: str, event_type: str, allowed: tuple[str, str], client_id: str
) -> str | None:
    if event_type not in allowed:
        raise ConfigError(f"{kind} event type must be one of {allowed}, not {event_type!r}")
    if "#" in client_id or "+" in client_id:
        return None  # "Client IDs that contain # or + do not receive lifecycle events."
    return f"$aws/events/{kind}/{event_type}/{client_id}"


def presence_topic(event_type: PresenceEvent, client_id: str) -> str | None:
    """``$aws/events/presence/<connected|disconnected>/<clientId>`` (aws-iot.md §4.6).

    None when the client id contains ``#`` or ``+``: AWS publishes no lifecycle event.
    """
    return _lifecycle_topic("presence", event_type, ("connected", "disconnected"), client_id)


def subscription_topic(event_type: SubscriptionEvent, client_id: str) -> str | None:
    """``$aws/events/subscriptions/<subscribed|unsubscribed>/<clientId>`` (§4.6); None as
    for :func:`presence_topic`."""
    return _lifecycle_topic("subscriptions", event_type, ("subscribed", "unsubscribed"), client_id)


def _compact_json(document: dict[str, object]) -> bytes:
    """AWS-style compact JSON, UTF-8; escaped only if a string cannot be encoded."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")


def presence_payload(
    *,
    event_type: PresenceEvent,
    client_id: str,
    timestamp_ms: int,
    session_id: str,
    principal: str,
    ip_address: str | None = None,
    disconnect_reason: DisconnectReason | None = None,
    client_initiated: bool | None = None,
    version: int = 0,
) -> bytes:
    """The JSON of a presence event, keys in the order of AWS's examples (§4.6).

    connected: ``clientId, timestamp, eventType, sessionIdentifier, principalIdentifier,
    ipAddress, versionNumber`` (``ipAddress`` omitted when unknown). disconnected: the
    same with ``clientInitiatedDisconnect, disconnectReason`` instead of ``ipAddress``;
    ``client_initiated`` defaults to ``disconnect_reason == CLIENT_INITIATED_DISCONNECT``.
    The connect and disconnect events of one connection share ``version`` [D-lifecycle].
    Connected-only or disconnected-only fields on the other event are harness misuse.
    """
    document: dict[str, object] = {
        "clientId": client_id,
        "timestamp": timestamp_ms,
        "eventType": event_type,
        "sessionIdentifier": session_id,
        "principalIdentifier": principal,
    }
    if event_type == "connected":
        if disconnect_reason is not None or client_initiated is not None:
            raise ConfigError("a connected event has no disconnect reason")
        if ip_address is not None:
            document["ipAddress"] = ip_address
    elif event_type == "disconnected":
        if ip_address is not None:
            raise ConfigError("a disconnected event carries no ipAddress")
        if disconnect_reason is None:
            raise ConfigError("a disconnected event needs a disconnect_reason")
        reason = DisconnectReason(disconnect_reason)
        if client_initiated is None:
            client_initiated = reason is DisconnectReason.CLIENT_INITIATED_DISCONNECT
        document["clientInitiatedDisconnect"] = client_initiated
        document["disconnectReason"] = reason.value
    else:
        raise ConfigError(f"presence event type must be connected or disconnected: {event_type!r}")
    document["versionNumber"] = version
    return _compact_json(document)


def subscription_payload(
    *,
    event_type: SubscriptionEvent,
    client_id: str,
    timestamp_ms: int,
    session_id: str,
    principal: str,
    topics: Sequence[str],
) -> bytes:
    """The JSON of a subscribed/unsubscribed event (aws-iot.md §4.6), as AWS's example:
    ``clientId, timestamp, eventType, sessionIdentifier, principalIdentifier, topics``
    (no ``versionNumber``)."""
    if event_type not in ("subscribed", "unsubscribed"):
        raise ConfigError(
            f"subscription event type must be subscribed or unsubscribed: {event_type!r}"
        )
    return _compact_json(
        {
            "clientId": client_id,
            "timestamp": timestamp_ms,
            "eventType": event_type,
            "sessionIdentifier": session_id,
            "principalIdentifier": principal,
            "topics": list(topics),
        }
    )
