"""The iot-harness pytest plugin: scenario files as tests, and fixtures for a world.

Issue [scenarios], "pytest plugin"; registered through the ``pytest11`` entry point
``iot_harness`` (or ``-p harness.pytest_plugin``). This module imports only pytest at
import time; the harness is imported when a scenario runs or a fixture is used, so the
plugin costs nothing in a test run that does not use it (STYLE.md §6).

**Scenario files.** ``pytest scenarios/`` collects every ``*.yaml`` / ``*.yml`` file in a
folder named ``scenarios`` (anywhere with ``--iot-scenarios``) as a scenario: one test
item per client, named ``<scenario>[<client>]``, run by :mod:`harness.scenario.runner`.
A file that does not load is a collection error naming file, line and field. A failure
shows the failed expectations with the nearest events and the text timeline. A client
with ``known_failure`` is an ``xfail`` (strict: a known failure that passes fails the run
as ``XPASS(strict)``); a client that cannot run here (unmet ``requires``, an unsupported
kind) is skipped with the reason. JUnit output (``--junitxml``) works as for any test.

**Options** (group ``iot-harness``): ``--iot-report=PATH`` writes the HTML report of the
scenario runs, ``--iot-events=PATH`` their events JSONL, ``--iot-timeout-scale=X``
stretches every scenario's timeout, ``--iot-settle=S`` sets how long a run goes on once
its verdict is known, ``--iot-scenarios`` collects scenario files outside ``scenarios``
folders.

**Fixtures** (async ones need pytest-asyncio):

============================  ==========================================================
``iot_world``                 a running :class:`~harness.world.World` (function scope)
``iot_gateway``               its gateway; ``iot_cognito`` its fake Cognito;
                              ``iot_dyson`` its Dyson side (skipped when absent)
``iot_resolver``              the world's names resolve to it for in-process clients
                              (:meth:`World.resolver <harness.world.World.resolver>`)
``iot_faults``                ``await iot_faults(FaultSpec(...), ...)``: a started
                              :class:`~harness.faults.FaultPlan` on ``iot_world``
``iot_pki``                   a :class:`~harness.pki.WorldPKI` made once per session
============================  ==========================================================

Every ``iot_world`` uses ``iot_pki`` (``WorldConfig(pki=...)``): one CA for the session, so
a test's clients can trust ``iot_pki.ca_file`` up front and no world pays for minting a CA.
A ``config=`` or ``pki=`` of the marker that names a PKI of its own keeps it.

The marker ``@pytest.mark.iot_scenario(...)`` sets up ``iot_world`` for one test:
``config=WorldConfig(...)``, or :class:`~harness.world.WorldConfig` keyword arguments
(``cognito=False``), or ``world=WorldSpec(...)`` / ``scenario="path.yaml"`` (a scenario
file's world, relative to the test file: pools, authorizers, things, certificates).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.cognito import FakeCognito
    from harness.faults import FaultPlan
    from harness.gateway import Gateway
    from harness.pki import WorldPKI
    from harness.report import ScenarioReport
    from harness.resolver import Route
    from harness.scenario.model import ClientSpec, FaultSpec, Scenario
    from harness.scenario.runner import ScenarioOutcome
    from harness.world import World

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - pytest itself then says async fixtures need a plugin
    _async_fixture = pytest.fixture  # type: ignore[assignment]

SUFFIXES = (".yaml", ".yml")
SCENARIO_FOLDER = "scenarios"
MARKER = "iot_scenario"
_REPORTS = pytest.StashKey[list["ScenarioReport"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iot-harness", "iot-harness scenarios and worlds")
    group.addoption(
        "--iot-report", metavar="PATH", help="write the HTML report of the scenario runs"
    )
    group.addoption("--iot-events", metavar="PATH", help="write the scenario runs' events JSONL")
    group.addoption(
        "--iot-timeout-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply every scenario's timeout (default 1)",
    )
    group.addoption(
        "--iot-settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds a scenario run goes on once its verdict is known",
    )
    group.addoption(
        "--iot-scenarios",
        action="store_true",
        help="collect *.yaml scenario files anywhere, not only in folders named scenarios",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(config=None, world=None, scenario=None, **world_config): how the iot_world "
        "fixture is set up for this test",
    )
    config.stash[_REPORTS] = []
    events = config.getoption("iot_events", None)
    if events:
        path = Path(events)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    target = config.getoption("iot_report", None)
    reports = config.stash.get(_REPORTS, [])
    if not target or not reports:
        return
    from harness.report import write_html

    events = config.getoption("iot_events", None)
    write_html(reports, Path(target), source=str(events) if events else None)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    if file_path.suffix not in SUFFIXES:
        return None
    anywhere = parent.config.getoption("iot_scenarios", False)
    if not anywhere and SCENARIO_FOLDER not in file_path.parent.parts:
        return None
    file: ScenarioFile = ScenarioFile.from_parent(parent, path=file_path)
    return file


class ScenarioFailed(Exception):
    """A scenario run whose expectations did not hold (an ``xfail`` when it is known)."""

    def __init__(self, outcome: ScenarioOutcome) -> None:
        super().__init__(outcome.summary())
        self.outcome = outcome


class ScenarioBroken(Exception):
    """A scenario run that could not be judged: harness misuse or a crashing client."""

    def __init__(self, outcome: ScenarioOutcome) -> None:
        super().__init__(outcome.summary())
        self.outcome = outcome


class ScenarioFile(pytest.File):
    """A scenario file: one item per client."""

    def collect(self) -> Iterator[ScenarioItem]:
        from harness.scenario import ScenarioError, load_scenario
        from harness.scenario.runner import case_id, scenario_cases

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise self.CollectError(f"the scenario file does not load:\n{exc}") from None
        for client in scenario_cases(scenario):
            item: ScenarioItem = ScenarioItem.from_parent(
                self, name=case_id(scenario, client), scenario=scenario, client=client
            )
            if client is not None and client.known_failure is not None:
                reason = client.known_failure.reason
                if client.known_failure.ref:
                    reason += f" ({client.known_failure.ref})"
                item.add_marker(
                    pytest.mark.xfail(reason=reason, strict=True, raises=ScenarioFailed)
                )
            yield item


class ScenarioItem(pytest.Item):
    """One scenario run for one client."""

    def __init__(self, *, scenario: Scenario, client: ClientSpec | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.client = client
        self.outcome: ScenarioOutcome | None = None

    def runtest(self) -> None:
        from harness.scenario.runner import DEFAULT_SETTLE, run_scenario

        config = self.config
        events = config.getoption("iot_events", None)
        settle = config.getoption("iot_settle", None)
        outcome = run_scenario(
            self.scenario,
            client=self.client,
            events_path=Path(events) if events else None,
            timeout_scale=config.getoption("iot_timeout_scale", 1.0),
            settle=DEFAULT_SETTLE if settle is None else settle,
        )
        self.outcome = outcome
        self.user_properties.append(("iot_verdict", outcome.verdict))
        if outcome.verdict == "skipped":
            pytest.skip(outcome.reason or "the client cannot run here")
        config.stash[_REPORTS].append(outcome.report())
        if outcome.verdict == "error":
            raise ScenarioBroken(outcome)
        if outcome.passed is False:
            raise ScenarioFailed(outcome)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed | ScenarioBroken):
            return excinfo.value.outcome.explain()
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario {self.name}"


# Fixtures


@pytest.fixture(scope="session")
def iot_pki(tmp_path_factory: pytest.TempPathFactory) -> WorldPKI:
    """A world PKI (CA, intermediate, leaves) made once for the whole session."""
    from harness.pki import WorldPKI

    return WorldPKI(tmp_path_factory.mktemp("iot-pki"))


@_async_fixture
async def iot_world(request: pytest.FixtureRequest, iot_pki: WorldPKI) -> AsyncIterator[World]:
    """A running world on loopback, set up by the test's ``iot_scenario`` marker, on the
    session's CA (``iot_pki``)."""
    import dataclasses

    from harness.scenario.model import Scenario as ScenarioType
    from harness.scenario.model import WorldSpec
    from harness.world import World, WorldConfig

    marker = request.node.get_closest_marker(MARKER)
    settings: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(f"{MARKER}() takes keyword arguments only")
    spec = settings.pop("world", None)
    scenario = settings.pop("scenario", None)
    config = settings.pop("config", None)
    if sum(x is not None for x in (spec, scenario, config)) + bool(settings) > 1:
        raise pytest.UsageError(
            f"{MARKER}: give one of config=, world=, scenario= or WorldConfig keywords"
        )
    if scenario is not None:
        if not isinstance(scenario, ScenarioType):
            from harness.scenario import load_scenario

            scenario = load_scenario(Path(request.node.path).parent / str(scenario))
        spec = scenario.world
    if spec is not None:
        if not isinstance(spec, WorldSpec):
            raise pytest.UsageError(f"{MARKER}: world= takes a WorldSpec")
        from harness.scenario.worlds import open_world

        async with open_world(spec, pki=iot_pki) as built:
            yield built.world
        return
    if config is None:
        settings.setdefault("pki", iot_pki)
        config = WorldConfig(**settings)
    elif config.pki is None:
        config = dataclasses.replace(config, pki=iot_pki)
    async with World(config) as world:
        yield world


@pytest.fixture
def iot_gateway(iot_world: World) -> Gateway:
    """The fake AWS IoT gateway of ``iot_world``."""
    return iot_world.gateway


@pytest.fixture
def iot_cognito(iot_world: World) -> FakeCognito:
    """The fake Cognito of ``iot_world`` (skipped when the world has none)."""
    if iot_world.cognito is None:
        pytest.skip("this world has no Cognito (iot_scenario(cognito=False))")
    return iot_world.cognito


@pytest.fixture
def iot_dyson(iot_world: World) -> Any:
    """The Dyson side of ``iot_world`` (cloud and devices; skipped when absent)."""
    dyson = getattr(iot_world, "dyson", None)
    if dyson is None:
        pytest.skip("this world has no Dyson side (iot_scenario(dyson=DysonConfig(...)))")
    return dyson


@pytest.fixture
def iot_resolver(iot_world: World) -> Iterator[dict[str, Route]]:
    """While the test runs, the world's real names resolve to it (in-process clients)."""
    with iot_world.resolver() as table:
        yield dict(table)


@_async_fixture
async def iot_faults(
    iot_world: World,
) -> AsyncIterator[Callable[..., Awaitable[FaultPlan]]]:
    """``plan = await iot_faults(FaultSpec(...), ...)``: faults on ``iot_world``, undone at
    teardown. The plan's :meth:`~harness.faults.FaultPlan.descriptor` has proxied ports."""
    from harness.faults import FaultPlan

    plans: list[FaultPlan] = []

    async def start(*faults: FaultSpec, pools: dict[str, str] | None = None) -> FaultPlan:
        plan = FaultPlan(faults, world=iot_world, pools=pools)
        await plan.start()
        plans.append(plan)
        return plan

    yield start
    for plan in reversed(plans):
        await plan.aclose()
