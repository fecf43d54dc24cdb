"""A bare RESP client for the sink: where Redis is (RedisTarget) and one connection to it.

redis-py's connection reads one reply per coroutine call; the sink needs neither that nor its pool,
only "write these bytes, give me the next reply".
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.connection import parse_url

from .script import SCRIPT


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect, from a redis://, rediss:// or unix:// URL (redis-py's parse_url)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    display: str = ""

    @classmethod
    def from_url(cls, url: str, ssl_context: ssl.SSLContext | None = None) -> RedisTarget:
        kw = parse_url(url)
        tls = url.startswith("rediss://")
        context = None
        if tls:
            context = ssl_context or _ssl_context(kw)
        host, port, path = kw.get("host", "127.0.0.1"), int(kw.get("port", 6379)), kw.get("path")
        db = int(kw.get("db", 0))
        user = kw.get("username")
        where = path or f"{host}:{port}"
        auth = f"{user or ''}:***@" if kw.get("password") else (f"{user}@" if user else "")
        scheme = "unix" if path else ("rediss" if tls else "redis")
        display = f"{scheme}://{auth}{where}" + (f"?db={db}" if path else f"/{db}")
        return cls(host, port, path, db, user, kw.get("password"), context, display)


def _ssl_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """A client TLS context from redis-py's URL parameters (ssl_cert_reqs, ssl_ca_certs, ssl_certfile …)."""
    reqs = kw.get("ssl_cert_reqs", "required")
    mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}.get(reqs)
    if mode is None:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    context = ssl.create_default_context()
    check = kw.get("ssl_check_hostname", True)
    context.check_hostname = bool(check) and mode != ssl.CERT_NONE
    context.verify_mode = mode
    if kw.get("ssl_ca_certs") or kw.get("ssl_ca_path"):
        context.load_verify_locations(cafile=kw.get("ssl_ca_certs"), capath=kw.get("ssl_ca_path"))
    if kw.get("ssl_certfile"):
        context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"), kw.get("ssl_password"))
    return context


class RedisConnection(asyncio.Protocol):
    """A bare RESP connection: raw bytes out, replies parsed by hiredis, one future per reply.

    redis-py's connection reads one reply per coroutine call; the sink needs neither that nor its
    pool, only "write these bytes, give me the next reply".  A connection that timed out is
    closed, never reused, so replies cannot get out of step with their futures.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.on_lost: Any = None  # called once when the peer goes away
        self.node: RedisTarget | None = None  # where it goes, when the owner needs to know (cluster redirections)
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future] = deque()

    @classmethod
    async def open(cls, target: RedisTarget, timeout: float, name: str = "") -> RedisConnection:
        """Connect, AUTH, SELECT, name the client and load the script, all within ``timeout``."""
        loop = asyncio.get_running_loop()
        conn: RedisConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                if target.path:
                    _, conn = await loop.create_unix_connection(cls, target.path)
                else:
                    _, conn = await loop.create_connection(
                        cls, target.host, target.port, ssl=target.ssl,
                        server_hostname=target.host if target.ssl is not None else None)
                commands: list[tuple] = []
                if target.password is not None:
                    commands.append(("AUTH", target.username, target.password) if target.username
                                    else ("AUTH", target.password))
                if target.db:
                    commands.append(("SELECT", target.db))
                if name:
                    commands.append(("CLIENT", "SETNAME", name))
                commands.append(("SCRIPT", "LOAD", SCRIPT))
                replies = await conn.requests(b"".join(map(hiredis.pack_command, commands)), len(commands))
            for command, reply in zip(commands, replies, strict=True):
                if isinstance(reply, hiredis.ReplyError) and command[0] != "CLIENT":
                    raise RedisReplyError(f"{command[0]} failed: {reply}")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"garbled reply from redis: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))
        if self.on_lost is not None:
            self.on_lost()

    def _fail(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def requests(self, data: bytes, replies: int) -> list[Any]:
        """Write pipelined commands; await their ``replies`` replies (error replies are returned)."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection to redis is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiters.extend(futures)
        self.transport.write(data)
        return [await fut for fut in futures]

    async def request(self, data: bytes) -> Any:
        if self.closed or self.transport is None:
            raise ConnectionError("connection to redis is closed")
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.transport.write(data)
        return await fut

    def close(self) -> None:
        """Drop the connection now (abort: a paused server must not hold our buffered bytes)."""
        self.closed = True
        self.on_lost = None
        if self.transport is not None:
            self.transport.abort()
        self._fail(ConnectionError("connection to redis closed"))


def describe(exc: BaseException, empty: str = "timed out") -> str:
    """A failed connect or round trip in one line, for logs and readiness."""
    text = str(exc) if not isinstance(exc, OSError) or not exc.strerror else exc.strerror
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__}: {empty}"
