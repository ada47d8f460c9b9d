"""Debian's Chromium for the browser tests: how it is launched, and screenshots kept as artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """The page's screenshot in tmp_path, and in $AFFECTSTREAM_TEST_ARTIFACTS when set."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get("AFFECTSTREAM_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path
