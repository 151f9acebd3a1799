"""The PostgreSQL state store: generations and the submit ledger, shared by a team's machines.

``state: postgresql://…`` (or ``RECONCILE_STATE``) puts the ``GenerationStore`` here, so laptops,
CI runners and daemons see one another's claims and pay once between them; outputs and daemon
metadata stay in each working tree's sqlite file (they describe that tree). The guarantees are the
sqlite store's, kept the same way:

- ``transition`` is one transaction: the row read ``FOR UPDATE`` (or inserted ``ON CONFLICT DO
  NOTHING``, retried as an update when another process inserted it first), the lifecycle's event
  and changes, the compare on version/operation/file id, the update and the ledger row together.
- The budget windows are checked inside the claim's transaction under a transaction-level
  advisory lock on one fixed key, taken after the row lock: two processes cannot both read the
  ledger's sum, both see room for one more video, and both spend the last dollar.
- Migrations are versioned steps recorded in ``migrations``, each in its own transaction under an
  advisory lock, so two processes starting at once apply each step once. A database written by a
  newer reconciler is refused. Tables live in the schema ``reconciler``, apart from anything else
  in a shared database.

Dead owners, without waiting 10 minutes: each process holds a *session-level* advisory lock
(shared mode, keyed by a 64-bit hash of its owner string) from its first claim until its
connection ends. The server drops it the moment the connection closes, which a killed process's
kernel does at once, so "is that owner's lock held?" (``pg_locks``) answers "is it alive?" for an
owner on any host. Chosen over a heartbeat table because it needs no writer thread, no clock
agreement between hosts, and no tuning of a beat against a timeout. Shared mode, because several
stores of one process (tests, a daemon) hold it together. What the lock cannot see is a host that
vanished from the network: its connection lingers until TCP keepalives give up, so each session
asks the server for keepalives of about a minute, and the 600 s limit still applies on top. An
owner on this host is judged by its pid, exactly as the sqlite store does. A live process whose
connection broke looks dead meanwhile: its claim becomes ``unknown`` (never resubmitted by
itself), and its answer still lands, since ACCEPTED is allowed from unknown. Poolers in
transaction mode (PgBouncer) break session locks: connect directly or in session mode.

One connection per store, serialized by a lock, as in the sqlite store: the engine's threads take
turns. Every psycopg error becomes a ``StateError`` here, at the edge, with the URL shown without
its password; a broken connection is opened again on the next call.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from . import lifecycle
from .config import state_label
from .errors import StateError
from .lifecycle import Event, Generation, State
from .money import Window, over
from .owners import now_iso, owner_alive, this_owner
from .store import charge, expected, recover_stale, stale_claim

SCHEMA = "reconciler"
Conn = psycopg.Connection[dict[str, Any]]

# Times are the lifecycle's ISO strings (to the second, UTC, "Z"), as in sqlite, so both stores
# hold and compare the same values; the ledger's time is compared in "C" order, whatever the
# database's collation. Tables are created as of sqlite's 0006: steps added later carry the same
# names in both stores.
MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "0001_initial",
        (
            """CREATE TABLE generations (
                spec_key text PRIMARY KEY, name text NOT NULL, model text NOT NULL,
                resolution text, duration integer, cost double precision, state text NOT NULL,
                operation text, video_uri text, file_id text, sha256 text, bytes bigint,
                error text, error_kind text, op_failures integer NOT NULL DEFAULT 0, owner text,
                claimed_at double precision, created_at text, updated_at text,
                submitted_at text, finished_at text, version integer NOT NULL DEFAULT 0,
                remote_until text, spec_json text)""",
            "CREATE INDEX generations_state ON generations (state)",
            """CREATE TABLE attempts (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, spec_key text, name text,
                at text COLLATE "C", outcome text, operation text, status integer, message text,
                owner text, cost double precision, sha256 text)""",
            "CREATE INDEX attempts_spec_key ON attempts (spec_key)",
            "CREATE INDEX attempts_at ON attempts (at)",
        ),
    ),
]


def lock_key(name: str) -> int:
    """A 64-bit advisory lock key for ``name``: collisions with another owner would only make a
    dead owner look alive, so the full width is used."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


MIGRATE_KEY = lock_key("reconciler: migrate")
BUDGET_KEY = lock_key("reconciler: budget")


def owner_key(owner: str) -> int:
    return lock_key(f"reconciler owner: {owner}")


class _Raced(Exception):
    """Another process inserted the row first: the transition is tried again on its row."""


class PgStore:
    """Generations and the ledger in a PostgreSQL database: a ``GenerationStore``."""

    def __init__(self, url: str, *, create: bool = True, lock_timeout: float = 30.0) -> None:
        """Connect, and create or migrate the schema. With ``create=False`` a database without
        the schema is left untouched: the store then reads as empty and refuses writes, so
        ``plan`` and ``status`` never create anything (nor need the right to). An older schema
        is migrated either way, as the sqlite store does."""
        self.url = url
        self.where = state_label(url)
        self.owner = this_owner()
        self.absent = False  # no schema, and not ours to create: an empty view
        self._lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._held: set[str] = set()  # owners whose liveness lock this session holds
        self._closed = False
        self._conn = self._connect()
        try:
            self._migrate(create=create)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Conn:
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            # libpq's message quotes the bad token, which may be a piece of the password.
            raise StateError(
                f"state: {self.where} is not a usable libpq URL (check its syntax and that "
                "special characters are percent-encoded)"
            ) from None
        defaults: dict[str, Any] = {"connect_timeout": 10, "application_name": "reconciler"}
        extra = {k: v for k, v in defaults.items() if k not in params}
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **extra)
        except psycopg.Error as exc:
            hint = ""
            if "password" in str(exc):
                hint = " (libpq reads the password from PGPASSWORD or ~/.pgpass)"
            raise StateError(f"the state database {self.where} is unreachable: "
                             f"{_first_line(exc)}{hint}") from None  # fmt: skip
        # A lock held by a stopped process, or a transaction it left open, must not wedge the
        # team: wait like sqlite's busy timeout, and let the server end an abandoned transaction.
        # Keepalives let the server notice a vanished host, and so free its liveness lock.
        settings = {
            "search_path": SCHEMA,
            "lock_timeout": f"{int(self._lock_timeout * 1000)}ms",
            "idle_in_transaction_session_timeout": "60s",
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        }
        calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
        try:
            conn.execute(f"SELECT {calls}", [v for item in settings.items() for v in item])
        except psycopg.Error as exc:
            conn.close()
            raise StateError(f"the state database {self.where} refused this session's settings: "
                             f"{_first_line(exc)}") from None  # fmt: skip
        self._held = set()
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()  # ends the session: its liveness locks go with it

    @contextmanager
    def _using(self) -> Iterator[Conn]:
        """This store's connection, one thread at a time; psycopg's errors become StateError."""
        with self._lock:
            if self._closed:
                raise StateError(f"the state database {self.where} was closed by this process")
            try:
                if self._conn.closed:  # broken earlier: a new session (claims re-take the lock)
                    self._conn = self._connect()
                yield self._conn
            except psycopg.Error as exc:
                raise StateError(
                    f"the state database {self.where} failed: {_first_line(exc)}"
                ) from exc

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        with self._using() as conn, conn.transaction():
            yield conn

    def check(self) -> None:
        """Raise StateError when the tables are gone. Writes that succeed on the server last
        there, so unlike a replaced sqlite file nothing else can silently swallow them."""
        if not self.absent:
            with self._using() as conn:
                conn.execute("SELECT 1 FROM generations LIMIT 0")

    def _migrate(self, *, create: bool) -> None:
        with self._using() as conn:
            found = conn.execute("SELECT to_regclass('reconciler.migrations') AS t").fetchone()
        if found is None or found["t"] is None:
            if not create:
                self.absent = True
                return
            with self._tx() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_KEY])
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                conn.execute("CREATE TABLE IF NOT EXISTS migrations (name text PRIMARY KEY, "
                             "applied_at text)")  # fmt: skip
        known = [name for name, _ in MIGRATIONS]
        with self._using() as conn:
            applied = {r["name"] for r in conn.execute("SELECT name FROM migrations")}
        if applied - set(known):
            newer = ", ".join(sorted(applied - set(known)))
            raise StateError(
                f"{self.where} was written by a newer reconciler (schema {newer}); upgrade "
                "reconciler (every machine sharing this database needs that version or newer)"
            )
        for name, steps in MIGRATIONS:
            if name in applied:
                continue
            with self._tx() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_KEY])
                if conn.execute("SELECT 1 FROM migrations WHERE name = %s", [name]).fetchone():
                    continue  # another process applied it while this one waited
                for step in steps:
                    conn.execute(step)  # our own constant SQL
                conn.execute("INSERT INTO migrations VALUES (%s, %s)", [name, now_iso()])

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str) -> Generation | None:
        if self.absent:
            return None
        with self._using() as conn:
            row = conn.execute("SELECT * FROM generations WHERE spec_key = %s", [key]).fetchone()
        return Generation.from_row(row) if row else None

    def generations(self) -> dict[str, Generation]:
        return {g.spec_key: g for g in self._where()}

    def _where(self, state: State | None = None) -> list[Generation]:
        if self.absent:
            return []
        query = "SELECT * FROM generations" + (" WHERE state = %s" if state else "")
        with self._using() as conn:
            rows = conn.execute(query, [state.value] if state else []).fetchall()
        return [Generation.from_row(r) for r in rows]

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        if self.absent:
            return []
        query = "SELECT * FROM attempts" + (" WHERE spec_key = %s" if key else "") + " ORDER BY id"
        with self._using() as conn:
            return conn.execute(query, [key] if key else []).fetchall()

    def spent(self, since: str) -> float:
        if self.absent:
            return 0.0
        with self._using() as conn:
            return _spent(conn, since)

    # -- the one write -----------------------------------------------------------------------------

    def transition(
        self,
        key: str,
        event: Event | Iterable[Event],
        *,
        seed: Generation | None = None,
        expect_version: int | None = None,
        expect_operation: str | None = None,
        expect_file_id: str | None = None,
        budget: int = 0,
        message: str | None = None,
        kind: str | None = None,
        status: int | None = None,
        windows: Sequence[Window] = (),
        **values: Any,
    ) -> Generation | None:
        if self.absent:
            raise StateError(f"{self.where} has no reconciler schema, and this command does not "
                             "create one: run `reconcile apply`")  # fmt: skip
        events = (event,) if isinstance(event, Event) else tuple(event)
        expect = (expect_version, expect_operation, expect_file_id)
        # A row never disappears, so after one lost insert race the row is there to lock.
        for _ in range(3):
            try:
                with self._tx() as conn:
                    return self._apply(
                        conn, key, events, seed=seed, expect=expect, budget=budget,
                        message=message, kind=kind, status=status, windows=windows, values=values,
                    )  # fmt: skip
            except _Raced:
                continue
        raise StateError(f"{key}: the row kept changing under this process; try again")

    def _apply(
        self,
        conn: Conn,
        key: str,
        events: tuple[Event, ...],
        *,
        seed: Generation | None,
        expect: tuple[int | None, str | None, str | None],
        budget: int,
        message: str | None,
        kind: str | None,
        status: int | None,
        windows: Sequence[Window],
        values: dict[str, Any],
    ) -> Generation | None:
        """One transition inside the caller's transaction; raising rolls all of it back."""
        row = conn.execute(
            "SELECT * FROM generations WHERE spec_key = %s FOR UPDATE", [key]
        ).fetchone()
        current = Generation.from_row(row) if row else None
        chosen = lifecycle.event_for(current.state if current else State.NEW, events)
        if chosen is None or not expected(current, *expect):
            return None
        change = lifecycle.changes(
            current, chosen, budget=budget, seed=seed, message=message, kind=kind, values=values
        )
        move = lifecycle.TRANSITIONS[chosen]
        cost = charge(move, change, current)
        if move.claims and windows:
            # One budget for everyone sharing the ledger: claims with windows take turns here.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [BUDGET_KEY])
            for window in windows:
                refusal = over(window, _spent(conn, window.since), cost)
                if refusal is not None:
                    raise refusal
        now = now_iso()
        change["updated_at"] = now
        for column in move.stamps:
            change.setdefault(column, now)  # a time given by the caller is kept
        if move.claims:
            self._hold_liveness(conn)  # before the claim commits: never a claim without it
            change.update(owner=self.owner, claimed_at=time.time())
        change = {k: v.value if isinstance(v, Enum) else v for k, v in change.items()}
        if current is None:
            change.update(spec_key=key, created_at=now, version=1)
            written = conn.execute(
                sql.SQL("INSERT INTO generations ({}) VALUES ({}) ON CONFLICT (spec_key) "
                        "DO NOTHING RETURNING *").format(
                    sql.SQL(", ").join(map(sql.Identifier, change)),
                    sql.SQL(", ").join(sql.Placeholder() * len(change)),
                ),
                [*change.values()],
            ).fetchone()  # fmt: skip
            if written is None:
                raise _Raced
        else:
            written = conn.execute(
                sql.SQL("UPDATE generations SET {}, version = version + 1 WHERE spec_key = %s "
                        "RETURNING *").format(
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k))
                                       for k in change),
                ),
                [*change.values(), key],
            ).fetchone()  # fmt: skip
        if move.ledger is not None:
            name = change.get("name") or (current.name if current else None)
            operation = change.get("operation") or (current.operation if current else None)
            sha256 = change.get("sha256") if move.target is State.MATERIALIZED else None
            conn.execute(
                "INSERT INTO attempts (spec_key, name, at, outcome, operation, status, message, "
                "owner, cost, sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [key, name, now, kind or move.ledger, operation, status, message, self.owner,
                 cost, sha256],
            )  # fmt: skip
        assert written is not None
        return Generation.from_row(written)

    # -- owners ------------------------------------------------------------------------------------

    def _hold_liveness(self, conn: Conn) -> None:
        """Hold this owner's lock for as long as this session lives (taken once per owner)."""
        if self.owner not in self._held:
            conn.execute("SELECT pg_advisory_lock_shared(%s)", [owner_key(self.owner)])
            self._held.add(self.owner)

    def connected(self, owner: str) -> bool:
        """Whether a session holds ``owner``'s liveness lock: the owner is alive, on any host."""
        key = owner_key(owner)
        with self._using() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND objsubid = 1 AND classid::bigint = ((%(k)s::bigint >> 32) & 4294967295) "
                "AND objid::bigint = (%(k)s::bigint & 4294967295)) AS held",
                {"k": key},
            ).fetchone()
        return bool(row and row["held"])

    def is_stale(self, gen: Generation) -> bool:
        """Dead on this host by its pid, or past the limit anywhere (the sqlite rule); elsewhere,
        and recent, dead once no session holds its liveness lock."""
        alive = owner_alive(gen.owner)
        if alive is not None:
            return not alive  # on this host: its pid says so
        if stale_claim(gen.owner, gen.claimed_at):
            return True  # elsewhere, past the age limit
        return not self.connected(gen.owner or "")

    def recover_stale(self) -> list[Generation]:
        return recover_stale(self, self._where(State.SUBMITTING))


def _spent(conn: Conn, since: str) -> float:
    row = conn.execute("SELECT SUM(cost) AS s FROM attempts WHERE at >= %s", [since]).fetchone()
    return float(row["s"] or 0.0) if row else 0.0


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
