"""The scenario catalogue covers issue [clients] "The catalogue (`scenarios/`)".

``tests/test_scenarios.py`` runs every file for every client (correct clients pass,
known-failure clients fail as declared). This file checks what those runs cannot: that
the catalogue *covers* the issue's list, item by item, area by area:

* every item of the issue's SigV4/Cognito, custom-auth, TLS, fallback, MQTT and network
  lists has its scenario file, and each area has at least one known-failure client (the
  negative control: a buggy variant the scenario catches);
* the TLS scenarios fail closed: each says, as an expectation, that no upgrade request
  (or MQTT packet) reaches the server, so credentials never leave the client;
* every entry FB-21..FB-35 of ``specs/field-bugs.md`` has a ``field-fbNN-*`` file whose
  purpose names it, each with a known-failure client (FB-01..FB-20 are the Dyson ones:
  every ``field-*`` file present must still name its entry);
* the files are well formed (the name is the file's stem, a one-line purpose, a reason
  and a reference for each known failure, a short timeout: the whole catalogue runs in
  ``.ci/run`` within minutes);
* for one buggy client per area, the failure is explained clearly: the run's failed
  expectations name the mistake (``host-with-port``, ``FORBIDDEN_ACCESS``, ...).

The paho client options the catalogue relies on are parsed here too
(:class:`harness.scenario.clients.PahoOptions`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.scenario import Scenario, load_scenario
from harness.scenario.clients import PahoOptions
from harness.scenario.model import EventPattern, Never
from harness.scenario.runner import run_scenario_async

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
#: Seconds a finished run goes on watching (as tests/test_scenarios.py).
SETTLE = 0.3
#: The longest a catalogue scenario may run (seconds of world time, compressed).
MAX_TIMEOUT = 15.0

#: The issue's lists, item → scenario file (stem), per area.
AREAS: Mapping[str, Mapping[str, str]] = {
    "sigv4": {
        "happy path": "sigv4-happy-path",
        "credentials expire and must be refreshed": "sigv4-credential-expiry",
        "403 on upgrade then refresh": "sigv4-upgrade-403-then-refresh",
        "clock skew": "sigv4-clock-skew",
        "token signed into the canonical query": "sigv4-token-signed-refused",
        "empty canonical query": "sigv4-empty-canonical-query",
        "Host with :443": "sigv4-host-with-port",
        "24-hour WebSocket close": "sigv4-websocket-24h-close",
        "Cognito throttling": "sigv4-cognito-throttled",
        "unknown identity pool": "sigv4-unknown-identity-pool",
    },
    "custom-auth": {
        "happy path": "custom-auth-signed-token",
        "bad signature": "custom-auth-bad-signature",
        "expired token then re-fetch": "custom-auth-dyson-iot-token-expiry",
        "disconnectAfterInSeconds": "custom-auth-disconnect-after",
        "policy forbids #": "custom-auth-policy-forbids-hash",
        "duplicate client id between two apps": "custom-auth-duplicate-client-id",
        "the /mqtt?token=..&signature=.. form": "custom-auth-dyson-token-in-path",
    },
    "tls": {
        "untrusted CA": "tls-untrusted-ca",
        "wrong hostname": "tls-wrong-hostname",
        "expired certificate": "tls-expired-certificate",
        "missing intermediate": "tls-missing-intermediate",
        "TLS 1.0/1.1 only": "tls-legacy-only",
        "no SNI": "tls-no-sni",
    },
    "fallback": {
        "cloud black-holed -> local": "fallback-cloud-blackholed-to-local",
        "local reset on stale session -> cloud, then back": "fallback-local-stale-session-to-cloud",
        "wrong local password -> cloud": "fallback-wrong-local-password",
        "both down -> bounded retries": "fallback-both-down-bounded-retries",
    },
    "mqtt": {
        "QoS 2": "mqtt-qos2-ignored",
        "keep-alive timeout": "mqtt-keepalive-timeout",
        "oversize payload": "mqtt-oversize-payload",
        "forbidden subscribe loop": "mqtt-forbidden-subscribe-loop",
    },
    "net": {
        "latency": "net-latency",
        "half-open connection detected by keep-alive": "net-half-open",
        "reset mid-handshake": "net-reset-mid-handshake",
    },
}

#: The field-bugs.md entries of the AWS side this catalogue reproduces (all of them).
AWS_FIELD_BUGS = tuple(f"FB-{n}" for n in range(21, 36))

#: One buggy client per area, and what its failed expectations must say (the mistake).
NEGATIVE_CONTROLS = (
    ("sigv4-host-with-port", "port-sent-not-signed", ("host-with-port", "FB-28")),
    ("custom-auth-policy-forbids-hash", "subscribes-hash", ("FORBIDDEN_ACCESS", "`#`")),
    ("tls-untrusted-ca", "probe-fallback-insecure", ("ws.upgrade", "credentials")),
    ("mqtt-forbidden-subscribe-loop", "resubscribes", ("FORBIDDEN_ACCESS", "FB-30")),
    ("net-half-open", "keepalive-60s", ("client.disconnected", "keep-alive")),
    ("field-fb23-expired-credentials-reused", "paho-stale", ("token-expired", "FB-23")),
)


def _catalogue() -> dict[str, Scenario]:
    return {path.stem: load_scenario(path) for path in sorted(SCENARIOS.glob("*.yaml"))}


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Scenario]:
    return _catalogue()


def _area(stem: str) -> str:
    return "custom-auth" if stem.startswith("custom-auth-") else stem.split("-", 1)[0]


# Coverage


def test_the_catalogue_has_at_least_30_files(catalogue: dict[str, Scenario]) -> None:
    assert len(catalogue) >= 30, sorted(catalogue)


@pytest.mark.parametrize(
    ("area", "item", "stem"),
    [(area, item, stem) for area, items in AREAS.items() for item, stem in items.items()],
)
def test_every_item_of_the_issue_has_its_scenario(
    catalogue: dict[str, Scenario], area: str, item: str, stem: str
) -> None:
    assert stem in catalogue, f"{area}: {item!r} has no scenario file {stem}.yaml"
    assert _area(stem) == area
    assert catalogue[stem].clients, f"{stem}: no client runs it"


@pytest.mark.parametrize("area", [*AREAS, "field"])
def test_every_area_has_a_negative_control(catalogue: dict[str, Scenario], area: str) -> None:
    known = [
        f"{stem}[{client.name}]"
        for stem, scenario in catalogue.items()
        if _area(stem) == area
        for client in scenario.clients
        if client.known_failure is not None
    ]
    assert known, f"no scenario of area {area} has a known-failure client"


@pytest.mark.parametrize("area", list(AREAS))
def test_every_area_has_a_correct_client(catalogue: dict[str, Scenario], area: str) -> None:
    for stem in AREAS[area].values():
        correct = [c.name for c in catalogue[stem].clients if c.known_failure is None]
        assert correct, f"{stem}: every client is a known failure; none shows it passing"


def _fails_closed(scenario: Scenario) -> bool:
    """A ``never`` on the upgrade request or on any MQTT packet from the client."""
    closed = (EventPattern("ws.upgrade"), EventPattern("mqtt.in"))
    return any(
        isinstance(e, Never) and e.pattern in closed and e.after is None
        for e in scenario.expectations
    )


@pytest.mark.parametrize("stem", list(AREAS["tls"].values()))
def test_tls_scenarios_fail_closed(catalogue: dict[str, Scenario], stem: str) -> None:
    assert _fails_closed(catalogue[stem]), (
        f"{stem}: needs `never: ws.upgrade` (or `never: mqtt.in`): the credentials must "
        "never reach the server over a connection that failed verification"
    )


@pytest.mark.parametrize("bug", AWS_FIELD_BUGS)
def test_every_aws_field_bug_has_its_field_scenario(
    catalogue: dict[str, Scenario], bug: str
) -> None:
    prefix = f"field-{bug.lower().replace('-', '')}-"
    files = [stem for stem in catalogue if stem.startswith(prefix)]
    assert files, f"{bug}: no scenarios/{prefix}*.yaml"
    for stem in files:
        scenario = catalogue[stem]
        assert bug in scenario.purpose, f"{stem}: the purpose must name {bug}"
        known = [c for c in scenario.clients if c.known_failure is not None]
        assert known, f"{stem}: no known-failure client reproduces {bug}"
        assert any(c.known_failure and c.known_failure.ref == bug for c in known)


def test_every_field_scenario_names_an_entry_of_field_bugs(
    catalogue: dict[str, Scenario],
) -> None:
    spec = (Path(__file__).resolve().parents[2] / "shared" / "specs" / "field-bugs.md").read_text(
        encoding="utf-8"
    )
    entries = set(re.findall(r"^### (FB-\d\d) ", spec, re.MULTILINE))
    assert set(AWS_FIELD_BUGS) <= entries
    for stem, scenario in catalogue.items():
        if not stem.startswith("field-"):
            continue
        match = re.fullmatch(r"field-fb(\d\d)-[a-z0-9-]+", stem)
        assert match, f"{stem}: field files are named field-fbNN-<what>"
        bug = f"FB-{match.group(1)}"
        assert bug in entries, f"{stem}: {bug} is not an entry of field-bugs.md"
        assert scenario.purpose.startswith(f"{bug}:"), f"{stem}: purpose starts with {bug}:"


# Form


def test_every_file_is_well_formed(catalogue: dict[str, Scenario]) -> None:
    for stem, scenario in catalogue.items():
        assert scenario.name == stem, f"{stem}.yaml is named {scenario.name}"
        assert scenario.purpose and "\n" not in scenario.purpose, f"{stem}: one-line purpose"
        assert scenario.timeout <= MAX_TIMEOUT, f"{stem}: timeout {scenario.timeout} s"
        for client in scenario.clients:
            if client.known_failure is not None:
                assert client.known_failure.reason, f"{stem}[{client.name}]: reason"
                names = [c.name for c in scenario.clients]
                assert names.count(client.name) == 1, f"{stem}: client names are unique"


# Negative controls explained


@pytest.mark.interop
@pytest.mark.parametrize(
    ("stem", "client", "words"),
    [pytest.param(*case, id=f"{case[0]}[{case[1]}]") for case in NEGATIVE_CONTROLS],
)
async def test_a_buggy_client_fails_with_a_clear_message(
    stem: str, client: str, words: tuple[str, ...]
) -> None:
    scenario = load_scenario(SCENARIOS / f"{stem}.yaml")
    outcome = await run_scenario_async(scenario, client=client, settle=SETTLE)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.summary())
    assert outcome.verdict == "xfailed", outcome.explain()
    failed = "\n".join(r.explain for r in outcome.failed_results)
    for word in words:
        assert word in failed, f"{stem}[{client}]: {word!r} not in\n{failed}"


# The paho options the catalogue uses


def test_paho_options_of_the_catalogue_parse() -> None:
    opts = PahoOptions.parse(
        "x",
        {
            "identity_pool_id": "us-east-1:00000000-0000-4000-8000-00000000dead",
            "instances": 2,
            "client_id": "app-{instance}",
            "drop_denied_filters": True,
            "will": {"topic": "t/status", "payload": "offline", "qos": 1},
            "host_port": "sent",
            "publish": [{"topic": "t", "size": 3, "qos": 1}],
        },
    )
    assert opts.instances == 2 and opts.drop_denied_filters and opts.host_port == "sent"
    assert opts.will == ("t/status", b"offline", 1)
    assert opts.publish == (("t", b"xxx", 1),)
    custom = PahoOptions.parse(
        "y",
        {"authorizer": "a", "custom_auth_in": "query", "username_suffix": "&SDK=Python"},
    )
    assert (custom.auth, custom.custom_auth_in, custom.username_suffix) == (
        "custom-auth",
        "query",
        "&SDK=Python",
    )


@pytest.mark.parametrize(
    "options",
    [
        {"instances": 0},
        {"host_port": "sometimes"},
        {"custom_auth_in": "cookie"},
        {"will": {"topic": "t", "qos": 3}},
        {"will": "t"},
        {"publish": [{"topic": "t", "size": 3, "payload": "abc"}]},
        {"publish": [{"topic": "t", "size": -1}]},
        {"publish": [{"topic": "t", "colour": "red"}]},
        {"drop_denied_filters": "yes"},
    ],
)
def test_bad_paho_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PahoOptions.parse("x", options)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    [
        "instances", "client_id", "drop_denied_filters", "will", "host_port", "custom_auth_in",
        "username_suffix", "identity_pool_id", "publish", "subscribe", "authorizer", "transport",
    ]
)  # fmt: skip


@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_paho_options_are_parsed_or_refused_never_crash(options: dict[str, object]) -> None:
    try:
        opts = PahoOptions.parse("fuzz", options)
    except ConfigError:
        return
    assert isinstance(opts.client_id, str) and opts.client_id
    assert opts.instances >= 1
    assert opts.host_port in ("none", "sent", "signed")
    assert opts.custom_auth_in in ("headers", "query", "design-path")
    assert all(isinstance(payload, bytes) for _, payload, _ in opts.publish)
