"""Every scenario file of the catalogue (``scenarios/``) runs green with the runner.

One test per scenario and client (``sigv4-credential-expiry[paho-stale]``): a client
without ``known_failure`` must pass, one with it must fail its expectations (xfailed),
and a client that cannot run here is skipped with the runner's reason. The README's
complete example runs too (STYLE.md §10, docs that run): it passes for the correct
browser player and fails, explained, for the one that keeps stale credentials (issue
[scenarios], "Done when").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from harness.scenario import Scenario, load_scenario, load_scenario_text
from harness.scenario.model import ClientSpec
from harness.scenario.runner import ScenarioOutcome, case_id, run_scenario_async, scenario_cases
from tests.scenario_examples import README_EXAMPLE

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
#: Seconds a finished run goes on watching (compressed: the tests want speed).
SETTLE = 0.3


def _cases() -> list[pytest.ParameterSet]:
    out = []
    for path in sorted(SCENARIOS.glob("*.yaml")):
        scenario = load_scenario(path)
        for client in scenario_cases(scenario):
            out.append(pytest.param(scenario, client, id=case_id(scenario, client)))
    return out


def _check(outcome: ScenarioOutcome) -> None:
    if outcome.verdict == "skipped":
        pytest.skip(outcome.summary())
    assert outcome.verdict not in ("error", "xpassed"), outcome.explain()
    expected = "passed" if outcome.client is None or not outcome.client.known_failure else "xfailed"
    assert outcome.verdict == expected, outcome.explain()


def test_the_catalogue_is_not_empty() -> None:
    assert len(_cases()) >= 10


@pytest.mark.interop
@pytest.mark.parametrize(("scenario", "client"), _cases())
async def test_scenario(scenario: Scenario, client: ClientSpec | None) -> None:
    _check(await run_scenario_async(scenario, client=client, settle=SETTLE))


def _readme_client(**changes: Any) -> tuple[Scenario, ClientSpec]:
    scenario = load_scenario_text(README_EXAMPLE)
    (client,) = scenario.clients
    return scenario, dataclasses.replace(client, known_failure=None, **changes)


@pytest.mark.interop
async def test_the_readme_example_passes_for_a_correct_client() -> None:
    # paho refreshes when its credentials expired, so `refreshed` comes before the
    # reconnect as the example's `after: refreshed` wants.
    scenario, client = _readme_client(
        name="paho", kind="paho", app=None, options={"identity_pool": "player"}
    )
    outcome = await run_scenario_async(scenario, client=client, settle=SETTLE)
    assert outcome.verdict == "passed", outcome.explain()


@pytest.mark.interop
async def test_the_readme_example_fails_clearly_for_stale_credentials() -> None:
    scenario, client = _readme_client(
        name="stale",
        app="browser-player-as-written",
        options={"identity_pool": "player", "mistakes": ["credentials-once"], "retry_delay": 0.5},
    )
    outcome = await run_scenario_async(scenario, client=client, settle=SETTLE)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.summary())
    assert outcome.verdict == "failed", outcome.explain()
    failed = {r.label: r.explain for r in outcome.failed_results}
    assert any("token-expired" in text and "FB-23" in text for text in failed.values()), failed
    text = outcome.explain()
    assert "FAILED" in text and "token-expired" in text and "timeline:" in text
