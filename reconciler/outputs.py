"""Outputs: placing cached bytes at a name's content-hashed path, removing them, recording both.

An output is a copy (or reflink) of a cache object, written beside its target and renamed into
place; the previous file of the name is retired only once the new one is recorded. These are
blocking file operations (hashing, copying, fsync), so the engine runs them on threads, one at a
time per working tree: a rename in a fresh clone places the new name from the old name's file
while removing that file, and the two must not interleave.
"""

from __future__ import annotations

from pathlib import Path

from . import failpoints, lockfile
from .errors import StateError
from .files import sha256_file
from .lifecycle import Outcome, OutcomeState
from .spec import Desired
from .workspace import Workspace


def place(ws: Workspace, spec: Desired, sha: str, *, defer_sync: bool = False) -> Outcome:
    """Put the cached bytes ``sha`` at the spec's content-hashed path and record it.

    A cache object whose bytes no longer match its name is not served: one only the team's
    shared store holds is pulled (and checked) first; else a verified copy on disk (a fresh
    clone's locked file) stands in for it, else the run says what is missing.
    """
    with ws.files:
        return _place(ws, spec, sha, defer_sync)


def _place(ws: Workspace, spec: Desired, sha: str, defer_sync: bool) -> Outcome:
    rel = ws.output_path(spec.name, sha)
    if not ws.cache.fetch(sha):
        found = _find_on_disk(ws, sha)
        if found is None:
            raise StateError(f"{spec.name}: cached video {sha[:16]} is missing; run apply again")
        ws.cache.add_file(found)
    target = ws.repo / rel
    if not (target.is_file() and sha256_file(target)[0] == sha):
        ws.cache.materialize(sha, target, defer_sync=defer_sync)
        failpoints.hit("after_rename")
    ws.record_output(spec, sha, target.stat().st_size, rel)
    return Outcome(spec.name, OutcomeState.MATERIALIZED, rel, path=rel)


def remove(ws: Workspace, name: str, rel: str | None) -> Outcome:
    """The file leaves the output folder; its bytes stay in the cache (a fresh clone's outputs
    were never cached, so they are cached here first: a rename must not lose them)."""
    with ws.files:
        return _remove(ws, name, rel)


def _remove(ws: Workspace, name: str, rel: str | None) -> Outcome:
    if rel:
        path = ws.repo / rel
        out = ws.tree.output(name)
        known = out.sha256 if out else None
        if path.is_file() and not (known and ws.cache.has(known)):
            ws.cache.add_file(path)
        ws.unlink(rel)
    ws.tree.delete_output(name)
    return Outcome(name, OutcomeState.REMOVED, rel or "")


def _find_on_disk(ws: Workspace, sha: str) -> Path | None:
    for entry in lockfile.read(ws.lock_path).values():
        path = ws.repo / entry.path
        if entry.sha256 == sha and path.is_file() and sha256_file(path)[0] == sha:
            return path
    return None
