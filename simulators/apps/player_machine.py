"""The browser player's connection logic as a pure state machine (STYLE.md §2).

The player (:mod:`simulators.apps.player`) gets temporary credentials from Cognito, signs a
WebSocket URL with them and keeps one MQTT connection up. What to do next is decided
here, without sockets or clocks: :meth:`PlayerMachine.handle` takes an input and ``now``
(monotonic seconds) and returns the actions the shell performs; :attr:`PlayerMachine.wake_at`
says when the shell must send a :class:`Tick`.

Why it behaves as it does (specs cited):

* **Fresh credentials before they expire** (field design 000, "Implement credential
  refresh"; aws-iot.md §1.5: AWS checks expiry at the handshake only, so a live connection
  outlives its credentials): while connected, new credentials are fetched
  ``refresh_margin`` seconds before expiry (at most half their lifetime, for compressed
  worlds), and a reconnect never signs with credentials past that point.
* **Fresh credentials after any refused handshake** (field-bugs.md FB-23, FB-25, FB-26:
  a 403 on the upgrade means "refresh and re-sign"; paho cannot show the status, only that
  the connection was not upgraded): the credentials in hand are marked stale.
* **Fresh credentials after a dropped connection** (FB-24: AWS's 24-hour close, "take a
  look at how you're sourcing credentials"; FB-23: "new credentials and a new signature
  before each attempt"): a drop marks them stale too, so every reconnect after a drop
  signs with credentials fetched after it (or by a refresh already in flight).
* **Exponential backoff with jitter** for every failure (FB-26: capped backoff, a fresh
  signature per attempt; aws-iot.md §6: Cognito throttling), and an immediate retry when a
  connection that had been up for ``stable_after`` seconds drops (FB-24: the 24-hour close
  wants a prompt reconnect with fresh credentials). A connection that drops sooner counts
  as a failure, so a close-after-SUBSCRIBE loop (FB-30) backs off instead of spinning.
* **One thing at a time**: one credential fetch and one connection attempt at most.
* **AWS's CONNECT rate**: AWS IoT throttles more than one CONNECT per second per client id
  (aws-iot.md §4.4; the gateway closes the connection with ``THROTTLED``). A connection
  attempt that got as far as MQTT CONNECT is followed by the next one no sooner than
  ``min_connect_interval`` after its outcome, even when a healthy connection dropped.

The field design's mistakes are policy switches (:class:`PlayerPolicy`), so the
as-written variant runs through the same table: ``refresh_credentials=False`` fetches
credentials once and signs with them forever (FB-23), ``exponential_backoff=False``
retries after a fixed ``retry_delay`` (the design's "Retry connection" comment).

The transition table :data:`TRANSITIONS` maps ``(Phase, input type)`` to a handler; a pair
that is not in it leaves the machine unchanged (an input that cannot matter in that phase,
such as a :class:`Tick` while a fetch is in flight).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness.errors import ConfigError
from simulators.apps.backoff import Backoff

__all__ = [
    "CONNECT_SENT",
    "TRANSITIONS",
    "Action",
    "Connect",
    "CredentialsFailed",
    "CredentialsReady",
    "FetchCredentials",
    "GiveUp",
    "Input",
    "LinkDown",
    "LinkFailed",
    "LinkUp",
    "Phase",
    "PlayerMachine",
    "PlayerPolicy",
    "Start",
    "Tick",
    "Wait",
]


class Phase(enum.Enum):
    IDLE = "idle"
    FETCHING = "fetching"  # waiting for credentials before connecting
    CONNECTING = "connecting"  # one connection attempt in flight
    CONNECTED = "connected"
    WAITING = "waiting"  # backing off
    GAVE_UP = "gave-up"


# Inputs


@dataclass(frozen=True)
class Start:
    """The app starts."""


@dataclass(frozen=True)
class Tick:
    """Time passed (the shell sends it at :attr:`PlayerMachine.wake_at`)."""


@dataclass(frozen=True)
class CredentialsReady:
    """Cognito returned credentials that expire at ``expires_at`` (monotonic seconds)."""

    expires_at: float


@dataclass(frozen=True)
class CredentialsFailed:
    """Cognito failed; ``reason`` as the shell classified it (``throttled``, ...)."""

    reason: str


@dataclass(frozen=True)
class LinkUp:
    """CONNACK accepted."""


@dataclass(frozen=True)
class LinkFailed:
    """The attempt failed. ``handshake`` = the upgrade was refused (a 403 at AWS)."""

    reason: str


@dataclass(frozen=True)
class LinkDown:
    """An established connection ended."""

    rc: str = ""


Input = Start | Tick | CredentialsReady | CredentialsFailed | LinkUp | LinkFailed | LinkDown


# Actions


@dataclass(frozen=True)
class FetchCredentials:
    """Get credentials from Cognito (``why``: start, refresh, expired, stale, reconnect,
    retry)."""

    why: str


@dataclass(frozen=True)
class Connect:
    """Sign a URL with the current credentials and connect (``attempt`` counts from 1)."""

    attempt: int


@dataclass(frozen=True)
class Wait:
    """Back off ``delay`` seconds after ``failures`` consecutive failures."""

    delay: float
    failures: int
    why: str


@dataclass(frozen=True)
class GiveUp:
    """Stop trying after ``failures`` consecutive failures (``give_up_after``)."""

    failures: int


Action = FetchCredentials | Connect | Wait | GiveUp


@dataclass(frozen=True, kw_only=True)
class PlayerPolicy:
    """How the player retries and refreshes; times in seconds (compressed time allowed)."""

    # Retries
    backoff: Backoff = field(default_factory=Backoff)
    #: A connection up this long is healthy: its drop is retried at once.
    stable_after: float = 5.0
    #: Stop after this many consecutive failures; ``None`` = never.
    give_up_after: int | None = None
    #: Seconds between the outcome of an attempt that sent CONNECT and the next attempt
    #: (AWS: 1 CONNECT per second per client id, aws-iot.md §4.4); 0 = no spacing.
    min_connect_interval: float = 1.0
    # Credentials
    #: Fetch new credentials this long before expiry (at most half their lifetime).
    refresh_margin: float = 300.0
    # The field design's mistakes (the as-written variant switches them)
    #: ``False``: credentials are fetched once and reused forever (FB-23).
    refresh_credentials: bool = True
    #: ``False``: every retry waits ``retry_delay``, no growth, no jitter.
    exponential_backoff: bool = True
    retry_delay: float = 0.1

    def __post_init__(self) -> None:
        for name in ("stable_after", "refresh_margin", "retry_delay", "min_connect_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0 seconds, got {value!r}")
        if self.give_up_after is not None and not (
            isinstance(self.give_up_after, int) and self.give_up_after >= 1
        ):
            raise ConfigError(
                f"give_up_after must be a whole number >= 1 or None, got {self.give_up_after!r}"
            )


class PlayerMachine:
    """The player's decisions; see the module docstring. Not thread-safe."""

    def __init__(self, policy: PlayerPolicy | None = None, *, rng: random.Random | None = None):
        self.policy = policy or PlayerPolicy()
        self.rng = rng or random.Random()
        self.phase = Phase.IDLE
        #: Consecutive failures (fetches and connections) since the last healthy connection.
        self.failures = 0
        self.attempts = 0
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        #: The credentials in hand were refused at a handshake.
        self.stale = False
        #: The connection dropped since the credentials in hand were fetched.
        self.dropped = False
        #: A credential fetch is in flight.
        self.fetching = False
        self.refresh_failures = 0
        self.connected_at: float | None = None
        self.until: float | None = None
        #: When the last attempt that sent CONNECT ended (for ``min_connect_interval``).
        self.last_connect_at: float | None = None

    # The shell's interface

    def handle(self, event: Input, now: float) -> list[Action]:
        handler = TRANSITIONS.get((self.phase, type(event)))
        if handler is None:
            return []
        return handler(self, event, now)

    @property
    def wake_at(self) -> float | None:
        """When the shell must send a :class:`Tick` (monotonic seconds), or ``None``."""
        if self.phase is Phase.WAITING:
            return self.until
        if self.phase is Phase.CONNECTED and self.policy.refresh_credentials and not self.fetching:
            return self.refresh_at
        return None

    def needs_credentials(self, now: float) -> str | None:
        """Why credentials must be fetched before the next attempt, or ``None``."""
        if self.expires_at is None:
            return "start" if self.failures == 0 else "retry"
        if not self.policy.refresh_credentials:
            return None
        if self.stale:
            return "stale"
        if self.refresh_at is not None and now >= self.refresh_at:
            return "expired" if now >= self.expires_at else "refresh"
        if self.dropped:
            return "reconnect"
        return None

    # Helpers

    def _delay(self) -> float:
        if not self.policy.exponential_backoff:
            return self.policy.retry_delay if self.failures > 0 else 0.0
        return self.policy.backoff.delay(self.failures, self.rng.random())

    def _fetch(self, why: str) -> list[Action]:
        self.phase = Phase.FETCHING
        if self.fetching:
            return []  # the fetch in flight will answer
        self.fetching = True
        return [FetchCredentials(why)]

    def _proceed(self, now: float) -> list[Action]:
        """Fetch credentials if the next attempt needs them, else connect."""
        why = self.needs_credentials(now)
        if why is not None:
            return self._fetch(why)
        if self.last_connect_at is not None:
            ready_at = self.last_connect_at + self.policy.min_connect_interval
            if now < ready_at:
                self.phase = Phase.WAITING
                self.until = ready_at
                return [Wait(ready_at - now, self.failures, "connect rate")]
        self.phase = Phase.CONNECTING
        self.attempts += 1
        return [Connect(self.attempts)]

    def _failed(self, now: float, why: str) -> list[Action]:
        self.failures += 1
        limit = self.policy.give_up_after
        if limit is not None and self.failures >= limit:
            self.phase = Phase.GAVE_UP
            return [GiveUp(self.failures)]
        return self._wait(now, why)

    def _wait(self, now: float, why: str) -> list[Action]:
        delay = self._delay()
        if delay <= 0:
            return self._proceed(now)
        self.phase = Phase.WAITING
        self.until = now + delay
        return [Wait(delay, self.failures, why)]

    def _store(self, event: CredentialsReady, now: float) -> None:
        self.fetching = False
        self.stale = False
        self.dropped = False
        self.refresh_failures = 0
        self.expires_at = event.expires_at
        lifetime = max(0.0, event.expires_at - now)
        self.refresh_at = event.expires_at - min(self.policy.refresh_margin, lifetime / 2)


# Handlers: one per row of the table


def _on_start(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    return m._fetch("start")


def _on_credentials(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, CredentialsReady)
    m._store(event, now)
    return m._proceed(now)


def _on_credentials_failed(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, CredentialsFailed)
    m.fetching = False
    return m._failed(now, f"credentials: {event.reason}")


#: Failure reasons of an attempt that got as far as sending MQTT CONNECT.
CONNECT_SENT = frozenset({"refused", "closed-before-connack", "timeout"})


def _on_link_up(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    m.phase = Phase.CONNECTED
    m.connected_at = now
    m.last_connect_at = now
    return []


def _on_link_failed(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkFailed)
    if event.reason in CONNECT_SENT:
        m.last_connect_at = now
    if event.reason == "handshake":
        m.stale = True
    return m._failed(now, f"connect: {event.reason}")


def _on_link_down(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    healthy = m.connected_at is not None and now - m.connected_at >= m.policy.stable_after
    m.connected_at = None
    m.dropped = True
    if healthy:
        m.failures = 0
        return m._proceed(now)
    return m._failed(now, "dropped soon after connecting")


def _on_tick_connected(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    if (
        m.policy.refresh_credentials
        and not m.fetching
        and m.refresh_at is not None
        and now >= m.refresh_at
    ):
        m.fetching = True
        return [FetchCredentials("refresh")]
    return []


def _on_refreshed(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, CredentialsReady)
    m._store(event, now)
    return []


def _on_refresh_failed(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    """A background refresh failed: keep the connection, try again after a backoff."""
    m.fetching = False
    m.refresh_failures += 1
    m.refresh_at = now + max(m.policy.backoff.delay(m.refresh_failures, m.rng.random()), 0.001)
    return []


def _on_late_credentials(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    """A refresh started while connected answers after the connection dropped."""
    assert isinstance(event, CredentialsReady)
    m._store(event, now)
    return []


def _on_late_failure(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    m.fetching = False
    return []


def _on_tick_waiting(m: PlayerMachine, event: Input, now: float) -> list[Action]:
    if m.until is not None and now < m.until:
        return []
    m.until = None
    return m._proceed(now)


Handler = Callable[[PlayerMachine, Input, float], list[Action]]

#: ``(phase, input type) → handler``: the whole behaviour, row by row.
TRANSITIONS: Mapping[tuple[Phase, type], Handler] = {
    (Phase.IDLE, Start): _on_start,
    (Phase.FETCHING, CredentialsReady): _on_credentials,
    (Phase.FETCHING, CredentialsFailed): _on_credentials_failed,
    (Phase.CONNECTING, LinkUp): _on_link_up,
    (Phase.CONNECTING, LinkFailed): _on_link_failed,
    (Phase.CONNECTING, CredentialsReady): _on_late_credentials,
    (Phase.CONNECTING, CredentialsFailed): _on_late_failure,
    (Phase.CONNECTED, Tick): _on_tick_connected,
    (Phase.CONNECTED, CredentialsReady): _on_refreshed,
    (Phase.CONNECTED, CredentialsFailed): _on_refresh_failed,
    (Phase.CONNECTED, LinkDown): _on_link_down,
    (Phase.WAITING, Tick): _on_tick_waiting,
    (Phase.WAITING, CredentialsReady): _on_late_credentials,
    (Phase.WAITING, CredentialsFailed): _on_late_failure,
}
