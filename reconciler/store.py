"""The state store: the only module that speaks SQL.

One sqlite file (WAL mode, so ``status``/``plan`` read while an ``apply`` writes) holds:

- ``generations``: one row per spec key, moving through the state machine of DESIGN.md;
- ``attempts``: append-only, one row per submit attempt and outcome: the ledger of paid calls;
- ``outputs``: which spec key each name is materialized from, at which path;
- ``migrations``: the schema steps applied, each in its own transaction, safe to re-run.

Every state change is one ``BEGIN IMMEDIATE`` transaction. Claiming a row for submission is a
compare-and-swap on its state inside such a transaction, so two processes can never both POST for
one key, and no global lock exists that a killed process could leave behind.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import StateError

# States of a generation (DESIGN.md, "Exactly-once submission").
PENDING = "pending"  # known, nothing sent (or an answered error proved nothing was accepted)
SUBMITTING = "submitting"  # committed before the POST; owner is the process sending it
RUNNING = "running"  # operation name committed: poll, never resubmit
SUCCEEDED = "succeeded"  # the provider has a video for it; download next
MATERIALIZED = "materialized"  # bytes verified in the object cache
FAILED = "failed"  # final until the spec changes or the user asks for a retry
UNKNOWN = "unknown"  # the POST may have been accepted: only the user may resubmit
IN_FLIGHT = (SUBMITTING, RUNNING, SUCCEEDED)

# A submit that has not settled after this long belongs to a dead or wedged process, whatever host.
STALE_SUBMIT_SECONDS = 600.0


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_start(pid: int) -> str:
    """The kernel's start time of a pid, so a reused pid is not mistaken for the original owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "0"


def this_owner() -> str:
    """Who holds a claim: host, pid and the pid's start time, as shown in messages."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host; None when it lives elsewhere and cannot be checked."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return _process_start(pid) == start


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


@dataclass
class Generation:
    """A generations row as plain data."""

    spec_key: str
    name: str
    model: str
    resolution: str
    duration: int
    cost: float | None
    state: str
    operation: str | None = None
    video_uri: str | None = None
    file_id: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    error: str | None = None
    error_kind: str | None = None
    op_failures: int = 0
    owner: str | None = None
    claimed_at: float | None = None
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    version: int = 0  # bumped by every change: what a plan saw can be compared before a claim

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Generation:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Output:
    """An outputs row: a name materialized from a spec key at a path."""

    name: str
    spec_key: str
    path: str
    sha256: str
    bytes: int
    size: int
    mtime_ns: int
    materialized_at: str


def _m1_initial(db: sqlite_utils.Database) -> None:
    db.table("generations").create(
        dict(
            spec_key=str, name=str, model=str, resolution=str, duration=int, cost=float,
            state=str, operation=str, video_uri=str, file_id=str, sha256=str, bytes=int,
            error=str, error_kind=str, op_failures=int, owner=str, claimed_at=float,
            created_at=str, updated_at=str, submitted_at=str, finished_at=str,
        ),
        pk="spec_key",
        not_null={"state", "model", "name"},
        defaults={"op_failures": 0},
    )  # fmt: skip
    db.table("generations").create_index(["state"])
    db.table("attempts").create(
        {
            "id": int, "spec_key": str, "name": str, "at": str, "outcome": str,
            "operation": str, "status": int, "message": str, "owner": str,
        },
        pk="id",
    )  # fmt: skip
    db.table("attempts").create_index(["spec_key"])
    db.table("outputs").create(
        {
            "name": str, "spec_key": str, "path": str, "sha256": str, "bytes": int,
            "size": int, "mtime_ns": int, "materialized_at": str,
        },
        pk="name",
    )  # fmt: skip
    db.table("meta").create({"key": str, "value": str}, pk="key")


def _m2_row_version(db: sqlite_utils.Database) -> None:
    db.conn.execute("ALTER TABLE generations ADD COLUMN version INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial", _m1_initial),
    ("0002_row_version", _m2_row_version),
]


class Store:
    """The state db of one asset repo."""

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
            conn = sqlite3.connect(target, timeout=busy_timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _switch_to_wal(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: not a usable state db ({exc})") from None
        self.db = sqlite_utils.Database(conn)
        self.owner = this_owner()
        self._migrate()

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
            )
        known = {name for name, _ in MIGRATIONS}
        applied = {row[0] for row in self.db.conn.execute("SELECT name FROM migrations")}
        if applied - known:
            newer = ", ".join(sorted(applied - known))
            raise StateError(
                f"{self.path} was written by a newer reconciler (schema {newer}); upgrade "
                "reconciler, or move state/ aside (the lock and videos/ rebuild it)"
            )
        for name, step in MIGRATIONS:
            with self.tx() as conn:
                if conn.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                    continue
                step(self.db)
                conn.execute("INSERT INTO migrations VALUES (?, ?)", [name, now_iso()])

    # -- reads ---------------------------------------------------------------------------------

    def generations(self) -> dict[str, Generation]:
        return {r["spec_key"]: Generation.from_row(r) for r in self.db["generations"].rows}

    def get(self, key: str) -> Generation | None:
        rows = list(self.db["generations"].rows_where("spec_key = ?", [key]))
        return Generation.from_row(rows[0]) if rows else None

    def outputs(self) -> dict[str, Output]:
        names = {f.name for f in fields(Output)}
        return {
            r["name"]: Output(**{k: v for k, v in r.items() if k in names})
            for r in self.db["outputs"].rows
        }

    def output(self, name: str) -> Output | None:
        """One name's output row, without reading them all (materialize runs once per spec)."""
        names = {f.name for f in fields(Output)}
        for r in self.db["outputs"].rows_where("name = ?", [name]):
            return Output(**{k: v for k, v in r.items() if k in names})
        return None

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        where, args = ("spec_key = ?", [key]) if key else (None, [])
        return list(self.db["attempts"].rows_where(where, args, order_by="id"))

    def meta(self, key: str) -> str | None:
        rows = list(self.db["meta"].rows_where("key = ?", [key]))
        return rows[0]["value"] if rows else None

    # -- writes ---------------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    def _update(self, conn: sqlite3.Connection, key: str, **values: Any) -> None:
        values["updated_at"] = now_iso()
        cols = ", ".join(f"{k} = ?" for k in values)
        conn.execute(
            f"UPDATE generations SET {cols}, version = version + 1 WHERE spec_key = ?",
            [*values.values(), key],
        )

    def _attempt(
        self, conn: sqlite3.Connection, gen: Generation | str, outcome: str, **values: Any
    ) -> None:
        key = gen if isinstance(gen, str) else gen.spec_key
        name = None if isinstance(gen, str) else gen.name
        if name is None:
            row = conn.execute("SELECT name FROM generations WHERE spec_key = ?", [key]).fetchone()
            name = row[0] if row else None
        conn.execute(
            "INSERT INTO attempts (spec_key, name, at, outcome, operation, status, message, owner)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                key,
                name,
                now_iso(),
                outcome,
                values.get("operation"),
                values.get("status"),
                values.get("message"),
                self.owner,
            ],
        )

    def claim(
        self, gen: Generation, *, allowed: tuple[str, ...], expect_version: int | None = None
    ) -> Generation | None:
        """Move a key to ``submitting`` if its state is one of ``allowed`` (and, given
        ``expect_version``, if nobody changed the row since it was read); None if someone else won.

        This is the write-ahead step: it commits before the POST, so a crash after it can only
        leave a ``submitting`` row, which recovery turns into ``unknown``, never a silent resubmit.
        The version check is what keeps a plan made before another process's whole
        submit-poll-download cycle from paying for the key again afterwards.
        """
        with self.tx() as conn:
            row = conn.execute(
                "SELECT state, version FROM generations WHERE spec_key = ?", [gen.spec_key]
            ).fetchone()
            if row is not None and expect_version is not None and row[1] != expect_version:
                return None
            claim = {"owner": self.owner, "claimed_at": time.time(), "submitted_at": now_iso()}
            if row is None:
                if PENDING not in allowed:
                    return None
                conn.execute(
                    "INSERT INTO generations (spec_key, name, model, resolution, duration, cost,"
                    " state, op_failures, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [
                        gen.spec_key, gen.name, gen.model, gen.resolution, gen.duration,
                        gen.cost, SUBMITTING, 0, now_iso(), now_iso(),
                    ],
                )  # fmt: skip
                self._update(conn, gen.spec_key, **claim)
            elif row[0] in allowed:
                # Leaving failed/unknown/materialized takes the user's word: a fresh retry budget.
                budget = {} if row[0] == PENDING else {"op_failures": 0}
                self._update(
                    conn,
                    gen.spec_key,
                    state=SUBMITTING,
                    name=gen.name,
                    operation=None,
                    video_uri=None,
                    file_id=None,
                    **claim,
                    **budget,
                )
            else:
                return None
        return self.get(gen.spec_key)

    def mark_running(self, key: str, operation: str) -> None:
        """Commit the operation name the moment it arrives: from here on, poll, never resubmit."""
        with self.tx() as conn:
            self._update(conn, key, state=RUNNING, operation=operation, owner=None, error=None)
            self._attempt(conn, key, "accepted", operation=operation)

    def mark_not_accepted(
        self, key: str, *, outcome: str, message: str, status: int | None, final: bool, kind: str
    ) -> None:
        """The POST was answered with an error: nothing was accepted, so nothing was paid."""
        with self.tx() as conn:
            state = FAILED if final else PENDING
            self._update(
                conn,
                key,
                state=state,
                owner=None,
                error=message,
                error_kind=kind if final else None,
            )
            self._attempt(conn, key, outcome, status=status, message=message)

    def mark_unknown(self, key: str, message: str, *, operation: str | None = None) -> bool:
        """The POST may have been accepted (or, with ``operation``, the provider lost track of
        that operation): only the user may resubmit. With ``operation``, only if still current."""
        with self.tx() as conn:
            if operation is not None:
                row = conn.execute(
                    "SELECT operation, state FROM generations WHERE spec_key = ?", [key]
                ).fetchone()
                if row is None or row[0] != operation or row[1] != RUNNING:
                    return False
            self._update(conn, key, state=UNKNOWN, owner=None, error=message, error_kind="unknown")
            self._attempt(conn, key, "unknown", message=message)
        return True

    def mark_succeeded(self, key: str, *, operation: str, video_uri: str, file_id: str) -> bool:
        """Record a finished operation, only if the row is still running *that* operation.

        Every transition after a poll is a compare-and-swap: a process polling an operation that
        another process has since replaced (an op error resubmitted) must not rewind the row.
        """
        with self.tx() as conn:
            changed = conn.execute(
                "UPDATE generations SET state = ?, video_uri = ?, file_id = ?, finished_at = ?,"
                " error = NULL, error_kind = NULL, updated_at = ?, version = version + 1"
                " WHERE spec_key = ? AND operation = ? AND state = ?",
                [SUCCEEDED, video_uri, file_id, now_iso(), now_iso(), key, operation, RUNNING],
            ).rowcount
        return changed == 1

    def mark_materialized(self, key: str, *, file_id: str | None, sha256: str, size: int) -> bool:
        """Record verified bytes in the cache for the file the row names (None: any, for adoption)."""
        with self.tx() as conn:
            row = conn.execute(
                "SELECT state, file_id FROM generations WHERE spec_key = ?", [key]
            ).fetchone()
            if row is None or row[0] not in (SUCCEEDED, MATERIALIZED):
                return False
            if file_id is not None and row[1] != file_id:
                return False
            self._update(conn, key, state=MATERIALIZED, sha256=sha256, bytes=size, error=None,
                         error_kind=None)  # fmt: skip
        return True

    def mark_failed(
        self,
        key: str,
        *,
        message: str,
        kind: str,
        operation: str | None = None,
        count_failure: bool = False,
        retries: int = 0,
    ) -> str | None:
        """Record a final outcome of an operation; an op error goes back to pending while retries
        last. With ``operation``, only if the row still holds it (else None: someone moved on).

        Returns the new state.
        """
        with self.tx() as conn:
            row = conn.execute(
                "SELECT op_failures, operation, state FROM generations WHERE spec_key = ?", [key]
            ).fetchone()
            if operation is not None and (
                row is None or row[1] != operation or row[2] not in (RUNNING, SUCCEEDED)
            ):
                return None
            failures = (row[0] if row else 0) + (1 if count_failure else 0)
            state = PENDING if count_failure and failures <= retries else FAILED
            self._update(
                conn, key, state=state, error=message, error_kind=kind, op_failures=failures,
                finished_at=now_iso(), owner=None,
            )  # fmt: skip
            self._attempt(conn, key, kind, message=message, operation=operation)
        return state

    def reset(self, key: str, *, to: str = PENDING) -> None:
        """The user asked for a retry (--retry-failed, --resubmit-unknown, --replace)."""
        with self.tx() as conn:
            self._update(conn, key, state=to, error=None, error_kind=None, op_failures=0)

    def adopt(
        self,
        gen: Generation,
        *,
        operation: str,
        state: str = RUNNING,
        over: tuple[str, ...] | None = (PENDING, UNKNOWN, FAILED),
    ) -> bool:
        """Record a generation whose operation exists already (resolve, or rebuilt from the lock),
        only over a row in one of the ``over`` states (None: over anything, the user's --force).
        Checked inside the transaction: another process's running job is never overwritten."""
        with self.tx() as conn:
            row = conn.execute(
                "SELECT state FROM generations WHERE spec_key = ?", [gen.spec_key]
            ).fetchone()
            if row is not None and over is not None and row[0] not in over:
                return False
            conn.execute("DELETE FROM generations WHERE spec_key = ?", [gen.spec_key])
            row = {f.name: getattr(gen, f.name) for f in fields(Generation)}
            row.update(state=state, operation=operation, owner=None, updated_at=now_iso())
            row.setdefault("created_at", now_iso())
            cols = ", ".join(row)
            conn.execute(
                f"INSERT INTO generations ({cols}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            self._attempt(conn, gen, "adopted", operation=operation)
        return True

    def forget_remote(self, key: str, *, file_id: str) -> None:
        """The provider deleted the file of a row whose cached bytes are gone too: the bytes are
        lost, and the next plan says so (a paid regeneration) instead of retrying a dead link."""
        with self.tx() as conn:
            conn.execute(
                "UPDATE generations SET file_id = NULL, video_uri = NULL, updated_at = ?,"
                " version = version + 1 WHERE spec_key = ? AND file_id = ?",
                [now_iso(), key, file_id],
            )

    @staticmethod
    def stale(owner: str | None, claimed_at: float | None) -> bool:
        """A ``submitting`` claim whose owner is dead (or, on another host, silent too long)."""
        alive = owner_alive(owner)
        expired = time.time() - (claimed_at or 0) > STALE_SUBMIT_SECONDS
        return alive is False or (alive is None and expired)

    def stale_message(self, owner: str | None) -> str:
        return (
            f"the process submitting it ({owner}) stopped before the provider's answer was "
            "recorded; the job may exist and be billed"
        )

    def generations_as_seen(self) -> dict[str, Generation]:
        """Generations with dead owners' submits shown as ``unknown``, without writing anything:
        what ``plan`` and ``status`` show, and what the next ``apply`` will record."""
        gens = self.generations()
        for gen in gens.values():
            if gen.state == SUBMITTING and self.stale(gen.owner, gen.claimed_at):
                gen.error, gen.error_kind = self.stale_message(gen.owner), "unknown"
                gen.state = UNKNOWN
        return gens

    def recover_stale(self) -> list[Generation]:
        """Turn submits whose owner died into ``unknown``: the POST may or may not have gone out."""
        stale = []
        with self.tx() as conn:
            rows = conn.execute(
                "SELECT spec_key, owner, claimed_at FROM generations WHERE state = ?", [SUBMITTING]
            ).fetchall()
            for key, owner, claimed_at in rows:
                if self.stale(owner, claimed_at):
                    message = self.stale_message(owner)
                    self._update(conn, key, state=UNKNOWN, owner=None, error=message,
                                 error_kind="unknown")  # fmt: skip
                    self._attempt(conn, key, "unknown", message=message)
                    stale.append(key)
        return [g for g in (self.get(k) for k in stale) if g is not None]

    def set_output(self, out: Output) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [out.name, out.spec_key, out.path, out.sha256, out.bytes, out.size, out.mtime_ns,
                 out.materialized_at],
            )  # fmt: skip

    def delete_output(self, name: str) -> None:
        with self.tx() as conn:
            conn.execute("DELETE FROM outputs WHERE name = ?", [name])
