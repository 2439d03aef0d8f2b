"""Profile the server process under load with py-spy, and summarise where its time goes.

``python -m bench.run --profile`` records the gateway process during the message and
connection benchmarks with ``py-spy record --format raw`` (collapsed stacks, one
``frame;frame;... count`` line per stack) and writes ``bench/results/profile-*.txt`` plus
a summary: the functions with the most samples on-CPU at the top of the stack (self) and
anywhere in it (inclusive). py-spy is optional (``pip install py-spy``); without it the
profile is skipped with a note.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else None


def start(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds`` into ``output``; None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen(  # noqa: S603 - py-spy found on PATH or beside Python, fixed args
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _name(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``module.py:func``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    short = "/".join(Path(path).parts[-2:]) if path else "?"
    return f"{short}:{match['func']}"


@dataclass(frozen=True)
class Summary:
    total: int
    self_top: list[tuple[str, int]]
    inclusive_top: list[tuple[str, int]]

    def lines(self, limit: int = 20) -> list[str]:
        out = [f"samples: {self.total}", "", "self (top of stack):"]
        out += [f"  {100 * n / self.total:5.1f}%  {name}" for name, n in self.self_top[:limit]]
        out += ["", "inclusive:"]
        out += [f"  {100 * n / self.total:5.1f}%  {name}" for name, n in self.inclusive_top[:limit]]
        return out


def summarize(collapsed: Path, *, top: int = 40) -> Summary:
    """Self and inclusive sample counts by function from a py-spy raw (collapsed) file."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";")]
        # The first frames are the thread's name and process; keep Python frames only.
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return Summary(total, self_counts.most_common(top), inclusive.most_common(top))
