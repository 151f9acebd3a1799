"""The state-store interface: what the engine, planner, audit and daemon may ask of state.

Two protocols, because state is of two kinds:

- ``GenerationStore``: generations and the submit ledger. What a team could share between
  machines (a second implementation, such as PostgreSQL, is a new file beside
  ``sqlite_store.py``, never an edit of the engine).
- ``TreeStore``: facts about one working tree: which file each name has, daemon metadata.

Each method's docstring states the guarantee an implementation must give. The lifecycle itself
(states, events, which moves are legal) lives in ``lifecycle``; a store applies it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .lifecycle import Event, Generation, State, Transition
from .money import Window
from .owners import owner_alive

# A submit that has not settled after this long belongs to a dead or wedged process, whatever host.
STALE_SUBMIT_SECONDS = 600.0


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


class GenerationStore(Protocol):
    """Generations (one row per spec key) and the append-only ledger of submit attempts."""

    owner: str  # who this store's claims are made as (owners.this_owner())

    def get(self, key: str) -> Generation | None:
        """One row as last committed by anyone (a committed read, never a cached one)."""
        ...

    def generations(self) -> dict[str, Generation]:
        """Every row as last committed, by spec key."""
        ...

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
        """Apply one lifecycle event as one atomic compare-and-swap; None if it does not apply.

        Inside one write transaction: read the row; pick the first of ``event`` (several: a
        claim that may start from any of them) whose source states hold the row's state
        (``State.NEW`` when there is no row, then ``seed`` is the row to insert); check the
        row's ``version``, ``operation`` and ``file_id`` against the ``expect_*`` given; write
        ``lifecycle.changes`` plus ``values``, bump the version; for a claim record this
        store's owner and the time; append the ledger row the table names (``kind`` overrides
        its outcome, with ``status`` and ``message``). Any check failing changes nothing.
        Two processes claiming one key: exactly one gets the row back.

        The ledger row of a claim charges the video's ``cost``; a refunding event (an answer that
        proved nothing was accepted) charges minus the row's cost. A charge that would take the
        ledger's sum since a window's start above its limit raises ``CostLimitExceeded``, checked
        in the same transaction, and nothing is written.
        """
        ...

    def spent(self, since: str) -> float:
        """The ledger's sum of charges since ``since`` (an ISO time), committed."""
        ...

    def is_stale(self, gen: Generation) -> bool:
        """Whether a ``submitting`` row's owner is gone (or, unreachable, silent too long)."""
        ...

    def recover_stale(self) -> list[Generation]:
        """Turn every stale ``submitting`` row into ``unknown`` (event AMBIGUOUS), atomically
        per row; returns the rows recovered. The POST may or may not have gone out."""
        ...

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        """The ledger, oldest first: rows are only ever appended."""
        ...

    def check(self) -> None:
        """Raise StateError when writes could no longer last (the db was deleted or replaced)."""
        ...

    def close(self) -> None: ...


class TreeStore(Protocol):
    """What this working tree holds: outputs by name, and the daemon's metadata."""

    def outputs(self) -> dict[str, Output]:
        """Every output row, committed."""
        ...

    def output(self, name: str) -> Output | None: ...

    def set_output(self, out: Output) -> None:
        """Insert or replace the row of ``out.name``, committed on return."""
        ...

    def delete_output(self, name: str) -> None: ...

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def exclusive(self) -> AbstractContextManager[Any]:
        """Hold this tree's write lock: of two writers of the lock file, the later one to take it
        is also the one that reads the latest state."""
        ...

    def check(self) -> None:
        """Raise StateError when writes could no longer last (the db was deleted or replaced)."""
        ...

    def close(self) -> None: ...


def stale_claim(owner: str | None, claimed_at: float | None) -> bool:
    """A claim whose owner is dead on this host, or elsewhere and older than the limit."""
    alive = owner_alive(owner)
    expired = time.time() - (claimed_at or 0) > STALE_SUBMIT_SECONDS
    return alive is False or (alive is None and expired)


def expected(
    current: Generation | None, version: int | None, operation: str | None, file_id: str | None
) -> bool:
    """The compare half of a transition's compare-and-swap: the row is still the one the caller
    saw. Shared by every store, so a claim means the same on sqlite and PostgreSQL."""
    if current is None:
        return operation is None and file_id is None
    return (
        (version is None or current.version == version)
        and (operation is None or current.operation == operation)
        and (file_id is None or current.file_id == file_id)
    )


def charge(move: Transition, change: dict[str, Any], current: Generation | None) -> float | None:
    """What a transition's ledger row charges: a claim its video's estimate, a refund minus the
    row's last charge; nothing for any other event."""
    if move.claims:
        cost = change.get("cost", current.cost if current else None)
        return float(cost) if cost is not None else None
    if move.refunds and current is not None and current.cost is not None:
        return -float(current.cost)
    return None


def stale_message(owner: str | None) -> str:
    return (
        f"the process submitting it ({owner}) stopped before the provider's answer was "
        "recorded; the job may exist and be billed"
    )


def recover_stale(store: GenerationStore, submitting: Iterable[Generation]) -> list[Generation]:
    """Record each dead owner's submit among ``submitting`` as ``unknown``, each one a
    compare-and-swap (a row another process moved on meanwhile is left alone); what changed."""
    recovered = []
    for gen in submitting:
        if gen.state is State.SUBMITTING and store.is_stale(gen):
            done = store.transition(
                gen.spec_key, Event.AMBIGUOUS, expect_version=gen.version,
                message=stale_message(gen.owner),
            )  # fmt: skip
            if done is not None:
                recovered.append(done)
    return recovered


def as_seen(store: GenerationStore, keys: Iterable[str] | None = None) -> dict[str, Generation]:
    """Generations with dead owners' submits shown as ``unknown``, without writing anything:
    what ``plan`` and ``status`` show, and what the next ``apply`` will record. With ``keys``,
    only those rows (``watch`` planning the specs an edit touched)."""
    if keys is None:
        gens = store.generations()
    else:
        gens = {k: g for k in set(keys) if (g := store.get(k)) is not None}
    for key, gen in gens.items():
        if gen.state is State.SUBMITTING and store.is_stale(gen):
            gens[key] = replace(
                gen, state=State.UNKNOWN, error=stale_message(gen.owner), error_kind="unknown"
            )
    return gens
