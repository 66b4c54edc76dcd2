"""Headless Chromium through selenium, with the system's chromium and chromedriver.

The tests that use it are skipped, with the reason, where either is missing
(``.ci/run`` installs them with apt).
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import pytest

_BROWSERS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    return None


def chromium(tmp_path: pathlib.Path) -> Any:
    """A fresh headless Chromium (skips the test if it cannot be had)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser, driver = _find(_BROWSERS), _find(_DRIVERS)
    if browser is None or driver is None:
        pytest.skip(
            "needs the system's chromium and chromedriver (apt-get install chromium "
            "chromium-driver; .ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,800")
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def viewport(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    """Set the page's viewport exactly (the window's frame does not count)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
