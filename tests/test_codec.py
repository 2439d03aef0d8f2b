"""harness.mqtt.codec: round trips, prefixes, streams, fuzzing, malformed tables, known bytes.

STYLE.md §8: every proper prefix of a valid packet is incomplete, and every byte string
either decodes or raises MalformedPacket.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import MalformedPacket
from harness.mqtt import codec
from harness.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    StreamDecoder,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    decode,
    encode,
    packet_name,
)

# Strategies -------------------------------------------------------------------------------

_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_TOPIC_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#")

texts = st.text(_CHARS, max_size=20)
topic_names = st.text(_TOPIC_CHARS, min_size=1, max_size=20)
topic_filters = st.text(_CHARS, min_size=1, max_size=20)  # wildcards anywhere: not our check
payloads = st.binary(max_size=200)
packet_ids = st.integers(1, 0xFFFF)
qoss = st.integers(0, 2)

wills = st.builds(Will, topic=topic_names, payload=payloads, qos=qoss, retain=st.booleans())


@st.composite
def connects(draw: st.DrawFn, levels: tuple[int, ...] = (3, 4)) -> Connect:
    level = draw(st.sampled_from(levels))
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=40))
    if level != 3 and username is None:
        password = None  # [MQTT-3.1.2-22]; MQTT 3.1 allows it
    return Connect(
        client_id=draw(texts),
        protocol_level=level,
        clean_session=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=password,
        will=draw(st.none() | wills),
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qoss)
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    st.builds(Connack, session_present=st.booleans(), return_code=st.integers(0, 255)),
    publishes(),
    st.builds(Puback, packet_ids),
    st.builds(Pubrec, packet_ids),
    st.builds(Pubrel, packet_ids),
    st.builds(Pubcomp, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters, qoss), min_size=1, max_size=5).map(tuple),
    ),
    st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=10).map(tuple),
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=5).map(tuple)),
    st.builds(Unsuback, packet_ids),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _body(raw: bytes) -> bytes:
    """The bytes after the fixed header of one encoded packet."""
    i = 1
    while raw[i] & 0x80:
        i += 1
    return raw[i + 1 :]


def _check_decodes_or_raises(data: bytes) -> None:
    reason = None
    try:
        result = decode(data)
    except MalformedPacket as exc:
        reason = exc.reason
        result = None
    if reason is not None:
        assert reason and reason == reason.lower() and " " not in reason
    elif result is not None:
        packet, used = result
        assert 0 < used <= len(data)
        # Whatever decodes re-encodes, and decodes again to the same value.
        again = encode(packet)
        assert decode(again) == (packet, len(again))


# Round trips ------------------------------------------------------------------------------


@given(packets)
def test_round_trip(packet: Packet) -> None:
    raw = encode(packet)
    assert decode(raw) == (packet, len(raw))
    assert decode(bytearray(raw)) == (packet, len(raw))
    assert decode(memoryview(b"\x00" + raw)[1:]) == (packet, len(raw))
    assert decode(raw + b"\xc0\x00") == (packet, len(raw))  # only the first packet


@pytest.mark.parametrize("level", [3, 4], ids=["mqtt-3.1", "mqtt-3.1.1"])
@given(data=st.data())
def test_connect_round_trip_per_level(level: int, data: st.DataObject) -> None:
    connect = data.draw(connects(levels=(level,)))
    raw = encode(connect)
    name = b"MQIsdp" if level == 3 else b"MQTT"
    assert raw[raw.index(name) + len(name)] == level
    assert decode(raw) == (connect, len(raw))
    assert connect.protocol_name == name.decode()


@given(packets)
def test_every_proper_prefix_is_incomplete(packet: Packet) -> None:
    raw = encode(packet)
    for i in range(len(raw)):
        assert decode(raw[:i]) is None
        assert decode(raw[:i], max_packet_size=len(raw)) is None


@given(st.lists(packets, max_size=8), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_stream_returns_every_packet_with_its_raw_bytes(
    packets_in: list[Packet], data: st.DataObject
) -> None:
    raws = [encode(p) for p in packets_in]
    blob = b"".join(raws)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    decoder = StreamDecoder(max_packet_size=max((len(r) for r in raws), default=0))
    got: list[tuple[Packet, bytes]] = []
    for start, stop in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        chunk = blob[start:stop]
        got += decoder.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(chunk))
    assert got == list(zip(packets_in, raws, strict=True))
    assert all(type(raw) is bytes for _, raw in got)
    assert decoder.buffered == 0


# Fuzzing ----------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_malformed(data: bytes) -> None:
    _check_decodes_or_raises(data)


@given(packets, st.data())
def test_mutated_packets_decode_or_raise_malformed(packet: Packet, data: st.DataObject) -> None:
    raw = bytearray(encode(packet))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        match data.draw(st.sampled_from(["set", "delete", "insert"])):
            case "set":
                raw[i] = data.draw(st.integers(0, 255))
            case "delete":
                del raw[i]
            case _:
                raw.insert(i, data.draw(st.integers(0, 255)))
        if not raw:
            return
    _check_decodes_or_raises(bytes(raw))


@given(packets, st.data())
def test_mutated_bodies_with_correct_length_decode_or_raise_malformed(
    packet: Packet, data: st.DataObject
) -> None:
    """Re-frame a mutated body so the body parsers, not the framing, meet the damage."""
    raw = encode(packet)
    body = bytearray(_body(raw))
    if body:
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
        body = body[: data.draw(st.integers(0, len(body)))]
    body += data.draw(st.binary(max_size=3))
    first = data.draw(st.sampled_from([raw[0], raw[0] ^ (1 << data.draw(st.integers(0, 7)))]))
    _check_decodes_or_raises(bytes([first]) + _remaining_length(len(body)) + body)


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_stream_decoder_on_random_chunks_only_raises_malformed(chunks: list[bytes]) -> None:
    decoder = StreamDecoder(max_packet_size=1000)
    reason = None
    for chunk in chunks:
        try:
            for packet, raw in decoder.feed(chunk):
                assert decode(raw) == (packet, len(raw))
        except MalformedPacket as exc:
            reason = exc.reason
            break
    if reason is not None:
        with pytest.raises(MalformedPacket) as again:
            decoder.feed(b"\xc0\x00")
        assert again.value.reason == reason


# Malformed inputs -------------------------------------------------------------------------

_MQTT = b"\x00\x04MQTT"
_MQISDP = b"\x00\x06MQIsdp"


def _connect(variable: bytes, payload: bytes = b"\x00\x01c") -> bytes:
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


MALFORMED = [
    # Fixed header
    pytest.param(b"\x00\x00", "reserved-packet-type", id="type-0"),
    pytest.param(b"\xf0\x00", "reserved-packet-type", id="type-15-auth-is-mqtt5"),
    pytest.param(b"\x00", "reserved-packet-type", id="type-0-first-byte-alone"),
    pytest.param(b"\x11", "bad-flags", id="connect-flags-1"),
    pytest.param(b"\x21\x02\x00\x00", "bad-flags", id="connack-flags-1"),
    pytest.param(b"\x42\x02\x00\x01", "bad-flags", id="puback-flags-2"),
    pytest.param(b"\x60\x02\x00\x01", "bad-flags", id="pubrel-flags-0"),
    pytest.param(b"\x80\x06\x00\x01\x00\x01a\x00", "bad-flags", id="subscribe-flags-0"),
    pytest.param(b"\xa0\x05\x00\x01\x00\x01a", "bad-flags", id="unsubscribe-flags-0"),
    pytest.param(b"\xa8", "bad-flags", id="unsubscribe-flags-8"),
    pytest.param(b"\xc1\x00", "bad-flags", id="pingreq-flags-1"),
    pytest.param(b"\xef\x00", "bad-flags", id="disconnect-flags-f"),
    pytest.param(b"\x36\x05\x00\x01a\x00\x01", "bad-qos", id="publish-qos-3"),
    pytest.param(b"\x38\x03\x00\x01a", "dup-with-qos-0", id="publish-dup-qos-0"),
    pytest.param(b"\x30\xff\xff\xff\xff\x7f", "bad-remaining-length", id="length-5-bytes"),
    pytest.param(b"\x30\x80\x80\x80\x80", "bad-remaining-length", id="length-4th-continues"),
    # CONNECT variable header
    pytest.param(_connect(b"\x00\x04MQTX\x04\x02\x00\x3c"), "bad-protocol-name", id="name-MQTX"),
    pytest.param(_connect(b"\x00\x04mqtt\x04\x02\x00\x3c"), "bad-protocol-name", id="name-mqtt"),
    pytest.param(_connect(b"\x00\x00\x04\x02\x00\x3c"), "bad-protocol-name", id="name-empty"),
    pytest.param(_connect(_MQTT + b"\x03\x02\x00\x3c"), "bad-protocol-level", id="MQTT-level-3"),
    pytest.param(_connect(_MQTT + b"\x05\x02\x00\x3c"), "bad-protocol-level", id="MQTT-level-5"),
    pytest.param(_connect(_MQISDP + b"\x04\x02\x00\x3c"), "bad-protocol-level", id="MQIsdp-4"),
    pytest.param(_connect(_MQTT + b"\x84\x02\x00\x3c"), "bad-protocol-level", id="bridge-0x84"),
    pytest.param(_connect(_MQTT + b"\x04\x03\x00\x3c"), "reserved-connect-flag", id="flag-bit-0"),
    pytest.param(_connect(_MQTT + b"\x04\x0a\x00\x3c"), "bad-will-flags", id="will-qos-no-will"),
    pytest.param(_connect(_MQTT + b"\x04\x22\x00\x3c"), "bad-will-flags", id="will-retain-no-will"),
    pytest.param(
        _connect(_MQTT + b"\x04\x1e\x00\x3c", b"\x00\x01c\x00\x01t\x00\x00"),
        "bad-qos",
        id="will-qos-3",
    ),
    pytest.param(
        _connect(_MQISDP + b"\x03\x1e\x00\x3c", b"\x00\x01c\x00\x01t\x00\x00"),
        "bad-qos",
        id="will-qos-3-mqtt31",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x42\x00\x3c", b"\x00\x01c\x00\x02pw"),
        "password-without-username",
        id="password-no-username",
    ),
    pytest.param(_connect(_MQTT + b"\x04\x02\x00"), "truncated", id="keepalive-cut"),
    pytest.param(_connect(_MQTT, b""), "truncated", id="no-level"),
    pytest.param(b"\x10\x03\x00\x04M", "truncated", id="name-cut"),
    # CONNECT payload
    pytest.param(_connect(_MQTT + b"\x04\x02\x00\x3c", b""), "truncated", id="no-client-id"),
    pytest.param(_connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x05ab"), "truncated", id="id-cut"),
    pytest.param(
        _connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x01\xff"), "bad-utf8", id="id-byte-ff"
    ),
    pytest.param(_connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x01\x00"), "bad-utf8", id="id-nul"),
    pytest.param(
        _connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x03\xed\xa0\x80"),
        "bad-utf8",
        id="id-surrogate-d800",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x02\xc0\x80"),
        "bad-utf8",
        id="id-overlong-nul",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x04\xf4\x90\x80\x80"),
        "bad-utf8",
        id="id-above-10ffff",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x82\x00\x3c", b"\x00\x01c\x00\x01\xfe"),
        "bad-utf8",
        id="username-bad-utf8",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x82\x00\x3c", b"\x00\x01c"), "truncated", id="username-missing"
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\xc2\x00\x3c", b"\x00\x01c\x00\x01u"),
        "truncated",
        id="password-missing",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x06\x00\x3c", b"\x00\x01c\x00\x01t"),
        "truncated",
        id="will-message-missing",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x06\x00\x3c", b"\x00\x01c\x00\x00\x00\x00"),
        "empty-topic",
        id="will-topic-empty",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x06\x00\x3c", b"\x00\x01c\x00\x03a/#\x00\x00"),
        "wildcard-in-topic",
        id="will-topic-wildcard",
    ),
    pytest.param(
        _connect(_MQTT + b"\x04\x02\x00\x3c", b"\x00\x01c\x00"),
        "trailing-bytes",
        id="connect-trailing",
    ),
    # CONNACK
    pytest.param(b"\x20\x02\x02\x00", "bad-connack-flags", id="connack-reserved-flag"),
    pytest.param(b"\x20\x01\x00", "truncated", id="connack-short"),
    pytest.param(b"\x20\x03\x00\x00\x00", "trailing-bytes", id="connack-long"),
    # PUBLISH
    pytest.param(b"\x30\x02\x00\x00", "empty-topic", id="publish-empty-topic"),
    pytest.param(b"\x30\x03\x00\x01+", "wildcard-in-topic", id="publish-plus"),
    pytest.param(b"\x30\x05\x00\x03a/#", "wildcard-in-topic", id="publish-hash"),
    pytest.param(b"\x30\x03\x00\x01\x00", "bad-utf8", id="publish-topic-nul"),
    pytest.param(b"\x30\x01\x00", "truncated", id="publish-topic-length-cut"),
    pytest.param(b"\x30\x03\x00\x05a", "truncated", id="publish-topic-cut"),
    pytest.param(b"\x32\x05\x00\x01a\x00\x00", "zero-packet-id", id="publish-qos1-id-0"),
    pytest.param(b"\x34\x04\x00\x01a\x00", "truncated", id="publish-qos2-id-cut"),
    # Acknowledgements
    pytest.param(b"\x40\x02\x00\x00", "zero-packet-id", id="puback-id-0"),
    pytest.param(b"\x40\x01\x00", "truncated", id="puback-short"),
    pytest.param(b"\x40\x00", "truncated", id="puback-empty"),
    pytest.param(b"\x50\x03\x00\x01\x00", "trailing-bytes", id="pubrec-long"),
    pytest.param(b"\x62\x02\x00\x00", "zero-packet-id", id="pubrel-id-0"),
    pytest.param(b"\x70\x04\x00\x01\x00\x00", "trailing-bytes", id="pubcomp-long"),
    pytest.param(b"\xb0\x02\x00\x00", "zero-packet-id", id="unsuback-id-0"),
    # SUBSCRIBE / SUBACK / UNSUBSCRIBE
    pytest.param(b"\x82\x02\x00\x01", "empty-subscribe", id="subscribe-no-topics"),
    pytest.param(b"\x82\x06\x00\x00\x00\x01a\x00", "zero-packet-id", id="subscribe-id-0"),
    pytest.param(b"\x82\x01\x00", "truncated", id="subscribe-id-cut"),
    pytest.param(b"\x82\x05\x00\x01\x00\x01a", "truncated", id="subscribe-qos-missing"),
    pytest.param(b"\x82\x06\x00\x01\x00\x01a\x03", "bad-qos", id="subscribe-qos-3"),
    pytest.param(b"\x82\x06\x00\x01\x00\x01a\x04", "bad-subscribe-options", id="sub-reserved"),
    pytest.param(b"\x82\x05\x00\x01\x00\x00\x00", "empty-topic-filter", id="subscribe-empty"),
    pytest.param(b"\x82\x06\x00\x01\x00\x01\xff\x00", "bad-utf8", id="subscribe-bad-utf8"),
    pytest.param(b"\x90\x02\x00\x01", "empty-suback", id="suback-no-codes"),
    pytest.param(b"\x90\x03\x00\x01\x03", "bad-return-code", id="suback-code-3"),
    pytest.param(b"\x90\x04\x00\x01\x00\x81", "bad-return-code", id="suback-code-81"),
    pytest.param(b"\x90\x03\x00\x00\x00", "zero-packet-id", id="suback-id-0"),
    pytest.param(b"\xa2\x02\x00\x01", "empty-unsubscribe", id="unsubscribe-no-topics"),
    pytest.param(b"\xa2\x04\x00\x01\x00\x00", "empty-topic-filter", id="unsubscribe-empty"),
    pytest.param(b"\xa2\x05\x00\x01\x00\x02a", "truncated", id="unsubscribe-topic-cut"),
    # Packets without a body
    pytest.param(b"\xc0\x01\x00", "trailing-bytes", id="pingreq-body"),
    pytest.param(b"\xd0\x01\x00", "trailing-bytes", id="pingresp-body"),
    pytest.param(b"\xe0\x02\x00\x00", "trailing-bytes", id="disconnect-body"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as exc:
        decode(data)
    assert exc.value.reason == reason
    assert f"[{reason}]" in str(exc.value)
    with pytest.raises(MalformedPacket) as from_stream:
        StreamDecoder().feed(b"\xc0\x00" + data)
    assert from_stream.value.reason == reason


def test_every_documented_reason_has_a_malformed_example() -> None:
    documented = set(re.findall(r"^\* ``([a-z0-9-]+)``:", codec.__doc__ or "", re.MULTILINE))
    tabled = {param.values[1] for param in MALFORMED}
    assert documented - tabled == {"packet-too-large"}  # tested with max_packet_size below
    assert tabled <= documented


def test_messages_never_quote_credentials() -> None:
    secret = b"\x00\x10sig=s3cr3t\xff\xfe-token"
    data = _connect(_MQTT + b"\x04\x82\x00\x3c", b"\x00\x01c" + secret)
    with pytest.raises(MalformedPacket, match="user name") as exc:
        decode(data)
    assert "s3cr3t" not in str(exc.value)


# Limits and framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x30\x00"),
        (127, b"\x30\x7f"),
        (128, b"\x30\x80\x01"),
        (16_383, b"\x30\xff\x7f"),
        (16_384, b"\x30\x80\x80\x01"),
        (2_097_151, b"\x30\xff\xff\x7f"),
        (2_097_152, b"\x30\x80\x80\x80\x01"),
    ],
    ids=lambda value: str(value) if isinstance(value, int) else value.hex(),
)
def test_remaining_length_boundaries(length: int, header: bytes) -> None:
    """§2.2.3 table: 1 to 4 bytes. A PUBLISH of topic "t" has 3 bytes before its payload."""
    if length == 0:
        assert encode(Pingreq())[1:] == b"\x00"
        return
    publish = Publish("t", b"x" * (length - 3))
    raw = encode(publish)
    assert raw[: len(header)] == header
    assert raw[len(header) : len(header) + 3] == b"\x00\x01t"
    assert decode(raw) == (publish, len(raw))


def test_largest_remaining_length_is_incomplete_not_malformed() -> None:
    assert decode(b"\x30\xff\xff\xff\x7f\x00\x01t") is None


def test_non_minimal_remaining_length_is_accepted() -> None:
    """3.1.1 does not require the shortest encoding (MQTT 5 does, [MQTT-1.5.5-1])."""
    assert decode(b"\xc0\x80\x00") == (Pingreq(), 3)
    assert decode(b"\x40\x82\x80\x00\x00\x07") == (Puback(7), 6)


def test_max_packet_size_refuses_from_the_fixed_header_alone() -> None:
    header = b"\x30\xff\xff\x03"  # a PUBLISH announcing 65535 bytes, none of them sent
    with pytest.raises(MalformedPacket) as exc:
        decode(header, max_packet_size=1024)
    assert exc.value.reason == "packet-too-large"
    assert "65539" in exc.value.message
    decoder = StreamDecoder(max_packet_size=1024)
    assert decoder.feed(encode(Publish("a/b", b"x" * 100))) != []
    with pytest.raises(MalformedPacket, match="packet-too-large"):
        decoder.feed(header)
    assert decode(b"\x30\x05\x00\x01tab", max_packet_size=7) == (Publish("t", b"ab"), 7)
    with pytest.raises(MalformedPacket, match="packet-too-large"):
        decode(b"\x30\x05\x00\x01tab", max_packet_size=6)


def test_stream_decoder_stays_broken() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"\xc0") == []
    assert decoder.buffered == 1
    with pytest.raises(MalformedPacket) as first:
        decoder.feed(b"\x00\x60\x02\x00\x01")  # PINGREQ completes, then PUBREL with flags 0
    assert first.value.reason == "bad-flags"
    with pytest.raises(MalformedPacket) as second:
        decoder.feed(encode(Pingreq()))
    assert second.value.reason == "bad-flags"
    assert "already broken" in second.value.message


def test_stream_decoder_holds_a_large_packet_across_many_chunks() -> None:
    publish = Publish("big", bytes(range(256)) * 100, qos=1, packet_id=9)
    raw = encode(publish)
    decoder = StreamDecoder()
    got: list[tuple[Packet, bytes]] = []
    for i in range(0, len(raw), 1000):
        got += decoder.feed(raw[i : i + 1000])
        if i + 1000 < len(raw):
            assert decoder.buffered == i + 1000
    got += decoder.feed(encode(Pingreq()) + raw[:3])
    assert got == [(publish, raw), (Pingreq(), b"\xc0\x00")]
    assert decoder.buffered == 3


def test_stream_decoder_returns_whole_chunk_without_copy() -> None:
    raw = encode(Publish("a", b"payload"))
    [(_, out)] = StreamDecoder().feed(raw)
    assert out is raw


# Known bytes from real clients ------------------------------------------------------------

# paho-mqtt 2.x, MQTTv311: Client(client_id="paho-test"), username_pw_set("user", "pass"),
# will_set("dev/status", b"offline", qos=1, retain=True), connect(keepalive=60).
# Payload order per §3.1.3: client id, will topic, will message, user name, password.
PAHO_311_CONNECT = (
    b"\x10\x36"  # CONNECT, Remaining Length 54
    b"\x00\x04MQTT"  # protocol name
    b"\x04"  # level 4 = 3.1.1
    b"\xee"  # user name, password, will retain, will QoS 1, will, clean session
    b"\x00\x3c"  # keep alive 60
    b"\x00\x09paho-test"
    b"\x00\x0adev/status"
    b"\x00\x07offline"
    b"\x00\x04user"
    b"\x00\x04pass"
)

# MQTT 3.1 as opendyson (paho.mqtt.golang, SetProtocolVersion(3)) and thoukydides (mqtt.js,
# protocolId 'MQIsdp', protocolVersion 3) send it: a 36-character UUID client id, which
# MQTT 3.1's 23-character limit would refuse (aws-iot.md §4.1), user name and password.
DYSON_31_CONNECT = (
    b"\x10\x58"  # CONNECT, Remaining Length 88
    b"\x00\x06MQIsdp"  # protocol name
    b"\x03"  # level 3 = 3.1
    b"\xc2"  # user name, password, clean session
    b"\x00\x1e"  # keep alive 30
    b"\x00\x24d2b3f7a4-8c1e-4b6f-9a2d-5e7c0f1a3b4d"
    b"\x00\x0fVS9-EU-HJA1234A"
    b"\x00\x13fake-local-password"
)

# The same CONNECT carried across to a 3.1.1 engine.
DYSON_AS_311_CONNECT = (
    b"\x10\x56"  # Remaining Length 86: the protocol name is 2 bytes shorter
    b"\x00\x04MQTT"
    b"\x04"
    b"\xc2"
    b"\x00\x1e"
    b"\x00\x24d2b3f7a4-8c1e-4b6f-9a2d-5e7c0f1a3b4d"
    b"\x00\x0fVS9-EU-HJA1234A"
    b"\x00\x13fake-local-password"
)


def test_paho_311_connect() -> None:
    expected = Connect(
        client_id="paho-test",
        protocol_level=4,
        clean_session=True,
        keep_alive=60,
        username="user",
        password=b"pass",
        will=Will("dev/status", b"offline", qos=1, retain=True),
    )
    assert decode(PAHO_311_CONNECT) == (expected, len(PAHO_311_CONNECT))
    assert encode(expected) == PAHO_311_CONNECT
    assert expected.protocol_name == "MQTT"


def test_dyson_31_connect_and_carrying_it_across_as_311() -> None:
    result = decode(DYSON_31_CONNECT)
    assert result is not None
    connect, used = result
    assert used == len(DYSON_31_CONNECT)
    assert connect == Connect(
        client_id="d2b3f7a4-8c1e-4b6f-9a2d-5e7c0f1a3b4d",
        protocol_level=3,
        keep_alive=30,
        username="VS9-EU-HJA1234A",
        password=b"fake-local-password",
    )
    assert connect.protocol_name == "MQIsdp"
    assert encode(connect) == DYSON_31_CONNECT
    assert encode(dataclasses.replace(connect, protocol_level=4)) == DYSON_AS_311_CONNECT


def test_mqtt31_leniency_and_what_it_costs_when_carried_across() -> None:
    """3.1 has none of 3.1.1's flag MUSTs: bit 0, stray Will bits, password alone."""
    data = _connect(_MQISDP + b"\x03\x7b\x00\x3c", b"\x00\x01c\x00\x02pw")  # 0x7b: 0x40|0x3b
    result = decode(data)
    assert result is not None
    connect = result[0]
    assert connect == Connect("c", protocol_level=3, clean_session=True, password=b"pw")
    assert connect.will is None  # Will QoS/Retain without the Will flag mean nothing
    with pytest.raises(ValueError, match=r"MQTT-3\.1\.2-22"):
        encode(dataclasses.replace(connect, protocol_level=4))
    assert decode(encode(dataclasses.replace(connect, protocol_level=4, password=None))) == (
        Connect("c"),
        15,
    )


def test_long_and_empty_client_ids_are_the_server_s_business() -> None:
    for client_id in ("", "x" * 128, "d2b3f7a4-8c1e-4b6f-9a2d-5e7c0f1a3b4d"):
        for level in (3, 4):
            connect = Connect(client_id, protocol_level=level)
            assert decode(encode(connect)) == (connect, len(encode(connect)))


def test_known_small_packets() -> None:
    table: list[tuple[Packet, bytes]] = [
        (Connack(), b"\x20\x02\x00\x00"),
        (Connack(session_present=True, return_code=0), b"\x20\x02\x01\x00"),
        (Connack(return_code=5), b"\x20\x02\x00\x05"),
        (
            Publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=258),
            b"\x3b\x09\x00\x03a/b\x01\x02hi",
        ),
        (Puback(1), b"\x40\x02\x00\x01"),
        (Pubrec(2), b"\x50\x02\x00\x02"),
        (Pubrel(3), b"\x62\x02\x00\x03"),
        (Pubcomp(4), b"\x70\x02\x00\x04"),
        (Subscribe(10, (("a/+", 1), ("#", 0))), b"\x82\x0c\x00\x0a\x00\x03a/+\x01\x00\x01#\x00"),
        (Suback(10, (1, 0x80)), b"\x90\x04\x00\x0a\x01\x80"),
        (Unsubscribe(11, ("a/+",)), b"\xa2\x07\x00\x0b\x00\x03a/+"),
        (Unsuback(11), b"\xb0\x02\x00\x0b"),
        (Pingreq(), b"\xc0\x00"),
        (Pingresp(), b"\xd0\x00"),
        (Disconnect(), b"\xe0\x00"),
        (Connect("c", keep_alive=0), b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"),
    ]
    for packet, raw in table:
        assert encode(packet) == raw, packet_name(packet)
        assert decode(raw) == (packet, len(raw))


# Encoding refuses what decoding would ------------------------------------------------------

INVALID_FOR_ENCODE = [
    pytest.param(Connect("c", protocol_level=5), id="level-5"),
    pytest.param(Connect("c", password=b"pw"), id="password-without-username-311"),
    pytest.param(Connect("c", keep_alive=65536), id="keep-alive-too-big"),
    pytest.param(Connect("c\x00"), id="client-id-nul"),
    pytest.param(Connect("\udc80"), id="client-id-lone-surrogate"),
    pytest.param(Connect("c", will=Will("t", b"", qos=3)), id="will-qos-3"),
    pytest.param(Connect("c", will=Will("t/#", b"")), id="will-topic-wildcard"),
    pytest.param(Connect("c", will=Will("t", b"x" * 65536)), id="will-message-too-long"),
    pytest.param(Connect("c" * 65536), id="client-id-too-long"),
    pytest.param(Connack(return_code=256), id="connack-code-256"),
    pytest.param(Publish("", b""), id="publish-empty-topic"),
    pytest.param(Publish("a/+", b""), id="publish-wildcard"),
    pytest.param(Publish("a", qos=3, packet_id=1), id="publish-qos-3"),
    pytest.param(Publish("a", qos=1), id="publish-qos-1-no-id"),
    pytest.param(Publish("a", qos=1, packet_id=0), id="publish-id-0"),
    pytest.param(Publish("a", qos=1, packet_id=65536), id="publish-id-too-big"),
    pytest.param(Publish("a", packet_id=1), id="publish-qos-0-with-id"),
    pytest.param(Publish("a", dup=True), id="publish-qos-0-dup"),
    pytest.param(Puback(0), id="puback-id-0"),
    pytest.param(Subscribe(1, ()), id="subscribe-empty"),
    pytest.param(Subscribe(1, (("", 0),)), id="subscribe-empty-filter"),
    pytest.param(Subscribe(1, (("a", 3),)), id="subscribe-qos-3"),
    pytest.param(Suback(1, ()), id="suback-empty"),
    pytest.param(Suback(1, (3,)), id="suback-code-3"),
    pytest.param(Unsubscribe(1, ()), id="unsubscribe-empty"),
    pytest.param(Unsubscribe(1, ("",)), id="unsubscribe-empty-filter"),
]


@pytest.mark.parametrize("packet", INVALID_FOR_ENCODE)
def test_encode_refuses_what_decode_would_refuse(packet: Packet) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encode(packet)


def test_encode_refuses_a_packet_beyond_the_largest_remaining_length() -> None:
    class HugePayload(bytes):
        def __len__(self) -> int:
            return 268_435_456

    with pytest.raises(ValueError, match="Remaining Length"):
        encode(Publish("t", HugePayload()))


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(TypeError):
        encode(Will("t", b""))  # type: ignore[arg-type]


# Names and values -------------------------------------------------------------------------


def test_packet_names_and_types() -> None:
    assert packet_name(Connect("c")) == "CONNECT"
    assert packet_name(Pingresp()) == "PINGRESP"
    assert packet_name(Unsuback(1)) == "UNSUBACK"
    assert Publish.packet_type is PacketType.PUBLISH
    assert [int(t) for t in PacketType] == list(range(1, 15))
    for packet in (Puback(1), Subscribe(1, (("a", 0),)), Disconnect()):
        assert encode(packet)[0] >> 4 == packet.packet_type


def test_connect_repr_redacts_credentials() -> None:
    connect = Connect("c", username="u?x-amz-customauthorizer-signature=SIG", password=b"PW")
    text = repr(connect)
    assert "SIG" not in text and "PW" not in text
    assert "username=<redacted>" in text and "client_id='c'" in text
    assert "username=None, password=None" in repr(Connect("c"))


def test_packets_are_frozen_and_hashable() -> None:
    publish = Publish("t", b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        publish.qos = 1  # type: ignore[misc]
    assert len({Pingreq(), Pingreq(), Subscribe(1, (("a", 0),))}) == 2
