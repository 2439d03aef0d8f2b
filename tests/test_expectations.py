"""The expectation engine over synthetic timelines: verdicts, windows, explanations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.events import REDACTED, Event
from harness.scenario import (
    EventPattern,
    Expectation,
    Happens,
    Never,
    Rate,
    Sequence,
    evaluate,
    load_scenario_text,
)
from harness.scenario.expectations import ExpectationResult, results_by_name
from harness.scenario.model import FieldMatch
from tests.scenario_examples import README_EXAMPLE

P = EventPattern.of


def ev(t: float, kind: str, conn: str | None = None, **fields: Any) -> Event:
    return Event(t=t, kind=kind, conn=conn, fields=fields)


def one(
    expectation: Expectation, events: list[Event], now: float | None = None
) -> ExpectationResult:
    (result,) = evaluate([expectation], events, now=now)
    return result


#: A client connects, is cut at t=3, is refused twice, then reconnects.
TIMELINE = [
    ev(0.10, "ws.upgrade", "c1", ok=True, status=101),
    ev(0.12, "mqtt.in", "c1", packet="CONNECT", client_id="player-1"),
    ev(0.14, "mqtt.out", "c1", packet="CONNACK", return_code=0),
    ev(3.00, "fault.fired", "c1", fault="drop", name="cut"),
    ev(3.00, "mqtt.close", "c1", reason="SERVER_INITIATED_DISCONNECT"),
    ev(3.50, "ws.upgrade", "c2", ok=False, status=403, reason="token-expired"),
    ev(4.00, "ws.upgrade", "c3", ok=False, status=403, reason="signature-mismatch"),
    ev(4.80, "cognito.call", operation="GetCredentialsForIdentity", ok=True, status=200),
    ev(5.00, "ws.upgrade", "c4", ok=True, status=101),
    ev(5.05, "mqtt.out", "c4", packet="CONNACK", return_code=0),
]

UPGRADE_OK = P("ws.upgrade", status=101)
REFUSED = P("ws.upgrade", status=403)
CONNACK = P("mqtt.out", packet="CONNACK", return_code=0)

# (id, expectation, status, fragment of the explanation)
TABLE: list[tuple[str, Expectation, str, str]] = [
    ("happens", Happens(pattern=UPGRADE_OK), "passed", "it happened at t=0.100"),
    ("happens-within-start", Happens(pattern=CONNACK, within=0.2), "passed", "t=0.140"),
    (
        "happens-within-too-short",
        Happens(pattern=CONNACK, within=0.1),
        "failed",
        "expected mqtt.out packet=CONNACK return_code=0 within 0.1 s of the start; it never "
        "happened\n  it did happen later, at t=0.140, 0.040 s after the window ended",
    ),
    (
        "happens-after-fault",
        Happens(pattern=UPGRADE_OK, after="cut", within=2.5),
        "passed",
        "it happened at t=5.000, 2.000 s after 'cut' (t=3.000)",
    ),
    (
        "happens-after-fault-too-late",
        Happens(pattern=UPGRADE_OK, after="cut", within=1.5),
        "failed",
        "within 1.5 s after 'cut' (t=3.000) (by t=4.500); it never happened",
    ),
    (
        "after-pattern-excludes-the-anchor",
        Happens(pattern=P("ws.upgrade"), after=P("ws.upgrade"), at_least=3, at_most=3),
        "passed",
        "after the first ws.upgrade (t=0.100)",
    ),
    ("times-exact", Happens(pattern=REFUSED, at_least=2, at_most=2), "passed", "(2 times)"),
    (
        "times-too-few",
        Happens(pattern=REFUSED, at_least=3, at_most=3),
        "failed",
        "expected ws.upgrade status=403 exactly 3 times; it happened only 2 times:\n"
        "    t=3.500 ws.upgrade [c2] status=403 ok=False reason=token-expired",
    ),
    (
        "at-most-exceeded",
        Happens(pattern=P("ws.upgrade"), at_least=0, at_most=2),
        "failed",
        "expected ws.upgrade at most 2 times; it happened 4 times:",
    ),
    (
        "at-least-zero",
        Happens(pattern=P("no.such"), at_least=0),
        "passed",
        "did not happen, as allowed",
    ),
    ("never", Never(pattern=P("auth.verdict", ok=False)), "passed", "no such event"),
    (
        "never-broken",
        Never(pattern=P("ws.upgrade", reason="signature-mismatch")),
        "failed",
        "expected no ws.upgrade reason=signature-mismatch; it happened once:\n"
        "    t=4.000 ws.upgrade [c3] reason=signature-mismatch ok=False status=403",
    ),
    (
        "never-outside-its-window",
        Never(pattern=REFUSED, within=3),
        "passed",
        "no such event within 3 s of the start",
    ),
    (
        "sequence",
        Sequence(steps=(REFUSED, P("cognito.call"), UPGRADE_OK, CONNACK)),
        "passed",
        "happened in order at t=3.500, t=4.800, t=5.000, t=5.050",
    ),
    (
        "sequence-out-of-order",
        Sequence(steps=(P("cognito.call"), REFUSED)),
        "failed",
        "expected in order: 1) cognito.call; 2) ws.upgrade status=403; steps 1-1 happened "
        "(t=4.800), then step 2 (ws.upgrade status=403) never followed after t=4.800",
    ),
    (
        "sequence-too-late",
        Sequence(steps=(REFUSED, UPGRADE_OK), after="cut", within=1.5),
        "failed",
        "it completed only at t=5.000, 0.500 s after the window ended",
    ),
    (
        "rate-ok",
        Rate(pattern=P("ws.upgrade"), max=2, per=1.0),
        "passed",
        "the busiest 1 s had 2 (at most 2)",
    ),
    (
        "rate-storm",
        Rate(pattern=P("ws.upgrade"), max=1, per=2.0),
        "failed",
        "expected at most 1 ws.upgrade per 2 s; 3 happened within 1.500 s (t=3.500 to 5.000):",
    ),
    (
        "anchor-never-happened",
        Happens(pattern=UPGRADE_OK, after="no-such-fault"),
        "failed",
        "could not be checked: fault 'no-such-fault' never happened\n  nearest events:\n"
        "    t=3.000 fault.fired [c1] name=cut (expected no-such-fault) fault=drop",
    ),
]


@pytest.mark.parametrize(
    ("expectation", "status", "fragment"), [c[1:] for c in TABLE], ids=[c[0] for c in TABLE]
)
def test_expectation_table(expectation: Expectation, status: str, fragment: str) -> None:
    result = one(expectation, TIMELINE)
    assert result.status == status, str(result)
    assert fragment in result.explain, result.explain
    assert result.ok is (status == "passed")


def test_failure_explanation_shows_the_three_nearest_events() -> None:
    expectation = Happens(
        name="reconnected",
        pattern=P("ws.upgrade", status=101, reason="ok"),
        after="cut",
        within=5,
        why="FB-23: a new signature after every drop",
    )
    result = one(expectation, TIMELINE)
    assert result.status == "failed"
    assert result.explain == (
        "expected ws.upgrade status=101 reason=ok within 5 s after 'cut' (t=3.000) (by t=8.000); "
        "it never happened\n"
        "  nearest events:\n"
        "    t=5.000 ws.upgrade [c4] status=101 reason=(absent) (expected ok) ok=True\n"
        "    t=0.100 ws.upgrade [c1] status=101 reason=(absent) (expected ok) ok=True "
        "(before the window)\n"
        "    t=3.500 ws.upgrade [c2] status=403 (expected 101) reason=token-expired "
        "(expected ok) ok=False\n"
        "  why it matters: FB-23: a new signature after every drop"
    )
    assert [e.t for e in result.nearest] == [5.0, 0.1, 3.5]
    assert str(result).startswith("FAIL reconnected: expected ws.upgrade")


def test_nearest_ranks_kind_then_fields_and_says_when_nothing_is_close() -> None:
    events = [
        ev(1.0, "cognito.call", operation="GetId", ok=True),
        ev(2.0, "cognito.call", operation="GetCredentialsForIdentity", ok=False, status=200),
        ev(3.0, "cognito.cal", operation="GetCredentialsForIdentity", ok=True),
        ev(4.0, "ws.upgrade", ok=True),
    ]
    pattern = P("cognito.call", operation="GetCredentialsForIdentity", ok=True, status=200)
    result = one(Happens(pattern=pattern), events)
    assert [e.t for e in result.nearest] == [2.0, 1.0, 3.0]  # ws.upgrade ok=True is no hint
    assert "status=(absent) (expected 200)" in result.explain
    assert "(expected cognito.call)" in result.explain  # the misspelt kind is pointed out
    lonely = one(Happens(pattern=P("dyson.api")), events)
    assert lonely.explain.endswith(
        "no event came close; recorded: cognito.call (2), cognito.cal (1), ws.upgrade (1)"
    )
    assert one(Happens(pattern=P("dyson.api")), []).explain.endswith(
        "no events were recorded at all"
    )


def test_explanations_show_only_pattern_and_verdict_fields() -> None:
    events = [
        ev(
            1.0,
            "auth.verdict",
            "c1",
            ok=False,
            reason="signature-mismatch",
            session_token=REDACTED,
            explain="canonical request: GET /mqtt ...",
            canonical_request="GET\n/mqtt\n...",
        ),
    ]
    result = one(Never(pattern=P("auth.verdict", ok=False)), events)
    assert "session_token" not in result.explain
    assert "canonical" not in result.explain
    assert "reason=signature-mismatch" in result.explain


def test_anchors_by_name_chain_and_report_missing_links() -> None:
    connected = Happens(name="connected", pattern=CONNACK)
    refused = Sequence(name="refused", steps=(REFUSED, REFUSED), after="cut")
    fresh = Happens(name="fresh", pattern=P("cognito.call"), after="refused", within=1)
    back = Happens(pattern=UPGRADE_OK, after="fresh", within=0.5)
    results = evaluate([back, fresh, refused, connected], TIMELINE)
    assert [r.status for r in results] == ["passed"] * 4
    assert "after 'fresh' (t=4.800)" in results[0].explain
    early = [e for e in TIMELINE if e.t < 4]
    broken = evaluate([back, fresh, refused], early)
    assert broken[1].explain.startswith(
        "could not be checked: the sequence 'refused' never happened (see its result)"
    )
    assert broken[0].explain.startswith(
        "could not be checked: 'fresh', which waits for the sequence 'refused', never happened"
    )
    assert results_by_name(results)["fresh"] is results[1]


def test_misused_anchors_are_config_errors() -> None:
    loop_a = Happens(name="a", pattern=P("x"), after="b")
    loop_b = Happens(name="b", pattern=P("y"), after="a")
    with pytest.raises(ConfigError, match="circle"):
        evaluate([loop_a, loop_b], TIMELINE)
    with pytest.raises(ConfigError, match="no event to start from"):
        evaluate([Never(name="q", pattern=P("x")), Happens(pattern=P("y"), after="q")], TIMELINE)
    with pytest.raises(ConfigError, match="two expectations are named 'a'"):
        evaluate([loop_a, Never(name="a", pattern=P("x"))], TIMELINE)


def test_rate_window_is_half_open() -> None:
    every_second = [ev(float(t), "ws.upgrade") for t in range(5)]
    assert one(Rate(pattern=P("ws.upgrade"), max=1), every_second).ok
    assert not one(Rate(pattern=P("ws.upgrade"), max=1, per=1.001), every_second).ok


# While a run goes on


def test_pending_until_decided() -> None:
    connected = Happens(pattern=CONNACK, within=1)
    assert one(connected, [], now=0.5).status == "pending"
    assert one(connected, TIMELINE[:3], now=0.5).status == "passed"
    assert one(connected, [], now=1.5).status == "failed"
    capped = Happens(pattern=P("ws.upgrade"), at_least=1, at_most=1)
    assert one(capped, TIMELINE[:1], now=1).status == "pending"  # a second may still come
    assert one(capped, TIMELINE[:6], now=3.6).status == "failed"
    quiet = Never(pattern=REFUSED)
    assert one(quiet, TIMELINE[:5], now=3.2).status == "pending"
    assert one(quiet, TIMELINE[:6], now=3.6).status == "failed"
    assert one(Never(pattern=REFUSED, within=3), TIMELINE[:5], now=3.2).status == "passed"
    waiting = one(Happens(pattern=UPGRADE_OK, after="cut"), TIMELINE[:3], now=2)
    assert (waiting.status, waiting.explain) == ("pending", "waiting for fault 'cut'")
    assert one(Rate(pattern=P("ws.upgrade"), max=5), TIMELINE, now=6).status == "pending"


_KINDS = ["ws.upgrade", "mqtt.in", "mqtt.out", "fault.fired", "cognito.call"]
_EVENTS = st.lists(
    st.builds(
        lambda t, kind, status, name: Event(
            t=t, kind=kind, fields={"status": status, "name": name}
        ),
        st.floats(min_value=0, max_value=20, allow_nan=False),
        st.sampled_from(_KINDS),
        st.sampled_from([101, 403]),
        st.sampled_from(["cut", "other"]),
    ),
    max_size=25,
).map(lambda events: sorted(events, key=lambda e: e.t))
_PATTERNS = st.builds(
    lambda kind, status: EventPattern(
        kind, () if status is None else (FieldMatch("status", "eq", status),)
    ),
    st.sampled_from([*_KINDS, None]),
    st.sampled_from([101, 403, None]),
)
_WITHIN = st.none() | st.floats(min_value=0, max_value=10, allow_nan=False)
_AFTER = st.none() | st.just("cut") | _PATTERNS


def _counts(pair: tuple[int, int | None]) -> dict[str, Any]:
    low, extra = pair
    return {"at_least": low, "at_most": None if extra is None else low + extra}


_EXPECTATIONS = st.one_of(
    st.builds(
        lambda p, a, w, c: Happens(pattern=p, after=a, within=w, **c),
        _PATTERNS,
        _AFTER,
        _WITHIN,
        st.tuples(st.integers(0, 3), st.none() | st.integers(0, 3)).map(_counts),
    ),
    st.builds(lambda p, a, w: Never(pattern=p, after=a, within=w), _PATTERNS, _AFTER, _WITHIN),
    st.builds(
        lambda s, a, w: Sequence(steps=tuple(s), after=a, within=w),
        st.lists(_PATTERNS, min_size=1, max_size=3),
        _AFTER,
        _WITHIN,
    ),
    st.builds(
        lambda p, m, per, a, w: Rate(pattern=p, max=m, per=per, after=a, within=w),
        _PATTERNS,
        st.integers(0, 4),
        st.floats(min_value=0.1, max_value=5),
        _AFTER,
        _WITHIN,
    ),
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(_EXPECTATIONS, _EVENTS, st.floats(min_value=0, max_value=21, allow_nan=False))
def test_a_decided_result_never_changes(
    expectation: Expectation, events: list[Event], now: float
) -> None:
    """What the runner relies on to stop early: decided at ``now`` means decided for good."""
    seen = [e for e in events if e.t <= now]
    early = one(expectation, seen, now=now)
    final = one(expectation, events)
    assert final.decided
    if early.decided:
        assert early.status == final.status, (str(early), str(final))


# Patterns


FIELD_MATCHES: list[tuple[str, str, Any, dict[str, Any], bool]] = [
    ("eq-int-float", "eq", 403, {"status": 403.0}, True),
    ("eq-bool-is-not-int", "eq", 1, {"status": True}, False),
    ("eq-null-absent", "eq", None, {}, True),
    ("eq-list", "eq", [["a/b", 1]], {"topics": [["a/b", 1]]}, True),
    ("ne-absent", "ne", 403, {}, True),
    ("ne-equal", "ne", 403, {"status": 403}, False),
    ("gt", "gt", 1, {"status": 2}, True),
    ("gt-string", "gt", 1, {"status": "2"}, False),
    ("le", "le", 2, {"status": 2}, True),
    ("lt-bool", "lt", 2, {"status": False}, False),
    ("in", "in", [403, 401], {"status": 401}, True),
    ("not-in-absent", "not_in", [403], {}, True),
    ("contains-substring", "contains", "QoS 2", {"explain": "will QoS 2 refused"}, True),
    ("contains-element", "contains", "a/#", {"topics": ["a/#", "b"]}, True),
    ("contains-number", "contains", "x", {"status": 1}, False),
    ("regex", "regex", "^signature-", {"reason": "signature-mismatch"}, True),
    ("regex-not-string", "regex", "1", {"status": 1}, False),
    ("exists", "exists", True, {"status": 1}, True),
    ("exists-null", "exists", True, {"status": None}, False),
    ("not-exists", "exists", False, {}, True),
]


@pytest.mark.parametrize(
    ("op", "value", "fields", "expected"),
    [c[1:] for c in FIELD_MATCHES],
    ids=[c[0] for c in FIELD_MATCHES],
)
def test_field_operators(op: str, value: Any, fields: dict[str, Any], expected: bool) -> None:
    name = next(iter(fields), "status")
    match = FieldMatch(name, op, value)
    assert match.test(Event(t=0, kind="k", fields=fields)) is expected


def test_conn_and_t_are_matchable() -> None:
    event = ev(2.5, "ws.upgrade", "c7")
    assert P("ws.upgrade", conn="c7", t={"ge": 2, "lt": 3}).matches(event)
    assert not P(conn={"exists": False}).matches(event)


@pytest.mark.parametrize(
    ("kind", "matches"),
    [
        ("ws.upgrade", True),
        ("ws.", True),
        ("ws.*", True),
        ("*.upgrade", True),
        ("ws", False),
        (None, True),
        ("mqtt.", False),
    ],
)
def test_kind_exact_prefix_and_glob(kind: str | None, matches: bool) -> None:
    assert EventPattern(kind).matches(ev(0, "ws.upgrade")) is matches


# The README scenario, end to end over timelines


def test_readme_scenario_passes_a_correct_client_and_explains_a_stale_one() -> None:
    scenario = load_scenario_text(README_EXAMPLE)
    start = TIMELINE[:5]
    good = [
        *start,
        ev(3.2, "cognito.call", operation="GetCredentialsForIdentity", ok=True, status=200),
        ev(3.4, "ws.upgrade", "c2", ok=True, status=101),
        ev(3.45, "mqtt.out", "c2", packet="CONNACK", return_code=0),
    ]
    assert [r.status for r in evaluate(scenario.expectations, good)] == ["passed"] * 5
    stale = [*start]
    for i in range(5):
        t = 3.1 + 0.2 * i
        stale.append(ev(t, "ws.upgrade", f"s{i}", ok=False, status=403, reason="token-expired"))
        stale.append(ev(t, "auth.verdict", f"s{i}", ok=False, reason="token-expired"))
    connected, refreshed, reconnected, never, rate = evaluate(scenario.expectations, stale)
    assert connected.ok
    assert refreshed.explain.startswith(
        "expected cognito.call operation=GetCredentialsForIdentity ok=True within 5 s after "
        "'cut' (t=3.000) (by t=8.000); it never happened\n  no event came close; recorded:"
    )
    assert reconnected.explain == (
        "could not be checked: 'refreshed' never happened (see its result)"
    )
    assert "it happened 5 times" in never.explain and "FB-23" in never.explain
    assert rate.explain.startswith(
        "expected at most 3 ws.upgrade per 1 s; 5 happened within 0.800 s (t=3.100 to 3.900)"
    )
