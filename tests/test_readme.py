"""The README's examples are the project's own files and commands (STYLE.md §10)."""

from __future__ import annotations

import argparse
import re

from harness.cli import build_parser
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_scenario_example_is_the_catalogue_file() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)
    assert blocks, "the README shows a complete scenario"
    assert blocks[0] == (ROOT / "scenarios" / "sigv4-credential-expiry.yaml").read_text()


def test_every_iot_harness_command_in_the_readme_exists() -> None:
    named = set(re.findall(r"(?:^\s*|`)iot-harness (\w+)", README, flags=re.MULTILINE))
    assert {"serve", "run", "list", "sandbox", "report"} <= named
    subcommands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert named <= set(subcommands)
