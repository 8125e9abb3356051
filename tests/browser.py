"""Headless Chromium for the tests that render reports as a person would see them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def chromium() -> str | None:
    """The Chromium binary (``NEURALCLEANSE_CHROMIUM`` first), or ``None`` when none is found."""
    for name in (os.environ.get("NEURALCLEANSE_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium offline with its console messages logged to stderr."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """The page's console messages in Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]
