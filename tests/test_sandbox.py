"""The sandbox (harness.sandbox, ``iot-harness sandbox``): unmodified clients with
hard-coded hosts and the real ports, in a private network and mount namespace.

The pure parts (addresses, hosts file, settings, argv) are tested in process; the rest
by running ``python -m harness.sandbox_command`` with a client command: paho-mqtt 2.x with
a SigV4 URL and boto3's Cognito at their default endpoints, awsiotsdk under the real
endpoint name (SigV4 with awscrt's own Cognito provider, custom authorizer direct on 443,
mTLS on 8883), the Dyson API and a device's local broker by name, every part on its own
address and well-known port with nothing in between, exit statuses, the scenario path,
and the host's ``/etc/hosts`` left alone. Those skip where ``unshare`` is missing or
refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import sandbox, sandbox_command
from harness.errors import ConfigError
from harness.resolver import Route
from harness.sandbox import (
    CA_ENVIRONMENT,
    SandboxSettings,
    SandboxUnavailable,
    hosts_file_text,
    plan_hosts,
    unshare_argv,
)
from harness.scenario import load_scenario_text
from tests.timing import TIMEOUT

REGION = "eu-west-1"
PREFIX = "a1sandboxtest"
ENDPOINT = f"{PREFIX}-ats.iot.{REGION}.amazonaws.com"
COGNITO = f"cognito-identity.{REGION}.amazonaws.com"
COGNITO_DEFAULT = "cognito-identity.us-east-1.amazonaws.com"
#: One sandbox run: interpreter start-ups, a world, the client's connections.
RUN_TIMEOUT = 6 * TIMEOUT


# The address plan, the hosts file, the settings (pure)


def test_every_name_goes_to_the_address_that_serves_it() -> None:
    routes = {
        ENDPOINT: Route("127.0.0.1", {443: 443, 8883: 8883}),
        COGNITO: Route("127.0.0.2", {443: 443}),
        "appapi.cp.dyson.com": Route("127.0.0.3", {443: 443}),
        "appapi.cp.dyson.cn": Route("127.0.0.3", {443: 443}),
        "SIM-EU-438X0001.local.": Route("127.0.0.4", {1883: 1883}),
        "sim-eu-527x0002.local": Route("127.0.0.5", {1883: 1883}),
    }
    assert plan_hosts(routes) == {
        ENDPOINT: "127.0.0.1",
        COGNITO: "127.0.0.2",
        "appapi.cp.dyson.com": "127.0.0.3",
        "appapi.cp.dyson.cn": "127.0.0.3",
        "sim-eu-438x0001.local": "127.0.0.4",
        "sim-eu-527x0002.local": "127.0.0.5",
    }


@pytest.mark.parametrize(
    ("route", "says"),
    [
        (Route("127.0.0.2", {443: 40001}), "served on 127.0.0.2 port 40001 for 443: the"),
        (Route("10.0.0.1", {443: 443}), "served on 10.0.0.1: the sandbox needs"),
        (Route("localhost", {1883: 1883}), "served on localhost: the sandbox needs"),
    ],
)
def test_a_name_not_served_at_its_well_known_port_is_a_config_error(
    route: Route, says: str
) -> None:
    """Nothing in the sandbox carries a client from 443 to another port or address."""
    with pytest.raises(ConfigError, match=f"^x.example is {says}"):
        plan_hosts({ENDPOINT: Route("127.0.0.1", {443: 443}), "x.example": route})


@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}\.example", fullmatch=True),
        st.tuples(
            st.sampled_from(["127.0.0.1", "127.0.0.2", "10.0.0.1"]),
            st.dictionaries(
                st.sampled_from([443, 8883, 1883]), st.sampled_from([443, 8883, 1883, 40000])
            ),
        ),
        max_size=12,
    )
)
def test_any_routes_map_to_their_own_addresses_or_say_which_cannot(
    raw: dict[str, tuple[str, dict[int, int]]],
) -> None:
    routes = {name: Route(address, ports) for name, (address, ports) in raw.items()}
    direct = {
        name: route.address
        for name, route in routes.items()
        if route.address.startswith("127.") and all(k == b for k, b in route.ports.items())
    }
    if len(direct) == len(routes):
        assert plan_hosts(routes) == direct
    else:
        with pytest.raises(ConfigError, match="the sandbox needs each name") as caught:
            plan_hosts(routes)
        assert str(caught.value).split(" is served")[0] in set(routes) - set(direct)


def test_the_standard_world_puts_every_part_on_its_own_address_and_port(tmp_path: Path) -> None:
    """The addresses and ports the sandbox's world binds: what plan_hosts needs, no relay."""
    settings = SandboxSettings(
        command=("true",), state_dir=tmp_path, devices="438,527:cloud,438M:local@5000"
    )
    config, notes = sandbox.world_config(settings)
    gw = config.gateway
    assert (gw.host, gw.wss_port, gw.mqtts_port) == ("127.0.0.1", 443, 8883)
    assert (config.cognito_host, config.cognito_port) == ("127.0.0.2", 443)
    assert config.dyson is not None
    assert (config.dyson.api_host, config.dyson.api_port) == ("127.0.0.3", 443)
    assert [(d.mode, d.local_host, d.local_port) for d in config.dyson.devices] == [
        ("both", "127.0.0.4", 1883),
        ("cloud", None, 0),
        ("local", "127.0.0.5", 1883),
    ]
    assert notes == ["device 438M: its local broker listens on 1883 in the sandbox, not on 5000"]


def test_the_hosts_file_names_ours_first_and_keeps_the_hosts_other_lines() -> None:
    original = (
        "127.0.0.1 localhost\n"
        "10.1.2.3 buildbox  # this machine\n"
        f"52.1.1.1 {ENDPOINT.upper()} # a stale pin\n"
    )
    text = hosts_file_text({ENDPOINT: "127.0.0.1", COGNITO: "127.0.0.2"}, original)
    lines = text.splitlines()
    assert lines[2:4] == [f"127.0.0.1\t{ENDPOINT}", f"127.0.0.2\t{COGNITO}"]
    assert "10.1.2.3 buildbox  # this machine" in lines
    assert "52.1.1.1" not in text
    assert text.endswith("\n")


def test_unshare_uses_a_user_namespace_only_when_asked() -> None:
    assert unshare_argv(["x", "-y"], user_namespace=False) == [
        "unshare",
        "-n",
        "-m",
        "--",
        "x",
        "-y",
    ]
    assert unshare_argv(["x"], user_namespace=True)[:4] == ["unshare", "-r", "-n", "-m"]


def test_the_command_environment_names_the_descriptor_and_the_ca() -> None:
    env = sandbox.client_environment(
        {"PATH": "/bin", "SSL_CERT_FILE": "/etc/ssl/other.pem"},
        descriptor_file=Path("/s/descriptor.json"),
        ca_file=Path("/s/pki/ca.pem"),
    )
    assert env["IOT_HARNESS_DESCRIPTOR"] == "/s/descriptor.json"
    assert {env[name] for name in CA_ENVIRONMENT} == {"/s/pki/ca.pem"}
    assert {"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"} <= set(CA_ENVIRONMENT)
    assert env["PATH"] == "/bin"


def test_exit_status_is_the_shells() -> None:
    assert [sandbox.exit_status(c) for c in (0, 7, -15, -9)] == [0, 7, 143, 137]


def test_settings_round_trip_through_json(tmp_path: Path) -> None:
    settings = SandboxSettings(
        command=("python", "-c", "print(1)"),
        state_dir=tmp_path,
        events_file=tmp_path / "e.jsonl",
        region=REGION,
        credential_lifetime=2.5,
        devices="438,527:cloud",
        things=("a", "b"),
        scenario=tmp_path / "s.yaml",
        user_namespace=True,
        outer_namespaces={"net": "net:[1]", "mnt": "mnt:[2]"},
    )
    assert SandboxSettings.from_json(settings.to_json()) == settings


_SETTING_NAMES = [f.name for f in dataclasses.fields(SandboxSettings)]
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@given(
    st.text(max_size=200)
    | st.builds(
        json.dumps,
        st.dictionaries(st.sampled_from(_SETTING_NAMES) | st.text(max_size=8), _JSON_VALUES),
    )
)
def test_any_settings_text_loads_or_is_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        settings = SandboxSettings.from_json(text)
        assert settings.command


def test_settings_refuse_an_empty_command_and_repeated_things(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no command to run"):
        SandboxSettings(command=(), state_dir=tmp_path)
    with pytest.raises(ConfigError, match="repeat"):
        SandboxSettings(command=("true",), state_dir=tmp_path, things=("a", "a"))


def test_the_inner_process_refuses_to_mount_in_the_hosts_namespaces(tmp_path: Path) -> None:
    """The guard that keeps the host's /etc/hosts safe: same namespaces, nothing mounted."""
    before = Path("/etc/hosts").read_bytes()
    settings = SandboxSettings(
        command=("true",), state_dir=tmp_path, outer_namespaces=sandbox.namespaces()
    )
    with pytest.raises(SandboxUnavailable, match="not in a fresh"):
        sandbox.enter_network(settings)
    with pytest.raises(SandboxUnavailable, match="not in a fresh"):
        sandbox.enter_network(SandboxSettings(command=("true",), state_dir=tmp_path))
    assert Path("/etc/hosts").read_bytes() == before


def test_a_scenario_world_listens_on_the_real_ports_with_notes_on_what_is_left_out(
    tmp_path: Path,
) -> None:
    scenario = load_scenario_text(SCENARIO, name="sandbox-scenario")
    settings = SandboxSettings(
        command=("true",), state_dir=tmp_path, endpoint_prefix="override1", things=("t",)
    )
    config, notes = sandbox.world_config(settings, scenario)
    gw = config.gateway
    assert (gw.host, gw.wss_port, gw.mqtts_port) == ("127.0.0.1", 443, 8883)
    assert (gw.region, gw.endpoint_prefix, gw.sni) == (REGION, "override1", "require")
    assert config.state_dir == tmp_path
    assert notes == ["the scenario's faults are not applied in the sandbox"]


# The command line, in process


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = sandbox_command.main(argv, stderr=err)
    return code, err.getvalue()


def test_a_missing_command_is_a_clear_error() -> None:
    code, err = run_command(["--region", REGION])
    assert code == 2
    assert err == (
        "iot-harness sandbox: error: no command to run: give it after --, "
        "e.g. iot-harness sandbox -- python app.py\n"
    )


def test_bad_options_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(["--region", "Mars", "--", "true"])[0] == 2
    assert "is not an AWS region" in capsys.readouterr().err
    assert run_command(["--devices", "999", "--", "true"])[0] == 2
    assert run_command(["--thing", "no spaces", "--", "true"])[0] == 2


def test_a_broken_scenario_is_reported_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\npurpose: y\nworld: {gateway: {region: 7}}\n")
    code, err = run_command(["--scenario", str(path), "--", "true"])
    assert code == 2
    assert err.startswith("iot-harness sandbox: error: ") and "bad.yaml" in err


def test_the_parser_mounts_on_a_subparser() -> None:
    parser = argparse.ArgumentParser(prog="iot-harness")
    sub = parser.add_subparsers(dest="command")
    sandbox_command.add_arguments(sub.add_parser("sandbox"))
    args = parser.parse_args(["sandbox", "--thing", "t", "--", "python", "-c", "x", "--y"])
    assert (args.command, args.cmd, args.things) == ("sandbox", ["python", "-c", "x", "--y"], ["t"])
    settings = sandbox_command.settings_from_args(args, state_dir=Path("rel"))
    assert settings.state_dir.is_absolute() and settings.region is None


# Real sandboxes


@pytest.fixture(scope="module")
def can_sandbox() -> None:
    try:
        sandbox.check_environment(user_namespace=os.geteuid() != 0)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without AWS settings (boto3 and awscrt see no ~/.aws)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def sandbox_argv(state_dir: Path, options: Sequence[str], command: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness.sandbox_command",
        "--state-dir",
        str(state_dir),
        *options,
        "--",
        *command,
    ]


def run_sandbox(
    tmp_path: Path,
    command: Sequence[str],
    *options: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        sandbox_argv(tmp_path / "state", options, command),
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


PAHO_CLIENT = f"""
import json, os, queue, sys, time, urllib.parse
import boto3
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from harness.auth.credentials import Credential
from harness.auth.sigv4 import presign_url

REGION = "{REGION}"
ENDPOINT = "{ENDPOINT}"   # hard-coded, as field apps do
TIMEOUT = {2 * TIMEOUT}

pool = json.load(open(os.environ["IOT_HARNESS_DESCRIPTOR"]))["cognito"]["identity_pool_id"]
cognito = boto3.client("cognito-identity", region_name=REGION)  # its default endpoint
identity = cognito.get_id(IdentityPoolId=pool)["IdentityId"]
wire = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
credential = Credential(wire["AccessKeyId"], wire["SecretKey"], wire["SessionToken"])
url = urllib.parse.urlsplit(
    presign_url(host=ENDPOINT, credential=credential, region=REGION, now=time.time())
)

happened = queue.Queue()
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sandbox-paho", transport="websockets")
client.on_connect = lambda c, u, f, rc, p: happened.put(("connect", rc.value))
client.on_subscribe = lambda c, u, mid, rcs, p: happened.put(("subscribe", rcs[0].value))
client.on_message = lambda c, u, m: happened.put(("message", m.topic, m.payload))
client.ws_set_options(path=url.path + "?" + url.query)
client.tls_set()  # the default trust store: SSL_CERT_FILE
client.connect(ENDPOINT, 443)
client.loop_start()
assert happened.get(timeout=TIMEOUT) == ("connect", 0)
client.subscribe("sandbox/paho", qos=1)
assert happened.get(timeout=TIMEOUT) == ("subscribe", 1)
client.publish("sandbox/paho", b"hello from the sandbox", qos=1)
print(happened.get(timeout=TIMEOUT))
client.disconnect()
client.loop_stop()
"""


@pytest.mark.interop
def test_paho_and_boto3_reach_the_real_names_on_the_real_ports(
    can_sandbox: None, tmp_path: Path, client_env: dict[str, str]
) -> None:
    script = tmp_path / "paho_client.py"
    script.write_text(PAHO_CLIENT)
    done = run_sandbox(
        tmp_path,
        [sys.executable, str(script)],
        "--region",
        REGION,
        "--endpoint-prefix",
        PREFIX,
        env=client_env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "('message', 'sandbox/paho', b'hello from the sandbox')\n"
    assert f"{ENDPOINT} → 127.0.0.1 (wss 443, mqtts 8883)" in done.stderr
    assert f"{COGNITO} → 127.0.0.2 (443)" in done.stderr
    assert f"exited with 0; events in {tmp_path / 'state' / 'events.jsonl'}" in done.stderr
    timeline = events(tmp_path)
    calls = [e["operation"] for e in timeline if e["kind"] == "cognito.call" and e["ok"]]
    assert calls == ["GetId", "GetCredentialsForIdentity"]
    (upgrade,) = [e for e in timeline if e["kind"] == "auth.verdict" and e["stage"] == "upgrade"]
    assert upgrade["ok"] is True
    handshakes = [e for e in timeline if e["kind"] == "tls.handshake" and e.get("sni") == ENDPOINT]
    assert handshakes and all(h["ok"] for h in handshakes)


AWSIOTSDK_CLIENT = f"""
import json, os, queue, sys, uuid
import boto3
from awscrt import auth, io, mqtt
from awsiot import mqtt_connection_builder
from harness.pki import TokenSigningKey

REGION = "{REGION}"
ENDPOINT = "{ENDPOINT}"  # the real endpoint name, default ports
TIMEOUT = {2 * TIMEOUT}
CA = os.environ["SSL_CERT_FILE"]
descriptor = json.load(open(os.environ["IOT_HARNESS_DESCRIPTOR"]))


def round_trip(connection, topic):
    received = queue.Queue()
    connection.connect().result(TIMEOUT)
    subscribed, _ = connection.subscribe(
        topic, mqtt.QoS.AT_LEAST_ONCE, lambda topic, payload, **_: received.put(payload)
    )
    subscribed.result(TIMEOUT)
    published, _ = connection.publish(topic, topic.encode(), mqtt.QoS.AT_LEAST_ONCE)
    published.result(TIMEOUT)
    assert received.get(timeout=TIMEOUT) == topic.encode()
    connection.disconnect().result(TIMEOUT)
    print(topic, connection.port)


common = dict(endpoint=ENDPOINT, ca_filepath=CA, clean_session=True, keep_alive_secs=30,
              reconnect_min_timeout_secs=60)

# SigV4 over WSS with awscrt's own Cognito provider: cognito-identity.<region>:443, natively
pool = descriptor["cognito"]["identity_pool_id"]
identity = boto3.client("cognito-identity", region_name=REGION).get_id(IdentityPoolId=pool)
tls = io.TlsContextOptions()
tls.override_default_trust_store_from_path(None, CA)
provider = auth.AwsCredentialsProvider.new_cognito(
    endpoint=f"cognito-identity.{{REGION}}.amazonaws.com",
    identity=identity["IdentityId"],
    tls_ctx=io.ClientTlsContext(tls),
)
round_trip(
    mqtt_connection_builder.websockets_with_default_aws_signing(
        region=REGION, credentials_provider=provider, client_id="crt-sigv4", **common
    ),
    "crt/sigv4",
)

# Custom authorizer, MQTT with ALPN on 443 (the builder forces 443)
authorizer = descriptor["authorizers"][0]
token = str(uuid.uuid4())
round_trip(
    mqtt_connection_builder.direct_with_custom_authorizer(
        auth_authorizer_name=authorizer["name"],
        auth_token_key_name=authorizer["token_key"],
        auth_token_value=token,
        auth_authorizer_signature=TokenSigningKey.load(authorizer["private_key_file"]).sign(token),
        client_id="crt-custom",
        **common,
    ),
    "crt/custom",
)

# mTLS with the thing certificate the sandbox minted (--thing): the builder's default
# port (443, ALPN x-amzn-mqtt-ca), then 8883
(thing,) = descriptor["things"]
for port in (None, 8883):
    round_trip(
        mqtt_connection_builder.mtls_from_path(
            cert_filepath=thing["cert_file"], pri_key_filepath=thing["key_file"],
            client_id=f"{{thing['name']}}-{{port}}",  # AWS throttles reconnects by client id
            **common, **({{"port": port}} if port else {{}}),
        ),
        "crt/mtls",
    )
"""


@pytest.mark.interop
def test_awsiotsdk_under_its_real_endpoint_name(
    can_sandbox: None, tmp_path: Path, client_env: dict[str, str]
) -> None:
    script = tmp_path / "crt_client.py"
    script.write_text(AWSIOTSDK_CLIENT)
    done = run_sandbox(
        tmp_path,
        [sys.executable, str(script)],
        "--region",
        REGION,
        "--endpoint-prefix",
        PREFIX,
        "--thing",
        "crt-thing",
        env=client_env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "crt/sigv4 443",
        "crt/custom 443",
        "crt/mtls 443",
        "crt/mtls 8883",
    ]
    timeline = events(tmp_path)
    verdicts = [e for e in timeline if e["kind"] == "auth.verdict"]
    assert verdicts and all(v["ok"] for v in verdicts), verdicts
    provider_calls = [e for e in timeline if e["kind"] == "cognito.call" and e["ok"]]
    assert [c["operation"] for c in provider_calls] == ["GetId", "GetCredentialsForIdentity"]
    alpns = {e.get("alpn") for e in timeline if e["kind"] == "tls.handshake" and e["ok"]}
    assert {"mqtt", "x-amzn-mqtt-ca"} <= alpns


def test_the_exit_status_is_the_commands(can_sandbox: None, tmp_path: Path) -> None:
    done = run_sandbox(tmp_path, ["sh", "-c", "echo out; echo err >&2; exit 7"], "-v")
    assert done.returncode == 7
    assert done.stdout == "out\n"
    assert "err\n" in done.stderr and "sh exited with 7" in done.stderr
    assert "gateway.started" in done.stderr  # -v logs every event, from the start
    assert "sandbox.exit program=sh status=7" in done.stderr


def test_a_command_killed_by_a_signal_exits_128_plus_its_number(
    can_sandbox: None, tmp_path: Path
) -> None:
    done = run_sandbox(tmp_path, ["sh", "-c", "kill -TERM $$"], "--user-namespace")
    assert done.returncode == 128 + 15, done.stderr


def test_a_command_that_does_not_exist_is_127(can_sandbox: None, tmp_path: Path) -> None:
    code, err = run_command(["--state-dir", str(tmp_path), "--", "no-such-command-x1"])
    assert code == 127
    assert err == "iot-harness sandbox: error: command not found: no-such-command-x1\n"


def test_when_unshare_is_missing_the_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare, mount or ip here
    code, err = run_command(["--state-dir", str(tmp_path), "--", "true"])
    assert code == 2
    assert err == (
        "iot-harness sandbox: error: `unshare` is not installed (Debian package util-linux)\n"
    )


def test_when_unshare_is_refused_the_error_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("mount", "ip"):
        (fake / tool).symlink_to("/bin/true")
    (fake / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n"
    )
    (fake / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    code, err = run_command(["--state-dir", str(tmp_path), "--user-namespace", "--", "true"])
    assert code == 2
    assert err.startswith(
        "iot-harness sandbox: error: unshare refused to make a private network and mount "
        "namespace (unshare: unshare failed: Operation not permitted); unprivileged user "
        "namespaces look disabled"
    )
    assert err.count("\n") == 1


def read_lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def finish(inner: subprocess.Popen[str]) -> None:
    """End a sandbox a test left running and close its pipes. SIGTERM first: the launcher
    passes it on, so the command ends, the world stops and nothing inside the namespaces
    keeps a pipe open (a pump thread still reading would block ``close``); SIGKILL after
    :data:`RUN_TIMEOUT`."""
    if inner.poll() is None:
        inner.terminate()
        try:
            inner.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            inner.kill()
            inner.wait()
    for stream in (inner.stdin, inner.stdout, inner.stderr):
        if stream is not None and not stream.closed:
            stream.close()


@pytest.fixture
def hosts_before() -> Iterator[tuple[bytes, int, int]]:
    stat = os.stat("/etc/hosts")
    snapshot = (Path("/etc/hosts").read_bytes(), stat.st_ino, stat.st_mtime_ns)
    yield snapshot
    stat = os.stat("/etc/hosts")
    assert (Path("/etc/hosts").read_bytes(), stat.st_ino, stat.st_mtime_ns) == snapshot


def test_the_hosts_etc_hosts_is_never_touched(
    can_sandbox: None, tmp_path: Path, hosts_before: tuple[bytes, int, int]
) -> None:
    """While the command runs (it waits on its stdin), the host still sees its own
    /etc/hosts and no mount over it; the command sees the private one."""
    command = ["sh", "-c", "grep -c amazonaws.com /etc/hosts; read line; echo got $line"]
    inner = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        sandbox_argv(tmp_path / "state", ["--devices", "438"], command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert inner.stdin is not None and inner.stdout is not None
        lines = read_lines(inner.stdout)
        assert lines.get(timeout=RUN_TIMEOUT) == "2\n"  # the endpoint and Cognito
        assert Path("/etc/hosts").read_bytes() == hosts_before[0]
        assert " /etc/hosts " not in Path("/proc/self/mounts").read_text()
        inner.stdin.write("go\n")
        inner.stdin.close()
        assert lines.get(timeout=RUN_TIMEOUT) == "got go\n"
        assert inner.wait(timeout=RUN_TIMEOUT) == 0
    finally:
        finish(inner)
    hosts = (tmp_path / "state" / "hosts").read_text()
    assert "appapi.cp.dyson.com" in hosts and "sim-eu-438x0001.local" in hosts


SCENARIO = f"""\
name: sandbox-scenario
purpose: the sandbox starts a scenario's world and judges its expectations
world:
  gateway:
    region: {REGION}
    endpoint_prefix: {PREFIX}
    sni: require
  identity_pools:
    - name: player
      credential_lifetime: 2
  things:
    - name: thing-a
faults:
  - name: cut
    at: 30
    action: drop-connection
expectations:
  - name: asked-cognito
    happens: {{kind: cognito.call, operation: GetId}}
"""


def test_a_scenario_world_with_its_expectations_judged(can_sandbox: None, tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    done = run_sandbox(
        tmp_path, ["sh", "-c", 'cat "$IOT_HARNESS_DESCRIPTOR"'], "--scenario", str(path)
    )
    assert done.returncode == 1, done.stderr  # the command succeeded, the expectation failed
    descriptor = json.loads(done.stdout)
    assert descriptor["iot"]["endpoint"] == ENDPOINT
    assert [p["name"] for p in descriptor["identity_pools"]] == ["player"]
    assert descriptor["identity_pools"][0]["identity_pool_id"].startswith(REGION + ":")
    assert [t["name"] for t in descriptor["things"]] == ["thing-a"]
    assert descriptor["sandbox"]["hosts"][ENDPOINT] == "127.0.0.1"
    assert "note: the scenario's faults are not applied in the sandbox" in done.stderr
    assert "FAIL asked-cognito" in done.stderr


DYSON_CLIENT = f"""
import json, os, queue, urllib.error, urllib.request
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

try:  # the app's hard-coded API host, on 443, the CA from SSL_CERT_FILE
    status = urllib.request.urlopen(
        "https://appapi.cp.dyson.com/v1/provisioningservice/application/Android/version",
        timeout={2 * TIMEOUT},
    ).status
except urllib.error.HTTPError as exc:
    status = exc.code
print("api", status)

(device,) = json.load(open(os.environ["IOT_HARNESS_DESCRIPTOR"]))["dyson"]["devices"]
connected = queue.Queue()
client = mqtt.Client(
    CallbackAPIVersion.VERSION2, client_id="sandbox-app", protocol=MQTTProtocolVersion.MQTTv311
)
client.on_connect = lambda c, u, f, rc, p: connected.put(rc.value)
client.username_pw_set(device["serial"], device["local_password"])
client.connect(device["serial"] + ".local", 1883)  # the mDNS-style name, the real port
client.loop_start()
print("local", connected.get(timeout={2 * TIMEOUT}))
client.disconnect()
client.loop_stop()
"""


@pytest.mark.interop
def test_the_dyson_api_and_a_devices_local_broker_answer_on_their_names(
    can_sandbox: None, tmp_path: Path
) -> None:
    script = tmp_path / "dyson_client.py"
    script.write_text(DYSON_CLIENT)
    done = run_sandbox(tmp_path, [sys.executable, str(script)], "--devices", "438:local")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "api 200\nlocal 0\n"
    assert "appapi.cp.dyson.com, appapi.cp.dyson.cn → 127.0.0.3 (443)" in done.stderr
    assert "sim-eu-438x0001.local → 127.0.0.4 (1883)" in done.stderr


def test_every_part_listens_on_its_own_address_and_the_descriptor_says_where(
    can_sandbox: None, tmp_path: Path
) -> None:
    """No relay: the descriptor's addresses and ports are the listeners' own, at the
    well-known ports, and the hosts file maps each name to them."""
    done = run_sandbox(
        tmp_path, ["sh", "-c", 'cat "$IOT_HARNESS_DESCRIPTOR"'], "--devices", "438,527:cloud,358"
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert (d["iot"]["connect_host"], d["iot"]["wss_port"], d["iot"]["mqtts_port"]) == (
        "127.0.0.1",
        443,
        8883,
    )
    assert d["cognito"]["url"] == "https://127.0.0.2:443"
    assert d["dyson"]["api_url"] == "https://127.0.0.3:443"
    devices = [(x["local_host"], x["local_port"], x["mode"]) for x in d["dyson"]["devices"]]
    assert devices == [
        ("127.0.0.4", 1883, "both"),
        ("127.0.0.1", 0, "cloud"),
        ("127.0.0.5", 1883, "both"),
    ]
    hosts = d["sandbox"]["hosts"]
    assert (hosts[COGNITO_DEFAULT], hosts["appapi.cp.dyson.cn"]) == ("127.0.0.2", "127.0.0.3")
    for device in d["dyson"]["devices"]:
        if device["local_port"]:
            assert hosts[device["local_hostname"]] == device["local_host"]
        else:
            assert device["local_hostname"] not in hosts


SIGTERM_CLIENT = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("ready", flush=True)
signal.pause()
"""


def test_sigterm_reaches_the_command_and_the_world_still_stops(
    can_sandbox: None, tmp_path: Path
) -> None:
    inner = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        sandbox_argv(tmp_path / "state", [], [sys.executable, "-c", SIGTERM_CLIENT]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert inner.stdout is not None
        assert read_lines(inner.stdout).get(timeout=RUN_TIMEOUT) == "ready\n"
        inner.terminate()
        assert inner.wait(timeout=RUN_TIMEOUT) == 3
        assert inner.stderr is not None
        assert "exited with 3; events in" in inner.stderr.read()
    finally:
        finish(inner)
    timeline = events(tmp_path)
    (exit_,) = [e for e in timeline if e["kind"] == "sandbox.exit"]
    assert (exit_["program"], exit_["status"]) == (Path(sys.executable).name, 3)
    assert timeline[-1]["kind"] == "gateway.stopped"  # the world stopped after the command


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("passwd: files\nhosts:  files mdns4_minimal [NOTFOUND=return] dns\n", None),
        (
            "hosts: mdns4_minimal [NOTFOUND=return] files # mDNS first\nnetworks: files\n",
            "hosts: files dns  # iot-harness sandbox: the private hosts file first\n"
            "networks: files\n",
        ),
        (
            "passwd: files\n",
            "passwd: files\n"
            "hosts: files dns  # iot-harness sandbox: the private hosts file first\n",
        ),
    ],
)
def test_nsswitch_is_replaced_only_when_it_asks_the_hosts_file_late(
    original: str, expected: str | None
) -> None:
    assert sandbox.nsswitch_text(original) == expected
