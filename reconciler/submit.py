"""The paid step: pace, claim, POST, and commit what the answer proved.

The write-ahead discipline of DESIGN.md: the row is claimed (``submitting``) in a write
transaction before the POST, and the operation name is committed the moment it arrives, so a crash
anywhere leaves either a claim (which recovery turns into ``unknown``, never a silent resubmit) or
an operation to poll. What an answer means was decided at the HTTP edge (``wire``); here each
meaning becomes its lifecycle event.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from . import failpoints
from .context import Deferred, KeyWork
from .errors import (
    AmbiguousError,
    ApiError,
    CostLimitExceeded,
    FatalError,
    PermanentError,
    RateLimited,
    ReconcileError,
    ServerError,
    StateError,
    TransientError,
)
from .lifecycle import TRANSITIONS, Event, Generation, Intent, OutcomeState, remote_until

MAX_IN_RUN_WAIT = 300.0  # longer Retry-After waits end the run for that spec instead


def claimed_elsewhere(gen: Generation, waited: float) -> str:
    """Whose claim a follower gave up waiting on, and the ways to take it over."""
    return (
        f"being submitted by {gen.owner} (claimed {gen.submitted_at}); waited {waited:.0f}s. If "
        f"that process is gone, `reconcile resolve {gen.name} --abandoned` records the "
        "submission as unknown, then `reconcile resolve --operation` or "
        "`apply --resubmit-unknown`"
    )


class Submission(KeyWork):
    recorded: Generation | None = None  # the row the operation name's commit returned

    async def run(self, intent: Intent) -> Generation | None:
        """The only paid call, wrapped in the write-ahead claim. None: claimed by someone else."""
        ctx, spec = self.ctx, self.spec
        # Built before the claim: a bad image must not leave a claim behind.
        if not spec.images:
            body = spec.request_body(ctx.ws.repo, source_uri=self.source_uri)  # reads no file
        else:
            body = await ctx.db(spec.request_body, ctx.ws.repo, source_uri=self.source_uri)
        backoff = ctx.tuning.submit_backoff
        for attempt in range(backoff.attempts):
            await self._pace()
            if not ctx.still_wanted(spec.name, self.key):
                raise Deferred("the spec changed before it was sent", state=OutcomeState.SUPERSEDED)
            if ctx.stop.requested or ctx.fatal is not None:
                why = "the account was refused" if ctx.fatal else "stopping"
                raise Deferred(f"not submitted: {why}")
            claimed = await self._claim(intent, first=attempt == 0)
            if claimed is None:
                return None
            try:
                operation = await self._post(body)
            except TransientError as exc:
                if isinstance(exc, ServerError):  # retried on the user's word; maybe billed
                    await self._not_accepted(exc, Event.SERVER_ERROR, kind="server_error")
                else:
                    await self._not_accepted(exc, Event.NOT_ACCEPTED, kind="transient")
                if isinstance(exc, RateLimited):
                    wait = ctx.pacer.rate_limited(exc.retry_after, backoff.delay(attempt))
                else:
                    wait = backoff.delay(attempt, exc.retry_after)
                last = attempt + 1 >= backoff.attempts
                if wait > MAX_IN_RUN_WAIT or last or ctx.stop.requested:
                    note = f"asked to wait {wait / 60:.0f} min: " if wait > MAX_IN_RUN_WAIT else ""
                    self.report.retrying(spec.name, f"{exc}; {note}left pending for a later run")
                    return await self.get()
                self.report.retrying(spec.name, f"{exc}; retrying in {wait:.1f}s")
                if not await ctx.stop.pause(wait):
                    return await self.get()
                continue
            except FatalError as exc:
                await self._not_accepted(exc, Event.NOT_ACCEPTED, kind="transient")
                raise
            except AmbiguousError as exc:
                await self.move(Event.AMBIGUOUS, message=str(exc))
                self.report.unknown(spec.name, str(exc))
                return await self.get()
            except PermanentError as exc:
                await self._not_accepted(exc, Event.REFUSED, kind=exc.kind)
                self.report.failed(spec.name, str(exc))
                return await self.get()
            ctx.pacer.succeeded()
            self.report.accepted(spec.name, operation)
            # The row as the operation's commit left it: read again only if that lost the race.
            return self.recorded or await self.get()
        return await self.get()

    async def _claim(self, intent: Intent, *, first: bool) -> Generation | None:
        """The write-ahead claim, charged to the run's limit and, in the same transaction, to the
        day and month budgets; raises Deferred when a limit would be passed."""
        ctx, spec = self.ctx, self.spec
        seed = ctx.ws.seed(spec)
        try:
            ctx.run_limit.charge(seed.cost, name=spec.name)
        except CostLimitExceeded as exc:
            raise self._held(exc) from None
        failpoints.hit("before_claim")
        try:
            claimed = await self.move(
                intent.claims if first else frozenset({Event.SUBMIT}),
                seed=seed,
                expect_version=intent.expect_version if first else None,
                windows=ctx.budget(),
            )
        except CostLimitExceeded as exc:
            ctx.run_limit.refund(seed.cost)
            raise self._held(exc) from None
        if claimed is None:
            ctx.run_limit.refund(seed.cost)
            return None
        failpoints.hit("after_claim")
        ctx.submitted.add(self.key)
        if first:
            self.report.submitting(spec.name, model=spec.model, resolution=spec.resolution,
                                   duration=spec.duration, cost=seed.cost)  # fmt: skip
        return claimed

    def _held(self, exc: CostLimitExceeded) -> Deferred:
        """A budget (the run's, the day's, the month's) holds this spec back, before any POST."""
        self.report.held(self.spec.name, f"not submitted: {exc}")
        return Deferred(f"not submitted: {exc}")

    async def _pace(self) -> None:
        """Wait for the pacer's slot before claiming (a claim must never sit waiting); raises
        Deferred when stopping or when the slot is too far off for this run."""
        ctx = self.ctx
        wait = ctx.pacer.wait_needed()
        if wait > MAX_IN_RUN_WAIT:
            message = f"submits are held for {wait / 60:.0f} min after a rate limit"
            self.report.retrying(self.spec.name, f"{message}: left pending for a later run")
            raise Deferred(message)
        if ctx.pacer.ready():
            await ctx.pacer.turn()  # returns at once: no wait to race a stop against
        else:
            turn = asyncio.ensure_future(ctx.pacer.turn())
            stop = asyncio.ensure_future(ctx.stop.wait())
            await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not turn.done():
                turn.cancel()
        if ctx.stop.requested:
            raise Deferred("not submitted: stopping")

    async def _post(self, body: dict[str, Any]) -> str:
        """POST and commit the operation name. Cancelled mid-way (a stop past its grace), the row
        is recorded as unknown first: the request may have been accepted."""
        sent = time.monotonic()  # the operation's run is timed from here (RunTimes)
        try:
            operation = await self.client.submit(self.spec.model, body)
        except asyncio.CancelledError:
            await self.move(Event.AMBIGUOUS, message="interrupted while waiting for the "
                             "provider's answer to the submission; the job may exist and be "
                             "billed")  # fmt: skip
            raise
        failpoints.hit("after_post")
        try:
            recorded = self.recorded = await self.move(Event.ACCEPTED, operation=operation)
        except (ReconcileError, sqlite3.Error, OSError) as exc:
            await self._rescue(operation, str(exc))
            raise StateError(
                f"the state db could not record operation {operation}: {exc}"
            ) from None
        if recorded is None:
            # Someone else moved the row meanwhile: this paid job must still not be forgotten.
            await self._rescue(operation, "the row was taken over by another process")
        else:
            self.ctx.posted[self.key] = sent  # taken by its first poll, in this task
        failpoints.hit("after_running")
        if self.spec.source_key:
            # Using the source's provider copy renews it: kept about 2 more days from now.
            until = remote_until(datetime.now(UTC))
            await self.ctx.db(self.ctx.ws.gens.transition, self.spec.source_key,
                              Event.RENEWED, remote_until=until)  # fmt: skip
        return operation

    async def _rescue(self, operation: str, why: str) -> None:
        """The provider accepted a paid job and the db did not record it: keep and say its name."""
        kept = await self.ctx.db(self.ctx.ws.rescue, self.spec, operation)
        where = f"kept in {self.ctx.ws.rescue_path}" if kept else "nowhere else: note it"
        self.report.rescued(
            self.spec.name, operation,
            f"accepted as {operation}, but the state could not record it ({why}); {where}. The "
            f"next apply adopts it, or `reconcile resolve {self.spec.name} --operation "
            f"{operation}`",
        )  # fmt: skip

    async def _not_accepted(self, exc: ApiError, event: Event, *, kind: str) -> None:
        """Release the claim; refund its charge if the answer proved nothing was accepted."""
        gen = await self.move(event, message=str(exc), kind=kind, status=exc.status)
        if gen is not None and TRANSITIONS[event].refunds:
            self.ctx.run_limit.refund(gen.cost)
