"""A compact text timeline for pytest failure output and the CLI.

The same model as the HTML diagram (:mod:`harness.report.timeline`), one line per item::

    FAILED  sigv4-stale-credentials: temporary credentials live 1 s; the client must ...
      ✗ reconnects-with-fresh-credentials  at 2.167 s
          expected ws.upgrade ok=true within 3 s after fault credentials-expired; found none.
      ✓ connects-first  at 0.400 s
    timeline: 94 events, 28 items (16 not shown)
           t  conn      lanes                           what
       0.129  cognito-1 player-7 → Cognito              GetCredentialsForIdentity
       0.400  ----- ✓ connects-first -----
       1.926  c2        IoT gateway                     ✗ auth token-expired
       1.926  c2        IoT gateway ⇢ player-7          403 token-expired
       1.929            player-7 → IoT gateway          ↻ 5 more connections did the same (c3…
       2.167  ----- ✗ reconnects-with-fresh-credentials -----

Lines are cut to ``width``; at most ``max_lines`` items are listed (thinned as the
diagram is: faults and refusals are kept first). ``color`` adds ANSI colours for a
terminal; pytest output and CI logs get plain text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from harness.events import Event
from harness.report.markup import clean
from harness.report.model import ExpectationOutcome, ScenarioReport
from harness.report.timeline import Item, Timeline, Tone, build_timeline

__all__ = ["format_timeline", "render_text"]

_ANSI: dict[Tone, str] = {
    "neutral": "",
    "ok": "\x1b[32m",
    "fail": "\x1b[31;1m",
    "fault": "\x1b[33;1m",
    "muted": "\x1b[2m",
}
_RESET = "\x1b[0m"
_MULT = "\u00d7"


def _verdict(ok: bool | None) -> tuple[str, Tone]:
    if ok is None:
        return "…", "muted"
    return ("✓", "ok") if ok else ("✗", "fail")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _paint(text: str, tone: Tone, color: bool) -> str:
    code = _ANSI[tone] if color else ""
    return f"{code}{text}{_RESET}" if code else text


def _lanes(item: Item, timeline: Timeline) -> str:
    src = timeline.lane(item.src).title
    dst = timeline.lane(item.dst).title
    if item.src == item.dst:
        return _cut(src, 30)
    arrow = {"reply": "⇢", "traffic": "⇄"}.get(item.shape, "→")
    return f"{_cut(src, 14)} {arrow} {_cut(dst, 14)}"


def _item_line(item: Item, timeline: Timeline, width: int, color: bool, conn_w: int) -> str:
    t = f"{item.t:8.3f}" if math.isfinite(item.t) else "       ?"
    conn = _cut(item.conn or "", conn_w).ljust(conn_w)
    label = item.label
    if item.count > 1 and item.shape not in ("traffic", "repeat"):
        label = f"{label} {_MULT}{item.count}"
    line = clean(f"{t}  {conn} {_lanes(item, timeline):<31} {label}")
    return _paint(_cut(line, width), item.tone, color)


def _expectation_lines(
    outcomes: Sequence[ExpectationOutcome], width: int, color: bool
) -> list[str]:
    lines: list[str] = []
    for outcome in sorted(outcomes, key=lambda o: {False: 0, None: 1, True: 2}[o.ok]):
        sign, tone = _verdict(outcome.ok)
        at = ""
        if outcome.at is not None and math.isfinite(outcome.at):
            at = f"  at {outcome.at:.3f} s"
        lines.append(_paint(_cut(clean(f"  {sign} {outcome.name}{at}"), width), tone, color))
        if outcome.ok is not True and outcome.explain:
            for text in outcome.explain.splitlines():
                lines.append(_cut(clean(f"      {text}"), width))
    return lines


def format_timeline(
    events: Iterable[Event],
    *,
    expectations: Sequence[ExpectationOutcome] = (),
    max_lines: int = 40,
    width: int = 100,
    color: bool = False,
) -> str:
    """The timeline of ``events`` as text, with expectation outcomes marked in place."""
    timeline = build_timeline(events, expectations=expectations, max_items=max_lines)
    head = f"timeline: {timeline.total_events} events, {timeline.total_items} items"
    if timeline.omitted:
        head += f" ({timeline.omitted} not shown)"
    lines = [head]
    conn_w = min(max((len(i.conn or "") for i in timeline.items), default=4), 12)
    conn_w = max(conn_w, 4)
    if timeline.items:
        lines.append(f"{'t':>8}  {'conn':<{conn_w}} {'lanes':<31} what")
    marks = list(timeline.marks)
    for row, item in enumerate([*timeline.items, None]):
        while marks and marks[0].row <= row:
            mark = marks.pop(0)
            sign, tone = _verdict(mark.ok)
            text = _cut(clean(f"{mark.t:8.3f}  ----- {sign} {mark.name} -----"), width)
            lines.append(_paint(text, tone, color))
        if item is not None:
            lines.append(_item_line(item, timeline, width, color, conn_w))
    return "\n".join(lines)


def render_text(
    report: ScenarioReport, *, max_lines: int = 40, width: int = 100, color: bool = False
) -> str:
    """One scenario as text: verdict, expectations (failed first, explained), timeline."""
    status = report.status.upper()
    tone = _verdict(report.passed)[1]
    head = f"{status}  {report.name}" + (f": {report.purpose}" if report.purpose else "")
    lines = [_paint(_cut(clean(head), width), tone, color)]
    lines.extend(_expectation_lines(report.expectations, width, color))
    lines.append(
        format_timeline(
            report.events,
            expectations=report.expectations,
            max_lines=max_lines,
            width=width,
            color=color,
        )
    )
    return "\n".join(lines)
