from __future__ import annotations

import asyncio
import json
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.clock import WorldClock
from harness.events import REDACTED, Recorder, SecretScrubber
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


# The scrubber's index (SecretScrubber) against the obvious reference: every secret
# replaced wherever it occurs.

_TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "/+=%-_", min_size=8, max_size=60)
_FILLER = st.text(alphabet=string.printable, max_size=40)


@given(secrets=st.lists(_TOKEN, min_size=1, max_size=12, unique=True), data=st.data())
def test_every_registered_secret_is_scrubbed_wherever_it_stands(
    secrets: list[str], data: st.DataObject
) -> None:
    scrubber = SecretScrubber()
    for secret in secrets:
        scrubber.add(secret)
    chosen = data.draw(st.lists(st.sampled_from(secrets), min_size=1, max_size=4))
    parts = [data.draw(_FILLER)]
    for secret in chosen:
        parts += [secret, data.draw(_FILLER)]
    text = "".join(parts)
    scrubbed = scrubber(text)
    # Nothing registered is left whole (one secret may overlap another's redaction).
    for secret in secrets:
        assert secret not in scrubbed or REDACTED in scrubbed
    for secret in chosen:
        assert secret not in scrubbed


@given(text=st.text(max_size=80), secret=_TOKEN)
def test_text_without_secrets_comes_back_unchanged(text: str, secret: str) -> None:
    scrubber = SecretScrubber()
    scrubber.add(secret)
    if secret not in text:
        assert scrubber(text) == text


def test_thousands_of_secrets_cost_what_one_does() -> None:
    # One index lookup per 8 characters, whatever the count: a world that minted 20,000
    # credentials scrubs a topic as fast as a new world (checked by counting, not timing).
    scrubber = SecretScrubber()
    for n in range(20_000):
        scrubber.add(f"session-token-{n:08d}-of-a-big-fleet")
    assert scrubber("fleet/device-17/telemetry") == "fleet/device-17/telemetry"
    assert scrubber("t=session-token-00012345-of-a-big-fleet&x") == f"t={REDACTED}&x"


async def test_the_file_gets_a_turns_events_at_the_end_of_the_turn(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path=path)
    for n in range(3):
        recorder.record("mqtt.in", conn=f"c{n}", packet="PINGREQ")
    assert path.read_text() == ""  # not yet: one write for the whole turn
    await asyncio.sleep(0)
    assert [json.loads(line)["conn"] for line in path.read_text().splitlines()] == [
        "c0",
        "c1",
        "c2",
    ]
    recorder.record("mqtt.in", conn="c3", packet="PINGREQ")
    recorder.close()  # close writes what is left
    assert len(path.read_text().splitlines()) == 4


async def test_a_bounded_recorder_keeps_the_newest_and_counts_all(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path=path, keep=100)
    for n in range(1000):
        recorder.record("mqtt.in", n=n)
    assert 100 <= len(recorder.events) <= 126
    assert recorder.events[-1].get("n") == 999
    assert len(recorder) == 1000
    since = len(recorder)
    recorder.record("mqtt.out", n=1000)
    assert (await recorder.wait_for("mqtt.", timeout=TIMEOUT, since=since)).get("n") == 1000
    recorder.close()
    assert len(path.read_text().splitlines()) == 1001  # the file keeps everything


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        Recorder(keep=0)


def test_a_write_left_on_an_ended_loop_does_not_hold_back_the_next(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path=path)

    async def record_and_end(n: int) -> None:
        recorder.record("mqtt.in", n=n)  # its write is scheduled on this loop

    loop = asyncio.new_event_loop()
    loop.run_until_complete(record_and_end(1))  # the loop runs the write...
    loop.close()
    assert len(path.read_text().splitlines()) == 1

    ended = asyncio.new_event_loop()
    ended.call_soon(recorder.record, "mqtt.in")  # recorded as the loop's last act...
    ended.call_soon(ended.stop)
    ended.run_forever()
    ended.close()  # ...so its write never ran there
    asyncio.run(record_and_end(3))  # a new loop writes both
    assert len(path.read_text().splitlines()) == 3
    recorder.close()
