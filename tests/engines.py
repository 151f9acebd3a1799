"""Layer 2: runs of the engine in this process, several in one asyncio loop, against the simulator.

``Apply`` is one ``reconcile apply --yes`` wired the way ``cli.run.apply`` wires it (its own
``Workspace`` on the repo, its own ``Engine``, the same settings from the same environment), minus
the rendering. Two of them in one loop race each other through the state db exactly as two
processes do (a claim is a compare-and-swap in sqlite, never a lock in memory), without paying a
process start-up each: the multi-process originals stay, marked ``slow``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from types import TracebackType

from conftest import Repo

from reconciler import report
from reconciler.audit import status_rows
from reconciler.config import ApiSettings
from reconciler.engine import Engine, Summary
from reconciler.events import Reporter
from reconciler.money import run_limit
from reconciler.pacing import Tuning
from reconciler.plan import Options, Plan
from reconciler.workspace import Workspace


class Recorder(Reporter):
    """Keeps the events a test waits for or asserts on, as lines like the CLI's."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def unknown(self, name: str, message: str, *, recovered: bool = False) -> None:
        self.lines.append(f"{name}: unknown: {message}")

    def failed(self, name: str, message: str, *, final: bool = True) -> None:
        self.lines.append(f"{name}: failed: {message}")

    def materialized(self, name: str, path: str) -> None:
        self.lines.append(f"{name}: materialized: {path}")

    def reconciled(self, message: str) -> None:
        self.lines.append(message)

    def condition(self, message: str, *, name: str | None = None, level: str = "error") -> None:
        self.lines.append(f"{level}: {message}")


def tuning(repo: Repo, *, poll: float = 0.1, concurrency: int | None = None, **env: str) -> Tuning:
    """What `--poll-interval POLL [--concurrency N]` makes of the environment a run would get."""
    settings = Tuning.from_env(repo.env(**env))
    settings.poll_interval = poll
    if concurrency:
        settings.concurrency = concurrency
    return settings


def api(repo: Repo, **env: str) -> ApiSettings | None:
    settings = ApiSettings.from_env(repo.env(**env))
    return settings if settings.api_key else None


class Apply:
    """One `reconcile apply --yes`: opening it loads, recovers, adopts the lock and plans (blocking
    steps, as the CLI does them before its loop starts); ``run`` executes the plan in this loop."""

    def __init__(
        self,
        repo: Repo,
        *,
        options: Options | None = None,
        poll: float = 0.1,
        concurrency: int | None = None,
        **env: str,
    ) -> None:
        self.options = options or Options()
        self.events = Recorder()
        self.ws = Workspace(repo.path)
        try:
            self.engine = Engine(
                self.ws,
                api=api(repo, **env),
                tuning=tuning(repo, poll=poll, concurrency=concurrency, **env),
                reporter=self.events,
            )
            self.engine.ctx.run_limit = run_limit(None, self.ws.config.budget_per_run)
            loaded = self.ws.load()
            loaded.raise_for_problems()
            self.ws.recover(self.events)
            self.ws.import_lock(loaded.specs, self.events)
            self.plan: Plan = self.ws.plan(loaded.specs, self.options)
        except BaseException:
            self.ws.close()
            raise

    async def run(self) -> Summary:
        return await self.engine.apply(self.plan, options=self.options)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Apply:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def race(*runs: Apply) -> list[Summary]:
    """Execute already planned runs together: every plan was made before any of them claimed."""
    return list(await asyncio.gather(*(run.run() for run in runs)))


def read_status_and_plan(repo: Repo) -> None:
    """What `reconcile status --json` and `reconcile plan --json` read, through the library: any
    sqlite error (a locked db) raises."""
    ws = Workspace(repo.path, read_only=True)
    try:
        loaded = ws.load()
        json.dumps(status_rows(ws, loaded.specs, invalid_files=bool(loaded.problems)))
        spending = ws.spending()
        json.dumps(report.plan_json(ws.plan(loaded.specs, Options()), spending=spending))
    finally:
        ws.close()


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait, without blocking the loop, until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
