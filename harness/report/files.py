"""Reports from files: read an events JSONL (DESIGN.md "Events JSONL"), write the page.

``iot-harness report events.jsonl`` (issue [scenarios], "Report") works from the JSONL
alone. A run's file may hold several scenarios; the scenario runner marks them with two
events that this module reads (and leaves out of the diagrams)::

    {"t": 0.0, "kind": "scenario.started", "name": "sigv4-expiry", "purpose": "..."}
    ... the scenario's world events ...
    {"t": 7.2, "kind": "scenario.finished", "name": "sigv4-expiry", "passed": false,
     "expectations": [{"name": "reconnects", "ok": false, "explain": "...", "at": 5.0}]}

Events outside any pair join the scenario before them (or the first one); a file without
pairs (a plain ``iot-harness serve`` log) is one scenario named after the file, with an
unknown verdict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.events import Event
from harness.report.html import write_html
from harness.report.model import ExpectationOutcome, ScenarioReport
from harness.report.timeline import MAX_ITEMS

__all__ = [
    "SCENARIO_FINISHED",
    "SCENARIO_STARTED",
    "load_events",
    "render_file",
    "reports_from_events",
]

SCENARIO_STARTED = "scenario.started"
SCENARIO_FINISHED = "scenario.finished"


def _event(path: Path, number: int, line: str) -> Event:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not a JSON object ({exc.msg})") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    t = data.pop("t", None)
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ConfigError(f"{where}: field 't' must be a number of seconds, got {t!r:.60}")
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: field 'kind' must be a non-empty string, got {kind!r:.60}")
    conn = data.pop("conn", None)
    if conn is not None and not isinstance(conn, str):
        raise ConfigError(f"{where}: field 'conn' must be a string, got {conn!r:.60}")
    return Event(t=float(t), kind=kind, conn=conn, fields=data)


def load_events(path: Path) -> list[Event]:
    """The events of a JSONL file, in file order; blank lines are skipped.

    Raises :class:`~harness.errors.ConfigError` naming the file and line of the first
    line that is not an event (DESIGN.md "Events JSONL": ``t``, ``kind``, ``conn``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [
        _event(path, number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _outcomes(value: Any) -> list[ExpectationOutcome]:
    """``scenario.finished``'s ``expectations``; entries without a name are skipped."""
    out: list[ExpectationOutcome] = []
    if not isinstance(value, list):
        return out
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        ok = entry.get("ok")
        at = entry.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            at = None
        out.append(
            ExpectationOutcome(
                name=entry["name"],
                ok=ok if isinstance(ok, bool) else None,
                explain=_text(entry.get("explain")),
                at=None if at is None else float(at),
            )
        )
    return out


def reports_from_events(events: Sequence[Event], *, name: str) -> list[ScenarioReport]:
    """Split a run's events into scenarios at ``scenario.started`` / ``scenario.finished``.

    An event outside any pair joins the scenario before it (its world shutting down), or
    the first scenario when none came before (its world starting). Without any pair, all
    events form one scenario called ``name``.
    """
    segments: list[tuple[Event | None, list[Event], Event | None]] = []
    before: list[Event] = []
    open_: tuple[Event, list[Event]] | None = None
    for event in events:
        if event.kind == SCENARIO_STARTED:
            if open_ is not None:
                segments.append((open_[0], open_[1], None))
            open_ = (event, before)
            before = []
        elif event.kind == SCENARIO_FINISHED:
            if open_ is not None:
                segments.append((open_[0], open_[1], event))
                open_ = None
        elif open_ is not None:
            open_[1].append(event)
        elif segments:
            segments[-1][1].append(event)
        else:
            before.append(event)
    if open_ is not None:
        segments.append((open_[0], open_[1], None))
    if not segments:
        return [ScenarioReport(name=name, events=before)] if before else []
    return [
        _report(started, collected, finished, name) for started, collected, finished in segments
    ]


def _report(
    started: Event | None, events: list[Event], finished: Event | None, name: str
) -> ScenarioReport:
    passed = finished.get("passed") if finished is not None else None
    verdict = finished.get("verdict") if finished is not None else None
    return ScenarioReport(
        name=(_text(started.get("name")) if started is not None else "") or name,
        purpose=_text(started.get("purpose")) if started is not None else "",
        passed=passed if isinstance(passed, bool) else None,
        verdict=verdict if isinstance(verdict, str) else None,
        expectations=_outcomes(finished.get("expectations")) if finished is not None else (),
        events=events,
    )


def render_file(
    events_path: Path,
    out_path: Path | None = None,
    *,
    title: str | None = None,
    max_items: int = MAX_ITEMS,
) -> Path:
    """Write the HTML report of an events JSONL; returns the page's path.

    ``out_path`` defaults to the events file with the suffix ``.html``. Raises
    :class:`~harness.errors.ConfigError` for an unreadable or malformed events file or an
    unwritable output.
    """
    events = load_events(events_path)
    reports = reports_from_events(events, name=events_path.stem)
    out = out_path if out_path is not None else events_path.with_suffix(".html")
    if out.resolve() == events_path.resolve():
        raise ConfigError(f"the report would overwrite its events file {events_path}")
    try:
        return write_html(
            reports,
            out,
            title=title or f"iot-harness report: {events_path.name}",
            source=str(events_path),
            max_items=max_items,
        )
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
