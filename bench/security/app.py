"""A deliberately vulnerable shop web app, for the security bench only: never expose it.

Endpoints (GET, or POST with a form for /login):
    /item?id=N          integer context, pasted into the SQL
    /search?q=TEXT      LIKE '%…%', pasted
    /login              username and password, pasted into a quoted pair
    /list?sort=COL      ORDER BY, pasted
    /customer?last=X    quoted and escaped correctly ('' doubling): not injectable
    /safe?q=X           bound parameter: not injectable

Every statement it runs is recorded with where the request came from (the `X-Bench-Source` header: the
attack tool sends `attack`, the benign driver `benign`) and whether its input changed the SQL's
structure by the endpoint's own rule (a non-integer id, a quote in a string, a sort that is not a plain
name): the ground truth the bench scores the analyzer's findings against.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg

SCHEMA = """
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, username text NOT NULL, password text NOT NULL);
CREATE TABLE customers (id int PRIMARY KEY, last_name text NOT NULL, email text NOT NULL);
INSERT INTO products SELECT i, 'product ' || i, (i * 3.5)::numeric(10,2) FROM generate_series(1, 60) i;
INSERT INTO users VALUES (1, 'alice', 'hunter2'), (2, 'bob', 'x-y;z'), (3, 'carol', 's3cret'),
    (4, 'dave', 'pa55'), (5, 'admin', 'correct horse');
INSERT INTO customers VALUES (1, 'O''Brien', 'ob@example.com'), (2, 'Smith', 's@example.com'),
    (3, 'D''Angelo', 'd@example.com'), (4, 'Lee -- jr', 'l@example.com');
"""

_INT = re.compile(r"-?\d+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


@dataclass(slots=True)
class Sent:
    sql: str
    source: str  # attack | benign | other
    injected: bool
    endpoint: str
    at: float


class Pool:
    """A few connections through the proxy, shared by the request threads (several sessions)."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        self.free: queue.Queue[psycopg.Connection] = queue.Queue()
        for _ in range(size):
            conn = psycopg.connect(dsn, autocommit=True, application_name="shopweb", prepare_threshold=5)
            conn.execute("SET statement_timeout = '4s'")
            self.free.put(conn)

    def run(self, sql: str, params: tuple | None = None) -> list[tuple]:
        conn = self.free.get()
        try:
            cur = conn.execute(sql, params)  # type: ignore[call-overload]
            return cur.fetchall() if cur.description else []
        finally:
            if conn.closed:  # a fatal error: replace it
                conn = psycopg.connect(conn.info.dsn, autocommit=True, application_name="shopweb",
                                       prepare_threshold=5)
            self.free.put(conn)

    def close(self) -> None:
        while not self.free.empty():
            self.free.get().close()


class Shop:
    """The endpoints, and the record of every statement they ran."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.sent: list[Sent] = []
        self.lock = threading.Lock()

    def _run(self, endpoint: str, source: str, sql: str, injected: bool, params: tuple | None = None) -> list:
        with self.lock:
            self.sent.append(Sent(sql, source, injected, endpoint, time.time()))
        return self.pool.run(sql, params)

    def handle(self, path: str, args: dict[str, str], source: str) -> list:
        if path == "/item":
            v = args.get("id", "1")
            return self._run(path, source, f"SELECT id, name, price FROM products WHERE id = {v}",
                             not _INT.fullmatch(v))
        if path == "/search":
            v = args.get("q", "")
            return self._run(path, source, f"SELECT id, name, price FROM products WHERE name LIKE '%{v}%' "
                             "ORDER BY name", "'" in v)
        if path == "/login":
            u, p = args.get("username", ""), args.get("password", "")
            return self._run(path, source, f"SELECT id, username FROM users WHERE username = '{u}' AND "
                             f"password = '{p}'", "'" in u or "'" in p)
        if path == "/list":
            v = args.get("sort", "name")
            return self._run(path, source, f"SELECT id, name, price FROM products ORDER BY {v} LIMIT 20",
                             not _NAME.fullmatch(v))
        if path == "/customer":
            v = args.get("last", "").replace("'", "''")
            return self._run(path, source, f"SELECT id, email FROM customers WHERE last_name = '{v}'", False)
        if path == "/safe":
            return self._run(path, source, "SELECT id, name FROM products WHERE name = %s", False,
                             (args.get("q", ""),))
        raise KeyError(path)


def serve(shop: Shop, port: int) -> ThreadingHTTPServer:
    """The app on 127.0.0.1:port, on a thread of its own."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, args: dict[str, str]) -> None:
            url = urlsplit(self.path)
            source = self.headers.get("X-Bench-Source", "other")
            try:
                rows = shop.handle(url.path, args, source)
                body, code = json.dumps([[str(c) for c in row] for row in rows]).encode(), 200
            except KeyError:
                body, code = b"not found", 404
            except psycopg.Error as exc:  # the error text goes back to the client: error-based extraction
                body, code = f"database error: {exc}".encode(errors="replace"), 500
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            query = urlsplit(self.path).query
            self._answer({k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = self.rfile.read(length).decode(errors="replace")
            self._answer({k: v[0] for k, v in parse_qs(form, keep_blank_values=True).items()})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
