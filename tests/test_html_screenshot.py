"""report.html opens in headless Chromium without errors, and its screenshot is not blank."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autocompress.report import write_reports
from test_report import sample_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                "(Debian: apt-get install -y chromium); .ci/run installs it")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


def test_report_html_renders_with_plots(tmp_path):
    paths = write_reports(sample_report(), tmp_path / "run")
    url = paths["html"].resolve().as_uri()

    # 1. the page's own script checks every inline plot decoded and records it in the DOM
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-status="ok"' in dom.stdout, dom.stdout[-2000:]
    assert "rendered 4 plots" in dom.stdout

    # 2. a screenshot that shows something: not blank, not one colour
    png = tmp_path / "shot.png"
    shot = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,2000", url)
    assert png.exists(), shot.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]                 # (H, W, 3) floats in [0, 1]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    non_white = float((img.mean(axis=-1) < 0.95).mean())
    assert non_white > 0.02, f"screenshot is almost blank ({non_white:.3%} non-white pixels)"
    assert float(img.std()) > 0.05
    # colour from the plots (the red Pareto front / blue bars), not only black text on white
    rgb = img.reshape(-1, 3)
    colourful = float(((rgb.max(1) - rgb.min(1)) > 0.3).mean())
    assert colourful > 0.001, f"no coloured pixels: plots did not render ({colourful:.4%})"
