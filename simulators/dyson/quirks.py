"""The field quirks of a Dyson device's own MQTT broker, as switches (dyson.md §1.3-§1.4).

Real devices do things a textbook MQTT broker does not: a TCP reset for a client that
reconnects with the client id of a session that died abruptly, a small cap on concurrent
sessions that counts stale ones, a dropped connection soon after a SUBSCRIBE outside
``<root>/<serial>/``. :class:`LocalQuirks` holds the switches with the spec's defaults;
the local broker shell reads them. Each switch keeps the spec's name (§1.4 table); its
parameters sit next to it; ``None`` means off where a switch is only a number.
:meth:`LocalQuirks.textbook` switches everything off: a plain MQTT 3.1.1 broker, for
telling a quirk's effect from a client's own bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import ConfigError

#: §1.4 ``hash_wildcard``: what a bare ``#`` subscription gets: ``silent`` (granted, nothing
#: delivered), ``refuse`` (SUBACK 0x80), ``drop`` (as a foreign filter), or ``deliver`` (a
#: textbook broker; not seen in the field).
HashWildcardMode = Literal["silent", "refuse", "drop", "deliver"]
#: §1.4 ``invalid_command``: the reaction to malformed or invalid commands; only ``ignore``
#: is known (no rejection payload is ever published).
InvalidCommandMode = Literal["ignore"]


@dataclass(frozen=True, kw_only=True)
class SynFragile:
    """§1.4 ``syn_fragile``: after ``attempts`` connection attempts within ``window_s``,
    stop answering SYNs for ``pause_s`` (hass-dyson #380; M and T are **(unknown)**)."""

    attempts: int = 10
    window_s: float = 10.0
    pause_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("syn_fragile attempts must be at least 1")
        if self.window_s <= 0 or self.pause_s <= 0:
            raise ConfigError("syn_fragile window_s and pause_s must be positive")


@dataclass(frozen=True, kw_only=True)
class LocalQuirks:
    """Switches of the device's local broker; defaults are the spec's (§1.3, §1.4)."""

    # Sessions
    #: A CONNECT reusing the client id of a session that ended without DISCONNECT less than
    #: ``stale_window_s`` ago gets a TCP RST, not a CONNACK; the old session stays.
    stale_session_rst: bool = True
    #: How long a stale session lives: 1.5 x the 60 s keep-alive (§1.1, §1.4).
    stale_window_s: float = 90.0
    #: At most this many sessions, stale ones included; beyond it new connections are
    #: closed (N = 4; the real N is **(unknown)**). ``None``: no cap.
    session_cap: int | None = 4
    #: Send a CONNACK before closing a connection over the cap (**(unknown)**; default no).
    session_cap_connack: bool = False
    #: CONNACK rc 2 for an MQTT 3.1 client id longer than 23 characters (§1.3; default off).
    strict_client_id: bool = False
    # Subscriptions
    #: A SUBSCRIBE outside ``<root>/<serial>/`` gets no SUBACK; TCP closes
    #: ``foreign_drop_delay_ms`` later (field: 6-15 ms).
    foreign_subscribe_drop: bool = True
    foreign_drop_delay_ms: float = 10.0
    #: What a bare ``#`` gets (see :data:`HashWildcardMode`).
    hash_wildcard: HashWildcardMode = "silent"
    # Connections
    #: Stop answering SYNs after a burst of attempts; ``None``: off (default).
    syn_fragile: SynFragile | None = None
    #: Accept CONNECT and SUBSCRIBE but never answer a request (shenxn/ha-dyson #6).
    mute: bool = False
    # Delivery (thoukydides ``mqtt-logs/475.jsonl``; its ``dyson-mqtt-filter.ts`` drops both)
    #: Send each device message twice, ``duplicate_gap_ms`` apart (~1 ms in the field).
    duplicates: bool = False
    duplicate_gap_ms: float = 1.0
    #: Now and then send a message whose ``time`` is ``reorder_age_s`` older than the last.
    reorder: bool = False
    reorder_age_s: float = 1.0
    #: Reaction to malformed JSON, unknown ``msg`` and invalid values (§1.4).
    invalid_command: InvalidCommandMode = "ignore"

    def __post_init__(self) -> None:
        if self.stale_window_s <= 0:
            raise ConfigError("stale_window_s must be positive")
        if self.session_cap is not None and self.session_cap < 1:
            raise ConfigError("session_cap must be at least 1 (None switches the cap off)")
        for name in ("foreign_drop_delay_ms", "duplicate_gap_ms", "reorder_age_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.hash_wildcard not in ("silent", "refuse", "drop", "deliver"):
            raise ConfigError(
                f"hash_wildcard {self.hash_wildcard!r}: silent, refuse, drop or deliver"
            )
        if self.invalid_command != "ignore":
            raise ConfigError(f"invalid_command {self.invalid_command!r}: only ignore is known")

    @classmethod
    def textbook(cls) -> LocalQuirks:
        """Every quirk off: a well-behaved MQTT 3.1.1 broker that delivers on ``#``."""
        return cls(
            stale_session_rst=False,
            session_cap=None,
            foreign_subscribe_drop=False,
            hash_wildcard="deliver",
        )
