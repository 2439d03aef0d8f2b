"""``iot-harness run`` and ``iot-harness list``: scenarios from the command line, for CI.

Issue [scenarios], "CLI". ``harness.cli`` mounts both as subcommands (``add_*_arguments``
on a subparser, then ``run_command`` / ``list_command``), the way it mounts
:mod:`harness.report.command`; :func:`main` runs them on their own and takes ``argv`` so
it is testable in process (STYLE.md §10)::

    iot-harness run PATH... [--client NAME] [--report OUT.html] [--events OUT.jsonl]
                            [--junit OUT.xml] [--timeout-scale X] [--settle S] [-j N]
    iot-harness list [PATH...]

``run`` takes scenario files and folders (every ``*.yaml`` / ``*.yml`` below them), runs
each scenario once per client (:mod:`harness.scenario.runner`), prints one line per run
as it finishes, then a summary table and, for every run that failed, its failed
expectations with the nearest events and the timeline (the table and the explanations in
the order of the files, whatever the order of finishing). ``-j/--jobs N`` runs up to N
runs at once, each in a worker process of its own, fewer while the machine's CPUs are
busy (:mod:`harness.scenario.catalogue`: issue 7's 60 s goal for the whole catalogue,
which mostly waits); ``0`` or ``auto``: up to 8 per CPU; the default, 1, runs them one
after another in this process.
Exit code 0 when every run passed, was a known failure (xfailed) or was skipped; 1 when
any failed, errored or unexpectedly passed; 2 for harness misuse (a scenario file that
does not load, an unwritable output, a bad option), with every problem on stderr and
nothing run. ``--events`` writes the run's events JSONL
(DESIGN.md contract 2, scenarios bracketed by ``scenario.started`` / ``scenario.finished``),
``--report`` the HTML report (:mod:`harness.report`), ``--junit`` a JUnit XML file for CI
(xfailed runs are skipped test cases, as pytest writes them); with ``--jobs`` the events
are still one run after another in the order of the files. Ctrl-C stops the runs (and
their worker processes) cleanly, prints ``interrupted`` and exits 130.

``list`` prints each scenario's name, clients and one-line purpose (default folder:
``scenarios``); exit code 2 when a file does not load (listed on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from harness.errors import ConfigError
from harness.scenario.catalogue import (
    AUTO_JOBS_PER_CPU,
    SUFFIXES,
    catalogue_cases,
    run_cases,
    scenario_files,
)
from harness.scenario.loader import ScenarioError, load_scenario
from harness.scenario.model import Scenario
from harness.scenario.runner import DEFAULT_SETTLE, ScenarioOutcome

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "SUFFIXES",
    "add_list_arguments",
    "add_run_arguments",
    "list_command",
    "main",
    "run_command",
    "scenario_files",
]

EXIT_FAILED = 1
#: Harness misuse (argparse's usage-error code, as the other subcommands).
EXIT_USAGE = 2
#: Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
RUN_DESCRIPTION = (
    "Run scenario files (or every scenario under folders) against their clients; one line "
    "per run, a summary, the failures explained; exit code 1 if any failed."
)
LIST_DESCRIPTION = "List scenario files with their clients and one-line purpose."


def _load_all(paths: Iterable[Path], err: TextIO) -> list[Scenario] | None:
    """Every scenario, or ``None`` after printing every problem."""
    scenarios: list[Scenario] = []
    bad = False
    try:
        files = scenario_files(paths)
    except ConfigError as exc:
        err.write(f"iot-harness: error: {exc}\n")
        return None
    for path in files:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as exc:
            err.write(f"{exc}\n")
            bad = True
    return None if bad else scenarios


# run


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be seconds >= 0, got {text}")
    return value


def _jobs(text: str) -> int:
    """``--jobs``: a whole number >= 0, or ``auto`` (= 0, :func:`auto_jobs`)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or 'auto': {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: automatic), got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``run`` on ``parser`` (a subparser of ``iot-harness``)."""
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="scenario files or folders"
    )
    parser.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help="run only this client of each scenario (repeatable)",
    )
    parser.add_argument("--report", type=Path, metavar="OUT.html", help="write the HTML report")
    parser.add_argument(
        "--events", type=Path, metavar="OUT.jsonl", help="write every run's events (JSONL)"
    )
    parser.add_argument("--junit", type=Path, metavar="OUT.xml", help="write a JUnit XML file")
    parser.add_argument(
        "--timeout-scale",
        type=_positive,
        default=1.0,
        metavar="X",
        help="multiply every scenario's timeout (a slow CI machine)",
    )
    parser.add_argument(
        "--settle",
        type=_seconds,
        default=DEFAULT_SETTLE,
        metavar="S",
        help=f"seconds a run goes on once its verdict is known (default {DEFAULT_SETTLE:g})",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N",
        help=(
            "run up to N runs at once, each in a worker process, fewer while the CPUs are "
            f"busy; 0 or 'auto': up to {AUTO_JOBS_PER_CPU} per CPU (default 1: one after "
            "another)"
        ),
    )


def run_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Carry out a parsed ``run`` command; returns the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    scenarios = _load_all(args.paths, err)
    if scenarios is None:
        return EXIT_USAGE
    cases = catalogue_cases(scenarios, clients=args.client or None)
    if not cases:
        err.write("iot-harness run: error: no scenario to run (check the paths and --client)\n")
        return EXIT_USAGE
    events: Path | None = args.events
    try:
        if events is not None:
            events.parent.mkdir(parents=True, exist_ok=True)
            events.write_text("", encoding="utf-8")
    except OSError as exc:
        err.write(f"iot-harness run: error: cannot write {events}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    width = max(len(case.id) for case in cases)

    def progress(outcome: ScenarioOutcome) -> None:
        out.write(_progress_line(outcome, width) + "\n")
        out.flush()

    started = time.monotonic()
    try:
        outcomes = run_cases(
            cases,
            jobs=getattr(args, "jobs", 1),
            events_path=events,
            timeout_scale=args.timeout_scale,
            settle=args.settle,
            on_outcome=progress,
        )
    except KeyboardInterrupt:
        err.write("iot-harness run: interrupted\n")
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started
    out.write("\n" + _summary(outcomes, elapsed) + "\n")
    for outcome in outcomes:
        if not outcome.ok:
            out.write("\n" + outcome.explain() + "\n")
    try:
        _write_outputs(args, outcomes, out)
    except (OSError, ConfigError) as exc:
        err.write(f"iot-harness run: error: {exc}\n")
        return EXIT_USAGE
    return 0 if all(o.ok for o in outcomes) else EXIT_FAILED


_WORDS = {
    "passed": "PASS",
    "failed": "FAIL",
    "xfailed": "XFAIL",
    "xpassed": "XPASS",
    "skipped": "SKIP",
    "error": "ERROR",
}


def _detail(outcome: ScenarioOutcome) -> str:
    if outcome.verdict in ("skipped", "error"):
        return outcome.reason or ""
    held = sum(1 for r in outcome.results if r.ok)
    text = f"{held}/{len(outcome.results)} expectations held"
    if outcome.verdict in ("xfailed", "xpassed") and outcome.reason:
        text += f"; known failure: {outcome.reason}"
    return text


def _progress_line(outcome: ScenarioOutcome, width: int) -> str:
    return (
        f"{_WORDS[outcome.verdict]:<5}  {outcome.id:<{width}}  {outcome.duration:6.2f} s  "
        f"{_detail(outcome)}"
    )


def _summary(outcomes: Sequence[ScenarioOutcome], elapsed: float) -> str:
    rows = [("scenario", "client", "result", "time", "expectations")]
    for outcome in outcomes:
        held = sum(1 for r in outcome.results if r.ok)
        rows.append(
            (
                outcome.scenario.name,
                outcome.client.name if outcome.client is not None else "-",
                _WORDS[outcome.verdict],
                f"{outcome.duration:.2f} s",
                f"{held}/{len(outcome.results)}" if outcome.results else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    table = [line(rows[0]), line(["-" * w for w in widths])]
    table.extend(line(row) for row in rows[1:])
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.verdict] = counts.get(outcome.verdict, 0) + 1
    order = ("passed", "failed", "xfailed", "xpassed", "skipped", "error")
    tally = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
    runs = f"{len(outcomes)} run{'s' if len(outcomes) != 1 else ''}"
    table.append(f"{runs} in {elapsed:.1f} s: {tally}")
    return "\n".join(table)


def _write_outputs(
    args: argparse.Namespace, outcomes: Sequence[ScenarioOutcome], out: TextIO
) -> None:
    if args.report is not None:
        from harness.report import write_html

        source = str(args.events) if args.events is not None else None
        write_html([o.report() for o in outcomes], args.report, source=source)
        out.write(f"report: {args.report}\n")
    if args.events is not None:
        out.write(f"events: {args.events}\n")
    if args.junit is not None:
        junit_xml(outcomes, args.junit)
        out.write(f"junit: {args.junit}\n")


def junit_xml(outcomes: Sequence[ScenarioOutcome], path: Path) -> Path:
    """Write the runs as JUnit XML (one ``testcase`` per run, classname = scenario)."""
    suite = ET.Element(
        "testsuite",
        name="iot-harness",
        tests=str(len(outcomes)),
        failures=str(sum(o.verdict in ("failed", "xpassed") for o in outcomes)),
        errors=str(sum(o.verdict == "error" for o in outcomes)),
        skipped=str(sum(o.verdict in ("skipped", "xfailed") for o in outcomes)),
        time=f"{sum(o.duration for o in outcomes):.3f}",
    )
    for outcome in outcomes:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=outcome.scenario.name,
            name=outcome.client.name if outcome.client is not None else outcome.scenario.name,
            file=outcome.scenario.path or "",
            time=f"{outcome.duration:.3f}",
        )
        if outcome.verdict in ("failed", "xpassed"):
            failure = ET.SubElement(case, "failure", message=outcome.summary())
            failure.text = outcome.explain()
        elif outcome.verdict == "error":
            error = ET.SubElement(case, "error", message=outcome.summary())
            error.text = outcome.explain()
        elif outcome.verdict == "skipped":
            ET.SubElement(case, "skipped", message=outcome.reason or "")
        elif outcome.verdict == "xfailed":
            ET.SubElement(case, "skipped", type="pytest.xfail", message=outcome.reason or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites", name="iot-harness")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


# list


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``list`` on ``parser``."""
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="scenario files or folders (default: scenarios)",
    )


def list_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Carry out a parsed ``list`` command; returns the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        files = scenario_files(args.paths or [Path("scenarios")])
    except ConfigError as exc:
        err.write(f"iot-harness list: error: {exc}\n")
        return EXIT_USAGE
    rows: list[tuple[str, str, str]] = []
    bad = 0
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            err.write(f"{exc}\n")
            bad += 1
            continue
        clients = ", ".join(
            c.name + (" (known failure)" if c.known_failure else "") for c in scenario.clients
        )
        rows.append((scenario.name, clients or "-", " ".join(scenario.purpose.split())))
    if rows:
        name_w = max(len(r[0]) for r in rows)
        for name, clients, purpose in rows:
            out.write(f"{name:<{name_w}}  {purpose}\n")
            out.write(f"{'':<{name_w}}  clients: {clients}\n")
    out.write(f"{len(rows)} scenario{'s' if len(rows) != 1 else ''}")
    out.write(f", {bad} not loaded\n" if bad else "\n")
    return EXIT_USAGE if bad else 0


# On its own


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``run`` and ``list`` on their own (``python -m harness.scenario.cli_commands``)."""
    parser = _Parser(prog="iot-harness")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_run_arguments(commands.add_parser("run", help=RUN_DESCRIPTION, description=RUN_DESCRIPTION))
    add_list_arguments(
        commands.add_parser("list", help=LIST_DESCRIPTION, description=LIST_DESCRIPTION)
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error, already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command == "run":
        return run_command(args, stdout=stdout, stderr=stderr)
    return list_command(args, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
