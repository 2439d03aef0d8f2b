"""The scenario runner, the worlds it builds, its clients and ``iot-harness run`` / ``list``.

Scenarios here are small YAML texts with compressed time: the runner's verdicts
(passed, failed, xfailed, xpassed, skipped, error), how a run ends (decided, failed,
settled, client-ended, timeout), the events JSONL the report reads back, the descriptor
each client gets, the ``command`` client's protocol, and the CLI's output and exit codes.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.report import reports_from_events
from harness.report.files import load_events
from harness.scenario import Scenario, load_scenario_text
from harness.scenario.cli_commands import main as cli_main
from harness.scenario.cli_commands import scenario_files
from harness.scenario.clients import PahoOptions, unmet_requirements
from harness.scenario.model import (
    AuthorizerSpec,
    CognitoSpec,
    DysonSpec,
    IdentityPoolSpec,
    WorldSpec,
)
from harness.scenario.runner import (
    ScenarioOutcome,
    case_id,
    run_scenario,
    run_scenario_async,
    scenario_cases,
)
from harness.scenario.worlds import _lambda, open_world

SETTLE = 0.2


def scenario(text: str, *, path: str = "<test>") -> Scenario:
    return load_scenario_text(textwrap.dedent(text), path=path)


def command(code: str, **extra: Any) -> dict[str, Any]:
    """A ``command`` client running Python ``code`` (which may print JSON event lines)."""
    return {"kind": "command", "argv": ["python", "-c", textwrap.dedent(code)], **extra}


def with_client(body: str, client: dict[str, Any]) -> Scenario:
    data = textwrap.dedent(body)
    return load_scenario_text(data + "\nclient: " + json.dumps(client) + "\n")


EMIT = "import json; print(json.dumps({'kind': 'client.said', 'what': 'hello'}), flush=True)"
WAIT = "import signal\nsignal.pause()"  # stays up until the runner stops it


async def run(s: Scenario, **options: Any) -> ScenarioOutcome:
    options.setdefault("settle", SETTLE)
    return await run_scenario_async(s, **options)


# Verdicts and endings


async def test_passed_and_decided_once_every_expectation_is() -> None:
    s = with_client(
        """
        name: says-hello
        purpose: the command says hello
        expectations:
          - happens: {kind: client.said, what: hello}
            within: 5
        timeout: 10
        """,
        command(EMIT + "\n" + WAIT),
    )
    outcome = await run(s)
    assert outcome.verdict == "passed" and outcome.ended == "decided", outcome.explain()
    assert outcome.ok and outcome.passed is True
    assert outcome.duration < 5
    assert outcome.id == "says-hello[python]" == case_id(s, s.clients[0])
    assert "PASSED says-hello[python]: 1/1 expectations held" in outcome.summary()


async def test_failed_ends_a_settle_after_the_failure_and_leaves_open_ones_undecided() -> None:
    s = with_client(
        """
        name: says-too-much
        purpose: a never that fails at once
        expectations:
          - never: {kind: client.said}
          - happens: {kind: client.nothing}
        timeout: 10
        """,
        command(EMIT + "\n" + WAIT),
    )
    outcome = await run(s)
    assert outcome.verdict == "failed" and outcome.ended == "failed"
    assert not outcome.ok and outcome.passed is False
    statuses = [r.status for r in outcome.results]
    assert statuses == ["failed", "pending"]
    text = outcome.explain()
    assert "expected no client.said" in text and "timeline:" in text
    assert "the run ended: failed" in text


async def test_settled_when_only_never_and_rate_are_left() -> None:
    s = with_client(
        """
        name: quiet
        purpose: nothing bad happens
        expectations:
          - happens: {kind: client.said}
          - never: {kind: auth.verdict, ok: false}
          - rate: client.said
            max: 5
        timeout: 10
        """,
        command(EMIT + "\n" + WAIT),
    )
    outcome = await run(s)
    assert (outcome.verdict, outcome.ended) == ("passed", "settled"), outcome.explain()
    assert all(r.status == "passed" for r in outcome.results)


async def test_client_ended_judges_what_is_left() -> None:
    s = with_client(
        """
        name: leaves
        purpose: the client exits without doing it
        expectations:
          - happens: {kind: client.never-said}
        timeout: 10
        """,
        command("print('bye')"),
    )
    outcome = await run(s)
    assert (outcome.verdict, outcome.ended) == ("failed", "client-ended")
    assert outcome.results[0].status == "failed"
    kinds = [e.kind for e in outcome.events]
    assert "client.output" in kinds and "client.exited" in kinds


async def test_timeout_and_its_scale() -> None:
    s = with_client(
        """
        name: slow
        purpose: waits for something that never comes
        expectations:
          - happens: {kind: client.never-said}
        timeout: 0.4
        """,
        command(WAIT),
    )
    outcome = await run(s)
    assert (outcome.verdict, outcome.ended) == ("failed", "timeout")
    assert 0.4 <= outcome.duration < 2
    scaled = await run(s, timeout_scale=2)
    assert scaled.ended == "timeout" and scaled.duration >= 0.8


async def test_known_failure_is_xfailed_when_it_fails_and_xpassed_when_it_passes() -> None:
    body = """
        name: known
        purpose: a documented bug
        expectations:
          - never: {kind: client.said}
        timeout: 5
        """
    failing = with_client(body, command(EMIT, known_failure={"reason": "says it", "ref": "FB-0"}))
    outcome = await run(failing)
    assert outcome.verdict == "xfailed" and outcome.ok and outcome.passed is False
    assert outcome.reason == "says it (FB-0)"
    assert "known failure: says it (FB-0)" in outcome.summary()
    fixed = with_client(body, command("pass", known_failure={"reason": "says it"}))
    outcome = await run(fixed)
    assert outcome.verdict == "xpassed" and not outcome.ok
    assert "unexpectedly passed" in outcome.summary()


async def test_unmet_requirements_and_unsupported_kinds_are_skipped() -> None:
    body = """
        name: skip
        purpose: cannot run here
        expectations:
          - happens: {kind: client.said}
        """
    outcome = await run(with_client(body, {"kind": "paho", "requires": ["paho-mqtt<1"]}))
    assert outcome.verdict == "skipped" and outcome.ok and outcome.passed is None
    assert "paho-mqtt<1 (installed:" in str(outcome.reason)
    outcome = await run(with_client(body, {"kind": "awsiotsdk"}))
    assert outcome.verdict == "skipped" and "not supported" in str(outcome.reason)
    assert outcome.explain() == outcome.summary()


async def test_bad_client_options_and_impossible_faults_are_errors() -> None:
    body = """
        name: broken
        purpose: harness misuse
        expectations:
          - happens: {kind: client.said}
        """
    outcome = await run(with_client(body, {"kind": "paho", "options": {"colour": "red"}}))
    assert outcome.verdict == "error" and "unknown paho option(s) colour" in str(outcome.reason)
    assert not outcome.ok
    s = scenario(
        """
        name: no-dyson
        purpose: a Dyson fault in a world without Dyson
        faults:
          - action: dyson-api-error
        expectations:
          - happens: {kind: client.said}
        """
    )
    outcome = await run(s)
    assert outcome.verdict == "error" and "Dyson side" in str(outcome.reason)


async def test_a_client_that_crashes_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Crashing:
        name = "crash"

        async def run(self, stop: Any) -> None:
            raise RuntimeError("boom")

    monkeypatch.setattr("harness.scenario.runner.create_client", lambda *a, **k: Crashing())
    s = with_client(
        """
        name: crash
        purpose: the adapter has a bug
        expectations:
          - happens: {kind: client.said}
        timeout: 5
        """,
        {"kind": "paho"},
    )
    outcome = await run(s)
    assert outcome.verdict == "error" and "RuntimeError: boom" in str(outcome.reason)
    assert any(e.kind == "client.error" and e.get("stage") == "crash" for e in outcome.events)


async def test_a_scenario_without_clients_runs_the_world_and_faults_alone() -> None:
    s = scenario(
        """
        name: alone
        purpose: faults and expectations only
        faults:
          - {name: skew, at: 0.1, action: clock-offset, seconds: 30}
        expectations:
          - happens: {kind: fault.fired, name: skew, seconds: 30}
            within: 1
        """
    )
    assert scenario_cases(s) == [None]
    outcome = await run(s)
    assert outcome.verdict == "passed" and outcome.client is None and outcome.id == "alone"


def test_run_scenario_picks_clients_by_name_and_checks_arguments() -> None:
    s = scenario(
        """
        name: two
        purpose: two clients
        clients:
          - {name: a, kind: command, argv: [python, -c, "pass"]}
          - {name: b, kind: command, argv: [python, -c, "pass"]}
        expectations:
          - happens: {kind: client.exited}
        """
    )
    with pytest.raises(ConfigError, match="several clients"):
        run_scenario(s)
    with pytest.raises(ConfigError, match="no client 'c'"):
        run_scenario(s, client="c")
    with pytest.raises(ConfigError, match="timeout_scale"):
        run_scenario(s, client="a", timeout_scale=0)
    with pytest.raises(ConfigError, match="settle"):
        run_scenario(s, client="a", settle=-1)
    outcome = run_scenario(s, client="b", settle=SETTLE)
    assert outcome.verdict == "passed" and outcome.client is not None
    assert outcome.client.name == "b"


# The events JSONL and the report


async def test_events_file_brackets_each_run_for_the_report(tmp_path: Path) -> None:
    events = tmp_path / "run.jsonl"
    body = """
        name: said
        purpose: says hello
        expectations:
          - name: hello
            happens: {kind: client.said}
        """
    first = await run(with_client(body, command(EMIT)), events_path=events)
    second = await run(
        with_client(body, command("pass", known_failure={"reason": "silent"})), events_path=events
    )
    assert (first.verdict, second.verdict) == ("passed", "xfailed")
    loaded = load_events(events)
    kinds = [e.kind for e in loaded]
    assert kinds.count("scenario.started") == 2 and kinds[0] == "scenario.started"
    assert kinds[-1] == "scenario.finished"
    reports = reports_from_events(loaded, name="run")
    assert [r.name for r in reports] == ["said[python]", "said[python]"]
    assert [r.passed for r in reports] == [True, False]
    assert reports[0].expectations[0].name == "hello" and reports[0].expectations[0].ok
    assert any(e.kind == "client.said" for e in reports[0].events)
    assert not any(e.kind == "client.said" for e in reports[1].events)
    finished = [e for e in loaded if e.kind == "scenario.finished"]
    assert finished[1].get("verdict") == "xfailed" and finished[1].get("scenario") == "said"
    report = first.report()
    assert report.name == "said[python]" and report.passed is True
    assert "client python" in report.purpose


# Worlds


async def test_the_descriptor_names_what_the_file_declared() -> None:
    s = scenario(
        """
        name: world
        purpose: pools, authorizers, things
        world:
          identity_pools: [{name: first}, {name: second, credential_lifetime: 5}]
          authorizers:
            - {name: alpha}
            - {name: beta, signing: false, token_key: null, default: true}
          things: [{name: lamp}]
        clients:
          - {name: c, kind: paho, options: {identity_pool: second, authorizer: beta}}
        expectations:
          - happens: {kind: x}
        """
    )
    async with open_world(s.world) as built:
        world = built.world
        descriptor = built.descriptor(client=s.clients[0])
        assert world.cognito is not None
        pools = descriptor["cognito"]["identity_pools"]
        assert set(pools) == {"first", "second"}
        assert descriptor["cognito"]["identity_pool_id"] == pools["second"]
        assert world.cognito.pools[pools["second"]].credential_lifetime == 5
        names = [a["name"] for a in descriptor["authorizers"]]
        assert names[:2] == ["beta", "alpha"] and names[2] == "iot-harness-authorizer"
        assert "private_key_file" not in descriptor["authorizers"][0]
        assert descriptor["authorizers"][1]["private_key_file"].endswith(".key")
        assert world.gateway.default_authorizer == "beta"
        (thing,) = descriptor["things"]
        assert thing["name"] == "lamp" and thing["cert_file"].endswith(".pem")
        assert len(world.gateway.things) == 1
        plain = built.descriptor()
        assert plain["cognito"]["identity_pool_id"] == pools["first"]


async def test_world_settings_clock_and_certificates_are_applied() -> None:
    s = scenario(
        """
        name: settings
        purpose: initial state
        world:
          clock_offset: -120
          newcomer_defaults: false
          gateway: {certificate: wrong-host, region: eu-west-1}
        expectations:
          - happens: {kind: x}
        """
    )
    async with open_world(s.world) as built:
        world = built.world
        assert world.clock.offset == -120
        assert world.pool is None and not world.gateway.authorizers
        assert world.endpoint.endswith("eu-west-1.amazonaws.com")
        import ssl

        from tests.gateway_wire import RawClient

        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            await RawClient.connect(world)


async def test_pools_need_cognito() -> None:
    spec = WorldSpec(
        cognito=CognitoSpec(enabled=False), identity_pools=(IdentityPoolSpec(name="p"),)
    )
    with pytest.raises(ConfigError, match="identity_pools need Cognito"):
        async with open_world(spec):
            pass


@pytest.mark.parametrize(
    ("decision", "check"),
    [
        ("allow", lambda answer: answer["isAuthenticated"] is True),
        ("deny", lambda answer: answer == {"isAuthenticated": False}),
        ("bad-response", lambda answer: answer["isAuthenticated"] == "yes"),
    ],
)
def test_authorizer_decisions(decision: str, check: Callable[[Any], bool]) -> None:
    spec = AuthorizerSpec(name="a", decision=decision, disconnect_after=None, policies=("{}",))
    answer: Any = _lambda(spec)(None)  # type: ignore[arg-type]
    assert check(answer)
    if decision == "allow":
        assert "disconnectAfterInSeconds" not in answer and answer["policyDocuments"] == ["{}"]


def test_an_authorizer_that_errors_raises() -> None:
    with pytest.raises(RuntimeError, match="Lambda failed"):
        _lambda(AuthorizerSpec(name="a", decision="error"))(None)  # type: ignore[arg-type]


def test_dyson_section_maps_to_the_dyson_config() -> None:
    pytest.importorskip("simulators.dyson.world")
    from harness.scenario.worlds import _dyson_config

    s = scenario(
        """
        name: dyson
        purpose: mapping
        world:
          dyson:
            cloud: {credential_lifetime: 2, rate_limit: 5}
            devices:
              - serial: 9RJ-US-UAA8845A
                product_type: 438M
                cloud: false
                quirks:
                  stale_session_rst: {window: 1.5}
                  session_cap: false
                  foreign_subscribe_drop: {delay: 0.02}
                  hash_wildcard: {mode: refuse}
                  mute: true
        expectations:
          - happens: {kind: x}
        """
    )
    assert isinstance(s.world.dyson, DysonSpec)
    config = _dyson_config(s.world.dyson)
    assert config.settings.token_ttl_s == 2 and config.settings.rate_limit == 5
    (device,) = config.devices
    assert device.mode == "local" and device.serial == "9RJ-US-UAA8845A"
    quirks = device.quirks
    assert quirks.stale_window_s == 1.5 and quirks.session_cap is None
    assert quirks.foreign_drop_delay_ms == pytest.approx(20)
    assert quirks.hash_wildcard == "refuse" and quirks.mute


# Clients


async def test_a_command_client_gets_the_descriptor_and_the_ca(tmp_path: Path) -> None:
    code = """
        import json, os
        d = json.load(open(os.environ["IOT_HARNESS_DESCRIPTOR"]))
        ca = d["iot"]["ca_file"]
        same = os.environ["SSL_CERT_FILE"] == ca == os.environ["NODE_EXTRA_CA_CERTS"]
        print(json.dumps({"kind": "client.env", "same_ca": same, "extra": os.environ["EXTRA"],
                          "cwd": os.getcwd(), "t": 99, "conn": "c9"}))
        print("x" * 600)
        print(json.dumps({"kind": "not.client"}))
        import sys; print("oops", file=sys.stderr)
        """
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: env
            purpose: the command's environment
            expectations:
              - happens: {kind: client.exited, returncode: 0}
            """
        )
        + "client: "
        + json.dumps(command(code, env={"EXTRA": "yes"}))
        + "\n"
    )
    from harness.scenario import load_scenario

    outcome = await run(load_scenario(path))
    assert outcome.verdict == "passed", outcome.explain()
    (env,) = [e for e in outcome.events if e.kind == "client.env"]
    assert env.get("same_ca") is True and env.get("extra") == "yes"
    assert env.get("cwd") == str(tmp_path) and env.conn == "c9" and env.get("client") == "python"
    lines = [e for e in outcome.events if e.kind == "client.output"]
    # stdout and stderr are read concurrently: their relative order is not fixed.
    stdout = [e for e in lines if e.get("stream") == "stdout"]
    assert [len(e.get("line")) for e in stdout[:1]] == [500]
    assert {e.get("stream") for e in lines} == {"stdout", "stderr"}
    assert any(e.get("line") == '{"kind": "not.client"}' for e in lines)


async def test_a_command_that_cannot_start_is_an_event() -> None:
    s = with_client(
        """
        name: missing
        purpose: no such program
        expectations:
          - happens: {kind: client.error, stage: start}
        """,
        {"kind": "command", "argv": ["/nonexistent/program"]},
    )
    outcome = await run(s)
    assert outcome.verdict == "passed", outcome.explain()


def test_paho_options_are_checked() -> None:
    assert PahoOptions.parse("c", {}).auth == "sigv4"
    assert PahoOptions.parse("c", {"authorizer": "a"}).auth == "custom-auth"
    thing = PahoOptions.parse("c", {"thing": "t"})
    assert (thing.auth, thing.transport) == ("x509", "tcp")
    parsed = PahoOptions.parse(
        "c", {"publish": [{"topic": "a", "payload": {"v": 1}, "qos": 1}], "subscribe": ["a/#"]}
    )
    assert parsed.publish == (("a", b'{"v": 1}', 1),) and parsed.client_id == "paho-c"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"auth": "sigv4", "transport": "tcp"}, "SigV4 needs transport websockets"),
        ({"thing": "t", "transport": "websockets"}, "X.509 needs transport tcp"),
        ({"keepalive": "60"}, "wrong type"),
        ({"reconnect": 1}, "wrong type"),
        ({"refresh": "sometimes"}, "one of when-needed"),
        ({"publish": [{"payload": "x"}]}, "publish items"),
        ({"publish": [{"topic": "a", "qos": 3}]}, "qos is 0, 1 or 2"),
        ({"subscribe": [1]}, "list of topic filters"),
        ({"reconnect_delay": -1}, "seconds >= 0"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            PahoOptions.parse("c", bad)


def test_requirements() -> None:
    assert unmet_requirements(("paho-mqtt>=2",)) == []
    assert unmet_requirements(("no-such-package-here",)) == ["no-such-package-here (not installed)"]
    with pytest.raises(ConfigError, match="not a pip requirement"):
        unmet_requirements(("paho mqtt ===",))


# The CLI


CLI_SCENARIO = """
name: {name}
purpose: {purpose}
client:
  kind: command
  argv: [python, -c, "{code}"]
expectations:
  - happens: {{kind: client.exited, returncode: 0}}
timeout: 5
"""


def write(folder: Path, name: str, *, code: str = "pass", purpose: str = "exits") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(CLI_SCENARIO.format(name=name, purpose=purpose, code=code))
    return path


def junit(path: Path) -> ET.Element:
    """The ``testsuite`` of a JUnit file the CLI wrote."""
    return ET.parse(path).getroot()[0]  # noqa: S314 - our own file


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_run_passes_writes_outputs_and_exits_zero(tmp_path: Path) -> None:
    write(tmp_path, "good-one")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "good-two")
    code, out, err = cli(
        "run",
        str(tmp_path),
        "--settle",
        "0.1",
        "--report",
        str(tmp_path / "out" / "r.html"),
        "--events",
        str(tmp_path / "out" / "e.jsonl"),
        "--junit",
        str(tmp_path / "out" / "j.xml"),
    )
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0].startswith("PASS   good-one[python]")
    assert lines[1].startswith("PASS   good-two[python]")
    assert "scenario  client  result" in out and "2 runs in" in out and "2 passed" in out
    assert (tmp_path / "out" / "r.html").read_text().startswith("<!DOCTYPE html>")
    events = load_events(tmp_path / "out" / "e.jsonl")
    assert [e.kind for e in events].count("scenario.finished") == 2
    suite = junit(tmp_path / "out" / "j.xml")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


def test_cli_run_fails_with_explanations_and_exit_one(tmp_path: Path) -> None:
    write(tmp_path, "bad", code="raise SystemExit(3)")
    write(tmp_path, "skipped")
    (tmp_path / "skipped.yaml").write_text(
        (tmp_path / "skipped.yaml")
        .read_text()
        .replace("kind: command", "kind: awsiotsdk")
        .replace('  argv: [python, -c, "pass"]\n', "")
    )
    code, out, _ = cli("run", str(tmp_path), "--settle", "0.1", "--junit", str(tmp_path / "j.xml"))
    assert code == 1
    assert "FAIL   bad[python]" in out and "SKIP   skipped[awsiotsdk]" in out
    assert "1 failed, 1 skipped" in out
    assert "expected client.exited returncode=0" in out and "timeline:" in out
    suite = junit(tmp_path / "j.xml")
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"
    failure = suite.find("testcase[@classname='bad']/failure")
    assert failure is not None and "returncode" in (failure.text or "")


def test_cli_run_client_filter_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "one")
    code, _, err = cli("run", str(tmp_path), "--client", "nobody")
    assert code == 2 and "no scenario to run" in err
    code, _, err = cli("run", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "broken.yaml").write_text("name: broken\npurpose: x\nexpectations: nope\n")
    code, out, err = cli("run", str(tmp_path))
    assert code == 2 and "broken.yaml:3: expectations" in err and out == ""
    capsys.readouterr()
    assert cli("run", str(tmp_path / "one.yaml"), "--timeout-scale", "0")[0] == 2
    assert "positive" in capsys.readouterr().err  # argparse prints usage errors itself
    assert cli("run", str(tmp_path / "one.yaml"), "--settle", "x")[0] == 2
    assert "not a number of seconds" in capsys.readouterr().err
    assert cli("run")[0] == 2
    assert "required" in capsys.readouterr().err


def test_cli_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "first", purpose="the first one")
    write(tmp_path, "second", purpose="the second one")
    code, out, _ = cli("list", str(tmp_path))
    assert code == 0
    assert out.splitlines()[0].split() == ["first", "the", "first", "one"]
    assert "clients: python" in out and out.endswith("2 scenarios\n")
    (tmp_path / "bad.yml").write_text("name: [\n")
    code, out, err = cli("list", str(tmp_path))
    assert code == 2 and "invalid YAML" in err and "1 not loaded" in out
    monkeypatch.chdir(tmp_path)
    assert cli("list", "nowhere")[0] == 2


def test_the_catalogue_lists_cleanly() -> None:
    catalogue = Path(__file__).resolve().parent.parent / "scenarios"
    code, out, err = cli("list", str(catalogue))
    assert (code, err) == (0, "")
    assert len(scenario_files([catalogue])) == int(out.splitlines()[-1].split()[0])


def test_cli_module_runs_as_a_script(tmp_path: Path) -> None:
    import subprocess

    write(tmp_path, "script")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "harness.scenario.cli_commands", "list", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0 and "script" in done.stdout


async def test_a_fault_that_breaks_makes_the_run_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.faults import FaultPlan

    def broken(self: FaultPlan, state: object, trigger: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(FaultPlan, "_do_clock_offset", broken)
    s = scenario(
        """
        name: buggy-fault
        purpose: a bug in the fault plan
        faults:
          - {at: 0.05, action: clock-offset, seconds: 1}
        expectations:
          - never: {kind: x}
            within: 0.2
        """
    )
    outcome = await run(s)
    assert outcome.verdict == "error" and "RuntimeError: boom" in str(outcome.reason)


def test_node_modules_and_hidden_folders_are_not_scenarios(tmp_path: Path) -> None:
    from harness.scenario.cli_commands import scenario_files

    for folder in ("node_modules/pkg", ".cache", "area"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.yaml").write_text("name: x\n")
    assert scenario_files([tmp_path]) == [tmp_path / "area" / "x.yaml"]
