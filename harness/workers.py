"""Several gateway processes on one port in front of one external MQTT broker.

One Python process serves one core. For more (issue [bench], "Make it fast": "several
gateway workers on one port (SO_REUSEPORT) in front of an external broker"),
:class:`GatewayWorkers` runs N identical gateway processes that all listen on the same WSS
and MQTTS ports with ``SO_REUSEPORT``, so the kernel spreads new connections across them,
and connects every accepted client to one external broker (``mqtt://host:port``:
mosquitto; EMQX or VerneMQ for a cluster). The broker routes between clients of different
workers and keeps what MQTT keeps: retained messages, persistent sessions, QoS 1 queues.
The gateway itself is stateless per connection by design (DESIGN.md: "nothing in the
gateway may assume it is the only one"; :class:`~harness.engine.ExternalEngine` gives each
process its own system client id). ``iot-harness serve --workers N --engine mqtt://...``
is this class behind the CLI (:func:`serve`).

How the processes share what they must agree on:

* **Fork, after one preparation.** The supervisor (the process the user started) makes
  everything shared *before* it forks the workers and before any event loop runs:
  the state folder, the PKI (CA, the gateway's server certificate, which
  :meth:`~harness.pki.WorldPKI.server_context` issues once and caches, and any things'
  certificates), the custom authorizers (the newcomer's signing key included), the
  registered things, the ports and the world clock. The workers inherit them as they are,
  so nothing is minted twice and no loading code exists to get wrong; a thing or
  authorizer with an arbitrary Python handler works too, which a spec written to disk
  could not carry. Forking with no event loop and no thread running is the safe case.
* **Ports.** The supervisor binds each port once *without* ``SO_REUSEPORT`` (so a port
  another program holds, even another reuse-port group, is an error and not a silent
  share; port 0 picks a free port), then keeps it reserved with a bound, non-listening
  ``SO_REUSEPORT`` socket. Every worker listens on that port with ``SO_REUSEPORT``; only
  listening sockets receive connections, so the reservation never takes one.
* **Keys minted at run time.** The fake Cognito runs in the supervisor only (an HTTP
  service with one pool table; its load is small next to the gateway's). The keys it mints
  must be verifiable by every worker the client's next connection lands on, at once:
  :class:`SharedCredentialStore` appends every key to ``credentials.jsonl`` in the state
  folder (mode 0600, like the private keys beside it) *before* Cognito answers, and a
  worker that does not know an access key id reads the lines added since it last looked.
  A file write followed by a read in another process is ordered by the kernel, so the
  key is there when the client uses it; pushing keys over a pipe would race the client.
* **Events.** Each worker writes its own JSONL (``events-<n>.jsonl`` beside the
  supervisor's ``events.jsonl``, which holds Cognito's and the ``worker.*`` events);
  one file per process needs no locking and each file is a valid contract timeline. All
  share the supervisor's clock origin (CLOCK_MONOTONIC is system-wide), so their ``t``
  values merge into one timeline; connection ids (``c1``, ``c2``...) are per file.

What is *not* shared (per worker process; documented in the README section "Running
across processes and machines"): AWS's "one CONNECT per second per client id" throttle
(§4.3) and the duplicate-client-id takeover (§4.3) are enforced per worker. Two
connections with one client id on different workers are still resolved by the broker,
which drops the older one, but the older client then sees a plain close rather than the
``DUPLICATE_CLIENTID`` lifecycle reason. Also per worker are the filters the gateway
remembers for persistent sessions (the broker keeps the session itself) and the
Python-API faults (``expire_credential``, ``shift_clock``, fault hooks), which only
reach one worker.

A worker that dies is reported and the others are stopped; the group is not restarted.
A test harness should fail where the failure is, not hide it behind a restart.
SIGINT / SIGTERM (Ctrl-C reaches the whole process group) stop every worker cleanly;
a supervisor killed outright closes a "lifeline" pipe, and its workers stop on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from harness.auth import custom
from harness.auth.credentials import Credential, CredentialStore
from harness.auth.policy import PolicyDocument, allow_all_outside_reserved
from harness.clock import WorldClock
from harness.cognito import FakeCognito, IdentityPool
from harness.errors import ConfigError
from harness.events import Event, Recorder
from harness.gateway import Gateway
from harness.pki import TokenSigningKey, WorldPKI, fingerprint
from harness.world import (
    DEFAULT_AUTHORIZER,
    WorldConfig,
    cognito_host,
    default_authorizer,
    world_descriptor,
)

__all__ = [
    "MAX_WORKERS",
    "GatewayWorkers",
    "SharedCredentialStore",
    "WorkersConfig",
    "serve",
    "worker_events_file",
]

#: More workers than this is a mistake, not a plan: each is a whole Python process
#: (~40 MB) and this machine class has a handful of cores.
MAX_WORKERS = 64
#: Exit status of a worker that could not start (its reason went to the supervisor).
_EXIT_START_FAILED = 3


def worker_events_file(events_file: Path, index: int) -> Path:
    """Worker ``index``'s JSONL beside ``events_file``: ``events.jsonl`` -> ``events-2.jsonl``."""
    return events_file.with_name(f"{events_file.stem}-{index}{events_file.suffix}")


# Keys every process sees


class SharedCredentialStore(CredentialStore):
    """A key store shared by the processes of one worker group through an append-only file.

    :meth:`add` appends the key as one JSON line (one ``write`` on an ``O_APPEND``
    descriptor, so lines of concurrent writers never interleave) before it returns, and so
    before the fake Cognito answers with it. :meth:`lookup` of an unknown access key id
    reads the complete lines added since the last look (a line still being written is left
    for the next look). A line that is not a key is skipped: a lookup never raises.
    The file is created with mode 0600: it holds secret keys, like the private keys
    beside it. Keys expired with :meth:`expire` stay expired only in this process.
    """

    def __init__(self, path: Path, *, truncate: bool = False) -> None:
        super().__init__()
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        if truncate:
            flags |= os.O_TRUNC
        self._fd: int | None = os.open(path, flags, 0o600)
        self._offset = 0
        #: Called with each key read from the file (a worker registers its secrets with
        #: its recorder, so they are scrubbed from its events).
        self.on_load: Callable[[Credential], None] | None = None

    def add(self, credential: Credential) -> Credential:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(_credential_json(credential)) + "\n").encode())
        return super().add(credential)

    def lookup(self, access_key_id: str) -> Credential | None:
        found = super().lookup(access_key_id)
        if found is None and self.refresh():
            found = super().lookup(access_key_id)
        return found

    def refresh(self) -> int:
        """Read the keys other processes added since the last look; how many were new."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return 0
        if size <= self._offset:
            return 0
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read(size - self._offset)
        except OSError:
            return 0
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        count = 0
        for line in data[:complete].splitlines():
            credential = parse_credential_line(line)
            if credential is None:
                continue
            super().add(credential)
            count += 1
            if self.on_load is not None:
                self.on_load(credential)
        return count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _credential_json(credential: Credential) -> dict[str, Any]:
    return {
        "access_key_id": credential.access_key_id,
        "secret_access_key": credential.secret_access_key,
        "session_token": credential.session_token,
        "expires_at": credential.expires_at,
        "principal": credential.principal,
        "policies": list(credential.policies),
    }


def parse_credential_line(line: bytes) -> Credential | None:
    """One line of ``credentials.jsonl`` as a key, or None when it is not one."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
        return None
    if not isinstance(raw, dict):
        return None
    key, secret = raw.get("access_key_id"), raw.get("secret_access_key")
    token, expires = raw.get("session_token"), raw.get("expires_at")
    principal, policies = raw.get("principal", "anonymous"), raw.get("policies", [])
    if not (isinstance(key, str) and key and isinstance(secret, str) and secret):
        return None
    if token is not None and not isinstance(token, str):
        return None
    if expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, int | float) or expires != expires
    ):
        return None
    if not isinstance(principal, str) or not isinstance(policies, list):
        return None
    if not all(isinstance(p, str) for p in policies):
        return None
    return Credential(
        access_key_id=key,
        secret_access_key=secret,
        session_token=token,
        expires_at=None if expires is None else float(expires),
        principal=principal,
        policies=tuple(policies),
    )


# Configuration


@dataclass(frozen=True, kw_only=True)
class WorkersConfig:
    """A group of ``workers`` gateway processes serving ``world``.

    ``world.gateway.engine`` must be an external broker (``mqtt://host:port``): the
    embedded amqtt lives inside one process, so clients of different workers would never
    reach each other. The Dyson side (``world.dyson``) is one process's simulation and is
    refused. Everything else in ``world`` means what it means for a
    :class:`~harness.world.World`; the ports are shared by all workers.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    workers: int = 2
    #: Seconds for every worker to report that it listens.
    start_timeout: float = 30.0
    #: Seconds a worker gets to stop after SIGTERM before it is killed.
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        problem = workers_problem(
            self.workers, engine=self.world.gateway.engine, dyson=self.world.dyson is not None
        )
        if problem is not None:
            raise ConfigError(problem)
        if not (self.start_timeout > 0 and self.stop_timeout > 0):
            raise ConfigError("start_timeout and stop_timeout must be > 0 seconds")


def workers_problem(count: int, *, engine: str | None, dyson: bool) -> str | None:
    """Why ``count`` workers cannot serve this world (one sentence), or None."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
        return f"--workers must be 1-{MAX_WORKERS}, got {count!r}"
    if not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT does not spread connections (BSD, macOS: the last socket
        # bound takes them all) or does not exist (Windows), and fork is unsafe on macOS.
        return f"--workers needs Linux (SO_REUSEPORT load balancing); this is {sys.platform}"
    if engine is None or not engine.startswith("mqtt://"):
        return (
            "--workers needs an external broker as the engine (--engine mqtt://HOST:PORT, "
            "e.g. mosquitto): the embedded amqtt lives in one process, so clients of "
            "different workers would not reach each other"
        )
    if dyson:
        return (
            "--workers cannot run the Dyson side (--devices): its devices and cloud are "
            "one process's simulation; serve them without --workers"
        )
    return None


# The group


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: multiprocessing.connection.Connection
    events_file: Path
    exit_recorded: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class GatewayWorkers:
    """N gateway processes on shared ports, the fake Cognito, and their supervision.

    Synchronous lifecycle (the fork must come before any event loop)::

        group = GatewayWorkers(WorkersConfig(world=..., workers=2))
        group.open()                    # state folder, PKI, keys, ports: what is shared
        group.register_thing(...)       # identities every worker knows (optional)
        group.credentials.add_static()  # keys: any time, also while serving
        group.start()                   # fork; returns once every worker listens
        try:
            status = asyncio.run(group.serve(stop))  # Cognito; until stop or a death
        finally:
            group.close()               # SIGTERM, wait, kill a straggler

    :meth:`start` raises :class:`ConfigError` naming the first worker that could not
    start (its engine unreachable, say) after stopping the others.
    """

    def __init__(
        self, config: WorkersConfig, *, log: Callable[[str, Event], None] | None = None
    ) -> None:
        self.config = config
        #: Called with a worker label ("w1", "w2"... or "" for the supervisor) and each
        #: event, in the process that recorded it (``serve`` logs them on stderr).
        self.log = log
        self.workers: list[_Worker] = []
        self.authorizer_key: TokenSigningKey | None = None
        self.cognito: FakeCognito | None = None
        self.pool: IdentityPool | None = None
        self.wss_port = 0
        self.mqtts_port = 0
        self._authorizers: list[tuple[custom.Authorizer, bool]] = []
        self._things: list[tuple[str, bytes, tuple[str, ...]]] = []
        self._reserved: list[socket.socket] = []
        self._lifeline: int | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._opened = False
        self._started = False
        self._stop_early = False

    # Preparation (before the fork)

    def open(self) -> None:
        """Make what every worker shares: state folder, recorder, PKI, keys, ports."""
        if self._opened:
            return
        cfg = self.config.world
        if cfg.state_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="iot-harness-")
            self.state_dir = Path(self._tempdir.name)
        else:
            self.state_dir = cfg.state_dir
        self.events_file = cfg.events_file or self.state_dir / "events.jsonl"
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.clock = WorldClock()
            self.recorder = Recorder(clock=self.clock, path=self.events_file, keep=cfg.keep_events)
            self.pki = cfg.pki if cfg.pki is not None else WorldPKI(self.state_dir / "pki")
            self.credentials = SharedCredentialStore(
                self.state_dir / "credentials.jsonl", truncate=True
            )
        except OSError as exc:
            self._cleanup_tempdir()
            raise ConfigError(f"cannot write to {exc.filename or self.state_dir}: {exc}") from exc
        self._opened = True
        gw = cfg.gateway
        try:
            # Issued once here and cached by the PKI: every worker presents it.
            self.pki.server_context(gw.endpoint, "localhost", gw.host)
            if cfg.newcomer_defaults:
                self.authorizer_key = self.pki.token_signing_key(DEFAULT_AUTHORIZER, reuse=True)
                self.add_authorizer(default_authorizer(self.authorizer_key, self.default_policy))
            self._reserved = [_reserve_port(gw.host, gw.wss_port)]
            self._reserved.append(_reserve_port(gw.host, gw.mqtts_port))
        except BaseException:
            self.close()
            raise
        self.wss_port = self._reserved[0].getsockname()[1]
        self.mqtts_port = self._reserved[1].getsockname()[1]

    @property
    def default_policy(self) -> str:
        gw = self.config.world.gateway
        return allow_all_outside_reserved(gw.region, gw.account_id)

    def add_authorizer(self, authorizer: custom.Authorizer, *, default: bool = False) -> None:
        """Register a custom authorizer in every worker (before :meth:`start`)."""
        self._before_start("add_authorizer")
        self._authorizers.append((authorizer, default))

    def register_thing(
        self, name: str, certificate_pem: bytes, *, policies: tuple[str, ...] = ()
    ) -> None:
        """Register a thing and its certificate in every worker (before :meth:`start`).

        Checked here, as :meth:`Gateway.register_thing` would (a bad certificate or policy
        raises now, not in N workers later).
        """
        self._before_start("register_thing")
        fingerprint(certificate_pem)
        for policy in policies:
            PolicyDocument.parse(policy)
        self._things.append((name, certificate_pem, policies))

    def _before_start(self, what: str) -> None:
        if self._started:
            raise ConfigError(f"{what} must come before start(): the workers are running")

    # Starting

    def start(self) -> None:
        """Fork the workers and return once each listens; :class:`ConfigError` otherwise."""
        self.open()
        self._before_start("start")
        self._started = True
        context = multiprocessing.get_context("fork")
        lifeline_read, self._lifeline = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # no buffered text is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            for index in range(1, self.config.workers + 1):
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(
                    target=self._worker_main,
                    args=(index, writer, lifeline_read),
                    name=f"iot-harness-worker-{index}",
                )
                process.start()
                writer.close()
                self.workers.append(
                    _Worker(index, process, reader, worker_events_file(self.events_file, index))
                )
        finally:
            os.close(lifeline_read)
        self._await_ready()

    def _await_ready(self) -> None:
        """Wait for each worker's first message ("ready" or why not) or its end."""
        waiting = {w.index: w for w in self.workers}
        deadline = time.monotonic() + self.config.start_timeout
        problem: str | None = None
        while waiting and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = (
                    f"{len(waiting)} worker(s) did not start within {self.config.start_timeout:g} s"
                )
                break
            handles: list[Any] = [w.ready for w in waiting.values()]
            handles += [w.process.sentinel for w in waiting.values()]
            multiprocessing.connection.wait(handles, left)
            for worker in list(waiting.values()):
                if worker.ready.poll():
                    try:
                        message = worker.ready.recv()
                    except (EOFError, OSError):
                        message = ("error", "its start-up channel closed")
                    del waiting[worker.index]
                    if message[0] != "ready":
                        problem = f"worker {worker.index} could not start: {message[1]}"
                        break
                elif not worker.process.is_alive():
                    problem = (
                        f"worker {worker.index} {_exit_text(worker.process.exitcode)} "
                        "while starting"
                    )
                    break
        if problem is not None:
            self.close()
            raise ConfigError(problem)
        for worker in self.workers:
            self.recorder.record(
                "worker.started",
                worker=worker.index,
                pid=worker.pid,
                events_file=str(worker.events_file),
            )

    # The worker process

    def _worker_main(
        self, index: int, ready: multiprocessing.connection.Connection, lifeline: int
    ) -> None:
        """The forked worker: serve until SIGINT / SIGTERM or the supervisor is gone."""
        # A stop asked before the event loop takes the signals over is remembered: the
        # worker then ends cleanly instead of starting (an exception here could strike
        # anywhere, mid-way through asyncio.run's set-up).
        self._stop_early = False

        def remember_stop(signum: int, frame: FrameType | None) -> None:
            self._stop_early = True

        signal.signal(signal.SIGINT, remember_stop)
        signal.signal(signal.SIGTERM, remember_stop)
        if self._lifeline is not None:
            os.close(self._lifeline)  # only the supervisor holds the write end
        for sock in self._reserved:
            sock.close()
        # The supervisor's recorder, inherited, is left alone: it wrote everything before
        # the fork, and the worker ends with os._exit (multiprocessing), which flushes none
        # of the supervisor's files.
        sys.exit(asyncio.run(self._run_worker(index, ready, lifeline)))

    async def _run_worker(
        self, index: int, ready: multiprocessing.connection.Connection, lifeline: int
    ) -> int:
        label = f"w{index}"
        # Nothing reads a worker's events in memory (its file has them all): a small window.
        recorder = Recorder(
            clock=self.clock, path=worker_events_file(self.events_file, index), keep=1000
        )
        log = self.log
        if log is not None:
            recorder.listen(lambda event: log(label, event))

        def register_secrets(credential: Credential) -> None:
            recorder.add_secret(credential.secret_access_key)
            recorder.add_secret(credential.session_token)

        for credential in self.credentials:
            register_secrets(credential)
        self.credentials.on_load = register_secrets
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            # Not loop.add_signal_handler: its handler stays installed while asyncio.run
            # closes the loop's self-pipe, and the supervisor's SIGTERM arrives just then.
            with contextlib.suppress(RuntimeError):  # the loop is closed: stopping anyway
                loop.call_soon_threadsafe(stop.set)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, request_stop)
        loop.add_reader(lifeline, stop.set)  # readable = EOF: the supervisor is gone
        try:
            if self._stop_early:
                ready.send(("error", "stopped before it listened"))
                return 0
            try:
                gateway = self._gateway(recorder)
                await gateway.start()
            except (ConfigError, OSError) as exc:
                ready.send(("error", str(exc) or type(exc).__name__))
                return _EXIT_START_FAILED
            except Exception as exc:  # a harness bug: still one line for the supervisor
                ready.send(("error", repr(exc)))
                return _EXIT_START_FAILED
            recorder.record("worker.started", worker=index, pid=os.getpid())
            ready.send(("ready", gateway.wss_port, gateway.mqtts_port))
            ready.close()
            await stop.wait()
            await gateway.stop()
            recorder.record("worker.stopped", worker=index, pid=os.getpid())
            return 0
        finally:
            loop.remove_reader(lifeline)
            recorder.close()

    def _gateway(self, recorder: Recorder) -> Gateway:
        """This worker's gateway: the shared ports with ``SO_REUSEPORT``, the shared PKI,
        key store, authorizers and things."""
        config = dataclasses.replace(
            self.config.world.gateway,
            wss_port=self.wss_port,
            mqtts_port=self.mqtts_port,
            reuse_port=True,
        )
        gateway = Gateway(config, pki=self.pki, recorder=recorder, credentials=self.credentials)
        for authorizer, default in self._authorizers:
            gateway.add_authorizer(authorizer, default=default)
        for name, pem, policies in self._things:
            gateway.register_thing(name, pem, policies=policies)
        return gateway

    # Serving (the supervisor's event loop)

    async def serve(
        self, stop: asyncio.Event, *, ready: Callable[[GatewayWorkers], None] | None = None
    ) -> int:
        """Run the fake Cognito and watch the workers until ``stop`` is set (0) or a worker
        ends (0 when it was stopped by a signal, 1 when it died: crashed or was killed).

        ``ready`` is called once Cognito listens (``serve`` prints the descriptor there).
        The workers keep running afterwards: :meth:`close` stops them.
        """
        cfg = self.config.world
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[_Worker] = loop.create_future()

        def on_end(worker: _Worker) -> None:
            loop.remove_reader(worker.process.sentinel)  # it stays readable once ended
            if not ended.done():
                ended.set_result(worker)

        async with contextlib.AsyncExitStack() as stack:
            if self.log is not None:
                log = self.log
                stack.callback(self.recorder.listen(lambda event: log("", event)))
            if cfg.cognito:
                region = cfg.gateway.region
                self.cognito = FakeCognito(
                    region=region,
                    store=self.credentials,
                    recorder=self.recorder,
                    clock=self.clock,
                    ssl=self.pki.server_context(
                        cfg.cognito_address, "localhost", cognito_host(region)
                    ),
                    host=cfg.cognito_address,
                    port=cfg.cognito_port,
                )
                await stack.enter_async_context(self.cognito)
                if cfg.newcomer_defaults:
                    self.pool = self.cognito.create_pool(
                        allow_unauthenticated=True,
                        credential_lifetime=cfg.credential_lifetime,
                        policies=(self.default_policy,),
                    )
            for worker in self.workers:
                loop.add_reader(worker.process.sentinel, on_end, worker)
                stack.callback(loop.remove_reader, worker.process.sentinel)
            if ready is not None:
                ready(self)
            stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    [stopping, ended],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stopping.cancel()
            if stop.is_set() or not ended.done():
                return 0
            worker = ended.result()
            worker.process.join(1)
            return 0 if self._record_exit(worker) else 1

    def _record_exit(self, worker: _Worker) -> bool:
        """Record how ``worker`` ended (once); True when it stopped cleanly."""
        code = worker.process.exitcode
        clean = code == 0
        if not worker.exit_recorded:
            worker.exit_recorded = True
            self.recorder.record(
                "worker.exited",
                worker=worker.index,
                pid=worker.pid,
                ok=clean,
                reason="stopped" if clean else "died",
                exit_code=code,
                explain=_exit_text(code),
            )
        return clean

    # Stopping

    def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after ``stop_timeout``), release the
        ports and close the files. Safe to call twice, and after a failed start."""
        for worker in self.workers:
            if worker.process.is_alive():
                with contextlib.suppress(OSError):
                    worker.process.terminate()
        deadline = time.monotonic() + self.config.stop_timeout
        for worker in self.workers:
            worker.process.join(max(deadline - time.monotonic(), 0.0))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            self._record_exit(worker)
            worker.ready.close()
        for worker in self.workers:
            with contextlib.suppress(ValueError):
                worker.process.close()
        self.workers = []
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        if self._opened:
            self._opened = False
            self.credentials.close()
            self.recorder.close()
        self._cleanup_tempdir()

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    # The contract

    def descriptor(self) -> dict[str, Any]:
        """The world descriptor of DESIGN.md ("World descriptor"), as a world's, plus
        ``workers``: their ``count``, ``pids``, ``engine`` and ``events_files`` (the
        contract's ``events_file`` is the supervisor's: Cognito and ``worker.*`` events).
        """
        gw = self.config.world.gateway
        out = world_descriptor(
            gw,
            ports=(self.wss_port, self.mqtts_port),
            ca_file=self.pki.ca_file,
            cognito_url=self.cognito.url if self.cognito else "",
            pool_id=self.pool.pool_id if self.pool else "",
            authorizer_key=self.authorizer_key,
            events_file=self.events_file,
            state_dir=self.state_dir,
        )
        out["workers"] = {
            "count": len(self.workers),
            "pids": [w.pid for w in self.workers],
            "engine": gw.engine,
            "events_files": [str(w.events_file) for w in self.workers],
        }
        return out


def _reserve_port(host: str, port: int) -> socket.socket:
    """Pick (port 0) or check ``port`` and hold it for the workers' ``SO_REUSEPORT`` group.

    The probe binds without ``SO_REUSEPORT``, so a port anyone already listens on is an
    ``OSError`` even when that listener is itself a reuse-port group of this user (another
    ``serve --workers`` on the same port would otherwise silently share it). The probe has
    ``SO_REUSEADDR`` as asyncio's listeners do, so a port in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]
        keep = socket.socket(family, socket.SOCK_STREAM)
        keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        keep.bind((host, port))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return keep


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code == 0:
        return "stopped"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with status {code}"


# iot-harness serve --workers N


def serve(
    config: WorkersConfig,
    *,
    stdout: TextIO,
    stderr: TextIO,
    format_event: Callable[[Event], str] | None = None,
) -> int:
    """The body of ``iot-harness serve --workers N``: like a single world's ``serve``
    (descriptor on stdout, events on stderr unless ``format_event`` is None, runs until
    SIGINT / SIGTERM), with N gateway processes. Exit status 0 after a stop, 1 when a
    worker died (the others are stopped); :class:`ConfigError` / ``OSError`` when the group
    cannot start.
    """

    def log(label: str, event: Event) -> None:
        if format_event is not None:
            prefix = f"{label} " if label else ""
            print(prefix + format_event(event), file=stderr, flush=True)

    def say(text: str) -> None:
        print(f"iot-harness: {text}", file=stderr, flush=True)

    group = GatewayWorkers(config, log=log if format_event is not None else None)
    group.open()
    status = 0
    try:
        with _interrupt_on_sigterm():
            group.start()

        def announce(group: GatewayWorkers) -> None:
            descriptor = group.descriptor()
            print(json.dumps(descriptor, separators=(",", ":")), file=stdout, flush=True)
            iot, workers = descriptor["iot"], descriptor["workers"]
            say(
                f"serving {iot['endpoint']} on {iot['connect_host']} (wss {iot['wss_port']}, "
                f"mqtts {iot['mqtts_port']}) with {workers['count']} gateway workers "
                f"(pids {', '.join(map(str, workers['pids']))}) in front of "
                f"{workers['engine']}, cognito {descriptor['cognito']['url'] or 'off'}; "
                f"state in {group.state_dir}; Ctrl-C stops"
            )

        status = asyncio.run(_serve_until_signalled(group, announce))
    finally:
        dead = [w for w in group.workers if w.process.exitcode not in (None, 0)]
        for worker in dead:
            say(
                f"worker {worker.index} (pid {worker.pid}) {_exit_text(worker.process.exitcode)}"
                "; stopping the others"
            )
        if group.workers:
            say("stopping")
        files = [group.events_file, *(w.events_file for w in group.workers)]
        group.close()
    say(f"stopped; events in {files[0]} (supervisor), {', '.join(f.name for f in files[1:])}")
    return status


async def _serve_until_signalled(
    group: GatewayWorkers, ready: Callable[[GatewayWorkers], None]
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        return await group.serve(stop, ready=ready)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """While the workers start (no event loop yet), SIGTERM interrupts like Ctrl-C, so the
    caller's ``finally`` stops the workers already forked."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
