"""The engine: observe, plan and execute; the one reconciler behind ``apply`` and ``watch``.

Each spec's action runs as its own task, so one spec's failure never stops the others. The paid
step follows the write-ahead discipline of DESIGN.md: claim the row (``submitting``) in a write
transaction, POST, commit the operation name, then poll, download into the cache and materialize.
Stopping is cooperative: a stop request is seen before every claim and between polls, and a POST
already on the wire is always allowed to finish, because abandoning it is what makes jobs unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import failpoints, lockfile
from . import plan as planning
from .client import Backoff, OpResult, VeoClient, with_retries
from .config import ApiSettings, Config, load_config
from .errors import (
    AmbiguousError,
    ApiError,
    FatalError,
    OperationFailed,
    OperationLost,
    PermanentError,
    ReconcileError,
    StateError,
    TransientError,
)
from .lockfile import LockEntry
from .objects import ObjectCache, sha256_file, sweep_temp
from .pacing import Pacer
from .plan import Action, Observed, Options, Plan
from .spec import Desired, LoadResult, load_specs
from .store import (
    FAILED,
    MATERIALIZED,
    PENDING,
    RUNNING,
    SUBMITTING,
    SUCCEEDED,
    UNKNOWN,
    Generation,
    Output,
    Store,
    now_iso,
)

STATE_DIR = "state"
DEFAULT_CONCURRENCY = 4  # fits preview quotas of a few concurrent operations
FOLLOW_PENDING_TURNS = 3  # poll intervals a follower waits for a pending row to be claimed
MAX_IN_RUN_WAIT = 300.0  # longer Retry-After waits end the run for that spec instead
DB_FILE = "reconciler.db"


class _Deferred(Exception):
    """A paid action gives up for this run before claiming anything (stopping, a long hold)."""

    def __init__(self, message: str, *, state: str = PENDING) -> None:
        super().__init__(message)
        self.state = state


@dataclass
class Event:
    """One thing worth telling the user; the CLI renders it as a line, a progress bar or JSON."""

    kind: str
    message: str
    name: str | None = None
    level: str = "info"
    operation: str | None = None


@dataclass
class Tuning:
    concurrency: int | None = None  # None: reconcile.yaml's limits.concurrency, else 4
    poll_interval: float = 10.0
    stop_grace: float = 1.0  # seconds between a stop request and cancelling what is left
    http_timeout: float = 60.0
    submit_backoff: Backoff = field(default_factory=Backoff)
    poll_backoff: Backoff = field(default_factory=lambda: Backoff(base=2.0, cap=60.0, attempts=10))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Tuning:
        """Defaults, with the retry base and HTTP timeout adjustable for tests and slow links."""
        env = dict(os.environ) if env is None else env
        tuning = cls()
        if base := env.get("RECONCILE_RETRY_BASE"):
            seconds = _seconds(base, "RECONCILE_RETRY_BASE")
            tuning.submit_backoff = Backoff(base=seconds, cap=60.0, attempts=6)
            tuning.poll_backoff = Backoff(base=seconds, cap=60.0, attempts=10)
        if timeout := env.get("RECONCILE_HTTP_TIMEOUT"):
            tuning.http_timeout = _seconds(timeout, "RECONCILE_HTTP_TIMEOUT")
        return tuning


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 86400):
        raise ReconcileError(f"{name}={text!r}: give a number of seconds, such as 1 or 0.5")
    return value


@dataclass
class Outcome:
    name: str
    state: str  # materialized, failed, unknown, running, pending, removed
    message: str = ""


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.fatal is None and all(
            o.state in ("materialized", "removed") for o in self.outcomes
        )


class Engine:
    """One asset repo's reconciler."""

    def __init__(
        self,
        repo: Path,
        *,
        api: ApiSettings | None = None,
        tuning: Tuning | None = None,
        on_event: Callable[[Event], None] | None = None,
        sandbox: bool = False,
        read_only: bool = False,
    ) -> None:
        self.repo = repo.resolve()
        self.sandbox = sandbox
        self.config: Config = self.read_config()
        state_dir = self.repo / STATE_DIR
        self.lock_path = self.repo / lockfile.LOCK_FILE
        if sandbox:
            state_dir = state_dir / "sim"
            self.lock_path = state_dir / lockfile.LOCK_FILE
        self.api = api
        self.tuning = tuning or Tuning.from_env()
        self.concurrency = self.tuning.concurrency or self.config.concurrency or DEFAULT_CONCURRENCY
        self.store = Store(state_dir / DB_FILE, create=not read_only)
        self.cache = ObjectCache(state_dir / "objects")
        self._fatal: FatalError | None = None
        self._submitted: set[str] = set()  # keys this process has POSTed for during this run
        # apply stops at the first 401/403; watch only pauses submits until its next resync.
        self.stop_on_fatal = True
        # watch tells a task whether its spec still wants this key before it places a file.
        self.still_wanted: Callable[[str, str], bool] = lambda _name, _key: True
        self.stop_signal: int | None = None
        self.emit = on_event or (lambda _event: None)
        self._stop = asyncio.Event()
        self.pacer = Pacer(cap_per_minute=self.config.submit_per_minute)

    def close(self) -> None:
        self.store.close()

    def read_config(self) -> Config:
        """reconcile.yaml, with the sandbox's output folder when running against the simulator."""
        config = load_config(self.repo)
        if self.sandbox:
            # Simulated videos must never pass for paid ones: a sandbox run keeps its state, its
            # outputs and its lock apart from the real ones.
            config = replace(config, output_dir=f"{STATE_DIR}/sim/videos")
        return config

    # -- observe and plan ------------------------------------------------------------------------

    def load(self) -> LoadResult:
        return load_specs(self.repo, self.config)

    def observe(self, specs: list[Desired], lock: dict[str, LockEntry]) -> Observed:
        """Hash what needs it: files whose size or mtime differ from what was recorded."""
        outputs = self.store.outputs()
        gens = self.store.generations()
        known = {o.path: o for o in outputs.values()}
        candidates = set(known) | {e.path for e in lock.values()}
        shas = {e.sha256 for e in lock.values()}
        for spec in specs:
            gen = gens.get(spec.key)
            if gen and gen.sha256:
                shas.add(gen.sha256)
                candidates.add(planning.output_path(self.config, spec.name, gen.sha256))
        verified = {}
        for rel in sorted(candidates):
            path = self.repo / rel
            try:
                st = path.stat()
            except OSError:
                continue
            row = known.get(rel)
            if row and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                verified[rel] = row.sha256
            else:
                verified[rel] = sha256_file(path)[0]
        cached = frozenset(s for s in shas if self.cache.has(s))
        return Observed(verified=verified, cached=cached)

    def plan(self, specs: list[Desired], options: Options | None = None) -> Plan:
        lock = lockfile.read(self.lock_path)
        observed = self.observe(specs, lock)
        return planning.make_plan(
            specs,
            self.store.generations_as_seen(),
            self.store.outputs(),
            lock,
            observed,
            self.config,
            options,
        )

    def recover(self) -> None:
        """Submits left by dead processes become unknown: shown, never resubmitted by themselves.

        Half-written files of dead processes go too; they were never renamed into place.
        """
        for folder in (self.repo / self.config.output_dir, self.cache.root, self.lock_path.parent):
            sweep_temp(folder)
        for gen in self.store.recover_stale():
            self.emit(Event("unknown", gen.error or "unknown", name=gen.name, level="warning"))

    def import_lock(self, specs: list[Desired]) -> None:
        """A fresh clone: adopt every verified output of the lock into the state, free of charge."""
        lock = lockfile.read(self.lock_path)
        if not lock:
            return
        gens = self.store.generations()
        by_name = {s.name: s for s in specs}
        for name, entry in lock.items():
            spec = by_name.get(name)
            if spec is None or spec.key != entry.spec_key:
                continue
            gen = gens.get(entry.spec_key)
            if gen is not None and gen.state != PENDING:
                continue
            path = self.repo / entry.path
            if not path.is_file():
                continue
            # Copying into the cache hashes the file: one read verifies it against the lock. A file
            # that does not match stays cached under its own hash, harmless, and is not adopted.
            sha, size = self.cache.add_file(path)
            if sha != entry.sha256:
                continue
            row = _generation(spec, self.config, state=MATERIALIZED)
            row.sha256, row.bytes = sha, size
            if not self.store.adopt(row, operation=entry.operation or "", state=MATERIALIZED,
                                    over=(PENDING,)):  # fmt: skip
                continue  # another process has a generation for it now: that one wins
            self._record_output(spec, sha, size, entry.path)
            self.emit(
                Event("adopted", f"adopted {entry.path} from {lockfile.LOCK_FILE}", name=name)
            )

    # -- apply -----------------------------------------------------------------------------------

    def client(self) -> VeoClient | None:
        return VeoClient(self.api, timeout=self.tuning.http_timeout) if self.api else None

    def request_stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    def forget_submitted(self, key: str) -> None:
        """watch: a finished task's key may be submitted again by a later reconcile."""
        self._submitted.discard(key)

    def clear_fatal(self) -> None:
        self._fatal = None

    @property
    def fatal(self) -> FatalError | None:
        return self._fatal

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def apply(self, plan: Plan, *, options: Options | None = None) -> Summary:
        """Execute a plan. Raises nothing for API trouble: every outcome lands in the summary."""
        opts = options or Options()
        summary = Summary()
        self._fatal = None
        self._submitted = set()
        slots = asyncio.Semaphore(self.concurrency)
        client = self.client() if plan.changes else None
        tasks = [
            asyncio.create_task(self.run_action(action, client, slots, opts), name=action.name)
            for action in plan.actions
        ]
        reaper = asyncio.create_task(self._cancel_after_grace(tasks))
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            reaper.cancel()
            if client is not None:
                await client.aclose()
        for action, result in zip(plan.actions, results, strict=True):
            if (
                isinstance(result, Outcome) and action.kind == planning.NOOP and action.spec
                and action.key in self._submitted
            ):  # fmt: skip
                # Another name on this key was --replace'd: this one follows the new bytes.
                result = await self.run_action(
                    replace(action, kind=planning.RESUME), client, slots, opts
                )
            if isinstance(result, Outcome):
                summary.outcomes.append(result)
            elif isinstance(result, asyncio.CancelledError):
                gen = self.store.get(action.key or "")
                state = gen.state if gen else PENDING
                where = f" ({gen.operation})" if gen and gen.operation else ""
                summary.outcomes.append(
                    Outcome(action.name, state, f"interrupted{where}; the next run resumes it")
                )
            else:
                raise result
        self.write_lock()
        summary.fatal = str(self._fatal) if self._fatal else None
        summary.stopped = self.stopping
        return summary

    async def _cancel_after_grace(self, tasks: list[asyncio.Task[Outcome]]) -> None:
        """After a stop request, give tasks a moment to settle, then cancel what is left.

        Everything a cancelled task leaves behind is recorded already (an operation name, a
        succeeded row), and a POST cut off while waiting for its answer records itself as
        unknown (see ``_post``): the run ends within the 2 s a user expects, nothing forgotten.
        """
        await self._stop.wait()
        await asyncio.sleep(self.tuning.stop_grace)
        for task in tasks:
            if not task.done():
                task.cancel()

    def write_lock(self) -> None:
        """Rewrite the lock from the db, inside a write transaction, so that of two processes
        finishing together the last to write the lock is also the one that saw the latest state."""
        failpoints.hit("before_lock")
        with self.store.tx():
            gens = self.store.generations()
            entries = [
                LockEntry(
                    name=out.name, spec_key=out.spec_key, path=out.path, sha256=out.sha256,
                    bytes=out.bytes, model=gen.model if gen else "",
                    operation=gen.operation if gen else None,
                    generated=(gen.finished_at or out.materialized_at) if gen else out.materialized_at,
                )
                for out in self.store.outputs().values()
                for gen in [gens.get(out.spec_key)]
            ]  # fmt: skip
            lockfile.write(self.lock_path, entries)

    async def run_action(
        self, action: Action, client: VeoClient | None, slots: asyncio.Semaphore, opts: Options
    ) -> Outcome:
        """Carry one action to its end; every API trouble becomes the Outcome, never an exception."""
        try:
            if action.kind == planning.NOOP:
                return Outcome(action.name, "materialized", "up to date")
            if action.kind == planning.REMOVE:
                return self._remove(action)
            if action.kind == planning.BLOCKED:
                return Outcome(action.name, action.state or FAILED, action.reason)
            assert action.spec is not None
            if action.kind == planning.MATERIALIZE:
                return self._materialize(action.spec, action.sha256 or "")
            if client is None:
                raise StateError("no API configured")
            async with slots:
                return await self._generate(action, client, opts)
        except FatalError as exc:
            self._fatal = self._fatal or exc
            if self.stop_on_fatal:
                self.request_stop()
            # The reason is said once, as the summary's stop line (Summary.fatal), not per spec.
            return Outcome(action.name, "pending", "not accepted: the account was refused")
        except TransientError as exc:
            gen = self.store.get(action.key or "")
            return Outcome(action.name, gen.state if gen else "pending", str(exc))
        except ReconcileError as exc:
            self.emit(Event("failed", str(exc), name=action.name, level="error"))
            return Outcome(action.name, FAILED, str(exc))
        except OSError as exc:
            # The output folder or cache is unwritable: the bytes (if any) are safe in the cache
            # or with the provider, and the next run places them once the cause is fixed.
            message = f"{exc.filename or 'a file'}: {exc.strerror or exc}"
            self.emit(Event("failed", message, name=action.name, level="error"))
            return Outcome(action.name, FAILED, message)

    async def _generate(self, action: Action, client: VeoClient, opts: Options) -> Outcome:
        """Drive one spec key to bytes in the cache, then materialize it.

        A loop over the row's state, re-read from the db each turn, so that whatever another
        process did meanwhile (claimed it, replaced its operation, downloaded it) is followed.
        A claim is made only from the row exactly as the plan saw it (its version): once anyone
        else has touched the row, this task follows and never pays behind them.
        """
        spec = action.spec
        assert spec is not None
        allowed = self._claimable(action, opts)
        expect = action.version
        # One paid POST per key per run, however many names share the key.
        want_submit = action.kind in planning.PAID and spec.key not in self._submitted
        idle_turns = 0
        while True:
            gen = self.store.get(spec.key)
            if (
                want_submit
                and gen is not None
                and (gen.state not in allowed or (expect is not None and gen.version != expect))
            ):
                want_submit = False  # someone else moved the row on: follow it
            if gen is None and not want_submit:
                return Outcome(spec.name, PENDING, "not submitted in this run")
            if want_submit:
                want_submit = False
                try:
                    gen = await self._submit(spec, client, allowed, expect)
                except _Deferred as deferred:
                    return Outcome(spec.name, deferred.state, str(deferred))
                if gen is None:
                    continue  # another process claimed it first: re-read and follow it
                if gen.state == PENDING:  # this task's own retries are spent for this run
                    return Outcome(
                        spec.name, PENDING, gen.error or "not accepted; the next run retries"
                    )
            assert gen is not None
            if gen.state == SUBMITTING:
                if self.store.stale(gen.owner, gen.claimed_at):
                    self.store.recover_stale()  # its owner died mid-submit: record, then report
                    continue
                if not await self._wait(self.tuning.poll_interval):
                    return Outcome(spec.name, SUBMITTING, "being submitted by another process")
                continue
            if gen.state == RUNNING:
                result = await self._poll_until_done(spec, gen, client)
                if result is None:
                    now = self.store.get(spec.key)
                    if now is not None and now.state != RUNNING and not self.stopping:
                        continue  # recorded as unknown (the job vanished), or moved on elsewhere
                    return Outcome(spec.name, RUNNING, f"still running remotely: {gen.operation}")
                if result.error is not None:
                    state = self._record_op_error(spec, gen, result.error)
                    if state == PENDING and not self.stopping:
                        now = self.store.get(spec.key)
                        want_submit, allowed = True, (PENDING,)
                        expect = now.version if now else None
                    elif state is not None:
                        return Outcome(spec.name, state, str(result.error))
                    continue
                if self.store.mark_succeeded(spec.key, operation=gen.operation or "",
                                             video_uri=result.video_uri or "",
                                             file_id=result.file_id or ""):  # fmt: skip
                    failpoints.hit("after_succeeded")
                continue
            if gen.state == SUCCEEDED or (
                gen.state == MATERIALIZED and gen.sha256 and not self.cache.has(gen.sha256)
                and gen.file_id
            ):  # fmt: skip
                await self._download(spec, gen, client)
                continue
            if gen.state == MATERIALIZED and gen.sha256:
                if self.cache.has(gen.sha256):
                    return self._materialize(spec, gen.sha256)
                return Outcome(spec.name, PENDING, "its bytes are in neither the cache nor the "
                               "output folder nor with the provider; the next apply plans a paid "
                               "regeneration")  # fmt: skip
            if gen.state == PENDING and idle_turns < FOLLOW_PENDING_TURNS and not self.stopping:
                # Whoever put it back to pending (an op error being resubmitted, by another task
                # or process) is likely about to claim it again: give them a few poll intervals.
                idle_turns += 1
                if await self._wait(self.tuning.poll_interval):
                    continue
            if gen.state == PENDING:
                return Outcome(
                    spec.name, PENDING, gen.error or "not accepted; the next run retries"
                )
            return Outcome(spec.name, gen.state, gen.error or "")

    def _claimable(self, action: Action, opts: Options) -> tuple[str, ...]:
        """The states a paid action may claim its row from: pending, plus what the user allowed."""
        assert action.spec is not None
        allowed = [PENDING]
        if opts.retry_failed:
            allowed.append(FAILED)
        if opts.resubmit_unknown:
            allowed.append(UNKNOWN)
            if action.state == UNKNOWN and action.kind in planning.PAID:
                self.emit(Event("resubmit", "resubmitting although the first submission may have "
                                "been accepted: this may be paid twice (--resubmit-unknown)",
                                name=action.name, level="warning"))  # fmt: skip
        if action.spec.name in opts.replace:
            allowed += [MATERIALIZED, FAILED, UNKNOWN]
            if action.state == UNKNOWN:
                self.emit(Event("resubmit", "--replace of a spec whose submission is unknown: "
                                "this may be paid twice", name=action.name,
                                level="warning"))  # fmt: skip
        if action.kind in planning.PAID and action.state == MATERIALIZED:
            allowed.append(MATERIALIZED)  # the plan found its bytes lost everywhere: pay again
        return tuple(allowed)

    async def _pace(self, spec: Desired) -> None:
        """Wait for the pacer's slot before claiming (a claim must never sit waiting); raises
        _Deferred when stopping or when the slot is too far off for this run."""
        wait = self.pacer.wait_needed()
        if wait > MAX_IN_RUN_WAIT:
            message = f"submits are held for {wait / 60:.0f} min after a rate limit"
            self.emit(Event("retry", f"{message}: left pending for a later run", name=spec.name,
                            level="warning"))  # fmt: skip
            raise _Deferred(message)
        turn = asyncio.ensure_future(self.pacer.turn())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not turn.done():
            turn.cancel()
        if self.stopping:
            raise _Deferred("not submitted: stopping")

    async def _submit(
        self, spec: Desired, client: VeoClient, allowed: tuple[str, ...], expect: int | None
    ) -> Generation | None:
        """The only paid call, wrapped in the write-ahead claim. None: claimed by someone else."""
        body = spec.request_body(self.repo)  # before the claim: a bad image must not leave a claim
        backoff = self.tuning.submit_backoff
        for attempt in range(backoff.attempts):
            await self._pace(spec)
            if not self.still_wanted(spec.name, spec.key):
                raise _Deferred("the spec changed before it was sent", state="superseded")
            if self.stopping or self._fatal is not None:
                why = "the account was refused" if self._fatal else "stopping"
                raise _Deferred(f"not submitted: {why}")
            failpoints.hit("before_claim")
            row = _generation(spec, self.config, state=PENDING)
            first = attempt == 0
            claimed = self.store.claim(
                row,
                allowed=allowed if first else (PENDING,),
                expect_version=expect if first else None,
            )
            if claimed is None:
                return None
            failpoints.hit("after_claim")
            self._submitted.add(spec.key)
            if attempt == 0:
                self.emit(Event("submit", f"submitting ({spec.model}, {spec.resolution}, "
                                f"{spec.duration}s)", name=spec.name))  # fmt: skip
            try:
                operation = await self._post(spec, client, body)
            except TransientError as exc:
                self._note_not_accepted(spec, exc, final=False)
                if exc.status == 429:
                    wait = self.pacer.rate_limited(exc.retry_after, backoff.delay(attempt))
                else:
                    wait = backoff.delay(attempt, exc.retry_after)
                last = attempt + 1 >= backoff.attempts
                if wait > MAX_IN_RUN_WAIT or last or self.stopping:
                    note = f"asked to wait {wait / 60:.0f} min: " if wait > MAX_IN_RUN_WAIT else ""
                    self.emit(Event("retry", f"{exc}; {note}left pending for a later run",
                                    name=spec.name, level="warning"))  # fmt: skip
                    return self.store.get(spec.key)
                self.emit(Event("retry", f"{exc}; retrying in {wait:.1f}s", name=spec.name,
                                level="warning"))  # fmt: skip
                if not await self._wait(wait):
                    return self.store.get(spec.key)
                continue
            except FatalError as exc:
                self._note_not_accepted(spec, exc, final=False)
                raise
            except AmbiguousError as exc:
                self.store.mark_unknown(spec.key, str(exc))
                self.emit(Event("unknown", str(exc), name=spec.name, level="error"))
                return self.store.get(spec.key)
            except PermanentError as exc:
                self._note_not_accepted(spec, exc, final=True)
                self.emit(Event("failed", str(exc), name=spec.name, level="error"))
                return self.store.get(spec.key)
            self.pacer.succeeded()
            self.emit(Event("submitted", "accepted", name=spec.name, operation=operation))
            return self.store.get(spec.key)
        return self.store.get(spec.key)

    async def _post(self, spec: Desired, client: VeoClient, body: dict[str, Any]) -> str:
        """POST and commit the operation name. Cancelled mid-way (a stop past its grace), the row
        is recorded as unknown first: the request may have been accepted."""
        try:
            operation = await client.submit(spec.model, body)
        except asyncio.CancelledError:
            self.store.mark_unknown(spec.key, "interrupted while waiting for the provider's "
                                    "answer to the submission; the job may exist and be billed")  # fmt: skip
            raise
        failpoints.hit("after_post")
        self.store.mark_running(spec.key, operation)
        failpoints.hit("after_running")
        return operation

    def _note_not_accepted(self, spec: Desired, exc: ApiError, *, final: bool) -> None:
        kind = getattr(exc, "kind", "rejected") if final else "transient"
        self.store.mark_not_accepted(spec.key, outcome=kind, message=str(exc), status=exc.status,
                                     final=final, kind=kind)  # fmt: skip

    def _record_op_error(self, spec: Desired, gen: Generation, error: PermanentError) -> str | None:
        """None when the row no longer holds this operation (another process moved it on)."""
        retries = self.config.operation_failed_retries
        counted = isinstance(error, OperationFailed)
        state = self.store.mark_failed(spec.key, message=str(error), kind=error.kind,
                                       operation=gen.operation or "", count_failure=counted,
                                       retries=retries)  # fmt: skip
        if state is None:
            return None
        level = "warning" if state == PENDING else "error"
        note = "; resubmitting (not billed)" if state == PENDING else ""
        self.emit(Event("failed", f"{error}{note}", name=spec.name, level=level))
        return state

    async def _poll_until_done(
        self, spec: Desired, gen: Generation, client: VeoClient
    ) -> OpResult | None:
        """Poll on the schedule; None when stopping or when polling keeps failing this run."""
        operation = gen.operation or ""
        self.emit(Event("poll", "waiting for the operation", name=spec.name, operation=operation))
        while True:
            failpoints.hit("before_poll")
            try:
                result = await with_retries(
                    lambda: client.poll(spec.model, operation),
                    self.tuning.poll_backoff,
                    sleep=self._sleep_or_stop,
                    on_retry=self._retrying(spec),
                )
            except OperationLost as exc:
                message = (
                    f"{exc} on every poll: the job expired or vanished, and it may have been "
                    f"billed; if it reappears `reconcile resolve {spec.name} --operation "
                    f"{operation}`, else `apply --resubmit-unknown` pays for a new one"
                )
                if self.store.mark_unknown(spec.key, message, operation=operation):
                    self.emit(Event("unknown", message, name=spec.name, level="error"))
                return None
            except TransientError as exc:
                self.emit(Event("retry", f"polling keeps failing ({exc}); will resume next run",
                                name=spec.name, level="warning"))  # fmt: skip
                return None
            except PermanentError as exc:
                return OpResult(done=True, error=exc)
            if result.done:
                return result
            if not await self._wait(self.tuning.poll_interval):
                return None

    async def _download(self, spec: Desired, gen: Generation, client: VeoClient) -> None:
        async def once() -> tuple[str, int]:
            def sink(chunk: bytes) -> None:
                incoming.write(chunk)
                failpoints.hit("mid_download")

            with self.cache.writer() as incoming:
                await client.download(gen.video_uri or "", gen.file_id, sink)
                with incoming.tmp.open("rb") as fh:
                    head = fh.read(12)
                if head[4:8] != b"ftyp":
                    raise TransientError("the downloaded file is not an MP4 video")
            failpoints.hit("after_download")
            return incoming.sha256, incoming.size

        self.emit(Event("download", "downloading", name=spec.name, operation=gen.operation))
        try:
            sha, size = await with_retries(
                once, self.tuning.poll_backoff, sleep=self._sleep_or_stop,
                on_retry=self._retrying(spec),
            )  # fmt: skip
        except PermanentError as exc:
            if gen.state == MATERIALIZED and gen.file_id:
                # Its cached copy was lost before, and now the provider's too.
                self.store.forget_remote(spec.key, file_id=gen.file_id)
                raise PermanentError(
                    "its cached copy is gone and the provider deleted its file (404): the next "
                    "plan shows a paid regeneration", status=404, reason="expired",
                ) from None  # fmt: skip
            self.store.mark_failed(spec.key, message=str(exc), kind=exc.reason or "rejected",
                                   operation=gen.operation)  # fmt: skip
            raise
        if self.store.mark_materialized(spec.key, file_id=gen.file_id, sha256=sha, size=size):
            failpoints.hit("after_cached")

    def _retrying(self, spec: Desired) -> Callable[[TransientError, float], None]:
        def note(exc: TransientError, wait: float) -> None:
            self.emit(Event("retry", f"{exc}; retrying in {wait:.1f}s", name=spec.name,
                            level="warning"))  # fmt: skip

        return note

    def _materialize(self, spec: Desired, sha: str) -> Outcome:
        """Place the cached bytes at the content-hashed path and retire the name's previous file."""
        rel = planning.output_path(self.config, spec.name, sha)
        if not self.still_wanted(spec.name, spec.key):
            return Outcome(
                spec.name, "superseded", "the spec changed meanwhile; bytes kept in cache"
            )
        if not self.cache.verify(sha):
            found = self._find_on_disk(sha)
            if found is None:
                raise StateError(
                    f"{spec.name}: cached video {sha[:16]} is missing; run apply again"
                )
            self.cache.add_file(found)
        target = self.repo / rel
        if not (target.is_file() and sha256_file(target)[0] == sha):
            self.cache.materialize(sha, target)
            failpoints.hit("after_rename")
        self._record_output(spec, sha, target.stat().st_size, rel)
        self.emit(Event("materialized", f"materialized {rel}", name=spec.name))
        return Outcome(spec.name, "materialized", rel)

    def _find_on_disk(self, sha: str) -> Path | None:
        for entry in lockfile.read(self.lock_path).values():
            path = self.repo / entry.path
            if entry.sha256 == sha and path.is_file() and sha256_file(path)[0] == sha:
                return path
        return None

    def _record_output(self, spec: Desired, sha: str, size: int, rel: str) -> None:
        previous = self.store.output(spec.name)
        st = (self.repo / rel).stat()
        self.store.set_output(Output(spec.name, spec.key, rel, sha, size, st.st_size,
                                     st.st_mtime_ns, now_iso()))  # fmt: skip
        if previous and previous.path != rel:
            self._unlink(previous.path)

    def _remove(self, action: Action) -> Outcome:
        """The file leaves the output folder; its bytes stay in the cache (a fresh clone's outputs
        were never cached, so they are cached here first: a rename must not lose them)."""
        if action.path:
            path = self.repo / action.path
            out = self.store.output(action.name)
            known = out.sha256 if out else None
            if path.is_file() and not (known and self.cache.has(known)):
                self.cache.add_file(path)
            self._unlink(action.path)
        self.store.delete_output(action.name)
        self.emit(Event("removed", f"removed {action.path}", name=action.name))
        return Outcome(action.name, "removed", action.path or "")

    def _unlink(self, rel: str) -> None:
        path = (self.repo / rel).resolve()
        if path.is_relative_to(self.repo / self.config.output_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless asked to stop; False when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return not self.stopping

    async def _sleep_or_stop(self, seconds: float) -> None:
        if not await self._wait(seconds):
            raise TransientError("stopping")

    # -- user's word on single generations ------------------------------------------------------

    def resolve(self, spec: Desired, operation: str, *, force: bool = False) -> None:
        """Adopt an operation the user found for a spec (the way out of ``unknown``).

        Only where nothing better is recorded: adopting over a running or finished generation
        would throw away a paid job (``force`` says the user knows)."""
        self.recover()
        gen = _generation(spec, self.config, state=RUNNING)
        if not self.store.adopt(gen, operation=operation, over=None if force else
                                (PENDING, UNKNOWN, FAILED)):  # fmt: skip
            current = self.store.get(spec.key)
            assert current is not None
            raise ReconcileError(
                f"{spec.name} is {current.state}"
                + (f" with operation {current.operation}" if current.operation else "")
                + "; resolve is for unknown submissions (add --force to replace it anyway)"
            )


def _generation(spec: Desired, config: Config, *, state: str) -> Generation:
    return Generation(
        spec_key=spec.key, name=spec.name, model=spec.model, resolution=spec.resolution,
        duration=spec.duration, cost=planning.estimate(config, spec), state=state,
    )  # fmt: skip


__all__ = ["Engine", "Event", "Outcome", "Summary", "Tuning"]
