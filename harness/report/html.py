"""The run report: one self-contained HTML page for all scenarios of a run.

Issue [scenarios], "Report": for each scenario its verdict, its expectations (a failed
one with its explanation), the sequence diagram (inline SVG, :mod:`harness.report.svg`)
and the table of every event below it. No external assets and no script: sections fold
with ``<details>``, and every diagram item links to its event's table row. Every string
from an event or a scenario goes through :func:`harness.report.markup.escape`; the page
adds nothing to the (already scrubbed) event fields, so no secret can appear that the
recorder did not let through (DESIGN.md "Events JSONL").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from harness.events import Event
from harness.report.markup import escape
from harness.report.model import ExpectationOutcome, ScenarioReport
from harness.report.svg import render_svg_parts
from harness.report.timeline import MAX_ITEMS, Timeline, build_timeline, event_order, show_value

__all__ = ["OPEN_TABLE_EVENTS", "VALUE_LIMIT", "render_html", "write_html"]

#: Event tables up to this many rows start unfolded.
OPEN_TABLE_EVENTS = 1000
#: A field value longer than this is cut in the table (the JSONL keeps all of it).
VALUE_LIMIT = 2000

_CSS = """
:root{--fg:#0f172a;--muted:#64748b;--line:#e2e8f0;--ok:#15803d;--fail:#b91c1c;--fault:#c2410c}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 64px;color:var(--fg);background:#f8fafc;
 font:14px/1.45 "DejaVu Sans","Segoe UI",system-ui,-apple-system,sans-serif}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;margin:0;display:flex;gap:10px;align-items:center}
.sub{color:var(--muted);margin:0 0 18px}
.badge{display:inline-block;font-size:11px;font-weight:700;letter-spacing:.06em;
 padding:2px 8px;border-radius:999px;text-transform:uppercase}
.badge.passed{background:#dcfce7;color:var(--ok)}
.badge.failed{background:#fee2e2;color:var(--fail)}
.badge.unknown{background:#e2e8f0;color:var(--muted)}
.badge.xfailed{background:#fef3c7;color:#92400e}
.badge.xpassed{background:#fee2e2;color:var(--fail)}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid var(--line)}
th{font-size:12px;color:var(--muted);font-weight:600;background:#f1f5f9;position:sticky;top:0}
.summary{margin-bottom:24px;border:1px solid var(--line)}
.summary a{color:var(--fg);font-weight:600}
section.scenario{background:#fff;border:1px solid var(--line);border-radius:10px;
 padding:18px 20px;margin:0 0 28px}
section.scenario.failed{border-left:5px solid var(--fail)}
section.scenario.passed{border-left:5px solid var(--ok)}
section.scenario.xfailed{border-left:5px solid #d97706}
section.scenario.xpassed{border-left:5px solid var(--fail)}
.purpose{color:#334155;margin:6px 0 12px}
ul.expectations{list-style:none;padding:0;margin:0 0 14px}
ul.expectations li{padding:6px 10px;border-radius:6px;margin:4px 0}
ul.expectations li.passed{background:#f0fdf4}
ul.expectations li.failed{background:#fef2f2}
ul.expectations li.undecided{background:#fffbeb}
.sign{font-weight:700;display:inline-block;width:1.2em}
li.passed .sign{color:var(--ok)} li.failed .sign{color:var(--fail)}
li.undecided .sign{color:#b45309}
.when{color:var(--muted);font-size:12px;margin-left:6px}
pre.explain{margin:6px 0 2px 1.2em;white-space:pre-wrap;word-break:break-word;
 font:12px/1.4 "DejaVu Sans Mono",ui-monospace,monospace;color:#334155}
details{margin:10px 0}
summary{cursor:pointer;font-weight:600;color:#334155}
.diagram{overflow:auto;max-height:78vh;border:1px solid var(--line);border-radius:8px;
 background:#fff;margin-top:8px}
.diagram .head{position:sticky;top:0;z-index:1;background:#fff;
 border-bottom:1px solid var(--line);width:max-content}
.diagram svg{display:block}
.note{color:#92400e;background:#fffbeb;border:1px solid #fde68a;border-radius:6px;
 padding:6px 10px;margin:8px 0;font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:14px;color:var(--muted);font-size:12px;margin:6px 0}
.legend span b{font-weight:700}
.events{font-size:12px}
.events td.t,.events td.n{font-variant-numeric:tabular-nums;white-space:nowrap;color:#334155}
.events td.kind{white-space:nowrap;font-weight:600}
.events td.conn{white-space:nowrap;color:#334155}
.events tr.fail td.kind{color:var(--fail)}
.events tr.fault td.kind{color:var(--fault)}
.events tr.ok td.kind{color:var(--ok)}
.events tr.fail{background:#fef2f2} .events tr.fault{background:#fff7ed}
.events tr:target{outline:2px solid #2563eb}
.f{display:inline-block;margin-right:10px;word-break:break-all}
.f i{font-style:normal;color:var(--muted)}
.events .explain{color:#334155;white-space:pre-wrap;word-break:break-word;margin-top:2px;
 font-family:"DejaVu Sans Mono",ui-monospace,monospace;font-size:11.5px}
"""

_LEGEND = (
    '<div class="legend">'
    "<span><b>→</b> request</span>"
    "<span><b>⇢</b> reply (dashed)</span>"
    '<span><b style="color:#15803d">✓</b> accepted</span>'
    '<span><b style="color:#b91c1c">✗</b> refused or failed</span>'
    '<span><b style="color:#c2410c">⚡</b> injected fault</span>'
    '<span><b style="color:#2563eb">⇄</b> MQTT traffic folded</span>'
    "<span><b>↻</b> connections that repeated the one above</span>"
    "<span><b>- - -</b> expectation decided here</span>"
    "<span>hover for details, click to jump to the event</span>"
    "</div>"
)


_STATUSES = ("passed", "failed", "xfailed", "xpassed")
_STATUS_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "xfailed": "known failures",
    "xpassed": "known failures that passed",
}


def _outcome_word(outcome: ExpectationOutcome) -> tuple[str, str]:
    if outcome.ok is None:
        return "undecided", "…"
    return ("passed", "✓") if outcome.ok else ("failed", "✗")


def _expectations(report: ScenarioReport) -> str:
    if not report.expectations:
        return '<p class="sub">No expectations.</p>'
    # Failed first: they are what a reader opened the report for.
    order = {"failed": 0, "undecided": 1, "passed": 2}
    rows = sorted(report.expectations, key=lambda o: order[_outcome_word(o)[0]])
    items = []
    for outcome in rows:
        word, sign = _outcome_word(outcome)
        when = ""
        if isinstance(outcome.at, int | float) and math.isfinite(outcome.at):
            when = f'<span class="when">at {outcome.at:.3f} s</span>'
        explain = (
            f'<pre class="explain">{escape(outcome.explain)}</pre>'
            if outcome.explain and word != "passed"
            else (f'<span class="when">{escape(outcome.explain)}</span>' if outcome.explain else "")
        )
        items.append(
            f'<li class="{word}"><span class="sign">{sign}</span>'
            f'<b>{escape(outcome.name)}</b> <span class="when">{word}</span>{when}'
            f"{explain}</li>"
        )
    return f'<ul class="expectations">{"".join(items)}</ul>'


def _row_class(event: Event) -> str:
    if event.kind in ("fault.fired", "net.toxic"):
        return "fault"
    if event.ok is False:
        return "fail"
    if event.ok is True:
        return "ok"
    return ""


def _event_row(index: int, event: Event, prefix: str) -> str:
    t = event.t
    time = f"{t:.3f}" if isinstance(t, int | float) and math.isfinite(t) else escape(str(t))
    shown = []
    explain = ""
    for name, value in event.fields.items():
        if name == "explain":
            explain = show_value(value, VALUE_LIMIT)
            continue
        shown.append(
            f'<span class="f"><i>{escape(str(name))}=</i>'
            f"{escape(show_value(value, VALUE_LIMIT))}</span>"
        )
    details = "".join(shown)
    if explain:
        details += f'<div class="explain">{escape(explain)}</div>'
    css = _row_class(event)
    attr = f' class="{css}"' if css else ""
    return (
        f'<tr id="{prefix}-e{index}"{attr}>'
        f'<td class="n">{index}</td><td class="t">{time}</td>'
        f'<td class="conn">{escape(event.conn or "")}</td>'
        f'<td class="kind">{escape(event.kind)}</td><td>{details}</td></tr>'
    )


def _events_table(events: Sequence[Event], prefix: str) -> str:
    rows = "".join(_event_row(i, event, prefix) for i, event in enumerate(events))
    opened = " open" if len(events) <= OPEN_TABLE_EVENTS else ""
    return (
        f"<details{opened}><summary>Events ({len(events)})</summary>"
        f'<table class="events"><thead><tr><th>#</th><th>t (s)</th><th>conn</th>'
        f"<th>kind</th><th>fields</th></tr></thead><tbody>{rows}</tbody></table></details>"
    )


def _thinning_note(timeline: Timeline) -> str:
    if not timeline.omitted:
        return ""
    return (
        f'<p class="note">The diagram shows {len(timeline.items)} of {timeline.total_items} '
        f"items, chosen in this order: faults, refusals and closes; ordinary steps; routine "
        f"traffic. The event table below has all {timeline.total_events} events.</p>"
    )


def _diagram(timeline: Timeline, prefix: str, gap: float) -> str:
    head, body = render_svg_parts(timeline, prefix=prefix, gap=gap)
    shown = len(timeline.items)
    return (
        f"<details open><summary>Sequence diagram ({timeline.total_events} events, "
        f"{shown} items drawn)</summary>{_LEGEND}{_thinning_note(timeline)}"
        f'<div class="diagram"><div class="head">{head}</div>{body}</div></details>'
    )


def _section(index: int, report: ScenarioReport, *, max_items: int, gap: float) -> str:
    prefix = f"s{index}"
    events = event_order(report.events)
    timeline = build_timeline(events, expectations=report.expectations, max_items=max_items)
    status = report.status
    purpose = f'<p class="purpose">{escape(report.purpose)}</p>' if report.purpose else ""
    return (
        f'<section class="scenario {status}" id="{prefix}">'
        f'<h2><span class="badge {status}">{status}</span>'
        f'<span class="name">{escape(report.name)}</span></h2>{purpose}'
        f"{_expectations(report)}{_diagram(timeline, prefix, gap)}"
        f"{_events_table(events, prefix)}</section>"
    )


def _summary(reports: Sequence[ScenarioReport]) -> str:
    rows = []
    for i, report in enumerate(reports, 1):
        total = len(report.expectations)
        passed = sum(1 for e in report.expectations if e.ok is True)
        rows.append(
            f'<tr><td><span class="badge {report.status}">{report.status}</span></td>'
            f'<td><a href="#s{i}">{escape(report.name)}</a></td>'
            f"<td>{escape(report.purpose)}</td><td>{passed} / {total}</td>"
            f"<td>{len(report.events)}</td></tr>"
        )
    return (
        '<table class="summary"><thead><tr><th>status</th><th>scenario</th><th>purpose</th>'
        f"<th>expectations passed</th><th>events</th></tr></thead><tbody>{''.join(rows)}"
        "</tbody></table>"
    )


def render_html(
    reports: Sequence[ScenarioReport],
    *,
    title: str = "iot-harness report",
    source: str | None = None,
    max_items: int = MAX_ITEMS,
    gap: float = 0.5,
) -> str:
    """The whole page as a string.

    ``source`` (for example the events file it was made from) is shown under the title;
    ``max_items`` caps each diagram (:func:`~harness.report.timeline.build_timeline`);
    ``gap`` is the pause in seconds that the diagram shows as a break.
    """
    tally = {status: sum(1 for r in reports if r.status == status) for status in _STATUSES}
    counts = f"{len(reports)} scenario{'s' if len(reports) != 1 else ''}"
    if any(tally.values()):
        counts += ": " + ", ".join(
            f"{n} {_STATUS_WORDS[status]}"
            for status, n in tally.items()
            if n or status in ("passed", "failed")
        )
    origin = f" · from {escape(source)}" if source else ""
    sections = "".join(
        _section(i, report, max_items=max_items, gap=gap) for i, report in enumerate(reports, 1)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="sub">{counts}{origin}</p>'
        f"{_summary(reports)}{sections}</body></html>\n"
    )


def write_html(
    reports: Sequence[ScenarioReport],
    path: Path,
    *,
    title: str = "iot-harness report",
    source: str | None = None,
    max_items: int = MAX_ITEMS,
    gap: float = 0.5,
) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8, parents created) and return ``path``."""
    page = render_html(reports, title=title, source=source, max_items=max_items, gap=gap)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
