"""``iot-harness`` in process: options, errors as one line with exit code 2, ``serve``."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.cli import build_parser, format_event, main, serve, world_config
from harness.events import Event, Recorder
from harness.world import World, WorldConfig
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT


def test_help_without_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "iot-harness" in capsys.readouterr().out


def test_help_documents_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--host",
        "--wss-port",
        "--mqtts-port",
        "--cognito-port",
        "--region",
        "--endpoint-prefix",
        "--account-id",
        "--state-dir",
        "--engine",
        "--credential-lifetime",
        "--sni",
        "--events",
    ):
        assert option in text
    assert "SIGTERM" in text and "0600" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("iot-harness ")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--wss-port", "70000"], "not in 0-65535"),
        (["serve", "--mqtts-port", "x"], "not a port number"),
        (["serve", "--host", "localhost"], "not an IP address"),
        (["serve", "--host", "0.0.0.0"], "not an address a client can connect to"),  # noqa: S104
        (["serve", "--region", "Mars"], "not an AWS region"),
        (["serve", "--endpoint-prefix", "A-B"], "not an endpoint prefix"),
        (["serve", "--account-id", "12"], "not a 12-digit AWS account id"),
        (["serve", "--engine", "http://broker:1883"], "neither 'amqtt' nor mqtt://host:port"),
        (["serve", "--engine", "mqtt://broker:99999"], "neither 'amqtt' nor mqtt://host:port"),
        (["serve", "--engine", "mqtt://"], "neither 'amqtt' nor mqtt://host:port"),
        (["serve", "--credential-lifetime", "0"], "must be > 0"),
        (["serve", "--credential-lifetime", "soon"], "not a number of seconds"),
        (["serve", "--sni", "maybe"], "invalid choice"),
        (["serve", "--bogus"], "unrecognized arguments"),
        (["launch"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert says in captured.err and "error:" in captured.err


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("iot-harness serve: error: ")
    assert "Traceback" not in captured.err
    return captured.err


def test_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--state-dir", str(tmp_path), "--cognito-port", str(port)]
        err = run_main(argv, capsys)
    assert "cannot start" in err and "address already in use" in err and str(port) in err


def test_unreachable_engine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        err = run_main(
            ["serve", "--state-dir", str(tmp_path), "--engine", f"mqtt://127.0.0.1:{port}"],
            capsys,
        )
    assert f"mqtt://127.0.0.1:{port} is not reachable" in err


def test_unwritable_state_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = run_main(["serve", "--state-dir", str(blocker / "state")], capsys)
    assert f"cannot write to {blocker}" in err
    err = run_main(["serve", "--state-dir", str(tmp_path), "--events", str(blocker / "e")], capsys)
    assert f"cannot write to {blocker}" in err


def test_failed_start_removes_the_state_folder_it_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    run_main(["serve", "--engine", "mqtt://127.0.0.1:1"], capsys)
    assert list(tmp_path.iterdir()) == []


def test_options_make_the_world_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--host",
            "127.0.0.2",
            "--wss-port",
            "1443",
            "--mqtts-port",
            "18883",
            "--cognito-port",
            "2443",
            "--region",
            "eu-west-1",
            "--endpoint-prefix",
            "a9cli",
            "--account-id",
            "210987654321",
            "--sni",
            "require",
            "--credential-lifetime",
            "0.5",
            "--engine",
            "mqtt://127.0.0.1:1883",
            "--state-dir",
            str(tmp_path),
            "--events",
            str(tmp_path / "e.jsonl"),
        ]
    )
    config = world_config(args)
    gw = config.gateway
    assert (gw.host, gw.wss_port, gw.mqtts_port) == ("127.0.0.2", 1443, 18883)
    assert (gw.region, gw.endpoint, gw.account_id) == (
        "eu-west-1",
        "a9cli-ats.iot.eu-west-1.amazonaws.com",
        "210987654321",
    )
    assert (gw.sni, gw.engine) == ("require", "mqtt://127.0.0.1:1883")
    assert (config.cognito_port, config.credential_lifetime) == (2443, 0.5)
    assert (config.state_dir, config.events_file) == (tmp_path, tmp_path / "e.jsonl")


def test_default_state_dir_is_a_fresh_private_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    first = world_config(build_parser().parse_args(["serve"])).state_dir
    second = world_config(build_parser().parse_args(["serve"])).state_dir
    assert first is not None and second is not None and first != second
    assert first.parent == tmp_path and first.name.startswith("iot-harness-")
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert world_config(build_parser().parse_args(["serve"])).gateway.engine is None


# Event lines


def test_event_lines_are_one_line_short_and_skip_empty_fields() -> None:
    recorder = Recorder()
    event = recorder.record(
        "auth.verdict",
        conn="c7",
        ok=False,
        reason="signature-mismatch",
        explain="first line\nsecond  line " + "x" * 500,
        sni=None,
        ports=[1, 2],
    )
    line = format_event(event)
    assert "\n" not in line
    assert line.split()[1:4] == ["auth.verdict", "[c7]", "ok=false"]
    assert "reason=signature-mismatch" in line
    assert 'explain="first line second line xxx' in line and "…" in line
    assert "sni=" not in line and "ports=[1,2]" in line
    assert len(line) < 400


def test_event_lines_show_no_secrets() -> None:
    recorder = Recorder()
    recorder.add_secret("SeCrEtSeCrEt")
    event = recorder.record("x.y", token="abc", explain="url?X-Amz-Security-Token=SeCrEtSeCrEt")
    line = format_event(event)
    assert "SeCrEtSeCrEt" not in line and "abc" not in line
    assert format_event(Event(t=1.0, kind="k", fields={"empty": ""})).endswith('empty=""')


# serve() in process


async def run_serve(
    config: WorldConfig, body: Callable[[World, io.StringIO], object], *, quiet: bool = False
) -> tuple[int, str, str]:
    """Run ``serve`` until ``body`` (awaited if a coroutine) is done with the world."""
    stop = asyncio.Event()
    out, err = io.StringIO(), io.StringIO()
    started: asyncio.Future[World] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(config, stop=stop, stdout=out, stderr=err, quiet=quiet, ready=started.set_result)
    )
    try:
        world = await asyncio.wait_for(started, 4 * TIMEOUT)
        result = body(world, out)
        if asyncio.iscoroutine(result):
            await result
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 2 * TIMEOUT)
    return code, out.getvalue(), err.getvalue()


async def test_serve_prints_the_descriptor_then_logs_and_stops(tmp_path: Path) -> None:
    config = WorldConfig(state_dir=tmp_path)
    seen: dict[str, object] = {}

    async def body(world: World, out: io.StringIO) -> None:
        line = out.getvalue()
        assert line.endswith("\n") and line.count("\n") == 1
        seen["descriptor"] = json.loads(line)
        assert seen["descriptor"] == json.loads(json.dumps(world.descriptor()))
        d = world.descriptor()
        credential = world.credentials.mint_temporary(
            now=world.clock.now(), lifetime=60, principal="cli", policies=(world.default_policy,)
        )
        assert credential.session_token is not None
        world.recorder.add_secret(credential.session_token)
        seen["token"] = credential.session_token
        path = world.sigv4_url(credential).split("/", 3)[3]
        client = PahoClient(
            "cli-1",
            websocket=True,
            ca_file=d["iot"]["ca_file"],
            path="/" + path,
            headers={"Host": d["iot"]["endpoint"]},
        )
        await client.connect(d["iot"]["connect_host"], d["iot"]["wss_port"])
        assert (await client.next("connect", "error")).rc == 0
        await client.close()
        await world.recorder.wait_for("lifecycle.disconnected", timeout=TIMEOUT)

    code, out, err = await run_serve(config, body)
    assert code == 0
    assert out.count("\n") == 1  # the descriptor and nothing else on stdout
    lines = err.splitlines()
    assert any(" gateway.started " in line for line in lines)
    assert any(" auth.verdict [c" in line and "ok=true" in line for line in lines)
    assert any(line.startswith("iot-harness: serving ") for line in lines)
    assert lines[-1] == f"iot-harness: stopped; events in {tmp_path / 'events.jsonl'}"
    assert str(seen["token"]) not in err
    events = (tmp_path / "events.jsonl").read_text()
    assert '"kind": "gateway.stopped"' in events
    assert str(seen["token"]) not in events


async def test_serve_quiet_logs_only_the_summary(tmp_path: Path) -> None:
    code, out, err = await run_serve(
        WorldConfig(state_dir=tmp_path), lambda world, out: None, quiet=True
    )
    assert code == 0 and json.loads(out)["events_file"] == str(tmp_path / "events.jsonl")
    assert [line.split(":")[0] for line in err.splitlines()] == ["iot-harness"] * 3


@pytest.mark.parametrize("command", ["serve", "run", "list", "report", "sandbox"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert f"iot-harness {command}" in capsys.readouterr().out
