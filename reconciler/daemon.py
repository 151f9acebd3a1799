"""``reconcile watch``: the same engine as ``apply``, run whenever specs change and on a timer.

Level-triggered, like a Kubernetes controller: a file event only makes the next reconcile come
sooner. Every ``resync`` seconds the whole repo is reconciled anyway, and each operation in flight
polls on its own schedule, so a missed event can delay work but never lose it. Each spec's work is
a task keyed by (name, spec key); a reconcile starts tasks only for what is not already under way,
so an edit is submitted at once even while older operations are still running.

A spec file that is broken mid-edit keeps its last good version in force: its videos are never
removed because of a half-saved file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import plan as planning
from .client import VeoClient
from .config import ApiSettings
from .engine import DEFAULT_CONCURRENCY, Engine, Event, Outcome
from .errors import ReconcileError
from .plan import Options
from .spec import Desired, load_specs
from .store import now_iso, owner_alive
from .watch import Watcher

META_KEY = "daemon"


@dataclass
class DaemonSettings:
    resync: float = 300.0  # seconds between full reconciles without any event
    debounce: float = 0.1
    heartbeat: float = 15.0


class Daemon:
    def __init__(self, engine: Engine, api: ApiSettings | None, settings: DaemonSettings) -> None:
        self.engine = engine
        self.api = api
        self.settings = settings
        self.emit = engine.emit
        self.active: dict[str, asyncio.Task[Outcome]] = {}
        self.last_good: dict[str, list[Desired]] = {}
        self.reported: dict[str, str] = {}  # what was last said about a file or spec, said once
        self.wanted: dict[str, str] = {}  # name -> spec key currently desired
        self.paused_at = 0.0  # when a 401/403 paused submits
        self.started = now_iso()
        engine.stop_on_fatal = False
        engine.still_wanted = lambda name, key: self.wanted.get(name) == key

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup, wake)
        watcher = Watcher(self.engine.repo, loop, debounce=self.settings.debounce)
        watcher.start()
        client = self.engine.client()
        self.slots = asyncio.Semaphore(self.engine.concurrency)
        heartbeat = asyncio.create_task(self._heartbeat())
        self.emit(
            Event("start", f"watching {self.engine.repo} (resync every {self.settings.resync:g}s)")
        )
        try:
            self.engine.recover()
            reason = "start"
            while not self.engine.stopping:
                images = self.reconcile(reason, client)
                watcher.refresh(images)
                reason = await self._next_wake(watcher, wake)
        finally:
            await self._shutdown(client)
            heartbeat.cancel()
            watcher.stop()
        return 0

    async def _next_wake(self, watcher: Watcher, wake: asyncio.Event) -> str:
        """Sleep until files change, SIGHUP, a stop request, or the resync timer."""
        changed = asyncio.ensure_future(watcher.changed())
        hup = asyncio.ensure_future(wake.wait())
        stop = asyncio.ensure_future(self.engine.stopped())
        done, pending = await asyncio.wait(
            {changed, hup, stop}, timeout=self.settings.resync, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        # A 401/403 pauses submits; they are tried again once per resync period of wall-clock
        # time (saving specs must not postpone that forever), or at once on SIGHUP.
        paused_long = time.monotonic() - self.paused_at >= self.settings.resync
        if self.engine.fatal is not None and (paused_long or hup in done):
            self.engine.clear_fatal()
            self.reported.pop("fatal", None)
        if changed in done:
            paths = changed.result()
            shown = ", ".join(sorted(os.path.relpath(p, self.engine.repo) for p in paths)[:3])
            return f"changed: {shown}"
        if hup in done:
            wake.clear()
            return "SIGHUP"
        if stop in done:
            return "stop"
        return "resync"

    def _on_stop(self, signum: int) -> None:
        if self.engine.stopping:
            os._exit(128 + signum)
        self.emit(Event("stop", f"{signal.Signals(signum).name}: stopping; operations in flight "
                        "are recorded and resumed by the next start"))  # fmt: skip
        self.engine.request_stop()

    def _on_hup(self, wake: asyncio.Event) -> None:
        self.emit(Event("reload", "SIGHUP: reloading reconcile.yaml"))
        wake.set()

    def _reload_config(self) -> None:
        """Every reconcile re-reads reconcile.yaml; a broken one keeps the last good settings."""
        try:
            config = self.engine.read_config()
        except ReconcileError as exc:
            problems = getattr(exc, "problems", None) or [exc]
            said = "; ".join(str(p) for p in problems)
            self._say("config", f"{said}; keeping the last good settings", level="error")
            return
        self.reported.pop("config", None)
        if config != self.engine.config:
            self.engine.config = config
            self.engine.pacer.cap = config.submit_per_minute
            wanted = self.engine.tuning.concurrency or config.concurrency or DEFAULT_CONCURRENCY
            if wanted != self.engine.concurrency:
                # Tasks holding the old semaphore finish under it; new ones use the new limit.
                self.engine.concurrency = wanted
                self.slots = asyncio.Semaphore(wanted)
            self.emit(Event("reload", "reloaded reconcile.yaml"))

    # -- one reconcile ---------------------------------------------------------------------------

    def reconcile(self, reason: str, client: VeoClient | None) -> set[Path]:
        """Plan and start tasks for whatever is not under way yet; returns the images to watch."""
        self._reload_config()
        specs, unseen = self._load()
        self.wanted = {s.name: s.key for s in specs}
        try:
            self.engine.import_lock(specs)
            the_plan = self.engine.plan(specs, Options(hold_removals=unseen))
        except ReconcileError as exc:
            self._say("plan", f"cannot plan: {exc}", level="error")
            return set()
        started = 0
        for action in the_plan.actions:
            if action.kind == planning.BLOCKED:
                self._say(f"blocked:{action.name}:{action.key}", action.reason, name=action.name,
                          level="warning")  # fmt: skip
                continue
            if action.kind not in planning.CHANGES:
                continue
            if action.kind in (*planning.PAID, planning.RESUME) and client is None:
                self._say("no-key", "GPTPROTO_API_KEY is not set: nothing can be submitted",
                          level="error")  # fmt: skip
                continue
            task_key = f"{action.name}:{action.key or 'remove'}"
            if task_key in self.active:
                continue
            task = asyncio.create_task(self._carry(action, client, self.slots))
            self.active[task_key] = task
            task.add_done_callback(functools.partial(self._forget, task_key))
            started += 1
        self.engine.store.set_meta(META_KEY, self._meta(last_reconcile=now_iso()))
        self.emit(Event("reconcile", f"reconciled ({reason}): {len(specs)} specs, {started} started, "
                        f"{len(self.active)} in progress"))  # fmt: skip
        return {self.engine.repo / s.image.path for s in specs if s.image}

    def _forget(self, task_key: str, _task: asyncio.Task[Outcome]) -> None:
        self.active.pop(task_key, None)

    def _load(self) -> tuple[list[Desired], bool]:
        """Valid files as they are now; broken files as they last were when valid. The flag is
        True while some broken file has never been seen valid (its names are unknown)."""
        result = load_specs(self.engine.repo, self.engine.config)
        by_file: dict[str, list[Desired]] = {}
        for spec in result.specs:
            by_file.setdefault(spec.file, []).append(spec)
        for problem in result.problems:
            self._say(f"problem:{problem.file}", f"{problem}; keeping its last good version",
                      level="error")  # fmt: skip
        for rel in result.files:
            if rel in result.bad_files:
                continue
            self.reported.pop(f"problem:{rel}", None)
            self.last_good[rel] = by_file.get(rel, [])
        for rel in list(self.last_good):
            if rel not in result.files:
                del self.last_good[rel]  # the file is gone: its specs are removed on purpose
        specs: dict[str, Desired] = {}
        for rel in sorted(self.last_good):
            for spec in self.last_good[rel]:
                specs.setdefault(spec.name, spec)
        unseen = any(rel not in self.last_good for rel in result.bad_files) or any(
            p.file not in result.files
            for p in result.problems  # e.g. an unreadable folder
        )
        return list(specs.values()), unseen

    async def _carry(self, action: planning.Action, client: VeoClient | None,
                     slots: asyncio.Semaphore) -> Outcome:  # fmt: skip
        outcome = await self.engine.run_action(action, client, slots, Options())
        if action.key:
            self.engine.forget_submitted(action.key)
        with contextlib.suppress(ReconcileError):
            self.engine.write_lock()
        if outcome.state not in ("materialized", "removed"):
            self.emit(Event("outcome", f"{outcome.state}: {outcome.message}", name=outcome.name,
                            level="info" if outcome.state == "superseded" else "warning"))  # fmt: skip
        if self.engine.fatal is not None:
            if "fatal" not in self.reported:
                self.paused_at = time.monotonic()
            self._say("fatal", f"{self.engine.fatal}; submits paused until the next resync",
                      level="error")  # fmt: skip
        return outcome

    def _say(
        self, topic: str, message: str, *, name: str | None = None, level: str = "info"
    ) -> None:
        """Log a standing condition once, not on every reconcile."""
        if self.reported.get(topic) == message:
            return
        self.reported[topic] = message
        self.emit(Event("problem" if level != "info" else "info", message, name=name, level=level))

    # -- liveness and shutdown -------------------------------------------------------------------

    def _meta(self, **extra: str) -> str:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "owner": self.engine.store.owner,
                  "started": self.started, "heartbeat": now_iso(), "heartbeat_unix": time.time(),
                  "interval": self.settings.heartbeat, "state": "running"}  # fmt: skip
        previous = self.engine.store.meta(META_KEY)
        if previous:
            with contextlib.suppress(ValueError):
                record["last_reconcile"] = json.loads(previous).get("last_reconcile")
        record.update(extra)
        return json.dumps(record)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            with contextlib.suppress(Exception):
                self.engine.store.set_meta(META_KEY, self._meta())

    async def _shutdown(self, client: VeoClient | None) -> None:
        tasks = list(self.active.values())
        if tasks:
            await asyncio.sleep(0)  # let tasks see the stop request
            _, pending = await asyncio.wait(tasks, timeout=self.engine.tuning.stop_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        running = [g for g in self.engine.store.generations().values() if g.state == "running"]
        for gen in running:
            self.emit(Event("stop", f"still running remotely, resumed next start: {gen.operation}",
                            name=gen.name))  # fmt: skip
        with contextlib.suppress(ReconcileError):
            self.engine.write_lock()
        self.engine.store.set_meta(META_KEY, self._meta(state="stopped", stopped=now_iso()))
        if client is not None:
            await client.aclose()


def describe(meta: str | None) -> str | None:
    """The status line about the daemon, from its meta record."""
    if not meta:
        return None
    try:
        record = json.loads(meta)
    except ValueError:
        return None
    last = record.get("last_reconcile") or "never"
    if record.get("state") == "stopped":
        return f"watch: not running (stopped {record.get('stopped')}); last reconcile {last}"
    alive = owner_alive(record.get("owner"))
    fresh = time.time() - float(record.get("heartbeat_unix", 0)) < 3 * float(
        record.get("interval", 15)
    )
    if alive or (alive is None and fresh):
        return (f"watch: running (pid {record.get('pid')} on {record.get('host')}, since "
                f"{record.get('started')}); last reconcile {last}")  # fmt: skip
    return f"watch: not running (pid {record.get('pid')} is gone); last reconcile {last}"
