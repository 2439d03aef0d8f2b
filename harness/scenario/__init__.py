"""Scenario files: the model, the loader, the JSON Schema and the expectation engine.

``load_scenario(path)`` turns a YAML file into a :class:`Scenario` (or raises
:class:`ScenarioError` naming file, line and field); ``evaluate(expectations, events)``
checks the expectations against the event timeline (harness.events) and explains
failures with the nearest events that almost matched. ``schema_path()`` is the shipped
JSON Schema of the file format. The runner that starts worlds and clients is separate
(:mod:`harness.scenario.runner`); :func:`run_catalogue` runs a whole catalogue of files,
several runs at once in worker processes (:mod:`harness.scenario.catalogue`), and is
imported on first use so that loading a file does not import the runner.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from harness.scenario.catalogue import Case, run_cases, run_catalogue

__all__ = [
    "ACTIONS",
    "QUIRKS",
    "Case",
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
    "run_cases",
    "run_catalogue",
    "scenario_from_data",
    "schema_path",
]


def schema_path() -> Path:
    """The JSON Schema of scenario files, shipped as package data (``schema.json``)."""
    return Path(str(resources.files("harness.scenario").joinpath("schema.json")))


_LAZY = frozenset({"Case", "run_cases", "run_catalogue"})


def __getattr__(name: str) -> Any:
    """``run_catalogue``, ``run_cases`` and ``Case`` from :mod:`harness.scenario.catalogue`,
    imported when first asked for (module docstring)."""
    if name in _LAZY:
        from harness.scenario import catalogue

        return getattr(catalogue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
