"""The server under test in a process of its own: the harness gateway or a bare amqtt.

``python -m bench.gateway_proc --server gateway`` starts a :class:`~harness.world.World`
(no Cognito) with benchmark identities: ``--credentials`` static SigV4 keys and ``--certs``
registered things with device certificates, all under the world's default policy. It
prints ONE JSON line: the process id and a :class:`bench.loadgen.Target` per way in
(``wss-sigv4``, ``wss-custom``, ``mtls``). ``--server amqtt-tcp|amqtt-ws|amqtt-wss`` starts
amqtt's own broker with that listener and no authentication instead (the reference).
``--server gateway --workers N --engine mqtt://HOST:PORT`` runs N gateway processes on the
same ports instead (:mod:`harness.workers`), with the same identities and targets.

Then it answers lines on stdin: ``stats`` → one JSON line (resident memory, task count,
open file descriptors, gateway sessions, recorded events, CPU seconds); ``gc`` → a full
collection, then ``stats``; ``top`` → the biggest live allocation sites (with
``--tracemalloc``); ``quit`` or end of input → stop cleanly. Running the server
apart keeps its RSS and CPU separate from the load generator's, on this 2-core machine one
core each. The SigV4 secrets go to the parent over the pipe only; this is loopback-only
benchmark material, never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen
from harness.auth.credentials import Credential, CredentialStore
from harness.cli import SERVE_KEEP_EVENTS
from harness.events import Event
from harness.gateway import GatewayConfig
from harness.mqtt import rules
from harness.pki import WorldPKI
from harness.workers import GatewayWorkers, WorkersConfig
from harness.world import DEFAULT_AUTHORIZER, World, WorldConfig


class _GcPauses:
    """Time every garbage collection (``gc.callbacks``): a full (generation 2) collection
    stops the event loop for as long as it walks every tracked object, which shows up as
    latency spikes in a busy gateway."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        took = (time.perf_counter() - self._started) * 1000
        self.runs[generation] += 1
        self.total_ms[generation] += took
        self.max_ms[generation] = max(self.max_ms[generation], took)

    def stats(self) -> dict[str, Any]:
        return {
            "gc_runs": list(self.runs),
            "gc_total_ms": [round(t, 1) for t in self.total_ms],
            "gc_max_ms": [round(t, 1) for t in self.max_ms],
        }


_GC_PAUSES = _GcPauses()


def process_stats() -> dict[str, Any]:
    """This process's resident memory, descriptors, tasks and CPU time."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kinds = Counter(
        getattr(task.get_coro(), "__qualname__", type(task.get_coro()).__name__)
        for task in asyncio.all_tasks()
    )
    fd_kinds = Counter(_fd_kind(fd) for fd in os.listdir("/proc/self/fd"))
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "hwm_kb": int(fields["VmHWM"].split()[0]),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "task_kinds": dict(kinds.most_common(8)),
        "fd_kinds": dict(fd_kinds),
    } | _GC_PAUSES.stats()


def _fd_kind(fd: str) -> str:
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "gone"
    return link.split(":", 1)[0] if ":" in link else "file"


async def _serve_control(extra: Any) -> None:
    """Answer ``stats`` / ``gc`` lines on stdin until ``quit`` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode("ascii", "replace").strip()
        if not line or line == "quit":
            return
        if line == "gc":
            gc.collect()
        if line in ("stats", "gc"):
            stats = process_stats() | extra()
            sys.stdout.write(json.dumps(stats) + "\n")
            sys.stdout.flush()
        elif line == "top":
            sys.stdout.write(json.dumps(_top_allocations()) + "\n")
            sys.stdout.flush()


def _top_allocations(limit: int = 25) -> list[list[Any]]:
    """Where live memory was allocated (``--tracemalloc``): [size KiB, count, site]."""
    if not tracemalloc.is_tracing():
        return []
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    return [
        [round(stat.size / 1024, 1), stat.count, str(stat.traceback[0])] for stat in stats[:limit]
    ]


def _announce(descriptor: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(descriptor) + "\n")
    sys.stdout.flush()


def _limits(args: argparse.Namespace) -> rules.Limits:
    limits = rules.Limits()
    if args.raise_rates:
        # The message benchmark measures throughput, not AWS's 100 publishes/s quota: the
        # rate check still runs, at a rate no client reaches.
        limits = dataclasses.replace(
            limits, publishes_per_second=10**9, throughput_bytes_per_second=None
        )
    return limits


def _identities(
    args: argparse.Namespace,
    *,
    store: CredentialStore,
    pki: WorldPKI,
    register_thing: Callable[..., object],
    policy: str,
) -> tuple[list[Credential], list[tuple[str, str]]]:
    """The benchmark's static SigV4 keys and things with device certificates."""
    credentials = [
        store.add_static(principal=f"bench-{i}", policies=(policy,))
        for i in range(args.credentials)
    ]
    certs = []
    for i in range(args.certs):
        issued = pki.client_cert(f"bench-thing-{i}")
        register_thing(issued.common_name, issued.cert_pem, policies=(policy,))
        certs.append((str(issued.cert_file), str(issued.key_file)))
    return credentials, certs


def _gateway_targets(
    config: GatewayConfig,
    *,
    ports: tuple[int, int],
    ca_file: Path,
    authorizer_key_file: Path,
    credentials: list[Credential],
    certs: list[tuple[str, str]],
) -> dict[str, Any]:
    """The announcement's targets: one :class:`bench.loadgen.Target` per way in."""
    wss_port, mqtts_port = ports
    common = {
        "host": config.host,
        "server_name": config.endpoint,
        "ca_file": str(ca_file),
        "region": config.region,
    }
    return {
        "wss-sigv4": common
        | {
            "kind": "wss-sigv4",
            "port": wss_port,
            "credentials": [[c.access_key_id, c.secret_access_key] for c in credentials],
        },
        "wss-custom": common
        | {
            "kind": "wss-custom",
            "port": wss_port,
            "authorizer": DEFAULT_AUTHORIZER,
            "authorizer_key_file": str(authorizer_key_file),
        },
        "mtls": common | {"kind": "mtls", "port": mqtts_port, "client_certs": certs},
    }


async def run_gateway(args: argparse.Namespace) -> None:
    config = WorldConfig(
        cognito=False,
        gateway=GatewayConfig(engine=args.engine or None, limits=_limits(args)),
        keep_events=SERVE_KEEP_EVENTS,  # a long-running server, as `iot-harness serve`
    )
    async with World(config) as world:
        _apply_experiments(world, args.experiment)
        gw = world.gateway
        credentials, certs = _identities(
            args,
            store=world.credentials,
            pki=world.pki,
            register_thing=gw.register_thing,
            policy=world.default_policy,
        )
        assert world.authorizer_key is not None
        _announce(
            {
                "server": "gateway",
                "pid": os.getpid(),
                "engine": gw.engine.name,
                "targets": _gateway_targets(
                    gw.config,
                    ports=(gw.wss_port, gw.mqtts_port),
                    ca_file=world.pki.ca_file,
                    authorizer_key_file=world.authorizer_key.private_key_file,
                    credentials=credentials,
                    certs=certs,
                ),
            }
        )

        def extra() -> dict[str, Any]:
            out: dict[str, Any] = {"sessions": len(gw.sessions), "events": len(world.recorder)}
            broker = getattr(gw.engine, "_broker", None)
            if broker is not None:  # amqtt's own tables: what it keeps per client id
                out["engine_sessions"] = len(broker._sessions)
                out["engine_filters"] = len(broker._subscriptions)
            return out

        await _serve_control(extra)


def run_gateway_workers(args: argparse.Namespace) -> None:
    """``--workers N``: N gateway processes on shared ports (:mod:`harness.workers`) in
    front of ``--engine mqtt://...``, with the same identities and targets as one gateway.

    The announcement adds ``worker_pids`` and ``events_files``; ``stats`` adds the workers'
    summed CPU seconds and resident memory (``workers_cpu_s``, ``workers_rss_kb``), since
    the supervisor's own (``pid``) does none of the gateway work.
    """
    config = WorkersConfig(
        world=WorldConfig(
            cognito=False,
            gateway=GatewayConfig(engine=args.engine, limits=_limits(args)),
            keep_events=SERVE_KEEP_EVENTS,
        ),
        workers=args.workers,
    )
    group = GatewayWorkers(config)
    group.open()
    try:
        credentials, certs = _identities(
            args,
            store=group.credentials,
            pki=group.pki,
            register_thing=group.register_thing,
            policy=group.default_policy,
        )
        group.start()
        assert group.authorizer_key is not None
        descriptor = group.descriptor()
        _announce(
            {
                "server": "gateway",
                "pid": os.getpid(),
                "engine": "external",
                "workers": len(group.workers),
                "worker_pids": descriptor["workers"]["pids"],
                "events_files": descriptor["workers"]["events_files"],
                "targets": _gateway_targets(
                    config.world.gateway,
                    ports=(group.wss_port, group.mqtts_port),
                    ca_file=group.pki.ca_file,
                    authorizer_key_file=group.authorizer_key.private_key_file,
                    credentials=credentials,
                    certs=certs,
                ),
            }
        )
        asyncio.run(_supervise_workers(group))
    finally:
        group.close()


async def _supervise_workers(group: GatewayWorkers) -> None:
    """Answer the control lines until ``quit``, or stop when a worker dies."""
    pids = [w.pid for w in group.workers]

    def extra() -> dict[str, Any]:
        cpu = [loadgen.process_cpu(pid) for pid in pids]
        return {
            "sessions": None,
            "events": len(group.recorder),
            "worker_pids": pids,
            "workers_cpu_s": round(sum(c for c in cpu if c is not None), 3),
            "workers_rss_kb": sum(_rss_kb(pid) for pid in pids),
        }

    stop = asyncio.Event()
    control = asyncio.create_task(_serve_control(extra))
    control.add_done_callback(lambda _: stop.set())
    try:
        await group.serve(stop)
    finally:
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control


def _rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _apply_experiments(world: World, experiments: list[str]) -> None:
    """What-if switches that quantify a suggested optimisation; never on by default.

    ``no-jsonl``: the recorder keeps events in memory but writes no JSONL (today every event
    is ``json.dumps``-ed, written and flushed as it happens). ``no-events``: the recorder
    records nothing at all (the upper bound of making per-packet events cheap).
    """
    recorder = world.recorder
    if "no-jsonl" in experiments and recorder._file is not None:
        recorder._file.close()
        recorder._file = None
    if "no-events" in experiments:
        placeholder = Event(t=0.0, kind="bench.placeholder")

        def record(kind: str, *, conn: str | None = None, **fields: Any) -> Event:
            return placeholder

        recorder.record = record  # type: ignore[method-assign]


async def run_amqtt(args: argparse.Namespace) -> None:
    from amqtt.broker import Broker

    kind = args.server.removeprefix("amqtt-")
    listener: dict[str, Any] = {"type": "ws" if kind in ("ws", "wss") else "tcp"}
    listener["bind"] = "127.0.0.1:0"
    with tempfile.TemporaryDirectory(prefix="bench-amqtt-") as tmp:
        target: dict[str, Any] = {"kind": kind, "host": "127.0.0.1"}
        if kind == "wss":
            endpoint = GatewayConfig().endpoint
            pki = WorldPKI(Path(tmp) / "pki")
            cert = pki.server_cert(endpoint, "localhost", "127.0.0.1")
            listener |= {
                "ssl": True,
                "certfile": str(cert.cert_file),
                "keyfile": str(cert.key_file),
            }
            target |= {"server_name": endpoint, "ca_file": str(pki.ca_file)}
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        broker = Broker(
            {
                "listeners": {"default": listener},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await broker.start()
        try:
            instance = broker._servers["default"].instance
            sockets = instance.sockets
            target["port"] = next(iter(sockets)).getsockname()[1]
            _announce({"server": args.server, "pid": os.getpid(), "targets": {kind: target}})

            def extra() -> dict[str, Any]:
                return {"sessions": len(broker._sessions), "events": 0}

            await _serve_control(extra)
        finally:
            with contextlib.suppress(Exception):
                await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_proc")
    parser.add_argument(
        "--server", choices=("gateway", "amqtt-tcp", "amqtt-ws", "amqtt-wss"), default="gateway"
    )
    parser.add_argument("--engine", default="", help="gateway engine: amqtt or mqtt://host:port")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="gateway: N processes on shared ports (SO_REUSEPORT); needs --engine mqtt://...",
    )
    parser.add_argument("--credentials", type=int, default=8)
    parser.add_argument("--certs", type=int, default=8)
    parser.add_argument("--raise-rates", action="store_true")
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=("no-jsonl", "no-events"),
        help="what-if switch for the gateway (repeatable)",
    )
    parser.add_argument(
        "--ssl-read-buffer",
        type=int,
        default=0,
        help="experiment: asyncio's per-TLS-connection read buffer in bytes (default 256 KiB)",
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace allocations; answer 'top' lines"
    )
    args = parser.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start()
    if args.ssl_read_buffer:
        # asyncio.sslproto.SSLProtocol allocates (and zero-fills) max_size bytes per TLS
        # connection for its read buffer: 256 KiB of RSS each (CPython 3.11).
        from asyncio import sslproto

        sslproto.SSLProtocol.max_size = args.ssl_read_buffer
    if args.workers:
        if args.server != "gateway" or args.experiment or args.tracemalloc:
            parser.error("--workers is for --server gateway, without experiments or tracing")
        with contextlib.suppress(KeyboardInterrupt):
            run_gateway_workers(args)  # forks before any event loop runs
        return
    runner = run_gateway if args.server == "gateway" else run_amqtt
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner(args))


if __name__ == "__main__":
    main()
