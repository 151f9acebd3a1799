"""The lifecycle table as tables: which event moves which state where, what it does to the row,
and what one key's task does next. All pure: no store, no files, no network.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from reconciler.lifecycle import (
    ALL_STATES,
    CLAIMS,
    TRANSITIONS,
    Event,
    Generation,
    IllegalTransition,
    Intent,
    State,
    Step,
    changes,
    event_for,
    may_claim,
    next_step,
    parse_time,
    target,
)

S = State


def row(state: State = S.PENDING, **values: object) -> Generation:
    gen = Generation(
        spec_key="k1", name="hero", model="veo-3.1-fast-generate-preview", resolution="720p",
        duration=8, cost=0.8, state=state, version=3,
    )  # fmt: skip
    return replace(gen, **values)  # type: ignore[arg-type]


# A lock's take may replace anything settled, never a generation in flight.
FOLLOWABLE = frozenset({S.NEW, S.PENDING, S.FAILED, S.UNKNOWN, S.MATERIALIZED})

# event -> (the states it may start from, the state it leads to)
EXPECTED: dict[Event, tuple[frozenset[State], State | None]] = {  # None: the state stays
    Event.SUBMIT: (frozenset({S.NEW, S.PENDING}), S.SUBMITTING),
    Event.RETRY_FAILED: (frozenset({S.FAILED}), S.SUBMITTING),
    Event.RESUBMIT_UNKNOWN: (frozenset({S.UNKNOWN}), S.SUBMITTING),
    Event.REPLACE: (frozenset({S.MATERIALIZED, S.FAILED, S.UNKNOWN}), S.SUBMITTING),
    Event.REGENERATE: (frozenset({S.MATERIALIZED}), S.SUBMITTING),
    Event.ACCEPTED: (frozenset({S.SUBMITTING, S.UNKNOWN}), S.RUNNING),
    Event.NOT_ACCEPTED: (frozenset({S.SUBMITTING}), S.PENDING),
    Event.SERVER_ERROR: (frozenset({S.SUBMITTING}), S.PENDING),
    Event.REFUSED: (frozenset({S.SUBMITTING}), S.FAILED),
    Event.AMBIGUOUS: (frozenset({S.SUBMITTING}), S.UNKNOWN),
    Event.FINISHED: (frozenset({S.RUNNING}), S.SUCCEEDED),
    Event.OP_FAILED: (frozenset({S.RUNNING, S.SUCCEEDED}), S.PENDING),
    Event.OP_REJECTED: (frozenset({S.RUNNING, S.SUCCEEDED}), S.FAILED),
    Event.VANISHED: (frozenset({S.RUNNING}), S.UNKNOWN),
    Event.LOCKED_GONE: (frozenset({S.RUNNING}), S.PENDING),
    Event.DOWNLOADED: (frozenset({S.SUCCEEDED, S.MATERIALIZED}), S.MATERIALIZED),
    Event.DOWNLOAD_FAILED: (frozenset({S.SUCCEEDED}), S.FAILED),
    Event.REMOTE_GONE: (frozenset({S.MATERIALIZED}), S.MATERIALIZED),
    Event.RENEWED: (frozenset({S.SUCCEEDED, S.MATERIALIZED}), None),
    Event.ADOPT: (frozenset({S.NEW, S.PENDING, S.UNKNOWN, S.FAILED}), S.RUNNING),
    Event.FORCE_ADOPT: (ALL_STATES, S.RUNNING),
    Event.IMPORT: (FOLLOWABLE, S.MATERIALIZED),
    Event.FETCH_LOCKED: (FOLLOWABLE, S.RUNNING),
}


def test_every_event_has_one_row() -> None:
    """The table and this test's copy of it name the same events: a new event needs both."""
    assert set(TRANSITIONS) == set(Event) == set(EXPECTED)


@pytest.mark.parametrize(
    ("event", "state"), [(e, s) for e in Event for s in State], ids=lambda v: str(v)
)
def test_each_event_from_each_state(event: Event, state: State) -> None:
    """An event applies from exactly its source states and leads to its target; from any other
    state it is refused (a store turns that into "no change")."""
    sources, to = EXPECTED[event]
    current = None if state is S.NEW else row(state, operation="operations/op")
    seed = row(S.PENDING)
    if state in sources:
        assert event_for(state, [event]) is event
        assert changes(current, event, seed=seed, budget=5)["state"] is (to or state)
    else:
        assert event_for(state, [event]) is None
        with pytest.raises(IllegalTransition):
            changes(current, event, seed=seed, budget=5)


def test_no_event_leads_to_new_and_only_claims_lead_to_submitting() -> None:
    """NEW is the absence of a row; SUBMITTING is entered only by a write-ahead claim."""
    for event, move in TRANSITIONS.items():
        assert move.target is not S.NEW and event in EXPECTED
        assert (move.target is S.SUBMITTING) == (event in CLAIMS) == move.claims


@pytest.mark.parametrize(
    ("failures", "budget", "state"),
    [(0, 2, S.PENDING), (1, 2, S.PENDING), (2, 2, S.FAILED), (0, 0, S.FAILED), (5, 10, S.PENDING)],
)
def test_the_retry_budget(failures: int, budget: int, state: State) -> None:
    """An operation failure is resubmitted while the failures so far, this one included, are
    within the budget; then it is final."""
    current = row(S.RUNNING, op_failures=failures)
    assert target(Event.OP_FAILED, current, budget=budget) is state
    assert changes(current, Event.OP_FAILED, budget=budget)["op_failures"] == failures + 1


@pytest.mark.parametrize(
    ("event", "state", "op_failures"),
    [
        (Event.SUBMIT, S.PENDING, 2),  # the engine's own resubmission keeps counting
        (Event.RETRY_FAILED, S.FAILED, 0),  # the user's word forgives
        (Event.RESUBMIT_UNKNOWN, S.UNKNOWN, 0),
        (Event.REPLACE, S.MATERIALIZED, 0),
        (Event.REGENERATE, S.MATERIALIZED, 0),
    ],
)
def test_claims_start_a_clean_operation(event: Event, state: State, op_failures: int) -> None:
    """Every claim clears the previous operation, its video and file; only the user's word resets
    the failure budget."""
    current = row(
        state, operation="operations/old", video_uri="u", file_id="f", sha256="s", op_failures=2
    )
    change = changes(current, event, seed=row(name="renamed"))
    assert (change["operation"], change["video_uri"], change["file_id"]) == (None, None, None)
    assert (change["sha256"], change["bytes"]) == (None, None)  # the new take has no bytes yet
    assert change["name"] == "renamed"
    assert change.get("op_failures", current.op_failures) == op_failures
    assert "owner" not in change  # the store records its own owner on a claim


@pytest.mark.parametrize(
    ("event", "state", "error", "error_kind"),
    [
        (Event.NOT_ACCEPTED, S.SUBMITTING, "said", None),
        (Event.REFUSED, S.SUBMITTING, "said", "content_policy"),
        (Event.AMBIGUOUS, S.SUBMITTING, "said", "content_policy"),
        (Event.OP_REJECTED, S.RUNNING, "said", "content_policy"),
        (Event.FINISHED, S.RUNNING, None, None),
        (Event.DOWNLOADED, S.SUCCEEDED, None, None),
    ],
)
def test_what_an_event_does_to_the_error(
    event: Event, state: State, error: str | None, error_kind: str | None
) -> None:
    """Passing trouble keeps a message without a kind; a standing outcome records both; success
    clears both. Every event but a claim releases the row's owner."""
    current = row(state, error="old", error_kind="old", owner="me")
    change = changes(current, event, message="said", kind="content_policy")
    assert (change["error"], change["error_kind"]) == (error, error_kind)
    assert change["owner"] is None


def test_a_final_outcome_without_a_kind_takes_the_ledger_outcome() -> None:
    """AMBIGUOUS with no kind given records "unknown": what status and plan show."""
    change = changes(row(S.SUBMITTING), Event.AMBIGUOUS, message="dropped")
    assert change["error_kind"] == "unknown"


@pytest.mark.parametrize(
    "event", [Event.ADOPT, Event.IMPORT, Event.FORCE_ADOPT, Event.FETCH_LOCKED]
)
def test_adoption_rewrites_the_row_from_its_seed(event: Event) -> None:
    """An adopted operation replaces whatever the row held: failures, errors and owner go."""
    current = row(S.PENDING, op_failures=2, error="x", error_kind="y", owner="someone")
    seed = row(S.PENDING, name="new-name", sha256="s" * 64)
    change = changes(current, event, seed=seed, values={"operation": "operations/found"})
    assert change["name"] == "new-name" and change["operation"] == "operations/found"
    assert (change["op_failures"], change["error"], change["owner"]) == (0, None, None)
    with pytest.raises(IllegalTransition):
        changes(current, event)  # no seed: nothing to write


SUBMIT = Intent(submit=True)
FOLLOW = Intent(submit=False, patience=2)


# (row state or None, sha256 known, file id known, bytes cached, intent) -> next step
STEPS: dict[str, tuple[State | None, bool, bool, bool, Intent, Step]] = {
    "no row, means to pay: submit": (None, False, False, False, SUBMIT, Step.SUBMIT),
    "no row, nothing to do: report": (None, False, False, False, FOLLOW, Step.REPORT),
    "pending, means to pay: submit": (S.PENDING, False, False, False, SUBMIT, Step.SUBMIT),
    "pending, someone else's: wait a turn": (S.PENDING, False, False, False, FOLLOW, Step.WAIT),
    "pending, patience spent: report": (
        S.PENDING, False, False, False, Intent(patience=0), Step.REPORT,
    ),
    "submitting elsewhere: follow": (S.SUBMITTING, False, False, False, SUBMIT, Step.FOLLOW),
    "running: poll, never pay": (S.RUNNING, False, False, False, SUBMIT, Step.POLL),
    "succeeded: download": (S.SUCCEEDED, False, True, False, FOLLOW, Step.DOWNLOAD),
    "materialized, cached: place": (S.MATERIALIZED, True, True, True, FOLLOW, Step.PLACE),
    "materialized, cache lost: download again": (
        S.MATERIALIZED, True, True, False, FOLLOW, Step.DOWNLOAD,
    ),
    "materialized, lost everywhere: report": (
        S.MATERIALIZED, True, False, False, FOLLOW, Step.REPORT,
    ),
    "failed, plain intent: report": (S.FAILED, False, False, False, SUBMIT, Step.REPORT),
    "unknown, plain intent: never pay": (S.UNKNOWN, False, False, False, SUBMIT, Step.REPORT),
    "failed, --retry-failed: submit": (
        S.FAILED, False, False, False,
        Intent(submit=True, claims=frozenset({Event.SUBMIT, Event.RETRY_FAILED})), Step.SUBMIT,
    ),
    "unknown, --resubmit-unknown: submit": (
        S.UNKNOWN, False, False, False,
        Intent(submit=True, claims=frozenset({Event.RESUBMIT_UNKNOWN})), Step.SUBMIT,
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("state", "sha", "file_id", "cached", "intent", "step"), STEPS.values(), ids=STEPS.keys()
)
def test_next_step(
    state: State | None, sha: bool, file_id: bool, cached: bool, intent: Intent, step: Step
) -> None:
    """What a key's task does next follows from its row alone (and whether its bytes are cached)."""
    gen = None
    if state is not None:
        gen = row(state, sha256="a" * 64 if sha else None, file_id="f1" if file_id else None)
    assert next_step(gen, cached=cached, intent=intent) is step


@pytest.mark.parametrize(("version", "claims"), [(3, True), (2, False), (None, True)])
def test_a_claim_needs_the_row_as_planned(version: int | None, claims: bool) -> None:
    """Once anyone else touched the row (its version moved), the task follows instead of paying."""
    intent = Intent(submit=True, expect_version=version)
    assert may_claim(row(S.PENDING), intent) is claims
    expected = Step.SUBMIT if claims else Step.WAIT
    assert next_step(row(S.PENDING), cached=False, intent=replace(intent, patience=1)) is expected


@pytest.mark.parametrize(
    "text",
    ["2026-12-02T04:49:30Z", "2026-02-30T00:00:00Z", "2026-1-2T04:09:30Z", "2016-12-31T23:59:60Z",
     "2026-W01-1T04:49:30Z", "2026-12-02T04:49:30", "2026-12-02T04:49:30Z\n", "0000-01-01T00:00:00Z",
     "\uff12026-12-02T04:49:30Z", "", "soon"],
)  # fmt: skip
def test_parse_time_reads_exactly_what_strptime_reads(text: str) -> None:
    """The fast path for the tool's own timestamps gives strptime's answer, None included."""
    try:
        expected = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        expected = None
    assert parse_time(text) == expected
