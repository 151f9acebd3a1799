"""The ``GenerationStore`` contract on both stores: every case here runs on sqlite and PostgreSQL.

Claims as compare-and-swap, the ledger and its charges, budget windows checked inside the claim,
recovery of dead owners' claims: one table of cases written against the protocol only, so both
implementations are pinned by the same expectations (``test_store.py`` keeps sqlite's own: WAL,
its migrations, its file identity; ``test_pg_schema.py`` PostgreSQL's). Several stores on one
database stand in for several processes: each has its own connection.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import CostLimitExceeded
from reconciler.lifecycle import Event, Generation, State
from reconciler.money import Window
from reconciler.owners import this_owner
from reconciler.sqlite_store import SqliteStore
from reconciler.store import STALE_SUBMIT_SECONDS, GenerationStore

S = State
CLAIM_FROM = {S.PENDING: Event.SUBMIT, S.FAILED: Event.RETRY_FAILED,
              S.UNKNOWN: Event.RESUBMIT_UNKNOWN, S.MATERIALIZED: Event.REGENERATE}  # fmt: skip
SINCE = "2000-01-01T00:00:00Z"
OTHER_HOST = "some-other-host.example"


@dataclass
class Backend:
    """One store implementation on one fresh database, and a way around it to poke rows."""

    kind: str
    opener: Callable[[], Any]
    poker: Callable[[str, tuple[Any, ...]], None]
    opened: list[Any] = field(default_factory=list)

    def open(self, *, owner: str | None = None) -> Any:
        """Another process's store on the same database (``owner``: who it claims as)."""
        store = self.opener()
        if owner is not None:
            store.owner = owner
        self.opened.append(store)
        return store

    def poke(self, sql: str, *args: Any) -> None:
        """Change rows behind the stores' backs (sqlite placeholders: ``?``)."""
        self.poker(sql, args)


def sqlite_poke(path: Path) -> Callable[[str, tuple[Any, ...]], None]:
    def poke(sql: str, args: tuple[Any, ...]) -> None:
        with sqlite3.connect(path, isolation_level=None) as conn:
            conn.execute(sql, args)
        conn.close()

    return poke


def pg_poke(url: str) -> Callable[[str, tuple[Any, ...]], None]:
    def poke(sql: str, args: tuple[Any, ...]) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET search_path = reconciler")
            conn.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]

    return poke


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "state" / "reconciler.db"
        found = Backend("sqlite", lambda: SqliteStore(path), sqlite_poke(path))
    else:
        from reconciler.pg_store import PgStore

        url = request.getfixturevalue("pg_url")
        found = Backend("postgresql", lambda: PgStore(url), pg_poke(url))
    yield found
    for store in found.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> GenerationStore:
    return backend.open()  # type: ignore[no-any-return]


def generation(key: str = "k1", name: str = "hero", cost: float | None = 0.8) -> Generation:
    return Generation(spec_key=key, name=name, model="veo-3.1-fast-generate-preview",
                      resolution="720p", duration=8, cost=cost, state=S.PENDING)  # fmt: skip


def claim(
    store: GenerationStore,
    gen: Generation | None = None,
    *,
    allowed: tuple[State, ...] = (S.PENDING,),
    **kw: Any,
) -> Generation | None:
    """The write-ahead claim before a POST, from any of the ``allowed`` states."""
    gen = gen or generation()
    events = frozenset(CLAIM_FROM[state] for state in allowed)
    return store.transition(gen.spec_key, events, seed=gen, **kw)


def race(racers: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` on ``racers`` threads released together; results (or errors) by index."""
    barrier = threading.Barrier(racers)
    results: list[Any] = [None] * racers

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


# -- the claim ---------------------------------------------------------------------------------


def test_claim_inserts_a_submitting_row_owned_by_this_process(store: GenerationStore) -> None:
    """Claiming an unknown key records it as submitting, owned by this process, and charges it."""
    claimed = claim(store)
    assert claimed is not None and (claimed.state, claimed.owner) == (S.SUBMITTING, this_owner())
    assert claimed.claimed_at is not None and claimed.submitted_at is not None
    assert claimed == store.get("k1") and claimed.version == 1
    (charge,) = store.attempts()
    assert (charge["outcome"], charge["cost"], charge["owner"]) == ("submit", 0.8, this_owner())


@pytest.mark.parametrize(
    ("state", "allowed", "wins"),
    [
        (S.SUBMITTING, (S.PENDING,), False),
        (S.RUNNING, (S.PENDING, S.FAILED, S.UNKNOWN, S.MATERIALIZED), False),
        (S.SUCCEEDED, (S.PENDING, S.FAILED, S.UNKNOWN, S.MATERIALIZED), False),
        (S.FAILED, (S.PENDING,), False),
        (S.FAILED, (S.PENDING, S.FAILED), True),
        (S.UNKNOWN, (S.PENDING,), False),
        (S.UNKNOWN, (S.PENDING, S.UNKNOWN), True),
        (S.MATERIALIZED, (S.PENDING,), False),
        (S.MATERIALIZED, (S.PENDING, S.MATERIALIZED), True),
        (S.PENDING, (S.PENDING,), True),
    ],
)
def test_claim_is_a_compare_and_swap(
    store: GenerationStore, backend: Backend, state: State, allowed: tuple[State, ...], wins: bool
) -> None:
    """A claim succeeds only from an allowed state; otherwise it returns None and changes nothing."""
    claim(store)
    backend.poke("UPDATE generations SET state = ?, operation = 'operations/old'", state.value)
    claimed = claim(store, allowed=allowed)
    gen = store.get("k1")
    assert gen is not None
    if wins:
        assert claimed is not None and claimed.state == S.SUBMITTING
        assert gen.operation is None  # a new submission starts from a clean slate
    else:
        assert claimed is None and (gen.state, gen.operation) == (state, "operations/old")


@pytest.mark.parametrize("same_store", [True, False], ids=["same store", "another store"])
def test_a_second_claim_of_a_submitting_row_loses(
    store: GenerationStore, backend: Backend, same_store: bool
) -> None:
    """Claiming a key that is already being submitted returns None, from this process or another."""
    assert claim(store) is not None
    assert claim(store if same_store else backend.open()) is None
    gen = store.get("k1")
    assert gen is not None and (gen.state, gen.owner) == (S.SUBMITTING, store.owner)
    assert len(store.attempts()) == 1


@pytest.mark.parametrize("existing", [False, True], ids=["new key", "pending row"])
def test_stores_racing_for_one_key_one_wins(backend: Backend, existing: bool) -> None:
    """Eight stores (own connections, own threads) claiming one key at once: exactly one wins,
    whether the row is inserted by the race or already there; one charge in the ledger."""
    first = backend.open()
    if existing:
        claim(first)
        first.transition("k1", Event.NOT_ACCEPTED, message="429")
    stores = [backend.open() for _ in range(8)]
    results = race(len(stores), lambda i: claim(stores[i]))
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(isinstance(r, Generation) for r in results) == 1
    outcomes = [a["outcome"] for a in first.attempts()]
    assert outcomes == (["submit", "transient"] if existing else []) + ["submit"]


# -- the ledger --------------------------------------------------------------------------------


def test_attempts_one_row_per_outcome_append_only(store: GenerationStore) -> None:
    """Every outcome appends exactly one ledger row with its charge or refund; earlier rows never
    change, ids grow, and the sum is what may have been billed."""
    claim(store)
    store.transition("k1", Event.NOT_ACCEPTED, message="429", status=429, kind="transient")
    first = store.attempts("k1")
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op1")
    store.transition("k1", Event.OP_FAILED, message="internal", kind="operation_failed", budget=2,
                     expect_operation="operations/op1")  # fmt: skip
    claim(store)
    store.transition("k1", Event.AMBIGUOUS, message="connection dropped")
    claim(store, generation("k2", "intro"))
    store.transition("k2", Event.REFUSED, message="policy", status=400, kind="content_policy")

    rows = store.attempts("k1")
    assert rows[: len(first)] == first
    assert [r["outcome"] for r in rows] == ["submit", "transient", "submit", "accepted",
                                            "operation_failed", "submit", "unknown"]  # fmt: skip
    assert [r["cost"] for r in rows] == [0.8, -0.8, 0.8, None, None, 0.8, None]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert rows[1]["status"] == 429 and rows[3]["operation"] == "operations/op1"
    assert all(r["name"] == "hero" and r["owner"] == this_owner() for r in rows)
    assert [r["outcome"] for r in store.attempts()][-2:] == ["submit", "content_policy"]
    assert store.spent(SINCE) == pytest.approx(0.8 * 2)
    assert store.spent("2999-01-01T00:00:00Z") == 0.0


@pytest.mark.parametrize(
    ("event", "state", "error_kind"),
    [(Event.NOT_ACCEPTED, S.PENDING, None), (Event.REFUSED, S.FAILED, "content_policy")],
)
def test_an_answered_error_releases_the_claim(
    store: GenerationStore, event: Event, state: State, error_kind: str | None
) -> None:
    """An answered POST error releases the claim: pending to try again, or failed when final."""
    claim(store)
    store.transition("k1", event, message="no", status=400, kind="content_policy")
    gen = store.get("k1")
    assert gen is not None
    assert (gen.state, gen.owner, gen.error, gen.error_kind) == (state, None, "no", error_kind)


@pytest.mark.parametrize(
    ("retries", "states"),
    [(2, [S.PENDING, S.PENDING, S.FAILED]), (0, [S.FAILED]), (1, [S.PENDING, S.FAILED])],
)
def test_op_failures_are_counted_against_the_budget(
    store: GenerationStore, retries: int, states: list[State]
) -> None:
    """A counted operation failure goes back to pending while retries last, then fails for good;
    a filtered result fails at once; the user's retry forgives the count."""
    for expected in states:
        claim(store)
        store.transition("k1", Event.ACCEPTED, operation="operations/op")
        gen = store.transition("k1", Event.OP_FAILED, message="internal", budget=retries,
                               expect_operation="operations/op")  # fmt: skip
        assert gen is not None and gen.state == expected
    assert (gen.op_failures, gen.version) == (len(states), 3 * len(states))
    retried = claim(store, allowed=(S.FAILED,))
    assert retried is not None and retried.op_failures == 0
    store.transition("k1", Event.ACCEPTED, operation="operations/op2")
    gen = store.transition("k1", Event.OP_REJECTED, message="filtered", kind="filtered", budget=5)
    assert gen is not None and (gen.state, gen.error_kind, gen.op_failures) == (
        S.FAILED, "filtered", 0)  # fmt: skip


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
def test_a_transition_is_a_compare_and_swap(
    store: GenerationStore, expect: dict[str, Any], applies: bool
) -> None:
    """A transition applies only to the row the caller saw (version, operation, file id);
    otherwise it returns None and changes nothing, ledger included."""
    claim(store)
    store.transition("k1", Event.ACCEPTED, operation="operations/op")  # version 2
    ledger = store.attempts("k1")
    gen = store.transition("k1", Event.VANISHED, message="gone", **expect)
    now = store.get("k1")
    assert now is not None
    if applies:
        assert gen is not None and gen.state == S.UNKNOWN == now.state
        assert len(store.attempts("k1")) == len(ledger) + 1
    else:
        assert gen is None and now.state == S.RUNNING and now.version == 2
        assert store.attempts("k1") == ledger


def test_a_transition_from_the_wrong_state_changes_nothing(store: GenerationStore) -> None:
    """An event the table does not allow from the row's state is refused, atomically."""
    claim(store)
    before = store.get("k1")
    assert store.transition("k1", Event.FINISHED, operation="operations/x") is None
    assert store.transition("other", Event.ACCEPTED, operation="operations/x") is None
    assert store.get("k1") == before and store.get("other") is None


def test_every_column_round_trips(store: GenerationStore) -> None:
    """A lock's take imported with every field set reads back exactly: big sizes, times given
    by the caller (kept, not stamped over), the spec as asked, and the row's own bookkeeping;
    its ledger row names its bytes."""
    take = replace(generation(), state=S.MATERIALIZED, sha256="a" * 64, bytes=5 * 2**31,
                   video_uri="https://x/v1beta/files/f1:download", file_id="f1",
                   spec_json='{"prompt": "A harbour at dawn."}')  # fmt: skip
    done = store.transition("k1", Event.IMPORT, seed=take, operation="operations/op",
                            finished_at="2026-01-02T03:04:05Z",
                            remote_until="2026-01-04T03:04:05Z")  # fmt: skip
    assert done is not None and done == store.get("k1") and store.generations() == {"k1": done}
    assert (done.bytes, done.sha256, done.file_id, done.operation) == (
        5 * 2**31, "a" * 64, "f1", "operations/op")  # fmt: skip
    assert (done.finished_at, done.remote_until) == ("2026-01-02T03:04:05Z", "2026-01-04T03:04:05Z")
    assert done.created_at is not None and done.updated_at is not None and done.owner is None
    assert done.spec_json == take.spec_json
    (adopted,) = store.attempts("k1")  # the ledger keeps every take's bytes (reconcile takes)
    assert (adopted["outcome"], adopted["sha256"], adopted["cost"]) == ("adopted", "a" * 64, None)


# -- budget windows --------------------------------------------------------------------------


def test_a_claim_over_a_window_is_refused_and_writes_nothing(store: GenerationStore) -> None:
    """A charge that would take the ledger past a window's limit raises, leaving row and ledger
    as they were; a refund makes room again; an unknown cost cannot pass a window."""
    window = [Window("today", SINCE, 1.0)]
    assert claim(store, windows=window) is not None
    with pytest.raises(CostLimitExceeded, match="budget for today"):
        claim(store, generation("k2", "intro"), windows=window)
    assert store.get("k2") is None and len(store.attempts()) == 1
    store.transition("k1", Event.NOT_ACCEPTED, message="429")  # refunded: $0 spent
    assert claim(store, generation("k2", "intro"), windows=window) is not None
    with pytest.raises(CostLimitExceeded, match="unknown"):
        claim(store, generation("k3", "outro", cost=None), windows=window)
    assert store.spent(SINCE) == pytest.approx(0.8)


def test_racing_spenders_of_the_last_dollar_one_pays(backend: Backend) -> None:
    """Eight stores claiming eight keys with room for one video: one claim passes the window,
    every other is refused, and the ledger holds one charge."""
    window = [Window("today", SINCE, 1.0)]
    stores = [backend.open() for _ in range(8)]
    results = race(
        len(stores), lambda i: claim(stores[i], generation(f"k{i}", f"n{i}"), windows=window)
    )
    assert sum(isinstance(r, Generation) for r in results) == 1, results
    assert all(isinstance(r, (Generation, CostLimitExceeded)) for r in results), results
    assert stores[0].spent(SINCE) == pytest.approx(0.8)


# -- recovery ----------------------------------------------------------------------------------


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_owners_submit_becomes_unknown_once(backend: Backend) -> None:
    """A submitting row whose owner process on this host is gone (or whose pid was reused)
    becomes unknown, with one ledger row saying why; a live owner's is left alone."""
    host = socket.gethostname()
    dead = backend.open(owner=f"{host}:{dead_pid()}:12345")
    reused = backend.open(owner=f"{host}:{os.getpid()}:not-the-start-time")
    live = backend.open()
    claim(dead, generation("k1", "a"))
    claim(reused, generation("k2", "b"))
    claim(live, generation("k3", "c"))
    checker = backend.open()
    recovered = sorted(checker.recover_stale(), key=lambda g: g.spec_key)
    assert [(g.spec_key, g.state, g.owner) for g in recovered] == [
        ("k1", S.UNKNOWN, None), ("k2", S.UNKNOWN, None)]  # fmt: skip
    assert recovered[0].error is not None and dead.owner in recovered[0].error
    assert checker.recover_stale() == []
    assert [r["outcome"] for r in checker.attempts("k1")] == ["submit", "unknown"]
    gen = checker.get("k3")
    assert gen is not None and gen.state == S.SUBMITTING


@pytest.mark.parametrize("connected", [True, False], ids=["owner connected", "owner gone"])
@pytest.mark.parametrize("age", [10.0, STALE_SUBMIT_SECONDS + 60], ids=["recent", "old"])
def test_an_owner_on_another_host(backend: Backend, age: float, connected: bool) -> None:
    """An owner on another host cannot be checked by pid. On sqlite its claim waits out the
    limit; on PostgreSQL a claim whose owner's session is gone is stale at once, and one whose
    owner is still connected waits the same limit."""
    owner = backend.open(owner=f"{OTHER_HOST}:4242:999")
    claim(owner)
    backend.poke("UPDATE generations SET claimed_at = ?", time.time() - age)
    if not connected:
        owner.close()
    checker = backend.open()
    gen = checker.get("k1")
    assert gen is not None
    stale = age > STALE_SUBMIT_SECONDS or (backend.kind == "postgresql" and not connected)
    assert eventually(lambda: checker.is_stale(gen) == stale)
    checker.recover_stale()
    now = checker.get("k1")
    assert now is not None and now.state == (S.UNKNOWN if stale else S.SUBMITTING)


def eventually(check: Callable[[], bool], *, within: float = 5.0) -> bool:
    """True once ``check()`` is: a closed session's locks go a moment after its socket does."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
