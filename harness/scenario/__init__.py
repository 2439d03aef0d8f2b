"""Scenario files: the model, the loader, the JSON Schema and the expectation engine.

``load_scenario(path)`` turns a YAML file into a :class:`Scenario` (or raises
:class:`ScenarioError` naming file, line and field); ``evaluate(expectations, events)``
checks the expectations against the event timeline (harness.events) and explains
failures with the nearest events that almost matched. ``schema_path()`` is the shipped
JSON Schema of the file format. The runner that starts worlds and clients is separate.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.scenario.expectations import ExpectationResult, evaluate
from harness.scenario.loader import (
    Problem,
    ScenarioError,
    dump_scenario,
    load_scenario,
    load_scenario_text,
    scenario_from_data,
)
from harness.scenario.model import (
    ACTIONS,
    QUIRKS,
    ClientSpec,
    EventPattern,
    Expectation,
    FaultSpec,
    Happens,
    Never,
    Rate,
    Scenario,
    Sequence,
    WorldSpec,
)

__all__ = [
    "ACTIONS",
    "QUIRKS",
    "ClientSpec",
    "EventPattern",
    "Expectation",
    "ExpectationResult",
    "FaultSpec",
    "Happens",
    "Never",
    "Problem",
    "Rate",
    "Scenario",
    "ScenarioError",
    "Sequence",
    "WorldSpec",
    "dump_scenario",
    "evaluate",
    "load_scenario",
    "load_scenario_text",
    "scenario_from_data",
    "schema_path",
]


def schema_path() -> Path:
    """The JSON Schema of scenario files, shipped as package data (``schema.json``)."""
    return Path(str(resources.files("harness.scenario").joinpath("schema.json")))
