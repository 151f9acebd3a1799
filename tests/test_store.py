"""The sqlite state store on real files: migrations, WAL, transitions as CAS, the ledger, recovery.

Two ``SqliteStore`` objects on one file stand in for two processes (a CI apply beside a ``watch``):
each has its own connection, so sqlite's own locking is what is under test, not anything in Python.
Which moves are legal is the lifecycle table's business (``test_lifecycle.py``); here it is how the
store applies one: atomically, compare-and-swap, with its ledger row.
"""

from __future__ import annotations

import gc
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import open_files_under

from reconciler.errors import StateError
from reconciler.lifecycle import Event, Generation, State
from reconciler.owners import owner_alive, this_owner
from reconciler.sqlite_store import SqliteStore as Store
from reconciler.store import STALE_SUBMIT_SECONDS, Output

FAILED, MATERIALIZED, PENDING, UNKNOWN = (
    State.FAILED,
    State.MATERIALIZED,
    State.PENDING,
    State.UNKNOWN,
)
RUNNING, SUBMITTING, SUCCEEDED = State.RUNNING, State.SUBMITTING, State.SUCCEEDED
# The claim events a state may be claimed from on the user's word, as the engine builds them.
CLAIM_FROM = {
    PENDING: Event.SUBMIT,
    FAILED: Event.RETRY_FAILED,
    UNKNOWN: Event.RESUBMIT_UNKNOWN,
    MATERIALIZED: Event.REGENERATE,
}


def claim(
    store: Store,
    gen: Generation | None = None,
    *,
    allowed: tuple[State, ...] = (PENDING,),
    expect_version: int | None = None,
) -> Generation | None:
    """Claim a key from any of the ``allowed`` states: the write-ahead step before a POST."""
    gen = gen or generation()
    events = frozenset(CLAIM_FROM[state] for state in allowed)
    return store.transition(gen.spec_key, events, seed=gen, expect_version=expect_version)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "reconciler.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def generation(key: str = "k1", name: str = "hero") -> Generation:
    return Generation(
        spec_key=key,
        name=name,
        model="veo-3.1-fast-generate-preview",
        resolution="720p",
        duration=8,
        cost=0.8,
        state=PENDING,
    )


def raw(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read or poke the db file with plain sqlite3, outside the Store under test."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- schema ------------------------------------------------------------------------------------


def test_migrations_recorded_and_rerun_is_a_no_op(db_path: Path) -> None:
    """Each migration is recorded once; opening the db again applies nothing and keeps the data."""
    first = Store(db_path)
    assert claim(first) is not None
    first.close()
    before = raw(db_path, "SELECT name, applied_at FROM migrations ORDER BY name")
    assert [name for name, _ in before] == [
        "0001_initial",
        "0002_row_version",
        "0003_ledger_cost",
        "0004_remote_until",
        "0005_spec_json",
        "0006_ledger_takes",
    ]

    again = Store(db_path)
    try:
        assert raw(db_path, "SELECT name, applied_at FROM migrations ORDER BY name") == before
        gen = again.get("k1")
        assert gen is not None and gen.state == SUBMITTING
    finally:
        again.close()


def test_a_refused_db_is_closed_at_once(db_path: Path) -> None:
    """Refusing a db written by a newer version closes it at once, not whenever the GC runs."""
    Store(db_path).close()
    raw(db_path, "INSERT INTO migrations VALUES ('0099_future', 'then')")
    gc.disable()  # what holds the connection is a reference cycle: keep the GC from hiding it
    try:
        with pytest.raises(StateError, match="newer reconciler"):
            Store(db_path)
        assert open_files_under(db_path.parent) == []
    finally:
        gc.enable()


def first_schema_by_sqlite_utils(conn: sqlite3.Connection) -> None:
    """Migration 0001 as every db before this one was made: through sqlite_utils (the code as it
    was). The store now writes it in plain SQL; these are the statements it must match."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
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


def first_schema_db(path: Path) -> None:
    """A db as an old release left it: 0001 applied through sqlite_utils, nothing after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    # The store made its migrations table first, then ran 0001.
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    first_schema_by_sqlite_utils(conn)
    conn.execute("INSERT INTO migrations VALUES ('0001_initial', 'then')")
    conn.commit()
    conn.close()


MASTER = "SELECT * FROM sqlite_master ORDER BY rowid"


def schema(path: Path) -> list[tuple[object, ...]]:
    return raw(path, MASTER)


def test_a_new_db_has_the_schema_sqlite_utils_made(tmp_path: Path) -> None:
    """A db created now (0001 in plain SQL) and one created by an earlier release (0001 through
    sqlite_utils) then migrated: the same sqlite_master, row for row and byte for byte."""
    Store(tmp_path / "new" / "state.db").close()
    first_schema_db(tmp_path / "old" / "state.db")
    Store(tmp_path / "old" / "state.db").close()
    new, old = schema(tmp_path / "new" / "state.db"), schema(tmp_path / "old" / "state.db")
    assert len(new) == 12 and new[0][1] == "migrations"
    assert new == old
    # And migration 0001 alone, statement for statement, beside sqlite_utils'.
    from reconciler.sqlite_store import _m1_initial

    with closing(sqlite3.connect(":memory:")) as mine, closing(sqlite3.connect(":memory:")) as old:
        _m1_initial(mine)
        first_schema_by_sqlite_utils(old)
        assert mine.execute(MASTER).fetchall() == old.execute(MASTER).fetchall()


def test_a_db_from_the_first_schema_is_upgraded_in_place(db_path: Path) -> None:
    """A db that only has 0001 gains the row version column, its rows intact, and claims use it."""
    first_schema_db(db_path)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "INSERT INTO generations (spec_key, name, model, resolution, duration, state, "
            "op_failures) VALUES ('k1', 'hero', 'm', '720p', 8, 'pending', 0)"
        )
        conn.commit()
    upgraded = Store(db_path)
    try:
        gen = upgraded.get("k1")
        assert gen is not None and gen.state == PENDING and gen.version == 0
        assert claim(upgraded, expect_version=1) is None
        claimed = claim(upgraded, expect_version=0)
        assert claimed is not None and claimed.state == SUBMITTING and claimed.version == 1
    finally:
        upgraded.close()


def test_wal_mode(store: Store, db_path: Path) -> None:
    """The db runs in WAL mode, so readers never wait for a writer."""
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_each_transaction_commits_at_its_own_durability(store: Store) -> None:
    """synchronous is switched only when it changes: whatever ran before, a durable transaction
    commits with FULL (its commit fsyncs the WAL) and a relaxed one with NORMAL."""
    for durable in [True, True, False, False, True, False, True]:
        with store.tx(durable=durable) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == (2 if durable else 1)


@pytest.mark.parametrize("returning", [True, False], ids=["RETURNING", "sqlite before 3.35"])
def test_a_transition_returns_the_row_it_left(
    store: Store, db_path: Path, returning: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row a transition hands back is the row in the db, whether sqlite returned it from the
    write (3.35+) or it was read again inside the transaction (older sqlite)."""
    import reconciler.sqlite_store as sqlite_store

    if not returning:
        monkeypatch.setattr(sqlite_store, "_RETURNING", "")
    elif not sqlite_store._RETURNING:
        pytest.skip("this sqlite has no RETURNING")  # nothing to hold the fallback to
    moves = [
        lambda: claim(store),
        lambda: store.transition("k1", Event.ACCEPTED, operation="operations/1"),
        lambda: store.transition("k1", Event.FINISHED, video_uri="https://v/1", file_id="f1"),
        lambda: store.transition("k1", Event.DOWNLOADED, sha256="ab" * 32, bytes=10),
    ]
    for move in moves:
        moved = move()
        assert moved is not None and moved == store.get("k1")
    assert moved.state is MATERIALIZED and moved.version == 4 and moved.op_failures == 0
    (row,) = raw(db_path, "SELECT state, version FROM generations")
    assert row == ("materialized", 4)
    # A whole-number cost comes back as the column keeps it (a float), as a read gives it.
    whole = store.transition("k2", Event.SUBMIT, seed=replace(generation("k2", "b"), cost=3))
    assert whole is not None and whole.cost == 3.0 and type(whole.cost) is float
    again = store.get("k2")
    assert again is not None and type(again.claimed_at) is type(whole.claimed_at) is float


# -- the claim ---------------------------------------------------------------------------------


def test_claim_inserts_a_submitting_row_owned_by_this_process(store: Store) -> None:
    """Claiming an unknown key records it as submitting, owned by this process, before any POST."""
    claimed = claim(store)
    assert claimed is not None
    assert (claimed.state, claimed.owner) == (SUBMITTING, this_owner())
    assert claimed.claimed_at is not None and claimed.submitted_at is not None
    # A claim is a charge: the POST it precedes may be billed, answered or not.
    (charge,) = store.attempts()
    assert (charge["outcome"], charge["cost"], charge["owner"]) == ("submit", 0.8, this_owner())


@pytest.mark.parametrize(
    ("state", "allowed", "wins"),
    [
        (SUBMITTING, (PENDING,), False),
        (RUNNING, (PENDING, FAILED, UNKNOWN, MATERIALIZED), False),
        (SUCCEEDED, (PENDING, FAILED, UNKNOWN, MATERIALIZED), False),
        (FAILED, (PENDING,), False),
        (FAILED, (PENDING, FAILED), True),
        (UNKNOWN, (PENDING,), False),
        (UNKNOWN, (PENDING, UNKNOWN), True),
        (MATERIALIZED, (PENDING,), False),
        (MATERIALIZED, (PENDING, MATERIALIZED), True),
        (PENDING, (PENDING,), True),
    ],
)
def test_claim_is_a_compare_and_swap(
    store: Store, db_path: Path, state: str, allowed: tuple[str, ...], wins: bool
) -> None:
    """A claim succeeds only from an allowed state; otherwise it returns None and changes nothing."""
    claim(store)
    raw(db_path, "UPDATE generations SET state = ?, operation = 'operations/old'", (state,))
    claimed = claim(store, allowed=allowed)
    gen = store.get("k1")
    assert gen is not None
    if wins:
        assert claimed is not None and claimed.state == SUBMITTING
        assert gen.operation is None  # a new submission starts from a clean slate
    else:
        assert claimed is None
        assert (gen.state, gen.operation) == (state, "operations/old")


@pytest.mark.parametrize("same_store", [True, False], ids=["same store", "another store"])
def test_second_claim_of_a_submitting_row_loses(
    store: Store, db_path: Path, same_store: bool
) -> None:
    """Claiming a key that is already being submitted returns None, from this process or another."""
    assert claim(store) is not None
    other = store if same_store else Store(db_path)
    try:
        assert claim(other) is None
    finally:
        if not same_store:
            other.close()
    gen = store.get("k1")
    assert gen is not None and (gen.state, gen.owner) == (SUBMITTING, store.owner)


def test_two_stores_racing_for_one_key_one_wins(db_path: Path) -> None:
    """Several Stores (own connections, own threads) claiming one key at once: exactly one wins."""
    Store(db_path).close()  # schema in place before the race
    racers = 4
    barrier = threading.Barrier(racers)
    results: list[Generation | BaseException | None] = [None] * racers

    def race(i: int) -> None:
        s = Store(db_path)  # sqlite connections belong to the thread that opened them
        try:
            barrier.wait(timeout=10)
            results[i] = claim(s)
        except BaseException as exc:
            results[i] = exc
        finally:
            s.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert sum(isinstance(r, Generation) for r in results) == 1
    assert raw(db_path, "SELECT state FROM generations") == [(SUBMITTING,)]


# -- the ledger ----------------------------------------------------------------------------------


def test_attempts_one_row_per_outcome_append_only(store: Store) -> None:
    """Every outcome appends exactly one attempts row; earlier rows never change."""
    claim(store)
    store.transition("k1", Event.NOT_ACCEPTED, message="429", status=429, kind="transient")
    first = store.attempts("k1")
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op1")
    store.transition(
        "k1", Event.OP_FAILED, message="internal", kind="operation_failed", budget=2,
        expect_operation="operations/op1",
    )  # fmt: skip
    claim(store)
    store.transition("k1", Event.AMBIGUOUS, message="connection dropped")
    claim(store, generation("k2", "intro"))
    store.transition("k2", Event.REFUSED, message="policy", status=400, kind="content_policy")

    rows = store.attempts("k1")
    assert rows[: len(first)] == first
    assert [r["outcome"] for r in rows] == [
        *("submit", "transient"),  # a charge, refunded: the 429 proved nothing was accepted
        *("submit", "accepted", "operation_failed"),
        *("submit", "unknown"),  # a charge that stays: the job may exist
    ]
    assert [r["cost"] for r in rows] == [0.8, -0.8, 0.8, None, None, 0.8, None]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert rows[1]["status"] == 429 and rows[3]["operation"] == "operations/op1"
    assert all(r["name"] == "hero" and r["owner"] == this_owner() for r in rows)
    assert [r["outcome"] for r in store.attempts()] == [
        *(r["outcome"] for r in rows),
        "submit",
        "content_policy",
    ]
    assert store.spent("2000-01-01T00:00:00Z") == pytest.approx(0.8 * 2 + 0.8 - 0.8)


@pytest.mark.parametrize(
    ("event", "state", "error_kind"),
    [(Event.NOT_ACCEPTED, PENDING, None), (Event.REFUSED, FAILED, "content_policy")],
)
def test_not_accepted_goes_back_to_pending_or_fails(
    store: Store, event: Event, state: str, error_kind: str | None
) -> None:
    """An answered POST error releases the claim: pending to try again, or failed when final."""
    claim(store)
    store.transition("k1", event, message="no", status=400, kind="content_policy")
    gen = store.get("k1")
    assert gen is not None
    assert (gen.state, gen.owner, gen.error, gen.error_kind) == (state, None, "no", error_kind)


@pytest.mark.parametrize(
    ("retries", "states"),
    [
        (2, [PENDING, PENDING, FAILED]),
        (0, [FAILED]),
        (1, [PENDING, FAILED]),
    ],
)
def test_op_failures_are_counted_against_the_budget(
    store: Store, retries: int, states: list[str]
) -> None:
    """A counted operation failure goes back to pending while retries last, then fails for good."""
    got = []
    for _ in states:
        claim(store)
        store.transition("k1", Event.ACCEPTED, operation="operations/op")
        gen = store.transition(
            "k1", Event.OP_FAILED, message="internal", kind="operation_failed", budget=retries,
            expect_operation="operations/op",
        )  # fmt: skip
        assert gen is not None
        got.append(gen.state)
    assert got == states
    gen = store.get("k1")
    assert gen is not None and (gen.state, gen.op_failures) == (states[-1], len(states))


def test_op_rejected_is_final_at_once(store: Store) -> None:
    """A filtered or refused result fails at once, whatever retries remain, and counts nothing."""
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op")
    gen = store.transition("k1", Event.OP_REJECTED, message="filtered", kind="filtered", budget=5)
    assert gen is not None and gen.state == FAILED
    assert (gen.error_kind, gen.op_failures) == ("filtered", 0)


def test_a_users_retry_clears_the_failure_count(store: Store) -> None:
    """Claiming a failed row on the user's word (--retry-failed) starts a fresh failure budget;
    a plain resubmit of a pending row keeps the count."""
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op")
    store.transition("k1", Event.OP_FAILED, message="x", budget=1)
    pending = store.get("k1")
    assert pending is not None and (pending.state, pending.op_failures) == (PENDING, 1)
    claimed = claim(store)
    assert claimed is not None and claimed.op_failures == 1
    store.transition("k1", Event.ACCEPTED, operation="operations/op2")
    store.transition("k1", Event.OP_FAILED, message="x", budget=1)
    failed = store.get("k1")
    assert failed is not None and (failed.state, failed.op_failures) == (FAILED, 2)
    retried = claim(store, allowed=(FAILED,))
    assert retried is not None and (retried.state, retried.op_failures) == (SUBMITTING, 0)


@pytest.mark.parametrize(
    ("expect", "applies"),
    [
        (dict(expect_operation="operations/op"), True),
        (dict(expect_operation="operations/other"), False),
        (dict(expect_version=2), True),
        (dict(expect_version=1), False),
        (dict(expect_file_id="f1"), False),
    ],
)
def test_transition_is_a_compare_and_swap(
    store: Store, expect: dict[str, object], applies: bool
) -> None:
    """A transition applies only to the row the caller saw (version, operation, file id);
    otherwise it returns None and changes nothing, ledger included."""
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op")  # version 2
    ledger = store.attempts("k1")
    gen = store.transition("k1", Event.VANISHED, message="gone", **expect)  # type: ignore[arg-type]
    now = store.get("k1")
    assert now is not None
    if applies:
        assert gen is not None and gen.state == UNKNOWN == now.state
        assert len(store.attempts("k1")) == len(ledger) + 1
    else:
        assert gen is None and now.state == RUNNING and now.version == 2
        assert store.attempts("k1") == ledger


@pytest.mark.parametrize(
    ("event", "state"), [(Event.ACCEPTED, PENDING), (Event.FINISHED, SUBMITTING)]
)
def test_a_transition_from_the_wrong_state_changes_nothing(
    store: Store, event: Event, state: State
) -> None:
    """An event whose table row does not allow the current state is refused, atomically."""
    claim(store)
    if state is PENDING:
        store.transition("k1", Event.NOT_ACCEPTED, message="503")
    before = store.get("k1")
    assert store.transition("k1", event, operation="operations/x") is None
    assert store.get("k1") == before


def test_outputs_round_trip(store: Store) -> None:
    """An output row is stored, replaced per name and deleted."""
    out = Output("hero", "k1", "videos/hero.aaaa.mp4", "a" * 64, 10, 10, 1, "2026-01-01T00:00:00Z")
    store.set_output(out)
    newer = Output(
        "hero", "k2", "videos/hero.bbbb.mp4", "b" * 64, 20, 20, 2, "2026-01-02T00:00:00Z"
    )
    store.set_output(newer)
    assert store.outputs() == {"hero": newer}
    store.delete_output("hero")
    assert store.outputs() == {}


# -- recovery ----------------------------------------------------------------------------------


def claimed_by(db_path: Path, owner: str, key: str = "k1") -> None:
    """Claim ``key`` as the process ``owner`` would have (a Store under another owner's name)."""
    other = Store(db_path)
    other.owner = owner
    try:
        assert claim(other, generation(key, f"name-{key}")) is not None
    finally:
        other.close()


def test_recover_stale_turns_a_dead_owners_submit_into_unknown(store: Store, db_path: Path) -> None:
    """A submitting row whose owner process is gone becomes unknown, with a ledger row saying why."""
    owner = f"{socket.gethostname()}:{dead_pid()}:12345"
    assert owner_alive(owner) is False
    claimed_by(db_path, owner)

    (recovered,) = store.recover_stale()
    assert (recovered.spec_key, recovered.state, recovered.owner) == ("k1", UNKNOWN, None)
    assert recovered.error is not None and owner in recovered.error
    assert [r["outcome"] for r in store.attempts("k1")] == ["submit", "unknown"]
    assert store.recover_stale() == []  # nothing left to recover; no second ledger row
    assert len(store.attempts("k1")) == 2


def test_recover_stale_leaves_a_live_owners_submit_alone(store: Store, db_path: Path) -> None:
    """A submitting row owned by a live process stays submitting."""
    claim(store)
    assert owner_alive(store.owner) is True
    assert store.recover_stale() == []
    gen = store.get("k1")
    assert gen is not None and (gen.state, gen.owner) == (SUBMITTING, this_owner())
    assert [r["outcome"] for r in store.attempts()] == ["submit"]


def test_recover_stale_does_not_trust_a_reused_pid(store: Store, db_path: Path) -> None:
    """A live pid with another start time is not the owner: its submit is unknown."""
    claimed_by(db_path, f"{socket.gethostname()}:{os.getpid()}:not-the-start-time")
    (recovered,) = store.recover_stale()
    assert recovered.state == UNKNOWN


@pytest.mark.parametrize(
    ("age", "state"),
    [(10.0, SUBMITTING), (STALE_SUBMIT_SECONDS + 60, UNKNOWN)],
    ids=["recent", "stale"],
)
def test_recover_stale_other_host(store: Store, db_path: Path, age: float, state: str) -> None:
    """An owner on another host cannot be checked: its submit is left alone until it is stale."""
    claimed_by(db_path, "some-other-host.example:4242:999")
    raw(db_path, "UPDATE generations SET claimed_at = ?", (time.time() - age,))
    store.recover_stale()
    gen = store.get("k1")
    assert gen is not None and gen.state == state


# -- concurrency -------------------------------------------------------------------------------


def test_reader_reads_while_a_writer_holds_the_write_lock(db_path: Path) -> None:
    """With a write transaction open, another Store still reads the last committed state at once."""
    writer = Store(db_path)
    reader = Store(db_path, busy_timeout=0.2)
    try:
        claim(writer)
        with writer.tx() as conn:
            conn.execute("UPDATE generations SET state = ? WHERE spec_key = 'k1'", [RUNNING])
            started = time.monotonic()
            gens = reader.generations()
            assert time.monotonic() - started < 0.2
            assert gens["k1"].state == SUBMITTING  # the uncommitted change is not visible
            # ...while a second writer has to wait for the first.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                claim(reader, generation("k2"))
        gen = reader.get("k1")
        assert gen is not None and gen.state == RUNNING
    finally:
        reader.close()
        writer.close()


def test_an_up_to_date_db_opens_while_a_writer_holds_the_write_lock(db_path: Path) -> None:
    """Opening a db whose migrations are all applied takes no write lock: a read-only `plan` or
    `status` started while an apply holds its write transaction reads at once, where it used to
    wait for the lock (up to busy_timeout, then fail) only to create the migrations table."""
    writer = Store(db_path)
    try:
        claim(writer)
        with writer.tx():
            reader = Store(db_path, busy_timeout=0.2, create=False)
            try:
                assert reader.generations()["k1"].state == SUBMITTING
            finally:
                reader.close()
    finally:
        writer.close()


def test_no_db_is_opened_or_migrated_through_sqlite_utils(tmp_path: Path) -> None:
    """sqlite_utils costs 60-110 ms to import (its plugin scan included): a db up to date, a new
    one, an old one to migrate and a read-only command's stand-in for a missing one are all
    opened, migrated and read with sqlite3 alone."""
    Store(tmp_path / "state.db").close()
    first_schema_db(tmp_path / "old.db")
    code = (
        "import sys; from pathlib import Path; from reconciler.sqlite_store import SqliteStore\n"
        "store = SqliteStore(Path(sys.argv[1]), create=sys.argv[2] == 'create')\n"
        "store.generations(); store.outputs(); store.attempts()\n"
        "store.spent('2026-01-01T00:00:00Z'); store.close()\n"
        "print('sqlite_utils' in sys.modules)"
    )
    for name, create in [("state.db", "create"), ("new.db", "create"), ("old.db", "create"),
                         ("missing.db", "read-only")]:  # fmt: skip
        ran = subprocess.run([sys.executable, "-c", code, str(tmp_path / name), create],
                             capture_output=True, text=True, check=True)  # fmt: skip
        assert ran.stdout.strip() == "False", (name, ran.stderr)
    assert not (tmp_path / "missing.db").exists()
    assert schema(tmp_path / "old.db") == schema(tmp_path / "new.db")


def test_now_is_written_in_utc_to_the_second_across_a_second_boundary() -> None:
    """The stamp every transition writes (formatted once a second, then reused) is the UTC time
    datetime gives, to the second, on either side of a second's turn."""
    from datetime import UTC, datetime

    from reconciler.owners import now_iso

    def utc() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    seen = set()
    deadline = time.monotonic() + 1.2  # at least one second turns
    while time.monotonic() < deadline:
        before, stamp, after = utc(), now_iso(), utc()
        assert before <= stamp <= after, (before, stamp, after)
        seen.add(stamp)
        time.sleep(0.01)
    assert len(seen) >= 2
