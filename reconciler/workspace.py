"""The workspace: one asset repo as the engine sees it, with everything it reads and writes.

Paths (or the ``--sim`` sandbox's), settings, the state stores, the object cache and the lock file
belong together: every command opens one ``Workspace``, read-only ones without creating anything.
Here also live the steps that reconcile the records with each other before any plan: observing the
files, recovering dead processes' claims, adopting a fresh clone's lock, and writing the lock back.
All of it is blocking I/O; the engine calls it on a thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import replace
from pathlib import Path

from . import failpoints, lockfile
from . import plan as planning
from .config import Config, load_config
from .errors import ReconcileError
from .events import Reporter
from .lifecycle import Event, Generation, State
from .loader import LoadResult, load_specs
from .lockfile import LockEntry
from .objects import ObjectCache, sha256_file, sweep_temp
from .owners import now_iso
from .plan import Observed, Options, Plan
from .spec import Desired
from .sqlite_store import SqliteStore
from .store import GenerationStore, Output, TreeStore, as_seen

STATE_DIR = "state"
DB_FILE = "reconciler.db"


class Workspace:
    """One asset repo: its settings, its state, its cache and its lock file."""

    def __init__(self, repo: Path, *, sandbox: bool = False, read_only: bool = False) -> None:
        self.repo = repo.resolve()
        self.sandbox = sandbox
        self.config: Config = self.read_config()
        state_dir = self.repo / STATE_DIR
        self.lock_path = self.repo / lockfile.LOCK_FILE
        if sandbox:
            state_dir = state_dir / "sim"
            self.lock_path = state_dir / lockfile.LOCK_FILE
        store = SqliteStore(state_dir / DB_FILE, create=not read_only)
        self.gens: GenerationStore = store
        self.tree: TreeStore = store
        self.cache = ObjectCache(state_dir / "objects")
        self.files = threading.RLock()  # output files change one operation at a time

    def close(self) -> None:
        self.gens.close()
        if self.tree is not self.gens:
            self.tree.close()

    def read_config(self) -> Config:
        """reconcile.yaml, with the sandbox's output folder when running against the simulator."""
        config = load_config(self.repo)
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
        )  # fmt: skip

    # -- observe and plan ------------------------------------------------------------------------

    def observe(self, specs: list[Desired], lock: dict[str, LockEntry]) -> Observed:
        """Hash what needs it: files whose size or mtime differ from what was recorded."""
        outputs = self.tree.outputs()
        gens = self.gens.generations()
        known = {o.path: o for o in outputs.values()}
        candidates = set(known) | {e.path for e in lock.values()}
        shas = {e.sha256 for e in lock.values()}
        for spec in specs:
            gen = gens.get(spec.key)
            if gen and gen.sha256:
                shas.add(gen.sha256)
                candidates.add(self.output_path(spec.name, gen.sha256))
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
            specs, as_seen(self.gens), self.tree.outputs(), lock, observed, self.config, options
        )

    # -- records reconciled with each other --------------------------------------------------------

    def recover(self, reporter: Reporter) -> None:
        """Submits left by dead processes become unknown: shown, never resubmitted by themselves.

        Half-written files of dead processes go too; they were never renamed into place.
        """
        for folder in (self.repo / self.config.output_dir, self.cache.root, self.lock_path.parent):
            sweep_temp(folder)
        for gen in self.gens.recover_stale():
            reporter.unknown(gen.name, gen.error or "unknown", recovered=True)

    def import_lock(self, specs: list[Desired], reporter: Reporter) -> None:
        """A fresh clone: adopt every verified output of the lock into the state, free of charge."""
        lock = lockfile.read(self.lock_path)
        if not lock:
            return
        gens = self.gens.generations()
        by_name = {s.name: s for s in specs}
        for name, entry in lock.items():
            spec = by_name.get(name)
            if spec is None or spec.key != entry.spec_key:
                continue
            gen = gens.get(entry.spec_key)
            if gen is not None and gen.state is not State.PENDING:
                continue
            path = self.repo / entry.path
            if not path.is_file():
                continue
            # Copying into the cache hashes the file: one read verifies it against the lock. A file
            # that does not match stays cached under its own hash, harmless, and is not adopted.
            sha, size = self.cache.add_file(path)
            if sha != entry.sha256:
                continue
            row = replace(self.seed(spec, state=State.MATERIALIZED), sha256=sha, bytes=size)
            adopted = self.gens.transition(
                spec.key, Event.IMPORT, seed=row, operation=entry.operation or ""
            )
            if adopted is None:
                continue  # another process has a generation for it now: that one wins
            self.record_output(spec, sha, size, entry.path)
            reporter.adopted(name, entry.path)

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
                )
                for out in self.tree.outputs().values()
                for gen in [gens.get(out.spec_key)]
            ]  # fmt: skip
            lockfile.write(self.lock_path, entries)

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
