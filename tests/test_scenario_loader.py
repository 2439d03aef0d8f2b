"""Scenario files: loading, every error's file/line/field, round trips, the JSON Schema."""

from __future__ import annotations

import functools
import json
import math
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.gateway.server import GatewayConfig
from harness.pki import BadCert
from harness.scenario import (
    ACTIONS,
    QUIRKS,
    EventPattern,
    FaultSpec,
    Happens,
    Never,
    Rate,
    Scenario,
    ScenarioError,
    Sequence,
    dump_scenario,
    load_scenario,
    load_scenario_text,
    scenario_from_data,
    schema_path,
)
from harness.scenario.loader import read_yaml
from harness.scenario.model import CERTIFICATES, CLIENT_KINDS, OPERATORS, GatewaySpec
from tests.scenario_examples import EVERY_FIELD, README_EXAMPLE

HEAD = "name: t\npurpose: a test\n"


def _load(text: str) -> Scenario:
    return load_scenario_text(text, path="scenarios/x.yaml")


# The complete examples


def test_readme_example_loads_as_written() -> None:
    scenario = _load(README_EXAMPLE)
    assert scenario.name == "sigv4-credential-expiry"
    assert scenario.purpose.startswith("Cognito credentials live 2 s")
    assert scenario.path == "scenarios/x.yaml"
    assert scenario.timeout == 15
    gateway = scenario.world.gateway
    assert (gateway.region, gateway.sni, gateway.limits.websocket_lifetime) == (
        "eu-west-1",
        "require",
        30,
    )
    assert gateway.limits.max_payload == 128 * 1024  # untouched limits keep AWS's values
    (pool,) = scenario.world.identity_pools
    assert (pool.name, pool.credential_lifetime) == ("player", 2)
    assert "arn:aws:iot:eu-west-1:123456789012:client/*" in pool.policies[0]
    (client,) = scenario.clients
    assert (client.name, client.kind, client.app) == ("browser-player", "app", "browser-player")
    assert client.known_failure is not None and client.known_failure.ref == "FB-23"
    (fault,) = scenario.faults
    assert (fault.name, fault.at, fault.action, fault.target) == (
        "cut",
        3,
        "drop-connection",
        "gateway",
    )
    assert fault.params == {"client_id": None}
    connected, refreshed, reconnected, never, rate = scenario.expectations
    assert isinstance(connected, Happens) and connected.within == 2
    assert connected.pattern == EventPattern.of("mqtt.out", packet="CONNACK", return_code=0)
    assert isinstance(refreshed, Happens) and refreshed.after == "cut"
    assert isinstance(reconnected, Sequence) and len(reconnected.steps) == 2
    assert isinstance(never, Never) and never.why is not None
    assert isinstance(rate, Rate) and (rate.max, rate.per) == (3, 1)
    assert rate.pattern == EventPattern("ws.upgrade")
    # Lines are kept for failure reports.
    assert connected.line == README_EXAMPLE.splitlines().index("  - name: connected") + 1


def test_every_field_example_loads() -> None:
    scenario = _load(EVERY_FIELD)
    world = scenario.world
    assert world.gateway.limits.max_topic_bytes is None  # base: unlimited
    assert world.gateway.limits.keepalive_min == 1
    assert world.gateway.gateway_config().engine == "mqtt://127.0.0.1:1883"
    assert world.clock_offset == -301
    assert set(world.policies) == {"subscribe-only", "connect-only"}
    assert world.identity_pools[1].policies == ()
    default, broken = world.authorizers
    assert default.default and default.disconnect_after == 3 and default.refresh_after is None
    assert broken.token_key is None and broken.decision == "bad-response"
    assert world.dyson is not None
    fan, heater = world.dyson.devices
    assert fan.quirks["stale_session_rst"].params == {"window": 1.5}
    assert fan.quirks["foreign_subscribe_drop"].params == {"delay": 0.01}  # true = defaults
    assert not fan.quirks["syn_fragile"].enabled
    assert heater.product_type == "527" and heater.topic_root == "527K"
    assert [c.name for c in scenario.clients] == ["reference", "old-paho", "node"]
    delayed = scenario.faults[1]
    assert delayed.on == EventPattern.of("mqtt.in", packet="CONNECT")
    assert (delayed.nth, delayed.count, delayed.at) == (2, None, None)
    toxic = scenario.faults[3]
    assert toxic.params == {"latency": 0.1, "jitter": 0.02, "direction": "both", "toxicity": 0.5}
    assert toxic.target == "device:9RJ-US-UAA8845A"
    assert scenario.faults[4].params == {"timeout": 0.0, "direction": "downstream", "toxicity": 1.0}
    times = scenario.expectations[1]
    assert isinstance(times, Happens) and times.at_least == times.at_most == 2


@pytest.mark.parametrize("text", [README_EXAMPLE, EVERY_FIELD], ids=["readme", "every-field"])
def test_round_trip_through_yaml_and_json(text: str) -> None:
    scenario = _load(text)
    again = load_scenario_text(dump_scenario(scenario))
    assert again == scenario
    data = json.loads(json.dumps(scenario.to_data()))
    assert scenario_from_data(data) == scenario


def test_load_scenario_from_a_file_names_it_after_the_stem(tmp_path: Path) -> None:
    path = tmp_path / "sigv4-expiry.yaml"
    path.write_text(README_EXAMPLE.replace("name: sigv4-credential-expiry\n", ""))
    scenario = load_scenario(path)
    assert scenario.name == "sigv4-expiry"
    assert scenario.path == str(path)


def test_file_errors_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ScenarioError, match=r"latin\.yaml: not UTF-8"):
        load_scenario(latin)


def test_scenario_error_is_a_config_error_with_every_problem() -> None:
    text = HEAD + "timeout: soon\nworld:\n  gateway:\n    sni: maybe\n    regin: x\n"
    with pytest.raises(ScenarioError) as caught:
        _load(text)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert [(p.line, p.field) for p in error.problems] == [
        (3, "timeout"),
        (6, "world.gateway.sni"),
        (7, "world.gateway.regin"),
    ]
    assert (error.path, error.line, error.field) == ("scenarios/x.yaml", 3, "timeout")
    assert str(error).splitlines() == [str(p) for p in error.problems]


# Malformed files: each names the line (marked `# <-`) and the field


MALFORMED: list[tuple[str, str, str, str]] = [
    # (id, text, field, message fragment); the line is the one marked `# <-`
    ("yaml-unclosed-flow", HEAD + "world: {gateway: [\n# <-", "", "invalid YAML: expected"),
    ("yaml-tab-indent", HEAD + "world:\n\tgateway: {}  # <-", "", "'\\t' that cannot start"),
    (
        "yaml-bad-indent",
        HEAD + "world:\n  gateway:\n    region: eu-west-1\n   sni: require  # <-",
        "",
        "invalid YAML",
    ),
    ("yaml-undefined-alias", HEAD + "timeout: *nowhere  # <-", "", "undefined alias"),
    ("yaml-control-char", HEAD + "timeout: 1\x07  # <-", "", "'\\x07' is not allowed"),
    ("not-a-mapping", "- name: t  # <-\n- purpose: p", "", "expected a scenario (a mapping)"),
    ("missing-purpose", "name: t  # <-\n", "purpose", "missing; expected one line"),
    ("purpose-two-lines", "name: t\npurpose: |  # <-\n  one\n  two\n", "purpose", "one line"),
    ("bad-name", "name: has space  # <-\npurpose: p", "name", "expected a name of letters"),
    (
        "unknown-top-key",
        HEAD + "expectation: []  # <-",
        "expectation",
        "unknown key; expected one of name, purpose, world, client, clients, faults, "
        "expectations, timeout (did you mean 'expectations'?)",
    ),
    (
        "duplicate-key",
        HEAD + "timeout: 1\ntimeout: 2  # <-",
        "timeout",
        "duplicate key (first at line 3)",
    ),
    (
        "wrong-type-timeout",
        HEAD + "timeout: soon  # <-",
        "timeout",
        "expected a number, got 'soon'",
    ),
    ("zero-timeout", HEAD + "timeout: 0  # <-", "timeout", "expected seconds > 0, got 0"),
    ("nan-timeout", HEAD + "timeout: .nan  # <-", "timeout", "expected a finite number"),
    ("bool-not-number", HEAD + "timeout: true  # <-", "timeout", "expected a number, got true"),
    (
        "yes-is-not-a-boolean",
        HEAD + "world:\n  gateway:\n    strict: yes  # <-",
        "world.gateway.strict",
        "expected true or false, got 'yes'",
    ),
    (
        "unknown-gateway-key",
        HEAD + "world:\n  gateway:\n    regin: eu-west-1  # <-",
        "world.gateway.regin",
        "(did you mean 'region'?)",
    ),
    (
        "bad-region",
        HEAD + "world:\n  gateway: {region: Europe}  # <-",
        "world.gateway.region",
        "AWS region",
    ),
    (
        "account-id-as-number",
        HEAD + "world:\n  gateway:\n    account_id: 123456789012  # <-",
        "world.gateway.account_id",
        "quote it",
    ),
    (
        "bad-certificate",
        HEAD + "world:\n  gateway:\n    certificate: expird  # <-",
        "world.gateway.certificate",
        "expected one of good, expired, not-yet-valid, wrong-host, untrusted-ca, self-signed, "
        "missing-intermediate, got 'expird' (did you mean 'expired'?)",
    ),
    (
        "bad-engine",
        HEAD + "world:\n  gateway:\n    engine: mosquitto  # <-",
        "world.gateway.engine",
        "mqtt://host:port",
    ),
    (
        "fractional-count-limit",
        HEAD + "world:\n  gateway:\n    limits:\n      max_payload: 1.5  # <-",
        "world.gateway.limits.max_payload",
        "expected a whole number, got the number 1.5",
    ),
    (
        "negative-limit",
        HEAD + "world:\n  gateway:\n    limits:\n      websocket_lifetime: -2  # <-",
        "world.gateway.limits.websocket_lifetime",
        "expected seconds >= 0, got -2",
    ),
    (
        "unknown-limit",
        HEAD + "world:\n  gateway:\n    limits:\n      websocket_ttl: 2  # <-",
        "world.gateway.limits.websocket_ttl",
        "unknown key",
    ),
    (
        "keepalive-range",
        HEAD
        + "world:\n  gateway:\n    limits:  # <-\n      keepalive_min: 90\n      keepalive_max: 60",
        "world.gateway.limits",
        "keepalive_min must not exceed",
    ),
    (
        "pool-without-name",
        HEAD + "world:\n  identity_pools:\n    - credential_lifetime: 2  # <-",
        "world.identity_pools[0].name",
        "missing; expected the pool's name",
    ),
    (
        "zero-credential-lifetime",
        HEAD + "world:\n  identity_pools:\n    - name: p\n      credential_lifetime: 0  # <-",
        "world.identity_pools[0].credential_lifetime",
        "expected seconds > 0, got 0",
    ),
    (
        "unknown-policy",
        HEAD + "world:\n  identity_pools:\n    - name: p\n      policies: [alow-all]  # <-",
        "world.identity_pools[0].policies[0]",
        "unknown policy 'alow-all'; expected one of allow-all or an inline policy document "
        "(did you mean 'allow-all'?)",
    ),
    (
        "malformed-policy",
        HEAD + "world:\n  policies:\n    bad: {Version: '2012-10-17', Statement: []}  # <-",
        "world.policies.bad",
        "not an IoT policy document",
    ),
    (
        "duplicate-pool",
        HEAD + "world:\n  identity_pools:\n    - name: p\n    - name: p  # <-",
        "world.identity_pools[1]",
        "duplicate identity pool name 'p' (first at line 5)",
    ),
    (
        "two-default-authorizers",
        HEAD + "world:\n  authorizers:  # <-\n    - {name: a, default: true}\n"
        "    - {name: b, default: true}",
        "world.authorizers",
        "at most one authorizer can be the default, got a, b",
    ),
    (
        "signing-without-token-key",
        HEAD + "world:\n  authorizers:\n    - name: a\n      token_key: null  # <-",
        "world.authorizers[0].token_key",
        "signing needs a token_key",
    ),
    (
        "bad-decision",
        HEAD + "world:\n  authorizers:\n    - {name: a, decision: permit}  # <-",
        "world.authorizers[0].decision",
        "expected one of allow, deny, error, bad-response, got 'permit'",
    ),
    (
        "bad-product-type",
        HEAD
        + "world:\n  dyson:\n    devices:\n      - serial: X\n        product_type: TP04  # <-",
        "world.dyson.devices[0].product_type",
        "3 digits and an optional variant letter",
    ),
    (
        "serial-with-slash",
        HEAD + "world:\n  dyson:\n    devices:\n      - {serial: a/b, product_type: 438}  # <-",
        "world.dyson.devices[0].serial",
        "without '/'",
    ),
    (
        "unknown-quirk",
        HEAD + "world:\n  dyson:\n    devices:\n      - serial: X\n        product_type: 438\n"
        "        quirks:\n          stale_session: true  # <-",
        "world.dyson.devices[0].quirks.stale_session",
        "(did you mean 'stale_session_rst'?)",
    ),
    (
        "negative-quirk-window",
        HEAD + "world:\n  dyson:\n    devices:\n      - serial: X\n        product_type: 438\n"
        "        quirks:\n          stale_session_rst: {window: -1}  # <-",
        "world.dyson.devices[0].quirks.stale_session_rst.window",
        "expected seconds >= 0, got -1",
    ),
    (
        "quirk-without-settings",
        HEAD + "world:\n  dyson:\n    devices:\n      - serial: X\n        product_type: 438\n"
        "        quirks: {mute: {on: 1}}  # <-",
        "world.dyson.devices[0].quirks.mute",
        "expected true or false (mute has no settings)",
    ),
    ("client-and-clients", HEAD + "client: {kind: paho}  # <-\nclients: []", "client", "not both"),
    (
        "bad-client-kind",
        HEAD + "client:\n  kind: mosquitto_sub  # <-",
        "client.kind",
        "expected one of app, paho, awsiotsdk, libdyson-neon, libdyson-rest, command",
    ),
    ("app-without-name", HEAD + "client:  # <-\n  kind: app", "client.app", "missing; expected"),
    (
        "argv-for-paho",
        HEAD + "client:\n  kind: paho\n  argv: [x]  # <-",
        "client.argv",
        "only for kind command",
    ),
    (
        "empty-argv",
        HEAD + "client:\n  kind: command\n  argv: []  # <-",
        "client.argv",
        "at least the program",
    ),
    (
        "env-number",
        HEAD + "client:\n  kind: paho\n  env:\n    RETRIES: 3  # <-",
        "client.env.RETRIES",
        "expected a string (quote it), got the number 3",
    ),
    (
        "unknown-pool-option",
        HEAD + "world:\n  identity_pools: [{name: player}]\nclient:\n  kind: paho\n"
        "  options:\n    identity_pool: playr  # <-",
        "client.options.identity_pool",
        "no identity pool 'playr' in the world; expected one of player (did you mean 'player'?)",
    ),
    (
        "duplicate-client-names",
        HEAD + "clients:\n  - kind: paho\n  - kind: paho  # <-",
        "clients[1]",
        "duplicate client name (set `name` to tell them apart) 'paho'",
    ),
    (
        "bad-action",
        HEAD + "faults:\n  - at: 1\n    action: refuse-upgrad  # <-",
        "faults[0].action",
        "expected one of refuse-upgrade, withhold-connack, delay-connack, close-after-connect, "
        "drop-connection, reset-connection, half-open, expire-credentials, authorizer-deny, "
        "rotate-certificate, legacy-tls-only, clock-offset, cognito-error, cognito-throttle, "
        "dyson-api-error, dyson-api-throttle, latency, bandwidth, timeout, reset-peer, slicer, "
        "limit-data, slow-close, got 'refuse-upgrad' (did you mean 'refuse-upgrade'?)",
    ),
    (
        "missing-action",
        HEAD + "faults:\n  - at: 1  # <-",
        "faults[0].action",
        "missing; expected one of",
    ),
    (
        "negative-at",
        HEAD + "faults:\n  - at: -1  # <-\n    action: drop-connection",
        "faults[0].at",
        "expected seconds >= 0, got -1",
    ),
    (
        "at-and-on",
        HEAD + "faults:\n  - at: 1\n    on: ws.upgrade  # <-\n    action: drop-connection",
        "faults[0].on",
        "either `at` a time or `on` an event",
    ),
    (
        "nth-without-on",
        HEAD + "faults:\n  - nth: 2  # <-\n    action: drop-connection",
        "faults[0].nth",
        "only with `on`",
    ),
    (
        "zero-nth",
        HEAD + "faults:\n  - on: ws.upgrade\n    nth: 0  # <-\n    action: withhold-connack",
        "faults[0].nth",
        "expected a whole number >= 1",
    ),
    (
        "duration-of-one-shot",
        HEAD + "faults:\n  - action: drop-connection\n    duration: 3  # <-",
        "faults[0].duration",
        "drop-connection acts once; duration applies to half-open,",
    ),
    (
        "param-of-another-action",
        HEAD + "faults:\n  - action: drop-connection\n    status: 500  # <-",
        "faults[0].status",
        "unknown key; expected one of name, action, target, at, on, nth, count, duration, "
        "client_id",
    ),
    (
        "missing-required-param",
        HEAD + "faults:\n  - action: latency  # <-",
        "faults[0].latency",
        "missing; expected latency (seconds added)",
    ),
    (
        "status-out-of-range",
        HEAD + "faults:\n  - action: refuse-upgrade\n    status: 99  # <-",
        "faults[0].status",
        "from 100 to 599",
    ),
    (
        "toxicity-above-one",
        HEAD + "faults:\n  - action: timeout\n    toxicity: 2  # <-",
        "faults[0].toxicity",
        "from 0 to 1",
    ),
    (
        "bad-target",
        HEAD + "faults:\n  - action: reset-connection\n    target: cognito  # <-",
        "faults[0].target",
        "expected one of gateway, gateway-wss, gateway-mqtts, device:<serial>, got 'cognito'",
    ),
    (
        "target-of-fixed-action",
        HEAD + "faults:\n  - action: clock-offset\n    seconds: 1\n    target: gateway  # <-",
        "faults[0].target",
        "fixed place",
    ),
    (
        "unknown-device-target",
        HEAD + "faults:\n  - action: latency\n    latency: 1\n    target: device:NOPE  # <-",
        "faults[0].target",
        "no Dyson device 'NOPE' in the world",
    ),
    (
        "empty-expectation",
        HEAD + "expectations:\n  - within: 3  # <-",
        "expectations[0]",
        "expected exactly one of happens, never, sequence, rate, got none",
    ),
    (
        "two-types",
        HEAD + "expectations:\n  - {happens: a, never: b}  # <-",
        "expectations[0]",
        "got happens, never",
    ),
    (
        "negative-within",
        HEAD + "expectations:\n  - happens: a\n    within: -2  # <-",
        "expectations[0].within",
        "expected seconds >= 0, got -2",
    ),
    (
        "times-and-at-least",
        HEAD + "expectations:\n  - happens: a\n    times: 2  # <-\n    at_least: 1",
        "expectations[0].times",
        "not both",
    ),
    (
        "at-most-below-at-least",
        HEAD + "expectations:\n  - happens: a\n    at_least: 3\n    at_most: 2  # <-",
        "expectations[0].at_most",
        "expected at_most >= at_least (3), got 2",
    ),
    (
        "max-for-happens",
        HEAD + "expectations:\n  - happens: a\n    max: 2  # <-",
        "expectations[0].max",
        "unknown key",
    ),
    (
        "rate-without-max",
        HEAD + "expectations:\n  - rate: ws.upgrade  # <-",
        "expectations[0].max",
        "missing; expected the most events",
    ),
    (
        "zero-per",
        HEAD + "expectations:\n  - rate: ws.upgrade\n    max: 1\n    per: 0  # <-",
        "expectations[0].per",
        "expected seconds > 0",
    ),
    (
        "empty-sequence",
        HEAD + "expectations:\n  - sequence: []  # <-",
        "expectations[0].sequence",
        "at least one event pattern",
    ),
    (
        "pattern-list",
        HEAD + "expectations:\n  - never: [a, b]  # <-",
        "expectations[0].never",
        "expected an event pattern",
    ),
    (
        "unknown-operator",
        HEAD
        + "expectations:\n  - happens:\n      kind: ws.upgrade\n      status: {gte: 400}  # <-",
        "expectations[0].happens.status.gte",
        "expected an operator, one of eq, ne, gt, ge, lt, le, in, not_in, contains, regex, "
        "exists, got 'gte' (did you mean 'ge'?)",
    ),
    (
        "bad-regex",
        HEAD + "expectations:\n  - happens: {kind: a, reason: {regex: '('}}  # <-",
        "expectations[0].happens.reason.regex",
        "bad regex",
    ),
    (
        "in-needs-list",
        HEAD + "expectations:\n  - happens: {kind: a, status: {in: 3}}  # <-",
        "expectations[0].happens.status.in",
        "needs a list",
    ),
    (
        "gt-needs-number",
        HEAD + "expectations:\n  - happens: {kind: a, status: {gt: x}}  # <-",
        "expectations[0].happens.status.gt",
        "needs a number",
    ),
    (
        "unknown-after",
        HEAD
        + "expectations:\n  - name: one\n    happens: a\n  - happens: b\n    after: onee  # <-",
        "expectations[1].after",
        "no expectation or fault named 'onee'; expected one of one (did you mean 'one'?)",
    ),
    (
        "after-never",
        HEAD + "expectations:\n  - {name: quiet, never: a}\n  - happens: b\n    after: quiet  # <-",
        "expectations[1].after",
        "`never` expectation, which has no event to start from",
    ),
    (
        "after-cycle",
        HEAD + "expectations:\n  - name: a\n    happens: x\n    after: b  # <-\n"
        "  - name: b\n    happens: y\n    after: a",
        "expectations[0].after",
        "`after` goes round in a circle: a → b → a",
    ),
    (
        "name-shared-with-fault",
        HEAD + "faults:\n  - {name: cut, action: drop-connection}\nexpectations:\n"
        "  - name: cut  # <-\n    happens: a",
        "expectations[0].name",
        "a fault has this name too (line 4)",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "fragment"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_files_name_line_and_field(text: str, field: str, fragment: str) -> None:
    line = next(n for n, content in enumerate(text.splitlines(), 1) if "# <-" in content)
    with pytest.raises(ScenarioError) as caught:
        _load(text)
    error = caught.value
    where = f"scenarios/x.yaml:{line}: {field}: " if field else f"scenarios/x.yaml:{line}: "
    assert any(str(p).startswith(where) and fragment in str(p) for p in error.problems), str(error)
    assert (error.line, error.field) == (line, field), str(error)


def test_empty_file() -> None:
    with pytest.raises(ScenarioError, match=r"^scenarios/x\.yaml: the file is empty"):
        _load("# nothing but a comment\n")


def test_yaml_12_booleans_and_no_timestamps() -> None:
    scenario = _load(
        HEAD + "clients:\n  - kind: paho\n    options: {country: NO, debug: on, day: 2024-01-01}\n"
    )
    assert scenario.clients[0].options == {"country": "NO", "debug": "on", "day": "2024-01-01"}


def test_aliases_and_merge_keys_work_but_cannot_explode() -> None:
    scenario = _load(
        HEAD + "expectations:\n  - &first {name: a, happens: {kind: ws.upgrade, status: 101}}\n"
        "  - {<<: *first, name: b}\n"
    )
    first, second = scenario.expectations
    assert isinstance(second, Happens) and isinstance(first, Happens)
    assert second.pattern == first.pattern and second.name == "b"
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9)
    )
    nested = textwrap.indent(bomb, "      ")
    with pytest.raises(ScenarioError, match="too many values"):
        _load(HEAD + "clients:\n  - kind: paho\n    options:\n" + nested)


# Model invariants the loader relies on


def test_gateway_spec_defaults_are_gateway_config_defaults() -> None:
    spec, config = GatewaySpec(), GatewayConfig()
    assert spec.gateway_config() == config
    for f in fields(GatewayConfig):
        if hasattr(spec, f.name) and f.name != "engine":
            assert getattr(spec, f.name) == getattr(config, f.name), f.name
    assert spec.endpoint == config.endpoint


def test_certificate_choices_are_the_pki_bad_certificates() -> None:
    assert ("good", *(c.value for c in BadCert)) == CERTIFICATES


def test_model_constructors_check_what_python_callers_pass() -> None:
    toxic = FaultSpec(action="latency", params={"latency": 0.2})
    assert toxic.params == {
        "latency": 0.2,
        "jitter": 0.0,
        "direction": "downstream",
        "toxicity": 1.0,
    }
    assert toxic.at == 0.0  # no trigger: at the start
    with pytest.raises(ConfigError, match="latency needs latency"):
        FaultSpec(action="latency")
    with pytest.raises(ConfigError, match="drop-connection has no parameter status"):
        FaultSpec(action="drop-connection", params={"status": 500})
    with pytest.raises(ConfigError, match="not both"):
        FaultSpec(action="drop-connection", at=1, on=EventPattern("ws.upgrade"))
    with pytest.raises(ConfigError, match="at_least <= at_most"):
        Happens(pattern=EventPattern("x"), at_least=3, at_most=2)
    with pytest.raises(ConfigError, match="per > 0"):
        Rate(pattern=EventPattern("x"), max=1, per=0)
    with pytest.raises(ConfigError, match="at least one step"):
        Sequence(steps=())
    with pytest.raises(ConfigError, match="within"):
        Never(pattern=EventPattern("x"), within=-1)


def test_event_pattern_of_refuses_unknown_operators() -> None:
    with pytest.raises(ConfigError, match="unknown operator 'gte'"):
        EventPattern.of("ws.upgrade", status={"gte": 400})


# The JSON Schema


def _schema_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    return _validator(jsonschema)


@functools.cache
def _validator(jsonschema: Any) -> Any:
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("text", [README_EXAMPLE, EVERY_FIELD], ids=["readme", "every-field"])
def test_schema_accepts_the_examples_as_written_and_dumped(text: str) -> None:
    validator = _schema_validator()
    assert [e.message for e in validator.iter_errors(read_yaml(text))] == []
    assert [e.message for e in validator.iter_errors(_load(text).to_data())] == []


#: Malformed cases only the loader can see (cross-references, names, arithmetic between
#: fields, YAML itself); the schema must reject all the others.
LOADER_ONLY = {
    "yaml-unclosed-flow",
    "yaml-tab-indent",
    "yaml-bad-indent",
    "yaml-undefined-alias",
    "yaml-control-char",
    "bad-name",  # the schema checks names, but `name` may also come from the file stem
    "purpose-two-lines",
    "duplicate-key",
    "keepalive-range",
    "malformed-policy",
    "duplicate-pool",
    "two-default-authorizers",
    "signing-without-token-key",
    "unknown-pool-option",
    "duplicate-client-names",
    "unknown-device-target",
    "at-most-below-at-least",
    "bad-regex",
    "unknown-after",
    "after-never",
    "after-cycle",
    "name-shared-with-fault",
    "unknown-policy",
    "nan-timeout",  # JSON has no NaN
}


@pytest.mark.parametrize(
    "text",
    [c[1] for c in MALFORMED if c[0] not in LOADER_ONLY],
    ids=[c[0] for c in MALFORMED if c[0] not in LOADER_ONLY],
)
def test_schema_rejects_what_the_loader_rejects(text: str) -> None:
    validator = _schema_validator()
    assert list(validator.iter_errors(read_yaml(text))), "the schema accepted it"


def test_schema_tables_match_the_model() -> None:
    schema = json.loads(schema_path().read_text())
    defs = schema["$defs"]
    assert defs["certificate"]["enum"] == list(CERTIFICATES)
    assert defs["client"]["properties"]["kind"]["enum"] == list(CLIENT_KINDS)
    assert defs["condition"]["then"]["propertyNames"]["enum"] == list(OPERATORS)
    assert defs["fault"]["properties"]["action"]["enum"] == list(ACTIONS)
    common = {"name", "action", "at", "on", "nth", "count"}
    for branch in defs["fault"]["allOf"]:
        action = branch["if"]["properties"]["action"]["const"]
        spec = ACTIONS[action]
        then = branch["then"]
        expected = common | set(spec.params)
        expected |= {"duration"} if spec.lasting else set()
        expected |= {"target"} if spec.targets else set()
        assert set(then["properties"]) == expected, action
        required = {k for k, p in spec.params.items() if p.required}
        assert set(then["required"]) == {"action"} | required, action
    assert len(defs["fault"]["allOf"]) == len(ACTIONS)
    quirks = defs["quirks"]["properties"]
    assert set(quirks) == set(QUIRKS)
    for name, params in QUIRKS.items():
        if params:
            assert set(quirks[name]["anyOf"][1]["properties"]) == set(params), name
    assert set(defs["limits"]["properties"]) == {
        "base",
        *(f.name for f in fields(GatewaySpec().limits)),
    }


# Fuzzing: any text is a Scenario or a ScenarioError


_YAMLISH = st.text(
    alphabet=st.sampled_from(
        list("abcdefghijklmnopqrstuvwxyz0123456789 :-[]{},&*!|>'\"#?%@`\t\n.")
    ),
    max_size=200,
)
_KEYS = [
    "name",
    "purpose",
    "world",
    "gateway",
    "limits",
    "client",
    "clients",
    "kind",
    "faults",
    "action",
    "at",
    "on",
    "nth",
    "count",
    "duration",
    "target",
    "expectations",
    "happens",
    "never",
    "sequence",
    "rate",
    "max",
    "per",
    "after",
    "within",
    "times",
    "identity_pools",
    "authorizers",
    "dyson",
    "devices",
    "quirks",
    "status",
    "options",
    "policies",
    "timeout",
]
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([*ACTIONS, *CERTIFICATES, "ws.upgrade", "allow-all", "paho", "app", "x"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS), children, max_size=5)
    ),
    max_leaves=25,
)


def _outcome(text: str) -> Scenario | ScenarioError:
    """The scenario, or the ScenarioError; any other exception fails the test."""
    try:
        return _load(text)
    except ScenarioError as exc:
        return exc


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(_YAMLISH)
def test_random_text_is_a_scenario_or_a_scenario_error(text: str) -> None:
    outcome = _outcome(HEAD + text)
    if isinstance(outcome, ScenarioError):
        assert outcome.problems and all(p.path == "scenarios/x.yaml" for p in outcome.problems)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6))
def test_random_structures_are_a_scenario_or_a_scenario_error(data: dict[str, Any]) -> None:
    text = yaml.safe_dump({"name": "t", "purpose": "p", **data})
    outcome = _outcome(text)
    if isinstance(outcome, ScenarioError):
        assert all(p.line is None or p.line >= 1 for p in outcome.problems)
    else:
        assert load_scenario_text(dump_scenario(outcome)) == outcome
        assert math.isfinite(outcome.timeout)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    children = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in children:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


_EVERY_FIELD_DATA = json.loads(json.dumps(read_yaml(EVERY_FIELD)))
_EVERY_FIELD_PATHS = _paths(_EVERY_FIELD_DATA)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_EVERY_FIELD_PATHS), st.none() | _VALUES, st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_complete_example_is_a_scenario_or_a_scenario_error(
    mutations: list[tuple[tuple[Any, ...], Any, bool]],
) -> None:
    """Replace or delete fields deep inside a valid file: every branch of the loader."""
    data = json.loads(json.dumps(_EVERY_FIELD_DATA))
    for path, value, delete in mutations:
        parent = data
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if isinstance(parent, dict | list):
                try:
                    if delete:
                        del parent[path[-1]]
                    else:
                        parent[path[-1]] = value
                except (KeyError, IndexError, TypeError):
                    pass
    # Plain data: the validation is under test here, YAML parsing in the tests above.
    outcome = _outcome_of_data(data)
    if isinstance(outcome, ScenarioError):
        assert all(p.path == "mutated.yaml" and p.message for p in outcome.problems)
    else:
        assert scenario_from_data(json.loads(json.dumps(outcome.to_data()))) == outcome


def _outcome_of_data(data: Any) -> Scenario | ScenarioError:
    try:
        return scenario_from_data(data, path="mutated.yaml")
    except ScenarioError as exc:
        return exc
