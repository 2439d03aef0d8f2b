"""Gateway workers: N processes on one port in front of mosquitto (harness.workers).

Loopback only. The groups run in child processes (``python -m harness serve --workers``
and ``python -m bench.gateway_proc --workers``), never forked from pytest itself: the
supervisor forks, which is safe only before any event loop or thread runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import loadgen
from bench.servers import Mosquitto, ServerProcess, free_port, mosquitto_path
from harness import cli
from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.auth.policy import MalformedPolicy
from harness.errors import ConfigError
from harness.gateway import GatewayConfig
from harness.mqtt.codec import Publish
from harness.workers import (
    MAX_WORKERS,
    GatewayWorkers,
    SharedCredentialStore,
    WorkersConfig,
    parse_credential_line,
    worker_events_file,
)
from harness.world import WorldConfig
from tests.conftest import SHARED
from tests.timing import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


# The shared key store


def test_a_key_added_in_one_process_is_found_by_another(tmp_path: Path) -> None:
    path = tmp_path / "credentials.jsonl"
    writer = SharedCredentialStore(path, truncate=True)
    reader = SharedCredentialStore(path)  # another worker's view of the same file
    loaded: list[Credential] = []
    reader.on_load = loaded.append
    minted = writer.mint_temporary(now=1000.0, lifetime=60.0, principal="us-east-1:abc")
    static = writer.add_static(principal="alice", policies=('{"Version": "2012-10-17"}',))
    assert reader.lookup(minted.access_key_id) == minted
    assert reader.lookup(static.access_key_id) == static
    assert loaded == [minted, static]
    assert reader.lookup("AKIAUNKNOWN000000000") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds secret keys
    assert minted.secret_access_key not in repr(reader)
    writer.close()
    reader.close()
    # A new group starts with no keys from an earlier run in the same state folder.
    again = SharedCredentialStore(path, truncate=True)
    assert path.read_bytes() == b""
    assert again.lookup(minted.access_key_id) is None
    again.close()


def test_a_line_being_written_is_read_once_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "credentials.jsonl"
    reader = SharedCredentialStore(path)
    line = json.dumps({"access_key_id": "AKIAHALFWRITTEN00000", "secret_access_key": "s" * 40})
    with path.open("ab") as file:
        file.write(b"not json\n[1, 2]\n" + line[:20].encode())
    assert reader.lookup("AKIAHALFWRITTEN00000") is None
    with path.open("ab") as file:
        file.write(line[20:].encode() + b"\n")
    found = reader.lookup("AKIAHALFWRITTEN00000")
    assert found is not None and found.secret_access_key == "s" * 40
    reader.close()


@given(st.binary(max_size=300))
def test_credential_lines_never_raise(line: bytes) -> None:
    found = parse_credential_line(line)
    assert found is None or isinstance(found, Credential)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "access_key_id",
                "secret_access_key",
                "session_token",
                "expires_at",
                "principal",
                "policies",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=8),
            st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3),
        ),
    )
)
def test_credential_lines_of_any_shape_are_a_key_or_none(raw: dict[str, Any]) -> None:
    found = parse_credential_line(json.dumps(raw).encode())
    if found is not None:
        assert found.access_key_id == raw["access_key_id"]
        assert all(isinstance(p, str) for p in found.policies)


def test_worker_events_files_sit_beside_the_supervisors() -> None:
    assert worker_events_file(Path("/s/events.jsonl"), 2) == Path("/s/events-2.jsonl")
    assert worker_events_file(Path("/s/run.log"), 1) == Path("/s/run-1.log")


# Misuse


@pytest.mark.parametrize(
    ("workers", "engine", "expected"),
    [
        (2, None, "needs an external broker"),
        (2, "amqtt", "needs an external broker"),
        (0, "mqtt://127.0.0.1:1883", f"must be 1-{MAX_WORKERS}"),
        (MAX_WORKERS + 1, "mqtt://127.0.0.1:1883", f"must be 1-{MAX_WORKERS}"),
        (True, "mqtt://127.0.0.1:1883", f"must be 1-{MAX_WORKERS}"),
    ],
)
def test_workers_config_refuses_misuse(workers: int, engine: str | None, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        WorkersConfig(world=WorldConfig(gateway=GatewayConfig(engine=engine)), workers=workers)
    assert "\n" not in str(info.value)


def test_workers_config_refuses_the_dyson_side() -> None:
    from simulators.dyson.world import DysonConfig

    world = WorldConfig(gateway=GatewayConfig(engine="mqtt://127.0.0.1:1883"), dyson=DysonConfig())
    with pytest.raises(ConfigError, match="Dyson side"):
        WorkersConfig(world=world, workers=2)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--workers", "2"], "--workers needs an external broker"),
        (["--workers", "2", "--engine", "amqtt"], "--workers needs an external broker"),
        (["--workers", "0", "--engine", "mqtt://127.0.0.1:1"], "0 is not in 1-64"),
        (["--workers", "65", "--engine", "mqtt://127.0.0.1:1"], "65 is not in 1-64"),
        (["--workers", "two", "--engine", "mqtt://127.0.0.1:1"], "not a number of workers"),
        (
            ["--workers", "2", "--engine", "mqtt://127.0.0.1:1", "--devices", "438"],
            "cannot run the Dyson side",
        ),
    ],
)
def test_serve_refuses_workers_misuse_in_one_line(
    options: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["serve", "--state-dir", str(tmp_path / "state"), "-q", *options])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert expected in err and err.count("\n") == 1, err


def test_serve_workers_with_an_unreachable_broker_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    done = subprocess.run(  # noqa: S603 - this Python, our module
        [*_SERVE, "--workers", "2", "--engine", f"mqtt://127.0.0.1:{free_port()}", "-q"],
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "could not start: external MQTT engine" in done.stderr
    assert "not reachable" in done.stderr


def test_serve_workers_on_a_port_in_use_is_one_line_and_exit_2(mosquitto: Mosquitto) -> None:
    done = subprocess.run(  # noqa: S603 - this Python, our module
        [*_SERVE, "--workers", "2", "--engine", mosquitto.url, "--mqtts-port", str(mosquitto.port)],
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot listen on 127.0.0.1 port {mosquitto.port}" in done.stderr


# Running groups


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    binary = mosquitto_path()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
    with Mosquitto(binary) as broker:
        yield broker


_SERVE = [sys.executable, "-m", "harness", "serve"]


class _Serve:
    """``iot-harness serve --workers N`` as a child in its own process group."""

    def __init__(self, *options: str) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - this Python, our module
            [*_SERVE, *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self.descriptor: dict[str, Any] = json.loads(_read_line(self.proc, 12 * TIMEOUT))

    @property
    def worker_pids(self) -> list[int]:
        return [int(p) for p in self.descriptor["workers"]["pids"]]

    def finish(self, timeout: float = 4 * TIMEOUT) -> tuple[int, str]:
        """Wait for the exit; its status and stderr."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=TIMEOUT)


@contextlib.contextmanager
def serving(*options: str) -> Iterator[_Serve]:
    server = _Serve(*options)
    try:
        yield server
    finally:
        server.kill()
        for pid in server.worker_pids:  # a leftover worker would be a bug; end it anyway
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no line from pid {proc.pid} within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=TIMEOUT)
        raise AssertionError(f"the server exited ({proc.returncode}): {err}")
    return line


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def _until(condition: Any, what: str, timeout: float = 4 * TIMEOUT) -> Any:
    """Poll ``condition()`` until it is truthy (files written by other processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.02)


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


class _Placement:
    """Which worker each client id landed on, from the workers' events files."""

    def __init__(self, files: list[str]) -> None:
        self.files = [Path(f) for f in files]

    def worker_of(self, client_id: str) -> int | None:
        for number, path in enumerate(self.files, start=1):
            for event in _events(path):
                if (
                    event["kind"] == "auth.verdict"
                    and event.get("client_id") == client_id
                    and event.get("ok")
                ):
                    return number
        return None

    async def where(self, client_id: str) -> int:
        found: int = await _until(
            lambda: self.worker_of(client_id), f"no accepted CONNECT of {client_id}"
        )
        return found


async def _spread(
    connector: loadgen.Connector, placement: _Placement, prefix: str, workers: int
) -> dict[int, list[loadgen.Connection]]:
    """Connections until every worker has at least one (the kernel picks; 64 at most)."""
    by_worker: dict[int, list[loadgen.Connection]] = {}
    for i in range(64):
        client_id = f"{prefix}-{i}"
        connection = await connector.open(client_id, i, timeout=2 * TIMEOUT)
        by_worker.setdefault(await placement.where(client_id), []).append(connection)
        if len(by_worker) == workers and i >= 7:
            break
    assert sorted(by_worker) == list(range(1, workers + 1)), "the kernel used one worker only"
    return by_worker


async def _cross_worker_publish(by_worker: dict[int, list[loadgen.Connection]], topic: str) -> None:
    """A QoS 1 publish through worker 2 reaches a subscriber on worker 1 (via the broker)."""
    subscriber, publisher = by_worker[1][0], by_worker[2][0]
    received: asyncio.Queue[Publish] = asyncio.Queue()
    subscriber.on_publish = received.put_nowait
    assert await asyncio.wait_for(subscriber.subscribe(topic, 1), TIMEOUT) == (1,)
    publisher.publish(topic, b"across workers", 1)
    message = await asyncio.wait_for(received.get(), 2 * TIMEOUT)
    assert (message.topic, message.payload) == (topic, b"across workers")


async def _close_all(by_worker: dict[int, list[loadgen.Connection]]) -> None:
    await asyncio.gather(*(c.disconnect(timeout=1.0) for cs in by_worker.values() for c in cs))


async def test_mtls_and_static_sigv4_connections_land_on_both_workers(
    mosquitto: Mosquitto,
) -> None:
    """bench.gateway_proc --workers 2: registered things and static keys in every worker."""
    with ServerProcess(
        "--server", "gateway", "--workers", "2", "--engine", mosquitto.url, "--certs", "4",
        timeout=12 * TIMEOUT,
    ) as server:  # fmt: skip
        announcement = server.announcement
        placement = _Placement(announcement["events_files"])
        assert len(announcement["worker_pids"]) == 2
        targets = announcement["targets"]
        assert targets["mtls"]["port"] != targets["wss-sigv4"]["port"]
        spread = {}
        for kind in ("mtls", "wss-sigv4"):
            connector = loadgen.Connector(server.target(kind, kind))
            spread[kind] = await _spread(connector, placement, f"{kind}-client", 2)
        await _cross_worker_publish(spread["mtls"], "workers/mtls")
        await _cross_worker_publish(spread["wss-sigv4"], "workers/sigv4")
        for by_worker in spread.values():
            await _close_all(by_worker)
        stats = server.stats()
        assert stats["worker_pids"] == announcement["worker_pids"]
        assert stats["workers_cpu_s"] > 0
        pids = [int(p) for p in announcement["worker_pids"]]
        proc = server.proc
        assert proc is not None
        server.stop()
        assert proc.returncode == 0
    assert not any(_alive(pid) for pid in pids)


class _TemporaryKeyConnector(loadgen.Connector):
    """SigV4 with a temporary key from Cognito (the session token signed in)."""

    def __init__(self, target: loadgen.Target, credential: Credential) -> None:
        super().__init__(target)
        self.credential = credential

    def request_target(self, index: int = 0) -> tuple[str, list[tuple[str, str]]]:
        url = sigv4.presign_url(
            host=self.target.server_name or self.target.host,
            credential=self.credential,
            region=self.target.region,
            now=time.time(),
        )
        parts = urllib.parse.urlsplit(url)
        return f"{parts.path}?{parts.query}", []


def _cognito_credential(descriptor: dict[str, Any]) -> Credential:
    """GetId + GetCredentialsForIdentity against the supervisor's fake Cognito."""
    context = ssl.create_default_context(cafile=descriptor["iot"]["ca_file"])
    context.check_hostname = False

    def call(target: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - https to our loopback Cognito
            descriptor["cognito"]["url"],
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"AWSCognitoIdentityService.{target}",
            },
        )
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    identity = call("GetId", {"IdentityPoolId": descriptor["cognito"]["identity_pool_id"]})
    keys = call("GetCredentialsForIdentity", {"IdentityId": identity["IdentityId"]})
    raw = keys["Credentials"]
    return Credential(
        access_key_id=raw["AccessKeyId"],
        secret_access_key=raw["SecretKey"],
        session_token=raw["SessionToken"],
    )


def _target(descriptor: dict[str, Any], kind: str) -> loadgen.Target:
    iot = descriptor["iot"]
    extra: dict[str, Any] = {}
    if kind == "wss-custom":
        authorizer = descriptor["authorizers"][0]
        extra = {
            "authorizer": authorizer["name"],
            "authorizer_key_file": authorizer["private_key_file"],
        }
    if kind == "wss-sigv4":
        extra = {"credentials": (("placeholder", "placeholder"),)}
    return loadgen.Target(
        name=kind,
        kind=kind,  # type: ignore[arg-type]
        port=iot["wss_port"],
        host=iot["connect_host"],
        server_name=iot["endpoint"],
        ca_file=iot["ca_file"],
        region=iot["region"],
        **extra,
    )


async def test_serve_workers_share_cognito_keys_and_stop_on_ctrl_c(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with serving(
        "--workers", "2", "--engine", mosquitto.url, "--state-dir", str(state), "-q"
    ) as server:
        descriptor = server.descriptor
        workers = descriptor["workers"]
        assert workers["count"] == 2 and workers["engine"] == mosquitto.url
        assert descriptor["events_file"] == str(state / "events.jsonl")
        assert workers["events_files"] == [str(state / f"events-{n}.jsonl") for n in (1, 2)]
        placement = _Placement(workers["events_files"])
        # Keys minted by the supervisor's Cognito are good on whichever worker a client hits.
        credential = _cognito_credential(descriptor)
        sigv4_connector = _TemporaryKeyConnector(_target(descriptor, "wss-sigv4"), credential)
        by_worker = await _spread(sigv4_connector, placement, "cognito-client", 2)
        custom = await _spread(
            loadgen.Connector(_target(descriptor, "wss-custom")), placement, "custom-client", 2
        )
        await _cross_worker_publish(by_worker, "workers/cognito")
        await _close_all(by_worker)
        await _close_all(custom)
        assert stat.S_IMODE((state / "credentials.jsonl").stat().st_mode) == 0o600
        os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        status, err = server.finish()
        assert status == 0, err
        assert "stopped; events in" in err
        assert not any(_alive(pid) for pid in server.worker_pids)
    secrets = (credential.secret_access_key, credential.session_token or "")
    for path in [state / "events.jsonl", *placement.files]:
        text = path.read_text()
        assert not any(secret in text for secret in secrets), path
    for path in placement.files:
        kinds = [event["kind"] for event in _events(path)]
        assert kinds[-2:] == ["gateway.stopped", "worker.stopped"]
    supervisor = [e["kind"] for e in _events(state / "events.jsonl")]
    assert supervisor.count("worker.started") == 2 and supervisor.count("worker.exited") == 2
    assert supervisor.count("cognito.call") == 2  # GetId, GetCredentialsForIdentity


async def test_a_worker_that_dies_is_reported_and_the_others_stop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with serving(
        "--workers", "2", "--engine", mosquitto.url, "--state-dir", str(tmp_path), "-q"
    ) as server:
        victim, survivor = server.worker_pids
        os.kill(victim, signal.SIGKILL)
        status, err = server.finish()
        assert status == 1
        assert f"worker 1 (pid {victim}) killed by SIGKILL; stopping the others" in err
        await _until(lambda: not _alive(survivor), "the other worker did not stop")
        events = _events(Path(server.descriptor["events_file"]))
        died = [e for e in events if e["kind"] == "worker.exited" and e["worker"] == 1]
        assert died and died[0]["ok"] is False and died[0]["reason"] == "died"


async def test_workers_stop_when_the_supervisor_is_killed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with serving(
        "--workers", "2", "--engine", mosquitto.url, "--state-dir", str(tmp_path), "-q"
    ) as server:
        server.proc.kill()  # the supervisor only: no chance to stop anyone
        server.proc.communicate(timeout=TIMEOUT)
        for pid in server.worker_pids:
            await _until(lambda pid=pid: not _alive(pid), f"worker {pid} outlived its supervisor")


CHECK_DESCRIPTOR = SHARED / "contract" / "check-descriptor"
BIN = Path(sys.executable).parent


@pytest.mark.skipif(
    not CHECK_DESCRIPTOR.is_file() or shutil.which("iot-harness", path=str(BIN)) is None,
    reason="needs ../shared/contract/check-descriptor and the installed iot-harness script",
)
def test_the_shared_contract_check_passes_with_workers(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    options = ["--state-dir", str(tmp_path), "--workers", "2", "--engine", mosquitto.url, "-q"]
    result = subprocess.run(  # noqa: S603 - our own script and arguments
        [sys.executable, str(CHECK_DESCRIPTOR), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "descriptor contract holds" in result.stdout
    assert "stopped; events in" in result.stderr  # its SIGTERM to the group: a clean stop


def test_the_group_holds_its_ports_and_checks_things_before_forking(tmp_path: Path) -> None:
    config = WorkersConfig(
        world=WorldConfig(
            gateway=GatewayConfig(engine="mqtt://127.0.0.1:1"), state_dir=tmp_path, cognito=False
        ),
        workers=2,
    )
    group = GatewayWorkers(config)
    group.open()
    try:
        assert 0 not in (group.wss_port, group.mqtts_port)
        assert group.wss_port != group.mqtts_port
        for port in (group.wss_port, group.mqtts_port):  # reserved: nobody else gets them
            with socket.socket() as other, pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", port))
        with pytest.raises(ConfigError):
            group.register_thing("t", b"not a certificate")
        issued = group.pki.client_cert("thing")
        with pytest.raises(MalformedPolicy):
            group.register_thing("thing", issued.cert_pem, policies=("{not json",))
        group.register_thing("thing", issued.cert_pem, policies=(group.default_policy,))
        assert group.descriptor()["authorizers"][0]["private_key_file"].startswith(str(tmp_path))
    finally:
        group.close()
    with socket.socket() as other:  # released
        other.bind(("127.0.0.1", group.wss_port))


def test_serve_help_documents_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workers N" in out and "SO_REUSEPORT" in out
