"""A private, throw-away PostgreSQL server for tests that need their own configuration.

The machine's PostgreSQL is shared and must not be reconfigured, restarted or killed by tests.
Suites that need SCRAM/md5 users, TLS, logical replication or a server to restart mid-run create
a :class:`PrivateCluster` instead: ``initdb`` into a fresh temporary directory on a free port,
listening on 127.0.0.1 only, administered over its own Unix socket (so ``pg_hba.conf`` variations
on TCP never lock the test itself out). PostgreSQL refuses to run as root, so when the tests run as
root every server binary runs as the ``postgres`` OS user.

Everything is torn down by :meth:`PrivateCluster.destroy` (also registered with ``atexit``), and
clusters left behind by a test process that died are reaped the next time one is created.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.kit.certs import TestPKI
from tests.kit.polling import poll, wait_until
from tests.kit.ports import free_port
from tests.kit.procfs import children, pid_alive

PG_BIN = Path(os.environ.get("FASTERDATA_TEST_PGBIN", "/usr/lib/postgresql/15/bin"))
SERVER_OS_USER = os.environ.get("FASTERDATA_TEST_PGOSUSER", "postgres")
DIR_PREFIX = "fdpgcluster-"
SUPERUSER = "postgres"
HOST = "127.0.0.1"


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL client or server program of the version the clusters run."""
    return str(PG_BIN / name)


def _run_as_server_user() -> dict[str, Any]:
    """subprocess keyword arguments that drop root privileges to the server's OS user."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(SERVER_OS_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVER_OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _kill_and_wait(pids: Sequence[int], timeout: float = 15.0) -> None:
    """SIGKILL and wait until each process has exited (a zombie has: it holds no resources)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), "", timeout, interval=0.02)
    except AssertionError:
        raise RuntimeError(f"processes {list(pids)} survived SIGKILL for {timeout}s") from None


# -- the cluster ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A login role; ``encryption`` is the password_encryption its password is stored with."""

    name: str
    password: str
    encryption: str = "scram-sha-256"  # or "md5"
    attributes: str = "LOGIN"


def default_roles() -> list[Role]:
    """trustuser/md5user/scramuser/repluser with fresh random passwords (so logs can be searched)."""
    def pw(tag: str) -> str:
        return f"{tag}-Pw-{secrets.token_hex(8)}"

    return [
        Role("trustuser", pw("trust")),
        Role("md5user", pw("md5"), "md5"),
        Role("scramuser", pw("scram")),
        Role("repluser", pw("repl"), attributes="LOGIN REPLICATION"),
    ]


DEFAULT_HBA = (
    "host    all          postgres   127.0.0.1/32  trust",
    "host    all          trustuser  127.0.0.1/32  trust",
    "host    all          md5user    127.0.0.1/32  md5",
    "host    all          scramuser  127.0.0.1/32  scram-sha-256",
    "host    all          repluser   127.0.0.1/32  scram-sha-256",
    "host    replication  postgres   127.0.0.1/32  trust",
    "host    replication  repluser   127.0.0.1/32  scram-sha-256",
)



def hba_ssl_only(lines: Sequence[str] = DEFAULT_HBA) -> list[str]:
    """The same rules for TLS connections only (``host`` → ``hostssl``); plaintext TCP is rejected."""
    converted = [f"hostssl{line[4:]}" if line.split()[:1] == ["host"] else line for line in lines]
    return [*converted, "hostnossl  all  all  0.0.0.0/0  reject", "hostnossl  replication  all  0.0.0.0/0  reject"]


BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # a disposable cluster: durability against OS crashes buys nothing here
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "40",
    "wal_level": "logical",
    "max_wal_senders": "8",
    "max_replication_slots": "8",
    "log_connections": "on",
    "log_line_prefix": "'%m [%p] %u@%d '",
}


@dataclass
class PrivateCluster:
    """One private PostgreSQL server: ``initdb``, configure, start/stop/restart/kill, destroy.

    ``settings`` are postgresql.conf lines on top of :data:`BASE_SETTINGS` (values are written
    verbatim, so quote strings: ``{"log_min_messages": "'debug1'"}``); ``ssl=True`` issues a
    server certificate for localhost/127.0.0.1 from a fresh test CA (:attr:`pki`) and turns
    ssl on. ``hba`` replaces :data:`DEFAULT_HBA` (a local trust line for the admin socket is
    always kept first).
    """

    settings: Mapping[str, str] = field(default_factory=dict)
    hba: Sequence[str] | None = None
    ssl: bool = False
    roles: Sequence[Role] = field(default_factory=default_roles, repr=False)
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        reap_stale_clusters()
        self.root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.root.chmod(0o755)
        _chown_to_server_user(self.root)
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.host = HOST
        self._settings: dict[str, str] = {**BASE_SETTINGS, **self.settings}
        self._hba: list[str] = list(self.hba if self.hba is not None else DEFAULT_HBA)
        self.pki: TestPKI | None = None
        self.server_cert: Path | None = None
        self.server_key: Path | None = None
        self._destroyed = False
        self._started_once = False
        atexit.register(self.destroy)
        try:
            self._initdb()
        except BaseException:
            self.destroy()
            raise

    # -- set-up -------------------------------------------------------------------------------------

    def _as_server(self, *cmd: str, check: bool = True,
                   timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.root), "TZ": "UTC"}
        result = subprocess.run(list(cmd), cwd=self.root, env=env, capture_output=True, text=True,
                                timeout=timeout, **_run_as_server_user())
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                               f"\n--- server log ---\n{self.log()}")
        return result

    def _initdb(self) -> None:
        self.sockdir.mkdir()
        _chown_to_server_user(self.sockdir)
        self._as_server(pg_bin("initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        if self.ssl:
            self.pki = TestPKI(self.root / "pki")
            self.server_cert, self.server_key = self.pki.issue("server")
            for path in (self.pki.directory, self.server_cert, self.server_key):
                _chown_to_server_user(path)
            self._settings.update({"ssl": "on", "ssl_cert_file": f"'{self.server_cert}'",
                                   "ssl_key_file": f"'{self.server_key}'"})
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'fasterdata_test.conf'\n")
        self._write_config()
        self.start()
        self._create_roles()

    def _write_config(self) -> None:
        """(Re)write the included settings file and pg_hba.conf from the current values."""
        settings = {**self._settings, "port": str(self.port),
                    "unix_socket_directories": f"'{self.sockdir}'"}
        conf = self.datadir / "fasterdata_test.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("local all all trust\n" + "".join(f"{line}\n" for line in self._hba))
        for path in (conf, hba):
            _chown_to_server_user(path)

    def _create_roles(self) -> None:
        with self.connect() as conn:
            for role in self.roles:
                conn.execute(f"SET password_encryption = '{role.encryption}'")
                conn.execute(f'CREATE ROLE "{role.name}" {role.attributes} PASSWORD '
                             f"{sql.quote(role.password)}")
            conn.execute("RESET password_encryption")
            stored = dict(conn.execute(
                "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolpassword IS NOT NULL"
            ).fetchall())
        for role in self.roles:
            prefix = "md5" if role.encryption == "md5" else "SCRAM-SHA-256$"
            if not stored.get(role.name, "").startswith(prefix):
                raise RuntimeError(f"role {role.name} was stored as {stored.get(role.name)!r}, not {prefix}…")

    # -- addresses and connections ------------------------------------------------------------------

    def password(self, user: str) -> str:
        return next(r.password for r in self.roles if r.name == user)

    @property
    def address(self) -> str:
        """HOST:PORT, as the proxy's --upstream wants it."""
        return f"{self.host}:{self.port}"

    def dsn(self, user: str = SUPERUSER, dbname: str = "postgres", **extra: str) -> str:
        """libpq conninfo for a TCP connection straight to this server (no password unless given)."""
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """Superuser over the private Unix socket: works whatever pg_hba.conf says about TCP."""
        return f"host={self.sockdir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        """Superuser connection over the admin socket, autocommit."""
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True, **kwargs)

    def execute(self, query: str, dbname: str = "postgres") -> list[tuple]:
        """Run one statement as superuser and return its rows (empty for commands)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def psql(self, query: str, *args: str, dsn: str | None = None, password: str | None = None,
             check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run psql (unaligned, tuples only) against ``dsn`` (default: the admin socket)."""
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        cmd = [pg_bin("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn or self.admin_dsn(),
               *args, "-c", query]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"psql exited {result.returncode}: {result.stderr}")
        return result

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's pid if it is running."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start and wait until it accepts connections.

        A port taken between free_port() and the first start moves the cluster to another port;
        later (re)starts keep the port, since proxies under test point at it, and retry instead.
        """
        for attempt in range(5):
            log_offset = len(self.log())
            result = self._as_server(pg_bin("pg_ctl"), "start", "-D", str(self.datadir),
                                     "-l", str(self.logfile), "-w", "-t", str(int(self.start_timeout)),
                                     check=False, timeout=self.start_timeout + 30)
            if result.returncode == 0:
                self._started_once = True
                self.wait_ready()
                return
            if "could not bind" in self.log()[log_offset:] and attempt < 4:
                if not self._started_once:
                    self.port = free_port()
                    self._write_config()
                else:
                    time.sleep(0.5)
                continue
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n--- server log ---\n"
                               f"{self.log()[log_offset:][-4000:]}")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Connect loop over the admin socket until a query succeeds (pg_ctl -w is not always enough
        after a crash: recovery may still be running)."""
        failures: list[psycopg.OperationalError] = []

        def ready() -> bool:
            try:
                with psycopg.connect(self.admin_dsn(), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError as exc:
                failures.append(exc)
                return False

        try:
            wait_until(ready, "", timeout or self.start_timeout, interval=0.1)
        except AssertionError:
            raise RuntimeError(f"server not ready: {failures[-1]}\n--- server log ---\n{self.log()[-4000:]}") \
                from None

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (smart|fast|immediate); falls back to killing the processes."""
        pid = self.pid
        if pid is None:
            return
        result = self._as_server(pg_bin("pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w",
                                 "-t", "30", check=False, timeout=60)
        if result.returncode != 0 and self.is_running():
            self.kill()
            return
        # pg_ctl returns once the lock file is gone; the process exits a moment later.
        poll(lambda: not pid_alive(pid), 30, interval=0.02)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf (SIGHUP) and wait until the backends see it."""
        with self.connect() as conn:
            before = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT pg_reload_conf()")
        # The postmaster handles SIGHUP asynchronously. A backend forked after it did inherits the
        # new load time, so poll with fresh connections until one reports a later time.
        def seen() -> bool:
            with self.connect() as conn:
                now = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]  # type: ignore[index]
            return now > before

        try:
            wait_until(seen, "", 30, interval=0.02)
        except AssertionError:
            raise RuntimeError(f"configuration reload not seen after 30s:\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the postmaster and every server process, and wait until they are gone."""
        pid = self.pid
        if pid is None:
            return
        _kill_and_wait([pid, *children(pid)])
        # The dead postmaster may stay a zombie until init reaps it, and PostgreSQL's lock-file
        # checks (kill(pid, 0)) would take it for a running server. Nothing uses the data directory
        # or socket any more, so the stale lock files can go (shared memory is checked on start).
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        (self.sockdir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def configure(self, settings: Mapping[str, str] | None = None, hba: Sequence[str] | None = None) -> None:
        """Change settings (merged) and/or replace pg_hba.conf lines; call reload() or restart() after."""
        if settings:
            self._settings.update(settings)
        if hba is not None:
            self._hba = list(hba)
        self._write_config()

    @contextlib.contextmanager
    def reconfigured(self, settings: Mapping[str, str] | None = None, hba: Sequence[str] | None = None,
                     restart: bool = False) -> Iterator[PrivateCluster]:
        """Temporarily change settings/pg_hba.conf (reload, or restart if asked), restoring on exit."""
        saved_settings, saved_hba = dict(self._settings), list(self._hba)
        apply = self.restart if restart else self.reload
        self.configure(settings, hba)
        apply()
        try:
            yield self
        finally:
            self._settings, self._hba = saved_settings, saved_hba
            self._write_config()
            apply()

    def destroy(self) -> None:
        """Stop the server (immediately), kill anything left, and remove the directory."""
        if self._destroyed:
            return
        self._destroyed = True
        try:
            self.stop("immediate")
        finally:
            pid = self.pid
            if pid is not None:
                _kill_and_wait([pid, *children(pid)])
            shutil.rmtree(self.root, ignore_errors=True)
            atexit.unregister(self.destroy)

    def __enter__(self) -> PrivateCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def reap_stale_clusters() -> None:
    """Kill and remove clusters whose creating test process is gone (a crashed or killed pytest)."""
    for root in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            # No owner file yet: maybe being created right now by another process; leave it
            # unless it is old.
            with contextlib.suppress(OSError):
                if time.time() - root.stat().st_mtime < 3600:
                    continue
            owner = -1
        if owner > 0 and pid_alive(owner):
            continue
        try:
            pid = int((root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid):
            with contextlib.suppress(RuntimeError):
                _kill_and_wait([pid, *children(pid)])
        shutil.rmtree(root, ignore_errors=True)
