"""The HTML report as a person sees it: rendered by headless Chromium (issue [scenarios]).

Debian's ``chromium`` renders the page from a ``file://`` URL; ``--dump-dom`` gives the
document after loading, so the test can tell that the scenario, the failed expectation
and the diagram's arrows are there and outside any folded section, and that the hostile
field values in the events did not run (an ``onerror`` or ``<script>`` would have changed
the title). A screenshot must come out as a real picture. Skipped, with the reason, where
no ``chromium`` is on PATH (``.ci/run`` installs it).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report import write_html
from tests.test_report import rich_scenario
from tests.timing import TIMEOUT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=12 * TIMEOUT, check=True)  # noqa: S603


@pytest.fixture
def page(tmp_path: Path) -> Path:
    return write_html([rich_scenario()], tmp_path / "report.html", title="report under test")


def visible_text(dom: str) -> str:
    """The DOM's text, without folded ``<details>`` bodies, style sheets and tags."""
    dom = re.sub(r"<details(?![^>]*\bopen\b)[^>]*>.*?</details>", "", dom, flags=re.S)
    dom = re.sub(r"<style>.*?</style>", "", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_chromium_shows_the_scenario_the_failure_and_the_diagram(
    tmp_path: Path, page: Path
) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode("utf-8")
    # The hostile values were shown, not run.
    assert "<title>report under test</title>" in dom
    assert "pwned" in dom and "&lt;script&gt;" in dom
    text = visible_text(dom)
    assert "dyson-token-expiry" in text
    assert "reconnects-with-new-token" in text
    assert "expected auth.verdict ok=true within 1 s after fault drop; found none" in text
    assert "✗ auth token-expired" in text and "⚡ drop" in text
    body = re.search(r'<svg class="tl tl-body".*?</svg>', dom, flags=re.S)
    assert body is not None
    arrows = re.findall(r"<line [^>]*marker-end=", body.group())
    assert len(arrows) >= 10
    assert 'class="mark mark-failed"' in body.group()


def test_chromium_screenshot_is_a_picture(tmp_path: Path, page: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 1000)
    # A blank page compresses to a few kilobytes; text, lanes and arrows do not.
    assert len(data) > 40_000
