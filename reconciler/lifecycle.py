"""The generation lifecycle, in one table: the one place a reader learns the states.

A generation is one spec key's paid video. Its row moves through the states below; each move is
an ``Event`` whose allowed source states, target state and effects on the row are data in
``TRANSITIONS``. The store applies one event as one compare-and-swap (``StateStore.transition``)
that also appends the ledger row; this module only computes, as kopf's
``HandlerState.with_outcome`` does: a pure function from a row and an event to the row's changes,
saving kept apart. ``next_step`` is the engine's loop written the same way: from a row (and
whether its bytes are cached) to what one key's task does next.

::

    new ──SUBMIT──▶ submitting ──ACCEPTED──▶ running ──FINISHED──▶ succeeded ──DOWNLOADED──▶ materialized
         (write-ahead:  │  ├─NOT_ACCEPTED─▶ pending (an answer proved nothing was accepted)
          committed     │  ├─REFUSED──────▶ failed  (400, content policy: final)
          before the    │  └─AMBIGUOUS────▶ unknown (sent, answer lost: only the user resubmits)
          POST)         running ──OP_FAILED──▶ pending while the retry budget lasts, then failed
                        running ──OP_REJECTED─▶ failed (filtered, or the poll refused)
                        running ──VANISHED───▶ unknown (the provider forgot the operation)
    failed/unknown/materialized ──RETRY_FAILED / RESUBMIT_UNKNOWN / REPLACE / REGENERATE──▶ submitting
                                  (the user's word, or bytes lost everywhere)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .facts import REMOTE_FILE_SECONDS

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z", re.ASCII)


class State(StrEnum):
    """Where a generation row stands. ``NEW`` is never stored: it is the absence of a row."""

    NEW = "new"  # no row yet
    PENDING = "pending"  # known, nothing sent (or an answered error proved nothing was accepted)
    SUBMITTING = "submitting"  # committed before the POST; owned by the process sending it
    RUNNING = "running"  # operation name committed: poll it, never resubmit
    SUCCEEDED = "succeeded"  # the provider has a video for it; download next
    MATERIALIZED = "materialized"  # verified bytes in the object cache
    FAILED = "failed"  # final until the spec changes or the user asks for a retry
    UNKNOWN = "unknown"  # the POST may have been accepted: only the user may resubmit


IN_FLIGHT = frozenset({State.SUBMITTING, State.RUNNING, State.SUCCEEDED})
ALL_STATES = frozenset(State)


class Event(StrEnum):
    """Everything that moves a row; see ``TRANSITIONS`` for where from and where to."""

    # Write-ahead claims, committed before the POST (the only paid call).
    SUBMIT = "submit"
    RETRY_FAILED = "retry_failed"  # --retry-failed
    RESUBMIT_UNKNOWN = "resubmit_unknown"  # --resubmit-unknown: may pay twice
    REPLACE = "replace"  # --replace
    REGENERATE = "regenerate"  # the plan found the bytes lost everywhere
    # What the POST's answer (or its absence) proved.
    ACCEPTED = "accepted"
    NOT_ACCEPTED = "not_accepted"  # the answer proved nothing was accepted: refunded
    SERVER_ERROR = "server_error"  # a 5xx retried on the user's word: maybe billed, not refunded
    REFUSED = "refused"
    AMBIGUOUS = "ambiguous"  # dropped, timed out, cancelled, or its sender died
    # The operation.
    FINISHED = "finished"
    OP_FAILED = "op_failed"  # done with an error: not billed, resubmitted while the budget lasts
    OP_REJECTED = "op_rejected"  # done without a video for good (filtered), or the poll refused
    VANISHED = "vanished"  # polls keep answering 404
    LOCKED_GONE = "locked_gone"  # ...for a lock's finished take: it is gone, nothing is unknown
    # The bytes.
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    REMOTE_GONE = "remote_gone"  # cached bytes lost and the provider's file too
    RENEWED = "renewed"  # the provider's copy was used as a source: it is kept 2 more days
    # Operations that exist already: the user's word, or a lock file.
    ADOPT = "adopt"  # reconcile resolve
    FORCE_ADOPT = "force_adopt"  # reconcile resolve --force
    IMPORT = "import"  # a lock's take whose bytes are here (a fresh clone, a pull)
    FETCH_LOCKED = "fetch_locked"  # a lock's take whose bytes are only with the provider


class ErrorNote(StrEnum):
    """What an event does to the row's ``error``/``error_kind`` columns."""

    KEEP = "keep"
    CLEAR = "clear"  # success: no error any more
    MESSAGE = "message"  # a passing trouble: the message, no kind
    RECORD = "record"  # an outcome that stands: the message and its kind


@dataclass(frozen=True)
class Transition:
    sources: frozenset[State]
    target: State | None  # None: the row keeps its state (only its fields change)
    error: ErrorNote = ErrorNote.KEEP
    ledger: str | None = None  # outcome of the ledger row it appends (None: no row)
    spent: State | None = None  # the target once the retry budget is spent
    claims: bool = False  # write-ahead: this process owns the row until the answer; a charge
    refunds: bool = False  # the answer proved nothing was accepted: the claim's charge is undone
    fresh_budget: bool = False  # the user's word: operation failures so far are forgiven
    replaces: bool = False  # the whole row is rewritten from the given seed
    clears: tuple[str, ...] = ()  # columns reset to NULL
    stamps: tuple[str, ...] = ()  # time columns set to now


def _claim(*sources: State, user: bool = False) -> Transition:
    """A write-ahead claim: owned by this process, a clean slate for the new operation;
    ``user``: taken on the user's word, which forgives the operation failures counted so far."""
    return Transition(
        frozenset(sources), State.SUBMITTING, ledger="submit", claims=True, fresh_budget=user,
        clears=("operation", "video_uri", "file_id", "sha256", "bytes"), stamps=("submitted_at",),
    )  # fmt: skip


def _s(*states: State) -> frozenset[State]:
    return frozenset(states)


_S, _E = State, ErrorNote
# What a lock's take may replace: anything settled (a pulled lock wins over stale local state),
# never a generation in flight.
_FOLLOWABLE = _s(_S.NEW, _S.PENDING, _S.FAILED, _S.UNKNOWN, _S.MATERIALIZED)

# The lifecycle. Columns: sources, target, what happens to the error, the ledger row appended.
# DOWNLOADED and the adoptions append the take's bytes (sha256) too: every take a spec ever had
# stays listed (`reconcile takes NAME`) even after a replace overwrites the generation's row.
# Every claim appends a "submit" row charging the video's estimated cost (a POST that may be
# billed); NOT_ACCEPTED and REFUSED append a refund, since their answer proved nothing was taken.
# ACCEPTED is allowed from unknown too: a claim judged stale elsewhere may still get its answer,
# and a known operation name is always worth more than "unknown".
# fmt: off
TRANSITIONS: dict[Event, Transition] = {
    Event.SUBMIT:           _claim(_S.NEW, _S.PENDING),
    Event.RETRY_FAILED:     _claim(_S.FAILED, user=True),
    Event.RESUBMIT_UNKNOWN: _claim(_S.UNKNOWN, user=True),
    Event.REPLACE:          _claim(_S.MATERIALIZED, _S.FAILED, _S.UNKNOWN, user=True),
    Event.REGENERATE:       _claim(_S.MATERIALIZED, user=True),
    Event.ACCEPTED:         Transition(_s(_S.SUBMITTING, _S.UNKNOWN), _S.RUNNING, _E.KEEP, "accepted", clears=("error",)),
    Event.NOT_ACCEPTED:     Transition(_s(_S.SUBMITTING), _S.PENDING, _E.MESSAGE, "transient", refunds=True),
    Event.SERVER_ERROR:     Transition(_s(_S.SUBMITTING), _S.PENDING, _E.MESSAGE, "server_error"),
    Event.REFUSED:          Transition(_s(_S.SUBMITTING), _S.FAILED, _E.RECORD, "rejected", refunds=True),
    Event.AMBIGUOUS:        Transition(_s(_S.SUBMITTING), _S.UNKNOWN, _E.RECORD, "unknown"),
    Event.FINISHED:         Transition(_s(_S.RUNNING), _S.SUCCEEDED, _E.CLEAR, stamps=("finished_at",)),
    Event.OP_FAILED:        Transition(_s(_S.RUNNING, _S.SUCCEEDED), _S.PENDING, _E.RECORD, "operation_failed", spent=_S.FAILED, stamps=("finished_at",)),
    Event.OP_REJECTED:      Transition(_s(_S.RUNNING, _S.SUCCEEDED), _S.FAILED, _E.RECORD, "filtered", stamps=("finished_at",)),
    Event.VANISHED:         Transition(_s(_S.RUNNING), _S.UNKNOWN, _E.RECORD, "unknown"),
    Event.LOCKED_GONE:      Transition(_s(_S.RUNNING), _S.PENDING, _E.MESSAGE, "expired"),
    Event.DOWNLOADED:       Transition(_s(_S.SUCCEEDED, _S.MATERIALIZED), _S.MATERIALIZED, _E.CLEAR, "take"),
    Event.DOWNLOAD_FAILED:  Transition(_s(_S.SUCCEEDED), _S.FAILED, _E.RECORD, "expired", stamps=("finished_at",)),
    Event.REMOTE_GONE:      Transition(_s(_S.MATERIALIZED), _S.MATERIALIZED, clears=("file_id", "video_uri", "remote_until")),
    Event.RENEWED:          Transition(_s(_S.SUCCEEDED, _S.MATERIALIZED), None),
    Event.ADOPT:            Transition(_s(_S.NEW, _S.PENDING, _S.UNKNOWN, _S.FAILED), _S.RUNNING, _E.CLEAR, "adopted", replaces=True),
    Event.FORCE_ADOPT:      Transition(ALL_STATES, _S.RUNNING, _E.CLEAR, "adopted", replaces=True),
    Event.IMPORT:           Transition(_FOLLOWABLE, _S.MATERIALIZED, _E.CLEAR, "adopted", replaces=True),
    Event.FETCH_LOCKED:     Transition(_FOLLOWABLE, _S.RUNNING, _E.CLEAR, "adopted", replaces=True),
}
# fmt: on
CLAIMS = frozenset(e for e, t in TRANSITIONS.items() if t.claims)


@dataclass
class Generation:
    """A generations row as plain data: the persisted progress of one spec key."""

    spec_key: str
    name: str
    model: str
    resolution: str
    duration: int
    cost: float | None
    state: State
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
    remote_until: str | None = None  # when the provider's copy goes (renewed when used as a source)
    spec_json: str | None = None  # the spec as asked (Desired.describe()), for diffs and takes

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Generation:
        gen = cls(**{k: v for k, v in row.items() if k in _COLUMN_SET})
        gen.state = State(gen.state)
        return gen


COLUMNS = tuple(f.name for f in fields(Generation))
_COLUMN_SET = frozenset(COLUMNS)  # looked up for every column of every row read


def remote_expiry(gen: Generation) -> datetime | None:
    """When the provider's copy of a finished video is gone: as recorded (renewed each time it
    was used as a source), else about 2 days after it finished (veo-api.md); None while unknown."""
    if gen.remote_until:
        return parse_time(gen.remote_until)
    finished = parse_time(gen.finished_at)
    return None if finished is None else finished + timedelta(seconds=REMOTE_FILE_SECONDS)


def expiry_text(gen: Generation) -> str | None:
    """``remote_expiry`` as the lock and ``status`` write it."""
    expiry = remote_expiry(gen)
    return expiry.strftime("%Y-%m-%dT%H:%M:%SZ") if expiry else None


def parse_time(text: str | None) -> datetime | None:
    """A time as the state and the lock write it (ISO, UTC, to the second); None when it is not."""
    if not text:
        return None
    try:
        if TIMESTAMP.match(text):  # what this tool writes: five times faster than strptime
            year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
            hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
            return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def remote_until(now: datetime) -> str:
    """The expiry of a provider copy made (or used) at ``now``."""
    return (now + timedelta(seconds=REMOTE_FILE_SECONDS)).strftime("%Y-%m-%dT%H:%M:%SZ")


class IllegalTransition(Exception):
    """A bug, not a race: the engine asked for an event the table does not allow at all."""


def event_for(state: State, events: Iterable[Event]) -> Event | None:
    """The first of ``events`` (in table order) allowed from ``state``; None when none is."""
    wanted = set(events)
    for event, move in TRANSITIONS.items():
        if event in wanted and state in move.sources:
            return event
    return None


def target(event: Event, current: Generation | None, *, budget: int = 0) -> State:
    """The state ``event`` leads to from ``current``: the retry budget decides an op failure.

    ``budget`` is how many operation failures a key may have and still be resubmitted
    (``retries.operationFailed``); failures are counted across runs until the user's word.
    """
    move = TRANSITIONS[event]
    if move.target is None:
        assert current is not None, f"{event} needs a row"
        return current.state
    if move.spent is None:
        return move.target
    failures = (current.op_failures if current else 0) + 1
    return move.target if failures <= budget else move.spent


def changes(
    current: Generation | None,
    event: Event,
    *,
    budget: int = 0,
    seed: Generation | None = None,
    message: str | None = None,
    kind: str | None = None,
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns ``event`` sets on ``current`` (None: no row), as a plain dict.

    Ownership and clocks are left to the store (``owner``, ``claimed_at``, the stamped time
    columns): they are facts about the writer, not about the lifecycle.
    """
    move = TRANSITIONS[event]
    state = current.state if current is not None else State.NEW
    if state not in move.sources:
        raise IllegalTransition(f"{event} is not allowed from {state}")
    out: dict[str, Any] = {}
    if move.replaces or current is None:
        if seed is None:
            raise IllegalTransition(f"{event} needs the row to write")
        out.update({k: getattr(seed, k) for k in COLUMNS if k not in _STORE_COLUMNS})
        out.update(op_failures=0, error=None, error_kind=None, owner=None)
    out.update({column: None for column in move.clears})
    if move.claims and seed is not None:
        out.update(name=seed.name, cost=seed.cost, spec_json=seed.spec_json)
    if move.fresh_budget:
        out["op_failures"] = 0
    if move.spent is not None:
        out["op_failures"] = (current.op_failures if current else 0) + 1
    if not move.claims:
        out["owner"] = None
    if move.error is ErrorNote.CLEAR:
        out.update(error=None, error_kind=None)
    elif move.error is ErrorNote.MESSAGE:
        out.update(error=message, error_kind=None)
    elif move.error is ErrorNote.RECORD:
        out.update(error=message, error_kind=kind or move.ledger)
    out.update(values or {})
    out["state"] = target(event, current, budget=budget)
    return out


# Columns the store owns: identity, bookkeeping and clocks.
_STORE_COLUMNS = frozenset(
    {"state", "version", "created_at", "updated_at", "claimed_at", "submitted_at", "finished_at"}
)


# -- plan actions and outcomes ----------------------------------------------------------------


class ActionKind(StrEnum):
    """What a plan does for a name. Only CREATE and REPLACE send a paid POST."""

    CREATE = "create"  # no generation for this key yet
    REPLACE = "replace"  # a new generation supersedes the name's current video
    RESUME = "resume"  # an operation in flight (or a finished one not yet downloaded): poll it
    MATERIALIZE = "materialize"  # bytes known: place the file, free
    REMOVE = "remove"  # the spec is gone: its file leaves the output folder, bytes stay cached
    NOOP = "no-op"
    BLOCKED = "blocked"  # failed or unknown: waits for the spec to change or the user's word


PAID = frozenset({ActionKind.CREATE, ActionKind.REPLACE})
CHANGES = frozenset(
    {
        ActionKind.CREATE,
        ActionKind.REPLACE,
        ActionKind.RESUME,
        ActionKind.MATERIALIZE,
        ActionKind.REMOVE,
    }
)


class OutcomeState(StrEnum):
    """How one name's work ended in a run: a generation state, or one of the run's own."""

    BLOCKED = "blocked"  # a chain's source failed or is blocked: this spec waits for it
    MATERIALIZED = "materialized"
    REMOVED = "removed"
    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SUPERSEDED = "superseded"  # watch: the spec changed while its old key was being worked on


FINISHED = frozenset({OutcomeState.MATERIALIZED, OutcomeState.REMOVED})  # nothing more to do


@dataclass
class Outcome:
    """One name's result in a run, as the summary, the JSON output and the daemon report it."""

    name: str
    state: OutcomeState
    message: str = ""
    path: str | None = None  # the file written in this run, if one was

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


# -- one key's next step ----------------------------------------------------------------------


class Step(StrEnum):
    SUBMIT = "submit"  # claim the row and POST: the only paid step
    FOLLOW = "follow"  # another process is submitting: wait for its answer, or find it dead
    POLL = "poll"
    DOWNLOAD = "download"
    PLACE = "place"  # the bytes are cached: put the output in place
    WAIT = "wait"  # pending, likely about to be claimed by whoever put it back: give them a turn
    REPORT = "report"  # nothing more this run: report the row as it stands


@dataclass
class Intent:
    """What one task may still do for its key: decided by the plan and the user's flags."""

    submit: bool = False  # it still means to POST (at most once per key per run)
    claims: frozenset[Event] = field(default_factory=lambda: frozenset({Event.SUBMIT}))
    expect_version: int | None = None  # the row as the plan saw it; anyone else's change wins
    patience: int = 0  # turns left to wait for a pending row to be claimed by someone else


def may_claim(gen: Generation | None, intent: Intent) -> bool:
    """Whether ``intent`` still allows claiming ``gen``: its state and version as planned."""
    if gen is None:
        return event_for(State.NEW, intent.claims) is not None
    if intent.expect_version is not None and gen.version != intent.expect_version:
        return False
    return event_for(gen.state, intent.claims) is not None


def next_step(gen: Generation | None, *, cached: bool, intent: Intent) -> Step:
    """What a key's task does next, from its row as just read: the engine's loop as a table.

    Whatever another process did meanwhile (claimed it, replaced its operation, downloaded it)
    is simply followed, because the row is re-read before every step.
    """
    if intent.submit and may_claim(gen, intent):
        return Step.SUBMIT
    if gen is None:
        return Step.REPORT
    if gen.state is State.SUBMITTING:
        return Step.FOLLOW
    if gen.state is State.RUNNING:
        return Step.POLL
    if gen.state is State.SUCCEEDED:
        return Step.DOWNLOAD
    if gen.state is State.MATERIALIZED and gen.sha256:
        if cached:
            return Step.PLACE
        return Step.DOWNLOAD if gen.file_id else Step.REPORT
    if gen.state is State.PENDING and intent.patience > 0:
        return Step.WAIT
    return Step.REPORT
