"""The fake Cognito Identity (aws-iot.md §6): the pure core, and boto3 over loopback HTTPS."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
from botocore.config import Config
from hypothesis import given
from hypothesis import strategies as st

from harness.auth.credentials import CredentialStore
from harness.clock import WorldClock
from harness.cognito import (
    JSON_11,
    CognitoIdentityService,
    FakeCognito,
    IdentityPool,
)
from harness.errors import ConfigError
from harness.events import Recorder
from harness.httpserver import Headers, HttpLimits
from tests.timing import TIMEOUT

REGION = "us-east-1"
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
    }
)
GET_ID = "AWSCognitoIdentityService.GetId"
GET_CREDENTIALS = "AWSCognitoIdentityService.GetCredentialsForIdentity"


# The pure core


def service(**pool_options: Any) -> tuple[CognitoIdentityService, IdentityPool]:
    core = CognitoIdentityService(region=REGION)
    return core, core.create_pool(**pool_options)


def call(
    core: CognitoIdentityService,
    target: str,
    params: Any,
    *,
    now: float = 1000.0,
    tick: float = 0.0,
) -> Any:
    return core.call(target, json.dumps(params).encode(), now=now, tick=tick)


def test_get_id_then_credentials_enter_the_store() -> None:
    core, pool = service(policies=(POLICY,), credential_lifetime=0.5)
    got = call(core, GET_ID, {"IdentityPoolId": pool.pool_id})
    assert got.ok and got.status == 200 and got.operation == "GetId"
    identity_id = got.body["IdentityId"]
    assert identity_id.startswith(f"{REGION}:") and len(identity_id) == len(REGION) + 37
    assert core.identities[identity_id].authenticated is False

    creds = call(core, GET_CREDENTIALS, {"IdentityId": identity_id}, now=1000.25)
    assert creds.ok and creds.identity_id == identity_id and creds.pool_id == pool.pool_id
    wire = creds.body["Credentials"]
    assert set(wire) == {"AccessKeyId", "SecretKey", "SessionToken", "Expiration"}
    assert wire["Expiration"] == 1000.75
    stored = core.store.lookup(wire["AccessKeyId"])
    assert stored is not None and stored is creds.credential
    assert stored.access_key_id.startswith("ASIA")
    assert (stored.secret_access_key, stored.session_token) == (
        wire["SecretKey"],
        wire["SessionToken"],
    )
    assert (stored.expires_at, stored.principal, stored.policies) == (
        1000.75,
        identity_id,
        (POLICY,),
    )


@pytest.mark.parametrize(
    ("target", "body", "error_type", "reason", "message"),
    [
        (None, b"{}", "UnknownOperationException", "unknown-operation", None),
        (
            "AWSCognitoIdentityService.DescribeIdentityPool",
            b"{}",
            "UnknownOperationException",
            "unknown-operation",
            None,
        ),
        (
            "DynamoDB_20120810.GetItem",
            b"{}",
            "UnknownOperationException",
            "unknown-operation",
            None,
        ),
        (GET_ID, b"{not json", "SerializationException", "malformed-json", None),
        (GET_ID, b"\xff\xfe", "SerializationException", "malformed-json", None),
        (GET_ID, b"[1]", "SerializationException", "malformed-json", None),
        (GET_ID, b'{"IdentityPoolId": 5}', "SerializationException", "malformed-json", None),
        (
            GET_ID,
            b'{"IdentityPoolId": "us-east-1:ab", "Logins": []}',
            "SerializationException",
            "malformed-json",
            None,
        ),
        (
            GET_ID,
            b"",
            "ValidationException",
            "validation-failed",
            "1 validation error detected: Value null at 'identityPoolId' failed to satisfy "
            "constraint: Member must not be null",
        ),
        (
            GET_ID,
            b'{"IdentityPoolId": "us-east-1_AbCdEf"}',
            "ValidationException",
            "validation-failed",
            "1 validation error detected: Value 'us-east-1_AbCdEf' at 'identityPoolId' failed to "
            "satisfy constraint: Member must satisfy regular expression pattern: "
            "[\\w-]+:[0-9a-f-]+",
        ),
        (
            GET_ID,
            json.dumps({"IdentityPoolId": "us-east-1:" + "a" * 60, "AccountId": "12x"}).encode(),
            "ValidationException",
            "validation-failed",
            None,
        ),
        (
            GET_CREDENTIALS,
            json.dumps({"IdentityId": "us-east-1:ab", "CustomRoleArn": "short"}).encode(),
            "ValidationException",
            "validation-failed",
            None,
        ),
        (
            GET_CREDENTIALS,
            b'{"IdentityId": "us-east-1:0000"}',
            "ResourceNotFoundException",
            "identity-not-found",
            "Identity 'us-east-1:0000' not found.",
        ),
        (
            GET_ID,
            b'{"IdentityPoolId": "eu-west-1:00000000-0000-0000-0000-000000000000"}',
            "ResourceNotFoundException",
            "pool-not-found",
            "IdentityPool 'eu-west-1:00000000-0000-0000-0000-000000000000' not found.",
        ),
    ],
)
def test_client_errors_are_aws_shaped_400s(
    target: str | None, body: bytes, error_type: str, reason: str, message: str | None
) -> None:
    core, _ = service()
    result = core.call(target, body, now=0.0, tick=0.0)
    assert (result.status, result.error_type, result.reason, result.ok) == (
        400,
        error_type,
        reason,
        False,
    )
    assert result.body["__type"] == error_type and result.explain
    if message is not None:
        assert result.body["message"] == message


def test_validation_errors_are_counted() -> None:
    core, _ = service()
    result = call(core, GET_ID, {"IdentityPoolId": "x", "AccountId": "abc"})
    assert result.body["message"].startswith("2 validation errors detected: ")


def test_logins_need_a_supported_provider_and_map_to_one_identity() -> None:
    core, pool = service(allow_unauthenticated=False, login_providers=["accounts.google.com"])
    token_login = {"accounts.google.com": "eyJ-token-1"}
    first = call(core, GET_ID, {"IdentityPoolId": pool.pool_id, "Logins": token_login})
    again = call(core, GET_ID, {"IdentityPoolId": pool.pool_id, "Logins": token_login})
    assert first.ok and first.body == again.body
    assert core.identities[first.identity_id].authenticated

    other = call(
        core, GET_ID, {"IdentityPoolId": pool.pool_id, "Logins": {"graph.facebook.com": "t"}}
    )
    assert (other.error_type, other.reason) == (
        "NotAuthorizedException",
        "unsupported-login-provider",
    )
    assert "eyJ-token-1" not in str(other.explain)

    creds = call(core, GET_CREDENTIALS, {"IdentityId": first.identity_id, "Logins": token_login})
    assert creds.ok
    bare = call(core, GET_CREDENTIALS, {"IdentityId": first.identity_id})
    assert bare.body["message"] == "Unauthenticated access is not supported for this identity pool."

    too_many = {f"p{i}": "t" for i in range(11)} | {"": ""}
    invalid = call(core, GET_ID, {"IdentityPoolId": pool.pool_id, "Logins": too_many})
    assert invalid.error_type == "ValidationException"
    assert invalid.body["message"].startswith("3 validation errors detected")


def test_rate_limit_is_a_token_bucket_on_the_monotonic_tick() -> None:
    core, pool = service(rate_limit=2.0)
    ticks = [0.0, 0.0, 0.0, 0.49, 0.5, 10.0, 10.0, 10.0]
    results = [call(core, GET_ID, {"IdentityPoolId": pool.pool_id}, tick=t) for t in ticks]
    assert [r.ok for r in results] == [True, True, False, False, True, True, True, False]
    throttled = results[2]
    assert (throttled.status, throttled.error_type, throttled.body["message"]) == (
        400,
        "TooManyRequestsException",
        "Rate exceeded",
    )
    core.set_rate_limit(None)
    assert call(core, GET_ID, {"IdentityPoolId": pool.pool_id}, tick=10.0).ok


def test_fail_next_queues_faults_by_operation() -> None:
    core, pool = service()
    core.fail_next(1, "TooManyRequestsException", operation="GetCredentialsForIdentity")
    core.fail_next(2)
    got = call(core, GET_ID, {"IdentityPoolId": pool.pool_id})
    assert got.status == 500 and got.error_type == "InternalErrorException" and got.injected
    identity = call(core, GET_ID, {"IdentityPoolId": pool.pool_id, "Junk": 1})
    assert identity.status == 500  # the second InternalErrorException
    identity = call(core, GET_ID, {"IdentityPoolId": pool.pool_id})
    assert identity.ok
    throttled = call(core, GET_CREDENTIALS, {"IdentityId": identity.identity_id})
    assert (throttled.status, throttled.error_type) == (400, "TooManyRequestsException")
    assert call(core, GET_CREDENTIALS, {"IdentityId": identity.identity_id}).ok
    with pytest.raises(ConfigError):
        core.fail_next(0)
    with pytest.raises(ConfigError):
        core.fail_next(operation="ListIdentities")


def test_pool_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="does not match"):
        IdentityPool(pool_id="us-east-1_userpool")
    with pytest.raises(ConfigError, match="credential_lifetime"):
        IdentityPool(pool_id="us-east-1:ab", credential_lifetime=0)
    with pytest.raises(ConfigError, match="rate_limit"):
        IdentityPool(pool_id="us-east-1:ab", rate_limit=-1)
    with pytest.raises(ConfigError, match="tuple"):
        IdentityPool(pool_id="us-east-1:ab", policies=POLICY)  # type: ignore[arg-type]
    core = CognitoIdentityService(region=REGION)
    with pytest.raises(ConfigError, match="region"):
        core.add_pool(IdentityPool(pool_id="eu-west-1:ab"))
    pool = core.add_pool(IdentityPool(pool_id="us-east-1:ab"))
    assert (
        core.update_pool(pool.pool_id, allow_unauthenticated=False).allow_unauthenticated is False
    )
    with pytest.raises(ConfigError):
        core.update_pool("us-east-1:cd", rate_limit=1.0)
    with pytest.raises(ConfigError):
        core.update_pool(pool.pool_id, pool_id="us-east-1:cd")
    with pytest.raises(ConfigError, match="cannot update"):
        core.update_pool(pool.pool_id, lifetime=5)
    with pytest.raises(ConfigError, match="login_providers"):
        IdentityPool(pool_id="us-east-1:ab", login_providers="google")  # type: ignore[arg-type]
    listed = IdentityPool(
        pool_id="us-east-1:ab",
        policies=[POLICY],  # type: ignore[arg-type]
        login_providers=["a"],  # type: ignore[arg-type]
    )
    assert (listed.policies, listed.login_providers) == ((POLICY,), frozenset({"a"}))


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
_member = st.sampled_from(["IdentityPoolId", "IdentityId", "Logins", "AccountId", "CustomRoleArn"])


@given(
    st.one_of(st.none(), st.sampled_from([GET_ID, GET_CREDENTIALS]), st.text(max_size=60)),
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(_member | st.text(max_size=10), _json_value, max_size=4).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
)
def test_any_call_gets_an_answer_never_an_exception(target: str | None, body: bytes) -> None:
    core, _ = service(allow_unauthenticated=False, rate_limit=1000.0)
    result = core.call(target, body, now=0.0, tick=0.0)
    json.dumps(result.body)  # always serializable
    if result.ok:
        assert result.status == 200
    else:
        assert result.status == 400 and result.body["__type"] == result.error_type
        assert result.reason and result.explain


# The HTTPS shell with boto3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost", f"cognito-identity.{REGION}.amazonaws.com")


@pytest.fixture
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    recorder = Recorder(path=tmp_path / "events.jsonl")
    yield recorder
    recorder.close()


@pytest.fixture
async def cognito(server_ssl: ssl.SSLContext, recorder: Recorder) -> AsyncIterator[FakeCognito]:
    fake = FakeCognito(
        region=REGION,
        store=CredentialStore(),
        recorder=recorder,
        ssl=server_ssl,
        limits=HttpLimits(max_body_bytes=64 * 1024),
    )
    async with fake:
        yield fake


@pytest.fixture
def client(cognito: FakeCognito, ca_file: Path, isolated_aws: None) -> Iterator[Any]:
    session = boto3.session.Session(region_name=REGION)
    client = session.client(
        "cognito-identity",
        endpoint_url=cognito.url,
        verify=str(ca_file),
        # One attempt: botocore would retry throttling and 5xx answers otherwise.
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    yield client
    client.close()


def assert_no_secrets(recorder: Recorder, store: CredentialStore, tmp_path: Path) -> None:
    timeline = json.dumps([e.to_json() for e in recorder]) + (tmp_path / "events.jsonl").read_text()
    for credential in store:
        assert credential.secret_access_key not in timeline
        assert credential.session_token is not None and credential.session_token not in timeline


async def test_boto3_get_id_then_credentials(
    cognito: FakeCognito, client: Any, recorder: Recorder, tmp_path: Path
) -> None:
    pool = cognito.create_pool(policies=(POLICY,))
    got = await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)
    identity_id = got["IdentityId"]
    headers = got["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == JSON_11
    assert got["ResponseMetadata"]["RequestId"] == headers["x-amzn-requestid"]

    before = cognito.clock.now()
    answer = await asyncio.to_thread(client.get_credentials_for_identity, IdentityId=identity_id)
    after = cognito.clock.now()
    assert answer["IdentityId"] == identity_id
    wire = answer["Credentials"]
    expiration = wire["Expiration"]
    assert isinstance(expiration, datetime.datetime) and expiration.tzinfo is not None
    stored = cognito.store.lookup(wire["AccessKeyId"])
    assert stored is not None and stored.expires_at is not None
    assert before + 3600 <= stored.expires_at <= after + 3600
    assert abs(expiration.timestamp() - stored.expires_at) < 1e-5
    assert stored.secret_access_key == wire["SecretKey"]
    assert stored.session_token == wire["SessionToken"]
    assert (stored.principal, stored.policies) == (identity_id, (POLICY,))

    calls = recorder.find("cognito.call")
    assert [(e.get("operation"), e.ok) for e in calls] == [
        ("GetId", True),
        ("GetCredentialsForIdentity", True),
    ]
    issued = calls[1]
    assert issued.get("access_key_id") == wire["AccessKeyId"]
    assert issued.get("expiration") == stored.expires_at
    assert (issued.get("pool_id"), issued.get("identity_id")) == (pool.pool_id, identity_id)
    assert issued.get("signed") is False  # botocore sends these public APIs unsigned
    assert issued.get("request_id") == answer["ResponseMetadata"]["RequestId"]
    assert recorder.find("http.request", server="cognito", path="/", status=200)
    assert recorder.find("tls.handshake", server="cognito", ok=True)
    assert_no_secrets(recorder, cognito.store, tmp_path)


async def test_boto3_fractional_lifetime(cognito: FakeCognito, client: Any) -> None:
    pool = cognito.create_pool(credential_lifetime=0.5)
    identity_id = (await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id))[
        "IdentityId"
    ]
    before = cognito.clock.now()
    answer = await asyncio.to_thread(client.get_credentials_for_identity, IdentityId=identity_id)
    after = cognito.clock.now()
    stored = cognito.store.lookup(answer["Credentials"]["AccessKeyId"])
    assert stored is not None and stored.expires_at is not None
    assert before + 0.5 <= stored.expires_at <= after + 0.5
    assert abs(answer["Credentials"]["Expiration"].timestamp() - stored.expires_at) < 1e-5
    assert not stored.expired(after)
    cognito.clock.shift(0.5)
    assert stored.expired(cognito.clock.now())


async def test_boto3_unauthenticated_access_refused(
    cognito: FakeCognito, client: Any, recorder: Recorder
) -> None:
    pool = cognito.create_pool(allow_unauthenticated=False)
    with pytest.raises(client.exceptions.NotAuthorizedException) as caught:
        await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)
    error = caught.value.response
    assert error["Error"]["Message"] == (
        "Unauthenticated access is not supported for this identity pool."
    )
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    headers = error["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-errortype"] == "NotAuthorizedException:"
    assert headers["x-amzn-errormessage"] == error["Error"]["Message"]
    event = recorder.first("cognito.call", ok=False)
    assert event is not None
    assert (event.get("error"), event.reason) == (
        "NotAuthorizedException",
        "unauthenticated-not-allowed",
    )

    # A pool that turns authenticated-only after GetId refuses the credentials call too.
    open_pool = cognito.create_pool()
    identity_id = (await asyncio.to_thread(client.get_id, IdentityPoolId=open_pool.pool_id))[
        "IdentityId"
    ]
    cognito.update_pool(open_pool.pool_id, allow_unauthenticated=False)
    with pytest.raises(client.exceptions.NotAuthorizedException):
        await asyncio.to_thread(client.get_credentials_for_identity, IdentityId=identity_id)


async def test_boto3_unknown_pool_and_identity(cognito: FakeCognito, client: Any) -> None:
    cognito.create_pool()
    missing = f"{REGION}:00000000-0000-4000-8000-000000000000"
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        await asyncio.to_thread(client.get_id, IdentityPoolId=missing)
    assert caught.value.response["Error"]["Message"] == f"IdentityPool '{missing}' not found."
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        await asyncio.to_thread(client.get_credentials_for_identity, IdentityId=missing)
    assert caught.value.response["Error"]["Message"] == f"Identity '{missing}' not found."


async def test_boto3_rate_limit_and_faults(
    cognito: FakeCognito, client: Any, recorder: Recorder
) -> None:
    pool = cognito.create_pool(rate_limit=0.001)  # one request, then none for 1000 s
    await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)
    with pytest.raises(client.exceptions.TooManyRequestsException) as caught:
        await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)
    assert caught.value.response["Error"]["Message"] == "Rate exceeded"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    cognito.set_rate_limit(None, pool_id=pool.pool_id)
    await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)

    cognito.fail_next(1)
    with pytest.raises(client.exceptions.InternalErrorException) as caught:
        await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    fired = recorder.find("fault.fired", fault="cognito-fail-next")
    assert [e.get("error") for e in fired] == ["InternalErrorException"]
    await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id)


# Raw requests: what boto3 never sends


async def post(
    fake: FakeCognito,
    ca: trustme.CA,
    body: bytes,
    *,
    target: str | None = GET_ID,
    extra: bytes = b"",
    method: bytes = b"POST",
    path: bytes = b"/",
) -> tuple[int, Headers, Any]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", fake.port, ssl=context, server_hostname="localhost"
    )
    try:
        head = method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
        head += b"Content-Type: application/x-amz-json-1.1\r\n"
        if target is not None:
            head += f"X-Amz-Target: {target}\r\n".encode()
        head += extra + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        writer.write(head + body)
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    response_head, _, response_body = raw.partition(b"\r\n\r\n")
    lines = response_head.decode("latin-1").split("\r\n")
    headers = Headers(tuple(line.split(": ", 1)) for line in lines[1:])  # type: ignore[misc]
    return int(lines[0].split(" ")[1]), headers, json.loads(response_body)


@pytest.mark.parametrize(
    ("body", "target", "method", "error_type"),
    [
        (b"{not json", GET_ID, b"POST", "SerializationException"),
        (b"{}", "AWSCognitoIdentityService.Nope", b"POST", "UnknownOperationException"),
        (b"{}", None, b"POST", "UnknownOperationException"),
        (b"{}", GET_ID, b"PUT", "UnknownOperationException"),
        (b'{"IdentityPoolId": "us-east-1_pool"}', GET_ID, b"POST", "ValidationException"),
        (
            b'{"IdentityPoolId": "' + b"a" * 100_000 + b'"}',
            GET_ID,
            b"POST",
            "SerializationException",
        ),
    ],
)
async def test_raw_bad_requests_get_aws_shaped_400s_and_serving_continues(
    cognito: FakeCognito,
    ca: trustme.CA,
    client: Any,
    body: bytes,
    target: str | None,
    method: bytes,
    error_type: str,
) -> None:
    status, headers, payload = await post(cognito, ca, body, target=target, method=method)
    assert status == 400
    assert headers.get("content-type") == JSON_11
    assert headers.get("x-amzn-errortype") == f"{error_type}:"
    assert headers.get("x-amzn-requestid")
    assert payload["__type"] == error_type and isinstance(payload["message"], str)
    if len(body) > 64 * 1024:
        event = cognito.recorder.first("http.error", reason="body-too-large")
        assert event is not None and event.get("status") == 400
    pool = cognito.create_pool()
    assert (await asyncio.to_thread(client.get_id, IdentityPoolId=pool.pool_id))["IdentityId"]


async def test_signed_requests_are_accepted_and_never_verified(
    cognito: FakeCognito, ca: trustme.CA, recorder: Recorder, tmp_path: Path
) -> None:
    pool = cognito.create_pool(login_providers=["accounts.google.com"])
    authorization = (
        b"Authorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20240101/us-east-1/"
        b"cognito-identity/aws4_request, SignedHeaders=host, Signature=deadbeefcafe\r\n"
    )
    body = json.dumps(
        {"IdentityPoolId": pool.pool_id, "Logins": {"accounts.google.com": "id-token-secret"}}
    ).encode()
    status, _, payload = await post(cognito, ca, body, extra=authorization)
    assert status == 200 and payload["IdentityId"].startswith(f"{REGION}:")
    event = await recorder.wait_for("cognito.call", timeout=TIMEOUT, ok=True)
    assert event.get("signed") is True
    timeline = (tmp_path / "events.jsonl").read_text()
    assert "deadbeefcafe" not in timeline and "id-token-secret" not in timeline


async def test_world_objects_are_shared_or_created() -> None:
    clock = WorldClock(offset=-300)
    recorder = Recorder(clock=clock)
    shared = FakeCognito(recorder=recorder)
    assert shared.clock is clock and shared.recorder is recorder
    own = FakeCognito(region="eu-west-1", pools=[IdentityPool(pool_id="eu-west-1:ab")])
    assert own.region == "eu-west-1" and list(own.pools) == ["eu-west-1:ab"]
    assert isinstance(own.store, CredentialStore) and own.recorder.clock is own.clock
    async with own:
        assert own.url == f"http://127.0.0.1:{own.port}"
