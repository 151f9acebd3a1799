"""What the tasks of one run share, and the base of one key's work.

A run (``apply``) or the daemon runs one task per name; those tasks share the workspace, the
reporter, the pacer, the stop flag and what was submitted or refused so far. ``KeyWork`` gives one
key's steps their two ways to touch state, both on a thread: a committed read, and one lifecycle
transition.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from queue import SimpleQueue
from typing import Any

from .client import VeoClient
from .errors import FatalError, TransientError
from .events import Reporter
from .lifecycle import Event, Generation, OutcomeState
from .money import RunLimit, Window, windows
from .pacing import Pacer, RunTimes, Tuning
from .shutdown import StopFlag
from .spec import Desired
from .workspace import Workspace


class Deferred(Exception):
    """A paid action gives up for this run before claiming anything (stopping, a long hold)."""

    def __init__(self, message: str, *, state: OutcomeState = OutcomeState.PENDING) -> None:
        super().__init__(message)
        self.state = state


class Slot:
    """A place among the operations in flight (``--concurrency``): held while this key's job is
    being submitted or runs at the provider, given back once it is done, so the next POST goes
    out while these bytes are downloaded and placed (the client bounds downloads on its own).
    Each wave of operations no longer waits for the last one's download: at 1,000 specs of 1 s,
    that was 0.1-0.2 s per wave."""

    def __init__(self, slots: asyncio.Semaphore | None = None) -> None:
        self._slots = slots
        self.held = False

    async def hold(self) -> None:
        if not self.held and self._slots is not None:
            await self._slots.acquire()
            self.held = True

    def release(self) -> None:
        if self.held and self._slots is not None:
            self.held = False
            self._slots.release()


@dataclass
class Context:
    """What every key's task of one run (or of one daemon) shares."""

    ws: Workspace
    reporter: Reporter
    tuning: Tuning
    pacer: Pacer
    stop: StopFlag
    submitted: set[str] = field(default_factory=set)  # keys POSTed for in this run
    fatal: FatalError | None = None  # a 401/403: no more claims until cleared
    # watch: whether a name still wants this key, checked before paying and before placing.
    still_wanted: Callable[[str, str], bool] = lambda _name, _key: True
    run_limit: RunLimit = field(default_factory=RunLimit)  # what this run may still spend
    polls: int = 0  # polls sent in this run (the summary reports them per operation)
    # When each key's POST went out (monotonic), taken by its first poll: runs are timed from it.
    posted: dict[str, float] = field(default_factory=dict)
    # How long operations of each kind run: when to poll one first (pacing.RunTimes).
    runs: RunTimes = field(default_factory=RunTimes)
    # The task working on a name in this run (apply) or daemon, for chains: an extension waits
    # for its source's task before it is submitted.
    source_task: Callable[[str], asyncio.Task[Any] | None] = lambda _name: None
    _thread: StateThread | None = field(default=None, repr=False)

    def budget(self) -> list[Window]:
        """The day and month budgets in force now (reconcile.yaml's ``budget``)."""
        config = self.ws.config
        return windows(per_day=config.budget_per_day, per_month=config.budget_per_month)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking state or file call off the event loop, on the run's one state thread.

        One thread, not asyncio's pool of several: the store serializes its calls on one lock
        anyway, and threads that wake for a few microseconds of work each, contending for that
        lock and the GIL, cost more than the work (an apply of 1,000 specs made over 600,000
        futex calls). Calls run in the order they were made (``StateThread``)."""
        if self._thread is None:
            self._thread = StateThread()
        return await self._thread.call(partial(fn, *args, **kwargs))


class StateThread:
    """One thread that runs blocking calls in order, each handed back to the event loop.

    Leaner than ``run_in_executor`` on a one-thread pool, which made every call a concurrent
    future (a Condition each), a work item, a semaphore's Condition, a chained asyncio future and
    a shield: 30-70 us of CPU a hop, five hops a spec. Here a call is a queue entry and one loop
    future. A call once queued always runs to its end, and its caller waits for that even when
    cancelled (a stop's grace ending): cancelled while queued behind another, it must still run,
    or the operation name a POST was just answered with would be lost (the spec unknown)."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[_Call | None] = SimpleQueue()
        self.calls = 0  # calls made: what a spec's steps cost in hops (tests hold it down)
        self._thread = threading.Thread(target=self._serve, name="state", daemon=True)
        self._thread.start()
        # Daemon, so an exit never waits on it unasked; stopped and joined at exit, so a call
        # queued before the interpreter ends still runs (as the pool's workers were joined).
        atexit.register(self.stop)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        atexit.unregister(self.stop)

    async def call(self, fn: Callable[[], Any]) -> Any:
        if not self._thread.is_alive():  # stopped (at exit): queued, it would never run
            raise RuntimeError("the state thread has stopped")
        call = _Call(fn, asyncio.get_running_loop())
        self.calls += 1
        self._queue.put(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            while not call.settled:  # further cancels are absorbed until the call has ended
                with contextlib.suppress(asyncio.CancelledError):
                    await call.ended()
            raise

    def _serve(self) -> None:
        while (call := self._queue.get()) is not None:
            call.run()


class _Call:
    __slots__ = ("_ended", "_error", "_result", "fn", "future", "loop", "settled")

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.loop = fn, loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.settled = False
        self._ended: asyncio.Future[None] | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:  # on the state thread
        try:
            self._result = self.fn()
        except BaseException as exc:  # handed to the caller, whatever it is
            self._error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:  # on the event loop
        self.settled = True
        if not self.future.cancelled():
            if self._error is not None:
                self.future.set_exception(self._error)
            else:
                self.future.set_result(self._result)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        self._error = None  # no cycle through the traceback

    def ended(self) -> asyncio.Future[None]:
        if self._ended is None or self._ended.done():
            self._ended = self.loop.create_future()
        return self._ended


class KeyWork:
    """One spec key's calls to the provider and its row, for one task."""

    def __init__(
        self, ctx: Context, client: VeoClient, spec: Desired, *, source_uri: str | None = None
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.spec = spec
        self.source_uri = source_uri  # a chain's source: the provider's copy it extends
        self.key = spec.key
        self.report = ctx.reporter

    async def get(self) -> Generation | None:
        gen: Generation | None = await self.ctx.db(self.ctx.ws.gens.get, self.key)
        return gen

    async def move(self, event: Event | frozenset[Event], **kw: Any) -> Generation | None:
        gen: Generation | None = await self.ctx.db(
            self.ctx.ws.gens.transition, self.key, event, **kw
        )
        return gen

    def retrying(self, exc: TransientError, wait: float) -> None:
        self.report.retrying(self.spec.name, f"{exc}; retrying in {wait:.1f}s")
