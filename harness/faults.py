"""Fault plans: a scenario's faults carried out against a running world.

Issue [scenarios], "Fault plans". A :class:`FaultPlan` takes the
:class:`~harness.scenario.model.FaultSpec` list of a scenario and a running
:class:`~harness.world.World`, and makes each fault happen at its moment::

    plan = FaultPlan(scenario.faults, world=world)
    async with plan:
        descriptor = plan.descriptor()      # the world as clients must see it (proxied ports)
        ...                                 # run the client; the faults fire on their own

**Triggers** (the model's semantics): ``at`` a world time (seconds since the world
started, the ``t`` of every event); or ``on`` the ``nth`` event that matches a pattern,
and on each later match, up to ``count`` firings. Matching is synchronous, inside
:meth:`Recorder.record <harness.events.Recorder.record>`, so a fault ``on`` a client's
``mqtt.in CONNECT`` is armed before the gateway decides that very CONNECT.

**Extent**: an ``at`` fault fires once and acts ``count`` times (the next ``count``
upgrades refused, CONNACKs withheld, Cognito calls failed, connections dropped; ``None``:
without limit); an ``on`` fault acts once per firing (on the connection of the matching
event, when it has one). A *lasting* fault (toxics, a rotated certificate, a denying
authorizer, half-open, throttling, legacy TLS) stays in effect for ``duration`` seconds
(``None``: to the end of the run); firing again while it is in effect restarts its
duration. Lasting faults are undone when the plan closes.

**Events** (DESIGN.md "Events JSONL"): every firing is one ``fault.fired`` event with
``fault`` (the action), ``name`` (the spec's name, what an expectation's ``after:`` names),
``index`` (its place in the plan), ``target``, ``trigger`` (``at``/``on``), ``firing`` (1,
2, ...) and what it did (``status``, ``connections``, ``certificate``, ...); when it acted on
one connection, ``conn`` is that connection. A lasting fault's end is ``fault.ended``; a
delayed CONNACK leaving late is ``fault.released``; a bug met while carrying out a fault
is ``fault.error`` (and raised again when the plan closes). Hooks of the gateway and of
Cognito that are consumed later record their own ``fault.fired`` at that moment, with
``conn`` and without ``name`` (:mod:`harness.gateway.hooks`, :mod:`harness.cognito`).

**How each action is carried out** (the world's public objects, aws-iot.md sections cited
in :data:`~harness.scenario.model.ACTIONS`):

======================  ================================================================
refuse-upgrade          ``gateway.faults.refuse_upgrades`` (§1.9)
withhold-connack        ``gateway.faults.withhold_connack``
close-after-connect     ``gateway.faults.close_after_connect`` (§2.4)
delay-connack           the connection's transport holds its first CONNACK ``delay`` s
drop / reset            the gateway session's ``close(..., abort=reset)``
half-open               the gateway session's transport stops passing bytes both ways and
                        holds its close; healing lets the held bytes (and close) through
expire-credentials      ``CredentialStore.expire`` on live temporary keys (§1.5)
authorizer-deny         the authorizer's Lambda replaced by one answering false (§2.3)
rotate-certificate      ``IssuedCert.configure_cert`` on the live server context (§3)
legacy-tls-only         the live server context's versions set to TLS 1.0/1.1 (§3)
clock-offset            ``WorldClock.shift`` (§1.7)
cognito-error/-throttle ``FakeCognito.fail_next`` / ``set_rate_limit`` (§6)
dyson-api-error/-thr.   ``FakeDysonCloud.fail_next`` / ``update_settings`` (dyson.md §6)
TCP toxics              a :class:`~harness.toxics.ToxicProxy` in front of the listener
======================  ================================================================

A TCP toxic needs its listener behind a proxy from the start: the plan opens one
:class:`~harness.toxics.ToxicProxy` per listener that a toxic aims at, and
:meth:`FaultPlan.descriptor` (and the world's routes, for the resolver override) point
clients at the proxy. A client that takes its ports from the world directly, not from
the plan's descriptor, bypasses the toxics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import ssl
import urllib.parse
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError
from harness.events import Event
from harness.mqtt.rules import DisconnectReason
from harness.pki import AWS_TLS12_CIPHERS, BadCert
from harness.scenario.model import ACTIONS, DEVICE_TARGET_PREFIX, FaultSpec
from harness.toxics import (
    Bandwidth,
    Direction,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Timeout,
    Toxic,
    ToxicProxy,
)

if TYPE_CHECKING:
    from harness.gateway.session import ClientTransport
    from harness.world import World

__all__ = ["FaultPlan", "Firing", "listener_names", "serve_certificate"]

#: How many uses an unlimited (``count: null``) armed hook gets.
UNLIMITED = 2**31
#: A throttle that lets (almost) nothing through: AWS-style token buckets still allow a
#: burst of one call (harness.cognito, simulators.dyson.cloud_api).
_TRICKLE = 1e-9
#: Nested firings (a fault ``on`` another fault's ``fault.fired``) deeper than this wait
#: for the next loop turn, so two faults that trigger each other cannot recurse forever.
_MAX_DEPTH = 4

_GATEWAY_LISTENERS = ("gateway-wss", "gateway-mqtts")


@dataclass(frozen=True)
class Firing:
    """One firing of a fault, as recorded (its ``fault.fired`` event)."""

    index: int
    spec: FaultSpec
    event: Event


def listener_names(target: str) -> tuple[str, ...]:
    """The listeners a fault target names: ``gateway`` is both gateway listeners."""
    return _GATEWAY_LISTENERS if target == "gateway" else (target,)


# Certificates and TLS versions of live listeners (aws-iot.md §3)


def _tls_contexts(world: World, target: str) -> list[tuple[ssl.SSLContext, tuple[str, ...]]]:
    """The live server contexts of ``target`` with the names their certificates cover."""
    from harness.world import cognito_host

    host = world.config.gateway.host
    out: list[tuple[ssl.SSLContext, tuple[str, ...]]] = []
    for listener in listener_names(target):
        if listener == "gateway-wss":
            out.append((world.gateway._wss_context, (world.endpoint, "localhost", host)))
        elif listener == "gateway-mqtts":
            out.append((world.gateway._mqtts_context, (world.endpoint, "localhost", host)))
        elif listener == "cognito":
            if world.cognito is None or world.cognito.http.ssl is None:
                raise ConfigError("this world has no Cognito over TLS (world.cognito.enabled)")
            names = (host, "localhost", cognito_host(world.region))
            out.append((world.cognito.http.ssl, names))
        elif listener == "dyson-api":
            dyson = _dyson(world, listener)
            from simulators.dyson.cloud_api import DYSON_API_HOSTS

            if dyson.cloud.http.ssl is None:
                raise ConfigError("the Dyson cloud of this world does not serve TLS")
            out.append((dyson.cloud.http.ssl, (host, "localhost", *DYSON_API_HOSTS)))
        else:
            raise ConfigError(f"{listener} serves no certificate the harness can rotate")
    return out


def serve_certificate(world: World, target: str, certificate: str) -> None:
    """Make ``target``'s listeners serve ``certificate`` (``good`` or a :class:`BadCert`)
    from the next handshake on; also how a scenario's initial ``certificate`` is applied.

    The certificate covers the listener's usual names; only its defect differs (an
    expired one is expired by the real wall clock, which is what clients check).
    """
    for context, names in _tls_contexts(world, target):
        if certificate == "good":
            issued = world.pki.server_cert(*names)
        else:
            try:
                kind = BadCert(certificate)
            except ValueError:
                raise ConfigError(f"no certificate {certificate!r}") from None
            issued = world.pki.bad_cert(kind, *names)
        issued.configure_cert(context)


def _dyson(world: World, what: str) -> Any:
    if world.dyson is None:
        raise ConfigError(f"{what} needs the Dyson side of the world (world.dyson)")
    return world.dyson


# Transports that a fault wraps around a live gateway connection


class _Passthrough:
    """Delegates to the connection's own transport (:class:`ClientTransport`)."""

    def __init__(self, inner: ClientTransport) -> None:
        self.inner = inner
        self.peer = inner.peer

    async def receive(self) -> bytes:
        return await self.inner.receive()

    def send(self, data: bytes) -> None:
        self.inner.send(data)

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class _DelayedConnack(_Passthrough):
    """Holds the connection's first CONNACK for ``delay`` seconds; later bytes queue behind
    it so the order on the wire is kept."""

    def __init__(
        self, inner: ClientTransport, *, delay: float, released: Callable[[], None]
    ) -> None:
        super().__init__(inner)
        self._delay = delay
        self._released = released
        self._queue: list[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def send(self, data: bytes) -> None:
        if self._queue is not None:
            self._queue.append(data)
        elif not self._done and data[:1] and data[0] >> 4 == 2:  # CONNACK's packet type
            self._queue = [data]
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._release)
        else:
            self.inner.send(data)

    def _release(self) -> None:
        queued, self._queue, self._done = self._queue or [], None, True
        for data in queued:
            self.inner.send(data)
        self._released()

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._queue, self._done = None, True

    async def close(self) -> None:
        self._drop()
        await self.inner.close()

    def abort(self) -> None:
        self._drop()
        self.inner.abort()


class _HalfOpen(_Passthrough):
    """Nothing passes either way and the socket stays open, until :meth:`heal`.

    Bytes the gateway sends are held; the pump is not given what the client sends (its
    read in progress completes, then reads wait); a close the gateway decides meanwhile
    (its keep-alive timeout, say) is held too, so the client sees no FIN. Healing sends
    the held bytes, then the held close, and reading resumes.
    """

    def __init__(
        self, inner: ClientTransport, *, spawn: Callable[[Coroutine[Any, Any, Any]], None]
    ):
        super().__init__(inner)
        self._spawn = spawn
        self._healed = asyncio.Event()
        self._held: list[bytes] = []
        self._held_close: str | None = None

    async def receive(self) -> bytes:
        if self._held_close is not None:
            return b""
        await self._healed.wait()
        return await self.inner.receive()

    def send(self, data: bytes) -> None:
        if self._healed.is_set():
            self.inner.send(data)
        else:
            self._held.append(data)

    async def close(self) -> None:
        if self._healed.is_set():
            await self.inner.close()
        else:
            self._held_close = "close"

    def abort(self) -> None:
        if self._healed.is_set():
            self.inner.abort()
        else:
            self._held_close = "abort"

    def heal(self) -> None:
        if self._healed.is_set():
            return
        self._healed.set()
        held, self._held = self._held, []
        for data in held:
            self.inner.send(data)
        if self._held_close == "abort":
            self.inner.abort()
        elif self._held_close == "close":
            self._spawn(self.inner.close())


# The plan


@dataclass(eq=False)
class _State:
    """A fault of the plan and what it has done so far."""

    index: int
    spec: FaultSpec
    matches: int = 0
    firings: int = 0
    #: Undoes a lasting fault that is in effect.
    undo: Callable[[], None] | None = None
    timer: asyncio.TimerHandle | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.name or f"{self.spec.action}#{self.index}"

    @property
    def exhausted(self) -> bool:
        return self.spec.count is not None and self.firings >= self.spec.count


class FaultPlan:
    """Carries out a list of faults against a running world; an async context manager.

    ``pools`` maps the scenario's identity pool names to pool ids (for
    ``expire-credentials``' ``identity_pool``); ``rng`` makes toxics' jitter, slicing and
    toxicity reproducible. Raises :class:`~harness.errors.ConfigError` at construction
    for a fault this world cannot carry out (a Dyson fault without the Dyson side, a
    connection fault aimed at a device).
    """

    def __init__(
        self,
        faults: Sequence[FaultSpec],
        *,
        world: World,
        pools: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.world = world
        self.recorder = world.recorder
        self.pools = dict(pools or {})
        self._rng = rng if rng is not None else random.Random()
        self._states = [_State(i, spec) for i, spec in enumerate(faults)]
        self.proxies: dict[str, ToxicProxy] = {}
        self.firings: list[Firing] = []
        #: Bugs met while carrying out faults (raised again by :meth:`aclose`).
        self.errors: list[BaseException] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unlisten: Callable[[], None] | None = None
        self._conn_ports: dict[str, str] = {}
        self._delays: list[tuple[_State, float]] = []
        self._depth = 0
        self._open = False
        self._closed = False
        for state in self._states:
            self._check(state.spec)

    # Life cycle

    async def __aenter__(self) -> FaultPlan:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the proxies toxics need, then arm every trigger (``at: 0`` fires now)."""
        if self._open:
            raise ConfigError("a fault plan starts once")
        self._open = True
        loop = asyncio.get_running_loop()
        try:
            for listener in sorted(self._proxied_listeners()):
                await self._open_proxy(listener)
        except BaseException:
            await self.aclose()
            raise
        self._reroute()
        for event in self.recorder.events:  # connections accepted before the plan started
            if event.kind == "tcp.accept" and event.conn is not None:
                self._conn_ports[event.conn] = str(event.get("port"))
        self._unlisten = self.recorder.listen(self._on_event)
        now = self.world.clock.elapsed()
        for state in self._states:
            if state.spec.on is None:
                delay = (state.spec.at or 0.0) - now
                if delay <= 0:
                    self._fire(state, None)  # due already: in effect before any client starts
                else:
                    self._timers.append(loop.call_later(delay, self._fire, state, None))

    async def aclose(self, *, raise_errors: bool = True) -> None:
        """Stop firing, undo lasting faults, close the proxies; no task outlives this.

        Raises the first bug met while carrying out a fault (:attr:`errors`), if any
        (STYLE.md §5: a failure of the harness shows at teardown, never as a silent wait).
        """
        if self._closed:
            if raise_errors and self.errors:
                raise self.errors[0]
            return
        self._closed = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for timer in self._timers:
            timer.cancel()
        for state in self._states:
            if state.timer is not None:
                state.timer.cancel()
            if state.undo is not None:
                undo, state.undo = state.undo, None
                try:
                    undo()
                except Exception as exc:
                    self.errors.append(exc)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for proxy in self.proxies.values():
            try:
                await proxy.aclose()
            except Exception as exc:
                self.errors.append(exc)
        if raise_errors and self.errors:
            raise self.errors[0]

    # What clients see

    def descriptor(self) -> dict[str, Any]:
        """The world descriptor (DESIGN.md contract 1) with proxied listeners' ports."""
        out = self.world.descriptor()
        iot = out["iot"]
        if "gateway-wss" in self.proxies:
            iot["wss_port"] = self.proxies["gateway-wss"].port
        if "gateway-mqtts" in self.proxies:
            iot["mqtts_port"] = self.proxies["gateway-mqtts"].port
        if "cognito" in self.proxies and out.get("cognito", {}).get("url"):
            out["cognito"]["url"] = _with_port(out["cognito"]["url"], self.proxies["cognito"].port)
        dyson = out.get("dyson")
        if isinstance(dyson, dict):
            if "dyson-api" in self.proxies and dyson.get("api_url"):
                dyson["api_url"] = _with_port(dyson["api_url"], self.proxies["dyson-api"].port)
            for device in dyson.get("devices", []):
                proxy = self.proxies.get(f"{DEVICE_TARGET_PREFIX}{device.get('serial')}")
                if proxy is not None:
                    device["local_port"] = proxy.port
        return out

    # Checks and proxies

    def _check(self, spec: FaultSpec) -> None:
        action = ACTIONS[spec.action]
        target = spec.target or action.default_target or ""
        if spec.action == "dyson-api-throttle" and spec.params.get("path") is not None:
            raise ConfigError(
                "dyson-api-throttle: throttling one path is not supported; leave `path` null"
            )
        needs_dyson = spec.action.startswith("dyson-") or target == "dyson-api"
        if target.startswith(DEVICE_TARGET_PREFIX):
            needs_dyson = True
            if not action.toxic:
                raise ConfigError(
                    f"fault {spec.action} on {target}: only TCP toxics reach a device's broker"
                    " so far"
                )
        if needs_dyson and self.world.dyson is None:
            raise ConfigError(f"fault {spec.action} needs the Dyson side of the world")
        if (
            spec.action.startswith("cognito-") or target == "cognito"
        ) and self.world.cognito is None:
            raise ConfigError(f"fault {spec.action} needs Cognito (world.cognito.enabled)")

    def _proxied_listeners(self) -> set[str]:
        out: set[str] = set()
        for state in self._states:
            spec = state.spec
            if ACTIONS[spec.action].toxic:
                out.update(listener_names(spec.target or "gateway"))
        return out

    def _upstream_port(self, listener: str) -> int:
        world = self.world
        if listener == "gateway-wss":
            return world.gateway.wss_port
        if listener == "gateway-mqtts":
            return world.gateway.mqtts_port
        if listener == "cognito":
            assert world.cognito is not None
            return world.cognito.port
        dyson = _dyson(world, listener)
        if listener == "dyson-api":
            return int(dyson.cloud.port)
        serial = listener[len(DEVICE_TARGET_PREFIX) :]
        device = dyson.devices.get(serial)
        if device is None or not device.local_port:
            raise ConfigError(f"no local broker of device {serial!r} to put a toxic in front of")
        return int(device.local_port)

    def _upstream_host(self, listener: str) -> str:
        """The address ``listener`` is bound to: Cognito, the Dyson API and each device's
        local broker may have their own (``cognito_host``, ``api_host``, ``local_host``;
        the sandbox's 127.0.0.2, .3, ...), the gateway's two listeners share its host."""
        world = self.world
        if listener in ("gateway-wss", "gateway-mqtts"):
            return world.config.gateway.host
        if listener == "cognito":
            return world.config.cognito_address
        dyson = _dyson(world, listener)
        if listener == "dyson-api":
            return str(dyson.cloud.http.host)
        serial = listener[len(DEVICE_TARGET_PREFIX) :]
        device = dyson.devices.get(serial)
        if device is None:
            raise ConfigError(f"no local broker of device {serial!r} to put a toxic in front of")
        return str(device.local_host)

    async def _open_proxy(self, listener: str) -> None:
        # The proxy listens on the listener's own address too: the descriptor keeps each
        # URL's host and only swaps the port (descriptor()), and so do the routes.
        host = self._upstream_host(listener)
        proxy = ToxicProxy(
            host,
            self._upstream_port(listener),
            name=listener.replace(":", "-"),
            listen_host=host,
            recorder=self.recorder,
            rng=self._rng,
        )
        await proxy.start()
        self.proxies[listener] = proxy

    def _reroute(self) -> None:
        """Point the world's names (resolver override) at the proxies."""
        from harness.world import HTTPS_PORT, MQTTS_PORT, cognito_host

        world, proxies = self.world, self.proxies
        if "gateway-wss" in proxies or "gateway-mqtts" in proxies:
            wss = proxies.get("gateway-wss")
            mqtts = proxies.get("gateway-mqtts")
            world.add_route(
                world.endpoint,
                ports={
                    HTTPS_PORT: wss.port if wss else world.gateway.wss_port,
                    MQTTS_PORT: mqtts.port if mqtts else world.gateway.mqtts_port,
                },
            )
        if "cognito" in proxies:
            world.add_route(
                cognito_host(world.region),
                ports={HTTPS_PORT: proxies["cognito"].port},
                address=proxies["cognito"].listen_host,
            )
        if "dyson-api" in proxies:
            from simulators.dyson.cloud_api import DYSON_API_HOSTS

            api = proxies["dyson-api"]
            for name in DYSON_API_HOSTS:
                world.add_route(name, ports={HTTPS_PORT: api.port}, address=api.listen_host)

    # Triggers

    def _on_event(self, event: Event) -> None:
        if event.kind == "tcp.accept" and event.conn is not None:
            self._conn_ports[event.conn] = str(event.get("port"))
        if event.kind == "mqtt.in" and event.get("packet") == "CONNECT":
            self._maybe_delay_connack(event)
        for state in self._states:
            spec = state.spec
            if spec.on is None or state.exhausted:
                continue
            if event.kind == "fault.fired" and event.get("index") == state.index:
                continue  # a fault never triggers itself
            if not spec.on.matches(event):
                continue
            state.matches += 1
            if state.matches >= spec.nth:
                if self._depth >= _MAX_DEPTH:
                    asyncio.get_running_loop().call_soon(self._fire, state, event)
                else:
                    self._fire(state, event)

    def _fire(self, state: _State, trigger: Event | None) -> None:
        if self._closed or state.exhausted:
            return
        state.firings += 1
        self._depth += 1
        try:
            self._act(state, trigger)
        except ConfigError as exc:  # the fault cannot apply here: said on the timeline
            self._record(state, trigger, error=str(exc))
        except Exception as exc:  # a bug: never break whoever recorded the trigger event
            self.errors.append(exc)
            self.recorder.record(
                "fault.error",
                fault=state.spec.action,
                name=state.spec.name,
                index=state.index,
                explain=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._depth -= 1

    def _record(self, state: _State, trigger: Event | None, **fields: Any) -> Event:
        spec = state.spec
        conn = fields.pop("conn", None)
        event = self.recorder.record(
            "fault.fired",
            conn=conn,
            fault=spec.action,
            name=spec.name,
            index=state.index,
            target=spec.target,
            trigger="on" if spec.on is not None else "at",
            firing=state.firings,
            **fields,
        )
        self.firings.append(Firing(state.index, spec, event))
        return event

    def _uses(self, state: _State) -> int:
        """How many times this firing acts: ``count`` for an ``at`` fault, else once."""
        if state.spec.on is not None:
            return 1
        return UNLIMITED if state.spec.count is None else state.spec.count

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Actions

    def _act(self, state: _State, trigger: Event | None) -> None:
        spec = state.spec
        action = ACTIONS[spec.action]
        if action.lasting:
            self._last(state, trigger)
            return
        handler = getattr(self, "_do_" + spec.action.replace("-", "_"))
        handler(state, trigger)

    def _last(self, state: _State, trigger: Event | None) -> None:
        """Apply a lasting fault (or extend it), and schedule its end."""
        spec = state.spec
        extended = state.undo is not None
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if extended:
            self._record(state, trigger, extended=True, duration=spec.duration)
        else:
            handler = getattr(self, "_start_" + spec.action.replace("-", "_"), None)
            if handler is None:
                handler = self._start_toxic
            undo, fields = handler(state, trigger)
            state.undo = undo
            self._record(state, trigger, duration=spec.duration, **fields)
        if spec.duration is not None:
            state.timer = asyncio.get_running_loop().call_later(spec.duration, self._end, state)

    def _end(self, state: _State) -> None:
        if state.undo is None:
            return
        undo, state.undo, state.timer = state.undo, None, None
        undo()
        self.recorder.record(
            "fault.ended", fault=state.spec.action, name=state.spec.name, index=state.index
        )

    # One-shot actions

    def _do_refuse_upgrade(self, state: _State, trigger: Event | None) -> None:
        params, uses = state.spec.params, self._uses(state)
        body = params.get("body")
        kwargs: dict[str, Any] = {"status": params["status"]}
        if body is not None:
            kwargs["body"] = str(body).encode()
        if params.get("reason_phrase") is not None:
            kwargs["reason_phrase"] = params["reason_phrase"]
        self.world.gateway.faults.refuse_upgrades(uses, **kwargs)
        self._record(state, trigger, armed=_shown(uses), status=params["status"])

    def _do_withhold_connack(self, state: _State, trigger: Event | None) -> None:
        uses = self._uses(state)
        self.world.gateway.faults.withhold_connack(uses)
        self._record(state, trigger, armed=_shown(uses))

    def _do_close_after_connect(self, state: _State, trigger: Event | None) -> None:
        uses = self._uses(state)
        self.world.gateway.faults.close_after_connect(uses)
        self._record(state, trigger, armed=_shown(uses))

    def _do_delay_connack(self, state: _State, trigger: Event | None) -> None:
        uses = self._uses(state)
        if all(armed is not state for armed, _ in self._delays):
            self._delays.append((state, float(state.spec.params["delay"])))
        state.fields["remaining"] = state.fields.get("remaining", 0) + uses
        self._record(state, trigger, armed=_shown(uses), delay=state.spec.params["delay"])

    def _maybe_delay_connack(self, event: Event) -> None:
        for state, delay in self._delays:
            if state.fields.get("remaining", 0) <= 0:
                continue
            session = self.world.gateway.sessions.get(event.conn or "")
            if session is None:
                return
            state.fields["remaining"] -= 1
            conn = session.conn_id

            def released(state: _State = state, conn: str = conn, delay: float = delay) -> None:
                self.recorder.record(
                    "fault.released",
                    conn=conn,
                    fault=state.spec.action,
                    name=state.spec.name,
                    index=state.index,
                    delay=delay,
                )

            session.transport = _DelayedConnack(session.transport, delay=delay, released=released)
            return

    def _sessions(self, state: _State, trigger: Event | None) -> list[Any]:
        """The live gateway connections a connection fault acts on, oldest first."""
        spec = state.spec
        listeners = listener_names(spec.target or "gateway")
        wanted = {"gateway-wss": "wss", "gateway-mqtts": "mqtts"}
        ports = {wanted[name] for name in listeners if name in wanted}
        client_id = spec.params.get("client_id")
        live = [
            s
            for s in self.world.gateway.sessions.values()
            if not s.closed
            and self._conn_ports.get(s.conn_id, "wss") in ports
            and (client_id is None or s.client_id == client_id)
        ]
        if trigger is not None and trigger.conn is not None:
            mine = [s for s in live if s.conn_id == trigger.conn]
            if mine:
                return mine
        uses = self._uses(state)
        return live[:uses]

    def _close_sessions(self, state: _State, trigger: Event | None, *, reset: bool) -> None:
        sessions = self._sessions(state, trigger)
        conns = [s.conn_id for s in sessions]
        self._record(
            state,
            trigger,
            conn=conns[0] if len(conns) == 1 else None,
            connections=conns,
        )
        for session in sessions:
            explain = "fault: connection reset" if reset else "fault: connection dropped"
            self._spawn(
                session.close(DisconnectReason.SERVER_INITIATED_DISCONNECT, explain, abort=reset)
            )

    def _do_drop_connection(self, state: _State, trigger: Event | None) -> None:
        self._close_sessions(state, trigger, reset=False)

    def _do_reset_connection(self, state: _State, trigger: Event | None) -> None:
        self._close_sessions(state, trigger, reset=True)

    def _do_expire_credentials(self, state: _State, trigger: Event | None) -> None:
        world = self.world
        pool_name = state.spec.params.get("identity_pool")
        pool_id = None
        if pool_name is not None:
            pool_id = self.pools.get(pool_name, pool_name)
        now = world.clock.now()
        expired: list[str] = []
        for credential in world.credentials:
            if not credential.temporary or credential.expired(now):
                continue
            if pool_id is not None:
                identity = (
                    world.cognito.identities.get(credential.principal) if world.cognito else None
                )
                if identity is None or identity.pool_id != pool_id:
                    continue
            world.credentials.expire(credential.access_key_id, now=now)
            expired.append(credential.access_key_id)
        self._record(state, trigger, access_key_ids=expired, identity_pool=pool_name)

    def _do_clock_offset(self, state: _State, trigger: Event | None) -> None:
        seconds = float(state.spec.params["seconds"])
        self.world.clock.shift(seconds)
        self._record(state, trigger, seconds=seconds, offset=self.world.clock.offset)

    def _do_cognito_error(self, state: _State, trigger: Event | None) -> None:
        params, uses = state.spec.params, self._uses(state)
        assert self.world.cognito is not None
        self.world.cognito.fail_next(
            uses, params["error"], params.get("status"), operation=params.get("operation")
        )
        self._record(
            state, trigger, armed=_shown(uses), error=params["error"], operation=params["operation"]
        )

    def _do_dyson_api_error(self, state: _State, trigger: Event | None) -> None:
        params, uses = state.spec.params, self._uses(state)
        cloud = _dyson(self.world, "dyson-api-error").cloud
        operation = _dyson_operation(params.get("path"))
        cloud.fail_next(uses, params["status"], operation=operation)
        self._record(
            state, trigger, armed=_shown(uses), status=params["status"], operation=operation
        )

    # Lasting actions: each returns (undo, fields for fault.fired)

    def _start_half_open(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        sessions = self._sessions(state, trigger)
        wrappers: list[_HalfOpen] = []
        for session in sessions:
            wrapper = _HalfOpen(session.transport, spawn=self._spawn)
            session.transport = wrapper
            wrappers.append(wrapper)

        def undo() -> None:
            for wrapper in wrappers:
                wrapper.heal()

        conns = [s.conn_id for s in sessions]
        return undo, {"conn": conns[0] if len(conns) == 1 else None, "connections": conns}

    def _start_authorizer_deny(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        gateway = self.world.gateway
        name = state.spec.params.get("authorizer")
        names = [name] if name is not None else list(gateway.authorizers)
        missing = [n for n in names if n not in gateway.authorizers]
        if missing:
            raise ConfigError(f"authorizer-deny: no authorizer {missing[0]!r} in the gateway")
        originals = {n: gateway.authorizers[n] for n in names}

        def deny(_event: Any) -> Mapping[str, Any]:
            return {"isAuthenticated": False}

        replaced = {n: dataclasses.replace(a, handler=deny) for n, a in originals.items()}
        gateway.authorizers.update(replaced)

        def undo() -> None:
            for n, authorizer in originals.items():
                if gateway.authorizers.get(n) is replaced[n]:
                    gateway.authorizers[n] = authorizer

        return undo, {"authorizers": names}

    def _start_rotate_certificate(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        target = state.spec.target or "gateway"
        certificate = str(state.spec.params["certificate"])
        serve_certificate(self.world, target, certificate)

        def undo() -> None:
            serve_certificate(self.world, target, "good")

        return undo, {"certificate": certificate}

    def _start_legacy_tls_only(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        target = state.spec.target or "gateway"
        wanted = str(state.spec.params["max_version"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            top = ssl.TLSVersion.TLSv1 if wanted == "TLSv1" else ssl.TLSVersion.TLSv1_1
        contexts = [context for context, _ in _tls_contexts(self.world, target)]
        saved = [(c, c.minimum_version, c.maximum_version) for c in contexts]
        for context in contexts:
            # Legacy suites only exist at OpenSSL security level 0; Python deprecates the
            # old versions, which is the point of this fault.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = top

        def undo() -> None:
            for context, low, high in saved:
                context.maximum_version = high
                context.minimum_version = low
                context.set_ciphers(AWS_TLS12_CIPHERS)

        return undo, {"max_version": wanted}

    def _start_cognito_throttle(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        cognito = self.world.cognito
        assert cognito is not None
        rate = state.spec.params.get("rate_limit")
        before = {pool_id: pool.rate_limit for pool_id, pool in cognito.pools.items()}
        cognito.set_rate_limit(float(rate) if rate is not None else _TRICKLE)

        def undo() -> None:
            for pool_id, limit in before.items():
                if pool_id in cognito.pools:
                    cognito.update_pool(pool_id, rate_limit=limit)

        return undo, {"rate_limit": rate}

    def _start_dyson_api_throttle(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        cloud = _dyson(self.world, "dyson-api-throttle").cloud
        before = cloud.settings.rate_limit
        cloud.update_settings(rate_limit=_TRICKLE)

        def undo() -> None:
            cloud.update_settings(rate_limit=before)

        return undo, {}

    def _start_toxic(
        self, state: _State, trigger: Event | None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        spec = state.spec
        toxic = _toxic(spec.action, spec.params)
        direction: Direction = spec.params["direction"]
        listeners = listener_names(spec.target or "gateway")
        added: list[tuple[ToxicProxy, str]] = []
        for listener in listeners:
            proxy = self.proxies[listener]
            name = proxy.add(
                toxic,
                direction=direction,
                name=f"{state.label}-{state.firings}",
                toxicity=float(spec.params["toxicity"]),
            )
            added.append((proxy, name))

        def undo() -> None:
            for proxy, name in added:
                with contextlib.suppress(ConfigError):
                    proxy.remove(name)

        return undo, {"toxic": toxic.type, "direction": direction, "proxies": list(listeners)}


def _toxic(action: str, params: Mapping[str, Any]) -> Toxic:
    """The :mod:`harness.toxics` value of a toxic action (seconds and bytes, as the model)."""
    if action == "latency":
        return Latency(latency_s=float(params["latency"]), jitter_s=float(params["jitter"]))
    if action == "bandwidth":
        return Bandwidth(rate_kb_per_s=int(params["rate"]) / 1000)
    if action == "timeout":
        return Timeout(timeout_s=float(params["timeout"]))
    if action == "reset-peer":
        return ResetPeer(timeout_s=float(params["timeout"]))
    if action == "slicer":
        return Slicer(
            average_size=int(params["average_size"]),
            size_variation=int(params["size_variation"]),
            delay_s=float(params["delay"]),
        )
    if action == "limit-data":
        return LimitData(bytes=int(params["bytes"]))
    if action == "slow-close":
        return SlowClose(delay_s=float(params["delay"]))
    raise ConfigError(f"{action} is not a TCP toxic")


def _dyson_operation(path: str | None) -> str | None:
    """The fake Dyson cloud's operation for a path prefix (``/v3/manifest``), or None."""
    if path is None:
        return None
    from simulators.dyson.cloud_api import OPERATIONS

    for name, (_method, pattern) in OPERATIONS.items():
        if pattern.pattern.startswith(path) or pattern.fullmatch(path):
            return name
    raise ConfigError(f"no Dyson API operation under path {path!r}")


def _with_port(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def _shown(uses: int) -> int | None:
    """An armed count as events show it: ``None`` for "without limit"."""
    return None if uses >= UNLIMITED else uses
