"""Shared fixtures for the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"


@pytest.fixture
def conformance_dir() -> Path:
    """``../shared/conformance``; tests that need it skip when a plain clone lacks it."""
    if not CONFORMANCE.is_dir():
        pytest.skip("../shared/conformance is absent (a plain clone has no ../shared)")
    return CONFORMANCE
