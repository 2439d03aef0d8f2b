"""Timeline reports: the HTML sequence-diagram page and the compact text timeline.

Issue [scenarios], "Report". The scenario runner (or ``iot-harness report``) hands over
one :class:`ScenarioReport` per scenario; this package draws them::

    from harness.report import ExpectationOutcome, ScenarioReport, write_html, render_text

    report = ScenarioReport(
        name="sigv4-expiry", purpose="temporary credentials live 2 s", passed=False,
        expectations=[ExpectationOutcome(name="reconnects", ok=False, explain="...", at=5.0)],
        events=world.recorder.events,
    )
    write_html([report], Path("report.html"))      # one self-contained page per run
    print(render_text(report))                      # for pytest failure output

Modules: :mod:`~harness.report.model` (the input), :mod:`~harness.report.timeline`
(events to lanes and arrows, pure), :mod:`~harness.report.svg`,
:mod:`~harness.report.html`, :mod:`~harness.report.terminal`,
:mod:`~harness.report.files` (events JSONL in, page out) and
:mod:`~harness.report.command` (``iot-harness report``).
"""

from harness.report.files import load_events, render_file, reports_from_events
from harness.report.html import render_html, write_html
from harness.report.model import ExpectationOutcome, ScenarioReport
from harness.report.terminal import format_timeline, render_text
from harness.report.timeline import Timeline, build_timeline

__all__ = [
    "ExpectationOutcome",
    "ScenarioReport",
    "Timeline",
    "build_timeline",
    "format_timeline",
    "load_events",
    "render_file",
    "render_html",
    "render_text",
    "reports_from_events",
    "write_html",
]
