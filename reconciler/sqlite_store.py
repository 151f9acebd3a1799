"""The sqlite state store: the only module that speaks SQL, and the zero-setup default.

One sqlite file (WAL mode, so ``status``/``plan`` read while an ``apply`` writes) holds:

- ``generations``: one row per spec key, moved only by ``transition`` (see ``lifecycle``);
- ``attempts``: append-only, one row per submit attempt and outcome: the ledger of paid calls;
- ``outputs``: which spec key each name is materialized from, at which path;
- ``meta``: the daemon's heartbeat;
- ``migrations``: the schema steps applied, each in its own transaction, safe to re-run.

Every state change is one ``BEGIN IMMEDIATE`` transaction: a claim is a compare-and-swap inside
one, so two processes can never both POST for one key, and no global lock exists that a killed
process could leave behind.

Durability is chosen per transaction (see ``RELAXED``). A commit in WAL mode with
``synchronous=NORMAL`` is in the WAL file, in the OS's hands, when it returns: it survives the
process being killed (SIGKILL, a crash), and is lost only if the machine loses power before the
next checkpoint or ``FULL`` commit. ``FULL`` adds an fsync of the WAL to every commit (about 2 ms
on the development machine's disk, 5,000 of them for 1,000 specs, one after another). Everything
around the paid POST (the write-ahead claim, the operation name its answer carries, an ambiguous
or refused answer, an adoption) stays ``FULL``: losing one of those to a power cut could pay
twice or forget a paid job. The rest (an operation finished, bytes downloaded, an output placed)
only records what can be done again for free, and a ``FULL`` commit syncs every frame before it. One connection per store, shared by the threads the engine runs
blocking calls on, serialized by a lock (sqlite serializes writers anyway).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import lifecycle
from .errors import StateError
from .lifecycle import Event, Generation, State
from .money import Window, over
from .owners import now_iso, this_owner
from .store import Output, charge, expected, recover_stale, stale_claim


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Turn WAL on. Two processes creating the db at the same moment can get SQLITE_BUSY here
    without sqlite's busy handler ever waiting, so this one step retries by hand."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _m1_initial(conn: sqlite3.Connection) -> None:
    # The schema as sqlite_utils wrote it from the first release on, to the byte: sqlite keeps
    # the statements' text, and tests/test_store.py holds both ways to the same sqlite_master.
    # Plain SQL: importing sqlite_utils took 60-110 ms of a fresh clone's `plan` (its stand-in
    # state is an empty db migrated in memory).
    conn.execute(_table(
        "generations", '"spec_key" TEXT PRIMARY KEY', '"name" TEXT NOT NULL',
        '"model" TEXT NOT NULL', '"resolution" TEXT', '"duration" INTEGER', '"cost" REAL',
        '"state" TEXT NOT NULL', '"operation" TEXT', '"video_uri" TEXT', '"file_id" TEXT',
        '"sha256" TEXT', '"bytes" INTEGER', '"error" TEXT', '"error_kind" TEXT',
        '"op_failures" INTEGER DEFAULT 0', '"owner" TEXT', '"claimed_at" REAL',
        '"created_at" TEXT', '"updated_at" TEXT', '"submitted_at" TEXT', '"finished_at" TEXT',
    ))  # fmt: skip
    conn.execute(_index("generations", "state"))
    conn.execute(_table(
        "attempts", '"id" INTEGER PRIMARY KEY', '"spec_key" TEXT', '"name" TEXT', '"at" TEXT',
        '"outcome" TEXT', '"operation" TEXT', '"status" INTEGER', '"message" TEXT',
        '"owner" TEXT',
    ))  # fmt: skip
    conn.execute(_index("attempts", "spec_key"))
    conn.execute(_table(
        "outputs", '"name" TEXT PRIMARY KEY', '"spec_key" TEXT', '"path" TEXT', '"sha256" TEXT',
        '"bytes" INTEGER', '"size" INTEGER', '"mtime_ns" INTEGER', '"materialized_at" TEXT',
    ))  # fmt: skip
    conn.execute(_table("meta", '"key" TEXT PRIMARY KEY', '"value" TEXT'))


def _table(name: str, *columns: str) -> str:
    """sqlite_utils' CREATE TABLE, layout included."""
    return f'CREATE TABLE "{name}" (\n   ' + ",\n   ".join(columns) + "\n)"


def _index(table: str, column: str) -> str:
    """sqlite_utils' CREATE INDEX for one column, layout included."""
    return f'CREATE INDEX "idx_{table}_{column}"\n    ON "{table}" ("{column}")'


def _m2_row_version(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE generations ADD COLUMN version INTEGER NOT NULL DEFAULT 0")


def _m3_ledger_cost(conn: sqlite3.Connection) -> None:
    # What each ledger row charges (a claim: the video's estimate) or refunds (negative).
    conn.execute("ALTER TABLE attempts ADD COLUMN cost REAL")
    conn.execute("CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at)")


def _m4_remote_until(conn: sqlite3.Connection) -> None:
    # When the provider's copy of a generation's video goes: chains need it as a source.
    conn.execute("ALTER TABLE generations ADD COLUMN remote_until TEXT")


def _m5_spec_json(conn: sqlite3.Connection) -> None:
    # The spec each generation was asked for, as a reviewer reads it: replaces show a field diff.
    conn.execute("ALTER TABLE generations ADD COLUMN spec_json TEXT")


def _m6_ledger_takes(conn: sqlite3.Connection) -> None:
    # The bytes of each take (a download, an adoption): `reconcile takes` lists every one.
    conn.execute("ALTER TABLE attempts ADD COLUMN sha256 TEXT")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", _m1_initial),
    ("0002_row_version", _m2_row_version),
    ("0003_ledger_cost", _m3_ledger_cost),
    ("0004_remote_until", _m4_remote_until),
    ("0005_spec_json", _m5_spec_json),
    ("0006_ledger_takes", _m6_ledger_takes),
]
_OUTPUT_COLUMNS = tuple(f.name for f in fields(Output))
_OUTPUT_SET = frozenset(_OUTPUT_COLUMNS)
_SELECT_GENERATIONS = f"SELECT {', '.join(lifecycle.COLUMNS)} FROM generations"
_SELECT_ONE = f"{_SELECT_GENERATIONS} WHERE spec_key = ?"
# sqlite 3.35 and later hand a written row back (RETURNING): a transition needs no second read.
# The record's float columns cast: RETURNING hands back the value as written, before the REAL
# column's affinity (a cost of 8 would come back 8 where any later read gives 8.0).
# (Read off the fields' annotations as written: typing.get_type_hints took 0.6 ms at import.)
_FLOATS = {f.name for f in fields(Generation) if "float" in str(f.type)}
_RETURNING = (
    " RETURNING " + ", ".join(
        f"CAST({c} AS REAL)" if c in _FLOATS else c for c in lifecycle.COLUMNS
    ) if sqlite3.sqlite_version_info >= (3, 35) else ""
)  # fmt: skip
# Events committed without an fsync (synchronous=NORMAL): lost only to a power cut, each is found
# again for free by the next run (a poll, a download within the provider's two days, a repair).
RELAXED = frozenset({
    Event.FINISHED, Event.OP_FAILED, Event.OP_REJECTED, Event.VANISHED, Event.LOCKED_GONE,
    Event.DOWNLOADED, Event.DOWNLOAD_FAILED, Event.REMOTE_GONE, Event.RENEWED,
})  # fmt: skip


class SqliteStore:
    """The state db of one working tree: a ``GenerationStore`` and a ``TreeStore`` in one file."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0, create: bool = True) -> None:
        """Open (and migrate) the db. With ``create=False`` a missing db is not created: an empty
        in-memory one stands in, so read-only commands leave a fresh clone untouched."""
        self.path = path
        target = str(path)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            target = ":memory:"
        try:
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE below.
            conn = sqlite3.connect(
                target, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _switch_to_wal(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")  # FULL per transaction: see tx()
            self._durable = False  # what synchronous is set to now
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: not a usable state db ({exc})") from None
        self.conn = conn
        self.owner = this_owner()
        self._lock = threading.RLock()
        self._depth = 0  # open write transactions of this store (nested ones join the outer)
        self._identity = _identity(path) if target != ":memory:" else None
        try:
            self._migrate()
        except BaseException:
            conn.close()  # a refused db (a newer schema) is let go at once, not by the GC
            raise

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing.
        Nested (a write inside ``exclusive``), it joins the open one. ``durable``: its commit
        fsyncs the WAL (synchronous=FULL) and so every commit before it; else it survives a
        killed process, not a power cut (the module's docstring says which writes may)."""
        with self._lock:
            conn = self.conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            self.check()
            if self._durable is not durable:
                # Switched only when it changes: a run of claims, or of downloads, pays nothing
                # for it (two statements a transaction, each a release of the GIL).
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
            finally:
                self._depth = 0

    exclusive = tx

    def check(self) -> None:
        """Refuse to write into a db file that was deleted or replaced under this process: sqlite
        would go on writing to the unlinked file, and everything written would be lost."""
        if self._identity is not None and _identity(self.path) != self._identity:
            raise StateError(
                f"{self.path} was deleted or replaced while this process was running; "
                "what it had in flight is kept in the rescue journal for the next run"
            )

    def _migrate(self) -> None:
        # Read first: a db that has its migrations table takes no write lock here, so a read-only
        # command opens it at once while another process (an apply) holds the lock.
        query = "SELECT name FROM migrations"
        try:
            applied = {row[0] for row in self.conn.execute(query)}
        except sqlite3.OperationalError:  # no such table (a new db); anything else, again below
            with self.tx() as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
                )
            applied = {row[0] for row in self.conn.execute(query)}
        known = {name for name, _ in MIGRATIONS}
        if applied - known:
            newer = ", ".join(sorted(applied - known))
            raise StateError(
                f"{self.path} was written by a newer reconciler (schema {newer}); upgrade "
                "reconciler, or move state/ aside (the lock and videos/ rebuild it)"
            )
        for name, step in MIGRATIONS:
            if name in applied:
                continue  # an up-to-date db takes no write lock
            with self.tx() as conn:
                if conn.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                    continue
                step(conn)
                conn.execute("INSERT INTO migrations VALUES (?, ?)", [name, now_iso()])

    def _rows(
        self, table: str, where: str | None = None, args: Iterable[Any] = (), order: str = ""
    ) -> list[Any]:
        """Rows as dicts, read with sqlite3 itself: sqlite_utils' rows_where (the same query)
        cost twice as much per row, and a plan reads ten thousand."""
        sql = f"SELECT * FROM [{table}]" + (f" WHERE {where}" if where else "")
        sql += f" ORDER BY {order}" if order else ""
        with self._lock:
            cursor = self.conn.execute(sql, list(args))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    # -- generations and the ledger (GenerationStore) -------------------------------------------

    def get(self, key: str) -> Generation | None:
        with self._lock:
            return _row_in(self.conn, key)

    def generations(self) -> dict[str, Generation]:
        """Every row, its columns in the record's field order (no dict per row: a plan reads
        ten thousand, and this halves what building them costs)."""
        with self._lock:
            rows = self.conn.execute(_SELECT_GENERATIONS).fetchall()
        gens = {}
        for row in rows:
            gen = _generation(row)
            gens[gen.spec_key] = gen
        return gens

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        where, args = ("spec_key = ?", [key]) if key else (None, [])
        return self._rows("attempts", where, args, order="id")

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
        events = (event,) if isinstance(event, Event) else tuple(event)
        with self.tx(durable=not RELAXED.issuperset(events)) as conn:
            current = _row_in(conn, key)
            chosen = lifecycle.event_for(current.state if current else State.NEW, events)
            if chosen is None or not expected(
                current, expect_version, expect_operation, expect_file_id
            ):
                return None
            change = lifecycle.changes(
                current, chosen, budget=budget, seed=seed, message=message, kind=kind,
                values=values,
            )  # fmt: skip
            move = lifecycle.TRANSITIONS[chosen]
            cost = charge(move, change, current)
            if move.claims and windows:
                for window in windows:
                    refusal = over(window, self._spent(conn, window.since), cost)
                    if refusal is not None:
                        raise refusal
            now = now_iso()
            change["updated_at"] = now
            for column in move.stamps:
                change.setdefault(column, now)  # a time given by the caller is kept
            if move.claims:
                change.update(owner=self.owner, claimed_at=time.time())
            if current is None:
                change.update(spec_key=key, created_at=now, version=1)
                cols = ", ".join(change)
                marks = ", ".join("?" * len(change))
                sql = f"INSERT INTO generations ({cols}) VALUES ({marks})"
                args = [*change.values()]
            else:
                cols = ", ".join(f"{k} = ?" for k in change)
                sql = f"UPDATE generations SET {cols}, version = version + 1 WHERE spec_key = ?"
                args = [*change.values(), key]
            # The row as this transaction leaves it (the ledger below does not touch it): with
            # RETURNING, from the write itself, not a second read.
            rows = conn.execute(sql + _RETURNING, args).fetchall()
            if move.ledger is not None:
                name = change.get("name") or (current.name if current else None)
                operation = change.get("operation") or (current.operation if current else None)
                sha256 = change.get("sha256") if move.target is State.MATERIALIZED else None
                conn.execute(
                    "INSERT INTO attempts (spec_key, name, at, outcome, operation, status, "
                    "message, owner, cost, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [key, name, now, kind or move.ledger, operation, status, message, self.owner,
                     cost, sha256],
                )  # fmt: skip
            if not _RETURNING:
                return _row_in(conn, key)  # sqlite before 3.35: read inside the transaction
            return _generation(rows[0])

    def spent(self, since: str) -> float:
        with self._lock:
            return self._spent(self.conn, since)

    @staticmethod
    def _spent(conn: sqlite3.Connection, since: str) -> float:
        row = conn.execute("SELECT SUM(cost) FROM attempts WHERE at >= ?", [since]).fetchone()
        return float(row[0] or 0.0)

    def is_stale(self, gen: Generation) -> bool:
        return stale_claim(gen.owner, gen.claimed_at)

    def recover_stale(self) -> list[Generation]:
        with self._lock:
            query = f"{_SELECT_GENERATIONS} WHERE state = ?"
            rows = self.conn.execute(query, [State.SUBMITTING.value]).fetchall()
        return recover_stale(self, [_generation(r) for r in rows])

    # -- this working tree (TreeStore) ------------------------------------------------------------

    def outputs(self) -> dict[str, Output]:
        return {r["name"]: _output(r) for r in self._rows("outputs")}

    def output(self, name: str) -> Output | None:
        """One name's output row, without reading them all (materialize runs once per spec)."""
        rows = self._rows("outputs", "name = ?", [name])
        return _output(rows[0]) if rows else None

    def set_output(self, out: Output) -> None:
        with self.tx(durable=False) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [getattr(out, column) for column in _OUTPUT_COLUMNS],
            )

    def delete_output(self, name: str) -> None:
        with self.tx(durable=False) as conn:
            conn.execute("DELETE FROM outputs WHERE name = ?", [name])

    def meta(self, key: str) -> str | None:
        rows = self._rows("meta", "key = ?", [key])
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx(durable=False) as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _output(row: dict[str, Any]) -> Output:
    return Output(**{k: v for k, v in row.items() if k in _OUTPUT_SET})


def _row_in(conn: sqlite3.Connection, key: str) -> Generation | None:
    """A generation's row through the given connection (plain sqlite3), its columns in the
    record's field order: no dict of names per row (read twice in every transition)."""
    row = conn.execute(_SELECT_ONE, [key]).fetchone()
    return None if row is None else _generation(row)


def _generation(row: tuple[Any, ...]) -> Generation:
    gen = Generation(*row)
    gen.state = State(gen.state)
    return gen
