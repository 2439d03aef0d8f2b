from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from harness.clock import WorldClock
from harness.events import REDACTED, Recorder
from tests.timing import TIMEOUT


def test_secret_fields_are_redacted_and_registered_secrets_scrubbed(tmp_path: Path) -> None:
    recorder = Recorder(path=tmp_path / "events.jsonl")
    recorder.add_secret("s3cr3t/tok+en")
    recorder.record(
        "auth.verdict",
        conn="c1",
        ok=False,
        reason="token-invalid",
        session_token="s3cr3t/tok+en",
        explain="URL had X-Amz-Security-Token=s3cr3t%2Ftok%2Ben in it, raw s3cr3t/tok+en",
        nested={"password": "pw", "user": "bob"},
    )
    recorder.close()
    line = (tmp_path / "events.jsonl").read_text()
    assert "s3cr3t" not in line
    event = json.loads(line)
    assert event["kind"] == "auth.verdict"
    assert event["conn"] == "c1"
    assert event["session_token"] == REDACTED
    assert event["nested"] == {"password": REDACTED, "user": "bob"}
    assert isinstance(event["t"], float)


async def test_wait_for_returns_past_and_future_events() -> None:
    recorder = Recorder()
    recorder.record("ws.upgrade", conn="a", status=101)
    assert (await recorder.wait_for("ws.upgrade", timeout=TIMEOUT)).conn == "a"

    async def later() -> None:
        await asyncio.sleep(0)
        recorder.record("mqtt.in", conn="b", packet="CONNECT")

    task = asyncio.create_task(later())
    event = await recorder.wait_for("mqtt.", timeout=TIMEOUT, packet="CONNECT")
    await task
    assert event.conn == "b"


async def test_wait_for_timeout_names_what_was_awaited() -> None:
    recorder = Recorder()
    recorder.record("ws.upgrade", status=403)
    with pytest.raises(TimeoutError, match=r"(?s)auth\.verdict.*ws\.upgrade"):
        await recorder.wait_for("auth.verdict", timeout=TIMEOUT / 100)


def test_world_clock_offset() -> None:
    clock = WorldClock(offset=-600)
    before = clock.now()
    clock.shift(600)
    assert clock.now() - before >= 600
    assert clock.elapsed() >= 0


def test_short_secrets_do_not_mangle_other_numbers() -> None:
    recorder = Recorder()
    recorder.add_secret("123456")  # a 6-digit OTP
    event = recorder.record(
        "policy.verdict", resource="arn:aws:iot:us-east-1:123456789012:x", otp="123456"
    )
    assert event.get("resource") == "arn:aws:iot:us-east-1:123456789012:x"
    assert event.get("otp") == REDACTED
