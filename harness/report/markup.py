"""Text into HTML/SVG markup, safely: the only way report text reaches a page.

Event fields come from clients under test and may hold anything (``<script>``, control
characters, lone surrogates from a bad decoder): every string goes through
:func:`escape` before it lands in an element or an attribute, so a report can never run
code or break its own markup (issue [scenarios], "Report").
"""

from __future__ import annotations

import html
import re

__all__ = ["clean", "escape"]

# C0/C1 control characters other than tab and newline, and lone surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else "\ufffd"


def clean(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` and lone surrogates as U+FFFD.

    The result always encodes as UTF-8, so writing the page cannot fail.
    """
    return _UNPRINTABLE.sub(_visible, text)


def escape(text: str) -> str:
    """``text`` safe inside an element or a double- or single-quoted attribute."""
    return html.escape(clean(text), quote=True)
