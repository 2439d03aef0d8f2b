"""Events to a sequence-diagram model: lanes, arrows and markers in time order (pure).

DESIGN.md "One timeline": every component records into one event list; this module turns
that list into what a person reads as a sequence diagram (issue [scenarios], "Report"),
without drawing anything. The SVG, HTML and terminal renderers all draw this model.

Lanes, left to right (only those with something on them)::

    client lanes | network | gateway | Cognito | Dyson API | other HTTP services | device

* A **client lane** stands for one MQTT client of the gateway: the connections (``c1``,
  ``c2``...) whose events carry the same ``client_id`` share a lane, so a client that
  reconnects stays on one lane. A connection refused before its CONNECT never names its
  client: when the run has exactly one named client it is drawn on that client's lane
  (it is that client retrying), otherwise on one "unnamed connections" lane. Past
  ``max_client_lanes`` the rest share one "other clients" lane. Calls to
  Cognito, the Dyson API and other HTTP services come from the one client lane when there
  is exactly one, else from an "HTTP client" lane: those services cannot tell who called.
* The **network** lane holds the Toxiproxy-style proxies (``net.*``) and the CONNECT
  proxy of the resolver (``proxy.connect``).

Each event becomes at most two :class:`Item` s (a Cognito call is a request arrow and a
response arrow), placed in event order; the renderers give each item a row and print its
time (``t``), so items are "placed by time" while staying readable when thousands of
events fall into one second.

Scale (thousands of events must render quickly):

1. consecutive MQTT packets of one connection with the same direction and type fold into
   one item with a ``count`` (``PUBLISH`` x20);
2. a run of more than ``burst`` routine MQTT packets (PUBLISH, PUBACK, PUBREC, PUBREL,
   PUBCOMP, PINGREQ, PINGRESP) on one connection, with nothing else of that connection in
   between, folds into one two-way "traffic" item that counts packets by type;
3. a connection whose whole exchange is the same as the connection just before it (a
   retry storm: accept, TLS, 403, again and again) folds into one "repeated" item saying
   how many more connections did the same, over what time;
4. past ``max_items`` the diagram is thinned by :attr:`Item.priority`: faults, failed
   verdicts and closes first, then ordinary steps, then routine traffic (each level taken
   from both ends of the run); the renderers say so, and the event table keeps every
   event.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from harness.events import Event
from harness.report.model import ExpectationOutcome

__all__ = [
    "BURST",
    "MAX_CLIENT_LANES",
    "MAX_ITEMS",
    "ROUTINE_PACKETS",
    "Item",
    "Lane",
    "LaneKind",
    "Mark",
    "Priority",
    "Shape",
    "Timeline",
    "Tone",
    "build_timeline",
    "event_order",
    "show_value",
]

LaneKind = Literal["client", "network", "gateway", "cognito", "dyson-api", "service", "device"]
Shape = Literal["arrow", "reply", "marker", "note", "traffic", "repeat"]
Tone = Literal["neutral", "ok", "fail", "fault", "muted"]
#: 0: faults, failed verdicts, closes; 1: ordinary steps; 2: routine traffic and notes.
Priority = Literal[0, 1, 2]

#: Items a diagram shows before it is thinned (the event table always has every event).
MAX_ITEMS = 400
#: Client lanes before the rest share one "other clients" lane.
MAX_CLIENT_LANES = 6
#: Routine MQTT packets of one connection in a row before they fold into one item.
BURST = 8
#: MQTT packet types that are traffic rather than steps of a connection's story.
ROUTINE_PACKETS = frozenset(
    {"PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "PINGREQ", "PINGRESP"}
)

_LANE_ORDER: dict[LaneKind, int] = {
    "client": 0,
    "network": 1,
    "gateway": 2,
    "cognito": 3,
    "dyson-api": 4,
    "service": 5,
    "device": 6,
}
_GATEWAY = "gateway"
_NETWORK = "network"
_COGNITO = "cognito"
_DYSON_API = "dyson-api"
_DEVICE = "device"
_APP = "client:*app"
_OTHERS = "client:*others"
_UNNAMED = "*unnamed"


@dataclass(frozen=True)
class Lane:
    """One participant of the diagram: a vertical line with a header."""

    id: str
    title: str
    kind: LaneKind
    #: Connection ids drawn on this lane (client lanes), in order of appearance.
    conns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    """One drawable thing: an arrow between two lanes or a marker on one lane.

    ``src`` and ``dst`` are lane ids (equal for markers and notes). ``first`` and ``last``
    index the events (in :func:`event_order`) it stands for, ``count`` how many.
    ``detail`` is the full text for a tooltip; ``label`` the short text on the diagram.
    """

    t: float
    shape: Shape
    src: str
    dst: str
    label: str
    tone: Tone
    priority: Priority
    first: int
    last: int
    conn: str | None = None
    count: int = 1
    t_end: float | None = None
    detail: str = ""
    kind: str = ""
    #: Items with equal keys on one connection fold into one (rule 1 of the module doc).
    fold: tuple[str, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Mark:
    """An expectation outcome drawn across the diagram at the row of time ``t``."""

    t: float
    name: str
    ok: bool | None
    #: Index in ``Timeline.items`` of the first item at or after ``t`` (len(items) = end).
    row: int


@dataclass(frozen=True)
class Timeline:
    """The diagram model of one scenario."""

    lanes: tuple[Lane, ...]
    items: tuple[Item, ...]
    marks: tuple[Mark, ...]
    #: Events in the input and drawable items before thinning.
    total_events: int
    total_items: int

    @property
    def omitted(self) -> int:
        """Items left out of the diagram by thinning (rule 4 of the module doc)."""
        return self.total_items - len(self.items)

    def lane(self, lane_id: str) -> Lane:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise KeyError(lane_id)

    def index(self, lane_id: str) -> int:
        for i, lane in enumerate(self.lanes):
            if lane.id == lane_id:
                return i
        raise KeyError(lane_id)


# Showing values ---------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200


def show_value(value: Any, limit: int | None = None) -> str:
    """``value`` as a person reads it: strings as they are, the rest as JSON.

    Never raises, whatever an event field holds (deeply nested, circular, odd types).
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = _repr.repr(value)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def _text(event: Event, name: str, limit: int = 60) -> str:
    value = event.fields.get(name)
    return "" if value is None else show_value(value, limit)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def event_order(events: Iterable[Event]) -> list[Event]:
    """Events by time, stable for equal times; a non-finite time sorts last."""

    def key(event: Event) -> tuple[int, float]:
        t = _number(event.t)
        return (0, t) if t is not None and math.isfinite(t) else (1, 0.0)

    return sorted(events, key=key)


def _t(event: Event) -> float:
    t = _number(event.t)
    return t if t is not None and math.isfinite(t) else math.inf


# Event kinds to drafts --------------------------------------------------------------------

# A handler's draft names lanes symbolically: "client" (the caller of the event's home
# lane), "home" (the lane the event happened on) or "gateway".
_End = Literal["client", "home", "gateway"]


@dataclass(frozen=True)
class _Draft:
    shape: Shape
    src: _End
    dst: _End
    label: str
    tone: Tone
    priority: Priority
    fold: tuple[str, ...] | None = None


def _verdict_tone(event: Event) -> Tone:
    return "fail" if event.ok is False else "ok"


def _explain(event: Event) -> str:
    return _text(event, "explain", 2000)


def _tcp_accept(event: Event) -> list[_Draft]:
    port = _text(event, "port", 20)
    return [_Draft("arrow", "client", "home", f"TCP connect {port}".strip(), "neutral", 1)]


def _tls(event: Event) -> list[_Draft]:
    if event.ok is False:
        label = f"TLS ✗ {event.reason or 'failed'}"
        return [_Draft("reply", "home", "client", label, "fail", 0)]
    version = _text(event, "version", 12) or _text(event, "tls_version", 12)
    alpn = _text(event, "alpn", 24)
    label = " · ".join(x for x in (f"TLS ok {version}".strip(), alpn) if x)
    return [_Draft("reply", "home", "client", label, "ok", 1)]


def _ws_upgrade(event: Event) -> list[_Draft]:
    status = _text(event, "status", 6)
    if event.ok is False:
        label = " ".join(x for x in (status, event.reason or "refused") if x)
        return [_Draft("reply", "home", "client", label, "fail", 0)]
    return [_Draft("reply", "home", "client", f"{status or '101'} upgrade", "ok", 1)]


def _auth_verdict(event: Event) -> list[_Draft]:
    stage = _text(event, "stage", 16)
    method = _text(event, "method", 16)
    if event.ok is False:
        label = f"✗ auth {event.reason or 'denied'}"
        return [_Draft("marker", "home", "home", label, "fail", 0)]
    label = " ".join(x for x in ("✓ auth", stage, method) if x)
    return [_Draft("marker", "home", "home", label, "ok", 1)]


def _policy_verdict(event: Event) -> list[_Draft]:
    action = _text(event, "action", 30)
    if event.ok is False:
        return [_Draft("marker", "home", "home", f"✗ policy {action}".strip(), "fail", 0)]
    return [_Draft("marker", "home", "home", f"✓ policy {action}".strip(), "ok", 1)]


def _packet_label(event: Event, packet: str) -> tuple[str, Tone, Priority]:
    """Short text for an MQTT packet event; payloads are never in events (session.py)."""
    if packet == "CONNECT":
        client_id = _text(event, "client_id", 40)
        level = event.fields.get("protocol_level")
        version = " (3.1)" if level == 3 else ""
        return f"CONNECT {client_id}{version}".strip(), "neutral", 1
    if packet == "CONNACK":
        code = event.fields.get("return_code")
        if code in (0, None):
            return "CONNACK accepted", "ok", 1
        return f"CONNACK refused rc={show_value(code, 10)}", "fail", 0
    if packet == "PUBLISH":
        topic = _text(event, "topic", 80)
        qos = event.fields.get("qos")
        suffix = f" q{qos}" if isinstance(qos, int) and not isinstance(qos, bool) else ""
        return f"PUBLISH {topic}{suffix}".strip(), "neutral", 2
    if packet in ("SUBSCRIBE", "UNSUBSCRIBE"):
        topics = event.fields.get("topics")
        shown = ""
        if isinstance(topics, list) and topics:
            first = topics[0]
            name = first[0] if isinstance(first, list) and first else first
            shown = show_value(name, 60)
            if len(topics) > 1:
                shown += f" +{len(topics) - 1}"
        return f"{packet} {shown}".strip(), "neutral", 1
    if packet == "SUBACK":
        codes = event.fields.get("return_codes")
        failed = isinstance(codes, list) and 128 in codes
        text = f"SUBACK {show_value(codes, 30)}" if codes is not None else "SUBACK"
        return text, ("fail" if failed else "ok"), (0 if failed else 1)
    if packet in ROUTINE_PACKETS:
        return packet, "neutral", 2
    return packet, "neutral", 1


def _mqtt(event: Event) -> list[_Draft]:
    packet = _text(event, "packet", 20) or "packet"
    label, tone, priority = _packet_label(event, packet)
    inbound = event.kind == "mqtt.in"
    fold = (event.kind, packet, label) if priority == 2 else (event.kind, packet)
    if inbound:
        return [_Draft("arrow", "client", "home", label, tone, priority, fold)]
    return [_Draft("reply", "home", "client", label, tone, priority, fold)]


def _mqtt_close(event: Event) -> list[_Draft]:
    reason = _text(event, "reason", 40)
    by_client = reason.startswith("CLIENT")
    label = f"close {reason}".strip()
    tone: Tone = "muted" if by_client else "fail"
    return [_Draft("reply", "home", "client", label, tone, 1 if by_client else 0)]


def _marker(
    label: Callable[[Event], str], tone: Tone, priority: Priority, shape: Shape = "marker"
) -> Callable[[Event], list[_Draft]]:
    def handler(event: Event) -> list[_Draft]:
        return [_Draft(shape, "home", "home", label(event), tone, priority)]

    return handler


def _fault(event: Event) -> list[_Draft]:
    name = _text(event, "fault", 40) or "fault"
    extra = _text(event, "status", 6) or _text(event, "operation", 30)
    return [_Draft("marker", "home", "home", f"⚡ {name} {extra}".strip(), "fault", 0)]


def _service_call(operation_fields: tuple[str, ...]) -> Callable[[Event], list[_Draft]]:
    """A request arrow and a reply arrow for one HTTP call to Cognito or the Dyson API."""

    def handler(event: Event) -> list[_Draft]:
        operation = " ".join(_text(event, name, 60) for name in operation_fields).strip()
        status = _text(event, "status", 6)
        ok = event.ok
        if ok is None:
            code = _number(event.fields.get("status"))
            ok = code is None or code < 400
        if ok:
            reply = f"{status} ok".strip()
        else:
            why = _text(event, "error", 40) or event.reason or "error"
            reply = f"{status} {why}".strip()
        return [
            _Draft("arrow", "client", "home", operation or event.kind, "neutral", 1),
            _Draft("reply", "home", "client", reply, "ok" if ok else "fail", 1 if ok else 0),
        ]

    return handler


def _dyson_authorizer(event: Event) -> list[_Draft]:
    """The Dyson cloud's authorizer Lambda answering the gateway (dyson.md, aws-iot.md §2)."""
    if event.ok is False:
        label = f"✗ authorizer {event.reason or 'deny'}"
        return [_Draft("reply", "home", "gateway", label, "fail", 0)]
    return [_Draft("reply", "home", "gateway", "✓ authorizer allows", "ok", 1)]


def _net_connect(event: Event) -> list[_Draft]:
    proxy = _text(event, "proxy", 30)
    if event.ok is False:
        label = f"✗ {proxy} {event.reason or 'connect failed'}".strip()
        return [_Draft("arrow", "client", "home", label, "fail", 0)]
    return [_Draft("arrow", "client", "home", f"connect via {proxy}".strip(), "neutral", 1)]


def _net_toxic(event: Event) -> list[_Draft]:
    name = _text(event, "toxic", 30) or _text(event, "type", 30) or "toxic"
    action = _text(event, "action", 30)
    label = f"⚡ {name} {action}".strip()
    return [_Draft("marker", "home", "home", label, "fault", 0, ("net.toxic", label))]


def _net_close(event: Event) -> list[_Draft]:
    reason = _text(event, "reason", 30)
    if event.fields.get("rst") is True:
        return [_Draft("marker", "home", "home", f"✂ reset {reason}".strip(), "fail", 0)]
    return [_Draft("note", "home", "home", f"close {reason}".strip(), "muted", 1)]


def _net_proxy(event: Event) -> list[_Draft]:
    action = _text(event, "action", 20)
    toxic = _text(event, "toxic", 30)
    priority: Priority = 1 if action in ("add", "remove", "disable", "reset-all") else 2
    label = " ".join(x for x in (_text(event, "proxy", 30), action, toxic) if x)
    return [_Draft("note", "home", "home", label, "muted", priority)]


def _proxy_connect(event: Event) -> list[_Draft]:
    host = _text(event, "host", 60) or _text(event, "target", 60)
    tone: Tone = "fail" if event.ok is False else "neutral"
    return [
        _Draft(
            "arrow", "client", "home", f"CONNECT {host}".strip(), tone, 0 if tone == "fail" else 1
        )
    ]


def _http_request(event: Event) -> list[_Draft]:
    return _service_call(("method", "path"))(event)


def _http_error(event: Event) -> list[_Draft]:
    label = " ".join(x for x in (_text(event, "status", 6), event.reason or "error") if x)
    return [_Draft("reply", "home", "client", label, "fail", 0)]


def _dyson_device(event: Event) -> list[_Draft]:
    msg = _text(event, "msg", 40)
    if event.kind == "dyson.command":
        return [_Draft("marker", "home", "home", f"✓ {msg}".strip(), "ok", 1)]
    if event.kind == "dyson.command.ignored":
        label = f"✗ ignored {msg} {event.reason or ''}".strip()
        return [_Draft("marker", "home", "home", label, "fail", 0)]
    if event.kind == "dyson.state.changed":
        label = f"state {_text(event, 'changed', 40)}".strip()
        return [_Draft("note", "home", "home", label, "muted", 1)]
    if event.kind == "dyson.faults.changed":
        label = f"faults +{_text(event, 'raised', 30)} -{_text(event, 'cleared', 30)}"
        return [_Draft("marker", "home", "home", label, "neutral", 1)]
    return _generic(event)


def _generic(event: Event) -> list[_Draft]:
    """Any other kind: a marker whose colour follows ``ok`` (DESIGN.md "Events JSONL")."""
    ok = event.ok
    label = " ".join(x for x in (event.kind, event.reason or "") if x)
    if ok is False:
        return [_Draft("marker", "home", "home", f"✗ {label}", "fail", 0)]
    if ok is True:
        return [_Draft("marker", "home", "home", f"✓ {label}", "ok", 1)]
    return [_Draft("note", "home", "home", label, "muted", 1)]


_HANDLERS: dict[str, Callable[[Event], list[_Draft]]] = {
    "tcp.accept": _tcp_accept,
    "tls.handshake": _tls,
    "ws.upgrade": _ws_upgrade,
    "auth.verdict": _auth_verdict,
    "policy.verdict": _policy_verdict,
    "mqtt.in": _mqtt,
    "mqtt.out": _mqtt,
    "mqtt.close": _mqtt_close,
    "mqtt.malformed": _marker(lambda e: f"✗ malformed {e.reason or ''}".strip(), "fail", 0),
    "mqtt.keepalive": _marker(
        lambda e: f"keep-alive {_text(e, 'effective', 10)} s", "muted", 2, "note"
    ),
    "mqtt.dropped": _marker(
        lambda e: f"dropped {_text(e, 'topic', 50)} {e.reason or ''}".strip(), "muted", 1, "note"
    ),
    "rule.violation": _marker(lambda e: f"✗ rule {e.reason or ''}".strip(), "fail", 0),
    "ws.expired": _marker(lambda e: "⏱ WebSocket lifetime over", "fail", 0),
    "gateway.error": _marker(lambda e: "✗ gateway error", "fail", 0),
    "gateway.started": _marker(lambda e: "gateway started", "muted", 2, "note"),
    "gateway.stopped": _marker(lambda e: "gateway stopped", "muted", 2, "note"),
    "fault.fired": _fault,
    "cognito.call": _service_call(("operation",)),
    "dyson.api.call": _service_call(("method", "path")),
    "dyson.api.authorizer": _dyson_authorizer,
    "http.request": _http_request,
    "http.error": _http_error,
    "http.server-error": _http_error,
    "net.connect": _net_connect,
    "net.toxic": _net_toxic,
    "net.close": _net_close,
    "net.proxy": _net_proxy,
    "net.error": _marker(lambda e: "✗ proxy error", "fail", 0),
    "proxy.connect": _proxy_connect,
}


def _drafts(event: Event) -> list[_Draft]:
    handler = _HANDLERS.get(event.kind)
    if handler is None:
        if event.kind.startswith("lifecycle."):
            suffix = event.kind.removeprefix("lifecycle.")
            label = f"{suffix} {_text(event, 'client_id', 40)}".strip()
            return [_Draft("note", "home", "home", label, "muted", 2)]
        if event.kind.startswith(("dyson.", "device.")):
            return _dyson_device(event)
        return _generic(event)
    return handler(event)


# Lanes --------------------------------------------------------------------------------------

_SERVER_LANES = {"cognito": _COGNITO, "dyson-cloud": _DYSON_API, "dyson-api": _DYSON_API}


def _home(event: Event) -> str:
    """The lane an event happened on (the server side of it)."""
    server = event.fields.get("server")
    if isinstance(server, str) and server:
        return _SERVER_LANES.get(server, f"service:{server}")
    kind = event.kind
    if kind.startswith("cognito."):
        return _COGNITO
    if kind.startswith("dyson.api."):
        return _DYSON_API
    if kind.startswith(("dyson.", "device.")):
        return _DEVICE
    if kind.startswith(("net.", "proxy.")):
        return _NETWORK
    if kind.startswith("http."):
        return "service:http"
    return _GATEWAY


def _lane_kind(lane_id: str) -> LaneKind:
    if lane_id.startswith("client:"):
        return "client"
    if lane_id.startswith("service:"):
        return "service"
    fixed: dict[str, LaneKind] = {
        _NETWORK: "network",
        _GATEWAY: "gateway",
        _COGNITO: "cognito",
        _DYSON_API: "dyson-api",
        _DEVICE: "device",
    }
    return fixed[lane_id]


_TITLES = {
    _GATEWAY: "IoT gateway",
    _NETWORK: "network",
    _COGNITO: "Cognito",
    _DYSON_API: "Dyson API",
    _DEVICE: "device",
    _OTHERS: "other clients",
}


@dataclass
class _ClientLanes:
    """Which client lane each gateway connection is drawn on (see the module doc)."""

    max_lanes: int
    by_conn: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, events: Sequence[Event], max_lanes: int) -> _ClientLanes:
        client_ids: dict[str, str] = {}
        gateway_conns: dict[str, None] = {}
        for event in events:
            conn = event.conn
            if conn is None or _home(event) != _GATEWAY:
                continue
            gateway_conns.setdefault(conn)
            client_id = event.fields.get("client_id")
            if isinstance(client_id, str) and client_id and conn not in client_ids:
                client_ids[conn] = client_id
        named = list(dict.fromkeys(client_ids[c] for c in gateway_conns if c in client_ids))
        # A connection refused before CONNECT never says its client id: with one client
        # in the run it is that client retrying; otherwise it joins the unnamed lane.
        unnamed = named[0] if len(named) == 1 else _UNNAMED

        def key_of(conn: str) -> str:
            return client_ids.get(conn, unnamed)

        lanes = cls(max_lanes=max(max_lanes, 1))
        rank: dict[str, int] = {}
        for conn in gateway_conns:
            rank.setdefault(key_of(conn), len(rank))
        lanes.keys = list(rank)
        crowded = len(rank) > lanes.max_lanes
        for conn in gateway_conns:
            key = key_of(conn)
            own = not crowded or rank[key] < lanes.max_lanes - 1
            lanes.by_conn[conn] = f"client:{key}" if own else _OTHERS
        return lanes

    def caller(self, event: Event, home: str) -> str:
        """The lane that called ``home`` for this event."""
        if home == _GATEWAY and event.conn is not None and event.conn in self.by_conn:
            return self.by_conn[event.conn]
        return self.single() or _APP

    def single(self) -> str | None:
        lanes = set(self.by_conn.values())
        return lanes.pop() if len(lanes) == 1 else None


# Building ---------------------------------------------------------------------------------


def _detail(event: Event) -> str:
    head = f"t={event.t:.3f}s  {event.kind}" if _number(event.t) is not None else event.kind
    if event.conn:
        head += f"  [{event.conn}]"
    explain = _explain(event)
    shown = [
        f"{name}={show_value(value, 120)}"
        for name, value in event.fields.items()
        if name != "explain" and value is not None
    ]
    lines = [head]
    if shown:
        lines.append(" ".join(shown)[:600])
    if explain:
        lines.append(explain)
    return "\n".join(lines)


def _items(events: Sequence[Event], clients: _ClientLanes) -> list[Item]:
    items: list[Item] = []
    last_kind: dict[str, str] = {}
    for index, event in enumerate(events):
        conn = event.conn
        previous = last_kind.get(conn) if conn is not None else None
        if conn is not None:
            last_kind[conn] = event.kind
        # The HTTP shell records http.request after the service recorded its own call
        # (cognito.call, dyson.api.call) on the same connection: draw the call once.
        if event.kind == "http.request" and previous in ("cognito.call", "dyson.api.call"):
            continue
        home = _home(event)
        caller = clients.caller(event, home)
        lanes = {"client": caller, "home": home, "gateway": _GATEWAY}
        detail = _detail(event)
        for draft in _drafts(event):
            fold = None if draft.fold is None or conn is None else (conn, *draft.fold)
            items.append(
                Item(
                    t=_t(event),
                    shape=draft.shape,
                    src=lanes[draft.src],
                    dst=lanes[draft.dst],
                    label=draft.label,
                    tone=draft.tone,
                    priority=draft.priority,
                    first=index,
                    last=index,
                    conn=conn,
                    detail=detail,
                    kind=event.kind,
                    fold=fold,
                )
            )
    return items


def _fold_same(items: list[Item]) -> list[Item]:
    """Rule 1: a connection's consecutive items with the same fold key become one."""
    out: list[Item] = []
    last_of_conn: dict[str, int] = {}
    for item in items:
        conn = item.conn
        if conn is not None and item.fold is not None and conn in last_of_conn:
            at = last_of_conn[conn]
            previous = out[at]
            if previous.fold == item.fold:
                out[at] = replace(
                    previous, count=previous.count + item.count, last=item.last, t_end=item.t
                )
                continue
        if conn is not None:
            last_of_conn[conn] = len(out)
        out.append(item)
    return out


def _is_routine(item: Item) -> bool:
    return item.kind in ("mqtt.in", "mqtt.out") and item.priority == 2


def _traffic(run: list[Item]) -> Item:
    counts: Counter[str] = Counter()
    for item in run:
        counts[item.label.split(" ", 1)[0]] += item.count
    total = sum(counts.values())
    parts = ", ".join(f"{name} {n}" for name, n in counts.most_common())
    first = run[0]
    client = first.src if first.kind == "mqtt.in" else first.dst
    return Item(
        t=first.t,
        t_end=run[-1].t_end if run[-1].t_end is not None else run[-1].t,
        shape="traffic",
        src=client,
        dst=_GATEWAY,
        label=f"{total} MQTT packets: {parts}",
        tone="neutral",
        priority=2,
        first=first.first,
        last=max(item.last for item in run),
        conn=first.conn,
        count=total,
        detail="\n\n".join(item.detail for item in run[:3])
        + (f"\n\n… and {len(run) - 3} more" if len(run) > 3 else ""),
        kind="mqtt.traffic",
    )


def _fold_bursts(items: list[Item], burst: int) -> list[Item]:
    """Rule 2: more than ``burst`` routine packets of one connection in a row fold."""
    runs: dict[str, list[int]] = {}
    drop: set[int] = set()
    replace_at: dict[int, Item] = {}

    def flush(conn: str) -> None:
        run = runs.pop(conn, [])
        if sum(items[i].count for i in run) > burst:
            replace_at[run[0]] = _traffic([items[i] for i in run])
            drop.update(run[1:])

    for i, item in enumerate(items):
        conn = item.conn
        if conn is None:
            continue
        if _is_routine(item):
            runs.setdefault(conn, []).append(i)
        else:
            flush(conn)
    for conn in list(runs):
        flush(conn)
    return [replace_at.get(i, item) for i, item in enumerate(items) if i not in drop]


def _signature(block: Sequence[Item]) -> tuple[tuple[str, str, str, str, str, int], ...]:
    return tuple((i.shape, i.src, i.dst, i.label, i.tone, i.count) for i in block)


def _repeat(model: Sequence[Item], folded: list[Sequence[Item]]) -> Item:
    conns = [block[0].conn or "" for block in folded]
    first, last = folded[0][0], folded[-1][-1]
    end = last.t_end if last.t_end is not None else last.t
    n = len(folded)
    failing = any(i.tone in ("fail", "fault") for i in model)
    shown = conns[0] if n == 1 else f"{conns[0]}…{conns[-1]}"
    sample = model[0].conn or "the one above"
    span = f"{end - first.t:.3f} s" if math.isfinite(end - first.t) else "unknown time"
    label = f"↻ {n} more connection{'s' if n != 1 else ''} did the same ({shown}, {span})"
    return Item(
        t=first.t,
        t_end=end,
        shape="repeat",
        src=model[0].src if model[0].src.startswith("client") else model[0].dst,
        dst=_GATEWAY,
        label=label,
        tone="fail" if failing else "muted",
        priority=0 if failing else 1,
        first=first.first,
        last=max(i.last for block in folded for i in block),
        conn=None,
        count=sum(i.count for block in folded for i in block),
        detail=f"{n} connections repeated the exchange of {sample}: " + ", ".join(conns),
        kind="repeat",
    )


def _fold_repeats(items: list[Item]) -> list[Item]:
    """Rule 3: a connection that repeats the previous connection's exchange folds."""
    blocks: list[list[Item]] = []
    for item in items:
        if blocks and item.conn is not None and blocks[-1][0].conn == item.conn:
            blocks[-1].append(item)
        else:
            blocks.append([item])
    out: list[Item] = []
    model: list[Item] | None = None
    folded: list[Sequence[Item]] = []

    def flush() -> None:
        if folded and model is not None:
            out.append(_repeat(model, folded))
        folded.clear()

    for block in blocks:
        conn = block[0].conn
        if (
            model is not None
            and conn is not None
            and len(block) >= 2
            and conn != model[0].conn
            and _signature(block) == _signature(model)
        ):
            folded.append(block)
            continue
        flush()
        out.extend(block)
        model = block if conn is not None and len(block) >= 2 else None
    flush()
    return out


def _thin(items: list[Item], max_items: int) -> list[Item]:
    """Rule 4: keep the most telling items, in time order, up to ``max_items``.

    Within one priority the budget is taken alternately from the start and the end of
    the run: the start shows how things were set up, the end how they went wrong.
    """
    if len(items) <= max_items:
        return items
    budget = max(max_items, 0)
    keep: set[int] = set()
    for priority in (0, 1, 2):
        candidates = [i for i, item in enumerate(items) if item.priority == priority]
        low, high, front = 0, len(candidates) - 1, True
        while low <= high and len(keep) < budget:
            if front:
                keep.add(candidates[low])
                low += 1
            else:
                keep.add(candidates[high])
                high -= 1
            front = not front
    return [item for i, item in enumerate(items) if i in keep]


def _marks(items: Sequence[Item], expectations: Iterable[ExpectationOutcome]) -> list[Mark]:
    marks: list[Mark] = []
    times = [item.t for item in items]
    for outcome in expectations:
        at = _number(outcome.at)
        if at is None or not math.isfinite(at):
            continue
        row = next((i for i, t in enumerate(times) if t > at), len(times))
        # The mark goes after the last item at ``at`` (the deciding event itself).
        marks.append(Mark(t=at, name=outcome.name, ok=outcome.ok, row=row))
    return sorted(marks, key=lambda m: (m.row, m.t))


def build_timeline(
    events: Iterable[Event],
    *,
    expectations: Iterable[ExpectationOutcome] = (),
    max_items: int = MAX_ITEMS,
    max_client_lanes: int = MAX_CLIENT_LANES,
    burst: int = BURST,
) -> Timeline:
    """The diagram model of ``events`` (any order; sorted by time, stably).

    Never raises on odd event fields: every value is shown with :func:`show_value`.
    """
    ordered = event_order(events)
    clients = _ClientLanes.of(ordered, max_client_lanes)
    items = _fold_same(_items(ordered, clients))
    items = _fold_bursts(items, burst)
    items = _fold_repeats(items)
    total = len(items)
    shown = _thin(items, max_items)
    return Timeline(
        lanes=_lanes(shown, ordered, clients),
        items=tuple(shown),
        marks=tuple(_marks(shown, expectations)),
        total_events=len(ordered),
        total_items=total,
    )


def _lanes(
    items: Sequence[Item], events: Sequence[Event], clients: _ClientLanes
) -> tuple[Lane, ...]:
    used: dict[str, None] = {}
    for item in items:
        used.setdefault(item.src)
        used.setdefault(item.dst)
    conns: dict[str, list[str]] = {}
    for conn, lane_id in clients.by_conn.items():
        conns.setdefault(lane_id, []).append(conn)
    lanes: list[Lane] = []
    for lane_id in used:
        kind = _lane_kind(lane_id)
        if lane_id in _TITLES:
            title = _TITLES[lane_id]
        elif lane_id == _APP:
            title = "HTTP client" if clients.by_conn else "client"
        elif lane_id == f"client:{_UNNAMED}":
            title = "client" if len(clients.keys) == 1 else "unnamed connections"
        elif kind == "client":
            title = lane_id.removeprefix("client:")
        else:
            title = lane_id.removeprefix("service:")
        lanes.append(Lane(id=lane_id, title=title, kind=kind, conns=tuple(conns.get(lane_id, ()))))
    client_order = {key: i for i, key in enumerate(clients.keys)}

    def order(lane: Lane) -> tuple[int, int, str]:
        if lane.kind == "client":
            if lane.id == _APP:
                rank = -1
            elif lane.id == _OTHERS:
                rank = len(client_order)
            else:
                rank = client_order.get(lane.id.removeprefix("client:"), len(client_order))
            return (0, rank, lane.id)
        return (_LANE_ORDER[lane.kind], 0, lane.id)

    return tuple(sorted(lanes, key=order))
