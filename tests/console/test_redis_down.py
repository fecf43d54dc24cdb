"""Redis going away under a running console: the API says so in one line (503), the page's status line shows
it, nothing hangs, and both come back by themselves with Redis."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from selenium.webdriver.support.ui import WebDriverWait

from fasterdata.console.browser import wait_for_view
from tests.console.kit import ConsoleProcess
from tests.kit.polling import wait_until
from tests.kit.redisserver import RedisServer


def status_of(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_redis_down_is_said_and_outlived(tmp_path: Path, browser: Any) -> None:
    server = RedisServer(tmp_path)
    console = ConsoleProcess(tmp_path, "fdconsole", redis_url=server.url)
    try:
        assert status_of(console.url + "/api/top")[0] == 200
        browser.get(console.url + "/#/top")
        wait_for_view(browser, "top")
        server.kill()
        _, body = wait_until(lambda: (got := status_of(console.url + "/api/top"))[0] == 503 and got,
                             what="the console to notice Redis is gone", timeout=60)
        assert body["error"].startswith("cannot read Redis: ") and "\n" not in body["error"], body
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element("id", "status").text.startswith("cannot read Redis"))
        server.start()
        wait_until(lambda: status_of(console.url + "/api/top")[0] == 200, what="the console to read again",
                   timeout=60)
        WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "status").text.startswith("live"))
    finally:
        assert console.stop() == 0, console.log()
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
