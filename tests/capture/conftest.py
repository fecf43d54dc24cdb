"""Every Session test runs on both implementations: proxy/session.py (the reference) and the compiled one
(proxy/_session.c), which the native data plane uses. A module opts in with
``pytestmark = pytest.mark.usefixtures("session_class")``; pgmsg.Harness and relay.Relay build their
sessions from whatever the fixture set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fasterdata.proxy import session as reference

from . import pgmsg, relay

try:
    from fasterdata.proxy._session import Session as Compiled
except ImportError:  # built without a compiler: the compiled runs are skipped
    Compiled = None


@pytest.fixture(scope="module", params=["python", "compiled"])
def session_class(request: pytest.FixtureRequest) -> Iterator[type]:
    cls = reference.Session if request.param == "python" else Compiled
    if cls is None:
        pytest.skip("proxy._session not built (no C compiler)")
    pgmsg.SESSION = relay.SESSION = cls
    yield cls
    pgmsg.SESSION = relay.SESSION = reference.Session
