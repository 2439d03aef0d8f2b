"""The one timing unit of the test suite (STYLE.md §9).

Every timeout in the tests is a multiple of ``TIMEOUT``; set ``IOT_HARNESS_TEST_TIMEOUT``
to stretch them all on a slow machine. Tests never sleep for a fixed time: they wait for
an event with a timeout.
"""

from __future__ import annotations

import os

TIMEOUT = float(os.environ.get("IOT_HARNESS_TEST_TIMEOUT", "5"))
