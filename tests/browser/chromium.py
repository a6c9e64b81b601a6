"""Debian's headless Chromium for the dashboard tests (Playwright drives it; nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["ARTIFACTS", "CHROMIUM", "launch"]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Screenshots of each page land here.
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def launch(playwright):
    """The browser, or a clear failure saying how to install it (``./.ci/ensure-browser``)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Debian's chromium is not installed at {CHROMIUM}: run ./.ci/ensure-browser "
            "(apt-get install -y chromium); this test never downloads a browser"
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
