"""`fasterdata console --screenshots DIR`: one PNG a view, taken by a headless chromium from a live console.

The console is served on a free loopback port of this process for the time of the shots, without auth
(nobody else reaches it); the fingerprint view shows the statement leading the top list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .browser import BrowserMissing, chromium, updated, wait_for_view
from .reads import Reads

VIEWS = ("top", "fp", "business", "alerts", "pipeline", "ledger")


class ScreenshotError(Exception):
    """The shots could not be taken: the message says why."""


def write_screenshots(reads: Reads, access: Any, directory: str | Path, width: int = 1280) -> list[Path]:
    """The PNG files written into `directory`, one a view (console-<view>.png)."""
    from prometheus_client import CollectorRegistry

    from fasterdata.proxy.httpd import MetricsServer, MetricsThread

    from .routes import routes

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    top = reads.top(limit=5)["rows"]
    fp = next((r["fp"] for r in top if r["fp"]), "")
    server = MetricsThread(MetricsServer(CollectorRegistry(), routes=routes(reads)))
    port = server.start("127.0.0.1", 0)
    written = []
    try:
        with chromium(width, 900) as driver:
            for view in VIEWS:
                if view == "fp" and not fp:
                    continue
                driver.set_window_size(width, 900)  # each view measured from the same start
                driver.get(f"http://127.0.0.1:{port}/#/{view}" + (f"/{fp}" if view == "fp" else ""))
                wait_for_view(driver, view)
                wait_for_view(driver, view, updated(driver))  # one poll more: what is read in the background
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(width, min(max(int(height) + 160, 600), 2400))  # + the window's frame
                wait_for_view(driver, view)
                path = out / f"console-{view}.png"
                driver.save_screenshot(str(path))
                written.append(path)
    except BrowserMissing as exc:
        raise ScreenshotError(f"cannot take screenshots: {exc}") from None
    finally:
        server.close()
    return written
