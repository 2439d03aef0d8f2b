"""Fault hooks the gateway exposes to tests and, later, to scenario fault plans.

Each hook is a plain API call that arms a one-shot (or N-shot) behaviour; the listener
and the session pump consume them at the matching moment. The fault is then recorded
as a ``fault.fired`` event so the timeline shows what the harness did on purpose.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

from harness.errors import ConfigError


@dataclass
class UpgradeRefusal:
    """Answer an upgrade with this status and body instead of evaluating it."""

    status: int
    body: bytes
    reason_phrase: str
    remaining: int


class FaultHooks:
    """Armed faults, consumed in order."""

    def __init__(self) -> None:
        self._refusals: list[UpgradeRefusal] = []
        self._withhold_connack = 0
        self._close_after_connect = 0

    def refuse_upgrades(
        self,
        count: int = 1,
        *,
        status: int = 403,
        body: bytes = b'{"message":"Forbidden","traceId":"00000000-0000-0000-0000-000000000000"}',
        reason_phrase: str | None = None,
    ) -> None:
        """Refuse the next ``count`` WebSocket upgrades with ``status`` and ``body``.

        The response has AWS's header shape (aws-iot.md §1.9) around the chosen body;
        ``reason_phrase`` defaults to the standard one for ``status``. Refusals armed by
        several calls are used up in order.
        """
        _check_count(count)
        if not 100 <= status <= 599 or 101 <= status <= 199:
            raise ConfigError(f"refuse_upgrades: {status} is not a refusal status")
        if reason_phrase is None:
            try:
                reason_phrase = http.HTTPStatus(status).phrase
            except ValueError:
                reason_phrase = "Refused"
        if not (reason_phrase.isascii() and reason_phrase.isprintable()):
            raise ConfigError("refuse_upgrades: the reason phrase must be one line of ASCII")
        self._refusals.append(UpgradeRefusal(status, body, reason_phrase, count))

    def withhold_connack(self, count: int = 1) -> None:
        """Accept the next ``count`` CONNECTs but never send their CONNACK."""
        _check_count(count)
        self._withhold_connack += count

    def close_after_connect(self, count: int = 1) -> None:
        """Close the next ``count`` connections right after their CONNECT."""
        _check_count(count)
        self._close_after_connect += count

    def take_upgrade_refusal(self) -> UpgradeRefusal | None:
        while self._refusals:
            refusal = self._refusals[0]
            if refusal.remaining <= 0:
                self._refusals.pop(0)
                continue
            refusal.remaining -= 1
            return refusal
        return None

    def take_connect_fault(self) -> str | None:
        """``"close-after-connect"``, ``"withhold-connack"`` or ``None`` for this CONNECT."""
        if self._close_after_connect > 0:
            self._close_after_connect -= 1
            return "close-after-connect"
        if self._withhold_connack > 0:
            self._withhold_connack -= 1
            return "withhold-connack"
        return None


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"a fault count must be a whole number >= 0, not {count!r}")
