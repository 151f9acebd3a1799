"""What the tasks of one run share, and the base of one key's work.

A run (``apply``) or the daemon runs one task per name; those tasks share the workspace, the
reporter, the pacer, the stop flag and what was submitted or refused so far. ``KeyWork`` gives one
key's steps their two ways to touch state, both on a thread: a committed read, and one lifecycle
transition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .client import VeoClient
from .errors import FatalError, TransientError
from .events import Reporter
from .lifecycle import Event, Generation, OutcomeState
from .money import RunLimit, Window, windows
from .pacing import Pacer, Tuning
from .shutdown import StopFlag
from .spec import Desired
from .workspace import Workspace


class Deferred(Exception):
    """A paid action gives up for this run before claiming anything (stopping, a long hold)."""

    def __init__(self, message: str, *, state: OutcomeState = OutcomeState.PENDING) -> None:
        super().__init__(message)
        self.state = state


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
    # The shortest time from POST to a poll that saw it done, per (model, resolution, seconds),
    # among operations submitted in this run: polls before most of it has passed are skipped.
    durations: dict[tuple[str, str, int], float] = field(default_factory=dict)
    # The task working on a name in this run (apply) or daemon, for chains: an extension waits
    # for its source's task before it is submitted.
    source_task: Callable[[str], asyncio.Task[Any] | None] = lambda _name: None

    def budget(self) -> list[Window]:
        """The day and month budgets in force now (reconcile.yaml's ``budget``)."""
        config = self.ws.config
        return windows(per_day=config.budget_per_day, per_month=config.budget_per_month)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking state or file call on a thread, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)


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
