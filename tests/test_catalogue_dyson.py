"""The Dyson part of the scenario catalogue (issue [clients], "The catalogue"): coverage and
negative controls.

``tests/test_scenarios.py`` runs every file of ``scenarios/``; this file checks that the
Dyson areas are covered as the issue asks, and that in each area a buggy client fails with
a message that names its mistake (the catalogue's negative controls):

* **Fallback** (``fallback-*``, dyson.md §7): cloud black-holed or half-open → local;
  local reset on a stale session → cloud, then back; wrong local password → cloud; both
  down → bounded retries and recovery; an API outage at login;
* **Custom auth, Dyson** (``custom-auth-dyson-*``, aws-iot.md §2.5): the
  ``/mqtt?token=..&signature=..`` form and the made-up client id of field design 001
  refused while the reference app connects; an expired IoT token fetched again;
* **Field bugs** FB-01 to FB-20 (``field-fbNN-*``, ``specs/field-bugs.md``), one file per
  entry that a simulated world reproduces, named after it.

Not reproducible in a simulated world, so without a ``field-*`` file:

* **FB-02** (blocking CA load on Home Assistant's event loop): the symptom is HA's
  blocking-call detector firing inside hass-dyson's coordinator while libdyson-rest builds
  its ``httpx.AsyncClient``; it needs that event loop and that client (the runner has no
  ``libdyson-rest`` kind), not a fault of the world. The reference app builds its TLS
  contexts in a worker thread, the fix the entry describes.
* **FB-10** (silently stuck on the cloud when ``{serial}.local`` never resolves): the
  fault is name resolution of the client's own host. Every client the runner starts
  dials the address the descriptor gives (DESIGN.md contract 1), so nothing in the world
  can make the name fail; it needs hass-dyson itself in the sandbox.

Partly reproduced: FB-04 without the "trailing data after the credential JSON" shape and
FB-13 without ``env_with_state`` (neither is a scenario file setting the runner applies
yet); FB-08's "Reconnect during backoff connects at once" (an operator action) is not
modelled. FB-21 to FB-35 (the AWS entries) are covered by their own ``field-*`` files.

Also here: :func:`harness.scenario.worlds.manifest_changes` (a device's ``manifest`` in a
scenario file, fuzzed with hypothesis) and the runner keeping a run going until a
``never ... within`` window has closed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.scenario import Scenario, load_scenario, load_scenario_text
from harness.scenario.runner import run_scenario_async
from harness.scenario.worlds import manifest_changes

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SETTLE = 0.3
#: The field-bugs.md entries this catalogue reproduces (module docstring for the rest).
DYSON_FIELD_BUGS = (1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
NOT_REPRODUCIBLE = (2, 10)


def _files(prefix: str) -> dict[str, Scenario]:
    return {p.name: load_scenario(p) for p in sorted(SCENARIOS.glob(f"{prefix}*.yaml"))}


def _case(file: str, client: str) -> tuple[Scenario, Any]:
    scenario = load_scenario(SCENARIOS / file)
    [spec] = [c for c in scenario.clients if c.name == client]
    return scenario, spec


# Coverage


def test_the_fallback_area_has_the_four_situations_and_more() -> None:
    files = _files("fallback-")
    assert len(files) >= 4, sorted(files)
    names = " ".join(files)
    for situation in ("blackholed", "half-open", "stale-session", "wrong-local-password"):
        assert situation in names, situation
    assert "both-down-bounded-retries" in names
    # Bounded retries are an expectation, not a hope.
    both = files["fallback-both-down-bounded-retries.yaml"]
    assert any(type(e).__name__ == "Rate" for e in both.expectations)


def test_the_dyson_custom_auth_area() -> None:
    files = _files("custom-auth-dyson-")
    assert {
        "custom-auth-dyson-token-in-path.yaml",
        "custom-auth-dyson-iot-token-expiry.yaml",
    } <= set(files)
    expiry = files["custom-auth-dyson-iot-token-expiry.yaml"]
    assert expiry.world.dyson is not None
    assert expiry.world.dyson.cloud.credential_lifetime is not None  # compressed token life
    refused = {c.name for c in files["custom-auth-dyson-token-in-path.yaml"].clients}
    assert {"token-in-path", "design-client-id"} <= refused


@pytest.mark.parametrize("number", DYSON_FIELD_BUGS)
def test_each_reproducible_field_bug_has_its_file(number: int) -> None:
    tag = f"fb{number:02d}"
    files = [p for p in SCENARIOS.glob(f"field-{tag}-*.yaml")]
    assert len(files) == 1, f"FB-{number:02d}: expected one scenarios/field-{tag}-*.yaml"
    scenario = load_scenario(files[0])
    assert scenario.name == files[0].stem
    assert f"FB-{number:02d}" in scenario.purpose, scenario.purpose


def test_the_entries_not_reproduced_are_named_with_a_reason() -> None:
    doc = __doc__ or ""
    for number in NOT_REPRODUCIBLE:
        assert f"**FB-{number:02d}**" in doc
        assert not list(SCENARIOS.glob(f"field-fb{number:02d}-*.yaml"))


def test_every_dyson_area_has_a_known_failure_with_a_field_bug_reference() -> None:
    for prefix in ("fallback-", "custom-auth-dyson-", "field-fb0", "field-fb1"):
        known = [
            c.known_failure
            for s in _files(prefix).values()
            for c in s.clients
            if c.known_failure is not None
        ]
        assert known, prefix
        assert all(k.ref and re.fullmatch(r"FB-\d\d", k.ref) for k in known), prefix


# Negative controls: each area's buggy client fails, and the failure names the mistake


NEGATIVE_CONTROLS = [
    pytest.param(
        "fallback-cloud-blackholed-to-local.yaml",
        "no-startup-fallback",
        "client.fallback",
        id="fallback-no-startup-fallback",
    ),
    pytest.param(
        "fallback-both-down-bounded-retries.yaml",
        "retry-at-once",
        "at most 4 client.connect",
        id="fallback-retry-storm",
    ),
    pytest.param(
        "custom-auth-dyson-token-in-path.yaml",
        "token-in-path",
        "reason=no-credentials",
        id="custom-auth-token-in-path",
    ),
    pytest.param(
        "custom-auth-dyson-iot-token-expiry.yaml",
        "iot-credentials-once",
        "reason=token-expired",
        id="custom-auth-iot-credentials-once",
    ),
    pytest.param(
        "field-fb11-wrong-topic-root.yaml",
        "product-type-root",
        "quirk=foreign_subscribe_drop",
        id="field-fb11-product-type-root",
    ),
    pytest.param(
        "field-fb01-disconnect-callback-signature.yaml",
        "no-callback-api-version",
        "what=callback-error",
        id="field-fb01-no-callback-api-version",
    ),
]


@pytest.mark.interop
@pytest.mark.parametrize(("file", "client", "named"), NEGATIVE_CONTROLS)
async def test_a_buggy_client_fails_with_a_clear_message(
    file: str, client: str, named: str
) -> None:
    scenario, spec = _case(file, client)
    assert spec.known_failure is not None
    # Run it as if it were expected to pass: the verdict and the explanation a user sees.
    bare = dataclasses.replace(spec, known_failure=None)
    outcome = await run_scenario_async(scenario, client=bare, settle=SETTLE)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.summary())
    assert outcome.verdict == "failed", outcome.explain()
    failed = "\n".join(r.explain for r in outcome.failed_results)
    assert named in failed, failed
    text = outcome.explain()
    assert "FAILED" in text and "timeline:" in text


# A device's manifest in a scenario file (harness.scenario.worlds.manifest_changes)


def test_manifest_members_become_cloud_device_fields() -> None:
    changes = manifest_changes(
        "9RJ-US-UAA8845A",
        {
            "name": "Lab fan",
            "connectionCategory": None,
            "connectedConfiguration": {
                "mqtt": {
                    "remoteBrokerType": "mqtts",
                    "mqttRootTopicLevel": "438M",
                    "localBrokerCredentials": {"apPasswordHash": "not-the-device-password"},
                }
            },
        },
    )
    assert changes == {
        "name": "Lab fan",
        "connection_category": None,
        "remote_broker_type": "mqtts",
        "root_topic": "438M",
        "local_password": "not-the-device-password",
    }
    assert manifest_changes("S", {"connectedConfiguration": None}) == {"connected": False}
    nulls = {"connectedConfiguration": {"mqtt": {"localBrokerCredentials": None}}}
    assert manifest_changes("S", nulls) == {"local_password": None}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"serialNumber": "X"}, "'serialNumber' not supported"),
        ({"name": 3}, "name must be a string or null"),
        ({"connectedConfiguration": {"firmware": {}}}, "only mqtt is supported"),
        ({"connectedConfiguration": {"mqtt": []}}, "mqtt must be a mapping"),
        ({"connectedConfiguration": {"mqtt": {"port": 1}}}, "'port' not supported"),
        ({"connectedConfiguration": {"mqtt": {"remoteBrokerType": None}}}, "must be a string"),
        (
            {"connectedConfiguration": {"mqtt": {"localBrokerCredentials": "ciphertext"}}},
            "null or {apPasswordHash",
        ),
        (
            {"connectedConfiguration": {"mqtt": {"localBrokerCredentials": {"serial": "S"}}}},
            "null or {apPasswordHash",
        ),
    ],
)
def test_manifest_members_that_cannot_be_applied_are_config_errors(
    manifest: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        manifest_changes("9RJ-US-UAA8845A", manifest)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "name",
        "variant",
        "connectionCategory",
        "connectedConfiguration",
        "mqtt",
        "remoteBrokerType",
        "localBrokerCredentials",
        "apPasswordHash",
        "firmware",
        "other",
    ]
)
MANIFESTS = st.dictionaries(
    KEYS,
    st.recursive(JSONISH, lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=6),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(MANIFESTS)
def test_any_manifest_gives_changes_or_a_config_error(manifest: dict[str, Any]) -> None:
    try:
        changes = manifest_changes("9RJ-US-UAA8845A", manifest)
    except ConfigError as exc:
        error: str | None = str(exc)
    else:
        error = None
    if error is not None:
        assert "9RJ-US-UAA8845A" in error  # the message names the device
        return
    allowed = {
        "name",
        "variant",
        "model",
        "product_name",
        "category",
        "connection_category",
        "connected",
        "remote_broker_type",
        "root_topic",
        "local_password",
    }
    assert set(changes) <= allowed


@pytest.mark.interop
async def test_a_manifest_password_the_device_does_not_have_is_refused_with_rc_5() -> None:
    scenario = load_scenario(SCENARIOS / "fallback-wrong-local-password.yaml")
    outcome = await run_scenario_async(scenario, client="dyson-app", settle=SETTLE)
    assert outcome.verdict == "passed", outcome.explain()
    [refused, *_] = [
        e for e in outcome.events if e.kind == "auth.verdict" and e.get("stage") == "dyson-local"
    ]
    assert refused.get("return_code") == 5 and refused.get("reason") == "bad-password"
    # The manifest's (wrong) password is a secret like the right one.
    assert "stale-hash-from-before-the-reset" not in repr([e.to_json() for e in outcome.events])


# The runner watches a `never ... within` window to its end


async def test_a_never_with_a_window_is_watched_until_the_window_closes() -> None:
    late = textwrap.dedent(
        """
        import json, os, signal, time
        world = json.load(open(os.environ["IOT_HARNESS_DESCRIPTOR"]))
        # The client under test misbehaves late: once the world's own schedule says so
        # (the `late` fault at 0.8 s, well past the run's settle time).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(world["events_file"]) as timeline:
                if '"name": "late"' in timeline.read():
                    break
            time.sleep(0.02)  # polling the timeline for that event, not a fixed wait
        print(json.dumps({"kind": "client.error", "reason": "late"}), flush=True)
        signal.pause()  # then stays up until the runner stops it
        """
    )
    text = textwrap.dedent(
        """
        name: late-offence
        purpose: an offence after the quiet start still counts
        client: {kind: command, argv: [python, -c, CODE]}
        faults:
          - {name: late, at: 0.8, action: clock-offset, seconds: 0}
        expectations:
          - happens: {kind: client.started}
          - never: {kind: client.error}
            within: 2
        timeout: 6
        """
    ).replace("CODE", json.dumps(late))
    outcome = await run_scenario_async(load_scenario_text(text), settle=0.2)
    assert outcome.verdict == "failed", outcome.explain()
    assert "reason=late" in outcome.explain()
