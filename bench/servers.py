"""Servers under test as child processes: :mod:`bench.gateway_proc` and Debian's mosquitto.

A :class:`ServerProcess` starts one, reads its announcement (the targets to aim the load
generator at) and asks it for ``stats`` over its stdin; every wait is bounded. mosquitto
is started on a free loopback port with a generated configuration and no persistence;
where it is not installed, :func:`mosquitto_path` is None and the caller notes the skip.
:class:`GatewayWorkersStack` is both: gateway worker processes in front of a mosquitto.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.loadgen import Target


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line from ``proc`` within ``timeout`` seconds (select on the pipe)."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no answer from pid {proc.pid} within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {proc.pid} exited (code {proc.poll()})")
    return line


class ServerProcess:
    """``python -m bench.gateway_proc ...`` as a child; ``with ServerProcess(...) as s:``."""

    def __init__(self, *args: str, timeout: float = 60.0) -> None:
        self.args = list(args)
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.announcement: dict[str, Any] = {}

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - this Python, our module, our arguments
            [sys.executable, "-m", "bench.gateway_proc", *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            self.announcement = json.loads(_read_line(self.proc, self.timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def target(self, kind: str, name: str) -> Target:
        raw = dict(self.announcement["targets"][kind])
        for key in ("credentials", "client_certs"):
            if key in raw:
                raw[key] = tuple(tuple(pair) for pair in raw[key])
        return Target(name=name, **raw)

    def stats(self, *, collect: bool = False) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("gc\n" if collect else "stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(_read_line(self.proc, 30.0)))

    def top_allocations(self) -> list[list[Any]]:
        """The server's biggest live allocation sites (started with ``--tracemalloc``)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("top\n")
        self.proc.stdin.flush()
        return list(json.loads(_read_line(self.proc, 120.0)))

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None
    )


class Mosquitto:
    """Debian's mosquitto on a free loopback port, anonymous, no persistence."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Mosquitto:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-mosquitto-")
        self.port = free_port()
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest none\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else ""),
            encoding="ascii",
        )
        self.proc = subprocess.Popen(  # noqa: S603 - the mosquitto found on PATH
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("mosquitto did not start listening")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def target(self, name: str = "mosquitto") -> Target:
        return Target(name=name, kind="tcp", port=self.port)


class GatewayWorkersStack:
    """``workers`` gateway processes on shared ports in front of a private mosquitto.

    ``python -m bench.gateway_proc --server gateway --workers N --engine <mosquitto>``
    (:mod:`harness.workers`): the scale-out shape of issue [bench]. ``target(kind, name)``
    is a :class:`bench.loadgen.Target` as for one gateway (``wss-sigv4``, ``wss-custom``,
    ``mtls``); the kernel spreads its connections over the workers. ``pid`` is the
    supervisor, which does none of the gateway work: CPU belongs to ``worker_pids`` (and
    mosquitto's ``broker_pid``); :meth:`cpu_seconds` sums them all. ``extra`` are more
    ``gateway_proc`` options (``--raise-rates``, ``--certs 16``).
    """

    def __init__(self, binary: str, *, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.workers = workers
        self.extra = extra
        self._stack = contextlib.ExitStack()
        self.mosquitto: Mosquitto | None = None
        self.server: ServerProcess | None = None

    def __enter__(self) -> GatewayWorkersStack:
        with self._stack as stack:
            self.mosquitto = stack.enter_context(Mosquitto(self.binary))
            self.server = stack.enter_context(
                ServerProcess(
                    "--server",
                    "gateway",
                    "--workers",
                    str(self.workers),
                    "--engine",
                    self.mosquitto.url,
                    *self.extra,
                )
            )
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()  # the gateway first, then mosquitto

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    @property
    def worker_pids(self) -> list[int]:
        assert self.server is not None
        return [int(pid) for pid in self.server.announcement["worker_pids"]]

    @property
    def broker_pid(self) -> int:
        assert self.mosquitto is not None and self.mosquitto.proc is not None
        return self.mosquitto.proc.pid

    def target(self, kind: str, name: str) -> Target:
        assert self.server is not None
        return self.server.target(kind, name)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the workers and mosquitto together."""
        from bench.loadgen import process_cpu

        used = (process_cpu(pid) for pid in [*self.worker_pids, self.broker_pid])
        return sum(c for c in used if c is not None)

    def stats(self) -> dict[str, Any]:
        assert self.server is not None
        return self.server.stats()
