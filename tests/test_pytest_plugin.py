"""The pytest plugin (harness.pytest_plugin), tested with pytester (STYLE.md §6).

Each test writes a small project (scenario files, a test module) into pytester's folder
and runs pytest on it in process with the plugin: collection of scenario files, verdicts
and known failures, the failure text, options, JUnit, and the fixtures.
"""

from __future__ import annotations

import json
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

# pytester's in-process runs forget the modules a run imported; cryptography's compiled
# bindings break when imported twice, so what the scenarios need is imported up front.
import harness.faults
import harness.report
import harness.scenario.runner
import harness.scenario.worlds
import harness.world  # noqa: F401
import simulators.apps.mqtt_link  # noqa: F401

pytest_plugins = ["pytester"]

#: With the ``pytest11`` entry point installed the plugin loads by itself; ``-p`` would
#: register it twice.
_INSTALLED = any(ep.value == "harness.pytest_plugin" for ep in entry_points(group="pytest11"))
PLUGIN = () if _INSTALLED else ("-p", "harness.pytest_plugin")
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

PASSING = """
name: exits-cleanly
purpose: a command that exits 0
client:
  kind: command
  argv: [python, -c, "print('hello')"]
expectations:
  - happens: {kind: client.exited, returncode: 0}
timeout: 5
"""

FAILING = """
name: exits-badly
purpose: a command that exits 3
client:
  name: bad-exit
  kind: command
  argv: [python, -c, "raise SystemExit(3)"]
expectations:
  - name: clean-exit
    happens: {kind: client.exited, returncode: 0}
    why: a client must not crash
timeout: 5
"""


def known(reason: str, code: int) -> str:
    return f"""
name: known-{code}
purpose: a documented bug
client:
  kind: command
  argv: [python, -c, "raise SystemExit({code})"]
  known_failure: {{reason: {reason}, ref: FB-99}}
expectations:
  - happens: {{kind: client.exited, returncode: 0}}
timeout: 5
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    (pytester.path / "scenarios").mkdir()
    return pytester


def scenario_file(
    pytester: pytest.Pytester, name: str, text: str, folder: str = "scenarios"
) -> Path:
    path = pytester.path / folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, "--iot-settle=0.1", *args)


def test_scenario_files_become_items_that_pass_and_fail_with_explanations(
    project: pytest.Pytester,
) -> None:
    scenario_file(project, "passing", PASSING)
    scenario_file(project, "failing", FAILING)
    result = run(project, "-v", "scenarios")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenarios/failing.yaml::exits-badly[[]bad-exit[]] FAILED*",
            "*scenarios/passing.yaml::exits-cleanly[[]python[]] PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*FAILED exits-badly[[]bad-exit[]]: 0/1 expectations held*",
            "*✗ clean-exit*",
            "*expected client.exited returncode=0*",
            "*returncode=3 (expected 0)*",
            "*why it matters: a client must not crash*",
            "timeline: *",
        ]
    )


def test_known_failures_are_xfail_and_strict(project: pytest.Pytester) -> None:
    scenario_file(project, "still-broken", known("crashes", 3))
    scenario_file(project, "fixed", known("crashed once", 0))
    result = run(project, "-rxX", "scenarios")
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*XFAIL*known-3*crashes (FB-99)*"])
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] crashed once (FB-99)*"])


def test_a_client_that_cannot_run_is_skipped_and_an_error_is_not_an_xfail(
    project: pytest.Pytester,
) -> None:
    scenario_file(
        project,
        "needs-old-paho",
        PASSING.replace("kind: command", "kind: paho\n  requires: ['paho-mqtt<1']").replace(
            """  argv: [python, -c, "print('hello')"]\n""", ""
        ),
    )
    scenario_file(
        project,
        "broken-options",
        known("x", 1)
        .replace('argv: [python, -c, "raise SystemExit(1)"]', "options: {a: 1}")
        .replace("kind: command", "kind: paho"),
    )
    result = run(project, "-rs", "scenarios")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*SKIPPED*paho-mqtt<1 (installed: *"])
    result.stdout.fnmatch_lines(["*ERROR known-1[[]paho[]]: error: *unknown paho option(s) a*"])


def test_only_yaml_in_scenarios_folders_is_collected_unless_asked(
    project: pytest.Pytester,
) -> None:
    scenario_file(project, "elsewhere", PASSING, folder="config")
    (project.path / "config" / "other.yaml").write_text("just: some yaml\n")
    scenario_file(project, "here", PASSING)
    result = run(project, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/here.yaml::exits-cleanly[[]python[]]", "*1 test*"])
    result = run(project, "--collect-only", "-q", "--iot-scenarios", "config/elsewhere.yaml")
    result.stdout.fnmatch_lines(["config/elsewhere.yaml::exits-cleanly[[]python[]]"])


def test_a_scenario_file_that_does_not_load_is_a_collection_error(
    project: pytest.Pytester,
) -> None:
    scenario_file(project, "broken", "name: broken\npurpose: x\nexpectations: nope\n")
    result = run(project, "scenarios")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*the scenario file does not load:*", "*broken.yaml:3: expectations: *"]
    )


def test_report_events_and_junit_options(project: pytest.Pytester) -> None:
    scenario_file(project, "passing", PASSING)
    scenario_file(project, "failing", FAILING)
    result = run(
        project,
        "scenarios",
        "--iot-report=out/report.html",
        "--iot-events=out/events.jsonl",
        "--iot-timeout-scale=2",
        "--junitxml=out/junit.xml",
    )
    result.assert_outcomes(passed=1, failed=1)
    page = (project.path / "out" / "report.html").read_text()
    assert "exits-badly[bad-exit]" in page and "exits-cleanly[python]" in page
    lines = (project.path / "out" / "events.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds.count("scenario.started") == 2 and kinds.count("scenario.finished") == 2
    junit = (project.path / "out" / "junit.xml").read_text()
    assert 'name="exits-badly[bad-exit]"' in junit and "clean-exit" in junit


def test_the_world_fixtures(project: pytest.Pytester) -> None:
    scenario_file(
        project,
        "world",
        """
        name: a-world
        purpose: the world of a scenario file
        world:
          identity_pools: [{name: player, credential_lifetime: 7}]
          things: [{name: lamp}]
        expectations:
          - happens: {kind: x}
        """,
        folder="worlds",
    )
    project.makepyfile(
        test_fixtures="""
        import pytest
        from harness.scenario.model import FaultSpec

        async def test_default_world(iot_world, iot_gateway, iot_cognito, iot_resolver):
            assert iot_gateway is iot_world.gateway and iot_cognito is iot_world.cognito
            assert iot_world.endpoint in iot_resolver

        @pytest.mark.iot_scenario(cognito=False)
        async def test_marker_keywords(iot_world):
            assert iot_world.cognito is None

        @pytest.mark.iot_scenario(cognito=False)
        def test_cognito_skips_without_it(iot_cognito):
            pass

        def test_dyson_skips_without_it(iot_dyson):
            pass

        @pytest.mark.iot_scenario(scenario="worlds/world.yaml")
        async def test_scenario_world(iot_world):
            (pool,) = [p for p in iot_world.cognito.pools.values() if p.credential_lifetime == 7]
            assert len(iot_world.gateway.things) == 1

        async def test_faults(iot_world, iot_faults):
            plan = await iot_faults(FaultSpec(name="skew", action="clock-offset",
                                              params={"seconds": 60}))
            assert iot_world.clock.offset == 60 and plan.firings

        def test_session_pki(iot_pki, request):
            assert iot_pki.ca_file.is_file()
            assert request.getfixturevalue("iot_pki") is iot_pki

        @pytest.mark.iot_scenario(cognito=False, world=object())
        async def test_bad_marker(iot_world):
            pass
        """
    )
    result = run(project, "-rs", "test_fixtures.py")
    result.assert_outcomes(passed=5, skipped=2, errors=1)
    result.stdout.fnmatch_lines(["*give one of config=, world=, scenario=*"])


def test_every_iot_world_of_a_session_is_on_one_ca(project: pytest.Pytester) -> None:
    """Issue [scenarios], "CA made once per session": two ``iot_world`` tests (a marker's
    config= and a scenario world too) serve the session's ``iot_pki``; the folder stays."""
    project.makepyfile(
        test_one_ca="""
        import pytest
        from harness.scenario.model import WorldSpec
        from harness.world import World, WorldConfig

        seen = []

        async def test_first(iot_world, iot_pki):
            assert iot_world.pki is iot_pki
            seen.append(iot_world.descriptor()["iot"]["ca_file"])

        @pytest.mark.iot_scenario(config=WorldConfig(cognito=False))
        async def test_second(iot_world, iot_pki):
            assert iot_world.pki is iot_pki
            seen.append(iot_world.descriptor()["iot"]["ca_file"])

        @pytest.mark.iot_scenario(world=WorldSpec())
        async def test_scenario_world(iot_world, iot_pki):
            seen.append(iot_world.descriptor()["iot"]["ca_file"])

        async def test_a_world_of_its_own_mints_its_ca(iot_pki):
            async with World(WorldConfig(cognito=False)) as world:
                assert world.pki.ca_pem != iot_pki.ca_pem

        def test_all_saw_one_ca_file_that_is_still_there(iot_pki):
            assert seen == [str(iot_pki.ca_file)] * 3
            assert iot_pki.ca_file.read_bytes() == iot_pki.ca_pem
        """
    )
    result = run(project, "test_one_ca.py")
    result.assert_outcomes(passed=5)


def test_the_marker_is_registered(project: pytest.Pytester) -> None:
    result = run(project, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.iot_scenario(*"])
    result = run(project, "--help")
    result.stdout.fnmatch_lines(["iot-harness scenarios and worlds:", "*--iot-report=PATH*"])
