"""One spec key's generation: the paid step (``submit``), then poll, download, and place.

What to do next is ``lifecycle.next_step`` of the row re-read before every step, so whatever
another process did meanwhile is followed, and a claim is only made from the row exactly as the
plan saw it. Every state change is a ``transition``; every blocking call (sqlite, hashing,
copying) runs on a thread, so one key's slow disk never delays another key's poll or POST.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import partial

from . import failpoints, outputs
from .client import VeoClient
from .context import Context, Deferred, KeyWork, Slot
from .errors import (
    FileExpired,
    FileMissing,
    OperationFailed,
    OperationLost,
    PermanentError,
    TransientError,
)
from .landing import Landing
from .lifecycle import (
    PAID,
    Event,
    Generation,
    Intent,
    Outcome,
    OutcomeState,
    State,
    Step,
    next_step,
    remote_expiry,
    remote_until,
)
from .pacing import with_retries
from .plan import Action, Options, claims_for
from .shutdown import Stopping
from .spec import Desired
from .submit import Submission, claimed_elsewhere
from .wire import OpResult
from .workspace import Workspace

FOLLOW_PENDING_TURNS = 3  # poll intervals a follower waits for a pending row to be claimed


async def place(ctx: Context, spec: Desired, sha: str) -> Outcome:
    """Materialize cached bytes for a name, unless the name has moved on meanwhile."""
    if not ctx.still_wanted(spec.name, spec.key):
        message = "the spec changed meanwhile; bytes kept in cache"
        return Outcome(spec.name, OutcomeState.SUPERSEDED, message)
    # The run waits for these fsyncs at its end (Engine.apply): see objects.py's docstring.
    outcome: Outcome = await ctx.db(outputs.place, ctx.ws, spec, sha, defer_sync=True)
    ctx.reporter.materialized(spec.name, outcome.message)
    return outcome


async def wait_for_source(ctx: Context, action: Action) -> str | Outcome | None:
    """For an extension of another spec that must be paid for: wait for its source's task in
    this run, then the source's provider URI; an Outcome (blocked, with the reason) when the
    source did not end with a usable video. None for anything else."""
    spec = action.spec
    if spec is None or spec.source is None or action.kind not in PAID:
        return None
    task = ctx.source_task(spec.source)
    if task is not None and not task.done():
        await asyncio.wait([task])
    parent = await ctx.db(ctx.ws.gens.get, spec.source_key or "")
    usable = parent is not None and parent.state in (State.SUCCEEDED, State.MATERIALIZED)
    if parent is None or not usable or not parent.video_uri:
        state = parent.state if parent is not None else "not generated"
        why = f": {parent.error}" if parent is not None and parent.error else ""
        message = f"its source `{spec.source}` is {state}{why}; this spec waits for it"
        return Outcome(spec.name, OutcomeState.BLOCKED, message)
    expiry = remote_expiry(parent)
    if expiry is not None and expiry <= datetime.now(UTC):
        return Outcome(spec.name, OutcomeState.BLOCKED, (
            f"the provider's copy of its source `{spec.source}` expired ({expiry:%Y-%m-%d %H:%M} "
            f"UTC); `reconcile apply --replace {spec.source}` (paid) makes a new one"
        ))  # fmt: skip
    return parent.video_uri


async def generate(
    ctx: Context,
    client: VeoClient,
    action: Action,
    opts: Options,
    *,
    source_uri: str | None = None,
    slot: Slot | None = None,
) -> Outcome:
    """Drive one key to bytes in the cache, then place them; every outcome is returned."""
    spec = action.spec
    assert spec is not None
    if action.state is State.UNKNOWN and action.kind in PAID:
        if opts.resubmit_unknown:
            ctx.reporter.resubmitting(spec.name, "resubmitting although the first submission "
                                      "may have been accepted: this may be paid twice "
                                      "(--resubmit-unknown)")  # fmt: skip
        if spec.name in opts.replace:
            ctx.reporter.resubmitting(spec.name, "--replace of a spec whose submission is "
                                      "unknown: this may be paid twice")  # fmt: skip
    intent = Intent(
        # One paid POST per key per run, however many names share the key.
        submit=action.kind in PAID and spec.key not in ctx.submitted,
        claims=claims_for(action, opts),
        expect_version=action.version,
        patience=FOLLOW_PENDING_TURNS,
    )
    try:
        task = _KeyTask(ctx, client, spec, source_uri=source_uri, slot=slot or Slot())
        if intent.submit and action.state is None and action.version is None:
            # The plan saw no row: the claim goes first without reading it again (one hop
            # fewer). The claim's transaction reads it anyway, and a row made meanwhile fails
            # that claim (or is claimed) exactly as the row read here would have decided.
            task.carried = (None, False)
        return await task.run(intent)
    except Deferred as deferred:
        return Outcome(spec.name, deferred.state, str(deferred))


def _row_and_cache(ws: Workspace, key: str) -> tuple[Generation | None, bool]:
    """A key's row and whether the cache holds its bytes: one trip to a thread, not two."""
    return _looked(ws, ws.gens.get(key))


def _looked(ws: Workspace, gen: Generation | None) -> tuple[Generation | None, bool]:
    return gen, bool(gen and gen.sha256 and ws.cache.has(gen.sha256))


Recorded = tuple[Generation | None, bool, Outcome | None]  # what ``_downloaded`` says


def _downloaded(
    ws: Workspace, spec: Desired, file_id: str | None, sha: str, size: int, *, place: bool
) -> Recorded:
    """Record the downloaded bytes, then place them when that is the next step (``next_step``'s
    PLACE: materialized, cached), in the hop that committed them (``Landing.finish_then``). The
    row, the cache check, and the placement's Outcome, or None: the task goes on from the row."""
    failpoints.hit("after_download")
    try:
        moved = ws.gens.transition(spec.key, Event.DOWNLOADED, expect_file_id=file_id,
                                   sha256=sha, bytes=size)  # fmt: skip
        done, cached = _looked(ws, moved)
        if done is None:
            return None, False, None
        failpoints.hit("after_cached")
        if not (place and cached and done.state is State.MATERIALIZED and done.sha256):
            return done, cached, None
        return done, cached, outputs.place(ws, spec, done.sha256, defer_sync=True)
    finally:
        ws.cache.drop_spares(sha)  # its own (the daemon's others are on their way to placing)


class _KeyTask(KeyWork):
    def __init__(
        self, ctx: Context, client: VeoClient, spec: Desired, *, source_uri: str | None,
        slot: Slot,
    ) -> None:  # fmt: skip
        super().__init__(ctx, client, spec, source_uri=source_uri)
        self.slot = slot  # not a class attribute: one Slot shared by every task would be wrong

    # The row (and cache check) a step's own transition just committed: the next step is decided
    # from it instead of reading it again, one thread hop fewer. As fresh as a read: it is the
    # row that transaction left. Only rows it can be exact for: no bytes to look for, or looked.
    carried: tuple[Generation | None, bool] | None = None

    def carry(self, gen: Generation | None) -> None:
        if gen is not None and gen.sha256 is None:
            self.carried = (gen, False)

    async def run(self, intent: Intent) -> Outcome:
        name, ctx = self.spec.name, self.ctx
        following = 0.0  # when this task started waiting on another process's claim
        while True:
            if self.carried is not None:
                (gen, cached), self.carried = self.carried, None
            else:
                gen, cached = await ctx.db(_row_and_cache, ctx.ws, self.key)
            step = next_step(gen, cached=cached, intent=intent)
            intent.submit = False  # once passed by (or taken), a submit is never made later
            if step in (Step.SUBMIT, Step.POLL):
                await self.slot.hold()  # a job being submitted or running takes a place
            elif step in (Step.DOWNLOAD, Step.PLACE):
                self.slot.release()  # done at the provider: the next one may start
            if step is Step.SUBMIT:
                gen = await Submission(
                    self.ctx, self.client, self.spec, source_uri=self.source_uri
                ).run(intent)
                if gen is not None and gen.state is State.PENDING:
                    # This task's own retries are spent for this run.
                    return Outcome(name, OutcomeState.PENDING,
                                   gen.error or "not accepted; the next run retries")  # fmt: skip
                self.carry(gen)
            elif step is Step.FOLLOW:
                assert gen is not None
                if ctx.ws.gens.is_stale(gen):
                    await ctx.db(ctx.ws.gens.recover_stale)  # its owner died mid-submit
                    continue
                # Measured on this machine's clock: another host's claim time may be skewed.
                following = following or time.monotonic()
                waited = time.monotonic() - following
                if waited >= ctx.tuning.follow_limit:
                    return Outcome(name, OutcomeState.SUBMITTING, claimed_elsewhere(gen, waited))
                if not await ctx.stop.pause(ctx.tuning.poll_interval):
                    message = f"being submitted by another process ({gen.owner})"
                    return Outcome(name, OutcomeState.SUBMITTING, message)
            elif step is Step.POLL:
                assert gen is not None
                ended = await self.poll(gen, intent)
                if ended is not None:
                    return ended
            elif step is Step.DOWNLOAD:
                assert gen is not None
                placed = await self.download(gen)
                if placed is not None:
                    return placed
            elif step is Step.PLACE:
                assert gen is not None and gen.sha256
                return await place(ctx, self.spec, gen.sha256)
            elif step is Step.WAIT:
                # Whoever put it back to pending (an op error being resubmitted, by another task
                # or process) is likely about to claim it again: give them a few poll intervals.
                intent.patience -= 1
                if not await ctx.stop.pause(ctx.tuning.poll_interval):
                    intent.patience = 0
            else:
                return self.report_row(gen)

    def report_row(self, gen: Generation | None) -> Outcome:
        name = self.spec.name
        if gen is None:
            return Outcome(name, OutcomeState.PENDING, "not submitted in this run")
        if gen.state is State.MATERIALIZED:
            return Outcome(name, OutcomeState.PENDING, "its bytes are in neither the cache nor "
                           "the output folder nor with the provider; the next apply plans a paid "
                           "regeneration")  # fmt: skip
        if gen.state is State.PENDING:
            message = gen.error or "not accepted; the next run retries"
            return Outcome(name, OutcomeState.PENDING, message)
        return Outcome(name, OutcomeState(gen.state), gen.error or "")

    # -- the paid step ---------------------------------------------------------------------------
    # -- the operation and its bytes ---------------------------------------------------------------

    async def poll(self, gen: Generation, intent: Intent) -> Outcome | None:
        """Poll to the end and record it; an Outcome when this task is done for the run."""
        ctx, name = self.ctx, self.spec.name
        operation = gen.operation or ""
        # A running row that already names bytes follows a lock's finished take (FETCH_LOCKED).
        result = await self._poll_until_done(operation, locked=gen.sha256 is not None)
        if result is None:
            now = await self.get()
            if now is not None and now.state is not State.RUNNING and not ctx.stop.requested:
                return None  # recorded as unknown (the job vanished), or moved on elsewhere
            return Outcome(name, OutcomeState.RUNNING, f"still running remotely: {gen.operation}")
        if result.error is not None:
            state = await self._op_error(operation, result.error)
            if state is State.PENDING and not ctx.stop.requested:
                now = await self.get()
                intent.submit, intent.claims = True, frozenset({Event.SUBMIT})
                intent.expect_version = now.version if now else None
            elif state is not None:
                return Outcome(name, OutcomeState(state), str(result.error))
            return None
        # A lock's take keeps the time it was generated, so the lock stays byte-identical.
        if gen.sha256 and gen.finished_at:
            kept = {"finished_at": gen.finished_at, "remote_until": gen.remote_until}
        else:
            kept = {"remote_until": remote_until(datetime.now(UTC))}
        finished = await self.move(
            Event.FINISHED, expect_operation=operation,
            video_uri=result.video_uri or "", file_id=result.file_id or "", **kept,
        )  # fmt: skip
        if finished is not None:
            failpoints.hit("after_succeeded")
            self.carry(finished)
        return None

    async def _poll_until_done(self, operation: str, *, locked: bool) -> OpResult | None:
        """Poll on the schedule; None when stopping or when polling keeps failing this run."""
        ctx, spec = self.ctx, self.spec
        self.report.polling(spec.name, operation)
        # Runs are learned only from operations this task POSTed just now, timed from the POST.
        posted = ctx.posted.pop(self.key, None)
        started = time.monotonic() if posted is None else posted
        kind = None if posted is None else spec.run_kind
        planned = ctx.runs.plan(kind) if kind else (0.0, 0.0)
        due, shortest = planned
        seen_running = False
        while True:
            ahead = due - (time.monotonic() - started)
            if ahead > 0 and not await ctx.stop.pause(ahead):
                return None
            if seen_running and ctx.stop.requested:  # late for this poll, and stopping
                return None
            failpoints.hit("before_poll")
            ctx.polls += 1
            try:
                result = await with_retries(
                    lambda: self.client.poll(spec.model, operation),
                    ctx.tuning.poll_backoff,
                    sleep=ctx.stop.sleep,
                    on_retry=self.retrying,
                )
            except Stopping:
                return None
            except OperationLost as exc:
                if locked:
                    # A take the lock says finished: nothing is unknown, it is just gone, and the
                    # next plan shows its regeneration with its cost.
                    message = f"{exc}: the locked video is gone from the provider too"
                    if await self.move(Event.LOCKED_GONE, expect_operation=operation,
                                       message=message):  # fmt: skip
                        self.report.retrying(spec.name, f"{message}; the next plan pays for it")
                    return None
                message = (
                    f"{exc} on every poll: the job expired or vanished, and it may have been "
                    f"billed; if it reappears `reconcile resolve {spec.name} --operation "
                    f"{operation}`, else `apply --resubmit-unknown` pays for a new one"
                )
                if await self.move(Event.VANISHED, expect_operation=operation, message=message):
                    self.report.unknown(spec.name, message)
                return None
            except TransientError as exc:
                self.report.retrying(spec.name, f"polling keeps failing ({exc}); will resume "
                                     "next run")  # fmt: skip
                return None
            waited = time.monotonic() - started
            if result.done:
                if kind is not None:
                    ctx.runs.record(kind, planned, waited, at_first=not seen_running)
                return result
            seen_running = True
            # Not again before the shortest run seen (a probe's second poll); past it, on the
            # interval at first, then backing off toward a cap (Tuning.poll_delay).
            late = waited - shortest
            due = shortest if late < 0 else waited + ctx.tuning.poll_delay(late)

    async def _op_error(self, operation: str, error: PermanentError) -> State | None:
        """Record an operation that ended without a video; None when the row no longer holds
        this operation (another process moved it on)."""
        counted = isinstance(error, OperationFailed)
        gen = await self.move(
            Event.OP_FAILED if counted else Event.OP_REJECTED, expect_operation=operation,
            budget=self.ctx.ws.config.operation_failed_retries, message=str(error),
            kind=error.kind,
        )  # fmt: skip
        if gen is None:
            return None
        again = gen.state is State.PENDING
        note = "; resubmitting (not billed)" if again else ""
        self.report.failed(self.spec.name, f"{error}{note}", final=not again)
        return gen.state

    async def download(self, gen: Generation) -> Outcome | None:
        """Stream the video into the cache (retried whole), then record the verified bytes; the
        Outcome when they were placed in the same hop (the usual end of a spec's task)."""
        ctx = self.ctx
        recorded: Recorded | None = None  # set when the commit's hop recorded it too

        async def once() -> tuple[str, int]:
            nonlocal recorded
            # The output's folder (its name waits for the hash): its copy is written as it lands.
            folder = (ctx.ws.repo / ctx.ws.output_path(self.spec.name, "")).parent
            # A small video is committed, recorded and placed in one hop to the state thread,
            # unless committing uploads it to a bucket: that call must not hold every claim.
            run = ctx.db if ctx.ws.cache.remote is None else None
            landing = Landing(ctx.ws.cache, run, spare_in=folder)
            try:
                await self.client.download(
                    gen.video_uri or "", gen.file_id, landing.feed, pour=landing.pour
                )
                # Checked before the hop that may place it, as ``place`` checks before its own.
                wanted = ctx.still_wanted(self.spec.name, self.key)
                then = (
                    partial(_downloaded, ctx.ws, self.spec, gen.file_id, place=wanted)
                    if run else None  # state work: on the state thread only
                )  # fmt: skip
                done, recorded = await landing.finish_then(then)
            finally:
                await landing.close()
            return done

        self.report.downloading(self.spec.name, gen.operation)
        try:
            sha, size = await with_retries(
                once, ctx.tuning.poll_backoff, sleep=ctx.stop.sleep, on_retry=self.retrying
            )
        except FileMissing as exc:
            expiry = remote_expiry(gen)
            if expiry is None or expiry > datetime.now(UTC):
                # A paid job's video is never given up on an HTTP error alone: a 404 within
                # the file's lifetime may be a lagging replica. The row stays resumable.
                until = f" (until about {expiry:%Y-%m-%d %H:%M} UTC)" if expiry else ""
                raise TransientError(
                    f"{exc}; the provider keeps videos about 2 days{until}: the next run "
                    "tries again"
                ) from None
            if gen.state is State.MATERIALIZED and gen.file_id:
                # Its cached copy was lost before, and now the provider's too.
                await self.move(Event.REMOTE_GONE, expect_file_id=gen.file_id)
                raise FileExpired(
                    "its cached copy is gone and the provider deleted its file (404): the next "
                    "plan shows a paid regeneration", status=404,
                ) from None  # fmt: skip
            message = (
                f"the provider deleted the video before it was downloaded (404, past its "
                f"{expiry:%Y-%m-%d %H:%M} UTC expiry); `reconcile apply --retry-failed` pays for "
                "a new one"
            )
            await self.move(Event.DOWNLOAD_FAILED, expect_operation=gen.operation,
                            message=message, kind=FileExpired.kind)  # fmt: skip
            raise FileExpired(message, status=404) from None
        if recorded is None:  # a large video, committed on its own thread: one hop more
            wanted = ctx.still_wanted(self.spec.name, self.key)
            recorded = await ctx.db(_downloaded, ctx.ws, self.spec, gen.file_id, sha, size,
                                    place=wanted)  # fmt: skip
        done, cached, placed = recorded
        if placed is not None:
            ctx.reporter.materialized(self.spec.name, placed.message)
            return placed
        if done is not None:
            self.carried = (done, cached)
        return None
