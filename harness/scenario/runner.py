"""The scenario runner: a world, a client under test, a fault plan, and the verdict.

Issue [scenarios]. :func:`run_scenario` runs one scenario against one of its clients:

1. it starts the world the file describes (:func:`harness.scenario.worlds.open_world`),
   then the fault plan (:class:`harness.faults.FaultPlan`, which also puts proxies in
   front of listeners that TCP toxics aim at), then the client with the descriptor made
   for it (:mod:`harness.scenario.clients`);
2. it evaluates the expectations as events arrive
   (:func:`~harness.scenario.expectations.evaluate` with ``now``) and ends the run at the
   first of: every expectation decided (``decided``); a failure, ``settle`` seconds later
   (``failed``: the verdict cannot change); only never/rate-like expectations still open,
   ``settle`` seconds later (``settled``: they can only fail, and a quiet moment is as far
   as a run can look); the client gone, ``settle`` seconds later (``client-ended``); the
   scenario's ``timeout`` times ``timeout_scale`` (``timeout``);
3. it stops the client, the fault plan and the world, and returns a
   :class:`ScenarioOutcome`.

A run that ends early on a failure leaves expectations that were still open undecided
(``pending``), rather than calling them failed; every other ending judges them all.

**Known failures** (xfail-like): a client with ``known_failure`` is expected to fail
the scenario (a documented field bug). Its verdict is ``xfailed`` when the expectations
fail and ``xpassed`` ("unexpectedly passed", which counts as a failure: the bug is fixed
or the scenario no longer catches it) when they pass.

**Events JSONL** (DESIGN.md contract 2): with ``events_path`` the world appends its
events to that file, bracketed by the two events :mod:`harness.report.files` reads::

    {"t": 0.0, "kind": "scenario.started", "name": "sigv4-x[paho]", "scenario": "sigv4-x",
     "client": "paho", "purpose": ...}
    ... the world's events ...
    {"t": 4.2, "kind": "scenario.finished", "name": ..., "scenario": ..., "client": ...,
     "passed": false,
     "verdict": "xfailed", "known_failure": "...", "ended": "failed",
     "expectations": [{"name": ..., "ok": false, "explain": ..., "at": 3.1}]}

``passed`` says whether the expectations held (what the report draws); ``verdict`` is
the outcome with the known failure taken into account.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import ConfigError
from harness.events import Event, Recorder
from harness.report import ExpectationOutcome, ScenarioReport, render_text
from harness.scenario.clients import (
    SUPPORTED_KINDS,
    ClientUnavailable,
    RunningClient,
    create_client,
    unmet_requirements,
)
from harness.scenario.expectations import ExpectationResult, evaluate
from harness.scenario.model import ClientSpec, Happens, Never, Rate, Scenario

__all__ = [
    "DEFAULT_SETTLE",
    "Ended",
    "ScenarioOutcome",
    "Verdict",
    "case_id",
    "check_run_options",
    "finished_record",
    "run_scenario",
    "run_scenario_async",
    "scenario_cases",
    "started_record",
    "write_record",
]

Verdict = Literal["passed", "failed", "xfailed", "xpassed", "skipped", "error"]
Ended = Literal["decided", "failed", "settled", "client-ended", "timeout", "not-started"]

#: Seconds a run goes on once its verdict is known or only open-ended expectations are
#: left, so late offences and the aftermath still reach the timeline.
DEFAULT_SETTLE = 1.0
#: Seconds between evaluations when no event arrives (windows close with time).
_TICK = 0.05
#: Seconds a client has to stop after being told to.
_STOP_GRACE = 5.0


@dataclass(frozen=True, kw_only=True)
class ScenarioOutcome:
    """How one scenario ended for one client."""

    scenario: Scenario
    client: ClientSpec | None
    verdict: Verdict
    results: tuple[ExpectationResult, ...] = ()
    #: Every event of the run's world, teardown included (secrets already scrubbed).
    events: tuple[Event, ...] = field(default=(), repr=False)
    #: Why the run ended (module docstring) and at which world time.
    ended: Ended = "not-started"
    duration: float = 0.0
    #: The skip reason, the error, or the known failure's reason.
    reason: str | None = None

    @property
    def id(self) -> str:
        """``name[client]``: how the CLI, pytest and the report name this run."""
        return case_id(self.scenario, self.client)

    @property
    def ok(self) -> bool:
        """Whether this outcome lets a CI gate pass (passed, xfailed or skipped)."""
        return self.verdict in ("passed", "xfailed", "skipped")

    @property
    def passed(self) -> bool | None:
        """Whether the expectations held; ``None`` when the scenario did not run."""
        if self.verdict in ("skipped", "error"):
            return None
        return all(r.ok for r in self.results)

    @property
    def failed_results(self) -> list[ExpectationResult]:
        return [r for r in self.results if r.status == "failed"]

    def outcomes(self) -> list[ExpectationOutcome]:
        return [ExpectationOutcome.from_result(r) for r in self.results]

    def report(self) -> ScenarioReport:
        """The scenario for :mod:`harness.report` (HTML page, text timeline)."""
        purpose = self.scenario.purpose
        if self.client is not None:
            purpose = f"{purpose} (client {self.client.name})"
        return ScenarioReport(
            name=self.id,
            purpose=purpose,
            passed=self.passed,
            verdict=self.verdict,
            expectations=self.outcomes(),
            events=list(self.events),
        )

    def summary(self) -> str:
        """One line: verdict, id, what failed or why it did not run."""
        counts = ""
        if self.results:
            failed = len(self.failed_results)
            counts = f"{len(self.results) - failed}/{len(self.results)} expectations held"
        detail = {
            "passed": counts,
            "failed": counts,
            "xfailed": f"known failure: {self.reason}",
            "xpassed": f"known failure unexpectedly passed: {self.reason}",
            "skipped": f"skipped: {self.reason}",
            "error": f"error: {self.reason}",
        }[self.verdict]
        return f"{self.verdict.upper()} {self.id}: {detail}"

    def explain(self, *, width: int = 100, max_lines: int = 40, color: bool = False) -> str:
        """What went wrong, for pytest and the CLI: the verdict, the failed expectations
        explained with their nearest events, and the text timeline (:func:`render_text`)."""
        head = self.summary()
        if self.verdict == "skipped" or (self.verdict == "error" and not self.events):
            return head
        ended = f"the run ended: {self.ended} at t={self.duration:.3f}"
        text = render_text(self.report(), max_lines=max_lines, width=width, color=color)
        return f"{head}\n{ended}\n{text}"


def case_id(scenario: Scenario, client: ClientSpec | None) -> str:
    return scenario.name if client is None else f"{scenario.name}[{client.name}]"


def scenario_cases(scenario: Scenario) -> list[ClientSpec | None]:
    """The runs a scenario makes: one per client (each in its own world), or one without
    a client when the file has none (the test drives its own)."""
    return list(scenario.clients) if scenario.clients else [None]


def _pick(scenario: Scenario, client: str | ClientSpec | None) -> ClientSpec | None:
    if isinstance(client, ClientSpec):
        return client
    if client is None:
        if len(scenario.clients) > 1:
            names = ", ".join(c.name for c in scenario.clients)
            raise ConfigError(f"scenario {scenario.name!r} has several clients ({names}); pick one")
        return scenario.clients[0] if scenario.clients else None
    for spec in scenario.clients:
        if spec.name == client:
            return spec
    names = ", ".join(c.name for c in scenario.clients) or "none"
    raise ConfigError(f"scenario {scenario.name!r} has no client {client!r} (it has: {names})")


def run_scenario(
    scenario: Scenario,
    *,
    client: str | ClientSpec | None = None,
    events_path: Path | None = None,
    timeout_scale: float = 1.0,
    settle: float = DEFAULT_SETTLE,
) -> ScenarioOutcome:
    """Run one scenario for one client (its only one, or the one named) in a new event
    loop; see :func:`run_scenario_async` (from async code, await that instead)."""
    return asyncio.run(
        run_scenario_async(
            scenario,
            client=client,
            events_path=events_path,
            timeout_scale=timeout_scale,
            settle=settle,
        )
    )


async def run_scenario_async(
    scenario: Scenario,
    *,
    client: str | ClientSpec | None = None,
    events_path: Path | None = None,
    timeout_scale: float = 1.0,
    settle: float = DEFAULT_SETTLE,
) -> ScenarioOutcome:
    """Run one scenario for one client; never raises for what the scenario or the client
    does (that is the outcome), only :class:`~harness.errors.ConfigError` for a client
    name the scenario does not have or bad arguments."""
    check_run_options(timeout_scale=timeout_scale, settle=settle)
    spec = _pick(scenario, client)
    run = _Run(scenario, spec, events_path=events_path, settle=settle)
    return await run.execute(scenario.timeout * timeout_scale)


def check_run_options(*, timeout_scale: float, settle: float) -> None:
    """Raise :class:`~harness.errors.ConfigError` for a ``timeout_scale`` or ``settle``
    no run can use (checked once up front by the catalogue runner, before any worker)."""
    if not (math.isfinite(timeout_scale) and timeout_scale > 0):
        raise ConfigError(f"timeout_scale must be a positive number, got {timeout_scale}")
    if not (math.isfinite(settle) and settle >= 0):
        raise ConfigError(f"settle must be seconds >= 0, got {settle}")


# The brackets of a run in the events JSONL (module docstring)


def _names(scenario: Scenario, client: ClientSpec | None) -> dict[str, Any]:
    return {
        "name": case_id(scenario, client),
        "scenario": scenario.name,
        "client": client.name if client is not None else None,
    }


def started_record(scenario: Scenario, client: ClientSpec | None) -> dict[str, Any]:
    """The ``scenario.started`` line that opens a run in the events JSONL."""
    return {
        "t": 0.0,
        "kind": "scenario.started",
        **_names(scenario, client),
        "purpose": scenario.purpose,
    }


def finished_record(outcome: ScenarioOutcome) -> dict[str, Any]:
    """The ``scenario.finished`` line that closes a run in the events JSONL (also written
    by the catalogue runner for a run whose worker process died before writing it)."""
    return {
        "t": round(outcome.duration, 6),
        "kind": "scenario.finished",
        **_names(outcome.scenario, outcome.client),
        "passed": outcome.passed,
        "verdict": outcome.verdict,
        "ended": outcome.ended,
        "reason": outcome.reason,
        "expectations": [
            {"name": o.name, "ok": o.ok, "explain": o.explain, "at": o.at}
            for o in outcome.outcomes()
        ],
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to the events JSONL at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, default=str) + "\n")


class _Run:
    """One run of one scenario for one client."""

    def __init__(
        self,
        scenario: Scenario,
        client: ClientSpec | None,
        *,
        events_path: Path | None,
        settle: float,
    ) -> None:
        self.scenario = scenario
        self.client = client
        self.events_path = events_path
        self.settle = settle
        self.recorder: Recorder | None = None

    def _outcome(self, verdict: Verdict, **kwargs: Any) -> ScenarioOutcome:
        events = tuple(self.recorder.events) if self.recorder is not None else ()
        return ScenarioOutcome(
            scenario=self.scenario, client=self.client, verdict=verdict, events=events, **kwargs
        )

    async def execute(self, timeout: float) -> ScenarioOutcome:
        if self.events_path is not None:
            write_record(self.events_path, started_record(self.scenario, self.client))
        outcome = await self._execute(timeout)
        if self.events_path is not None:
            write_record(self.events_path, finished_record(outcome))
        return outcome

    async def _execute(self, timeout: float) -> ScenarioOutcome:
        from harness.faults import FaultPlan
        from harness.scenario.worlds import open_world

        client = self.client
        if client is not None:
            try:
                _check_available(client)
            except ClientUnavailable as exc:
                return self._outcome("skipped", reason=str(exc))
            except ConfigError as exc:
                return self._outcome("error", reason=str(exc))
        try:
            async with open_world(self.scenario.world, events_file=self.events_path) as built:
                world = built.world
                self.recorder = world.recorder
                plan = FaultPlan(self.scenario.faults, world=world, pools=built.pools)
                await plan.start()
                try:
                    descriptor = built.descriptor(plan.descriptor(), client=client)
                    running: RunningClient | None = None
                    if client is not None:
                        workdir = Path(self.scenario.path).parent if self.scenario.path else None
                        running = create_client(
                            client,
                            descriptor=descriptor,
                            recorder=world.recorder,
                            state_dir=world.state_dir,
                            workdir=workdir,
                        )
                    outcome = await self._drive(running, timeout)
                finally:
                    await plan.aclose(raise_errors=False)
                if plan.errors:
                    error = plan.errors[0]
                    reason = f"a fault could not be carried out: {type(error).__name__}: {error}"
                    return dataclasses.replace(outcome, verdict="error", reason=reason)
                return outcome
        except ClientUnavailable as exc:
            return self._outcome("skipped", reason=str(exc))
        except ConfigError as exc:
            return self._outcome("error", reason=str(exc))

    async def _drive(self, running: RunningClient | None, timeout: float) -> ScenarioOutcome:
        assert self.recorder is not None
        recorder = self.recorder
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        crash: list[str] = []
        if running is not None:
            task = asyncio.ensure_future(running.run(stop))
        try:
            results, ended, end = await self._watch(task, timeout)
        finally:
            stop.set()
            if task is not None:
                crash = await _stop_client(task, recorder)
        verdict = self._verdict(results)
        reason = None
        if self.client is not None and self.client.known_failure is not None:
            reason = self.client.known_failure.reason
            if self.client.known_failure.ref:
                reason += f" ({self.client.known_failure.ref})"
        if crash:
            verdict, reason = "error", f"the client crashed: {crash[0]}"
        return self._outcome(
            verdict, results=tuple(results), ended=ended, duration=end, reason=reason
        )

    def _verdict(self, results: Sequence[ExpectationResult]) -> Verdict:
        held = all(r.ok for r in results)
        known = self.client is not None and self.client.known_failure is not None
        if known:
            return "xpassed" if held else "xfailed"
        return "passed" if held else "failed"

    async def _watch(
        self, task: asyncio.Task[None] | None, timeout: float
    ) -> tuple[list[ExpectationResult], Ended, float]:
        """Evaluate as events arrive until the run can end (module docstring)."""
        assert self.recorder is not None
        recorder = self.recorder
        clock = recorder.clock
        expectations = self.scenario.expectations
        changed = asyncio.Event()
        unlisten = recorder.listen(lambda _event: changed.set())
        quiet_since: float | None = None
        try:
            while True:
                now = clock.elapsed()
                count = len(recorder.events)
                results = evaluate(expectations, recorder.events[:count], now=now)
                if all(r.decided for r in results):
                    return results, "decided", now
                failed = any(r.status == "failed" for r in results)
                client_gone = task is not None and task.done()
                open_ended = all(r.decided or _only_the_end_decides(r) for r in results)
                ending: Ended | None = None
                if failed:
                    ending = "failed"
                elif client_gone:
                    ending = "client-ended"
                elif open_ended:
                    ending = "settled"
                if ending is not None:
                    quiet_since = now if quiet_since is None else quiet_since
                    if now - quiet_since >= self.settle:
                        final = evaluate(
                            expectations,
                            recorder.events[:count],
                            now=now if ending == "failed" else None,
                        )
                        return final, ending, now
                else:
                    quiet_since = None
                if now >= timeout:
                    return evaluate(expectations, recorder.events[:count]), "timeout", now
                wait = _TICK
                if quiet_since is not None:
                    wait = min(wait, max(0.0, quiet_since + self.settle - now))
                wait = min(wait, max(0.0, timeout - now))
                changed.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a
                # cancellation that arrives in the same turn as the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
        finally:
            unlisten()


def _only_the_end_decides(result: ExpectationResult) -> bool:
    """A pending expectation that can still fail but only the end of the run can pass:
    ``never``, ``rate``, and a ``happens`` with ``at_most`` that already has enough.

    A ``never`` or ``rate`` with ``within`` and no ``after`` is not: its window ends at a
    known time, and the run watches until then (``never X within 2.5`` judged at 0.6 s
    would pass without having looked)."""
    expectation = result.expectation
    if isinstance(expectation, Never | Rate):
        return expectation.within is None or expectation.after is not None
    if isinstance(expectation, Happens) and expectation.at_most is not None:
        return len(result.events) >= expectation.at_least
    return False


def _check_available(client: ClientSpec) -> None:
    """Raise :class:`ClientUnavailable` before a world is started for nothing."""
    unmet = unmet_requirements(client.requires)
    if unmet:
        raise ClientUnavailable(f"client {client.name!r} requires {', '.join(unmet)}")
    if client.kind not in SUPPORTED_KINDS:
        raise ClientUnavailable(
            f"client kind {client.kind!r} is not supported by the scenario runner yet "
            "(issue [clients])"
        )
    if client.kind == "app":
        try:
            import simulators.apps  # noqa: F401
        except ImportError as exc:
            raise ClientUnavailable(f"the reference apps are not available: {exc}") from None


async def _stop_client(task: asyncio.Task[None], recorder: Recorder) -> list[str]:
    """Wait for a client told to stop; cancel it after the grace. Returns a crash, if any."""
    try:
        await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        recorder.record("client.error", stage="stop", error="did not stop in time; cancelled")
        return []
    except asyncio.CancelledError:
        if not task.done():
            task.cancel()
        raise
    except Exception as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        text = "".join(lines).strip()
        recorder.record("client.error", stage="crash", error=text)
        return [text]
    return []
