"""``python -m bench.run [--quick] [--out bench/results]``: all five benchmarks, one run.

Each measurement runs the harness and its references side by side in the same
invocation, with the same load generator, and reports ratios (issue [bench]):

1. connections/s: gateway WSS + SigV4 (TLS, upgrade, auth, CONNECT/CONNACK) vs amqtt's
   own WebSocket listener without authentication (with TLS, the like-for-like reference,
   and without);
2. QoS 0 / QoS 1 publish → subscribe msgs/s and p50/p99 latency: gateway vs amqtt directly
   (TCP) vs mosquitto (TCP), plus latency at a fixed moderate rate;
3. scale: N held connections (half mTLS devices that subscribed, half idle SigV4 clients)
   and the gateway process's RSS per connection;
4. suite cost: gateway fixture start + stop (session CA) and World start + stop, medians;
5. endurance: reconnecting and misbehaving clients, memory drift, tasks, descriptors,
   lost QoS 1 messages, p99 vs a quiet run.

Servers run in child processes (:mod:`bench.servers`); the load generator runs here (and in
``--workers`` processes for 1 and 2). Everything is on loopback and bounded in count and
time. Results: ``<out>/latest.json`` and ``<out>/latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import endurance, loadgen, profile
from bench.loadgen import Target
from bench.servers import GatewayWorkersStack, Mosquitto, ServerProcess, mosquitto_path

GB = 1024**3
#: The experiment for the scale goal: asyncio's TLS read buffer at 32 KiB instead of 256 KiB.
SMALL_TLS_BUFFER = 32 * 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How big each measurement is; ``QUICK`` for a minute or two, ``FULL`` for the goals."""

    name: str
    connect_total: int
    connect_concurrency: int
    msg_pairs: int
    msg_window: int
    msg_duration: float
    msg_fixed_rate: float
    scale_n: int
    suite_repeats: int
    endurance_duration: float
    endurance_clients: int
    misbehaving_share: float
    quiet_duration: float
    #: The endurance mix: messages/s per well-behaved pair, publisher reconnect period (s),
    #: churners' connection hold range (s), misbehaving clients' pause range (s).
    endurance_pair_rate: float = 10.0
    endurance_reconnect: float = 5.0
    endurance_hold: tuple[float, float] = (2.0, 8.0)
    endurance_pause: tuple[float, float] = (0.5, 2.0)
    rounds: int = 1
    workers: int = 1


QUICK = Settings(
    name="quick",
    connect_total=300,
    connect_concurrency=16,
    msg_pairs=10,
    msg_window=10,
    msg_duration=4.0,
    msg_fixed_rate=500.0,
    scale_n=500,
    suite_repeats=20,
    endurance_duration=20.0,
    endurance_clients=100,
    misbehaving_share=0.2,
    quiet_duration=8.0,
)
FULL = Settings(
    name="full",
    connect_total=2000,
    connect_concurrency=32,
    msg_pairs=10,
    msg_window=10,
    msg_duration=8.0,
    msg_fixed_rate=500.0,
    scale_n=10000,
    suite_repeats=20,
    endurance_duration=600.0,
    endurance_clients=1000,
    misbehaving_share=0.2,
    quiet_duration=60.0,
    # ~20 connects/s and 100 QoS 1 msgs/s on top of 1,000 connections: a soak, not an
    # overload (--endurance-stress is the overload mix).
    endurance_pair_rate=2.0,
    endurance_reconnect=15.0,
    endurance_hold=(30.0, 90.0),
    endurance_pause=(10.0, 40.0),
    rounds=3,
)
#: The overload mix: ~40 connects/s and 500 QoS 1 msgs/s with 1,000 clients.
STRESS = {
    "endurance_pair_rate": 10.0,
    "endurance_reconnect": 5.0,
    "endurance_hold": (5.0, 35.0),
    "endurance_pause": (2.0, 10.0),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def settle(
    server: ServerProcess, base: dict[str, Any] | None, *, limit: float = 20.0
) -> dict[str, Any]:
    """Stats once the server has finished closing: no sessions, and (given a baseline) no
    more tasks or descriptors than it had; waits at most ``limit`` seconds (the gateway
    gives up on a stalled upgrade after its 10 s handshake timeout)."""
    deadline = time.monotonic() + limit
    while True:
        stats = server.stats(collect=True)
        busy = bool(stats.get("sessions")) or (
            base is not None and (stats["tasks"] > base["tasks"] or stats["fds"] > base["fds"])
        )
        if not busy or time.monotonic() >= deadline:
            return stats
        time.sleep(0.25)


# 1. Connections ---------------------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one), plus every run's value."""
    ordered = sorted(runs, key=lambda r: r[key] if r[key] is not None else -1.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen[f"all_{key}"] = [r[key] for r in runs]
    return chosen


def _connect(target: Target, settings: Settings, pid: int | None = None) -> dict[str, Any]:
    """Connections/s to ``target``, and the server's CPU per connection (``pid``'s)."""
    kwargs: dict[str, Any] = {
        "total": settings.connect_total,
        "concurrency": settings.connect_concurrency,
        "time_limit": 120.0,
    }
    # Warm-up: imports, first handshakes, caches; not measured.
    asyncio.run(loadgen.connect_rate(target, total=20, concurrency=4, time_limit=30.0))
    before = loadgen.process_cpu(pid) if pid is not None else None
    if settings.workers > 1:
        result = loadgen.in_processes(
            "connect_rate", target, workers=settings.workers, split="total", **kwargs
        )
    else:
        result = asyncio.run(loadgen.connect_rate(target, **kwargs))
    assert isinstance(result, loadgen.ConnectResult)
    after = loadgen.process_cpu(pid) if pid is not None else None
    summary = result.summary()
    if before is not None and after is not None and result.attempted:
        summary["server_cpu_s"] = round(after - before, 3)
        # Closing is part of each connection's cost, so every attempt counts.
        summary["server_cpu_ms_per_conn"] = round(1000 * (after - before) / result.attempted, 3)
    log(
        f"  {target.name}: {summary['connections_per_s']} conn/s, server CPU "
        f"{summary.get('server_cpu_ms_per_conn')} ms/conn, failures {summary['failures']}"
    )
    return summary


def bench_connections(settings: Settings, profile_dir: Path | None) -> dict[str, Any]:
    """All servers up at once; the targets take turns, ``rounds`` times (others' load on
    this machine then hits them alike); the median round is reported."""
    log(f"1. connections/s ({settings.rounds} round(s))")
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(ServerProcess("--server", "gateway"))
        wss = stack.enter_context(ServerProcess("--server", "amqtt-wss"))
        ws = stack.enter_context(ServerProcess("--server", "amqtt-ws"))
        targets = [
            (gw.target("wss-sigv4", "gateway-wss-sigv4"), gw.pid),
            (wss.target("wss", "amqtt-wss"), wss.pid),
            (ws.target("ws", "amqtt-ws"), ws.pid),
            (gw.target("wss-custom", "gateway-wss-custom"), gw.pid),
            (gw.target("mtls", "gateway-mtls"), gw.pid),
        ]
        binary = mosquitto_path()
        if binary is not None:
            # The scale-out shape (README, "Running across processes and machines").
            gww = stack.enter_context(GatewayWorkersStack(binary, workers=2))
            targets.append((gww.target("wss-sigv4", "gateway-2workers-wss-sigv4"), None))
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t, _ in targets}
        for round_no in range(settings.rounds):
            for target, pid in targets:
                recorder = None
                if profile_dir is not None and round_no == 0 and target.name.endswith("sigv4"):
                    recorder = profile.start(pid, profile_dir / "profile-connect-sigv4.txt", 6)
                runs[target.name].append(_connect(target, settings, pid))
                if recorder is not None:
                    recorder.wait(timeout=60)
        gateway_after = settle(gw, None)
    rows = {name: _median_run(r, "connections_per_s") for name, r in runs.items()}
    gateway = rows["gateway-wss-sigv4"]["connections_per_s"]
    return {
        "results": rows,
        "gateway_stats_after": gateway_after,
        "ratio_vs_amqtt_wss": _ratio(gateway, rows["amqtt-wss"]["connections_per_s"]),
        "ratio_vs_amqtt_ws": _ratio(gateway, rows["amqtt-ws"]["connections_per_s"]),
        "ratio_2workers_vs_amqtt_ws": _ratio(
            rows.get("gateway-2workers-wss-sigv4", {}).get("connections_per_s"),
            rows["amqtt-ws"]["connections_per_s"],
        ),
        "note": "amqtt-wss: amqtt's WebSocket listener with the same TLS (ECDSA P-256 "
        "certificate) and no authentication; amqtt-ws: without TLS. Each connection is "
        "opened to CONNACK and closed again (DISCONNECT). server_cpu_ms_per_conn is the "
        "server process's CPU time per connection (robust to other load on the machine).",
    }


# 2. Messages ------------------------------------------------------------------------------


def _messages(target: Target, settings: Settings, server_pid: int | None, qos: int) -> Any:
    kwargs: dict[str, Any] = {
        "pairs": settings.msg_pairs,
        "qos": qos,
        "duration": settings.msg_duration,
        "warmup": 1.0,
        "window": settings.msg_window,
    }
    if settings.workers > 1:
        saturated = loadgen.in_processes(
            "message_run", target, workers=settings.workers, split="pairs", **kwargs
        )
    else:
        saturated = asyncio.run(loadgen.message_run(target, server_pid=server_pid, **kwargs))
    fixed = asyncio.run(
        loadgen.message_run(
            target,
            server_pid=server_pid,
            **(kwargs | {"rate": settings.msg_fixed_rate, "window": 1000}),
        )
    )
    sat, fix = saturated.summary(), fixed.summary()
    log(
        f"  {target.name} QoS {qos}: {sat['msgs_per_s']} msgs/s (p50 {sat['p50_ms']} ms, "
        f"p99 {sat['p99_ms']} ms); at {settings.msg_fixed_rate:g}/s p50 {fix['p50_ms']} ms "
        f"p99 {fix['p99_ms']} ms"
    )
    return sat, fix


def bench_messages(settings: Settings, profile_dir: Path | None) -> dict[str, Any]:
    log(f"2. messages ({settings.rounds} round(s))")
    notes: list[str] = [
        "Closed loop: each of the pairs keeps at most `window` messages between publish and "
        "receipt; fixed_rate is an open loop at that many messages/s over all pairs.",
        "The gateway runs with AWS's per-connection publish quota raised (100/s would cap "
        "each publisher); every other AWS check runs.",
        "gateway-mtls+mosquitto: the gateway with mosquitto as its engine (GatewayConfig "
        "engine='mqtt://...') instead of the embedded amqtt.",
        "gateway-2workers+mosquitto: `iot-harness serve --workers 2 --engine mqtt://...` "
        "(two gateway processes on one port, SO_REUSEPORT) in front of its own mosquitto; "
        "server CPU is not attributed to one process there.",
    ]
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(ServerProcess("--server", "gateway", "--raise-rates"))
        ref = stack.enter_context(ServerProcess("--server", "amqtt-tcp"))
        targets = [
            (gw.target("mtls", "gateway-mtls"), gw.pid),
            (ref.target("tcp", "amqtt-tcp"), ref.pid),
            (gw.target("wss-sigv4", "gateway-wss-sigv4"), gw.pid),
        ]
        binary = mosquitto_path()
        if binary is None:
            notes.append("mosquitto is not installed (apt-get install mosquitto): skipped.")
        else:
            mosquitto = stack.enter_context(Mosquitto(binary))
            assert mosquitto.proc is not None
            gwm = stack.enter_context(
                ServerProcess("--server", "gateway", "--raise-rates", "--engine", mosquitto.url)
            )
            # The scale-out shape: two gateway processes on one port (SO_REUSEPORT) in front
            # of their own mosquitto. No single process holds its CPU: pid None.
            gww = stack.enter_context(
                GatewayWorkersStack(binary, workers=2, extra=("--raise-rates",))
            )
            targets += [
                (mosquitto.target("mosquitto-tcp"), mosquitto.proc.pid),
                (gwm.target("mtls", "gateway-mtls+mosquitto"), gwm.pid),
                (gww.target("mtls", "gateway-2workers+mosquitto"), None),
            ]
        runs: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for round_no in range(settings.rounds):
            for target, pid in targets:
                recorder = None
                if profile_dir is not None and round_no == 0 and target.name == "gateway-mtls":
                    recorder = profile.start(
                        pid, profile_dir / "profile-messages-mtls.txt", 4 * settings.msg_duration
                    )
                for qos in (0, 1):
                    runs.setdefault((target.name, qos), []).append(
                        _messages(target, settings, pid, qos)
                    )
                if recorder is not None:
                    recorder.wait(timeout=300)
    rows: dict[str, dict[str, Any]] = {}
    for (name, qos), pairs in runs.items():
        rows.setdefault(name, {})[f"qos{qos}"] = {
            "saturated": _median_run([sat for sat, _ in pairs], "msgs_per_s"),
            "fixed_rate": _median_run([fix for _, fix in pairs], "p99_ms"),
        }
    ratios = {
        key: _ratio(
            rows["gateway-mtls"][key]["saturated"]["msgs_per_s"],
            rows["amqtt-tcp"][key]["saturated"]["msgs_per_s"],
        )
        for key in ("qos0", "qos1")
    }
    return {"results": rows, "ratio_gateway_vs_amqtt": ratios, "notes": notes}


# What-if experiments ---------------------------------------------------------------------


def bench_experiments(settings: Settings) -> dict[str, Any]:
    """The gateway's message and connection throughput with the event recorder's work
    switched off (``bench.gateway_proc --experiment``), interleaved with the unchanged
    gateway: the measured effect of making per-packet events cheap."""
    log(f"experiments: the recorder's cost ({settings.rounds} round(s))")
    variants = {
        "as-is": (),
        "no-jsonl": ("--experiment", "no-jsonl"),
        "no-events": ("--experiment", "no-events"),
    }
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(ServerProcess("--server", "gateway", "--raise-rates", *extra))
            for name, extra in variants.items()
        }
        for _ in range(settings.rounds):
            for name, server in servers.items():
                for qos in (0, 1):
                    result = asyncio.run(
                        loadgen.message_run(
                            server.target("mtls", f"gateway-mtls {name}"),
                            pairs=settings.msg_pairs,
                            qos=qos,
                            duration=settings.msg_duration,
                            warmup=1.0,
                            window=settings.msg_window,
                            server_pid=server.pid,
                        )
                    )
                    runs.setdefault((name, f"qos{qos}"), []).append(result.summary())
                runs.setdefault((name, "connect"), []).append(
                    _connect(
                        server.target("wss-sigv4", f"gateway-wss-sigv4 {name}"),
                        settings,
                        server.pid,
                    )
                )
    out: dict[str, Any] = {}
    for (name, what), results in runs.items():
        key = "connections_per_s" if what == "connect" else "msgs_per_s"
        out.setdefault(name, {})[what] = _median_run(results, key)
    for name in variants:
        row = out[name]
        for what in ("qos0", "qos1"):
            row[what]["cpu_vs_as_is"] = _ratio(
                row[what]["msgs_per_server_cpu_s"], out["as-is"][what]["msgs_per_server_cpu_s"]
            )
        row["connect"]["cpu_vs_as_is"] = _ratio(
            out["as-is"]["connect"].get("server_cpu_ms_per_conn"),
            row["connect"].get("server_cpu_ms_per_conn"),
        )
        log(
            f"  {name}: QoS 0 {row['qos0']['msgs_per_server_cpu_s']} msgs per CPU-s, QoS 1 "
            f"{row['qos1']['msgs_per_server_cpu_s']}, SigV4 connect "
            f"{row['connect'].get('server_cpu_ms_per_conn')} CPU-ms"
        )
    return out


# 3. Scale ---------------------------------------------------------------------------------


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft descriptor limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _own_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_scale(settings: Settings, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    n = settings.scale_n
    limit = raise_fd_limit(n + 1000)
    notes = []
    if n + 500 > limit:
        notes.append(f"descriptor limit {limit}: N lowered from {n}")
        n = max(limit - 500, 10)
    log(f"3. scale: {n} connections (descriptor limit {limit})")
    devices, idle = n // 2, n - n // 2
    with ServerProcess(
        "--server", "gateway", "--certs", "50", "--credentials", "50", *extra_args
    ) as gw:
        # Warm-up: first connections load code and fill caches that are not per connection.
        warm = asyncio.run(
            _hold_and_release(gw.target("mtls", "warm"), gw.target("wss-sigv4", "warm"), 20, 20)
        )
        base = settle(gw, None)

        async def scenario() -> dict[str, Any]:
            t0 = time.monotonic()
            held_devices = await loadgen.hold(
                gw.target("mtls", "devices"),
                count=devices,
                concurrency=32,
                subscribe=True,
                prefix="dev",
            )
            loop = asyncio.get_running_loop()
            mid = await loop.run_in_executor(None, lambda: gw.stats(collect=True))
            held_idle = await loadgen.hold(
                gw.target("wss-sigv4", "idle"), count=idle, concurrency=32, prefix="idle"
            )
            opened_s = time.monotonic() - t0
            full = await loop.run_in_executor(None, lambda: gw.stats(collect=True))
            client_rss = _own_rss_kb()
            devices_connected = len(held_devices.connections)
            idle_connected = len(held_idle.connections)
            await held_devices.close()
            await held_idle.close()
            after = await loop.run_in_executor(None, lambda: settle(gw, base))
            return {
                "devices_connected": devices_connected,
                "idle_connected": idle_connected,
                "failures": held_devices.failures | held_idle.failures,
                "open_s": round(opened_s, 1),
                "mid": mid,
                "full": full,
                "after_close": after,
                "loadgen_rss_kb": client_rss,
            }

        outcome = asyncio.run(scenario())
    connected = outcome["devices_connected"] + outcome["idle_connected"]
    per_conn_kb = (outcome["full"]["rss_kb"] - base["rss_kb"]) / max(connected, 1)
    dev_kb = (outcome["mid"]["rss_kb"] - base["rss_kb"]) / max(outcome["devices_connected"], 1)
    idle_kb = (outcome["full"]["rss_kb"] - outcome["mid"]["rss_kb"]) / max(
        outcome["idle_connected"], 1
    )
    projected_10k = base["rss_kb"] * 1024 + 10000 * per_conn_kb * 1024
    return {
        "n": n,
        "connected": connected,
        "warmup_failures": warm,
        "base": base,
        **outcome,
        "rss_per_connection_kb": round(per_conn_kb, 1),
        "rss_per_device_kb": round(dev_kb, 1),
        "rss_per_idle_sigv4_kb": round(idle_kb, 1),
        "rss_total_mb": round(outcome["full"]["rss_kb"] / 1024, 1),
        "projected_10k_mb": round(projected_10k / 2**20, 1),
        "notes": notes,
    }


async def _hold_and_release(mtls: Target, sigv4: Target, a: int, b: int) -> dict[str, int]:
    one = await loadgen.hold(mtls, count=a, concurrency=8, subscribe=True, prefix="warm")
    two = await loadgen.hold(sigv4, count=b, concurrency=8, prefix="warm")
    await one.close()
    await two.close()
    return one.failures | two.failures


# 4. Suite cost ----------------------------------------------------------------------------


async def _time_many(repeats: int, make: Callable[[], Any]) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        async with make():
            pass
        times.append(time.perf_counter() - t0)
    return times


def bench_suite(settings: Settings) -> dict[str, Any]:
    log("4. suite cost")
    import tempfile

    from harness.gateway import Gateway
    from harness.pki import WorldPKI
    from harness.world import World, WorldConfig

    repeats = settings.suite_repeats
    out: dict[str, Any] = {"repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        t0 = time.perf_counter()
        session_pki = WorldPKI(Path(tmp) / "pki")
        out["session_ca_create_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        # The first gateway issues the session CA's server certificate: not a repeat cost.
        asyncio.run(_time_many(1, lambda: Gateway(pki=session_pki)))
        cases: dict[str, Callable[[], Any]] = {
            "gateway_session_ca": lambda: Gateway(pki=session_pki),
            "world_session_pki": lambda: World(WorldConfig(cognito=False, pki=session_pki)),
            "world_no_cognito": lambda: World(WorldConfig(cognito=False)),
            "world_default": lambda: World(),
        }
        for name, make in cases.items():
            times = asyncio.run(_time_many(repeats, make))
            out[name] = {
                "median_ms": round(statistics.median(times) * 1000, 2),
                "min_ms": round(min(times) * 1000, 2),
                "max_ms": round(max(times) * 1000, 2),
            }
            log(f"  {name}: median {out[name]['median_ms']} ms")
    out["scenario_catalogue"] = _scenario_catalogue()
    return out


def _scenario_catalogue() -> dict[str, Any]:
    """The whole catalogue's wall time, as ``iot-harness run scenarios/ --jobs auto`` runs
    it (cases side by side in worker processes; :func:`harness.scenario.run_catalogue`)."""
    from harness.scenario import catalogue

    folder = ROOT / "scenarios"
    scenarios = [catalogue.load_scenario(p) for p in catalogue.scenario_files([folder])]
    cases = catalogue.catalogue_cases(scenarios)
    jobs = catalogue.auto_jobs(len(cases))
    log(f"  scenario catalogue: {len(cases)} cases, {jobs} jobs")
    t0 = time.perf_counter()
    outcomes = catalogue.run_cases(cases, jobs=jobs)
    wall = time.perf_counter() - t0
    verdicts: dict[str, int] = {}
    for outcome in outcomes:
        verdicts[outcome.verdict] = verdicts.get(outcome.verdict, 0) + 1
    log(f"  scenario catalogue: {wall:.1f} s, {verdicts}")
    return {
        "wall_s": round(wall, 2),
        "files": len(scenarios),
        "cases": len(cases),
        "jobs": jobs,
        "verdicts": verdicts,
        "case_s_sum": round(sum(o.duration for o in outcomes), 1),
    }


# 5. Endurance -----------------------------------------------------------------------------


def bench_endurance(settings: Settings) -> dict[str, Any]:
    k = settings.endurance_clients
    misbehaving = max(1, round(k * settings.misbehaving_share))
    pairs = max(2, k // 20)
    churners = max(0, k - 2 * pairs - misbehaving)
    raise_fd_limit(4 * k + 1000)
    log(
        f"5. endurance: {settings.endurance_duration:g} s, {k} clients ({pairs} pairs, "
        f"{churners} churners, {misbehaving} misbehaving); quiet run "
        f"{settings.quiet_duration:g} s"
    )
    kinds = ("wss-sigv4", "wss-custom", "mtls")
    with ServerProcess("--server", "gateway") as gw:
        quiet = asyncio.run(
            endurance.run(
                {kind: gw.target(kind, kind) for kind in kinds},
                duration=settings.quiet_duration,
                pairs=pairs,
                churners=0,
                misbehaving=0,
                pair_rate=settings.endurance_pair_rate,
                reconnect_every=settings.endurance_reconnect,
            )
        )
    log(f"  quiet: {quiet.summary()}")
    with ServerProcess("--server", "gateway") as gw:
        # Warm-up so the baseline has the code and caches loaded.
        asyncio.run(
            _hold_and_release(gw.target("mtls", "warm"), gw.target("wss-sigv4", "warm"), 10, 10)
        )
        base = settle(gw, None)
        loud = asyncio.run(
            endurance.run(
                {kind: gw.target(kind, kind) for kind in kinds},
                duration=settings.endurance_duration,
                pairs=pairs,
                churners=churners,
                misbehaving=misbehaving,
                stats=gw.stats,
                pair_rate=settings.endurance_pair_rate,
                reconnect_every=settings.endurance_reconnect,
                hold=settings.endurance_hold,
                misbehave_pause=settings.endurance_pause,
            )
        )
        final = settle(gw, base)
    summary = loud.summary()
    log(f"  loud: {summary}")
    samples = loud.samples
    # Clients ramp up over their first ~10 s: the reference sample is taken after that.
    warm_at = min(max(settings.endurance_duration * 0.25, 10.0), settings.endurance_duration / 2)
    warm = next((s for s in samples if s["t"] >= warm_at), samples[0] if samples else base)
    last = samples[-1] if samples else final
    drift = (last["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"]
    return {
        "quiet": quiet.summary(),
        "loud": summary,
        "baseline": base,
        "warm_sample": warm,
        "last_sample": last,
        "final_after_settle": final,
        "memory_drift": round(drift, 4),
        "leaked_tasks": final["tasks"] - base["tasks"],
        "leaked_fds": final["fds"] - base["fds"],
        "events_growth": last.get("events", 0) - warm.get("events", 0),
        "engine_sessions_growth": last.get("engine_sessions", 0) - warm.get("engine_sessions", 0),
        "p99_ratio_vs_quiet": _ratio(summary["p99_ms"], quiet.summary()["p99_ms"]),
        "server_cpu_share": round(
            (last["cpu_s"] - base["cpu_s"]) / max(last.get("t", 1.0), 1.0), 3
        ),
        "samples": samples,
    }


# Machine and report -----------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()
    total_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    versions: dict[str, str] = {}
    for dist in ("amqtt", "websockets", "cryptography"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "?"
    binary = mosquitto_path()
    if binary:
        probe = subprocess.run(  # noqa: S603 - the mosquitto found on PATH
            [binary, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
        first = (probe.stdout or probe.stderr).strip().splitlines()
        versions["mosquitto"] = first[0] if first else "mosquitto"
    git = shutil.which("git") or "git"
    commit = subprocess.run(  # noqa: S603 - git found on PATH, fixed arguments
        [git, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=10,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(total_kb / 2**20, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "versions": versions,
        "commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return f"{value}{unit}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# iot-harness benchmarks ({report['settings']['name']})",
        "",
        f"Run {report['started']} on commit {m['commit']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['memory_gb']} GB RAM, Python {m['python']}, Linux {m['kernel']}, amqtt "
        f"{m['versions'].get('amqtt')}, websockets {m['versions'].get('websockets')}, "
        f"{m['versions'].get('mosquitto', 'no mosquitto')}. Loopback only; servers in their "
        f"own process, load generator in {report['settings']['workers']} process(es); "
        f"{report['settings']['rounds']} interleaved round(s) per comparison, median shown. "
        f"Load average at start {m['load_average_at_start']}, at end "
        f"{report.get('load_average_at_end')} (other work on this 2-core machine shows "
        f"there). Total {report['elapsed_s']:.0f} s.",
        "",
        "| # | Goal | Measured | Reference | Ratio / verdict |",
        "|---|---|---|---|---|",
    ]
    lines += report["goal_rows"]
    lines += ["", "## Details", ""]
    c = report.get("connections")
    if c:
        lines += ["### Connections (open to CONNACK, then DISCONNECT)", ""]
        lines += [
            "| server | conn/s | p50 ms | p99 ms | server CPU ms/conn | failures |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in c["results"].items():
            lines.append(
                f"| {name} | {_fmt(row['connections_per_s'])} | {_fmt(row['connect_p50_ms'])}"
                f" | {_fmt(row['connect_p99_ms'])} | {_fmt(row.get('server_cpu_ms_per_conn'))} | "
                f"{row['failures'] or 0} |"
            )
        lines.append("")
    msgs = report.get("messages")
    if msgs:
        lines += [
            "### Messages (publish → subscribe)",
            "",
            "| server | QoS | msgs/s | p50 ms | p99 ms | server CPU | msgs per server CPU-s |"
            " fixed-rate p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, per_qos in msgs["results"].items():
            for qos, both in per_qos.items():
                s, f = both["saturated"], both["fixed_rate"]
                lines.append(
                    f"| {name} | {qos[-1]} | {_fmt(s['msgs_per_s'])} | {_fmt(s['p50_ms'])} | "
                    f"{_fmt(s['p99_ms'])} | {_fmt(s['server_cpu_share'])} | "
                    f"{_fmt(s['msgs_per_server_cpu_s'])} | {_fmt(f['p50_ms'])} / "
                    f"{_fmt(f['p99_ms'])} |"
                )
        lines += ["", *[f"- {note}" for note in msgs["notes"]], ""]
    s = report.get("scale")
    if s:
        lines += [
            "### Scale",
            "",
            f"{s['connected']} of {s['n']} connections held ({s['devices_connected']} mTLS "
            f"devices subscribed, {s['idle_connected']} idle SigV4 WSS), opened in "
            f"{s['open_s']} s; failures {s['failures'] or 'none'}. Gateway RSS "
            f"{s['base']['rss_kb'] / 1024:.1f} MB idle → {s['rss_total_mb']} MB "
            f"({s['rss_per_device_kb']} KB per device, {s['rss_per_idle_sigv4_kb']} KB per "
            f"idle SigV4 client); {s['after_close']['rss_kb'] / 1024:.1f} MB after all closed; "
            f"{s['full']['events']} events recorded in memory.",
            "",
        ]
    sb = report.get("scale_small_tls_buffer")
    if s and sb:
        lines += [
            f"Experiment, same run: with asyncio's per-connection TLS read buffer at "
            f"{SMALL_TLS_BUFFER // 1024} KiB (`asyncio.sslproto.SSLProtocol.max_size`, 256 KiB "
            f"by default) the gateway holds {sb['connected']} connections in "
            f"{sb['rss_total_mb']} MB ({sb['rss_per_connection_kb']} KB per connection; "
            f"projected 10k: {sb['projected_10k_mb']} MB).",
            "",
        ]
    x = report.get("experiments")
    if x:
        lines += [
            "### What-if: the event recorder's cost (gateway over mTLS, saturated)",
            "",
            "| gateway variant | QoS 0 msgs per server CPU-s | QoS 1 msgs per server CPU-s |"
            " server CPU ms per SigV4 connection | (msgs/s QoS 0 / QoS 1, conn/s) |",
            "|---|---|---|---|---|",
        ]
        for name, row in x.items():
            q0, q1, c = row["qos0"], row["qos1"], row["connect"]
            lines.append(
                f"| {name} | {_fmt(q0['msgs_per_server_cpu_s'])} ({_fmt(q0['cpu_vs_as_is'])}x) | "
                f"{_fmt(q1['msgs_per_server_cpu_s'])} ({_fmt(q1['cpu_vs_as_is'])}x) | "
                f"{_fmt(c.get('server_cpu_ms_per_conn'))} ({_fmt(c['cpu_vs_as_is'])}x) | "
                f"{_fmt(q0['msgs_per_s'])} / {_fmt(q1['msgs_per_s'])}, "
                f"{_fmt(c['connections_per_s'])} |"
            )
        lines += [
            "",
            "no-jsonl: events kept in memory, no JSONL writes; no-events: nothing recorded. "
            "CPU per unit of work is the robust measure here (wall rates move with other "
            "load on the machine); ratios > 1 mean cheaper than as-is.",
            "",
        ]
    su = report.get("suite")
    if su:
        lines += ["### Suite cost (start + stop, median of " + str(su["repeats"]) + ")", ""]
        for key in ("gateway_session_ca", "world_session_pki", "world_no_cognito", "world_default"):
            lines.append(
                f"- {key}: median {su[key]['median_ms']} ms (min {su[key]['min_ms']}, "
                f"max {su[key]['max_ms']})"
            )
        lines.append(
            f"- session CA creation (once per test session): {su['session_ca_create_ms']} ms"
        )
        lines.append(f"- scenario catalogue: {su['scenario_catalogue']}")
        lines.append("")
    e = report.get("endurance")
    if e:
        lo, q = e["loud"], e["quiet"]
        lines += [
            "### Endurance",
            "",
            f"{lo['duration_s']} s: {lo['pairs']} well-behaved pairs (QoS 1, "
            f"{lo['mix']['pair_rate']:g} msgs/s each, publisher reconnecting every "
            f"{lo['mix']['reconnect_every']:g} s), {lo['churners']} churners (holding "
            f"{lo['mix']['hold']} s), {lo['misbehaving']} misbehaving (pausing "
            f"{lo['mix']['misbehave_pause']} s: {lo['misbehaviours']}); {lo['connects']} "
            f"connects ({lo['connects'] / lo['duration_s']:.1f}/s), failures "
            f"{lo['connect_failures'] or 'none'}. Published {lo['published']}, acked "
            f"{lo['acked']}, lost {lo['lost_qos1']}. p50/p99 {lo['p50_ms']} / {lo['p99_ms']} ms "
            f"vs quiet {q['p50_ms']} / {q['p99_ms']} ms. RSS "
            f"{e['warm_sample']['rss_kb'] / 1024:.1f}"
            f" MB at {e['warm_sample']['t']} s → {e['last_sample']['rss_kb'] / 1024:.1f} MB at "
            "the end "
            f"({e['memory_drift'] * 100:+.1f} %); events recorded meanwhile: "
            f"{e['events_growth']}, amqtt sessions kept meanwhile: "
            f"{e['engine_sessions_growth']}; tasks {e['baseline']['tasks']} → "
            f"{e['final_after_settle']['tasks']}, descriptors {e['baseline']['fds']} → "
            f"{e['final_after_settle']['fds']} after the clients left. Gateway CPU "
            f"{e['server_cpu_share']}, load generator CPU {lo['client_cpu_share']} of a core.",
            "",
        ]
    return "\n".join(lines) + "\n"


def goal_rows(report: dict[str, Any]) -> list[str]:
    rows = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    c = report.get("connections")
    if c:
        gw = c["results"]["gateway-wss-sigv4"]["connections_per_s"]
        ref = c["results"]["amqtt-wss"]["connections_per_s"]
        r = c["ratio_vs_amqtt_wss"]
        rows.append(
            f"| 1 | connections/s, gateway WSS+SigV4 ≥ 1.0x amqtt WS (no auth) | {_fmt(gw)}/s | "
            f"amqtt WSS {_fmt(ref)}/s, WS {_fmt(c['results']['amqtt-ws']['connections_per_s'])}/s"
            f" | {_fmt(r)}x vs WSS, {_fmt(c['ratio_vs_amqtt_ws'])}x vs WS: "
            f"{verdict(None if r is None else r >= 1.0)} |"
        )
        workers = c["results"].get("gateway-2workers-wss-sigv4")
        if workers is not None:
            rw = c.get("ratio_2workers_vs_amqtt_ws")
            rows.append(
                f"| 1 | (scale-out) connections/s, 2 gateway workers + mosquitto, WSS+SigV4 | "
                f"{_fmt(workers['connections_per_s'])}/s | amqtt WSS {_fmt(ref)}/s, WS "
                f"{_fmt(c['results']['amqtt-ws']['connections_per_s'])}/s | "
                f"{_fmt(_ratio(workers['connections_per_s'], ref))}x vs WSS, {_fmt(rw)}x vs "
                f"WS: {verdict(None if rw is None else rw >= 1.0)} |"
            )
    msgs = report.get("messages")
    if msgs:
        for qos in ("qos0", "qos1"):
            gw = msgs["results"]["gateway-mtls"][qos]["saturated"]
            ref = msgs["results"]["amqtt-tcp"][qos]["saturated"]
            mos = msgs["results"].get("mosquitto-tcp", {}).get(qos, {}).get("saturated")
            r = msgs["ratio_gateway_vs_amqtt"][qos]
            rows.append(
                f"| 2 | QoS {qos[-1]} msgs/s, gateway ≥ 0.9x amqtt directly | "
                f"{_fmt(gw['msgs_per_s'])}"
                f"/s, p99 {_fmt(gw['p99_ms'])} ms | amqtt {_fmt(ref['msgs_per_s'])}/s"
                + (f", mosquitto {_fmt(mos['msgs_per_s'])}/s" if mos else "")
                + f" | {_fmt(r)}x: {verdict(None if r is None else r >= 0.9)} |"
            )
        for name in ("gateway-mtls+mosquitto", "gateway-2workers+mosquitto"):
            row = msgs["results"].get(name)
            if row is None:
                continue
            rates = [row[q]["saturated"]["msgs_per_s"] for q in ("qos0", "qos1")]
            refs = [
                msgs["results"]["amqtt-tcp"][q]["saturated"]["msgs_per_s"] for q in ("qos0", "qos1")
            ]
            ratios = [_ratio(a, b) for a, b in zip(rates, refs, strict=True)]
            rows.append(
                f"| 2 | (scale-out) QoS 0 / QoS 1 msgs/s, {name} ≥ 0.9x amqtt directly | "
                f"{_fmt(rates[0])} / {_fmt(rates[1])}/s | amqtt {_fmt(refs[0])} / "
                f"{_fmt(refs[1])}/s | {_fmt(ratios[0])}x / {_fmt(ratios[1])}x: "
                f"{verdict(all(r is not None and r >= 0.9 for r in ratios))} |"
            )
    s = report.get("scale")
    if s:
        ok = s["n"] >= 10000 and s["connected"] >= 10000 and s["rss_total_mb"] < 2048
        measured = (
            f"{s['connected']} conns, {s['rss_total_mb']} MB ({s['rss_per_connection_kb']} KB/conn)"
        )
        if s["n"] < 10000:
            measured += f"; projected 10k: {s['projected_10k_mb']} MB"
        projected_ok = s["projected_10k_mb"] < 2048
        rows.append(
            f"| 3 | 10,000 connections in < 2 GB | {measured} | 2048 MB | "
            f"{_fmt(_ratio(2048, s['projected_10k_mb']))}x headroom (projected): "
            + (verdict(ok) if s["n"] >= 10000 else "projected " + verdict(projected_ok))
            + " |"
        )
        sb = report.get("scale_small_tls_buffer")
        if sb:
            rows.append(
                f"| 3 | (experiment: asyncio TLS read buffer {SMALL_TLS_BUFFER // 1024} KiB) | "
                f"{sb['connected']} conns, {sb['rss_total_mb']} MB "
                f"({sb['rss_per_connection_kb']} KB/conn); projected 10k: "
                f"{sb['projected_10k_mb']} MB | 2048 MB | "
                f"{_fmt(_ratio(2048, sb['projected_10k_mb']))}x headroom |"
            )
    su = report.get("suite")
    if su:
        med = su["gateway_session_ca"]["median_ms"]
        rows.append(
            f"| 4 | gateway fixture start+stop ≤ 50 ms (session CA) | {med} ms (a World on "
            f"the session PKI: {su['world_session_pki']['median_ms']} ms; with its own CA "
            f"{su['world_no_cognito']['median_ms']} ms, and Cognito "
            f"{su['world_default']['median_ms']} ms) | 50 ms | {_fmt(_ratio(50, med))}x: "
            f"{verdict(med <= 50)} |"
        )
        cat = su["scenario_catalogue"]
        rows.append(
            f"| 4 | scenario catalogue ≤ 60 s | {cat['wall_s']} s ({cat['cases']} cases of "
            f"{cat['files']} files, {cat['jobs']} jobs; {cat['verdicts']}) | 60 s | "
            f"{_fmt(_ratio(60, cat['wall_s']))}x: {verdict(cat['wall_s'] <= 60)} |"
        )
    e = report.get("endurance")
    if e:
        lo = e["loud"]
        clients = lo["pairs"] * 2 + lo["churners"] + lo["misbehaving"]
        checks = {
            "memory ±10 %": abs(e["memory_drift"]) <= 0.10,
            "no leaked tasks": e["leaked_tasks"] <= 0,
            "no leaked fds": e["leaked_fds"] <= 0,
            "no lost QoS 1": lo["lost_qos1"] == 0,
            "p99 ≤ 2x quiet": (e["p99_ratio_vs_quiet"] or 99) <= 2.0,
        }
        rows.append(
            f"| 5 | endurance ({lo['duration_s']} s, {clients}"
            f" clients): memory flat ±10 %, no leaks, no lost QoS 1, p99 ≤ 2x quiet | drift "
            f"{e['memory_drift'] * 100:+.1f} %, tasks {e['leaked_tasks']:+d}, fds "
            f"{e['leaked_fds']:+d}, lost {lo['lost_qos1']}, p99 {lo['p99_ms']} ms | quiet p99 "
            f"{e['quiet']['p99_ms']} ms | p99 {_fmt(e['p99_ratio_vs_quiet'])}x; "
            + ", ".join(f"{k}: {verdict(v)}" for k, v in checks.items())
            + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--workers", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--only",
        default="1,2,3,4,5,x",
        help="comma-separated subset, e.g. 2,4 (x: the recorder what-if experiments)",
    )
    parser.add_argument("--scale-n", type=int, help="connections for the scale measurement")
    parser.add_argument("--endurance-s", type=float, help="endurance duration in seconds")
    parser.add_argument("--endurance-clients", type=int, help="endurance clients")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway (1 and 2)")
    parser.add_argument(
        "--endurance-stress", action="store_true", help="the overload mix for endurance"
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {"workers": max(1, args.workers)}
    if args.scale_n:
        overrides["scale_n"] = args.scale_n
    if args.endurance_s:
        overrides["endurance_duration"] = args.endurance_s
        overrides["quiet_duration"] = min(base.quiet_duration, args.endurance_s / 2)
    if args.endurance_clients:
        overrides["endurance_clients"] = args.endurance_clients
    if args.endurance_stress:
        overrides |= STRESS
    settings = Settings(**(base.__dict__ | overrides))
    only = {part.strip() for part in args.only.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    profile_dir = args.out if args.profile else None
    if args.profile and profile.py_spy() is None:
        log("py-spy not found: --profile ignored (pip install py-spy)")
        profile_dir = None
    started = time.time()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "settings": settings.__dict__,
        "machine": machine_info(),
    }
    steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("1", "connections", lambda: bench_connections(settings, profile_dir)),
        ("2", "messages", lambda: bench_messages(settings, profile_dir)),
        ("3", "scale", lambda: bench_scale(settings)),
        (
            "3",
            "scale_small_tls_buffer",
            lambda: bench_scale(settings, ("--ssl-read-buffer", str(SMALL_TLS_BUFFER))),
        ),
        ("4", "suite", lambda: bench_suite(settings)),
        ("x", "experiments", lambda: bench_experiments(settings)),
        ("5", "endurance", lambda: bench_endurance(settings)),
    ]
    for number, key, step in steps:
        if number in only:
            report[key] = step()
    report["elapsed_s"] = round(time.time() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["goal_rows"] = goal_rows(report)
    if profile_dir is not None:
        summaries = {}
        for path in sorted(profile_dir.glob("profile-*.txt")):
            if path.stat().st_size:
                summaries[path.stem] = profile.summarize(path).lines(25)
        report["profiles"] = summaries
    suffix = "" if args.only == parser.get_default("only") else "-partial"
    (args.out / f"latest{suffix}.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (args.out / f"latest{suffix}.md").write_text(render_markdown(report), encoding="utf-8")
    log(f"wrote {args.out / f'latest{suffix}.md'} and .json in {report['elapsed_s']} s")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
