"""Shared fixtures for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.world import World

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"


@pytest.fixture
def conformance_dir() -> Path:
    """``../shared/conformance``; tests that need it skip when a plain clone lacks it."""
    if not CONFORMANCE.is_dir():
        pytest.skip("../shared/conformance is absent (a plain clone has no ../shared)")
    return CONFORMANCE


@pytest.fixture
def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.aws, no AWS_* variables: boto3 and awscrt see only what the test gives them."""
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """A world with the newcomer defaults (modules that need another define their own)."""
    async with World() as w:
        yield w


@pytest.fixture
def cognito(world: World, isolated_aws: None) -> Iterator[Any]:
    """boto3's cognito-identity client for ``world``'s fake Cognito, trusting its CA."""
    import boto3
    from botocore.config import Config

    assert world.cognito is not None
    client = boto3.session.Session(region_name=world.region).client(
        "cognito-identity",
        endpoint_url=world.cognito.url,
        verify=str(world.pki.ca_file),
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    yield client
    client.close()
