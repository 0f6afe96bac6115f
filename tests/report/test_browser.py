"""Render report.html in headless Chromium: every section in the DOM, every figure decoded.

The screenshot (``report.png``) stays in the study folder as the artefact to look at.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from cnnvit.report import write_report
from cnnvit.report.sections import report_sections

# A study without analyses: every section but the analyses', plus the list of those not run.
SHOWN_WITHOUT_ANALYSES = [
    s for s in report_sections() if s.shown is None or s.id == "analyses-not-run"
]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Offline and quiet: no sandbox (CI runs as root), no GPU, nothing fetched in the background.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_S = 60


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not installed (apt-get install chromium)")


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def report(tmp_path, study_factory) -> Path:
    study = study_factory(tmp_path / "study", statuses={"vit_mini-f0.07-s1": "failed"})
    return write_report(study)


def test_report_renders_in_chromium(tmp_path, report):
    browser = _browser()
    url = report.resolve().as_uri()

    dom = _run(browser, tmp_path / "profile-dom", "--dump-dom", "--virtual-time-budget=5000", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SHOWN_WITHOUT_ANALYSES:
        assert f'id="{section.id}"' in dom.stdout, section.id
    body = dom.stdout[dom.stdout.index("<body") :].split(">", 1)[0]
    assert 'data-images-ok="true"' in body, body

    shot = report.parent / "report.png"
    result = _run(
        browser,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,3000",
        url,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        # Non-trivial: a blank or error page has a handful of colours, the report thousands.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1000
