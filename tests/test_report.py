"""The timeline report: the pure diagram model, HTML/SVG escaping, text output, files, CLI.

Issue [scenarios], "Report". The browser check of the page is in test_report_browser.py.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.events import Event
from harness.report import (
    ExpectationOutcome,
    ScenarioReport,
    build_timeline,
    format_timeline,
    load_events,
    render_file,
    render_html,
    render_text,
    reports_from_events,
    write_html,
)
from harness.report.command import main as report_main
from harness.report.markup import clean, escape
from harness.report.svg import render_svg
from harness.report.timeline import Item, Timeline, event_order, show_value
from harness.scenario.expectations import evaluate
from harness.scenario.model import EventPattern, Happens, Never

INJECTION = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def ev(t: float, kind: str, conn: str | None = None, **fields: Any) -> Event:
    return Event(t=t, kind=kind, conn=conn, fields=fields)


def connection(
    t: float, conn: str, client_id: str | None, *, ok: bool = True, reason: str = "ok"
) -> list[Event]:
    """The gateway events of one WSS connection (shapes from harness/gateway/server.py)."""
    events = [
        ev(t, "tcp.accept", conn, port="wss", peer="('127.0.0.1', 5000)"),
        ev(t + 0.001, "tls.handshake", conn, ok=True, version="TLSv1.3"),
        ev(t + 0.002, "auth.verdict", conn, stage="upgrade", method="sigv4", ok=ok, reason=reason),
    ]
    if not ok:
        events.append(ev(t + 0.003, "ws.upgrade", conn, ok=False, status=403, reason=reason))
        return events
    events += [
        ev(t + 0.003, "ws.upgrade", conn, ok=True, status=101, path="/mqtt", auth="sigv4"),
        ev(t + 0.004, "mqtt.in", conn, packet="CONNECT", client_id=client_id, protocol_level=4),
        ev(t + 0.005, "auth.verdict", conn, stage="connect", ok=True, client_id=client_id),
        ev(t + 0.006, "mqtt.out", conn, packet="CONNACK", return_code=0, client_id=client_id),
    ]
    return events


def pubs(t: float, conn: str, n: int, client_id: str = "player-1") -> list[Event]:
    """``n`` QoS 1 publishes with their PUBACKs, alternating as on the wire."""
    out: list[Event] = []
    for i in range(n):
        out.append(
            ev(t + i * 0.01, "mqtt.in", conn, packet="PUBLISH", topic="a/b", qos=1,
               client_id=client_id)
        )  # fmt: skip
        out.append(ev(t + i * 0.01 + 0.001, "mqtt.out", conn, packet="PUBACK", packet_id=i))
    return out


def rich_scenario() -> ScenarioReport:
    """A failing Dyson-flavoured run touching every lane, with a hostile field."""
    events: list[Event] = [
        ev(0.01, "gateway.started", endpoint="a1-ats.iot.us-east-1.amazonaws.com"),
        ev(0.05, "tls.handshake", "dyson-cloud-1", server="dyson-cloud", ok=True,
           tls_version="TLSv1.3"),
        ev(0.06, "dyson.api.call", "dyson-cloud-1", server="dyson-cloud",
           operation="login", method="POST", path="/v3/userregistration/email/auth", status=200,
           ok=True),
        ev(0.061, "http.request", "dyson-cloud-1", server="dyson-cloud", method="POST",
           path="/v3/userregistration/email/auth", status=200),
        ev(0.07, "cognito.call", "cognito-1", operation="GetId", ok=True, status=200),
        ev(0.08, "net.proxy", None, proxy="gw-proxy", action="add", toxic="lag", type="latency"),
        ev(0.09, "net.connect", "gw-proxy-1", proxy="gw-proxy", ok=True, upstream="127.0.0.1:1"),
        *connection(0.1, "c1", "app-1"),
        ev(0.2, "dyson.api.authorizer", "c2", ok=True, reason="ok", serial="NK6-EU-HAA0000A"),
        *connection(0.2, "c2", "NK6-EU-HAA0000A"),
        ev(0.3, "mqtt.in", "c1", packet="PUBLISH", topic="438M/NK6/command", qos=0,
           client_id="app-1"),
        ev(0.31, "dyson.command", None, ok=True, serial="NK6-EU-HAA0000A", msg="STATE-SET"),
        ev(0.32, "net.toxic", "gw-proxy-1", proxy="gw-proxy", toxic="lag", type="latency",
           stream="downstream", action="delayed"),
        ev(0.5, "fault.fired", "c1", fault="drop", reset=True),
        ev(0.501, "mqtt.close", "c1", reason="SERVER_INITIATED_DISCONNECT",
           explain="fault: dropped", client_id="app-1"),
        ev(2.0, "dyson.api.authorizer", "c3", ok=False, reason="token-expired",
           explain="the token expired 0.412s ago"),
        ev(2.0, "tcp.accept", "c3", port="wss"),
        ev(2.001, "auth.verdict", "c3", stage="connect", method="custom", ok=False,
           reason="token-expired", client_id="app-1", explain=INJECTION),
        ev(2.002, "mqtt.out", "c3", packet="CONNACK", return_code=5, client_id="app-1"),
        ev(2.003, "weird.kind", "c3", note=INJECTION, nested={"a": [1, 2, {"b": None}]}),
    ]  # fmt: skip
    return ScenarioReport(
        name="dyson-token-expiry",
        purpose="the app must fetch a new IoT token before reconnecting",
        passed=False,
        expectations=[
            ExpectationOutcome(name="connects-first", ok=True, explain="at 0.106 s", at=0.106),
            ExpectationOutcome(
                name="reconnects-with-new-token",
                ok=False,
                explain="expected auth.verdict ok=true within 1 s after fault drop; found none"
                f"\nnearest: 2.001 auth.verdict [c3] reason=token-expired {INJECTION}",
                at=1.5,
            ),
        ],
        events=events,
    )


def kinds(timeline: Timeline) -> list[str]:
    return [lane.kind for lane in timeline.lanes]


def items_on(timeline: Timeline, conn: str) -> list[Item]:
    return [item for item in timeline.items if item.conn == conn]


# The model: lanes ----------------------------------------------------------------------


def test_lanes_come_in_a_fixed_order_and_only_when_used() -> None:
    timeline = build_timeline(rich_scenario().events)
    assert kinds(timeline) == [
        "client",
        "client",
        "client",
        "network",
        "gateway",
        "cognito",
        "dyson-api",
        "device",
    ]
    titles = [lane.title for lane in timeline.lanes]
    assert titles[:3] == ["HTTP client", "app-1", "NK6-EU-HAA0000A"]
    assert build_timeline(connection(0, "c1", "x")).lanes[-1].kind == "gateway"
    assert build_timeline([]).lanes == ()


def test_a_client_that_reconnects_stays_on_one_lane() -> None:
    events = [*connection(0, "c1", "a"), *connection(1, "c2", "b"), *connection(2, "c3", "a")]
    timeline = build_timeline(events)
    clients = [lane for lane in timeline.lanes if lane.kind == "client"]
    assert [(lane.title, lane.conns) for lane in clients] == [("a", ("c1", "c3")), ("b", ("c2",))]


def test_refused_connections_join_the_only_named_client() -> None:
    events = [*connection(0, "c1", "player"), *connection(1, "c2", None, ok=False, reason="x")]
    timeline = build_timeline(events)
    (client,) = [lane for lane in timeline.lanes if lane.kind == "client"]
    assert client.title == "player" and client.conns == ("c1", "c2")


def test_refused_connections_of_several_clients_share_an_unnamed_lane() -> None:
    events = [
        *connection(0, "c1", "a"),
        *connection(1, "c2", "b"),
        *connection(2, "c3", None, ok=False, reason="signature-mismatch"),
    ]
    timeline = build_timeline(events)
    assert [lane.title for lane in timeline.lanes if lane.kind == "client"] == [
        "a",
        "b",
        "unnamed connections",
    ]


def test_client_lanes_are_capped() -> None:
    events = [e for i in range(10) for e in connection(i, f"c{i}", f"client-{i}")]
    timeline = build_timeline(events, max_client_lanes=3)
    clients = [lane for lane in timeline.lanes if lane.kind == "client"]
    assert [lane.title for lane in clients] == ["client-0", "client-1", "other clients"]
    assert clients[-1].conns == tuple(f"c{i}" for i in range(2, 10))


def test_http_calls_come_from_the_one_client_lane() -> None:
    events = [ev(0, "cognito.call", "cognito-1", operation="GetId", ok=True, status=200)]
    events += connection(1, "c1", "player")
    timeline = build_timeline(events)
    assert [lane.title for lane in timeline.lanes] == ["player", "IoT gateway", "Cognito"]
    request, reply = timeline.items[:2]
    assert (request.src, request.dst, request.label) == ("client:player", "cognito", "GetId")
    assert (reply.shape, reply.tone, reply.label) == ("reply", "ok", "200 ok")


# The model: ordering and items ---------------------------------------------------------


def test_items_follow_event_time_stably() -> None:
    events = [
        ev(2.0, "gateway.stopped"),
        ev(1.0, "tcp.accept", "c1", port="wss"),
        ev(1.0, "tls.handshake", "c1", ok=True, version="TLSv1.3"),
        ev(math.nan, "odd.kind"),
        ev(0.5, "gateway.started"),
    ]
    labels = [item.label for item in build_timeline(events).items]
    assert labels == [
        "gateway started",
        "TCP connect wss",
        "TLS ok TLSv1.3",
        "gateway stopped",
        "odd.kind",
    ]
    assert [e.kind for e in event_order(events)][-1] == "odd.kind"


def test_verdicts_faults_and_refusals_have_tones() -> None:
    timeline = build_timeline(rich_scenario().events)
    by_label = {item.label: item for item in timeline.items}
    assert by_label["✓ auth upgrade sigv4"].tone == "ok"
    failed = by_label["✗ auth token-expired"]
    assert (failed.tone, failed.priority, failed.shape, failed.src) == (
        "fail",
        0,
        "marker",
        "gateway",
    )
    assert by_label["⚡ drop"].tone == "fault"
    assert by_label["⚡ lag delayed"].src == "network"
    refused = by_label["CONNACK refused rc=5"]
    assert (refused.src, refused.dst, refused.tone) == ("gateway", "client:app-1", "fail")
    authorizer = by_label["✗ authorizer token-expired"]
    assert (authorizer.src, authorizer.dst) == ("dyson-api", "gateway")
    assert by_label["✓ STATE-SET"].src == "device"
    assert by_label["close SERVER_INITIATED_DISCONNECT"].tone == "fail"


def test_cognito_fault_is_on_the_cognito_lane() -> None:
    event = ev(0, "fault.fired", "cognito-1", server="cognito", fault="cognito-fail-next")
    (item,) = build_timeline([event]).items
    assert (item.src, item.label, item.tone) == ("cognito", "⚡ cognito-fail-next", "fault")


def test_http_request_after_a_service_call_is_drawn_once() -> None:
    events = rich_scenario().events
    timeline = build_timeline(events)
    assert not [item for item in timeline.items if item.kind == "http.request"]
    lone = [ev(0, "http.request", "web-1", server="web", method="GET", path="/x", status=503)]
    request, reply = build_timeline(lone).items
    assert (request.dst, request.label) == ("service:web", "GET /x")
    assert (reply.label, reply.tone) == ("503 error", "fail")


def test_consecutive_packets_of_one_kind_fold() -> None:
    events = [*connection(0, "c1", "player-1")]
    events += [
        ev(1 + i / 100, "mqtt.in", "c1", packet="SUBSCRIBE", topics=[["a/#", 1]]) for i in range(3)
    ]
    events += [ev(2 + i / 100, "mqtt.out", "c1", packet="PINGRESP") for i in range(4)]
    items = build_timeline(events).items
    subscribe = [i for i in items if i.label.startswith("SUBSCRIBE")]
    assert [(i.label, i.count) for i in subscribe] == [("SUBSCRIBE a/#", 3)]
    (ping,) = [i for i in items if i.label == "PINGRESP"]
    assert (ping.count, ping.t, ping.t_end) == (4, 2.0, 2.03)


def test_a_burst_of_traffic_folds_into_one_item() -> None:
    events = [*connection(0, "c1", "player-1"), *pubs(1, "c1", 10)]
    events.append(ev(2, "mqtt.in", "c1", packet="DISCONNECT"))
    items = items_on(build_timeline(events), "c1")
    traffic = [i for i in items if i.shape == "traffic"]
    assert len(traffic) == 1
    assert traffic[0].count == 20
    assert traffic[0].label == "20 MQTT packets: PUBLISH 10, PUBACK 10"
    assert [i.label for i in items][-2:] == [traffic[0].label, "DISCONNECT"]
    # A short exchange stays readable packet by packet.
    short = items_on(build_timeline([*connection(0, "c1", "p"), *pubs(1, "c1", 3)]), "c1")
    assert [i.label for i in short][-2:] == ["PUBLISH a/b q1", "PUBACK"]


def test_interleaved_connections_fold_separately() -> None:
    a, b = pubs(1, "c1", 10), pubs(1.0005, "c2", 10, client_id="other")
    merged = [*connection(0, "c1", "player-1"), *connection(0.5, "c2", "other")]
    merged += [e for pair in zip(a, b, strict=True) for e in pair]
    timeline = build_timeline(merged)
    traffic = [i for i in timeline.items if i.shape == "traffic"]
    assert sorted((i.conn, i.count) for i in traffic) == [("c1", 20), ("c2", 20)]


def test_a_retry_storm_folds_into_one_repeat_item() -> None:
    events = [*connection(0, "c1", "player-1")]
    for i in range(2, 30):
        events += connection(1 + i * 0.05, f"c{i}", None, ok=False, reason="token-expired")
    timeline = build_timeline(events)
    (repeat,) = [i for i in timeline.items if i.shape == "repeat"]
    assert repeat.label.startswith("↻ 27 more connections did the same (c3…c29")
    assert (repeat.tone, repeat.priority) == ("fail", 0)
    assert len(items_on(timeline, "c2")) == 4  # the model exchange is drawn in full
    assert len(timeline.items) < 20


def test_different_exchanges_do_not_fold() -> None:
    events = [*connection(0, "c1", None, ok=False, reason="token-expired")]
    events += connection(1, "c2", None, ok=False, reason="signature-mismatch")
    assert not [i for i in build_timeline(events).items if i.shape == "repeat"]


def test_a_large_diagram_is_thinned_keeping_what_matters() -> None:
    events = [*connection(0, "c1", "player-1")]
    for block in range(50):
        events += pubs(1 + block, "c1", 5)
        events.append(ev(1.5 + block, "rule.violation", "c1", reason="rate-exceeded"))
        events.append(ev(1.6 + block, "mqtt.keepalive", "c1", effective=30))
    timeline = build_timeline(events, max_items=60)
    assert len(timeline.items) == 60
    assert timeline.omitted == timeline.total_items - 60 > 0
    assert timeline.total_events == len(events)
    violations = [i for i in timeline.items if i.kind == "rule.violation"]
    assert len(violations) == 50
    times = [i.t for i in timeline.items]
    assert times == sorted(times)
    # Within a priority, both ends of the run are kept: how it began and how it ended.
    events.append(ev(99, "mqtt.in", "c1", packet="DISCONNECT"))
    labels = [i.label for i in build_timeline(events, max_items=53).items]
    assert labels[0] == "TCP connect wss" and labels[-1] == "DISCONNECT"
    assert labels.count("✗ rule rate-exceeded") == 50


def test_expectation_marks_sit_at_their_time() -> None:
    report = rich_scenario()
    timeline = build_timeline(report.events, expectations=report.expectations)
    marks = {m.name: m for m in timeline.marks}
    assert timeline.items[marks["reconnects-with-new-token"].row].t == 2.0
    assert timeline.items[marks["connects-first"].row - 1].t <= 0.106
    late = ExpectationOutcome(name="late", ok=None, at=99.0)
    undrawn = ExpectationOutcome(name="nowhere", ok=False, at=None)
    marks2 = build_timeline(report.events, expectations=[late, undrawn]).marks
    assert [(m.name, m.row) for m in marks2] == [("late", len(timeline.items))]


def test_outcomes_from_the_expectation_engine() -> None:
    events = rich_scenario().events
    results = evaluate(
        [
            Happens(name="upgrades", pattern=EventPattern.of("ws.upgrade")),
            Never(name="no-refusal", pattern=EventPattern.of("auth.verdict", ok=False)),
            Happens(pattern=EventPattern.of("never.seen")),
        ],
        events,
    )
    outcomes = [ExpectationOutcome.from_result(r) for r in results]
    assert [(o.name, o.ok) for o in outcomes] == [
        ("upgrades", True),
        ("no-refusal", False),
        (results[2].expectation.label, False),
    ]
    assert outcomes[1].at == 2.001 and "auth.verdict" in outcomes[1].explain
    assert outcomes[2].at is None
    marks = build_timeline(events, expectations=outcomes).marks
    assert [m.name for m in marks] == ["upgrades", "no-refusal"]


def test_show_value_never_raises() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert show_value(loop).startswith("[[")
    assert show_value({"a": math.nan}) == '{"a": NaN}'
    assert show_value("x" * 100, 10) == "x" * 9 + "…"
    assert "x00" in show_value(b"\x00")


# Escaping and the page -------------------------------------------------------------------


def test_markup_escapes_and_cleans() -> None:
    assert escape("<a href='x'>&\"") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"
    assert clean("a\x00b\x1b[31m\ud800c\n\t") == "a\\x00b\\x1b[31m\ufffdc\n\t"


def test_the_page_escapes_everything() -> None:
    hostile = ScenarioReport(
        name=INJECTION,
        purpose=INJECTION,
        passed=False,
        expectations=[ExpectationOutcome(name=INJECTION, ok=False, explain=INJECTION, at=0.0)],
        events=[
            ev(0.0, INJECTION, INJECTION, **{INJECTION: INJECTION}),
            ev(0.1, "mqtt.in", "c1", packet=INJECTION, client_id=INJECTION, topic=INJECTION),
            ev(0.2, "auth.verdict", "c1", ok=False, reason=INJECTION, explain=INJECTION),
        ],
    )
    page = render_html([hostile, rich_scenario()], title=INJECTION, source=INJECTION)
    lowered = page.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "onerror=" not in lowered.replace("onerror=&quot;", "")
    assert "&lt;script&gt;" in page
    svg = render_svg(build_timeline(hostile.events))
    assert "<script" not in svg.lower()
    text = render_text(hostile)
    assert "document.title" in text  # plain text is not markup; it is shown as it is


def test_the_page_is_self_contained() -> None:
    page = render_html([rich_scenario()])
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", page, re.IGNORECASE)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}


def test_the_page_shows_verdicts_expectations_diagram_and_table() -> None:
    report = rich_scenario()
    page = render_html([report])
    assert '<span class="name">dyson-token-expiry</span>' in page
    assert '<li class="failed"><span class="sign">✗</span><b>reconnects-with-new-token</b>' in page
    assert "found none" in page
    assert page.count("<svg") == 2  # the lane headers and the diagram body
    assert "marker-end=" in page and "⚡ drop" in page
    assert page.count('<tr id="s1-e') == len(report.events)
    assert 'href="#s1-e' in page
    assert "mark mark-failed" in page and "mark mark-passed" in page


def test_a_big_run_keeps_every_event_in_the_table() -> None:
    events = [*connection(0, "c1", "player-1")]
    for block in range(500):
        events += pubs(1 + block, "c1", 3)
        events.append(ev(1.5 + block, "rule.violation", "c1", reason="rate-exceeded"))
    report = ScenarioReport(name="big", passed=True, events=events)
    page = render_html([report], max_items=100)
    assert page.count('<tr id="s1-e') == len(events)
    assert "The diagram shows 100 of" in page
    assert f"The event table below has all {len(events)} events" in page


def test_write_html(tmp_path: Path) -> None:
    out = write_html([rich_scenario()], tmp_path / "deep" / "report.html")
    assert out.read_text(encoding="utf-8").count("<section") == 1


# Terminal ---------------------------------------------------------------------------------


def test_render_text_for_a_failure() -> None:
    text = render_text(rich_scenario(), width=90)
    lines = text.splitlines()
    assert (
        lines[0]
        == "FAILED  dyson-token-expiry: the app must fetch a new IoT token before reconnecting"
    )
    assert lines[1] == "  ✗ reconnects-with-new-token  at 1.500 s"
    assert lines[2].startswith("      expected auth.verdict ok=true within 1 s")
    assert "  ✓ connects-first  at 0.106 s" in lines
    assert any("----- ✗ reconnects-with-new-token -----" in line for line in lines)
    assert any("c3" in line and "CONNACK refused rc=5" in line for line in lines)
    assert all(len(line) <= 90 for line in lines)
    assert "\x1b[" not in text
    assert "\x1b[31;1m" in render_text(rich_scenario(), color=True)


def test_format_timeline_is_capped() -> None:
    events = [*connection(0, "c1", "p")]
    for i in range(100):
        events.append(ev(1 + i, "rule.violation", "c1", reason="rate-exceeded"))
    text = format_timeline(events, max_lines=10)
    assert text.splitlines()[0] == "timeline: 107 events, 107 items (97 not shown)"
    assert len(text.splitlines()) == 12


# Files and the command --------------------------------------------------------------------


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_rows() -> list[dict[str, Any]]:
    report = rich_scenario()
    rows: list[dict[str, Any]] = [{"t": 0.0, "kind": "gateway.started"}]
    rows.append({"t": 0.0, "kind": "scenario.started", "name": report.name, "purpose": "p"})
    rows += [e.to_json() for e in report.events]
    rows.append(
        {
            "t": 3.0,
            "kind": "scenario.finished",
            "name": report.name,
            "passed": False,
            "expectations": [
                {"name": "reconnects", "ok": False, "explain": "found none", "at": 1.5},
                {"name": "bad-at", "ok": True, "at": "soon"},
                {"ok": True},
                "junk",
            ],
        }
    )
    rows.append({"t": 3.1, "kind": "gateway.stopped"})
    rows.append({"t": 0.0, "kind": "scenario.started", "name": "second"})
    rows.append({"t": 0.2, "kind": "tcp.accept", "conn": "c1"})
    return rows


def test_load_events_and_split_scenarios(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "run.jsonl", run_rows())
    events = load_events(path)
    assert events[0] == Event(t=0.0, kind="gateway.started")
    first, second = reports_from_events(events, name="run")
    assert (first.name, first.purpose, first.passed) == ("dyson-token-expiry", "p", False)
    assert (first.events[0].kind, first.events[-1].kind) == ("gateway.started", "gateway.stopped")
    assert first.expectations == [
        ExpectationOutcome(name="reconnects", ok=False, explain="found none", at=1.5),
        ExpectationOutcome(name="bad-at", ok=True, explain="", at=None),
    ]
    assert (second.name, second.passed, len(second.events)) == ("second", None, 1)
    plain = reports_from_events([ev(0, "gateway.started")], name="serve")
    assert [(r.name, r.status) for r in plain] == [("serve", "unknown")]
    assert reports_from_events([], name="x") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "run.jsonl:2: not a JSON object"),
        ("[1, 2]", "run.jsonl:2: expected a JSON object, got list"),
        ('{"kind": "x"}', "run.jsonl:2: field 't' must be a number of seconds, got None"),
        ('{"t": NaN, "kind": "x"}', "run.jsonl:2: field 't' must be a number"),
        ('{"t": true, "kind": "x"}', "run.jsonl:2: field 't' must be a number"),
        ('{"t": 1, "kind": ""}', "run.jsonl:2: field 'kind' must be a non-empty string"),
        ('{"t": 1, "kind": "x", "conn": 3}', "run.jsonl:2: field 'conn' must be a string"),
        ("[" * 100000, "run.jsonl:2: "),
    ],
)
def test_load_events_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"t": 0, "kind": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_events(path)
    assert message in str(caught.value)


def test_load_events_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_events(tmp_path / "missing.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_events(binary)


def test_render_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "run.jsonl", run_rows())
    out = render_file(path)
    assert out == tmp_path / "run.html"
    page = out.read_text(encoding="utf-8")
    assert page.count('<section class="scenario') == 2
    assert "iot-harness report: run.jsonl" in page
    with pytest.raises(ConfigError, match="overwrite"):
        render_file(path, path)


def test_command_writes_the_page(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "run.jsonl", run_rows())
    out, err = io.StringIO(), io.StringIO()
    target = tmp_path / "out" / "r.html"
    code = report_main([str(path), "-o", str(target), "--title", "CI"], stdout=out, stderr=err)
    assert (code, out.getvalue(), err.getvalue()) == (0, f"{target}\n", "")
    assert "<title>CI</title>" in target.read_text(encoding="utf-8")


def test_command_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "run.jsonl", run_rows())
    out = io.StringIO()
    assert report_main([str(path), "--text", "--width", "80"], stdout=out) == 0
    text = out.getvalue()
    assert text.startswith("FAILED  dyson-token-expiry: p\n  ✗ reconnects  at 1.500 s")
    assert "UNKNOWN  second" in text
    assert not (tmp_path / "run.html").exists()


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert report_main([str(bad)], stdout=out, stderr=err) == 2
    assert err.getvalue() == (
        f"iot-harness report: error: {bad}:1: not a JSON object (Expecting value)\n"
    )
    assert report_main([str(bad), "--max-items", "0"], stdout=out, stderr=err) == 2


# Fuzz -------------------------------------------------------------------------------------

KNOWN_KINDS = [
    "tcp.accept", "tls.handshake", "ws.upgrade", "auth.verdict", "policy.verdict",
    "mqtt.in", "mqtt.out", "mqtt.close", "mqtt.malformed", "mqtt.keepalive", "mqtt.dropped",
    "rule.violation", "ws.expired", "gateway.error", "fault.fired", "cognito.call",
    "dyson.api.call", "dyson.api.authorizer", "http.request", "http.error", "net.connect",
    "net.toxic", "net.close", "net.proxy", "net.error", "proxy.connect", "dyson.command",
    "dyson.command.ignored", "dyson.state.changed", "dyson.faults.changed",
    "lifecycle.connected", "device.reboot", "scenario.started",
]  # fmt: skip
FIELD_NAMES = [
    "ok", "reason", "explain", "packet", "topic", "topics", "return_code", "return_codes",
    "client_id", "server", "status", "operation", "fault", "qos", "rst", "method", "path",
    "toxic", "action", "msg", "changed", "raised", "cleared", "protocol_level", "version",
]  # fmt: skip
PACKETS = ["CONNECT", "CONNACK", "PUBLISH", "PUBACK", "SUBSCRIBE", "SUBACK", "PINGREQ"]

texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from([INJECTION, "</svg><script>x</script>", "\x00\x1b\ud800", "cognito"]),
    st.sampled_from(PACKETS),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), texts,
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
events_strategy = st.lists(
    st.builds(
        Event,
        t=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 10),
        kind=st.sampled_from(KNOWN_KINDS) | texts.filter(bool),
        conn=st.none() | st.sampled_from(["c1", "c2", "cognito-1", INJECTION]) | texts,
        fields=st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, values, max_size=5),
    ),
    max_size=25,
)
outcomes = st.lists(
    st.builds(
        ExpectationOutcome,
        name=texts,
        ok=st.none() | st.booleans(),
        explain=texts,
        at=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    ),
    max_size=3,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=events_strategy,
    expectations=outcomes,
    passed=st.none() | st.booleans(),
    max_items=st.integers(1, 30),
    burst=st.integers(0, 4),
    lanes=st.integers(0, 4),
)
def test_arbitrary_events_render(
    events: list[Event],
    expectations: list[ExpectationOutcome],
    passed: bool | None,
    max_items: int,
    burst: int,
    lanes: int,
) -> None:
    report = ScenarioReport(name="fuzz", passed=passed, expectations=expectations, events=events)
    timeline = build_timeline(
        events, expectations=expectations, max_items=max_items, burst=burst,
        max_client_lanes=lanes,
    )  # fmt: skip
    assert len(timeline.items) <= max_items
    lane_ids = {lane.id for lane in timeline.lanes}
    assert all(item.src in lane_ids and item.dst in lane_ids for item in timeline.items)
    assert sum(1 for _ in timeline.marks) <= len(expectations)
    page = render_html([report], max_items=max_items)
    page.encode("utf-8")
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    render_text(report, width=60).encode("utf-8")
