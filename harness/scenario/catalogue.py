"""The scenario catalogue: its files, its cases, and running many cases side by side.

Issue 7 [bench], goal 4: the wall time of the whole catalogue (``scenarios/``, ~180 runs)
must be at most 60 s on a 2-core machine. Run one after another the catalogue takes
minutes, yet it uses the CPU a fraction of that time: a run mostly waits (AWS's limits
compressed into seconds, a client's backoff, ``settle``). :func:`run_cases` with ``jobs``
above 1 therefore runs cases in worker processes, several at a time::

    outcomes = run_catalogue("scenarios", jobs=0)       # 0: auto_jobs(len(cases))
    exit_code = 0 if all(o.ok for o in outcomes) else 1

**Why processes, one per case.** A run's world is process-global in places: in-process
clients (paho, the reference apps) run paho's network threads, resolver overrides are
process-wide, and a client that hangs a thread or crashes in C must not take the other
cases down. So each case runs in its own worker process, which ends with the case. Not a
:class:`concurrent.futures.ProcessPoolExecutor`: when one of its workers dies, the pool is
"broken" and every pending case fails with it; here a worker that dies (a signal, the OOM
killer, ``os._exit``) turns into an ``error`` outcome for its case only, and a worker that
outlives (its case's ``timeout`` + ``worker_grace``) x ``timeout_scale`` + ``settle`` is
killed with its process group (the watchdog), so nothing hangs the catalogue.

**Why forkserver.** Forking the CLI process itself is unsafe once it has threads, and a
fresh interpreter per case (``spawn``) would import the harness ~180 times (0.3 s of CPU
each on this machine, as much as a whole case). The ``forkserver`` start method forks every worker
from a small server process that imported the harness once (``_PRELOAD``), so a worker
starts in milliseconds with nothing inherited but those imports (and not the parent's
main script: :func:`_main_module_hidden`). Multiprocessing gives the worker the parent's
current folder and ``sys.path``; the task carries the parent's environment, which the
forkserver (started once) would otherwise freeze at its own start.
Where ``forkserver`` does not exist the workers are spawned.

**Worker and outcome.** A worker leads its own process group (a Ctrl-C on the terminal
reaches the parent only, which then stops the workers as described below, and the watchdog
can kill a worker with its client subprocesses), sends its stdout/stderr to a log file (a
stray print from a library does not interleave with the progress lines; a dying worker's
last line goes into its ``error`` reason), runs :func:`~harness.scenario.runner.run_scenario`
and pickles the :class:`~harness.scenario.runner.ScenarioOutcome` to a file; the parent
reads it when the worker's sentinel fires (a file, not a pipe: a worker never blocks on a
parent that is busy elsewhere). An outcome whose events hold something that does not
pickle goes back with its event fields as the JSONL has them (JSON, ``str`` for the rest).

**Events JSONL.** Each worker writes its run's events to a file of its own (never two
writers on one file, so never interleaved lines); the parent appends them to
``events_path`` in the catalogue's order as soon as every earlier case is done. A worker
that died leaves what it wrote (its last, incomplete line dropped) and the parent closes
the run with the ``scenario.started`` / ``scenario.finished`` brackets it lacks, so the
file stays what :mod:`harness.report.files` reads.

**Load.** A run's expectations have windows in world time ("within 2.5 s of the start"),
and the world starts before its client: a case that gets too little CPU starts its client
late and misses a window it makes alone. The catalogue needs ~0.3 s of CPU per case,
most of it as the case starts (keys, TLS contexts, a client's interpreter), so many cases
starting at once on 2 cores is what makes them miss. Measured on issue 7's machine: 16
cases at once with no limit but ``jobs`` took 28 s but 1-2 runs failed each time (9
and 72 with another benchmark running); 8 took 50-56 s and still failed some runs while
another benchmark ran. So beyond one case per CPU, a case starts only when the machine
(all of it: other jobs on a CI runner count) had ``spare_cpus`` CPUs idle over the last
``_SAMPLE`` seconds (:class:`_CpuGauge`, ``/proc/stat``): 34-37 s with no failure on a
quiet machine, 58-71 s with no failure next to a CPU-bound benchmark. ``jobs`` is the
ceiling.

**Order.** ``on_outcome`` is called as each case finishes (progress); the returned list is
in the catalogue's order whatever the order of finishing.

**Ctrl-C** (``KeyboardInterrupt`` in the parent): every worker gets SIGINT, which asyncio
turns into cancelling its run, so the client, the fault plan and the world stop the way
they stop at the end of a run; after ``_STOP_WAIT`` seconds (or at a second Ctrl-C) the
workers left are killed with their process groups, and the ``KeyboardInterrupt`` goes on
to the caller (``iot-harness run`` prints one line and exits 130).

``jobs=1`` is today's behaviour exactly: every case in this process, one after another,
each in a fresh event loop (:func:`~harness.scenario.runner.run_scenario`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.events import Event
from harness.scenario.expectations import ExpectationResult
from harness.scenario.loader import load_scenario
from harness.scenario.model import ClientSpec, Scenario
from harness.scenario.runner import (
    DEFAULT_SETTLE,
    ScenarioOutcome,
    case_id,
    check_run_options,
    finished_record,
    run_scenario,
    scenario_cases,
    started_record,
)

__all__ = [
    "AUTO_JOBS_PER_CPU",
    "SPARE_CPUS",
    "SUFFIXES",
    "WORKER_GRACE",
    "Case",
    "OutcomeCallback",
    "auto_jobs",
    "catalogue_cases",
    "run_cases",
    "run_catalogue",
    "scenario_files",
]

SUFFIXES = (".yaml", ".yml")
#: Cases run at most at once per CPU with ``jobs=0`` (auto); the CPU gauge (module
#: docstring, "Load") decides how many actually run. Measured on issue 7's 2-core machine
#: (whole catalogue, 177 runs, ~50 s of CPU): with the gauge, 16 at most took 34-37 s
#: on a quiet machine and no run failed; more (24, 32) is no faster.
AUTO_JOBS_PER_CPU = 8
#: Seconds a worker may take beyond its case's timeout and settle (starting and stopping
#: the world, stopping the client) before the watchdog kills it; scaled by timeout_scale.
WORKER_GRACE = 60.0
#: CPUs' worth of idle time the machine must have had over the last ``_SAMPLE`` seconds
#: for one more case to start beyond one per CPU (module docstring, "Load").
SPARE_CPUS = 0.5
#: Seconds of CPU accounting behind a decision to start a case (and so at most this many
#: starts a second beyond one per CPU: a case's CPU comes mostly at its start).
_SAMPLE = 0.1
#: Seconds the workers have to wind down after Ctrl-C before they are killed.
_STOP_WAIT = 10.0
#: A worker's exit status when interrupted (128 + SIGINT, as a shell reports it).
_INTERRUPTED = 130
#: Imported once by the forkserver, so no worker imports them again (module docstring).
#: A module that is not installed is skipped by the forkserver.
_PRELOAD = (
    "harness.scenario.catalogue",
    "harness.scenario.worlds",
    "harness.scenario.clients",
    "harness.faults",
    "harness.world",
    "harness.report",
    "paho.mqtt.client",
    "simulators.apps",
    "simulators.dyson.world",
)
#: Event kinds that bracket a run in the JSONL (written by the runner, not the world).
_BRACKETS = frozenset({"scenario.started", "scenario.finished"})

OutcomeCallback = Callable[[ScenarioOutcome], None]


@dataclass(frozen=True)
class Case:
    """One run of the catalogue: a scenario and one of its clients (``None``: none)."""

    scenario: Scenario
    client: ClientSpec | None

    @property
    def id(self) -> str:
        """``name[client]``, as the CLI, pytest and the report name the run."""
        return case_id(self.scenario, self.client)


# Files and cases


def _skipped(relative: Path) -> bool:
    """Folders pytest does not recurse into either: hidden ones and ``node_modules``."""
    return any(part == "node_modules" or part.startswith(".") for part in relative.parts[:-1])


def scenario_files(paths: Iterable[Path]) -> list[Path]:
    """The scenario files among ``paths``: files as given, folders searched recursively
    for ``*.yaml`` / ``*.yml`` (sorted). Raises :class:`ConfigError` for a missing path."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix in SUFFIXES and p.is_file() and not _skipped(p.relative_to(path))
                )
            )
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"no such file or folder: {path}")
    return list(dict.fromkeys(out))


def catalogue_cases(
    scenarios: Iterable[Scenario], *, clients: Iterable[str] | None = None
) -> list[Case]:
    """Every run of ``scenarios`` in order: one per client (or one without a client);
    with ``clients``, only the clients of those names (``iot-harness run --client``)."""
    wanted = set(clients) if clients is not None else None
    return [
        Case(scenario, client)
        for scenario in scenarios
        for client in scenario_cases(scenario)
        if wanted is None or (client is not None and client.name in wanted)
    ]


def auto_jobs(cases: int, *, cpus: int | None = None) -> int:
    """How many cases to run at once for ``jobs=0``: :data:`AUTO_JOBS_PER_CPU` per CPU,
    at most one per case, at least one."""
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(cases, AUTO_JOBS_PER_CPU * max(1, count)))


# Running


def run_catalogue(
    paths: str | Path | Iterable[str | Path],
    *,
    jobs: int = 0,
    clients: Iterable[str] | None = None,
    events_path: Path | None = None,
    timeout_scale: float = 1.0,
    settle: float = DEFAULT_SETTLE,
    on_outcome: OutcomeCallback | None = None,
) -> list[ScenarioOutcome]:
    """Run every scenario file under ``paths`` (files, or folders searched as
    :func:`scenario_files` does) for each of its clients; see :func:`run_cases`.

    ``jobs`` defaults to 0 (automatic, :func:`auto_jobs`), the fast way for a whole
    catalogue. Raises :class:`~harness.scenario.loader.ScenarioError` for the first file
    that does not load, :class:`ConfigError` for a missing path, bad options or no case
    (``clients`` names none) — before anything runs.
    """
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    scenarios = [load_scenario(path) for path in scenario_files(Path(p) for p in given)]
    cases = catalogue_cases(scenarios, clients=clients)
    if not cases:
        raise ConfigError("no scenario to run (check the paths and the client names)")
    return run_cases(
        cases,
        jobs=jobs,
        events_path=events_path,
        timeout_scale=timeout_scale,
        settle=settle,
        on_outcome=on_outcome,
    )


def run_cases(
    cases: Sequence[Case],
    *,
    jobs: int = 1,
    events_path: Path | None = None,
    timeout_scale: float = 1.0,
    settle: float = DEFAULT_SETTLE,
    on_outcome: OutcomeCallback | None = None,
    worker_grace: float = WORKER_GRACE,
    spare_cpus: float = SPARE_CPUS,
) -> list[ScenarioOutcome]:
    """Run ``cases``; the outcomes in the order of ``cases``.

    ``jobs``: 1 runs them one after another in this process; N > 1 runs up to N at once,
    each in a worker process of its own (module docstring); 0 picks :func:`auto_jobs`.
    ``on_outcome`` is called with each outcome as its case finishes. ``events_path``, when
    given, is emptied, then gets every run's events in the order of ``cases``.
    ``worker_grace``: seconds beyond a case's timeout and settle before its worker is
    killed (an ``error`` outcome), times ``timeout_scale``. ``spare_cpus``: beyond one case
    per CPU, a case starts only while this many CPUs were idle (module docstring, "Load");
    0 starts a case whenever fewer than ``jobs`` run.

    Raises :class:`ConfigError` for bad options; a ``KeyboardInterrupt`` stops the workers
    first. What a scenario, its client or a worker does is an outcome, never an exception.
    """
    check_run_options(timeout_scale=timeout_scale, settle=settle)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ConfigError(f"jobs must be a whole number >= 0 (0: automatic), got {jobs!r}")
    if not (worker_grace >= 0 and worker_grace < float("inf")):
        raise ConfigError(f"worker_grace must be seconds >= 0, got {worker_grace}")
    if not (spare_cpus >= 0 and spare_cpus < float("inf")):
        raise ConfigError(f"spare_cpus must be a number >= 0, got {spare_cpus}")
    if events_path is not None:
        events_path.parent.mkdir(parents=True, exist_ok=True)
        events_path.write_text("", encoding="utf-8")
    if jobs == 0:
        jobs = auto_jobs(len(cases))
    if jobs == 1 or not cases:
        return _run_here(cases, events_path, timeout_scale, settle, on_outcome)
    with tempfile.TemporaryDirectory(prefix="iot-harness-run-") as folder:
        workers = _Workers(
            cases,
            jobs=jobs,
            folder=Path(folder),
            events_path=events_path,
            timeout_scale=timeout_scale,
            settle=settle,
            on_outcome=on_outcome,
            worker_grace=worker_grace,
            spare_cpus=spare_cpus,
        )
        return workers.run()


def _run_here(
    cases: Sequence[Case],
    events_path: Path | None,
    timeout_scale: float,
    settle: float,
    on_outcome: OutcomeCallback | None,
) -> list[ScenarioOutcome]:
    """One after another in this process (``jobs=1``), each in a fresh event loop."""
    outcomes: list[ScenarioOutcome] = []
    for case in cases:
        outcome = run_scenario(
            case.scenario,
            client=case.client,
            events_path=events_path,
            timeout_scale=timeout_scale,
            settle=settle,
        )
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


# Workers


@dataclass(frozen=True, kw_only=True)
class _Task:
    """What a worker process gets: the case, where to put what it produces, and the
    parent's environment (module docstring, "Why forkserver")."""

    scenario: Scenario
    client: ClientSpec | None
    events: Path | None
    result: Path
    log: Path
    env: dict[str, str]
    timeout_scale: float
    settle: float


@dataclass
class _Worker:
    index: int
    task: _Task
    process: BaseProcess
    #: Seconds it may run (the watchdog's limit) and when they are up (monotonic).
    budget: float
    deadline: float


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(_PRELOAD))
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - not on Linux


class _Workers:
    """The parent's side of a parallel run: start, watch, collect, stop."""

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        jobs: int,
        folder: Path,
        events_path: Path | None,
        timeout_scale: float,
        settle: float,
        on_outcome: OutcomeCallback | None,
        worker_grace: float,
        spare_cpus: float,
    ) -> None:
        self.cases = cases
        self.jobs = jobs
        self.folder = folder
        self.events_path = events_path
        self.timeout_scale = timeout_scale
        self.settle = settle
        self.on_outcome = on_outcome
        self.worker_grace = worker_grace
        self.outcomes: list[ScenarioOutcome | None] = [None] * len(cases)
        self.live: dict[int, _Worker] = {}  # by sentinel
        self.next_case = 0
        self.flushed = 0
        self.spare_cpus = spare_cpus
        cpus = os.cpu_count() or 1
        self.floor = min(jobs, cpus)
        self.gauge = _CpuGauge.open(cpus) if spare_cpus > 0 else None

    def run(self) -> list[ScenarioOutcome]:
        context = _context()
        try:
            while self.next_case < len(self.cases) or self.live:
                while self.next_case < len(self.cases) and self._may_start():
                    self._start(context, self.next_case)
                    self.next_case += 1
                self._wait()
        except BaseException:
            self._stop_all()
            raise
        done = [o for o in self.outcomes if o is not None]
        assert len(done) == len(self.cases)
        return done

    def _start(self, context: BaseContext, index: int) -> None:
        case = self.cases[index]
        task = _Task(
            scenario=case.scenario,
            client=case.client,
            events=self.folder / f"{index}.jsonl" if self.events_path is not None else None,
            result=self.folder / f"{index}.outcome",
            log=self.folder / f"{index}.log",
            env=dict(os.environ),
            timeout_scale=self.timeout_scale,
            settle=self.settle,
        )
        process = context.Process(  # type: ignore[attr-defined]
            target=_work, args=(task,), name=f"iot-harness-run-{index}", daemon=True
        )
        with _main_module_hidden():
            process.start()
        budget = (case.scenario.timeout + self.worker_grace) * self.timeout_scale + self.settle
        worker = _Worker(index, task, process, budget, time.monotonic() + budget)
        self.live[process.sentinel] = worker

    def _may_start(self) -> bool:
        """Whether the next case may start now: a free slot, and either fewer cases
        running than there are CPUs or CPU to spare (module docstring, "Load")."""
        if len(self.live) >= self.jobs:
            return False
        if self.gauge is None:
            return True
        if len(self.live) < self.floor:
            self.gauge.reset()  # the next decision looks only at the time after this start
            return True
        idle = self.gauge.idle_cpus(min_window=_SAMPLE)
        if idle is None:
            return False
        self.gauge.reset()  # after a start, or to judge the next _SAMPLE seconds afresh
        return idle >= self.spare_cpus

    def _wait(self) -> None:
        now = time.monotonic()
        timeout = max(0.0, min(w.deadline for w in self.live.values()) - now)
        if self.next_case < len(self.cases) and len(self.live) < self.jobs:
            timeout = min(timeout, _SAMPLE)  # held back by the gauge: look again soon
        ready = multiprocessing.connection.wait(list(self.live), timeout)
        for sentinel in ready:
            assert isinstance(sentinel, int)
            worker = self.live.pop(sentinel)
            self._finish(worker, self._collect(worker))
        now = time.monotonic()
        for sentinel, worker in list(self.live.items()):
            if now >= worker.deadline:
                del self.live[sentinel]
                _kill(worker.process)
                reason = f"the worker process did not finish within {worker.budget:g} s; killed"
                self._finish(worker, self._died(worker, reason))

    def _collect(self, worker: _Worker) -> ScenarioOutcome:
        worker.process.join()
        code = worker.process.exitcode
        result = worker.task.result
        if result.exists():
            try:
                with result.open("rb") as data:
                    outcome = pickle.load(data)  # noqa: S301 - written by our own worker
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
                return self._died(worker, f"its outcome could not be read back: {exc}")
            if isinstance(outcome, ScenarioOutcome):
                return outcome
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        elif code == _INTERRUPTED:
            how = "interrupted"
        else:
            how = f"exit status {code}"
        return self._died(worker, f"the worker process died ({how}) before the run ended")

    def _died(self, worker: _Worker, reason: str) -> ScenarioOutcome:
        """The ``error`` outcome of a case whose worker died or was killed, with the
        events it recorded; its events file closed with the brackets it lacks."""
        _kill_group(worker.process.pid)  # its client subprocesses, if any are left
        task = worker.task
        last = _last_line(task.log)
        if last:
            reason += f"; its last output: {last}"
        records = _complete_records(task.events) if task.events is not None else []
        events = tuple(_event(r) for r in records if r.get("kind") not in _BRACKETS)
        outcome = ScenarioOutcome(
            scenario=task.scenario,
            client=task.client,
            verdict="error",
            events=events,
            duration=max((e.t for e in events), default=0.0),
            reason=reason,
        )
        if task.events is not None:
            lines = [r for r in records if r.get("kind") != "scenario.finished"]
            if not any(r.get("kind") == "scenario.started" for r in lines):
                lines.insert(0, started_record(task.scenario, task.client))
            lines.append(finished_record(outcome))
            text = "".join(json.dumps(r, default=str) + "\n" for r in lines)
            task.events.write_text(text, encoding="utf-8")
        return outcome

    def _finish(self, worker: _Worker, outcome: ScenarioOutcome) -> None:
        self.outcomes[worker.index] = outcome
        with contextlib.suppress(OSError):
            worker.task.result.unlink(missing_ok=True)
            worker.task.log.unlink(missing_ok=True)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        self._flush()

    def _flush(self) -> None:
        """Append the events of every finished case whose predecessors are all done."""
        while self.flushed < len(self.cases) and self.outcomes[self.flushed] is not None:
            if self.events_path is not None:
                part = self.folder / f"{self.flushed}.jsonl"
                if part.exists():
                    with self.events_path.open("ab") as out, part.open("rb") as data:
                        out.write(data.read())
                    part.unlink()
            self.flushed += 1

    def _stop_all(self) -> None:
        """Ctrl-C (or a failure in the parent): SIGINT to every worker, a short wait,
        then SIGKILL to the process groups of those left (module docstring)."""
        workers = list(self.live.values())
        self.live.clear()
        for worker in workers:
            if worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(worker.process.pid, signal.SIGINT)
        deadline = time.monotonic() + _STOP_WAIT
        try:
            alive = [w.process.sentinel for w in workers if w.process.is_alive()]
            while alive and time.monotonic() < deadline:
                multiprocessing.connection.wait(alive, max(0.0, deadline - time.monotonic()))
                alive = [w.process.sentinel for w in workers if w.process.is_alive()]
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: no more waiting
        finally:
            for worker in workers:
                _kill(worker.process)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a worker without the parent's ``__main__``.

    Multiprocessing re-imports the parent's main script (``__mp_main__``) in every
    forkserver or spawn child, in case the target lives there. Ours never does (it is
    :func:`_work`), and the re-import would cost an import of the caller's script per case
    (pytest, ``bench.run``) and fail outright in a script without an
    ``if __name__ == "__main__":`` guard. With a bare ``__main__`` in place while the
    process starts, multiprocessing records no main module to re-import."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _CpuGauge:
    """How many CPUs the whole machine left idle since the last reset, from the ``cpu``
    line of ``/proc/stat`` (Linux; elsewhere there is no gauge and ``jobs`` alone rules).

    Machine-wide on purpose: the cases' own workers and clients count, and so does
    whatever else runs on a shared CI machine."""

    def __init__(self, cpus: int, path: Path) -> None:
        self.cpus = cpus
        self.path = path
        self.since = time.monotonic()
        self.last = self._read()

    @classmethod
    def open(cls, cpus: int, path: Path = Path("/proc/stat")) -> _CpuGauge | None:
        try:
            return cls(cpus, path)
        except (OSError, ValueError, IndexError):
            return None

    def _read(self) -> tuple[int, int]:
        """(idle, total) clock ticks of all CPUs since boot."""
        with self.path.open(encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait; user..steal

    def reset(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.last = self._read()
        self.since = time.monotonic()

    def idle_cpus(self, *, min_window: float) -> float | None:
        """CPUs idle on average since the last reset; ``None`` while that is shorter than
        ``min_window`` seconds (too few clock ticks to tell) or unreadable."""
        if time.monotonic() - self.since < min_window:
            return None
        try:
            idle, total = self._read()
        except (OSError, ValueError, IndexError):
            return None
        d_idle, d_total = idle - self.last[0], total - self.last[1]
        if d_total <= 0:
            return None
        return self.cpus * d_idle / d_total


def _kill(process: BaseProcess) -> None:
    """Kill a worker and its process group (its client subprocesses), then reap it."""
    if process.pid is not None:
        _kill_group(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)
    process.join()


def _kill_group(pid: int | None) -> None:
    """SIGKILL the process group a worker leads, if it does (and the group exists).

    A worker makes itself a group leader first thing, so a group with its pid as id is
    its own: Linux does not hand out a pid still in use as a process group id."""
    if pid is None or pid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _complete_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a dead worker finished writing (an incomplete last line dropped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records: list[dict[str, Any]] = []
    for line in text.split("\n")[:-1]:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("kind"), str):
                records.append(record)
    return records


def _event(record: dict[str, Any]) -> Event:
    fields = {k: v for k, v in record.items() if k not in ("t", "kind", "conn")}
    t = record.get("t")
    conn = record.get("conn")
    return Event(
        t=float(t) if isinstance(t, int | float) else 0.0,
        kind=str(record["kind"]),
        conn=conn if isinstance(conn, str) else None,
        fields=fields,
    )


# The worker process


def _work(task: _Task) -> None:
    """A worker's life: its own process group, output to its log, the parent's
    environment, one run, the outcome pickled to ``task.result``, then exit at once
    (``os._exit``: a client's leftover non-daemon thread must not keep it alive)."""
    try:
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(task.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.environ.clear()
        os.environ.update(task.env)
        try:
            outcome = run_scenario(
                task.scenario,
                client=task.client,
                events_path=task.events,
                timeout_scale=task.timeout_scale,
                settle=task.settle,
            )
        except Exception as exc:  # a bug in the runner: this case's error, not a dead worker
            traceback.print_exc()
            outcome = ScenarioOutcome(
                scenario=task.scenario,
                client=task.client,
                verdict="error",
                reason=f"the runner failed: {type(exc).__name__}: {exc}",
            )
        part = task.result.with_suffix(".part")
        part.write_bytes(_dumps(outcome))
        part.replace(task.result)
        code = 0
    except KeyboardInterrupt:
        code = _INTERRUPTED
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _dumps(outcome: ScenarioOutcome) -> bytes:
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return pickle.dumps(_portable(outcome), protocol=pickle.HIGHEST_PROTOCOL)


def _portable(outcome: ScenarioOutcome) -> ScenarioOutcome:
    """``outcome`` with every event's fields as the events JSONL has them (JSON values,
    ``str`` for anything else), for an event field that does not pickle."""
    memo: dict[int, Event] = {}

    def event(e: Event) -> Event:
        if id(e) not in memo:
            fields = json.loads(json.dumps(dict(e.fields), default=str))
            memo[id(e)] = dataclasses.replace(e, fields=fields)
        return memo[id(e)]

    def result(r: ExpectationResult) -> ExpectationResult:
        return dataclasses.replace(
            r, events=tuple(map(event, r.events)), nearest=tuple(map(event, r.nearest))
        )

    return dataclasses.replace(
        outcome,
        events=tuple(map(event, outcome.events)),
        results=tuple(map(result, outcome.results)),
    )
