"""The world clock: wall time as the fake AWS side sees it, with an adjustable offset.

Clock skew is simulated by offsetting the *world's* clock, never the machine's: a client
whose clock is right then appears skewed to the gateway (aws-iot.md §1.7), exactly as a
client with a wrong clock would. The pure core never reads a clock; shells pass
``clock.now()`` in.
"""

from __future__ import annotations

import time


class WorldClock:
    """Epoch seconds (``now``) with an offset, and monotonic seconds since the world began."""

    def __init__(self, *, offset: float = 0.0) -> None:
        self.offset = offset
        self._started = time.monotonic()

    def now(self) -> float:
        """The world's wall-clock time in epoch seconds (what ``X-Amz-Date`` is compared to)."""
        return time.time() + self.offset

    def elapsed(self) -> float:
        """Seconds since the world started, monotonic: the ``t`` of every event."""
        return time.monotonic() - self._started

    def shift(self, seconds: float) -> None:
        """Move the world's wall clock by ``seconds`` (negative moves it back)."""
        self.offset += seconds
