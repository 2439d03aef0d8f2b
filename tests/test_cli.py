from __future__ import annotations

import pytest

from harness.cli import main


def test_help_without_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "iot-harness" in capsys.readouterr().out
