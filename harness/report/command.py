"""``iot-harness report``: the HTML report (or a text timeline) of an events JSONL file.

Issue [scenarios], "Report" and "CLI". The command line of ``harness.cli`` mounts this as
a subcommand (:func:`add_arguments` on its subparser, then :func:`run`); :func:`main`
runs it on its own, taking ``argv`` so it is testable in process (STYLE.md §10)::

    iot-harness report EVENTS.jsonl [-o OUT.html] [--title TEXT] [--max-items N]
                       [--text [--width N]]

Writes the page (default: the events file with ``.html``) and prints its path on stdout;
``--text`` prints the compact text timeline of every scenario instead of writing a page.
A missing or malformed events file or an unwritable output is one line on stderr and
exit code 2 (harness misuse, like the other subcommands), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from harness.errors import ConfigError
from harness.report.files import load_events, render_file, reports_from_events
from harness.report.terminal import render_text
from harness.report.timeline import MAX_ITEMS

__all__ = ["EXIT_USAGE", "add_arguments", "main", "run"]

#: Exit code for a bad events file or output (argparse's usage-error code, as harness.cli).
EXIT_USAGE = 2
DESCRIPTION = (
    "Render an events JSONL file (from `iot-harness run` or `serve`) as one self-contained "
    "HTML page: per scenario its expectations, a sequence diagram and the event table."
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``report`` on ``parser`` (a subparser of ``iot-harness``)."""
    parser.add_argument("events", type=Path, metavar="EVENTS.jsonl", help="events JSONL file")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.html",
        help="where to write the page (default: the events file with .html)",
    )
    parser.add_argument("--title", help="page title (default: names the events file)")
    parser.add_argument(
        "--max-items",
        type=_positive,
        default=MAX_ITEMS,
        metavar="N",
        help=f"items per diagram before it is thinned (default {MAX_ITEMS}); "
        "the event table always has every event",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="print a compact text timeline of each scenario instead of writing a page",
    )
    parser.add_argument(
        "--width", type=_positive, default=100, metavar="N", help="line width for --text"
    )


def run(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Carry out a parsed ``report`` command; returns the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        if args.text:
            events_path: Path = args.events
            reports = reports_from_events(load_events(events_path), name=events_path.stem)
            texts = [render_text(r, max_lines=args.max_items, width=args.width) for r in reports]
            out.write("\n\n".join(texts) + "\n")
            return 0
        page = render_file(args.events, args.output, title=args.title, max_items=args.max_items)
    except ConfigError as exc:
        err.write(f"iot-harness report: error: {exc}\n")
        return EXIT_USAGE
    out.write(f"{page}\n")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``iot-harness report`` on its own (``python -m harness.report.command ...``)."""
    parser = _Parser(prog="iot-harness report", description=DESCRIPTION)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error, already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return run(args, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
