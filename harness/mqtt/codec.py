"""MQTT 3.1 and 3.1.1 packets: frozen values, ``encode``, ``decode`` and a ``StreamDecoder``.

I/O-free (STYLE.md §1): bytes in, packets out, and back. The gateway's session pump feeds
a :class:`StreamDecoder` with whatever its transport read, acts on the packets, and
forwards each packet's *raw* bytes unchanged when it can, so the codec never has to
reproduce a client's exact encoding.

Versions (aws-iot.md §4.1): MQTT 3.1.1 (protocol name ``MQTT``, level 4) and MQTT 3.1
(``MQIsdp``, level 3, used by Dyson clients). Both share one wire format apart from the
CONNECT variable header, so every packet but :class:`Connect` is version-free. MQTT 5
(``MQTT``, level 5, with properties) is not decoded yet: its CONNECT is refused as
``bad-protocol-level``, which is what a 3.1.1 server answers with CONNACK 0x01. Adding it
means a new entry in ``_PROTOCOL_LEVELS`` and property parsing in the decoders.

Validation follows MQTT 3.1.1 (OASIS, 2014; "§" below is that document unless noted):
whatever breaks one of its MUSTs about the *format* of a packet raises
:class:`~harness.errors.MalformedPacket` with one of these stable ``reason`` codes:

* ``reserved-packet-type``: packet type 0 or 15 (§2.2.1)
* ``bad-flags``: fixed-header flags other than the required ones (§2.2.2)
* ``bad-qos``: QoS 3 in PUBLISH, a Will or a subscription (§3.3.1.2, §3.1.2.6, §3.8.3.1)
* ``dup-with-qos-0``: PUBLISH with DUP set and QoS 0 ([MQTT-3.3.1-2])
* ``bad-remaining-length``: Remaining Length longer than 4 bytes (§2.2.3)
* ``packet-too-large``: the fixed header announces more than ``max_packet_size``
* ``truncated``: a field runs past the end the Remaining Length sets
* ``trailing-bytes``: bytes left over after the last field of a packet
* ``bad-protocol-name``: CONNECT protocol name neither ``MQTT`` nor ``MQIsdp`` (§3.1.2.1)
* ``bad-protocol-level``: a level the name does not go with, or not supported (§3.1.2.2: the
  server answers CONNACK 0x01 and closes)
* ``reserved-connect-flag``: CONNECT flag bit 0 set ([MQTT-3.1.2-3])
* ``bad-will-flags``: Will QoS or Will Retain without the Will flag ([MQTT-3.1.2-11],
  [MQTT-3.1.2-13], [MQTT-3.1.2-15])
* ``password-without-username``: Password flag without User Name flag ([MQTT-3.1.2-22])
* ``bad-utf8``: a UTF-8 string that is ill-formed or holds U+0000 (§1.5.3)
* ``empty-topic``: a zero-length topic name in PUBLISH or a Will (§4.7.3)
* ``wildcard-in-topic``: ``+`` or ``#`` in a topic name ([MQTT-3.3.2-2], §4.7.1)
* ``empty-topic-filter``: a zero-length topic filter ([MQTT-4.7.3-1])
* ``zero-packet-id``: packet identifier 0 ([MQTT-2.3.1-1])
* ``empty-subscribe``: SUBSCRIBE without a topic filter ([MQTT-3.8.3-3])
* ``bad-subscribe-options``: reserved bits set in a requested-QoS byte ([MQTT-3-8.3-4])
* ``empty-unsubscribe``: UNSUBSCRIBE without a topic filter ([MQTT-3.10.3-2])
* ``bad-connack-flags``: reserved CONNACK acknowledge-flag bits set (§3.2.2.1)
* ``empty-suback``: SUBACK without a return code (§3.9.3)
* ``bad-return-code``: a SUBACK return code other than 0x00-0x02, 0x80 ([MQTT-3.9.3-2])

Deliberately *not* checked here, because they are decisions of the server, not the format,
and AWS answers them its own way (harness.mqtt.rules): client id length and content
(MQTT 3.1's 23-character limit is not enforced: Dyson client ids are 36-character UUIDs,
aws-iot.md §4.1; an empty client id is allowed), topic-filter wildcard placement (§4.7.1),
``$`` topics, QoS 2, keep-alive ranges, CONNACK return codes (any byte is accepted).
A non-minimal Remaining Length (``0x80 0x00`` for 0) is accepted: 3.1.1 does not forbid it
(MQTT 5 does, [MQTT-1.5.5-1]).

MQTT 3.1 CONNECTs are read as leniently as its spec (and mosquitto) allow: flag bit 0, Will
QoS/Retain without the Will flag and a password without a user name are not errors there
(the 3.1.1 MUSTs above are new in 3.1.1). Ignored Will bits are dropped from the value.

:func:`encode` checks the same rules and raises :class:`ValueError` for a packet that would
not decode back to itself, so ``decode(encode(p)) == (p, len(encode(p)))`` for every
packet it accepts, and a decoded packet always re-encodes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias

from harness.errors import MalformedPacket

__all__ = [
    "MAX_REMAINING_LENGTH",
    "SUPPORTED_PROTOCOL_LEVELS",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "StreamDecoder",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "decode",
    "encode",
    "packet_name",
]

#: The largest Remaining Length four bytes can hold (§2.2.3).
MAX_REMAINING_LENGTH: Final = 268_435_455

#: Protocol levels this codec reads and writes: 3 = MQTT 3.1, 4 = MQTT 3.1.1.
SUPPORTED_PROTOCOL_LEVELS: Final = frozenset({3, 4})

# Which levels go with which protocol name (§3.1.2.1-2; MQTT 3.1 §3.1). MQTT 5 would add 5
# to b"MQTT".
_PROTOCOL_LEVELS: Final[dict[bytes, frozenset[int]]] = {
    b"MQTT": frozenset({4}),
    b"MQIsdp": frozenset({3}),
}
# The encoded protocol name (length prefix included) a client of each level sends.
_PROTOCOL_NAME_FIELD: Final[dict[int, bytes]] = {3: b"\x00\x06MQIsdp", 4: b"\x00\x04MQTT"}

_SUBACK_CODES: Final = b"\x00\x01\x02\x80"
_REDACTED: Final = "<redacted>"


class PacketType(enum.IntEnum):
    """MQTT control packet types, the high nibble of the first byte (§2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


# Packets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (§3.1.2.5-7, §3.1.3.2-3)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class Connect:
    """CONNECT (§3.1). ``protocol_level`` 3 is MQTT 3.1 (``MQIsdp``), 4 is MQTT 3.1.1.

    The gateway carries a 3.1 client across to an engine that speaks only 3.1.1 with
    ``encode(dataclasses.replace(connect, protocol_level=4))`` (DESIGN.md, amqtt
    constraints). That raises ``ValueError`` when the 3.1 CONNECT has a password but no
    user name, which 3.1.1 forbids ([MQTT-3.1.2-22]).

    ``username`` and ``password`` are left out of ``repr``: a custom-authorizer user name
    carries a token and its signature (aws-iot.md §2.1).
    """

    packet_type: ClassVar[PacketType] = PacketType.CONNECT

    client_id: str
    protocol_level: int = 4
    clean_session: bool = True
    keep_alive: int = 60
    username: str | None = field(default=None, repr=False)
    password: bytes | None = field(default=None, repr=False)
    will: Will | None = None

    @property
    def protocol_name(self) -> str:
        """The protocol name a client of this level sends: ``MQIsdp`` for 3, else ``MQTT``."""
        return "MQIsdp" if self.protocol_level == 3 else "MQTT"

    def __repr__(self) -> str:
        username = None if self.username is None else _REDACTED
        password = None if self.password is None else _REDACTED
        return (
            f"Connect(client_id={self.client_id!r}, protocol_level={self.protocol_level!r}, "
            f"clean_session={self.clean_session!r}, keep_alive={self.keep_alive!r}, "
            f"username={username!s}, password={password!s}, will={self.will!r})"
        )


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (§3.2). Any return code byte is carried; 0-5 are the defined ones."""

    packet_type: ClassVar[PacketType] = PacketType.CONNACK

    session_present: bool = False
    return_code: int = 0


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (§3.3). ``packet_id`` is ``None`` exactly when ``qos`` is 0."""

    packet_type: ClassVar[PacketType] = PacketType.PUBLISH

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (§3.4)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBACK

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC (§3.5)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREC

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL (§3.6); its fixed-header flags are 0b0010."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREL

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP (§3.7)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8): ``topics`` holds (topic filter, requested QoS) pairs, at least one."""

    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (§3.9): one return code per filter, 0x00-0x02 granted QoS or 0x80 failure."""

    packet_type: ClassVar[PacketType] = PacketType.SUBACK

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (§3.10): at least one topic filter."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE

    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (§3.11)."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (§3.12)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (§3.13)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (§3.14)."""

    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)


def packet_name(packet: Packet) -> str:
    """The packet's type as the spec spells it (``"CONNECT"``), for events and messages."""
    return packet.packet_type.name


# Decoding ---------------------------------------------------------------------------------

# What the decoders index into: bytes as given, or a memoryview over any other buffer.
_Buffer: TypeAlias = bytes | memoryview


def _first_byte_problem(byte: int) -> tuple[str, str] | None:
    """Why a packet cannot start with ``byte``, or None (§2.2.1, §2.2.2, §3.3.1)."""
    kind, flags = byte >> 4, byte & 0x0F
    if kind in (0, 15):
        return "reserved-packet-type", f"packet type {kind} is reserved (§2.2.1)"
    name = PacketType(kind).name
    if kind == PacketType.PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return "bad-qos", "PUBLISH with QoS 3 ([MQTT-3.3.1-4])"
        if flags & 0x08 and qos == 0:
            return "dup-with-qos-0", "PUBLISH with DUP set and QoS 0 ([MQTT-3.3.1-2])"
        return None
    expected = (
        0b0010 if kind in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
    )
    if flags != expected:
        return (
            "bad-flags",
            f"{name} fixed-header flags {flags:04b}, must be {expected:04b} (§2.2.2)",
        )
    return None


# Indexed by the first byte: None when a packet may start with it. Checking it before the
# rest of the packet arrives lets a server reject garbage at once.
_FIRST_BYTE: Final = tuple(_first_byte_problem(b) for b in range(256))


def _fixed_header(
    buf: _Buffer, pos: int, n: int, max_packet_size: int | None
) -> tuple[int, int, int] | None:
    """Parse the fixed header at ``pos``: (first byte, body start, body end), or None.

    None means the header itself is incomplete; the body may still be (``end > n``).
    """
    if pos >= n:
        return None
    first = buf[pos]
    problem = _FIRST_BYTE[first]
    if problem is not None:
        raise MalformedPacket(*problem)
    i = pos + 1
    limit = pos + 5  # at most four Remaining Length bytes, at pos+1 .. pos+4 (§2.2.3)
    length = 0
    shift = 0
    while True:
        if i == limit:
            raise MalformedPacket(
                "bad-remaining-length", "Remaining Length longer than 4 bytes (§2.2.3)"
            )
        if i >= n:
            return None
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    end = i + length
    if max_packet_size is not None and end - pos > max_packet_size:
        raise MalformedPacket(
            "packet-too-large",
            f"{PacketType(first >> 4).name} of {end - pos} bytes exceeds the limit of "
            f"{max_packet_size} bytes",
        )
    return first, i, end


def _truncated(what: str) -> MalformedPacket:
    return MalformedPacket("truncated", f"{what} runs past the end of the packet")


def _trailing(name: str, extra: int) -> MalformedPacket:
    return MalformedPacket("trailing-bytes", f"{extra} bytes after the end of {name}")


def _read_u16(buf: _Buffer, pos: int, end: int, what: str) -> int:
    if pos + 2 > end:
        raise _truncated(what)
    return (buf[pos] << 8) | buf[pos + 1]


def _read_packet_id(buf: _Buffer, pos: int, end: int, name: str) -> int:
    packet_id = _read_u16(buf, pos, end, f"{name} packet identifier")
    if packet_id == 0:
        raise MalformedPacket("zero-packet-id", f"{name} with packet identifier 0 ([MQTT-2.3.1-1])")
    return packet_id


def _read_binary(buf: _Buffer, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """Two-byte length, then that many bytes (§1.5.3 framing; Binary Data in §3.1.3)."""
    if pos + 2 > end:
        raise _truncated(what)
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise _truncated(what)
    return bytes(buf[pos + 2 : stop]), stop


def _read_str(buf: _Buffer, pos: int, end: int, what: str) -> tuple[str, int]:
    """A UTF-8 encoded string (§1.5.3): well-formed, no surrogates, no U+0000.

    The message never quotes the bytes: the string may be a user name carrying a token.
    """
    if pos + 2 > end:
        raise _truncated(what)
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise _truncated(what)
    try:
        text = str(buf[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(
            "bad-utf8", f"{what} is not well-formed UTF-8 ([MQTT-1.5.3-1])"
        ) from None
    if "\x00" in text:
        raise MalformedPacket("bad-utf8", f"{what} contains U+0000 ([MQTT-1.5.3-2])")
    return text, stop


def _check_topic_name(topic: str, what: str) -> None:
    if not topic:
        raise MalformedPacket("empty-topic", f"{what} is empty ([MQTT-4.7.3-1])")
    if "+" in topic or "#" in topic:
        raise MalformedPacket(
            "wildcard-in-topic", f"{what} {topic!r} contains a wildcard ([MQTT-3.3.2-2])"
        )


def _decode_connect(buf: _Buffer, flags: int, pos: int, end: int) -> Connect:
    name, p = _read_binary(buf, pos, end, "CONNECT protocol name")
    levels = _PROTOCOL_LEVELS.get(name)
    if levels is None:
        raise MalformedPacket(
            "bad-protocol-name",
            f"protocol name {name[:16]!r} is neither b'MQTT' nor b'MQIsdp' (§3.1.2.1)",
        )
    if p + 4 > end:
        raise _truncated("CONNECT variable header")
    level = buf[p]
    if level not in levels:
        raise MalformedPacket(
            "bad-protocol-level",
            f"protocol level {level} with protocol name {name.decode()!r} is not supported "
            "(§3.1.2.2: CONNACK 0x01)",
        )
    cflags = buf[p + 1]
    keep_alive = (buf[p + 2] << 8) | buf[p + 3]
    p += 4
    v31 = level == 3  # MQTT 3.1 has none of the 3.1.1 flag MUSTs below
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 3
    username_flag = cflags & 0x80
    password_flag = cflags & 0x40
    if not v31:
        if cflags & 0x01:
            raise MalformedPacket(
                "reserved-connect-flag", "CONNECT reserved flag (bit 0) is set ([MQTT-3.1.2-3])"
            )
        if not will_flag and cflags & 0x38:
            raise MalformedPacket(
                "bad-will-flags",
                "Will QoS or Will Retain set without the Will flag ([MQTT-3.1.2-11], -13, -15)",
            )
        if password_flag and not username_flag:
            raise MalformedPacket(
                "password-without-username",
                "Password flag set without the User Name flag ([MQTT-3.1.2-22])",
            )
    client_id, p = _read_str(buf, p, end, "client identifier")
    will = None
    if will_flag:
        if will_qos == 3:
            raise MalformedPacket("bad-qos", "Will QoS 3 ([MQTT-3.1.2-14])")
        will_topic, p = _read_str(buf, p, end, "Will topic")
        _check_topic_name(will_topic, "Will topic")
        will_payload, p = _read_binary(buf, p, end, "Will message")
        will = Will(will_topic, will_payload, will_qos, bool(cflags & 0x20))
    username = None
    password = None
    if username_flag:
        username, p = _read_str(buf, p, end, "user name")
    if password_flag:
        password, p = _read_binary(buf, p, end, "password")
    if p != end:
        raise _trailing("CONNECT", end - p)
    return Connect(client_id, level, bool(cflags & 0x02), keep_alive, username, password, will)


def _decode_connack(buf: _Buffer, flags: int, pos: int, end: int) -> Connack:
    if end - pos != 2:
        if end - pos < 2:
            raise _truncated("CONNACK variable header")
        raise _trailing("CONNACK", end - pos - 2)
    ack_flags = buf[pos]
    if ack_flags & 0xFE:
        raise MalformedPacket(
            "bad-connack-flags", "CONNACK acknowledge flags bits 7-1 are set ([MQTT-3.2.2-1])"
        )
    return Connack(bool(ack_flags), buf[pos + 1])


def _decode_publish(buf: _Buffer, flags: int, pos: int, end: int) -> Publish:
    topic, p = _read_str(buf, pos, end, "PUBLISH topic name")
    _check_topic_name(topic, "PUBLISH topic name")
    qos = (flags >> 1) & 3
    packet_id = None
    if qos:
        packet_id = _read_packet_id(buf, p, end, "PUBLISH")
        p += 2
    return Publish(topic, bytes(buf[p:end]), qos, bool(flags & 1), bool(flags & 8), packet_id)


def _ack_decoder(
    cls: Callable[[int], Puback | Pubrec | Pubrel | Pubcomp | Unsuback], name: str
) -> Callable[[_Buffer, int, int, int], Packet]:
    def decode_ack(buf: _Buffer, flags: int, pos: int, end: int) -> Packet:
        if end - pos > 2:
            raise _trailing(name, end - pos - 2)
        return cls(_read_packet_id(buf, pos, end, name))

    return decode_ack


def _decode_subscribe(buf: _Buffer, flags: int, pos: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(buf, pos, end, "SUBSCRIBE")
    p = pos + 2
    if p == end:
        raise MalformedPacket(
            "empty-subscribe", "SUBSCRIBE without a topic filter ([MQTT-3.8.3-3])"
        )
    topics = []
    while p < end:
        topic_filter, p = _read_str(buf, p, end, "SUBSCRIBE topic filter")
        if not topic_filter:
            raise MalformedPacket(
                "empty-topic-filter", "SUBSCRIBE with an empty topic filter ([MQTT-4.7.3-1])"
            )
        if p == end:
            raise _truncated("SUBSCRIBE requested QoS")
        qos = buf[p]
        p += 1
        if qos & 0xFC:
            raise MalformedPacket(
                "bad-subscribe-options",
                f"requested-QoS byte {qos:#04x} has reserved bits set ([MQTT-3-8.3-4])",
            )
        if qos == 3:
            raise MalformedPacket("bad-qos", "SUBSCRIBE requests QoS 3 ([MQTT-3-8.3-4])")
        topics.append((topic_filter, qos))
    return Subscribe(packet_id, tuple(topics))


def _decode_suback(buf: _Buffer, flags: int, pos: int, end: int) -> Suback:
    packet_id = _read_packet_id(buf, pos, end, "SUBACK")
    codes = bytes(buf[pos + 2 : end])
    if not codes:
        raise MalformedPacket("empty-suback", "SUBACK without a return code (§3.9.3)")
    if codes.translate(None, _SUBACK_CODES):
        raise MalformedPacket(
            "bad-return-code",
            f"SUBACK return codes {codes.hex(' ')} include a reserved value ([MQTT-3.9.3-2])",
        )
    return Suback(packet_id, tuple(codes))


def _decode_unsubscribe(buf: _Buffer, flags: int, pos: int, end: int) -> Unsubscribe:
    packet_id = _read_packet_id(buf, pos, end, "UNSUBSCRIBE")
    p = pos + 2
    if p == end:
        raise MalformedPacket(
            "empty-unsubscribe", "UNSUBSCRIBE without a topic filter ([MQTT-3.10.3-2])"
        )
    topics = []
    while p < end:
        topic_filter, p = _read_str(buf, p, end, "UNSUBSCRIBE topic filter")
        if not topic_filter:
            raise MalformedPacket(
                "empty-topic-filter", "UNSUBSCRIBE with an empty topic filter ([MQTT-4.7.3-1])"
            )
        topics.append(topic_filter)
    return Unsubscribe(packet_id, tuple(topics))


def _empty_decoder(packet: Packet) -> Callable[[_Buffer, int, int, int], Packet]:
    """PINGREQ, PINGRESP, DISCONNECT: no variable header, no payload; one shared value."""
    name = packet_name(packet)

    def decode_empty(buf: _Buffer, flags: int, pos: int, end: int) -> Packet:
        if end != pos:
            raise _trailing(name, end - pos)
        return packet

    return decode_empty


def _unreachable(buf: _Buffer, flags: int, pos: int, end: int) -> Packet:
    raise AssertionError(
        "reserved packet types are rejected by the fixed header"
    )  # pragma: no cover


# Indexed by packet type; the flags argument is already validated by _FIRST_BYTE.
_DECODERS: Final[tuple[Callable[[_Buffer, int, int, int], Packet], ...]] = (
    _unreachable,
    _decode_connect,
    _decode_connack,
    _decode_publish,
    _ack_decoder(Puback, "PUBACK"),
    _ack_decoder(Pubrec, "PUBREC"),
    _ack_decoder(Pubrel, "PUBREL"),
    _ack_decoder(Pubcomp, "PUBCOMP"),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _ack_decoder(Unsuback, "UNSUBACK"),
    _empty_decoder(Pingreq()),
    _empty_decoder(Pingresp()),
    _empty_decoder(Disconnect()),
    _unreachable,
)


def decode(
    data: bytes | bytearray | memoryview, *, max_packet_size: int | None = None
) -> tuple[Packet, int] | None:
    """Decode the packet at the start of ``data``: (packet, bytes consumed), or None.

    ``data`` is any one-dimensional byte buffer. None means it holds only a proper prefix
    of a packet (incomplete). Bytes after the first packet are ignored. Anything that
    cannot start a valid packet raises :class:`~harness.errors.MalformedPacket`, as early
    as the bytes show it (a bad first byte, an over-long Remaining Length, or a packet
    over ``max_packet_size`` bytes is refused before its body has arrived); no other
    exception escapes for any input.
    """
    if type(data) is bytes:
        buf: _Buffer = data
    else:
        buf = memoryview(data)
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
    header = _fixed_header(buf, 0, len(buf), max_packet_size)
    if header is None:
        return None
    first, start, end = header
    if end > len(buf):
        return None
    return _DECODERS[first >> 4](buf, first & 0x0F, start, end), end


class StreamDecoder:
    """Split a byte stream into packets, each with the exact bytes it arrived as.

    The session pump forwards those raw bytes unchanged when it can. A malformed packet
    raises :class:`~harness.errors.MalformedPacket` and leaves the decoder broken: every
    later :meth:`feed` raises again, since the stream cannot be resynchronised (MQTT 3.1.1
    §4.8: the server closes the connection). Packets completed earlier in the same chunk
    as the garbage are not returned.

    ``max_packet_size`` (total bytes, fixed header included; None means no limit) is
    checked from the fixed header alone, so an oversize packet is refused with
    ``packet-too-large`` before it is buffered (aws-iot.md §4.4).
    """

    __slots__ = ("_buf", "_error", "_need", "max_packet_size")

    def __init__(self, max_packet_size: int | None = None) -> None:
        self.max_packet_size = max_packet_size
        self._buf = bytearray()  # bytes of an incomplete packet
        self._need = 0  # size of that packet when its header is complete, else 0
        self._error: MalformedPacket | None = None

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete packet are waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[Packet, bytes]]:
        """Take the next bytes of the stream; return every packet now complete, in order."""
        if self._error is not None:
            raise MalformedPacket(
                self._error.reason, f"the stream is already broken: {self._error.message}"
            )
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []  # the pending packet is still incomplete: nothing to parse
            buf = bytes(self._buf)
        else:
            buf = data if type(data) is bytes else bytes(data)
        out: list[tuple[Packet, bytes]] = []
        n = len(buf)
        pos = 0
        need = 0
        try:
            while pos < n:
                header = _fixed_header(buf, pos, n, self.max_packet_size)
                if header is None:
                    break
                first, start, end = header
                if end > n:
                    need = end - pos
                    break
                packet = _DECODERS[first >> 4](buf, first & 0x0F, start, end)
                out.append((packet, buf[pos:end]))
                pos = end
        except MalformedPacket as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        self._buf = bytearray(buf[pos:]) if pos < n else bytearray()
        self._need = need
        return out


# Encoding ---------------------------------------------------------------------------------


def _header(first: int, length: int) -> bytes:
    """Fixed header: the first byte and the Remaining Length, minimally encoded (§2.2.3)."""
    if length < 0x80:
        return bytes((first, length))
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(
            f"Remaining Length {length} exceeds the MQTT maximum {MAX_REMAINING_LENGTH}"
        )
    out = bytearray((first,))
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} {value} is outside 0..65535")
    return value.to_bytes(2, "big")


def _packet_id(value: int | None, what: str) -> bytes:
    if value is None or not 1 <= value <= 0xFFFF:
        raise ValueError(f"{what} packet identifier {value!r} is outside 1..65535")
    return value.to_bytes(2, "big")


def _binary(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{what} is {len(data)} bytes, more than 65535")
    return len(data).to_bytes(2, "big") + data


def _string(text: str, what: str) -> bytes:
    if "\x00" in text:
        raise ValueError(f"{what} contains U+0000 ([MQTT-1.5.3-2])")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate ([MQTT-1.5.3-1])") from None
    return _binary(data, what)


def _topic_name(topic: str, what: str) -> bytes:
    if not topic:
        raise ValueError(f"{what} is empty ([MQTT-4.7.3-1])")
    if "+" in topic or "#" in topic:
        raise ValueError(f"{what} {topic!r} contains a wildcard ([MQTT-3.3.2-2])")
    return _string(topic, what)


def _qos(qos: int, what: str) -> int:
    if qos not in (0, 1, 2):
        raise ValueError(f"{what} QoS {qos!r} is not 0, 1 or 2")
    return qos


def _encode_connect(p: Connect) -> bytes:
    name = _PROTOCOL_NAME_FIELD.get(p.protocol_level)
    if name is None:
        raise ValueError(f"protocol level {p.protocol_level!r} is not one of 3, 4")
    flags = 0x02 if p.clean_session else 0
    parts = [_string(p.client_id, "client identifier")]
    if p.will is not None:
        flags |= 0x04 | (_qos(p.will.qos, "Will") << 3) | (0x20 if p.will.retain else 0)
        parts.append(_topic_name(p.will.topic, "Will topic"))
        parts.append(_binary(p.will.payload, "Will message"))
    if p.username is not None:
        flags |= 0x80
        parts.append(_string(p.username, "user name"))
    if p.password is not None:
        if p.username is None and p.protocol_level != 3:
            raise ValueError("a password without a user name needs MQTT 3.1 ([MQTT-3.1.2-22])")
        flags |= 0x40
        parts.append(_binary(p.password, "password"))
    variable = name + bytes((p.protocol_level, flags)) + _u16(p.keep_alive, "keep alive")
    body = b"".join(parts)
    return _header(0x10, len(variable) + len(body)) + variable + body


def _encode_connack(p: Connack) -> bytes:
    if not 0 <= p.return_code <= 0xFF:
        raise ValueError(f"CONNACK return code {p.return_code!r} is outside 0..255")
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _encode_publish(p: Publish) -> bytes:
    topic = _topic_name(p.topic, "PUBLISH topic name")
    qos = _qos(p.qos, "PUBLISH")
    if qos:
        variable = topic + _packet_id(p.packet_id, "PUBLISH")
    elif p.packet_id is not None:
        raise ValueError("a QoS 0 PUBLISH has no packet identifier (§3.3.2.2)")
    elif p.dup:
        raise ValueError("a QoS 0 PUBLISH cannot have DUP set ([MQTT-3.3.1-2])")
    else:
        variable = topic
    first = 0x30 | (0x08 if p.dup else 0) | (qos << 1) | (0x01 if p.retain else 0)
    return b"".join((_header(first, len(variable) + len(p.payload)), variable, p.payload))


def _ack_encoder(first: int, name: str) -> Callable[[Any], bytes]:
    def encode_ack(p: Puback | Pubrec | Pubrel | Pubcomp | Unsuback) -> bytes:
        return bytes((first, 2)) + _packet_id(p.packet_id, name)

    return encode_ack


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter ([MQTT-3.8.3-3])")
    parts = [_packet_id(p.packet_id, "SUBSCRIBE")]
    for topic_filter, qos in p.topics:
        if not topic_filter:
            raise ValueError("SUBSCRIBE with an empty topic filter ([MQTT-4.7.3-1])")
        parts.append(_string(topic_filter, "SUBSCRIBE topic filter"))
        parts.append(bytes((_qos(qos, "SUBSCRIBE"),)))
    body = b"".join(parts)
    return _header(0x82, len(body)) + body


def _encode_suback(p: Suback) -> bytes:
    if not p.return_codes:
        raise ValueError("SUBACK needs at least one return code (§3.9.3)")
    for code in p.return_codes:
        if code not in (0x00, 0x01, 0x02, 0x80):
            raise ValueError(f"SUBACK return code {code!r} is reserved ([MQTT-3.9.3-2])")
    body = _packet_id(p.packet_id, "SUBACK") + bytes(p.return_codes)
    return _header(0x90, len(body)) + body


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter ([MQTT-3.10.3-2])")
    parts = [_packet_id(p.packet_id, "UNSUBSCRIBE")]
    for topic_filter in p.topics:
        if not topic_filter:
            raise ValueError("UNSUBSCRIBE with an empty topic filter ([MQTT-4.7.3-1])")
        parts.append(_string(topic_filter, "UNSUBSCRIBE topic filter"))
    body = b"".join(parts)
    return _header(0xA2, len(body)) + body


def _constant(data: bytes) -> Callable[[Any], bytes]:
    return lambda _packet: data


_ENCODERS: Final[dict[type[Any], Callable[[Any], bytes]]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    Puback: _ack_encoder(0x40, "PUBACK"),
    Pubrec: _ack_encoder(0x50, "PUBREC"),
    Pubrel: _ack_encoder(0x62, "PUBREL"),
    Pubcomp: _ack_encoder(0x70, "PUBCOMP"),
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _ack_encoder(0xB0, "UNSUBACK"),
    Pingreq: _constant(b"\xc0\x00"),
    Pingresp: _constant(b"\xd0\x00"),
    Disconnect: _constant(b"\xe0\x00"),
}


def encode(packet: Packet) -> bytes:
    """The packet's wire bytes (minimal Remaining Length).

    Raises :class:`ValueError` for a packet the codec would refuse to decode (QoS 3, packet
    id 0, a wildcard in a topic name, a QoS 0 PUBLISH with a packet id, ...), so that every
    encoding decodes back to an equal packet. A 3.1 CONNECT re-encoded as 3.1.1 is just
    ``encode(dataclasses.replace(connect, protocol_level=4))``.
    """
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"not an MQTT packet: {type(packet).__name__}")
    return encoder(packet)
