"""A real PostgreSQL for the tests, started by the suite itself: one server per session, one fresh
database per test.

The server is Debian's PostgreSQL binaries run from a temp folder (``initdb`` + ``pg_ctl``),
without durability (``--no-sync``, ``fsync=off``: a test database is thrown away), listening only
on a unix socket inside that folder, with trust authentication. PostgreSQL refuses to run as root,
so under root it runs as the OS user ``postgres``. ``RECONCILE_TEST_PG=postgresql://…`` uses a
running server instead (its test databases are dropped after each test).

Where neither exists the PostgreSQL tests are skipped; ``RECONCILE_REQUIRE_PG=1`` (``.ci/run``
sets it) turns that skip into a failure, so CI can never pass by skipping them. ``TempServer`` is
plain Python, so the benchmark starts its server the same way.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

EXTERNAL_ENV = "RECONCILE_TEST_PG"
REQUIRE_ENV = "RECONCILE_REQUIRE_PG"
SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root


def find_bindir() -> Path | None:
    """PostgreSQL's binaries: Debian's 15 first, then any other version installed, then PATH."""
    candidates = ["/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


class TempServer:
    """A throwaway PostgreSQL server in a temp folder; ``stop`` removes every trace.

    ``durable``: on disk with fsync on, as a real server runs (the benchmark compares it with
    sqlite on the same disk); otherwise in memory where there is a tmpfs, without fsync."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        # Memory-backed where there is one: creating a database per test is then quick.
        shm = Path("/dev/shm")
        where = shm if not durable and shm.is_dir() and os.access(shm, os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="reconcile-pg-", dir=where))
        self.data = self.root / "data"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        # The socket lives in the temp folder; no TCP port, so parallel sessions never collide.
        self.url = f"postgresql://postgres@/postgres?host={self.root}"

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / tool), *args], cwd=self.root, capture_output=True, text=True,
            timeout=60, **self._as,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{tail}")

    def start(self) -> TempServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--no-instructions")  # fmt: skip
        options = f"-c max_connections=300 -c listen_addresses='' -k {self.root}"
        if not self.durable:
            options += (
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c wal_level=minimal -c max_wal_senders=0"
            )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Databases:
    """Creates a fresh database per test on a server reached through ``admin_url``."""

    def __init__(self, admin_url: str, *, prefix: str, drop: bool, options: str = "") -> None:
        self.admin_url = admin_url
        self.prefix = prefix
        self.drop = drop  # on a server of our own, leftovers go with the server
        self.options = options
        self._count = itertools.count(1)

    def create(self) -> str:
        import psycopg

        name = f"{self.prefix}{next(self._count)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" {self.options}')
        return with_database(self.admin_url, name)

    def dispose(self, url: str) -> None:
        if not self.drop:
            return
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def unavailable(reason: str) -> None:
    """Skip, or fail under ``RECONCILE_REQUIRE_PG`` (CI must not pass by skipping)."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Databases]:
    """The session's PostgreSQL: an external one from RECONCILE_TEST_PG, else our own."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        yield Databases(external, prefix=f"reconcile_test_{os.getpid()}_", drop=True)
        return
    bindir = find_bindir()
    if bindir is None:
        unavailable("no PostgreSQL binaries (initdb, pg_ctl) and no RECONCILE_TEST_PG")
    assert bindir is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            unavailable(f"running as root, the server needs the OS user {SERVER_USER!r}")
    server = TempServer(bindir).start()
    try:
        # A file copy of the tiny template is the quickest way to a fresh database here.
        yield Databases(server.url, prefix="test_", drop=False, options="STRATEGY FILE_COPY")
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: Databases) -> Iterator[str]:
    """A fresh, empty database of its own for one test, as a libpq URL."""
    url = pg_server.create()
    yield url
    pg_server.dispose(url)


def db_rows(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    import psycopg  # the [postgres] extra: imported where a test needs it

    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def wait_running(url: str, count: int, *, within: float = 20.0) -> None:
    """Until ``count`` generations are running at the provider (their POSTs answered), as the
    shared database says."""
    deadline = time.monotonic() + within
    query = "SELECT count(*) FROM reconciler.generations WHERE state = 'running'"
    while db_rows(url, query) != [(count,)]:
        assert time.monotonic() < deadline, db_rows(
            url, "SELECT name, state FROM reconciler.generations"
        )
        time.sleep(0.05)


def text_columns_holding(url: str, needle: str) -> list[str]:
    """Every text column of every table in the database that holds ``needle`` anywhere."""
    columns = db_rows(url, "SELECT table_schema, table_name, column_name FROM "
                           "information_schema.columns WHERE data_type IN ('text', "
                           "'character varying', 'character', 'json', 'jsonb') AND table_schema "
                           "NOT IN ('pg_catalog', 'information_schema')")  # fmt: skip
    assert columns, "no text columns found: the scan would prove nothing"
    return [
        f"{schema}.{table}.{column}"
        for schema, table, column in columns
        if db_rows(
            url, f'SELECT 1 FROM "{schema}"."{table}" WHERE "{column}" LIKE %s', f"%{needle}%"
        )
    ]
