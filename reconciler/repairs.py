"""Repairs a team needs without paying: a conflicted lock merged, videos adopted without a lock.

Two people applying on two branches both rewrite ``reconcile.lock``; git then leaves conflict
markers, and deleting the lock (what a message used to suggest) makes a fresh clone pay for every
video again. ``merge_lock`` keeps both sides instead, and where both name a different take of one
spec, keeps the one whose file is here and whole, else the one made from the spec as it now is,
else the newer. ``adopt`` is the way back when the lock is gone altogether: a video already in the
output folder is taken, on the user's word, as its spec's current take.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from . import lockfile
from .errors import ReconcileError
from .files import is_regular, sha256_file
from .lifecycle import Event, State
from .lockfile import LOCK_FILE, LockEntry
from .spec import Desired
from .workspace import Workspace


def merge_lock(
    ws: Workspace, specs: list[Desired], *, ours: Path | None = None, theirs: Path | None = None
) -> list[str]:
    """Resolve the lock: its conflict markers, or (a git merge driver) two whole versions.
    Writes the merged lock over ``ours`` (default: the repo's lock); returns what was chosen."""
    target = ours or ws.lock_path
    if theirs is not None:
        ours_text = lockfile.read_text(target) or ""
        theirs_text = lockfile.read_text(theirs) or ""
    else:
        text = lockfile.read_text(target)
        if text is None:
            raise ReconcileError(f"there is no {LOCK_FILE} to merge")
        if not lockfile.conflicted(text):
            return []
        ours_text, theirs_text = lockfile.sides(text)
    a = lockfile.parse(ours_text) if ours_text.strip() else {}
    b = lockfile.parse(theirs_text) if theirs_text.strip() else {}
    keys = {s.name: s.key for s in specs}
    verified: dict[str, bool] = {}

    def whole(entry: LockEntry) -> bool:
        if entry.path not in verified:
            path = ws.repo / entry.path
            verified[entry.path] = is_regular(path) and sha256_file(path)[0] == entry.sha256
        return verified[entry.path]

    def choose(x: LockEntry, y: LockEntry) -> tuple[LockEntry, str]:
        if whole(x) != whole(y):
            return (x, "its file is here") if whole(x) else (y, "its file is here")
        current = keys.get(x.name)
        if (x.spec_key == current) != (y.spec_key == current):
            return (
                (x, "made from the spec as it is")
                if x.spec_key == current
                else (y, "made from the spec as it is")
            )
        newer = y if (y.generated or "") > (x.generated or "") else x
        return newer, "the newer take"

    merged, notes = lockfile.merge(a, b, choose)
    lockfile.write(target, merged)
    return notes


def adopt(ws: Workspace, specs: list[Desired], names: set[str] | None = None) -> list[str]:
    """Take ``<outputDir>/<name>.<16 hex>.mp4`` files as their specs' current takes, for specs
    the state and the lock know nothing of. The user's word that the file came from the spec as
    it now is: nothing else can tell. Returns one line per spec adopted or skipped."""
    lock = lockfile.read(ws.lock_path)
    folder = ws.repo / ws.config.output_dir
    said = []
    for spec in sorted(specs, key=lambda s: s.name):
        if names is not None and spec.name not in names:
            continue
        if spec.name in lock or ws.gens.get(spec.key) is not None:
            said.append(f"{spec.name}: skipped (the state or {LOCK_FILE} already has it)")
            continue
        pattern = re.compile(rf"{re.escape(spec.name)}\.([0-9a-f]{{16}})\.mp4")
        found = []
        for path in sorted(folder.glob(f"{spec.name}.*.mp4")) if folder.is_dir() else []:
            match = pattern.fullmatch(path.name)
            if match and is_regular(path):
                sha, size = sha256_file(path)
                if sha.startswith(match.group(1)):
                    found.append((path, sha, size))
        if len(found) != 1:
            what = "no video" if not found else f"{len(found)} videos"
            said.append(f"{spec.name}: skipped ({what} named {spec.name}.<hash>.mp4 that verify)")
            continue
        path, sha, size = found[0]
        ws.cache.add_file(path)
        row = replace(ws.seed(spec, state=State.MATERIALIZED), sha256=sha, bytes=size)
        if ws.gens.transition(spec.key, Event.IMPORT, seed=row, operation="") is None:
            said.append(f"{spec.name}: skipped (another process recorded it meanwhile)")
            continue
        rel = path.relative_to(ws.repo).as_posix()
        ws.record_output(spec, sha, size, rel)
        said.append(f"{spec.name}: adopted {rel}")
    return said
