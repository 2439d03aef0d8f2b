"""Exponential backoff with jitter, as the reference apps retry (pure, no clock).

The delay after ``n`` consecutive failures is ``d = min(cap, base * 2**(n-1))``, of which a
``jitter`` fraction is random: ``d * (1 - jitter) + d * jitter * u`` with ``u`` in
``[0, 1)`` supplied by the caller, so a machine that owns a seeded ``random.Random`` stays
reproducible. ``jitter=0.5`` is the "equal jitter" of the AWS Architecture Blog
("Exponential Backoff And Jitter", 2015): attempts of many clients spread out, and each
delay keeps half of its exponential floor, so a test can bound it from both sides.

Why this shape: field-bugs.md FB-26 (long runs of 403 handshakes want a *capped* backoff
with a fresh signature per attempt) and FB-08 (a reconnect storm of a local client left a
TP04 in SYN_SENT: failures must space attempts out). Zero failures means no delay: a
connection that was healthy and then dropped is retried at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.errors import ConfigError

__all__ = ["Backoff"]

#: 2**60 seconds is beyond any cap; the exponent stops there instead of overflowing.
_MAX_EXPONENT = 60


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with a jittered fraction; times are seconds (compressed)."""

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"backoff {name} must be a number > 0 seconds, got {value!r}")
        if self.cap < self.base:
            raise ConfigError(f"backoff cap {self.cap} is below its base {self.base}")
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter <= 1):
            raise ConfigError(f"backoff jitter must be within 0..1, got {self.jitter!r}")

    def ceiling(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures (0 for none)."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, _MAX_EXPONENT)
        return float(min(self.cap, self.base * 2.0**exponent))

    def delay(self, failures: int, u: float) -> float:
        """The delay after ``failures`` consecutive failures, ``u`` a uniform draw in [0, 1)."""
        ceiling = self.ceiling(failures)
        u = min(max(u, 0.0), 1.0)
        return ceiling * (1.0 - self.jitter) + ceiling * self.jitter * u
