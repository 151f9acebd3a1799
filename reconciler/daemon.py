"""``reconcile watch``: the same engine as ``apply``, run whenever specs change and on a timer.

Level-triggered, like a Kubernetes controller: a file event only makes the next reconcile come
sooner. Every ``resync`` seconds the whole repo is reconciled anyway, and each operation in flight
polls on its own schedule, so a missed event can delay work but never lose it. Each spec's work is
a task keyed by (name, spec key); a reconcile starts tasks only for what is not already under way,
so an edit is submitted at once even while older operations are still running. Loading and
planning run on a thread: a large repo's hashing never delays a poll.

An event that names only spec files is handled in proportion to it, however large the repo: those
files are parsed again (the rest come from the spec index kept in memory), and only the names
whose key changed are planned, reading only their rows and files. Everything else (start, resync,
SIGHUP, reconcile.yaml or an image changed, a settle period over) reloads and plans it all, and a
targeted plan that would pay for a key already generated is redone in full before anything runs.

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
from typing import TYPE_CHECKING

from . import lockfile
from . import plan as plans
from .errors import ReconcileError, StateError
from .index import SpecIndex
from .lifecycle import CHANGES, PAID, ActionKind, Outcome, State
from .loader import LoadResult, load_specs
from .owners import now_iso, owner_alive
from .plan import Action, Options, Plan
from .reload import swap_edited
from .shutdown import handling_signals, name_of, settle
from .spec import Desired
from .store import as_seen

if TYPE_CHECKING:  # `status` imports this module for its heartbeat record: no HTTP stack for it
    from .client import VeoClient
    from .engine import Engine
    from .watch import Watcher

META_KEY = "daemon"


@dataclass
class DaemonSettings:
    resync: float = 300.0  # seconds between full reconciles without any event
    debounce: float = 0.1
    heartbeat: float = 15.0
    # A spec file (and its image) must be unchanged this long before its video is paid for:
    # editors autosave while someone types, and a half-typed prompt must not become a video.
    settle: float = 3.0


class Daemon:
    def __init__(self, engine: Engine, settings: DaemonSettings) -> None:
        self.engine = engine
        self.ws = engine.ws
        self.settings = settings
        self.report = engine.reporter
        self.active: dict[str, asyncio.Task[Outcome]] = {}
        self.last_good: dict[str, list[Desired]] = {}
        self.reported: dict[str, str] = {}  # what was last said about a file or spec, said once
        self.wanted: dict[str, str] = {}  # name -> spec key currently desired
        self.paused_at = 0.0  # when a 401/403 paused submits
        self.settling_until: float | None = None  # wall-clock time the next settled spec is due
        self.index: SpecIndex | None = None  # the spec index, kept between loads
        self.last_load: LoadResult | None = None
        self.specs, self.unseen = list[Desired](), False  # last reconcile's specs, names unseen
        self.events: set[str] | None = None  # spec files the last wake-up's events named
        self.exit_code = 0
        self.started = now_iso()
        engine.stop_on_fatal = False
        engine.ctx.still_wanted = lambda name, key: self.wanted.get(name) == key
        engine.ctx.source_task = self._task_of

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> int:
        from .watch import Watcher  # watchdog: only a running daemon needs it

        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self._on_hup, wake)
        watcher = Watcher(self.ws.repo, loop, debounce=self.settings.debounce)
        watcher.start()
        client = self.engine.client()
        self.slots = asyncio.Semaphore(self.engine.concurrency)
        heartbeat = asyncio.create_task(self._heartbeat())
        self.report.watching(f"watching {self.ws.repo} (resync every {self.settings.resync:g}s)")
        try:
            with handling_signals(self.engine.stop, announce=self._on_stop):
                try:
                    await asyncio.to_thread(self.ws.recover, self.report)
                    reason = "start"
                    while not self.engine.stop.requested:
                        images = await self.reconcile(reason, client)
                        watcher.refresh(images)
                        reason = await self._next_wake(watcher, wake)
                except StateError as exc:
                    await self._state_lost(exc)
                finally:
                    await self._shutdown(client)
        finally:
            heartbeat.cancel()
            watcher.stop()
        return self.exit_code

    async def _state_lost(self, exc: StateError) -> None:
        """state/ was deleted or replaced under the daemon: keep what is in flight for the next
        start (the rescue journal), say so, and stop with an error so a supervisor restarts it."""
        kept = await asyncio.to_thread(self.ws.rescue_in_flight)
        self.report.condition(f"{exc}; stopping (operations kept for the next start: {kept})")
        self.exit_code = 1
        self.engine.stop.request()

    async def _next_wake(self, watcher: Watcher, wake: asyncio.Event) -> str:
        """Sleep until files change, SIGHUP, a stop request, or the resync timer."""
        changed = asyncio.ensure_future(watcher.changed())
        hup = asyncio.ensure_future(wake.wait())
        stop = asyncio.ensure_future(self.engine.stop.wait())
        timeout = self.settings.resync
        if self.settling_until is not None:
            timeout = max(0.0, min(timeout, self.settling_until - time.time()))
        done, pending = await asyncio.wait(
            {changed, hup, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        # A 401/403 pauses submits; they are tried again once per resync period of wall-clock
        # time (saving specs must not postpone that forever), or at once on SIGHUP.
        paused_long = time.monotonic() - self.paused_at >= self.settings.resync
        if self.engine.ctx.fatal is not None and (paused_long or hup in done):
            self.engine.ctx.fatal = None
            self.reported.pop("fatal", None)
        self.events = None
        if changed in done:
            paths = changed.result()
            self.events = self._spec_files(paths)
            shown = ", ".join(sorted(os.path.relpath(p, self.ws.repo) for p in paths)[:3])
            return f"changed: {shown}"
        if hup in done:
            wake.clear()
            return "SIGHUP"
        if stop in done:
            return "stop"
        if self.settling_until is not None and time.time() >= self.settling_until:
            return "settled"
        return "resync"

    def _on_stop(self, signum: int) -> None:
        self.report.stopping(f"{name_of(signum)}: stopping; operations in flight are recorded "
                             "and resumed by the next start")  # fmt: skip

    def _on_hup(self, wake: asyncio.Event) -> None:
        self.report.reloaded("SIGHUP: reloading reconcile.yaml")
        wake.set()

    def _reload_config(self) -> None:
        """Every reconcile re-reads reconcile.yaml; a broken one keeps the last good settings."""
        try:
            config = self.ws.read_config()
        except ReconcileError as exc:
            problems = getattr(exc, "problems", None) or [exc]
            said = "; ".join(str(p) for p in problems)
            self._say("config", f"{said}; keeping the last good settings", level="error")
            return
        self.reported.pop("config", None)
        if config != self.ws.config:
            self.ws.config = config
            self.engine.ctx.pacer.cap = config.submit_per_minute
            wanted = self.engine.tuning.concurrency_for(config.concurrency)
            if wanted != self.engine.concurrency:
                # Tasks holding the old semaphore finish under it; new ones use the new limit.
                self.engine.concurrency = wanted
                self.slots = asyncio.Semaphore(wanted)
            self.report.reloaded("reloaded reconcile.yaml")

    def _spec_files(self, paths: set[str]) -> set[str] | None:
        """The spec files (repo-relative) that ``paths`` name, or None when any path is something
        else (reconcile.yaml, an image, a folder): then the whole repo is looked at."""
        rels = set()
        for path in paths:
            rel = Path(os.path.relpath(path, self.ws.repo)).as_posix()
            parts = rel.split("/")
            if (
                len(parts) < 2
                or parts[0] != "specs"
                or any(part.startswith(".") for part in parts)
                or not rel.endswith((".yaml", ".yml"))
                or os.path.isdir(path)
            ):
                return None
            rels.add(rel)
        return rels

    def _load_specs(self, changed: set[str] | None) -> LoadResult:
        result = None
        if changed is not None and self.last_load is not None:
            result = swap_edited(self.ws.repo, self.ws.config, self.last_load, changed)
        if result is None:
            result = load_specs(self.ws.repo, self.ws.config, index=self.index, changed=changed)
        self.index, self.last_load = result.index, result
        return result

    # -- one reconcile ---------------------------------------------------------------------------

    async def reconcile(self, reason: str, client: VeoClient | None) -> set[Path]:
        """Plan and start tasks for whatever is not under way yet; returns the images to watch."""
        self._reload_config()
        await asyncio.to_thread(self.ws.gens.check)
        changed, self.events = self.events, None
        result = await asyncio.to_thread(self._load_specs, changed)
        before, only = self.wanted, None
        if result.swapped is not None and not result.bad_files:  # then last_good is the load
            specs, unseen = self._swap(result.swapped), self.unseen
            self.wanted = {**before, **{n: s.key for n, s in result.swapped.items()}}
            only = {n for n, s in result.swapped.items() if before.get(n) != s.key}
        else:
            specs, unseen = self._load(result)
            self.wanted = {s.name: s.key for s in specs}
        if changed is not None and only is None:  # the names whose key changed (added, removed)
            now = self.wanted
            only = {n for n in before.keys() | now.keys() if before.get(n) != now.get(n)}
        self.specs, self.unseen = specs, unseen
        try:
            the_plan = await asyncio.to_thread(self._plan, specs, unseen, only)
        except ReconcileError as exc:
            self._say("plan", f"cannot plan: {exc}", level="error")
            return set()
        started = 0
        if only is None:  # a targeted plan leaves the other specs' settle wake-ups as they are
            self.settling_until = None
        for action in the_plan.actions:
            if action.kind is ActionKind.BLOCKED:
                self._say(f"blocked:{action.name}:{action.key}", action.reason, name=action.name,
                          level="warning")  # fmt: skip
                continue
            if action.kind not in CHANGES:
                continue
            if (action.kind in PAID or action.kind is ActionKind.RESUME) and client is None:
                self._say("no-key", "GPTPROTO_API_KEY is not set: nothing can be submitted",
                          level="error")  # fmt: skip
                continue
            task_key = f"{action.name}:{action.key or 'remove'}"
            if task_key in self.active:
                continue
            if action.kind in PAID and action.spec is not None and not self._settled(action.spec):
                continue
            task = asyncio.create_task(self._carry(action, client))
            self.active[task_key] = task
            task.add_done_callback(functools.partial(self._forget, task_key))
            started += 1
        await asyncio.to_thread(
            self.ws.tree.set_meta, META_KEY, self._meta(last_reconcile=now_iso())
        )
        self.report.reconciled(f"reconciled ({reason}): {len(specs)} specs, {started} started, "
                               f"{len(self.active)} in progress")  # fmt: skip
        return {self.ws.repo / s.image.path for s in specs if s.image}

    def _settled(self, spec: Desired) -> bool:
        """Whether the spec's file and image have been still for the settle period; if not, the
        next wake-up is set for when they will have been (a save meanwhile restarts the wait)."""
        paths = [self.ws.repo / spec.file] + (
            [self.ws.repo / spec.image.path] if spec.image else []
        )
        changed = 0.0
        for path in paths:
            with contextlib.suppress(OSError):
                changed = max(changed, path.stat().st_mtime)
        now = time.time()
        due = min(changed, now) + self.settings.settle  # a future mtime counts as "just now"
        if due <= now:
            self.reported.pop(f"settle:{spec.name}", None)
            return True
        self.settling_until = min(self.settling_until or due, due)
        self._say(f"settle:{spec.name}", f"waiting for {spec.file} to stay unchanged for "
                  f"{self.settings.settle:g}s before paying for it", name=spec.name)  # fmt: skip
        return False

    def _plan(self, specs: list[Desired], unseen: bool, only: set[str] | None = None) -> Plan:
        if only is not None:
            if not only:
                return Plan([])  # saved without a change of key: nothing to do (no targets = all)
            # The lock is taken in by full reconciles (git changes it, no event says so).
            names = frozenset(only)
            targeted = Options(hold_removals=unseen, targets=names)
            lock = lockfile.read(self.ws.lock_path)
            targets = [s for s in specs if s.name in only]
            outputs = self.ws.outputs_of(set(only))
            # The rows it reads (once, for observing and planning, as Workspace.plan does): its
            # specs' keys, their sources', and the keys of the videos those names have now.
            keys = {k for s in targets for k in (s.key, s.source_key) if k}
            keys |= {o.spec_key for o in outputs.values()} | {
                lock[n].spec_key for n in only if n in lock
            }
            read = as_seen(self.ws.gens, keys), outputs
            observed = self.ws.observe(targets, lock, only, read)
            plan = plans.make_plan(targets, *read, lock, observed, self.ws.config, targeted)
            if not any(a.kind in PAID and a.version is not None for a in plan.actions):
                return plan
        self.ws.import_lock(specs, self.report)
        return self.ws.plan(specs, Options(hold_removals=unseen))

    def _task_of(self, name: str) -> asyncio.Task[Outcome] | None:
        """The task at work on ``name`` (a chain's source, which its extensions wait for)."""
        key = self.wanted.get(name)
        return self.active.get(f"{name}:{key}") if key else None

    def _forget(self, task_key: str, _task: asyncio.Task[Outcome]) -> None:
        self.active.pop(task_key, None)

    def _swap(self, swapped: dict[str, Desired]) -> list[Desired]:
        """The last reconcile's specs with an edit's swapped in (their files stay valid)."""
        for spec in swapped.values():
            self.last_good[spec.file] = [swapped.get(s.name, s) for s in self.last_good[spec.file]]
        return [swapped.get(s.name, s) for s in self.specs]

    def _load(self, result: LoadResult) -> tuple[list[Desired], bool]:
        """Valid files as they are now; broken files as they last were when valid. The flag is
        True while some broken file has never been seen valid (its names are unknown)."""
        by_file: dict[str, list[Desired]] = {}
        for spec in result.specs:
            by_file.setdefault(spec.file, []).append(spec)
        for problem in result.problems:
            self._say(f"problem:{problem.file}", f"{problem}; keeping its last good version",
                      level="error")  # fmt: skip
        for topic in [t for t in self.reported if t.startswith("problem:")]:
            if topic[len("problem:") :] in result.files.keys() - result.bad_files:
                del self.reported[topic]
        for rel in result.files:
            if rel not in result.bad_files:
                self.last_good[rel] = by_file.get(rel, [])
        for rel in self.last_good.keys() - result.files.keys():
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

    async def _carry(self, action: Action, client: VeoClient | None) -> Outcome:
        outcome = await self.engine.run_action(action, client, self.slots, Options())
        if action.key:
            self.engine.ctx.submitted.discard(action.key)  # a later reconcile may submit it again
        with contextlib.suppress(ReconcileError):
            await asyncio.to_thread(self.ws.write_lock)
        if not outcome.finished:
            self.report.ended(outcome.name, outcome.state, outcome.message)
        if self.engine.ctx.fatal is not None:
            if "fatal" not in self.reported:
                self.paused_at = time.monotonic()
            self._say("fatal", f"{self.engine.ctx.fatal}; submits paused until the next resync",
                      level="error")  # fmt: skip
        return outcome

    def _say(
        self, topic: str, message: str, *, name: str | None = None, level: str = "info"
    ) -> None:
        """Log a standing condition once, not on every reconcile."""
        if self.reported.get(topic) == message:
            return
        self.reported[topic] = message
        self.report.condition(message, name=name, level=level)

    # -- liveness and shutdown -------------------------------------------------------------------

    def _meta(self, **extra: str) -> str:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "owner": self.ws.gens.owner,
                  "started": self.started, "heartbeat": now_iso(), "heartbeat_unix": time.time(),
                  "interval": self.settings.heartbeat, "state": "running"}  # fmt: skip
        previous = self.ws.tree.meta(META_KEY)
        if previous:
            with contextlib.suppress(ValueError):
                record["last_reconcile"] = json.loads(previous).get("last_reconcile")
        record.update(extra)
        return json.dumps(record)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await asyncio.to_thread(lambda: self.ws.tree.set_meta(META_KEY, self._meta()))
            except StateError as exc:
                await self._state_lost(exc)
                return
            except Exception:  # a busy db: the next beat tries again
                continue

    async def _shutdown(self, client: VeoClient | None) -> None:
        await settle(self.active.values(), self.engine.tuning.stop_grace)
        gens = await asyncio.to_thread(self.ws.gens.generations)
        for gen in gens.values():
            if gen.state is State.RUNNING:
                self.report.stopping(f"still running remotely, resumed next start: "
                                     f"{gen.operation}", name=gen.name)  # fmt: skip
        with contextlib.suppress(ReconcileError):
            await asyncio.to_thread(self.ws.write_lock)
        stopped = self._meta(state="stopped", stopped=now_iso())
        with contextlib.suppress(ReconcileError):
            await asyncio.to_thread(self.ws.tree.set_meta, META_KEY, stopped)
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
