"""The Dyson app's connection logic: cloud and local paths with fallback, a pure state machine.

The Dyson app (:mod:`simulators.apps.dyson_app`) reaches one device over two paths: the
device's **local** MQTT broker (dyson.md §1) and the **cloud**, AWS IoT over WSS with the
Dyson cloud's custom-authorizer credentials (dyson.md §7, aws-iot.md §2.5). Which path to
try, when to fall back and when to come back is decided here, without sockets or clocks
(STYLE.md §2): :meth:`DysonMachine.handle` takes an input and ``now`` (monotonic seconds)
and returns actions; :attr:`DysonMachine.wake_at` says when to send a :class:`Tick`.

What it does, and the field reports behind it:

* **Login first** (dyson.md §6): the manifest says which paths exist (no local
  credentials → cloud only, FB-04; no ``wss`` broker → no cloud, FB-09). A failed login is
  retried with backoff (FB-19: an outage is not a bad password). No path at all (an empty
  manifest, FB-20) is said and retried after the login backoff.
* **Preferred path first** (``local-first`` is hass-dyson's default, dyson.md §7), the
  other on failure, **also during startup** (FB-03), each path with its own failure
  backoff (hass-dyson ``min(300, 30·2^(n-1))``, here :class:`~simulators.apps.backoff.Backoff`);
  when both are backing off, wait for the first to be ready ("both down → bounded retries,
  recovery when one returns").
* **Back to the preferred path** ``return_after`` seconds after settling on the other one
  (hass-dyson: 300 s), by trying it while the fallback link stays up; only when it is up
  is the fallback closed (no gap, and never two *attempts* at once).
* **One connection attempt at a time** (FB-08): the machine never issues a second
  :class:`Connect` before the first one's outcome.
* **New IoT credentials before every cloud attempt** (thoukydides, dyson.md §7; FB-22),
  a new login first when the cloud said 401 (the Bearer token died), the cached ones when
  it said 429 (thoukydides).
* **A stable local client id** (FB-06), and one immediate retry with a one-off random id
  when the device closes a CONNECT of the stable id without CONNACK (FB-07: the device
  resets a newcomer whose id matches a stale session).
* **AWS's CONNECT rate** on the cloud path: one CONNECT per second per client id
  (aws-iot.md §4.4), so attempts that sent CONNECT are spaced ``min_connect_interval``.
* A link that drops sooner than ``stable_after`` after connecting counts as a failure of
  its path (a connect-drop loop backs off); a healthy link's drop is retried at once.

The field design's mistakes are :class:`DysonPolicy` switches, so the as-written variant
runs through the same table: ``startup_fallback=False`` (FB-03), ``refresh_iot=False``
(FB-22), ``local_client_id="random"`` (FB-06), ``random_id_retry=False``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import ConfigError
from simulators.apps.backoff import Backoff

__all__ = [
    "CONNECT_SENT",
    "PATHS",
    "TRANSITIONS",
    "Action",
    "Close",
    "Connect",
    "DysonMachine",
    "DysonPolicy",
    "FetchIot",
    "Input",
    "IotFailed",
    "IotReady",
    "LinkDown",
    "LinkFailed",
    "LinkUp",
    "Login",
    "LoginFailed",
    "LoginOk",
    "Path",
    "Phase",
    "Start",
    "Switch",
    "Tick",
    "Wait",
]

Path = Literal["local", "cloud"]
PATHS: tuple[Path, Path] = ("local", "cloud")
ClientIdKind = Literal["stable", "random", "issued"]

#: Failure reasons of an attempt that got as far as sending MQTT CONNECT.
CONNECT_SENT = frozenset({"refused", "closed-before-connack", "timeout"})


def _other(path: Path) -> Path:
    return "cloud" if path == "local" else "local"


class Phase(enum.Enum):
    IDLE = "idle"
    LOGGING_IN = "logging-in"
    LOGIN_WAIT = "login-wait"
    FETCHING_IOT = "fetching-iot"  # IoT credentials for a cloud attempt
    ATTEMPTING = "attempting"  # one connection attempt in flight, no link up
    CONNECTED = "connected"
    PROBING_IOT = "probing-iot"  # connected on the fallback; IoT credentials for the probe
    PROBING = "probing"  # connected on the fallback; the preferred path being tried
    WAITING = "waiting"  # every path backing off


# Inputs


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class LoginOk:
    """Logged in; the manifest offers these paths to the device."""

    local: bool
    cloud: bool


@dataclass(frozen=True)
class LoginFailed:
    reason: str


@dataclass(frozen=True)
class IotReady:
    pass


@dataclass(frozen=True)
class IotFailed:
    """``unauthorized`` (401: log in again), ``throttled`` (429), or another reason."""

    reason: str


@dataclass(frozen=True)
class LinkUp:
    path: Path


@dataclass(frozen=True)
class LinkFailed:
    path: Path
    reason: str


@dataclass(frozen=True)
class LinkDown:
    path: Path
    rc: str = ""


Input = Start | Tick | LoginOk | LoginFailed | IotReady | IotFailed | LinkUp | LinkFailed | LinkDown


# Actions


@dataclass(frozen=True)
class Login:
    why: str


@dataclass(frozen=True)
class FetchIot:
    """``POST /v2/authorize/iot-credentials``; after a 401, log in again first."""

    relogin: bool = False


@dataclass(frozen=True)
class Connect:
    path: Path
    client_id: ClientIdKind


@dataclass(frozen=True)
class Close:
    """Close this path's link on purpose (the app returned to the preferred path)."""

    path: Path


@dataclass(frozen=True)
class Wait:
    delay: float
    why: str


@dataclass(frozen=True)
class Switch:
    """The app moves to ``to``: ``fallback`` after ``from_`` failed or dropped, ``return``
    when the preferred path is back while the fallback still worked."""

    from_: Path
    to: Path
    kind: Literal["fallback", "return"]


Action = Login | FetchIot | Connect | Close | Wait | Switch


@dataclass(frozen=True, kw_only=True)
class DysonPolicy:
    """How the app picks paths and retries; seconds, compressed time allowed."""

    preferred: Path = "local"
    # Retries
    backoff: Backoff = field(default_factory=lambda: Backoff(base=30.0, cap=300.0))
    login_backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    #: On the fallback this long, then try the preferred path again (hass-dyson: 300 s).
    return_after: float = 300.0
    #: A link up this long is healthy: its drop is retried at once.
    stable_after: float = 5.0
    #: Spacing after a cloud attempt that sent CONNECT (aws-iot.md §4.4).
    min_connect_interval: float = 1.0
    # The field design's mistakes (the as-written variant switches them)
    #: ``False``: during startup only the preferred path is tried (FB-03).
    startup_fallback: bool = True
    #: ``False``: IoT credentials are fetched once and replayed (FB-22).
    refresh_iot: bool = True
    #: ``"random"``: a new local client id for every attempt (FB-06).
    local_client_id: Literal["stable", "random"] = "stable"
    #: One immediate retry with a random id when the stable one is reset (FB-07).
    random_id_retry: bool = True

    def __post_init__(self) -> None:
        if self.preferred not in PATHS:
            raise ConfigError(f"preferred path must be local or cloud, got {self.preferred!r}")
        for name in ("return_after", "stable_after", "min_connect_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0 seconds, got {value!r}")


class DysonMachine:
    """The Dyson app's decisions; see the module docstring. Not thread-safe."""

    def __init__(self, policy: DysonPolicy | None = None, *, rng: random.Random | None = None):
        self.policy = policy or DysonPolicy()
        self.rng = rng or random.Random()
        self.phase = Phase.IDLE
        self.available: dict[Path, bool] = {"local": False, "cloud": False}
        self.failures: dict[Path, int] = {"local": 0, "cloud": 0}
        self.blocked_until: dict[Path, float] = {"local": 0.0, "cloud": 0.0}
        self.last_connect_at: dict[Path, float | None] = {"local": None, "cloud": None}
        #: The path whose link is up (``None`` when none is).
        self.current: Path | None = None
        #: The path of the attempt in flight.
        self.attempt: Path | None = None
        self.attempt_id: ClientIdKind | None = None
        #: The path that failed or dropped last, until a link is up again.
        self.previous: Path | None = None
        self.ever_connected = False
        self.have_iot = False
        self.relogin = False
        self.random_retry_used = False
        self.connected_at: float | None = None
        self.return_at: float | None = None
        self.until: float | None = None
        self.login_failures = 0

    # The shell's interface

    def handle(self, event: Input, now: float) -> list[Action]:
        handler = TRANSITIONS.get((self.phase, type(event)))
        if handler is None:
            return []
        return handler(self, event, now)

    @property
    def wake_at(self) -> float | None:
        if self.phase in (Phase.WAITING, Phase.LOGIN_WAIT):
            return self.until
        if self.phase is Phase.CONNECTED:
            return self.return_at
        return None

    def order(self) -> list[Path]:
        """The paths to try, preferred first, those the manifest offers."""
        first = self.policy.preferred
        return [p for p in (first, _other(first)) if self.available[p]]

    def ready_at(self, path: Path) -> float:
        """When ``path`` may be tried again (failure backoff, cloud CONNECT rate)."""
        ready = self.blocked_until[path]
        last = self.last_connect_at[path]
        if path == "cloud" and last is not None:
            ready = max(ready, last + self.policy.min_connect_interval)
        return ready

    # Helpers

    def _backoff(self, path: Path) -> float:
        return self.policy.backoff.delay(self.failures[path], self.rng.random())

    def _block(self, path: Path, now: float) -> None:
        self.failures[path] += 1
        self.blocked_until[path] = now + self._backoff(path)

    def _next_attempt(self, now: float) -> list[Action]:
        order = self.order()
        if not order:
            self.login_failures += 1
            self.phase = Phase.LOGIN_WAIT
            delay = self.policy.login_backoff.delay(self.login_failures, self.rng.random())
            self.until = now + delay
            return [Wait(delay, "no path to the device")]
        if not self.policy.startup_fallback and not self.ever_connected:
            order = order[:1]  # FB-03: stuck on the first path during startup
        ready = [p for p in order if self.ready_at(p) <= now]
        if ready:
            return self._attempt(ready[0], now, probe=False)
        self.phase = Phase.WAITING
        self.until = min(self.ready_at(p) for p in order)
        return [Wait(self.until - now, "every path is backing off")]

    def _attempt(
        self, path: Path, now: float, *, probe: bool, client_id: ClientIdKind | None = None
    ) -> list[Action]:
        actions: list[Action] = []
        if not probe and self.previous is not None and self.previous != path:
            actions.append(Switch(self.previous, path, "fallback"))
        self.attempt = path
        if path == "cloud":
            self.attempt_id = "issued"
            if self.policy.refresh_iot or not self.have_iot:
                self.phase = Phase.PROBING_IOT if probe else Phase.FETCHING_IOT
                relogin = self.relogin and self.policy.refresh_iot
                return [*actions, FetchIot(relogin=relogin)]
            self.phase = Phase.PROBING if probe else Phase.ATTEMPTING
            return [*actions, Connect("cloud", "issued")]
        kind = client_id or self.policy.local_client_id
        self.attempt_id = kind
        self.phase = Phase.PROBING if probe else Phase.ATTEMPTING
        return [*actions, Connect("local", kind)]

    def _retry_with_random_id(self, event: LinkFailed) -> bool:
        return (
            event.path == "local"
            and event.reason in ("closed-before-connack", "reset")
            and self.attempt_id == "stable"
            and self.policy.random_id_retry
            and not self.random_retry_used
        )

    def _path_failed(self, path: Path, now: float) -> list[Action]:
        self._block(path, now)
        self.previous = path
        self.attempt = None
        self.random_retry_used = False
        return self._next_attempt(now)

    def _probe_failed(self, path: Path, now: float) -> list[Action]:
        self._block(path, now)
        self.attempt = None
        self.random_retry_used = False
        self.phase = Phase.CONNECTED
        self.return_at = max(now + self.policy.return_after, self.ready_at(path))
        return []

    def _up(self, path: Path, now: float) -> None:
        self.phase = Phase.CONNECTED
        self.current = path
        self.attempt = None
        self.connected_at = now
        self.ever_connected = True
        self.failures[path] = 0
        self.blocked_until[path] = 0.0
        self.last_connect_at[path] = now
        self.previous = None
        self.random_retry_used = False
        preferred = self.policy.preferred
        if path != preferred and self.available[preferred]:
            self.return_at = max(now + self.policy.return_after, self.ready_at(preferred))
        else:
            self.return_at = None

    def _lost(self, path: Path, now: float) -> None:
        """The link of ``path`` ended: a failure of the path if it was short-lived."""
        healthy = self.connected_at is not None and now - self.connected_at >= (
            self.policy.stable_after
        )
        self.current = None
        self.connected_at = None
        self.return_at = None
        self.previous = path
        if not healthy:
            self._block(path, now)


# Handlers: one per row of the table


def _on_start(m: DysonMachine, event: Input, now: float) -> list[Action]:
    m.phase = Phase.LOGGING_IN
    return [Login("start")]


def _on_login_ok(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LoginOk)
    m.available = {"local": event.local, "cloud": event.cloud}
    return m._next_attempt(now)


def _on_login_failed(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LoginFailed)
    m.login_failures += 1
    delay = m.policy.login_backoff.delay(m.login_failures, m.rng.random())
    m.phase = Phase.LOGIN_WAIT
    m.until = now + delay
    return [Wait(delay, f"login: {event.reason}")]


def _on_tick_login_wait(m: DysonMachine, event: Input, now: float) -> list[Action]:
    if m.until is not None and now < m.until:
        return []
    m.until = None
    m.phase = Phase.LOGGING_IN
    return [Login("retry")]


def _on_iot_ready(m: DysonMachine, event: Input, now: float) -> list[Action]:
    m.have_iot = True
    m.relogin = False
    m.phase = Phase.PROBING if m.phase is Phase.PROBING_IOT else Phase.ATTEMPTING
    return [Connect("cloud", "issued")]


def _on_iot_failed(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, IotFailed)
    probing = m.phase is Phase.PROBING_IOT
    if event.reason == "throttled" and m.have_iot:
        m.phase = Phase.PROBING if probing else Phase.ATTEMPTING
        return [Connect("cloud", "issued")]  # the cached credentials (thoukydides)
    if event.reason == "unauthorized":
        m.relogin = True
    if probing:
        return m._probe_failed("cloud", now)
    return m._path_failed("cloud", now)


def _on_link_up(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkUp)
    if event.path != m.attempt:
        return []  # not the outcome of the attempt in flight
    m._up(event.path, now)
    return []


def _on_link_failed(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkFailed)
    if event.path != m.attempt:
        return []  # not the outcome of the attempt in flight
    if event.reason in CONNECT_SENT:
        m.last_connect_at[event.path] = now
    if m._retry_with_random_id(event):
        m.random_retry_used = True
        m.attempt_id = "random"
        return [Connect("local", "random")]
    return m._path_failed(event.path, now)


def _on_link_down(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkDown)
    if event.path != m.current:
        return []
    m._lost(event.path, now)
    return m._next_attempt(now)


def _on_tick_connected(m: DysonMachine, event: Input, now: float) -> list[Action]:
    preferred = m.policy.preferred
    if m.return_at is None or now < m.return_at or m.current == preferred:
        return []
    if not m.available[preferred]:
        m.return_at = None
        return []
    if m.ready_at(preferred) > now:
        m.return_at = m.ready_at(preferred)
        return []
    m.return_at = None
    return m._attempt(preferred, now, probe=True)


def _on_probe_up(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkUp)
    if event.path != m.attempt:
        return []  # not the outcome of the attempt in flight
    old = m.current
    m._up(event.path, now)
    if old is None or old == event.path:
        return []
    return [Close(old), Switch(old, event.path, "return")]


def _on_probe_failed(m: DysonMachine, event: Input, now: float) -> list[Action]:
    assert isinstance(event, LinkFailed)
    if event.path != m.attempt:
        return []  # not the outcome of the attempt in flight
    if event.reason in CONNECT_SENT:
        m.last_connect_at[event.path] = now
    if m._retry_with_random_id(event):
        m.random_retry_used = True
        m.attempt_id = "random"
        return [Connect("local", "random")]
    return m._probe_failed(event.path, now)


def _on_probe_link_down(m: DysonMachine, event: Input, now: float) -> list[Action]:
    """The fallback link dropped while the preferred path is being tried: the probe
    becomes the app's attempt."""
    assert isinstance(event, LinkDown)
    if event.path != m.current:
        return []
    m._lost(event.path, now)
    m.phase = Phase.FETCHING_IOT if m.phase is Phase.PROBING_IOT else Phase.ATTEMPTING
    return []


def _on_tick_waiting(m: DysonMachine, event: Input, now: float) -> list[Action]:
    if m.until is not None and now < m.until:
        return []
    m.until = None
    return m._next_attempt(now)


Handler = Callable[[DysonMachine, Input, float], list[Action]]

#: ``(phase, input type) → handler``: the whole behaviour, row by row.
TRANSITIONS: Mapping[tuple[Phase, type], Handler] = {
    (Phase.IDLE, Start): _on_start,
    (Phase.LOGGING_IN, LoginOk): _on_login_ok,
    (Phase.LOGGING_IN, LoginFailed): _on_login_failed,
    (Phase.LOGIN_WAIT, Tick): _on_tick_login_wait,
    (Phase.FETCHING_IOT, IotReady): _on_iot_ready,
    (Phase.FETCHING_IOT, IotFailed): _on_iot_failed,
    (Phase.ATTEMPTING, LinkUp): _on_link_up,
    (Phase.ATTEMPTING, LinkFailed): _on_link_failed,
    (Phase.CONNECTED, LinkDown): _on_link_down,
    (Phase.CONNECTED, Tick): _on_tick_connected,
    (Phase.PROBING_IOT, IotReady): _on_iot_ready,
    (Phase.PROBING_IOT, IotFailed): _on_iot_failed,
    (Phase.PROBING_IOT, LinkDown): _on_probe_link_down,
    (Phase.PROBING, LinkUp): _on_probe_up,
    (Phase.PROBING, LinkFailed): _on_probe_failed,
    (Phase.PROBING, LinkDown): _on_probe_link_down,
    (Phase.WAITING, Tick): _on_tick_waiting,
}
