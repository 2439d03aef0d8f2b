"""``iot-harness sandbox``: run a world and a client command in private namespaces.

Issue [clients], "Running any client" (the logic is :mod:`harness.sandbox`). The command
line of ``harness.cli`` mounts this as a subcommand (:func:`add_arguments` on its
subparser, then :func:`run`); :func:`main` runs it on its own, taking ``argv`` so it is
testable in process (STYLE.md §10)::

    iot-harness sandbox [--scenario FILE] [--region R] [--endpoint-prefix P]
                        [--account-id ID] [--sni require|ignore] [--credential-lifetime S]
                        [--engine amqtt|mqtt://H:P] [--devices TYPE[:MODE],...]
                        [--thing NAME]... [--state-dir DIR] [--events FILE]
                        [-v] [--user-namespace] -- CMD [ARG...]

Inside, ``<prefix>-ats.iot.<region>.amazonaws.com`` (443, 8883),
``cognito-identity.<region>.amazonaws.com`` (443), the Dyson API hosts (443) and every
device's ``<serial>.local`` (1883) are the world's. CMD gets ``IOT_HARNESS_DESCRIPTOR``
and the harness CA in ``SSL_CERT_FILE``, ``NODE_EXTRA_CA_CERTS``, ``REQUESTS_CA_BUNDLE``,
``AWS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``; its stdin, stdout and stderr are passed through
and the sandbox exits with its exit status. A missing CMD, a bad option, an unreadable
scenario or a machine where ``unshare`` is missing or refused is one line on stderr and
exit status 2; a CMD that does not exist is exit status 127, as in a shell.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from harness import cli_options
from harness.errors import ConfigError
from harness.sandbox import EXIT_USAGE, SandboxSettings, launch

__all__ = ["EXIT_USAGE", "add_arguments", "main", "run", "settings_from_args"]

DESCRIPTION = (
    "Run a world and a client command CMD in a private network and mount namespace "
    "(unshare), where the real AWS IoT endpoint name, cognito-identity.<region>."
    "amazonaws.com, the Dyson API hosts and the devices' <serial>.local names resolve to "
    "the world on their real ports (443, 8883, 1883). Unmodified clients with hard-coded "
    "hosts and ports can be tested; the host's files and network are never touched."
)
EPILOG = (
    "CMD's environment: IOT_HARNESS_DESCRIPTOR (the world descriptor JSON; its 'sandbox' "
    "section maps names to loopback addresses, 'things' lists each --thing's certificate "
    "and key files), and SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, "
    "AWS_CA_BUNDLE, CURL_CA_BUNDLE naming the harness CA. Exit status: CMD's (128+N after "
    "signal N; with --scenario, 1 if CMD succeeded but an expectation failed); 2 when the "
    "sandbox cannot start; 127 when CMD is not found. Needs util-linux unshare, mount and "
    "iproute2 ip; root, or unprivileged user namespaces."
)


def _devices(text: str) -> str:
    """A valid device list, kept as text: :class:`SandboxSettings` carries it as JSON."""
    cli_options.device_list(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sandbox`` on ``parser`` (a subparser of ``iot-harness``)."""
    parser.description = parser.description or DESCRIPTION
    parser.epilog = parser.epilog or EPILOG
    parser.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="start the scenario's world (gateway, Cognito, pools, things, Dyson devices) "
        "and judge its expectations after CMD; the options below override it",
    )
    world = parser.add_argument_group("the world (as iot-harness serve)")
    world.add_argument(
        "--region",
        type=cli_options.region,
        help="(default: us-east-1)",
    )
    world.add_argument(
        "--endpoint-prefix",
        type=cli_options.endpoint_prefix,
        metavar="PREFIX",
        help="endpoint = PREFIX-ats.iot.REGION.amazonaws.com (default: a3harnessfake1)",
    )
    world.add_argument(
        "--account-id",
        type=cli_options.account_id,
        metavar="ID",
    )
    world.add_argument(
        "--sni",
        choices=("require", "ignore"),
        help="refuse TLS connections without SNI as AWS does, or serve them (default: ignore)",
    )
    world.add_argument(
        "--credential-lifetime",
        type=cli_options.lifetime,
        metavar="SECONDS",
        help="lifetime of Cognito credentials, fractions allowed (default: 3600)",
    )
    world.add_argument(
        "--engine",
        type=cli_options.engine,
        metavar="amqtt|mqtt://HOST:PORT",
        help="MQTT engine: embedded amqtt, or an external broker (default: amqtt)",
    )
    world.add_argument(
        "--devices",
        type=_devices,
        metavar="TYPE[:MODE],...",
        help="simulated Dyson devices (and the fake Dyson cloud) by product profile, e.g. "
        "438,527:cloud; each device's <serial>.local:1883 is its local broker",
    )
    world.add_argument(
        "--thing",
        dest="things",
        action="append",
        default=[],
        type=cli_options.thing_name,
        metavar="NAME",
        help="register a thing with a fresh client certificate for mTLS (8883, or 443 "
        "with ALPN x-amzn-mqtt-ca); its cert_file and key_file are in the descriptor's "
        "'things' (repeatable)",
    )
    files = parser.add_argument_group("files and output")
    files.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="state folder (default: a fresh iot-harness-sandbox-* folder in the temporary "
        "directory, kept afterwards)",
    )
    files.add_argument(
        "--events", type=Path, metavar="FILE", help="events JSONL (default: DIR/events.jsonl)"
    )
    files.add_argument(
        "-v", "--log-events", action="store_true", help="also log every event on stderr"
    )
    parser.add_argument(
        "--user-namespace",
        action="store_true",
        help="use a user namespace (unshare -r) even as root; always so when not root",
    )
    parser.add_argument(
        "cmd", nargs="*", metavar="-- CMD", help="the client command and its arguments"
    )


def settings_from_args(args: argparse.Namespace, *, state_dir: Path) -> SandboxSettings:
    """The :class:`SandboxSettings` a parsed ``sandbox`` command line means."""
    return SandboxSettings(
        command=tuple(args.cmd),
        state_dir=state_dir.resolve(),
        events_file=args.events.resolve() if args.events is not None else None,
        region=args.region,
        endpoint_prefix=args.endpoint_prefix,
        account_id=args.account_id,
        sni=args.sni,
        credential_lifetime=args.credential_lifetime,
        engine=args.engine,
        devices=args.devices,
        things=tuple(args.things),
        scenario=args.scenario.resolve() if args.scenario is not None else None,
        log_events=args.log_events,
        user_namespace=args.user_namespace or os.geteuid() != 0,
    )


def run(args: argparse.Namespace, *, stderr: TextIO | None = None) -> int:
    """Carry out a parsed ``sandbox`` command; returns the exit status."""
    err = stderr if stderr is not None else sys.stderr

    def fail(message: str) -> int:
        print(f"iot-harness sandbox: error: {message}", file=err, flush=True)
        return EXIT_USAGE

    if not args.cmd:
        return fail(
            "no command to run: give it after --, e.g. iot-harness sandbox -- python app.py"
        )
    try:
        if args.scenario is not None:
            from harness.scenario import load_scenario

            load_scenario(args.scenario)  # its errors now, with file, line and field
        state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="iot-harness-sandbox-"))
        return launch(settings_from_args(args, state_dir=state_dir), stderr=err)
    except ConfigError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot start: {exc}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """``iot-harness sandbox`` on its own (``python -m harness.sandbox_command ...``)."""
    parser = _Parser(prog="iot-harness sandbox", description=DESCRIPTION, epilog=EPILOG)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error, already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return run(args, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
