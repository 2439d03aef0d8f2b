"""The ``iot-harness`` command line; ``main(argv)`` takes its arguments for in-process tests.

``iot-harness serve`` (issue [gateway], "CLI") starts a :class:`~harness.world.World`
(the fake AWS IoT gateway and the fake Cognito Identity, with the newcomer defaults),
prints the world descriptor of DESIGN.md ("Contracts") as ONE JSON line on stdout, logs
one human-readable line per event on stderr, appends every event to the events JSONL (in
memory it holds only the newest :data:`SERVE_KEEP_EVENTS`, so a server that runs for days
stays the size it was) and stops cleanly on Ctrl-C or SIGTERM (exit 0). A bad option, a
port in use, an unreachable engine or an unusable state folder is one line on stderr and
exit code 2, no traceback.

``--workers N --engine mqtt://HOST:PORT`` runs N gateway processes on the same ports in
front of that broker (:mod:`harness.workers`; Cognito stays in this process, each worker
writes ``events-<n>.jsonl``); without an external engine, with ``--devices`` or with N
outside 1-64 it is one line on stderr and exit code 2.

``--devices 438,527`` adds the Dyson side (:mod:`simulators.dyson.world`): the fake Dyson
cloud (its login in the descriptor's ``dyson`` section), its custom authorizer in the
gateway, and one simulated device per product profile, each with its local broker and
its cloud link to the gateway (``438:local``, ``527:cloud`` pick one of the two;
``438@1883`` puts the local broker on the port libdyson-neon hard-codes).

The state folder (CA, certificates, the authorizer's private key with mode 0600, events)
is a fresh ``iot-harness-*`` folder under the system's temporary directory unless
``--state-dir`` names one; it is kept after the server stops, so the events can be read,
and its path is in the descriptor (``state_dir``) and on stderr. It is never the current
folder: private keys must not land in a working tree by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from harness import __version__, cli_options
from harness.errors import ConfigError
from harness.events import Event
from harness.gateway import GatewayConfig
from harness.world import World, WorldConfig

#: Exit code for harness misuse and environment problems (argparse's usage-error code).
EXIT_USAGE = 2
#: Events ``serve`` holds in memory: it runs for hours, the events file has them all.
SERVE_KEEP_EVENTS = 10_000
#: One stderr line shows a field value up to this many characters; the JSONL has it all.
MAX_FIELD_CHARS = 240


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``prog: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iot-harness",
        description=(
            "Test MQTT clients of AWS IoT Core offline: a fake IoT gateway that checks "
            "SigV4 and custom-authorizer credentials as AWS does, a fake Cognito, and more."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_serve(commands)
    for name, command in _COMMAND_MODULES.items():
        sub = commands.add_parser(name, help=command.help)
        command.load(command.add_arguments)(sub)
    return parser


@dataclass(frozen=True)
class _Command:
    """A subcommand implemented in its own module, imported only when used or listed."""

    module: str
    help: str
    add_arguments: str = "add_arguments"
    run: str = "run"

    def load(self, attribute: str) -> Callable[..., Any]:
        function: Callable[..., Any] = getattr(importlib.import_module(self.module), attribute)
        return function


#: Every subcommand but serve, the main job, which lives here.
_COMMAND_MODULES: dict[str, _Command] = {
    "run": _Command(
        "harness.scenario.cli_commands",
        "run scenario files; exit 1 if any fails (for CI)",
        "add_run_arguments",
        "run_command",
    ),
    "list": _Command(
        "harness.scenario.cli_commands",
        "list scenario files with their one-line purpose",
        "add_list_arguments",
        "list_command",
    ),
    "report": _Command("harness.report.command", "render an events JSONL file as an HTML report"),
    "sandbox": _Command(
        "harness.sandbox_command",
        "run a world and a client command where the real AWS/Dyson names and ports are the world's",
    ),
}


def _add_serve(commands: argparse._SubParsersAction[_Parser]) -> None:
    defaults = GatewayConfig()
    serve = commands.add_parser(
        "serve",
        help="run the fake AWS IoT gateway and Cognito; print the world descriptor",
        description=(
            "Start the fake AWS IoT Core gateway (WSS with SigV4 or custom auth, MQTT over "
            "mTLS) and the fake Cognito Identity on loopback. Prints the world descriptor "
            "(endpoint, ports, CA file, Cognito URL and identity pool, custom authorizer and "
            "its private key file) as one JSON line on stdout, logs events on stderr, "
            "writes them as JSONL, and runs until Ctrl-C or SIGTERM. Out of the box: an "
            "identity pool with unauthenticated access and a signing custom authorizer, "
            "both allowed to connect, publish, subscribe and receive outside $aws/."
        ),
        epilog=(
            "State folder: a fresh iot-harness-* folder in the system's temporary directory "
            "unless --state-dir is given; it holds the CA, certificates, the authorizer's "
            "private key (mode 0600) and events.jsonl, and is kept after the server stops. "
            "Exit status: 0 after Ctrl-C / SIGTERM, 2 for a bad option, a port in use, an "
            "unreachable engine or an unusable state folder, 1 when a --workers process "
            "died (the others are stopped)."
        ),
    )
    net = serve.add_argument_group(
        "network (ports are 0 = any free port; bound ones are in the descriptor)"
    )
    net.add_argument(
        "--host",
        type=cli_options.host_address,
        default=defaults.host,
        help="IP address to listen on (default: %(default)s)",
    )
    net.add_argument(
        "--wss-port",
        type=cli_options.port_number,
        default=0,
        metavar="PORT",
        help="WSS / ALPN port, AWS's 443",
    )
    net.add_argument(
        "--mqtts-port",
        type=cli_options.port_number,
        default=0,
        metavar="PORT",
        help="MQTT over TLS port, AWS's 8883",
    )
    net.add_argument(
        "--cognito-port",
        type=cli_options.port_number,
        default=0,
        metavar="PORT",
        help="fake Cognito HTTPS port",
    )
    aws = serve.add_argument_group("the endpoint it pretends to be")
    aws.add_argument(
        "--region",
        type=cli_options.region,
        default=defaults.region,
        help="(default: %(default)s)",
    )
    aws.add_argument(
        "--endpoint-prefix",
        type=cli_options.endpoint_prefix,
        default=defaults.endpoint_prefix,
        metavar="PREFIX",
        help="endpoint = PREFIX-ats.iot.REGION.amazonaws.com (default: %(default)s)",
    )
    aws.add_argument(
        "--account-id",
        type=cli_options.account_id,
        default=defaults.account_id,
        metavar="ID",
        help="(default: %(default)s)",
    )
    aws.add_argument(
        "--sni",
        choices=("require", "ignore"),
        default=defaults.sni,
        help="refuse TLS connections without SNI as AWS does, or serve them (default: "
        "%(default)s, so clients connecting by IP address work)",
    )
    aws.add_argument(
        "--credential-lifetime",
        type=cli_options.lifetime,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of Cognito credentials, fractions allowed (default: %(default)g)",
    )
    aws.add_argument(
        "--engine",
        type=cli_options.engine,
        default="amqtt",
        metavar="amqtt|mqtt://HOST:PORT",
        help="MQTT engine: embedded amqtt, or an external broker (default: %(default)s)",
    )
    aws.add_argument(
        "--workers",
        type=cli_options.worker_count,
        metavar="N",
        help="run N gateway processes on the same ports (SO_REUSEPORT: the kernel spreads "
        "connections across them) in front of the --engine mqtt:// broker, which routes "
        "between them; Cognito runs once, in the supervising process; each worker writes "
        "events-<n>.jsonl beside events.jsonl (default: one process, no workers)",
    )
    dyson = serve.add_argument_group(
        "Dyson (the fake Dyson cloud and simulated devices; off unless --devices is given)"
    )
    dyson.add_argument(
        "--devices",
        type=cli_options.device_list,
        metavar="TYPE[:MODE][@PORT],...",
        help="simulated Dyson devices by product profile (438, 438M, 527, 475, 358), each "
        "reachable on its own local broker and through the cloud (MODE both, the default), "
        "or only one of them (local, cloud); @PORT binds the local broker to PORT (@1883 for "
        "clients such as libdyson-neon that hard-code it); e.g. 438@1883,527:cloud",
    )
    dyson.add_argument(
        "--dyson-api-port",
        type=cli_options.port_number,
        default=0,
        metavar="PORT",
        help="fake Dyson cloud HTTPS port (appapi.cp.dyson.com's 443)",
    )
    files = serve.add_argument_group("files")
    files.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="state folder (created if missing, kept)"
    )
    files.add_argument(
        "--events", type=Path, metavar="FILE", help="events JSONL (default: DIR/events.jsonl)"
    )
    files.add_argument("-q", "--quiet", action="store_true", help="do not log events on stderr")


# Serving


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def format_event(event: Event) -> str:
    """One concise stderr line for ``event``; its values are already free of secrets."""
    parts = [f"{event.t:9.3f} {event.kind}"]
    if event.conn:
        parts.append(f"[{event.conn}]")
    for name, value in event.fields.items():
        if value is None:
            continue
        if not isinstance(value, str):
            text = json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
            parts.append(f"{name}={_shorten(text)}")
            continue
        text = _shorten(" ".join(value.split()))
        if not text or any(c in text for c in " \"='"):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def world_config(args: argparse.Namespace) -> WorldConfig:
    """The world ``serve`` starts, from its parsed options."""
    state_dir: Path = args.state_dir or Path(tempfile.mkdtemp(prefix="iot-harness-"))
    dyson = None
    if args.devices is not None:
        from simulators.dyson.world import DysonConfig

        dyson = DysonConfig(devices=args.devices, api_port=args.dyson_api_port)
    return WorldConfig(
        gateway=GatewayConfig(
            host=args.host,
            wss_port=args.wss_port,
            mqtts_port=args.mqtts_port,
            region=args.region,
            endpoint_prefix=args.endpoint_prefix,
            account_id=args.account_id,
            sni=args.sni,
            engine=None if args.engine == "amqtt" else args.engine,
        ),
        state_dir=state_dir,
        events_file=args.events,
        cognito_port=args.cognito_port,
        credential_lifetime=args.credential_lifetime,
        dyson=dyson,
        keep_events=SERVE_KEEP_EVENTS,
    )


async def serve(
    config: WorldConfig,
    *,
    stop: asyncio.Event,
    stdout: TextIO,
    stderr: TextIO,
    quiet: bool = False,
    ready: Callable[[World], None] | None = None,
) -> int:
    """Run a world until ``stop`` is set: the body of ``iot-harness serve``.

    Raises :class:`ConfigError` or ``OSError`` when the world cannot start; ``main`` turns
    them into one line and exit code 2.
    """

    def log(event: Event) -> None:
        print(format_event(event), file=stderr, flush=True)

    async with World(config) as world:
        if not quiet:
            for event in world.recorder:
                log(event)
            stop_listening = world.recorder.listen(log)
        descriptor = world.descriptor()
        print(json.dumps(descriptor, separators=(",", ":")), file=stdout, flush=True)
        iot = descriptor["iot"]
        print(
            f"iot-harness: serving {iot['endpoint']} on {iot['connect_host']} "
            f"(wss {iot['wss_port']}, mqtts {iot['mqtts_port']}), cognito "
            f"{descriptor['cognito']['url']}; state in {world.state_dir}; Ctrl-C stops",
            file=stderr,
            flush=True,
        )
        if "dyson" in descriptor:
            section = descriptor["dyson"]
            devices = ", ".join(
                f"{d['profile']} {d['serial']} ({d['mode']}, local port {d['local_port']})"
                for d in section["devices"]
            )
            print(
                f"iot-harness: Dyson cloud {section['api_url']} (login {section['email']}); "
                f"devices: {devices or 'none'}",
                file=stderr,
                flush=True,
            )
        if ready is not None:
            ready(world)
        await stop.wait()
        print("iot-harness: stopping", file=stderr, flush=True)
        if not quiet:
            # The shutdown events go to the JSONL; stderr stays short.
            stop_listening()
    print(f"iot-harness: stopped; events in {world.events_file}", file=stderr, flush=True)
    return 0


async def _serve_until_signalled(config: WorldConfig, quiet: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread or on Windows; Ctrl-C then ends the run
        # with KeyboardInterrupt, which main() also treats as a clean stop.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        return await serve(config, stop=stop, stdout=sys.stdout, stderr=sys.stderr, quiet=quiet)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _serve_workers(config: WorldConfig, workers: int, quiet: bool) -> int:
    """``serve --workers N``: :func:`harness.workers.serve` (imported only then)."""
    from harness import workers as gateway_workers

    return gateway_workers.serve(
        gateway_workers.WorkersConfig(world=config, workers=workers),
        stdout=sys.stdout,
        stderr=sys.stderr,
        format_event=None if quiet else format_event,
    )


def _fail(command: str, message: str) -> int:
    print(f"iot-harness {command}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    if args.command == "serve":
        made_state_dir = args.state_dir is None
        config: WorldConfig | None = None
        try:
            config = world_config(args)
            if args.workers is not None:
                return _serve_workers(config, args.workers, args.quiet)
            return asyncio.run(_serve_until_signalled(config, args.quiet))
        except (ConfigError, OSError) as exc:
            if made_state_dir and config is not None and config.state_dir is not None:
                shutil.rmtree(config.state_dir, ignore_errors=True)  # nothing worth keeping
            prefix = "cannot start: " if isinstance(exc, OSError) else ""
            return _fail("serve", prefix + (str(exc) or type(exc).__name__))
        except KeyboardInterrupt:
            return 0
    if args.command in _COMMAND_MODULES:
        command = _COMMAND_MODULES[args.command]
        status: int = command.load(command.run)(args)
        return status
    return 0  # pragma: no cover - every subcommand returns before this


if __name__ == "__main__":
    sys.exit(main())
