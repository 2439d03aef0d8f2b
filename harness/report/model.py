"""What a report is made of: one :class:`ScenarioReport` per scenario of a run.

The input of every renderer (HTML page, SVG diagram, terminal text) is deliberately plain
(issue [scenarios], "Report"): a scenario's name and purpose, whether it passed, the
outcome of each expectation, and the scrubbed events of its world. The scenario runner
builds these from its own results; ``iot-harness report`` rebuilds them from an events
JSONL file (:mod:`harness.report.files`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from harness.events import Event

__all__ = ["ExpectationOutcome", "ScenarioReport"]


class _Labelled(Protocol):
    @property
    def label(self) -> str: ...


class _Result(Protocol):
    """The shape of :class:`harness.scenario.expectations.ExpectationResult`."""

    @property
    def expectation(self) -> _Labelled: ...
    @property
    def status(self) -> str: ...
    @property
    def explain(self) -> str: ...
    @property
    def events(self) -> Sequence[Event]: ...


@dataclass(frozen=True, kw_only=True)
class ExpectationOutcome:
    """How one expectation of a scenario ended.

    ``ok`` is ``None`` for an expectation that was still undecided when the run stopped.
    ``at`` is the world time (seconds, like :attr:`Event.t`) where the diagram marks it:
    the event that decided it, or ``None`` to list it without a mark.
    """

    name: str
    ok: bool | None
    explain: str = ""
    at: float | None = None

    @classmethod
    def from_result(cls, result: _Result) -> ExpectationOutcome:
        """The outcome of a scenario engine result (``harness.scenario.expectations``).

        Marked at the last of the events behind it (the last match, offence or step); a
        result with no such event (nothing happened) is listed without a mark.
        """
        ok = {"passed": True, "failed": False}.get(result.status)
        at = result.events[-1].t if result.events else None
        return cls(name=result.expectation.label, ok=ok, explain=result.explain, at=at)


@dataclass(frozen=True, kw_only=True)
class ScenarioReport:
    """One scenario of a run: its verdict, its expectations and its timeline.

    ``passed`` is ``None`` when it is unknown (an events file without scenario results).
    ``events`` are the scenario's world events as recorded (already scrubbed of secrets
    by :class:`harness.events.Recorder`); the renderers add nothing secret to them.
    """

    name: str
    purpose: str = ""
    passed: bool | None = None
    #: The runner's verdict with known failures taken into account (``xfailed``: the
    #: expectations failed as a documented field bug says they do; ``xpassed``).
    verdict: str | None = None
    expectations: Sequence[ExpectationOutcome] = ()
    events: Sequence[Event] = field(default_factory=list)

    @property
    def failed_expectations(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if e.ok is False]

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``xfailed``, ``xpassed`` or ``unknown``: the word every
        renderer shows. A known failure is not drawn as a regression."""
        if self.verdict in ("xfailed", "xpassed"):
            return self.verdict
        if self.passed is None:
            return "unknown"
        return "passed" if self.passed else "failed"
