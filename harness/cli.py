"""The ``iot-harness`` command line; ``main(argv)`` takes its arguments for in-process tests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iot-harness",
        description=(
            "Test MQTT clients of AWS IoT Core offline: a fake IoT gateway that checks "
            "SigV4 and custom-authorizer credentials as AWS does, a fake Cognito, and more."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    return 0  # pragma: no cover - every subcommand returns before this


if __name__ == "__main__":
    sys.exit(main())
