"""The expectation engine: a scenario's expectations checked against the event timeline.

Pure functions over a list of :class:`~harness.events.Event` (DESIGN.md "One timeline"):
no clock is read, so the runner passes ``now`` while a run is going and nothing at the
end. Semantics (issue [scenarios], "Scenario files"):

* every expectation looks at a **window** of the timeline: from its anchor (``after``: the
  first event of a pattern, the first matching event of a ``happens`` expectation, the
  last event of a ``sequence``, or a fault's first ``fault.fired`` event carrying its
  ``name``; the world's start otherwise) to ``within`` seconds later (the end of the run
  otherwise). Only events *after* the anchor event count, so ``after: {kind: ws.upgrade}``
  with ``happens: {kind: ws.upgrade}`` means a second upgrade;
* ``happens``: ``at_least`` to ``at_most`` matching events in the window;
* ``never``: none in the window;
* ``sequence``: the patterns in order (other events may come between), the last one in
  the window; matched greedily, which finds the earliest completion if there is one;
* ``rate``: no more than ``max`` matching events in any span shorter than ``per`` seconds
  (a retry storm fails).

With ``now``, a result is ``pending`` until it is decided: a ``happens`` is passed once it
has enough events and no ``at_most`` could still be broken, failed once it has too many
or its window has closed; a ``never`` or ``rate`` fails at the first offence and passes
only when its window closes. A decided result never changes as later events arrive (the
runner may stop early once everything is decided); without ``now`` nothing is pending.

A failure explains itself (STYLE.md §5): what was expected, what was found, and the three
nearest events that almost matched (ranked by how similar their kind is and how many of
the pattern's fields they match), with their times and the fields that differed.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import ConfigError
from harness.events import Event
from harness.scenario.model import (
    EventPattern,
    Expectation,
    FieldMatch,
    Happens,
    Never,
    Rate,
    Sequence,
    kind_matches,
    show_value,
)

__all__ = ["LISTED", "NEAREST", "ExpectationResult", "Status", "evaluate", "results_by_name"]

Status = Literal["passed", "failed", "pending"]

#: Fields an event line shows besides the pattern's: short verdict and identity fields only
#: (never free text such as ``explain``, which can be long, nor anything secret-like).
_SUMMARY_FIELDS = ("ok", "status", "reason", "fault", "packet", "operation")
#: How many almost-matching events a failure shows.
NEAREST = 3
#: How many offending or counted events an explanation lists before "… and N more".
LISTED = 5


@dataclass(frozen=True)
class ExpectationResult:
    """The verdict on one expectation, with the events behind it."""

    expectation: Expectation
    status: Status
    explain: str
    #: The events that decided it: matches, offenders, the steps of a sequence.
    events: tuple[Event, ...] = ()
    #: On failure: the events that came closest to what was expected.
    nearest: tuple[Event, ...] = field(default=(), compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    @property
    def decided(self) -> bool:
        return self.status != "pending"

    @property
    def label(self) -> str:
        return self.expectation.label

    def __str__(self) -> str:
        mark = {"passed": "PASS", "failed": "FAIL", "pending": "WAIT"}[self.status]
        return f"{mark} {self.label}: {self.explain}"


# Windows and anchors


@dataclass(frozen=True)
class _Start:
    """Where an expectation's window begins: events from ``index`` on, at ``t`` seconds."""

    index: int
    t: float
    #: "'cut' (t=3.000)"; None for the world's start.
    label: str | None


@dataclass(frozen=True)
class _Missing:
    """The anchor has not happened (yet)."""

    what: str
    pattern: EventPattern | None
    #: Appended to "never happened", e.g. where to look instead.
    hint: str = ""


class _Timeline:
    """The events in time order and the anchors found in them."""

    def __init__(self, events: Iterable[Event], expectations: Seq[Expectation]) -> None:
        self.events = sorted(events, key=lambda e: e.t)
        self.by_name: dict[str, Expectation] = {}
        for expectation in expectations:
            if expectation.name is not None:
                if expectation.name in self.by_name:
                    raise ConfigError(f"two expectations are named {expectation.name!r}")
                self.by_name[expectation.name] = expectation
        self._anchors: dict[str, int | _Missing] = {}
        self._resolving: set[str] = set()

    def first(self, pattern: EventPattern, start: int = 0) -> int | None:
        for index in range(start, len(self.events)):
            if pattern.matches(self.events[index]):
                return index
        return None

    def greedy(self, steps: Seq[EventPattern], start: int) -> list[int]:
        """Indices of the earliest in-order match of ``steps`` (as far as it gets)."""
        found: list[int] = []
        index = start
        for step in steps:
            hit = self.first(step, index)
            if hit is None:
                break
            found.append(hit)
            index = hit + 1
        return found

    def start(self, expectation: Expectation) -> _Start | _Missing:
        after = expectation.after
        if after is None:
            return _Start(0, 0.0, None)
        if isinstance(after, EventPattern):
            index = self.first(after)
            if index is None:
                return _Missing(f"the anchor event {after.describe()}", after)
            event = self.events[index]
            return _Start(index + 1, event.t, f"the first {after.describe()} (t={event.t:.3f})")
        found = self.anchor(after)
        if isinstance(found, _Missing):
            return found
        event = self.events[found]
        return _Start(found + 1, event.t, f"{after!r} (t={event.t:.3f})")

    def anchor(self, name: str) -> int | _Missing:
        """Index of the event that named expectation or fault starts windows from."""
        if name in self._anchors:
            return self._anchors[name]
        if name in self._resolving:
            raise ConfigError(f"`after` goes round in a circle through {name!r}")
        self._resolving.add(name)
        try:
            found = self._find_anchor(name)
        finally:
            self._resolving.discard(name)
        self._anchors[name] = found
        return found

    def _find_anchor(self, name: str) -> int | _Missing:
        expectation = self.by_name.get(name)
        if expectation is None:
            # A fault: the runner records fault.fired with the fault's name.
            pattern = EventPattern("fault.fired", (FieldMatch("name", "eq", name),))
            index = self.first(pattern)
            return index if index is not None else _Missing(f"fault {name!r}", pattern)
        if isinstance(expectation, Never | Rate):
            raise ConfigError(
                f"{name!r} is a never/rate expectation and has no event to start from"
            )
        start = self.start(expectation)
        if isinstance(start, _Missing):
            return _Missing(f"{name!r}, which waits for {start.what},", start.pattern, start.hint)
        # No nearest events here: the named expectation's own result explains itself.
        if isinstance(expectation, Happens):
            index = self.first(expectation.pattern, start.index)
            return index if index is not None else _Missing(repr(name), None, " (see its result)")
        steps = self.greedy(expectation.steps, start.index)
        if len(steps) == len(expectation.steps):
            return steps[-1]
        return _Missing(f"the sequence {name!r}", None, " (see its result)")


# Entry point


def evaluate(
    expectations: Seq[Expectation], events: Iterable[Event], *, now: float | None = None
) -> list[ExpectationResult]:
    """Judge every expectation against ``events``; results in the same order.

    ``now`` (seconds since the world started, no earlier than the last event) marks a run
    still going: undecided expectations are ``pending``. Without it the run is over and
    every result is passed or failed. Raises :class:`~harness.errors.ConfigError` for
    ``after`` names that go round in a circle or name a never/rate expectation (the
    loader refuses both).
    """
    timeline = _Timeline(events, expectations)
    return [_Judge(timeline, e, now).result() for e in expectations]


class _Judge:
    """Evaluates one expectation."""

    def __init__(self, timeline: _Timeline, expectation: Expectation, now: float | None) -> None:
        self.timeline = timeline
        self.events = timeline.events
        self.expectation = expectation
        self.final = now is None
        self.now = math.inf if now is None else now

    def result(self) -> ExpectationResult:
        self.start, self.end = _Start(0, 0.0, None), math.inf
        start = self.timeline.start(self.expectation)
        if isinstance(start, _Missing):
            return self._no_anchor(start)
        within = self.expectation.within
        end = start.t + within if within is not None else math.inf
        self.start, self.end = start, end
        self.closed = self.final or end < self.now
        if isinstance(self.expectation, Happens):
            return self._happens(self.expectation)
        if isinstance(self.expectation, Never):
            return self._never(self.expectation)
        if isinstance(self.expectation, Sequence):
            return self._sequence(self.expectation)
        return self._rate(self.expectation)

    # Verdicts

    def _done(
        self,
        status: Status,
        explain: str,
        events: Iterable[Event] = (),
        nearest: Iterable[Event] = (),
    ) -> ExpectationResult:
        if status == "failed" and self.expectation.why:
            explain += f"\n  why it matters: {self.expectation.why}"
        return ExpectationResult(self.expectation, status, explain, tuple(events), tuple(nearest))

    def _no_anchor(self, missing: _Missing) -> ExpectationResult:
        if not self.final:
            return self._done("pending", f"waiting for {missing.what}")
        text = f"could not be checked: {missing.what} never happened{missing.hint}"
        nearest: list[Event] = []
        if missing.pattern is not None:
            nearest = self._nearest(missing.pattern, set())
            text += "\n" + self._nearest_text(missing.pattern, nearest)
        return self._done("failed", text, nearest=nearest)

    def _happens(self, exp: Happens) -> ExpectationResult:
        indices = [
            i
            for i in range(self.start.index, len(self.events))
            if exp.pattern.matches(self.events[i])
        ]
        inside = [i for i in indices if self.events[i].t <= self.end]
        late = [self.events[i] for i in indices if self.events[i].t > self.end]
        found = [self.events[i] for i in inside]
        low, high = exp.at_least, exp.at_most
        expected = f"expected {exp.pattern.describe()}{_count(low, high)}{self._window()}"
        if high is not None and len(found) > high:
            text = f"{expected}; it happened {_times(len(found))}:\n" + self._listed(
                found, exp.pattern
            )
            return self._done("failed", text, found)
        if len(found) >= low and (high is None or self.closed):
            return self._done("passed", self._passed_text(exp, found), found)
        if not self.closed:
            so_far = f"{len(found)} so far" if found else "nothing yet"
            return self._done("pending", f"{expected}; {so_far}", found)
        if found:
            text = f"{expected}; it happened only {_times(len(found))}:\n" + self._listed(
                found, exp.pattern
            )
        else:
            text = f"{expected}; it never happened"
        if late and len(found) < low:
            first = late[0]
            text += (
                f"\n  it did happen later, at t={first.t:.3f}, "
                f"{first.t - self.end:.3f} s after the window ended"
            )
        nearest = self._nearest(exp.pattern, set(inside))
        return self._done(
            "failed", f"{text}\n{self._nearest_text(exp.pattern, nearest)}", found, nearest
        )

    def _subject(self, pattern: EventPattern) -> str:
        """What a passing text is about: "it" when the label already says it."""
        return pattern.describe() if self.expectation.name is not None else "it"

    def _passed_text(self, exp: Happens, found: list[Event]) -> str:
        subject = self._subject(exp.pattern)
        if not found:
            return f"{subject} did not happen, as allowed"
        first = found[0]
        since = ""
        if self.start.label is not None:
            since = f", {first.t - self.start.t:.3f} s after {self.start.label}"
        count = f" ({_times(len(found))})" if len(found) > 1 or exp.at_most is not None else ""
        return f"{subject} happened at t={first.t:.3f}{since}{count}"

    def _never(self, exp: Never) -> ExpectationResult:
        found = [
            self.events[i]
            for i in range(self.start.index, len(self.events))
            if self.events[i].t <= self.end and exp.pattern.matches(self.events[i])
        ]
        if found:
            text = (
                f"expected no {exp.pattern.describe()}{self._window()}; "
                f"it happened {_times(len(found))}:\n" + self._listed(found, exp.pattern)
            )
            return self._done("failed", text, found)
        subject = exp.pattern.describe() if exp.name is not None else "such event"
        if not self.closed:
            return self._done("pending", f"no {subject} so far")
        return self._done("passed", f"no {subject}{self._window()}")

    def _sequence(self, exp: Sequence) -> ExpectationResult:
        steps = self.timeline.greedy(exp.steps, self.start.index)
        matched = [self.events[i] for i in steps]
        times = ", ".join(f"t={e.t:.3f}" for e in matched)
        expected = "expected in order: " + "; ".join(
            f"{n}) {p.describe()}" for n, p in enumerate(exp.steps, 1)
        )
        expected += self._window()
        if len(steps) == len(exp.steps):
            last = matched[-1]
            if last.t <= self.end:
                return self._done("passed", f"happened in order at {times}", matched)
            text = (
                f"{expected}; it completed only at t={last.t:.3f}, "
                f"{last.t - self.end:.3f} s after the window ended:\n" + self._listed(matched, None)
            )
            return self._done("failed", text, matched)
        if not self.closed:
            return self._done("pending", f"{len(steps)} of {len(exp.steps)} steps so far", matched)
        missing = exp.steps[len(steps)]
        if steps:
            last = matched[-1]
            text = (
                f"{expected}; steps 1-{len(steps)} happened ({times}), "
                f"then step {len(steps) + 1} ({missing.describe()}) never followed "
                f"after t={last.t:.3f}"
            )
            after = steps[-1] + 1
        else:
            text = f"{expected}; step 1 ({missing.describe()}) never happened"
            after = self.start.index
        nearest = self._nearest(missing, set(steps), after=after)
        return self._done(
            "failed", f"{text}\n{self._nearest_text(missing, nearest)}", matched, nearest
        )

    def _rate(self, exp: Rate) -> ExpectationResult:
        found = [
            self.events[i]
            for i in range(self.start.index, len(self.events))
            if self.events[i].t <= self.end and exp.pattern.matches(self.events[i])
        ]
        worst_count, worst_from = 0, 0
        low = 0
        for high in range(len(found)):
            while found[high].t - found[low].t >= exp.per:
                low += 1
            if high - low + 1 > worst_count:
                worst_count, worst_from = high - low + 1, low
        burst = found[worst_from : worst_from + worst_count]
        limit = f"at most {exp.max} {exp.pattern.describe()} per {exp.per:g} s{self._window()}"
        if worst_count > exp.max:
            span = burst[-1].t - burst[0].t
            text = (
                f"expected {limit}; {worst_count} happened within {span:.3f} s "
                f"(t={burst[0].t:.3f} to {burst[-1].t:.3f}):\n" + self._listed(burst, exp.pattern)
            )
            return self._done("failed", text, burst)
        busiest = f"the busiest {exp.per:g} s had {worst_count} (at most {exp.max})"
        if not self.closed:
            return self._done("pending", f"so far {busiest}", burst)
        return self._done("passed", f"{limit}; {busiest}" if exp.name else busiest, burst)

    # Explanations

    def _window(self) -> str:
        within = self.expectation.within
        label = self.start.label
        if label is None:
            return f" within {within:g} s of the start" if within is not None else ""
        if within is None:
            return f" after {label}"
        return f" within {within:g} s after {label} (by t={self.end:.3f})"

    def _listed(self, events: Seq[Event], pattern: EventPattern | None) -> str:
        lines = [f"    {self._line(e, pattern)}" for e in events[:LISTED]]
        if len(events) > LISTED:
            lines.append(f"    … and {len(events) - LISTED} more")
        return "\n".join(lines)

    def _line(self, event: Event, pattern: EventPattern | None) -> str:
        parts = [f"t={event.t:.3f}", event.kind]
        if event.conn is not None:
            parts.append(f"[{event.conn}]")
        shown: set[str] = {"conn", "t"}
        if pattern is not None:
            if not kind_matches(pattern.kind, event.kind):
                parts.append(f"(expected {pattern.kind})")
            for match in pattern.fields:
                parts.append(_field_text(event, match))
                shown.add(match.field)
        for name in _SUMMARY_FIELDS:
            if name not in shown and name in event.fields:
                parts.append(f"{name}={show_value(event.fields[name])}")
                shown.add(name)
        if pattern is not None:
            if event.t > self.end:
                parts.append("(after the window)")
            elif self.start.index > 0 and event.t < self.start.t:
                parts.append("(before the window)")
        return " ".join(parts)

    def _nearest(
        self,
        pattern: EventPattern,
        exclude: set[int],
        *,
        after: int | None = None,
    ) -> list[Event]:
        """The events that came closest to ``pattern``, best first."""
        scored: list[tuple[float, int, float, int]] = []
        for index, event in enumerate(self.events):
            if index in exclude or (after is not None and index < after):
                continue
            # Fields count as much as the kind is alike: `ok=true` on any event is no hint.
            similarity = _kind_similarity(pattern.kind, event.kind)
            hits = sum(match.test(event) for match in pattern.fields)
            score = similarity * (1 + (hits / len(pattern.fields) if pattern.fields else 0.0))
            if score < 0.5:
                continue
            inside = index >= self.start.index and event.t <= self.end
            distance = 0.0 if inside else min(abs(event.t - self.start.t), abs(event.t - self.end))
            scored.append((-score, 0 if inside else 1, distance, index))
        scored.sort()
        return [self.events[index] for *_, index in scored[:NEAREST]]

    def _nearest_text(self, pattern: EventPattern, nearest: list[Event]) -> str:
        if nearest:
            return "  nearest events:\n" + self._listed(nearest, pattern)
        kinds = Counter(e.kind for e in self.events)
        if not kinds:
            return "  no events were recorded at all"
        seen = ", ".join(f"{k} ({n})" for k, n in kinds.most_common(8))
        more = f" and {len(kinds) - 8} more kinds" if len(kinds) > 8 else ""
        return f"  no event came close; recorded: {seen}{more}"


def _field_text(event: Event, match: FieldMatch) -> str:
    present, actual = match.lookup(event)
    shown = show_value(actual) if present else "(absent)"
    if match.test(event):
        return f"{match.field}={shown}"
    want = show_value(match.value) if match.op == "eq" else match.describe()
    return f"{match.field}={shown} (expected {want})"


def _kind_similarity(pattern: str | None, kind: str) -> float:
    """1 for a match; below 1, shared leading dotted parts and spelling similarity."""
    if kind_matches(pattern, kind):
        return 1.0
    assert pattern is not None
    wanted = pattern.rstrip(".*?").split(".")
    parts = kind.split(".")
    common = 0
    for a, b in zip(wanted, parts, strict=False):
        if a != b:
            break
        common += 1
    prefix = common / max(len(wanted), len(parts))
    spelling = difflib.SequenceMatcher(None, pattern, kind).ratio()
    return 0.5 * prefix + 0.49 * spelling


def _count(low: int, high: int | None) -> str:
    if high is None:
        return "" if low == 1 else f" at least {_times(low)}"
    if low == high:
        return f" exactly {_times(low)}"
    if low == 0:
        return f" at most {_times(high)}"
    return f" {low} to {high} times"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def results_by_name(results: Seq[ExpectationResult]) -> Mapping[str, ExpectationResult]:
    """The results of named expectations, by name (for reports and pytest assertions)."""
    return {r.expectation.name: r for r in results if r.expectation.name is not None}
