"""``iot-harness serve`` as a separate process: the descriptor contract (DESIGN.md), a real
client that knows only the descriptor, and a clean stop on SIGTERM / Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt import auth
from awscrt import mqtt as crt_mqtt
from awsiot import mqtt_connection_builder
from botocore.config import Config

from harness.auth.credentials import Credential
from harness.auth.sigv4 import presign_url
from harness.pki import TokenSigningKey
from tests.conftest import SHARED
from tests.paho_client import PahoClient
from tests.timing import TIMEOUT

pytestmark = pytest.mark.interop

CHECK_DESCRIPTOR = SHARED / "contract" / "check-descriptor"
BIN = Path(sys.executable).parent


def serve_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m harness``."""
    script = shutil.which("iot-harness", path=str(BIN))
    return [script, "serve"] if script else [sys.executable, "-m", "harness", "serve"]


def env_with_bin() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.skipif(
    not CHECK_DESCRIPTOR.is_file(),
    reason="../shared/contract/check-descriptor is absent (a plain clone has no ../shared)",
)
@pytest.mark.skipif(
    shutil.which("iot-harness", path=str(BIN)) is None,
    reason="the iot-harness console script is not installed next to this interpreter",
)
@pytest.mark.parametrize("options", [[], ["--region", "eu-west-1", "--sni", "require"]])
def test_the_shared_contract_check_passes(options: list[str], tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - our own script and arguments
        [sys.executable, str(CHECK_DESCRIPTOR), "--state-dir", str(tmp_path), *options],
        env=env_with_bin(),
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "descriptor contract holds" in result.stdout


class Served:
    """A running ``iot-harness serve`` process and its descriptor."""

    def __init__(self, process: asyncio.subprocess.Process, descriptor: dict[str, Any]) -> None:
        self.process = process
        self.descriptor = descriptor

    async def stop(self, signum: signal.Signals) -> tuple[int, str]:
        self.process.send_signal(signum)
        assert self.process.stderr is not None
        err = await asyncio.wait_for(self.process.stderr.read(), 4 * TIMEOUT)
        code = await asyncio.wait_for(self.process.wait(), 4 * TIMEOUT)
        return code, err.decode()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    process = await asyncio.create_subprocess_exec(
        *serve_command(),
        "--state-dir",
        str(tmp_path / "state"),
        "--credential-lifetime",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_with_bin(),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 8 * TIMEOUT)
        assert line.endswith(b"\n"), line
        yield Served(process, json.loads(line))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def cognito_credentials(descriptor: dict[str, Any]) -> Credential:
    """GetId + GetCredentialsForIdentity with boto3, from ``descriptor["cognito"]`` only."""
    cognito, iot = descriptor["cognito"], descriptor["iot"]
    client = boto3.session.Session(region_name=iot["region"]).client(
        "cognito-identity",
        endpoint_url=cognito["url"],
        verify=iot["ca_file"],
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    try:
        identity = client.get_id(IdentityPoolId=cognito["identity_pool_id"])["IdentityId"]
        wire = client.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    finally:
        client.close()
    return Credential(
        access_key_id=wire["AccessKeyId"],
        secret_access_key=wire["SecretKey"],
        session_token=wire["SessionToken"],
    )


async def test_a_client_connects_with_only_the_descriptor(
    served: Served, isolated_aws: None
) -> None:
    """ca_file, connect_host, wss_port, endpoint, region + Cognito: nothing else."""
    iot = served.descriptor["iot"]
    credential = await asyncio.to_thread(cognito_credentials, served.descriptor)
    # Signed on the client's own clock, as a real client does.
    url = urllib.parse.urlsplit(
        presign_url(
            host=iot["endpoint"], credential=credential, region=iot["region"], now=time.time()
        )
    )
    client = PahoClient(
        "descriptor-only",
        websocket=True,
        ca_file=iot["ca_file"],
        path=f"{url.path}?{url.query}",
        headers={"Host": iot["endpoint"]},
    )
    await client.connect(iot["connect_host"], iot["wss_port"])
    assert (await client.next("connect", "error")).rc == 0
    client.client.subscribe("descriptor/only", qos=1)
    assert (await client.next("subscribe")).rc == [1]
    client.client.publish("descriptor/only", b"from the descriptor", qos=1)
    assert (await client.next("message")).payload == b"from the descriptor"
    await client.close()

    code, err = await served.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    assert credential.session_token is not None
    assert credential.session_token not in err
    assert credential.secret_access_key not in err
    events = await asyncio.to_thread(Path(served.descriptor["events_file"]).read_text)
    assert credential.session_token not in events
    kinds = [json.loads(line)["kind"] for line in events.splitlines()]
    assert "cognito.call" in kinds and "lifecycle.connected" in kinds
    assert kinds[-1] == "gateway.stopped"


async def test_ctrl_c_stops_cleanly(served: Served) -> None:
    code, err = await served.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("iot-harness: stopped; events in ")
    key = Path(served.descriptor["authorizers"][0]["private_key_file"])
    assert (await asyncio.to_thread(key.stat)).st_mode & 0o777 == 0o600


async def _awsiotsdk_round_trip(connection: Any, topic: str) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    await asyncio.to_thread(connection.connect().result, 2 * TIMEOUT)
    try:
        subscribed, _ = connection.subscribe(
            topic, crt_mqtt.QoS.AT_LEAST_ONCE, lambda topic, payload, **_: received.put(payload)
        )
        await asyncio.to_thread(subscribed.result, 2 * TIMEOUT)
        published, _ = connection.publish(topic, b"awsiotsdk", crt_mqtt.QoS.AT_LEAST_ONCE)
        await asyncio.to_thread(published.result, 2 * TIMEOUT)
        assert await asyncio.to_thread(received.get, True, 2 * TIMEOUT) == b"awsiotsdk"
    finally:
        await asyncio.to_thread(connection.disconnect().result, 2 * TIMEOUT)


async def test_awsiotsdk_connects_with_only_the_descriptor(
    served: Served, isolated_aws: None
) -> None:
    """The issue's "Done when": awsiotsdk, given nothing but the descriptor, connects with
    Cognito credentials (SigV4) and with the descriptor's custom authorizer key."""
    iot = served.descriptor["iot"]
    common: dict[str, Any] = {
        "endpoint": iot["connect_host"],
        "port": iot["wss_port"],
        "ca_filepath": iot["ca_file"],
        "clean_session": True,
        "keep_alive_secs": 30,
        "reconnect_min_timeout_secs": 60,
    }
    credential = await asyncio.to_thread(cognito_credentials, served.descriptor)
    provider = auth.AwsCredentialsProvider.new_static(
        credential.access_key_id, credential.secret_access_key, credential.session_token
    )
    sigv4 = mqtt_connection_builder.websockets_with_default_aws_signing(
        region=iot["region"], credentials_provider=provider, client_id="sdk-sigv4", **common
    )
    await _awsiotsdk_round_trip(sigv4, "descriptor/sdk/sigv4")

    authorizer = served.descriptor["authorizers"][0]
    key = TokenSigningKey.load(authorizer["private_key_file"], name=authorizer["name"])
    token = "descriptor-token"
    custom = mqtt_connection_builder.websockets_with_custom_authorizer(
        region=iot["region"],
        auth_authorizer_name=authorizer["name"],
        auth_token_key_name=authorizer["token_key"],
        auth_token_value=token,
        auth_authorizer_signature=key.sign(token),
        client_id="sdk-custom",
        **common,
    )
    await _awsiotsdk_round_trip(custom, "descriptor/sdk/custom")

    code, err = await served.stop(signal.SIGTERM)
    assert code == 0, err
    events = await asyncio.to_thread(Path(served.descriptor["events_file"]).read_text)
    verdicts = [e for e in map(json.loads, events.splitlines()) if e["kind"] == "auth.verdict"]
    assert verdicts
    assert all(v["ok"] for v in verdicts)
