"""Running many scenario cases at once: ``iot-harness run --jobs N`` and ``run_catalogue``.

Issue 7 [bench], goal 4 (the catalogue's wall time). The cases here are tiny scenario
files whose ``command`` client is a line of Python: the parallel run must give what the
serial run gives (outcomes, exit code, JUnit, events JSONL in the files' order), a worker
that dies or hangs must be one case's ``error``, Ctrl-C must stop everything without a
traceback, and a bad ``--jobs`` is a usage error.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.events import Event
from harness.report.files import load_events
from harness.scenario import load_scenario, run_catalogue
from harness.scenario.catalogue import (
    AUTO_JOBS_PER_CPU,
    Case,
    _CpuGauge,
    _dumps,
    auto_jobs,
    catalogue_cases,
    run_cases,
)
from harness.scenario.cli_commands import main as cli_main
from harness.scenario.runner import ScenarioOutcome
from tests.timing import TIMEOUT

SETTLE = "0.1"

SCENARIO = """\
name: {name}
purpose: {purpose}
clients:
{clients}
expectations:
  - happens: {{kind: client.exited, returncode: 0}}
timeout: {timeout}
"""


def client(name: str, code: str, *, kind: str = "command") -> str:
    return f"  - name: {name}\n    kind: {kind}\n    argv: [python, -c, {json.dumps(code)}]\n"


def write(
    folder: Path,
    name: str,
    *clients: str,
    purpose: str = "a tiny case",
    timeout: float = 5,
) -> Path:
    path = folder / f"{name}.yaml"
    text = SCENARIO.format(
        name=name, purpose=purpose, clients="".join(clients), timeout=f"{timeout:g}"
    )
    path.write_text(text)
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def junit_cases(path: Path) -> list[tuple[str, str, str]]:
    """``(classname, name, what)`` per test case, ``what`` the child element or ``ok``."""
    suite = ET.parse(path).getroot()[0]  # noqa: S314 - our own file
    return [
        (case.get("classname", ""), case.get("name", ""), case[0].tag if len(case) else "ok")
        for case in suite
    ]


def brackets(path: Path) -> list[tuple[str, str, Any]]:
    """The run brackets of an events file, in file order, with the finished verdict."""
    return [
        (e.kind, str(e.get("name")), e.get("verdict"))
        for e in load_events(path)
        if e.kind.startswith("scenario.")
    ]


def without_times(text: str) -> list[str]:
    """The CLI's summary table without the times (which differ from run to run)."""
    table = text.split("\n\n")[1]
    return [" ".join(w for w in line.split() if not w[0].isdigit()) for line in table.splitlines()]


SKIPPED = "  - name: sdk\n    kind: awsiotsdk\n    requires: [no-such-package-x]\n"
KNOWN = (
    "  - name: known\n    kind: command\n    argv: [python, -c, 'raise SystemExit(1)']\n"
    "    known_failure: {reason: exits 1 on purpose}\n"
)
#: The cases of ``small_catalogue``, in the files' order.
SMALL = ["a-passes[one]", "a-passes[two]", "b-fails[exits-3]", "c-mixed[sdk]", "c-mixed[known]"]


@pytest.fixture
def small_catalogue(tmp_path: Path) -> Path:
    """Three files, five cases: two passes, a failure, a skip and a known failure."""
    folder = tmp_path / "catalogue"
    folder.mkdir()
    write(folder, "a-passes", client("one", "pass"), client("two", "import sys; sys.exit(0)"))
    write(folder, "b-fails", client("exits-3", "raise SystemExit(3)"))
    write(folder, "c-mixed", SKIPPED, KNOWN)
    return folder


def progress_ids(text: str) -> list[str]:
    """The ids of the CLI's progress lines (in the order of finishing)."""
    return [line.split()[1] for line in text.split("\n\n")[0].splitlines()]


def test_parallel_gives_what_serial_gives(small_catalogue: Path, tmp_path: Path) -> None:
    runs: dict[str, tuple[int, str, Path]] = {}
    for jobs in ("1", "3"):
        out_dir = tmp_path / f"out-{jobs}"
        code, out, err = cli(
            "run",
            str(small_catalogue),
            "--settle",
            SETTLE,
            "--jobs",
            jobs,
            "--events",
            str(out_dir / "e.jsonl"),
            "--junit",
            str(out_dir / "j.xml"),
            "--report",
            str(out_dir / "r.html"),
        )
        assert err == ""
        runs[jobs] = (code, out, out_dir)
    (serial_code, serial, s_dir), (parallel_code, parallel, p_dir) = runs["1"], runs["3"]
    assert serial_code == parallel_code == 1
    assert progress_ids(serial) == SMALL
    assert sorted(progress_ids(parallel)) == sorted(SMALL)
    assert without_times(serial) == without_times(parallel)
    assert "2 passed, 1 failed, 1 xfailed, 1 skipped" in parallel.split("\n\n")[1]
    explanations = parallel.split("\n\n", 2)[2]
    assert explanations.count("FAILED b-fails[exits-3]") == 1 and "timeline:" in explanations
    assert junit_cases(s_dir / "j.xml") == junit_cases(p_dir / "j.xml")
    assert brackets(s_dir / "e.jsonl") == brackets(p_dir / "e.jsonl")
    assert [b[1] for b in brackets(p_dir / "e.jsonl")][::2] == SMALL
    assert (p_dir / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_every_world_event_lands_between_its_own_brackets(small_catalogue: Path) -> None:
    events_path = small_catalogue.parent / "e.jsonl"
    outcomes = run_catalogue(small_catalogue, jobs=4, settle=0.1, events_path=events_path)
    current: str | None = None
    seen: list[str] = []
    for event in load_events(events_path):
        if event.kind == "scenario.started":
            assert current is None
            current = str(event.get("name"))
            seen.append(current)
        elif event.kind == "scenario.finished":
            assert event.get("name") == current
            current = None
        else:
            assert current is not None, event
    assert seen == [o.id for o in outcomes]
    lines = events_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_the_api_runs_a_catalogue_in_order_with_progress(small_catalogue: Path) -> None:
    finished: list[str] = []
    outcomes = run_catalogue(
        [small_catalogue / "b-fails.yaml", str(small_catalogue / "a-passes.yaml")],
        jobs=0,
        settle=0.1,
        on_outcome=lambda o: finished.append(o.id),
    )
    assert [o.id for o in outcomes] == ["b-fails[exits-3]", "a-passes[one]", "a-passes[two]"]
    assert sorted(finished) == sorted(o.id for o in outcomes)
    assert [o.verdict for o in outcomes] == ["failed", "passed", "passed"]
    assert outcomes[0].failed_results and outcomes[0].events  # the whole outcome came back
    only_two = run_catalogue(small_catalogue, jobs=2, settle=0.1, clients=["two", "known"])
    assert [o.id for o in only_two] == ["a-passes[two]", "c-mixed[known]"]
    with pytest.raises(ConfigError, match="no scenario to run"):
        run_catalogue(small_catalogue, clients=["nobody"])
    with pytest.raises(ConfigError, match="jobs"):
        run_catalogue(small_catalogue, jobs=-1)
    with pytest.raises(ConfigError, match="timeout_scale"):
        run_catalogue(small_catalogue, jobs=2, timeout_scale=0)


def test_auto_jobs() -> None:
    assert auto_jobs(100, cpus=2) == 2 * AUTO_JOBS_PER_CPU
    assert auto_jobs(3, cpus=8) == 3
    assert auto_jobs(0, cpus=2) == 1
    assert 1 <= auto_jobs(1000) <= AUTO_JOBS_PER_CPU * (os.cpu_count() or 1)


def test_bad_jobs_is_a_usage_error(
    small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("x", "-1", "1.5", ""):
        assert cli("run", str(small_catalogue), "--jobs", bad)[0] == 2
        assert "--jobs" in capsys.readouterr().err
    code, out, _ = cli("run", str(small_catalogue / "a-passes.yaml"), "-j", "auto")
    assert code == 0 and "2 runs in" in out and "2 passed" in out


def test_a_worker_that_dies_is_an_error_for_its_case_only(tmp_path: Path) -> None:
    # The command client's parent is the worker process running the case.
    kill_parent = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"
    write(tmp_path, "a-dies", client("killer", kill_parent))
    write(tmp_path, "b-lives", client("fine", "pass"))
    events_path = tmp_path / "out" / "e.jsonl"
    junit_path = tmp_path / "out" / "j.xml"
    code, out, err = cli(
        "run",
        str(tmp_path),
        "-j",
        "2",
        "--settle",
        SETTLE,
        "--events",
        str(events_path),
        "--junit",
        str(junit_path),
    )
    assert (code, err) == (1, "")
    assert "ERROR  a-dies[killer]" in out and "PASS   b-lives[fine]" in out
    assert "the worker process died (killed by SIGKILL) before the run ended" in out
    assert "1 passed, 1 error" in out
    assert brackets(events_path) == [
        ("scenario.started", "a-dies[killer]", None),
        ("scenario.finished", "a-dies[killer]", "error"),
        ("scenario.started", "b-lives[fine]", None),
        ("scenario.finished", "b-lives[fine]", "passed"),
    ]
    kinds = [e.kind for e in load_events(events_path)]
    assert "client.started" in kinds[: kinds.index("scenario.finished")]  # what it recorded
    assert junit_cases(junit_path) == [("a-dies", "killer", "error"), ("b-lives", "fine", "ok")]


def test_a_worker_that_hangs_is_killed_by_the_watchdog(tmp_path: Path) -> None:
    stop_parent = "import os, signal; os.kill(os.getppid(), signal.SIGSTOP)"
    path = write(tmp_path, "hangs", client("stopper", stop_parent), timeout=0.5)
    cases = catalogue_cases([load_scenario(path)])
    started = time.monotonic()
    [outcome] = run_cases(cases, jobs=2, settle=0.1, worker_grace=0.5)
    assert outcome.verdict == "error"
    assert outcome.reason == "the worker process did not finish within 1.1 s; killed"
    assert time.monotonic() - started < 4 * TIMEOUT


def test_workers_get_the_environment_of_the_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = "import os, sys; sys.exit(0 if os.environ.get('H1_MARK') == 'now' else 3)"
    path = write(tmp_path, "env", client("reads-env", check))
    cases = [Case(load_scenario(path), load_scenario(path).clients[0])] * 2
    monkeypatch.setenv("H1_MARK", "before")
    assert [o.verdict for o in run_cases(cases, jobs=2, settle=0.1)] == ["failed"] * 2
    monkeypatch.setenv("H1_MARK", "now")  # the forkserver is running by now
    assert [o.verdict for o in run_cases(cases, jobs=2, settle=0.1)] == ["passed"] * 2


def test_ctrl_c_stops_the_workers_and_their_clients(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    linger = (
        "import os, pathlib, signal; "
        f"pathlib.Path({str(pids)!r}, str(os.getpid())).touch(); "
        "signal.pause()"  # lingers until a signal stops it
    )
    for name in ("a", "b", "c"):
        write(tmp_path, name, client("lingers", linger), timeout=300)
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "harness.scenario.cli_commands", "run", str(tmp_path), "-j", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 6 * TIMEOUT
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the clients to start, not a fixed wait
    clients = [int(p.name) for p in pids.iterdir()]
    assert len(clients) == 2
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=6 * TIMEOUT)
    assert process.returncode == 130
    assert err == "iot-harness run: interrupted\n"
    assert "Traceback" not in out
    for pid in clients:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_outcome_with_a_field_that_does_not_pickle_goes_back_as_json(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "odd", client("x", "pass"))
    scenario = load_scenario(path)
    event = Event(t=1.0, kind="client.odd", fields={"value": lambda: None, "n": 1})
    outcome = ScenarioOutcome(
        scenario=scenario, client=scenario.clients[0], verdict="passed", events=(event,)
    )
    back = pickle.loads(_dumps(outcome))  # noqa: S301 - our own bytes
    assert back.events[0].fields["n"] == 1
    assert back.events[0].fields["value"].startswith("<function")
    assert back.scenario == scenario


def test_a_single_case_with_jobs_still_uses_a_worker(tmp_path: Path) -> None:
    # With -j 2 and one case the run still goes to a worker: a case that kills its
    # worker must not kill the caller.
    write(tmp_path, "alone", client("killer", "import os, signal; os.kill(os.getppid(), 9)"))
    code, out, _ = cli("run", str(tmp_path), "-j", "2", "--settle", SETTLE)
    assert code == 1 and "ERROR  alone[killer]" in out


def test_the_cpu_gauge_reads_idle_cpus_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"

    def ticks(user: int, idle: int, iowait: int = 0) -> None:
        stat.write_text(f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4\n")

    ticks(100, 100)
    gauge = _CpuGauge.open(2, stat)
    assert gauge is not None
    ticks(125, 125, 50)  # 75 of 100 ticks idle (iowait counts as idle)
    assert gauge.idle_cpus(min_window=3600) is None  # too soon to tell
    assert gauge.idle_cpus(min_window=0) == pytest.approx(1.5)
    gauge.reset()
    assert gauge.idle_cpus(min_window=0) is None  # no tick since: nothing to judge
    ticks(225, 125, 50)
    assert gauge.idle_cpus(min_window=0) == pytest.approx(0.0)
    stat.write_text("garbage\n")
    assert gauge.idle_cpus(min_window=0) is None
    assert _CpuGauge.open(2, tmp_path / "missing") is None


def test_a_busy_machine_still_runs_one_case_per_cpu(small_catalogue: Path) -> None:
    # No machine has 1000 idle CPUs: only the floor (one case per CPU) lets cases start.
    outcomes = run_catalogue(small_catalogue, jobs=3, settle=0.1)
    cases = catalogue_cases(load_scenario(p) for p in sorted(small_catalogue.glob("*.yaml")))
    starved = run_cases(cases, jobs=3, settle=0.1, spare_cpus=1000)
    assert [o.verdict for o in starved] == [o.verdict for o in outcomes]
    with pytest.raises(ConfigError, match="spare_cpus"):
        run_cases(cases, jobs=3, spare_cpus=-1)
