"""The workspace: one asset repo as the engine sees it, with everything it reads and writes.

Paths (or the ``--sim`` sandbox's), settings, the state stores, the object cache and the lock file
belong together: every command opens one ``Workspace``, read-only ones without creating anything.
Here also live the steps that reconcile the records with each other before any plan: observing the
files, recovering dead processes' claims, adopting a fresh clone's lock, and writing the lock back.
All of it is blocking I/O; the engine calls it on a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from . import failpoints, lockfile, rescue, takes
from . import plan as planning
from .config import Config, load_config, shared_objects, state_label, state_url
from .errors import ReconcileError
from .events import Reporter
from .facts import video_identity
from .files import atomic_write_text, is_regular, sha256_file, sweep_temp
from .lifecycle import Event, Generation, State, expiry_text
from .loader import LoadResult, load_specs
from .lockfile import LockEntry
from .money import Spending, windows
from .objects import ObjectCache, Remote
from .owners import now_iso
from .plan import Observed, Options, Plan
from .s3objects import S3Objects
from .spec import Desired
from .sqlite_store import SqliteStore
from .store import GenerationStore, Output, TreeStore, as_seen

STATE_DIR = "state"
DB_FILE = "reconciler.db"
LOCK_META = "lock_sha256"  # what this tree last wrote to reconcile.lock


class Workspace:
    """One asset repo: its settings, its state, its cache and its lock file."""

    last_read: tuple[dict[str, Generation], dict[str, Output], dict[str, LockEntry]] | None = None

    def __init__(self, repo: Path, *, sandbox: bool = False, read_only: bool = False,
                 config: Config | None = None) -> None:  # fmt: skip
        self.repo = repo.resolve()
        self.sandbox = sandbox
        self.config: Config = self.read_config(config)
        state_dir = self.repo / STATE_DIR
        self.lock_path = self.repo / lockfile.LOCK_FILE
        if sandbox:
            state_dir = state_dir / "sim"
            self.lock_path = state_dir / lockfile.LOCK_FILE
        # The sandbox never shares: simulated jobs must not land in a team's real ledger.
        url = None if sandbox else state_url(self.config)
        store = SqliteStore(state_dir / DB_FILE, create=not read_only)
        if not read_only:
            _ignore_state(self.repo / STATE_DIR)
        self.gens: GenerationStore = store
        self.tree: TreeStore = store
        self.state_label = f"{(state_dir / DB_FILE).relative_to(self.repo)} (sqlite)"
        try:
            if url:
                self.gens = _shared_state(url, create=not read_only)
                self.state_label = state_label(url)
            # The sandbox never shares: simulated videos must not reach the team's bucket.
            remote = None if sandbox else _object_store(self.config)
        except BaseException:
            # Nothing opened here outlives a refusal (a daemon retries: no leaked connections).
            if self.gens is not store:
                self.gens.close()
            store.close()
            raise
        self.cache = ObjectCache(state_dir / "objects", remote=remote)
        self.files = threading.RLock()  # output files change one operation at a time
        self.rescue_path = state_dir / rescue.RESCUE_FILE

    def close(self) -> None:
        with contextlib.ExitStack() as stack:  # each is closed even when one before it fails
            stack.callback(self.cache.close)
            if self.tree is not self.gens:
                stack.callback(self.tree.close)
            stack.callback(self.gens.close)

    def read_config(self, read: Config | None = None) -> Config:
        """reconcile.yaml (``read``: as the caller read it), with the sandbox's output folder."""
        config = read or load_config(self.repo)
        if self.sandbox:
            # Simulated videos must never pass for paid ones: a sandbox run keeps its state, its
            # outputs and its lock apart from the real ones.
            config = replace(config, output_dir=f"{STATE_DIR}/sim/videos")
        return config

    def load(self) -> LoadResult:
        return load_specs(self.repo, self.config)

    def output_path(self, name: str, sha256: str) -> str:
        return planning.output_path(self.config, name, sha256)

    def seed(self, spec: Desired, *, state: State = State.PENDING) -> Generation:
        """The row a spec's generation starts from (inserted by a claim, an adoption or import)."""
        return Generation(
            spec_key=spec.key, name=spec.name, model=spec.model, resolution=spec.resolution,
            duration=spec.duration, cost=planning.estimate(self.config, spec), state=state,
            spec_json=json.dumps(spec.describe(), sort_keys=True),
        )  # fmt: skip

    def spending(self) -> Spending:
        """The ledger's charges today and this month (UTC), beside reconcile.yaml's budget."""
        day, month = (w.since for w in windows(per_day=0.0, per_month=0.0))
        c = self.config
        return Spending(
            today=self.gens.spent(day), month=self.gens.spent(month), per_run=c.budget_per_run,
            per_day=c.budget_per_day, per_month=c.budget_per_month,
        )  # fmt: skip

    # -- observe and plan ------------------------------------------------------------------------

    def observe(
        self, specs: list[Desired], lock: dict[str, LockEntry], only: set[str] | None,
        read: tuple[dict[str, Generation], dict[str, Output]],
    ) -> Observed:  # fmt: skip
        """Hash files whose size or mtime differ from the record (``only``: those names', watch),
        from the rows the caller read once for its plan (``read``: generations, outputs)."""
        gens, outputs = read
        lock = lock if only is None else {n: e for n, e in lock.items() if n in only}
        known = {o.path: o for o in outputs.values()}
        candidates = set(known) | {e.path for e in lock.values()}
        shas = {e.sha256 for e in lock.values()}
        for spec in specs:
            gen = gens.get(spec.key)
            if gen and gen.sha256:
                shas.add(gen.sha256)
                candidates.add(self.output_path(spec.name, gen.sha256))
        verified, root = {}, str(self.repo)
        for rel in sorted(candidates):
            try:
                st = os.stat(os.path.join(root, rel))  # no pathlib: ten thousand of these
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # a device, a FIFO or a folder is never opened (status reports it)
            row = known.get(rel)
            if row and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                verified[rel] = row.sha256
            else:
                verified[rel] = sha256_file(self.repo / rel)[0]
        pinned = self.pinned(specs, lock)
        shas.update(sha for sha in pinned.values() if sha)
        # The shared store is asked only about bytes found nowhere here, all at once: a clone
        # whose videos verify plans without it.
        cached = frozenset(self.cache.present(shas, ask=shas - set(verified.values())))
        return Observed(
            pinned=pinned,
            verified=verified, cached=cached, lock_foreign=bool(lock) and self.lock_is_foreign(),
            now=datetime.now(UTC),
        )  # fmt: skip

    def pinned(self, specs: list[Desired], lock: dict[str, LockEntry]) -> dict[str, str | None]:
        """The full sha256 each pinned spec's prefix names, among its takes and the lock's."""
        pins = [s for s in specs if s.take]
        if not pins:
            return {}
        attempts = self.gens.attempts()
        found = {}
        for spec in pins:
            shas = {r["sha256"] for r in attempts if r.get("sha256") and r.get("name") == spec.name}
            shas |= {e.sha256 for e in lock.values() if e.name == spec.name}
            found[spec.name] = takes.resolve(spec.take or "", shas)
        return found

    def plan(self, specs: list[Desired], options: Options | None = None) -> Plan:
        lock = lockfile.read(self.lock_path)
        read = as_seen(self.gens), self.tree.outputs()  # once: ten thousand rows take a while
        self.last_read = (*read, lock)  # what the plan was made from (the answer memo's inputs)
        observed = self.observe(specs, lock, None, read)
        return planning.make_plan(specs, *read, lock, observed, self.config, options)

    def outputs_of(self, names: set[str]) -> dict[str, Output]:
        return {n: o for n in names if (o := self.tree.output(n)) is not None}

    # -- records reconciled with each other --------------------------------------------------------

    def recover(self, reporter: Reporter) -> None:
        """Submits left by dead processes become unknown: shown, never resubmitted by themselves.

        Half-written files of dead processes go too; they were never renamed into place.
        """
        for folder in (self.repo / self.config.output_dir, self.cache.root, self.lock_path.parent):
            sweep_temp(folder)
        for gen in self.gens.recover_stale():
            reporter.unknown(gen.name, gen.error or "unknown", recovered=True)
        rescue.drain(self.rescue_path, lambda entry: not self._adopt_rescued(entry, reporter))
        if self.cache.remote is not None:
            # Cache warnings (an upload that failed) go to this run's reporter, said once; and
            # whatever this tree holds that the team's bucket lacks is shared now.
            self.cache.warn = lambda message: reporter.condition(message, level="warning")
            needed = {g.sha256 for g in self.gens.generations().values() if g.sha256}
            needed |= {o.sha256 for o in self.tree.outputs().values()}
            self.cache.share_all(
                needed | {e.sha256 for e in lockfile.read(self.lock_path).values()}
            )

    def _adopt_rescued(self, entry: rescue.Rescued, reporter: Reporter) -> bool:
        """Record an operation the db could not keep when it was accepted; True once it is
        recorded (or moot), so it leaves the journal."""
        gen = self.gens.get(entry.spec_key)
        if gen is not None and gen.operation == entry.operation:
            return True
        if gen is not None and gen.state in (State.RUNNING, State.SUCCEEDED, State.MATERIALIZED):
            reporter.unknown(entry.name, f"operation {entry.operation} was accepted (and may be "
                             "billed) but another one is in use for it; it is left unused",
                             recovered=True)  # fmt: skip
            return True
        seed = Generation(
            spec_key=entry.spec_key, name=entry.name, model=entry.model,
            resolution=entry.resolution, duration=entry.duration, cost=entry.cost,
            state=State.RUNNING,
        )  # fmt: skip
        events = (Event.ACCEPTED, Event.ADOPT)
        adopted = self.gens.transition(entry.spec_key, events, seed=seed, operation=entry.operation)
        if adopted is not None:
            reporter.accepted(entry.name, entry.operation)
        return adopted is not None

    def rescue_in_flight(self) -> int:
        """Copy every operation in flight into the rescue journal (the db is going away under
        this process: what it can still read is all that is left). Returns how many."""
        kept = 0
        for gen in self.gens.generations().values():
            if gen.state in (State.RUNNING, State.SUCCEEDED) and gen.operation:
                entry = rescue.Rescued(
                    spec_key=gen.spec_key, name=gen.name, operation=gen.operation, at=now_iso(),
                    model=gen.model, resolution=gen.resolution, duration=gen.duration,
                    cost=gen.cost,
                )  # fmt: skip
                with contextlib.suppress(OSError):
                    rescue.append(self.rescue_path, entry)
                    kept += 1
        return kept

    def rescue(self, spec: Desired, operation: str) -> bool:
        """Keep an accepted operation's name beside the db that failed to record it; False when
        even that fails (the caller prints it, the last place left)."""
        entry = rescue.Rescued(
            spec_key=spec.key, name=spec.name, operation=operation, at=now_iso(),
            model=spec.model, resolution=spec.resolution, duration=spec.duration,
            cost=planning.estimate(self.config, spec),
        )  # fmt: skip
        try:
            rescue.append(self.rescue_path, entry)
        except OSError:
            return False
        return True

    def lock_is_foreign(self) -> bool:
        """Whether reconcile.lock differs from what this tree last wrote: a pull, a checkout or
        a fresh clone put it there, and where it names another take of a key, it wins."""
        try:
            text = self.lock_path.read_bytes()
        except OSError:
            return False
        return hashlib.sha256(text).hexdigest() != self.tree.meta(LOCK_META)

    def import_lock(self, specs: list[Desired], reporter: Reporter) -> None:
        """Take the lock's word into the state, free of charge: a fresh clone's verified outputs,
        and, from a lock that changed outside (git), the takes it names that this tree lacks."""
        lock = lockfile.read(self.lock_path)
        if not lock:
            return
        # One question to the shared store for every entry whose file is not here, not one each.
        absent = [e.sha256 for e in lock.values() if not is_regular(self.repo / e.path)]
        self.cache.present(absent)
        foreign = self.lock_is_foreign()
        by_name = {s.name: s for s in specs}
        for name, entry in sorted(lock.items()):
            spec = by_name.get(name)
            if spec is None or spec.key != entry.spec_key or spec.take:
                continue  # a pinned take is the spec's word, not a generation to record
            gen = self.gens.get(entry.spec_key)  # re-read: names may share a key
            follow = foreign and planning.pulled(
                spec, gen, lock, planning.Observed(lock_foreign=True)
            )
            if gen is not None and gen.state is not State.PENDING and not follow:
                if gen.sha256 == entry.sha256 and self.tree.output(name) is None:
                    self._adopt_file(spec, entry)  # another name of the same video
                continue
            if self._adopt_file(spec, entry, event=Event.IMPORT):
                reporter.adopted(name, entry.path)
            elif foreign and self._fetch_locked(spec, entry):
                reporter.adopted(name, f"{entry.operation} (to download again)")

    def _adopt_file(self, spec: Desired, entry: LockEntry, *, event: Event | None = None) -> bool:
        """Record the entry's take for the spec if its bytes are here (its file verifies, or the
        cache holds them); with ``event``, rewrite the generation row to that take first."""
        path = self.repo / entry.path
        size = entry.bytes
        if is_regular(path):
            # Copying into the cache hashes the file: one read verifies it against the lock. A
            # file that does not match stays cached under its own hash, harmless, not adopted.
            sha, size = self.cache.add_file(path)
            on_disk = sha == entry.sha256
        else:
            on_disk = False
        if not on_disk and not self.cache.has(entry.sha256):
            return False
        if event is not None:
            uri, file_id = _remote(entry)
            row = replace(self.seed(spec, state=State.MATERIALIZED), sha256=entry.sha256,
                          bytes=size, video_uri=uri, file_id=file_id)  # fmt: skip
            adopted = self.gens.transition(
                spec.key, event, seed=row, operation=entry.operation or "",
                finished_at=entry.generated, remote_until=entry.expires,
            )  # fmt: skip
            if adopted is None:
                return False  # another process has a generation for it now: that one wins
        if on_disk:
            self.record_output(spec, entry.sha256, size, entry.path)
        return True

    def _fetch_locked(self, spec: Desired, entry: LockEntry) -> bool:
        """The lock's take is nowhere here but the provider may still hold it: follow its
        operation (poll, then download: no POST)."""
        if not planning.fetchable(entry, datetime.now(UTC)):
            return False
        row = replace(self.seed(spec, state=State.RUNNING), sha256=entry.sha256)
        fetched = self.gens.transition(
            spec.key, Event.FETCH_LOCKED, seed=row, operation=entry.operation,
            finished_at=entry.generated,
        )  # fmt: skip
        return fetched is not None

    def record_output(self, spec: Desired, sha: str, size: int, rel: str) -> None:
        """Record the file a name now has, then retire the file it had before (if another)."""
        previous = self.tree.output(spec.name)
        st = (self.repo / rel).stat()
        self.tree.set_output(
            Output(spec.name, spec.key, rel, sha, size, st.st_size, st.st_mtime_ns, now_iso())
        )
        if previous and previous.path != rel:
            self.unlink(previous.path)

    def unlink(self, rel: str) -> None:
        """Delete a file the tool wrote, never anything outside the output folder."""
        path = (self.repo / rel).resolve()
        if path.is_relative_to(self.repo / self.config.output_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def write_lock(self) -> None:
        """Rewrite the lock from the state, holding this tree's write lock, so that of two
        processes finishing together the last to write the lock also saw the latest state."""
        failpoints.hit("before_lock")
        with self.tree.exclusive():
            gens = self.gens.generations()
            entries = [
                LockEntry(
                    name=out.name, spec_key=out.spec_key, path=out.path, sha256=out.sha256,
                    bytes=out.bytes, model=gen.model if gen else "",
                    operation=gen.operation if gen else None,
                    generated=(gen.finished_at or out.materialized_at) if gen else out.materialized_at,
                    uri=gen.video_uri or None if gen else None,
                    expires=expiry_text(gen) if gen and gen.video_uri else None,
                )
                for out in self.tree.outputs().values()
                for gen in [gens.get(out.spec_key)]
            ]  # fmt: skip
            text = lockfile.write(self.lock_path, entries)
            self.tree.set_meta(LOCK_META, hashlib.sha256(text.encode()).hexdigest())

    def abandon(self, spec: Desired) -> None:
        """The user's word that a claim's owner is gone (another host, a skewed clock): the
        submission becomes unknown, with the usual ways out."""
        gen = self.gens.get(spec.key)
        if gen is None or gen.state is not State.SUBMITTING:
            state = gen.state if gen else State.NEW
            raise ReconcileError(f"{spec.name} is {state}, not being submitted: nothing to abandon")
        message = f"abandoned on the user's word (claimed by {gen.owner}); the job may exist"
        if self.gens.transition(spec.key, Event.AMBIGUOUS, expect_version=gen.version,
                                message=message) is None:  # fmt: skip
            raise ReconcileError(f"{spec.name} changed meanwhile; look at `reconcile status`")

    def resolve(self, spec: Desired, operation: str, *, force: bool = False) -> None:
        """Adopt an operation the user found for a spec (the way out of ``unknown``).

        Only where nothing better is recorded: adopting over a running or finished generation
        would throw away a paid job (``force`` says the user knows)."""
        self.recover(Reporter())
        event = Event.FORCE_ADOPT if force else Event.ADOPT
        seed = self.seed(spec, state=State.RUNNING)
        if self.gens.transition(spec.key, event, seed=seed, operation=operation) is None:
            current = self.gens.get(spec.key)
            assert current is not None
            raise ReconcileError(
                f"{spec.name} is {current.state}"
                + (f" with operation {current.operation}" if current.operation else "")
                + "; resolve is for unknown submissions (add --force to replace it anyway)"
            )


def _shared_state(url: str, *, create: bool) -> GenerationStore:
    """Generations and the ledger on PostgreSQL; psycopg is an optional extra."""
    try:
        from .pg_store import PgStore
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise ReconcileError(
            f"state: {state_label(url)} needs the PostgreSQL driver: "
            "pip install 'reconciler[postgres]'"
        ) from None
    return PgStore(url, create=create)


def _remote(entry: LockEntry) -> tuple[str | None, str | None]:
    """The provider copy a lock entry names: its URI and file id."""
    if not entry.uri:
        return None, None
    file_id = video_identity(entry.uri)
    return entry.uri, file_id if file_id != entry.uri else None


def _object_store(config: Config) -> Remote | None:
    """The team's object store (``objects:`` or RECONCILE_OBJECTS), or None for a local cache."""
    url = shared_objects(config)
    return S3Objects(url) if url else None


def _ignore_state(folder: Path) -> None:
    """state/ is never committed, in any asset repo: it holds this machine's db and cache."""
    ignore = folder / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(OSError):
            atomic_write_text(ignore, "# reconciler's local state: never commit it\n*\n")
