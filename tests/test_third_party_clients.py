"""Real third-party clients in scenarios and in the sandbox (issue [clients], "Running any
client": paho-mqtt 2.x with both callback APIs, awsiotsdk, libdyson-neon, a Node.js client).

The catalogue test (``tests/test_scenarios.py``) runs every ``scenarios/client-*.yaml``
with the runner already; this file checks what it cannot:

* FB-01's known failure fails for the reason the field saw (``missing 1 required
  positional argument: 'rc'``), as an event on the timeline;
* awsiotsdk under its real endpoint name and default ports, and libdyson-neon at
  ``<serial>.local:1883``, in ``iot-harness sandbox`` (skipped where ``unshare`` cannot
  make namespaces), the former judged by the same scenario file;
* the Node.js client with its npm packages installed (``npm ci`` into a temporary copy,
  skipped with the reason where node or npm is missing or the install fails), by the
  runner and in the sandbox;
* a command client that cannot run here is skipped with the reason, not failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import sandbox
from harness.sandbox import SandboxUnavailable
from harness.scenario import Scenario, load_scenario
from harness.scenario.model import ClientSpec
from harness.scenario.runner import ScenarioOutcome, run_scenario_async
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
CLIENTS = SCENARIOS / "clients"
NODE_CLIENT = CLIENTS / "node"
#: Seconds a finished run goes on watching (as tests/test_scenarios.py).
SETTLE = 0.3
#: Seconds a whole sandbox run (world, client, teardown) may take.
SANDBOX_TIMEOUT = 6 * TIMEOUT
#: Seconds ``npm ci`` may take (the registry, or npm's cache).
NPM_TIMEOUT = 30 * TIMEOUT


def scenario(name: str) -> Scenario:
    return load_scenario(SCENARIOS / f"{name}.yaml")


def client(of: Scenario, name: str) -> ClientSpec:
    (spec,) = [c for c in of.clients if c.name == name]
    return spec


async def run(of: Scenario, spec: ClientSpec) -> ScenarioOutcome:
    return await run_scenario_async(of, client=spec, settle=SETTLE)


def fields(outcome: ScenarioOutcome, kind: str) -> list[dict[str, Any]]:
    return [e.to_json() for e in outcome.events if e.kind == kind]


# paho-mqtt 2.x, VERSION1 and VERSION2 callbacks (field-bugs.md FB-01)


async def test_fb01_fails_for_the_fields_reason_and_the_thread_is_gone() -> None:
    """The correct clients pass in the catalogue; the FB-01 client fails its expectations
    because its disconnect handler raised, as hass-dyson's did, and paho never reconnected."""
    of = scenario("client-paho-callback-versions")
    outcome = await run(of, client(of, "paho-version1-with-a-version2-handler"))
    assert outcome.verdict == "xfailed", outcome.explain()
    (crash,) = fields(outcome, "client.exception")
    assert crash["error"].endswith("missing 1 required positional argument: 'rc'")
    (gave_up,) = fields(outcome, "client.gave_up")
    assert gave_up["network_thread_alive"] is False
    (never,) = [r for r in outcome.failed_results if "client.exception" in r.label]
    assert [e.kind for e in never.events] == ["client.exception"], never.explain
    assert not fields(outcome, "client.connected")[1:]  # connected once, never again


# The sandbox: real names and real ports


@pytest.fixture(scope="module")
def can_sandbox() -> None:
    try:
        sandbox.check_environment(user_namespace=os.geteuid() != 0)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """This environment without AWS settings: boto3 and awscrt see no ~/.aws."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def iot_harness_sandbox(
    state: Path, options: Sequence[str], command: Sequence[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``iot-harness sandbox --state-dir STATE OPTIONS -- COMMAND``."""
    argv = [sys.executable, "-m", "harness", "sandbox", "--state-dir", str(state), *options]
    return subprocess.run(  # noqa: S603 - our interpreter, our arguments
        [*argv, "--", *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=SANDBOX_TIMEOUT,
        check=False,
    )


def stdout_events(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def timeline(state: Path) -> list[dict[str, Any]]:
    lines = (state / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_awsiotsdk_under_its_real_endpoint_name_judged_by_the_scenario(
    can_sandbox: None, tmp_path: Path, client_env: dict[str, str]
) -> None:
    pytest.importorskip("awsiot", reason="awsiotsdk is not installed")
    of = scenario("client-awsiotsdk")
    done = iot_harness_sandbox(
        tmp_path / "state",
        ["--scenario", str(of.path)],
        [sys.executable, str(CLIENTS / "client_awsiotsdk_real_name.py")],
        client_env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for expectation in ("authenticated", "round-trip"):
        assert f"PASS {expectation}" in done.stderr
    endpoint = of.world.gateway.endpoint
    connected = [e for e in stdout_events(done) if e["kind"] == "client.connected"]
    assert [(e["auth"], e["host"], e["port"]) for e in connected] == [
        ("sigv4", endpoint, 443),
        ("custom-auth", endpoint, 443),
        ("custom-auth-wss", endpoint, 443),
        ("mtls", endpoint, 443),
        ("mtls-8883", endpoint, 8883),
    ]
    events = timeline(tmp_path / "state")
    gateway = [e for e in events if e["kind"] == "tls.handshake" and "server" not in e]
    assert len(gateway) == 5 and all(h["ok"] and h["sni"] == endpoint for h in gateway)
    assert {h["alpn"] for h in gateway} >= {"mqtt", "x-amzn-mqtt-ca"}
    assert [(h["client_certificate"]) for h in gateway][3:] == [True, True]
    cognito = [e["operation"] for e in events if e["kind"] == "cognito.call" and e["ok"]]
    assert cognito == ["GetId", "GetCredentialsForIdentity"]  # boto3, then awscrt's provider


def test_libdyson_at_the_devices_local_name_and_port_1883(
    can_sandbox: None, tmp_path: Path, client_env: dict[str, str]
) -> None:
    pytest.importorskip("libdyson", reason="libdyson-neon is not installed")
    done = iot_harness_sandbox(
        tmp_path / "state",
        ["--devices", "438:local"],
        [sys.executable, str(CLIENTS / "client_libdyson.py")],
        client_env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (started,) = [e for e in stdout_events(done) if e["kind"] == "client.started"]
    assert (started["host"], started["port"]) == (f"{started['serial']}.local", 1883)
    states = [e for e in stdout_events(done) if e["kind"] == "client.state"]
    assert [(s["is_on"], s["speed"]) for s in states] == [(False, None), (True, None), (True, 7)]
    events = timeline(tmp_path / "state")
    verdicts = [e for e in events if e["kind"] == "auth.verdict"]
    assert [(v["stage"], v["ok"]) for v in verdicts] == [("dyson-local", True)]
    commands = [e["msg"] for e in events if e["kind"] == "dyson.command"]
    assert commands.count("STATE-SET") == 2


# Node.js: mqtt.js from npm


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of scenarios/clients/node with its packages installed by ``npm ci`` (the
    lock file's versions), outside the scenario folder; skipped with the reason where
    node or npm is missing or the install fails."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed: the Node.js client cannot run here")
    folder = tmp_path_factory.mktemp("node-client")
    for name in ("package.json", "package-lock.json", "client.js"):
        shutil.copy(NODE_CLIENT / name, folder / name)
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],  # noqa: S607
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci took more than {NPM_TIMEOUT} s")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"npm ci failed (exit {done.returncode}): {said}")
    return folder / "client.js"


async def test_mqttjs_signs_its_own_url_and_gets_its_message_back(node_client: Path) -> None:
    of = scenario("client-node-mqttjs")
    spec = client(of, "mqttjs")
    installed = dataclasses.replace(
        spec,
        argv=("node", str(node_client), *spec.argv[2:]),
        options={"needs_files": [str(node_client.parent / "node_modules/mqtt/package.json")]},
    )
    outcome = await run(of, installed)
    assert outcome.verdict == "passed", outcome.explain()
    (started,) = fields(outcome, "client.started")[1:]
    assert started["library"].startswith("mqtt.js 5.")
    (upgrade,) = [v for v in fields(outcome, "auth.verdict") if v["stage"] == "upgrade"]
    assert upgrade["method"] == "sigv4"
    (handshake,) = [h for h in fields(outcome, "tls.handshake") if "sni" in h]
    assert handshake["sni"] == of.world.gateway.endpoint


def test_mqttjs_in_the_sandbox_under_the_real_names(
    can_sandbox: None, node_client: Path, tmp_path: Path, client_env: dict[str, str]
) -> None:
    done = iot_harness_sandbox(tmp_path / "state", [], ["node", str(node_client)], client_env)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [e["kind"] for e in stdout_events(done)]
    assert "client.message" in kinds and "client.error" not in kinds, done.stdout
    events = timeline(tmp_path / "state")
    # Cognito answers only at cognito-identity.<region>.amazonaws.com:443 in there.
    cognito = [e["operation"] for e in events if e["kind"] == "cognito.call" and e["ok"]]
    assert cognito == ["GetId", "GetCredentialsForIdentity"]
    upgrades = [e for e in events if e["kind"] == "ws.upgrade"]
    assert [u["status"] for u in upgrades] == [101]


# Clients that cannot run here


async def test_a_command_that_is_not_installed_is_skipped_with_the_reason() -> None:
    of = scenario("client-node-mqttjs")
    spec = dataclasses.replace(
        client(of, "mqttjs"), argv=("iot-harness-no-such-program", "client.js")
    )
    outcome = await run(of, spec)
    assert outcome.verdict == "skipped"
    assert outcome.reason == (
        "client 'mqttjs': iot-harness-no-such-program is not installed (not on PATH)"
    )


async def test_missing_packages_skip_the_client_and_say_how_to_install_them(
    tmp_path: Path,
) -> None:
    of = scenario("client-node-mqttjs")
    spec = client(of, "mqttjs")
    gone = str(tmp_path / "node_modules/mqtt/package.json")
    outcome = await run(
        of,
        dataclasses.replace(
            spec, argv=(sys.executable, "-c", "0"), options={**spec.options, "needs_files": [gone]}
        ),
    )
    assert outcome.verdict == "skipped"
    assert outcome.reason is not None
    assert outcome.reason.endswith(f"{gone} missing; run `npm ci` in scenarios/clients/node")
