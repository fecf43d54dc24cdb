"""A headless chromium driven through Selenium, for screenshots and for the console's browser tests.

Only the machine's own browser and driver are used (Debian's chromium and chromium-driver): Selenium is
handed the driver's path, so it never looks for one to download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = os.environ.get("FASTERDATA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FASTERDATA_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


class BrowserMissing(Exception):
    """No chromium, chromedriver or selenium here: the message says which and how to get it."""


def missing() -> str | None:
    """Why no browser can be driven here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'fasterdata[dev]')"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless chromium with a fresh profile, quit and removed afterwards."""
    problem = missing()
    if problem:
        raise BrowserMissing(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fasterdata-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_view(driver: Any, name: str, after: str = "0", timeout: float = 20.0) -> None:
    """Until the page shows view `name` refreshed after the `data-updated` stamp `after`, charts drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("const m = document.getElementById('view');"
              "if (!m || m.dataset.view !== arguments[0] || !(Number(m.dataset.updated) > Number(arguments[1])))"
              "  return false;"
              "const charts = m.querySelectorAll('.chart');"
              "return [...charts].every(c => c.classList.contains('js-plotly-plot'));")
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script, name, after))


def updated(driver: Any) -> str:
    """The page's last refresh stamp (to wait for a newer one)."""
    return driver.execute_script("const m = document.getElementById('view');"
                                 "return m ? m.dataset.updated || '0' : '0';")
