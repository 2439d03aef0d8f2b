"""Reading an app's options and the world descriptor, with errors that name the field.

Options come from a scenario file's ``clients[].options`` or a test; the descriptor is the
world's (DESIGN.md, contract 1). Both are harness input, so anything wrong is a
:class:`~harness.errors.ConfigError` naming the app and the key (STYLE.md §3: harness
misuse is one branch, what a client under test does is an event). Unknown option keys are
refused, with the known ones listed, so a typo in a scenario file cannot pass silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.errors import ConfigError

__all__ = ["OptionReader", "descriptor_section", "descriptor_value"]


class OptionReader:
    """Typed access to an options mapping; :meth:`finish` refuses keys nobody read."""

    def __init__(self, app: str, options: Mapping[str, Any] | None) -> None:
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"{app}: options must be a mapping, got {type(options).__name__}")
        self.app = app
        self._options = dict(options or {})
        self._read: set[str] = set()

    def _get(self, name: str) -> Any:
        self._read.add(name)
        return self._options.get(name)

    def _bad(self, name: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.app}: option {name!r} must be {expected}, got {value!r}")

    def seconds(self, name: str, default: float, *, positive: bool = False) -> float:
        """A finite number of seconds, ``>= 0`` (``> 0`` with ``positive``)."""
        value = self._get(name)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            raise self._bad(name, "a number of seconds " + ("> 0" if positive else ">= 0"), value)
        return float(value)

    def fraction(self, name: str, default: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise self._bad(name, "a number within 0..1", value)
        return float(value)

    def count(self, name: str, default: int | None, *, minimum: int = 0) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(name, f"a whole number >= {minimum}", value)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "true or false", value)
        return value

    def string(self, name: str, default: str | None) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self._bad(name, "a non-empty string", value)
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        value = self._get(name)
        if value is None:
            return default
        if value not in choices:
            raise self._bad(name, "one of " + ", ".join(choices), value)
        return str(value)

    def names(self, name: str, default: Iterable[str], choices: Sequence[str]) -> frozenset[str]:
        """A list of names from ``choices`` (``"all"`` = every one, ``[]`` = none)."""
        value = self._get(name)
        if value is None:
            return frozenset(default)
        if value == "all":
            return frozenset(choices)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise self._bad(name, f"a list of {', '.join(choices)} (or 'all')", value)
        unknown = [item for item in value if item not in choices]
        if unknown:
            raise self._bad(name, f"a list of {', '.join(choices)} (or 'all')", unknown)
        return frozenset(str(item) for item in value)

    def finish(self) -> None:
        """Refuse option keys that were never read (typos, options of another app)."""
        unknown = sorted(set(self._options) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read))
            raise ConfigError(f"{self.app}: unknown option(s) {', '.join(unknown)}; known: {known}")


def descriptor_section(descriptor: Mapping[str, Any], name: str, app: str) -> Mapping[str, Any]:
    """``descriptor[name]`` as a mapping, or a ConfigError saying the world lacks it."""
    if not isinstance(descriptor, Mapping):
        raise ConfigError(f"{app}: the world descriptor must be a mapping")
    section = descriptor.get(name)
    if not isinstance(section, Mapping):
        raise ConfigError(f"{app}: the world descriptor has no {name!r} section")
    return section


def descriptor_value(section: Mapping[str, Any], path: str, kind: type, app: str) -> Any:
    """``section[last part of path]`` checked to be a ``kind`` (and non-empty for strings)."""
    key = path.rpartition(".")[2]
    value = section.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        raise ConfigError(
            f"{app}: the world descriptor's {path} is missing or not a {kind.__name__}"
        )
    return value
