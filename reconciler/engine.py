"""The engine: executes a plan, the one reconciler behind ``apply`` and ``watch``.

Each name's action runs as its own task, so one spec's failure never stops the others; the paid
ones share a concurrency limit, the pacer and the run's stop flag (``generate.Context``). Every
API trouble ends as an ``Outcome`` in the summary, never as an exception out of ``apply``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from .client import VeoClient
from .config import ApiSettings
from .context import Context, Slot
from .errors import FatalError, ReconcileError, StateError, TransientError
from .events import Reporter
from .generate import generate, place, wait_for_source
from .lifecycle import ActionKind, Outcome, OutcomeState, State
from .outputs import remove
from .pacing import Pacer, Tuning
from .plan import Action, Options, Plan
from .shutdown import StopFlag, Stopping, settle
from .workspace import Workspace


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None
    stopped: bool = False
    estimate: float = 0.0  # what the plan said its POSTs would cost
    spent: float = 0.0  # what this run's POSTs that may be billed cost (refunds deducted)
    polls: int = 0  # polls sent in this run

    @property
    def written(self) -> list[str]:
        return [o.path for o in self.outcomes if o.path]

    @property
    def ok(self) -> bool:
        return self.fatal is None and all(o.finished for o in self.outcomes)


class Engine:
    """Runs plans against one workspace and one API."""

    def __init__(
        self,
        ws: Workspace,
        *,
        api: ApiSettings | None = None,
        tuning: Tuning | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.ws = ws
        self.api = api
        self.tuning = tuning or Tuning.from_env()
        self.reporter = reporter or Reporter()
        self.stop = StopFlag()
        self.ctx = Context(
            ws=ws,
            reporter=self.reporter,
            tuning=self.tuning,
            pacer=Pacer(cap_per_minute=ws.config.submit_per_minute),
            stop=self.stop,
        )
        self.concurrency = self.tuning.concurrency_for(ws.config.concurrency)
        # apply stops at the first 401/403; watch only pauses submits until its next resync.
        self.stop_on_fatal = True
        # Inside apply, the videos' deferred fsyncs are waited for once, at the end; an action
        # run on its own (watch) waits for its own before it returns.
        self._batched = False

    def client(self) -> VeoClient | None:
        if self.api is None:
            return None
        return VeoClient(
            self.api, timeout=self.tuning.http_timeout,
            resubmit_after_server_error=self.ws.config.resubmit_after_server_error,
        )  # fmt: skip

    async def apply(self, plan: Plan, *, options: Options | None = None) -> Summary:
        """Execute a plan. Raises nothing for API trouble: every outcome lands in the summary."""
        opts = options or Options()
        self.ctx.fatal = None
        self.ctx.submitted = set()
        self.ctx.polls = 0
        slots = asyncio.Semaphore(self.concurrency)
        client = self.client() if plan.changes else None
        self._batched = True
        tasks = [
            asyncio.create_task(self.run_action(action, client, slots, opts), name=action.name)
            for action in plan.actions
        ]
        by_name = {task.get_name(): task for task in tasks}
        self.ctx.source_task = by_name.get
        reaper = asyncio.create_task(self._settle_on_stop(tasks))
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._batched = False
            reaper.cancel()
            if client is not None:
                await client.aclose()
        summary = Summary()
        for action, result in zip(plan.actions, results, strict=True):
            if (
                isinstance(result, Outcome) and action.kind is ActionKind.NOOP and action.spec
                and action.key in self.ctx.submitted
            ):  # fmt: skip
                # Another name on this key was --replace'd: this one follows the new bytes.
                result = await self.run_action(
                    replace(action, kind=ActionKind.RESUME), client, slots, opts
                )
            if isinstance(result, Outcome):
                summary.outcomes.append(result)
            elif isinstance(result, asyncio.CancelledError):
                summary.outcomes.append(await self._interrupted(action))
            else:
                await asyncio.to_thread(self.ws.cache.drop_spares)  # no partial copy is left
                raise result
        # The videos this run wrote are on disk before the lock names them (files.Syncer).
        await self._synced()
        await asyncio.to_thread(self.ws.cache.drop_spares)
        await asyncio.to_thread(self.ws.write_lock)
        summary.fatal = str(self.ctx.fatal) if self.ctx.fatal else None
        summary.stopped = self.stop.requested
        summary.estimate = plan.cost
        summary.spent = self.ctx.run_limit.spent
        summary.polls = self.ctx.polls
        return summary

    async def _settle_on_stop(self, tasks: list[asyncio.Task[Outcome]]) -> None:
        await self.stop.wait()
        await settle(tasks, self.tuning.stop_grace)

    async def _interrupted(self, action: Action) -> Outcome:
        gen = await asyncio.to_thread(self.ws.gens.get, action.key or "")
        state = OutcomeState(gen.state) if gen else OutcomeState.PENDING
        where = f" ({gen.operation})" if gen and gen.operation else ""
        return Outcome(action.name, state, f"interrupted{where}; the next run resumes it")

    async def run_action(
        self, action: Action, client: VeoClient | None, slots: asyncio.Semaphore, opts: Options
    ) -> Outcome:
        """Carry one action to its end; every API trouble becomes the Outcome, never an exception."""
        try:
            return await self._run_action(action, client, slots, opts)
        finally:
            if not self._batched:  # each download drops its own spare copy (generate)
                await self._synced()

    async def _synced(self) -> None:
        """Wait for the deferred fsyncs of the videos written; a disk that refuses one is said
        (the files are in place and the next run checks them), as an inline fsync's error was."""
        try:
            await asyncio.to_thread(self.ws.cache.syncer.drain)
        except OSError as exc:
            where = exc.filename or "a video"
            self.reporter.failed(str(where), f"could not be flushed to disk: {exc.strerror or exc}")

    async def _run_action(
        self, action: Action, client: VeoClient | None, slots: asyncio.Semaphore, opts: Options
    ) -> Outcome:
        ctx = self.ctx
        try:
            if action.kind is ActionKind.NOOP:
                return Outcome(action.name, OutcomeState.MATERIALIZED, "up to date")
            if action.kind is ActionKind.REMOVE:
                outcome = await ctx.db(remove, self.ws, action.name, action.path)
                self.reporter.removed(action.name, action.path)
                return outcome
            if action.kind is ActionKind.BLOCKED:
                stuck = action.state in (State.FAILED, State.UNKNOWN)
                state = OutcomeState(action.state or "") if stuck else OutcomeState.BLOCKED
                return Outcome(action.name, state, action.reason)
            assert action.spec is not None
            if action.kind is ActionKind.MATERIALIZE:
                return await place(ctx, action.spec, action.sha256 or "")
            if client is None:
                raise StateError("no API configured")
            source = await wait_for_source(ctx, action)  # before a slot: never held waiting
            if isinstance(source, Outcome):
                return source
            slot = Slot(slots)  # given back as soon as the operation is done (context.Slot)
            await slot.hold()
            try:
                return await generate(ctx, client, action, opts, source_uri=source, slot=slot)
            finally:
                slot.release()
        except FatalError as exc:
            ctx.fatal = ctx.fatal or exc
            if self.stop_on_fatal:
                self.stop.request()
            # The reason is said once, as the summary's stop line (Summary.fatal), not per spec.
            return Outcome(
                action.name, OutcomeState.PENDING, "not accepted: the account was refused"
            )
        except (TransientError, Stopping) as exc:
            gen = await ctx.db(self.ws.gens.get, action.key or "")
            state = OutcomeState(gen.state) if gen else OutcomeState.PENDING
            if state is OutcomeState.MATERIALIZED:
                # Its bytes were to be fetched again and were not: nothing is in place yet.
                state = OutcomeState.PENDING
            return Outcome(action.name, state, str(exc) or "stopped; the next run resumes it")
        except ReconcileError as exc:
            self.reporter.failed(action.name, str(exc))
            return Outcome(action.name, OutcomeState.FAILED, str(exc))
        except OSError as exc:
            # The output folder or cache is unwritable: the bytes (if any) are safe in the cache
            # or with the provider, and the next run places them once the cause is fixed.
            message = f"{exc.filename or 'a file'}: {exc.strerror or exc}"
            self.reporter.failed(action.name, message)
            return Outcome(action.name, OutcomeState.FAILED, message)
