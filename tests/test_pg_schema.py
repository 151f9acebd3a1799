"""PostgreSQL's own part of the state store: its schema and migrations, the read-only view, errors
at the edge, and a dead claim owner on another host found at once through its session's lock.

The protocol itself (claims, ledger, budget, recovery) is pinned on both stores in
``test_pg_store.py``; these are what only a server shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")  # the [postgres] extra; .ci/run installs it

from conftest import ROOT  # noqa: E402
from test_pg_store import OTHER_HOST, claim, eventually, generation, race  # noqa: E402

from reconciler.errors import StateError  # noqa: E402
from reconciler.lifecycle import Event, State  # noqa: E402
from reconciler.pg_store import MIGRATIONS, PgStore  # noqa: E402


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection to the test's database, outside any store."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    s = PgStore(pg_url)
    yield s
    s.close()


def rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()  # type: ignore[arg-type]


# -- schema ------------------------------------------------------------------------------------


def test_migrations_are_recorded_once_and_a_rerun_applies_nothing(
    pg_url: str, admin: psycopg.Connection[Any]
) -> None:
    """Each step is recorded once, in the reconciler schema and nowhere else; opening again
    applies nothing and keeps the data."""
    first = PgStore(pg_url)
    assert claim(first) is not None
    first.close()
    query = "SELECT name, applied_at FROM reconciler.migrations ORDER BY name"
    before = rows(admin, query)
    assert [name for name, _ in before] == [name for name, _ in MIGRATIONS]
    tables = rows(admin, "SELECT table_schema, table_name FROM information_schema.tables "
                         "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                         "ORDER BY 2")  # fmt: skip
    assert tables == [("reconciler", t) for t in ("attempts", "generations", "migrations")]
    again = PgStore(pg_url)
    try:
        assert rows(admin, query) == before
        gen = again.get("k1")
        assert gen is not None and gen.state is State.SUBMITTING
    finally:
        again.close()


def test_processes_starting_at_once_on_an_empty_database_migrate_it_once(pg_url: str) -> None:
    """Six stores opened together on a fresh database: none fails, each step is applied once."""
    opened = race(6, lambda i: PgStore(pg_url))
    try:
        assert all(isinstance(s, PgStore) for s in opened), opened
        with psycopg.connect(pg_url) as conn:
            assert rows(conn, "SELECT count(*) FROM reconciler.migrations") == [(len(MIGRATIONS),)]
    finally:
        for s in opened:
            if isinstance(s, PgStore):
                s.close()


def test_a_database_written_by_a_newer_reconciler_is_refused(
    store: PgStore, pg_url: str, admin: psycopg.Connection[Any]
) -> None:
    """A schema step this version does not know stops the store, naming the database, and the
    refused store leaves no session behind."""
    admin.execute("INSERT INTO reconciler.migrations VALUES ('9999_future', 'later')")
    with pytest.raises(StateError, match=r"written by a newer reconciler \(schema 9999_future\)"):
        PgStore(pg_url)
    sessions = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reconciler' "
                "AND datname = current_database()")  # fmt: skip
    assert eventually(lambda: rows(admin, sessions) == [(1,)])  # only the fixture's store


def test_a_read_only_store_on_an_empty_database_creates_nothing(
    pg_url: str, admin: psycopg.Connection[Any]
) -> None:
    """``plan`` and ``status`` on a database nobody applied to yet: an empty view, no schema
    created, and a write is refused with the way forward."""
    view = PgStore(pg_url, create=False)
    try:
        assert view.absent
        assert (view.generations(), view.get("k1"), view.attempts(), view.spent("2000")) == (
            {}, None, [], 0.0)  # fmt: skip
        assert view.recover_stale() == []
        with pytest.raises(StateError, match="reconcile apply"):
            claim(view)
    finally:
        view.close()
    assert rows(admin, "SELECT 1 FROM pg_namespace WHERE nspname = 'reconciler'") == []


def test_a_read_only_store_reads_what_others_wrote(store: PgStore, pg_url: str) -> None:
    """Where the schema exists, a read-only store reads the committed rows."""
    claim(store)
    view = PgStore(pg_url, create=False)
    try:
        assert not view.absent and view.generations().keys() == {"k1"}
    finally:
        view.close()


# -- errors at the edge ------------------------------------------------------------------------


def test_an_unreachable_server_is_one_message_without_the_password() -> None:
    """A server that cannot be reached is a StateError naming the URL, never its password."""
    url = "postgresql://me:s3cret@/nowhere?host=/nonexistent-socket-dir&connect_timeout=2"
    with pytest.raises(StateError) as caught:
        PgStore(url)
    message = str(caught.value)
    assert "postgresql://me@/nowhere" in message and "s3cret" not in message


def test_a_broken_connection_is_opened_again(
    store: PgStore, admin: psycopg.Connection[Any]
) -> None:
    """The server ending the session fails the call under way as a StateError; the next call has
    a new session, whose first claim holds the owner's liveness lock again."""
    claim(store)
    assert store.connected(store.owner)
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'reconciler' AND datname = current_database()")  # fmt: skip
    with pytest.raises(StateError, match="failed"):
        store.get("k1")
    assert eventually(lambda: not store.connected(store.owner))
    assert claim(store, generation("k2", "intro")) is not None
    assert store.connected(store.owner)


def test_check_fails_once_the_tables_are_gone(
    store: PgStore, admin: psycopg.Connection[Any]
) -> None:
    """Dropped tables are a StateError, not a traceback."""
    store.check()
    admin.execute("DROP SCHEMA reconciler CASCADE")
    with pytest.raises(StateError, match="failed"):
        store.check()


# -- a dead owner on another host --------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import os, signal, sys
    from reconciler.lifecycle import Event, Generation, State
    from reconciler.pg_store import PgStore

    store = PgStore(sys.argv[1])
    store.owner = sys.argv[2]  # as if on another host: its pid cannot be checked from here
    seed = Generation(spec_key="k1", name="hero", model="veo-3.1-fast-generate-preview",
                      resolution="720p", duration=8, cost=0.8, state=State.PENDING)
    assert store.transition("k1", Event.SUBMIT, seed=seed) is not None
    print("claimed", flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)  # no goodbye to the server: the socket just closes
    """
)


@pytest.mark.slow
def test_a_killed_owner_on_another_host_is_stale_at_once(store: PgStore, pg_url: str) -> None:
    """A process on "another host" claims and is SIGKILLed: while it lives its claim stands;
    seconds after its death (not 600) it is stale, and recovery makes it unknown."""
    owner = f"{OTHER_HOST}:4242:{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", CLAIMER, pg_url, owner], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "claimed"
            gen = store.get("k1")
            assert gen is not None and gen.owner == owner and not store.is_stale(gen)
            assert store.recover_stale() == []
            proc.stdin.write("die\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == -9
        finally:
            proc.kill()
    died = time.monotonic()
    assert eventually(lambda: store.is_stale(gen), within=5.0)
    noticed = time.monotonic() - died
    (recovered,) = store.recover_stale()
    assert recovered.state is State.UNKNOWN and owner in (recovered.error or "")
    assert noticed < 5.0
    assert [a["outcome"] for a in store.attempts("k1")] == ["submit", "unknown"]
    late = store.transition("k1", Event.ACCEPTED, operation="operations/late")
    assert late is not None and late.state is State.RUNNING  # its answer would still land
