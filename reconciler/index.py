"""The spec index: each spec file's parse result, keyed by its stat, so a warm load reads nothing.

Like git's index, this is a cache and never state: deleting it (or a corrupt, unreadable or
outdated one) costs one full parse, nothing else. It lives at ``state/spec-index.marshal`` and is
written only where ``state/`` already exists: ``validate``, ``plan`` and ``status`` may refresh it
(as ``git status`` refreshes git's index) but never create state in a fresh clone.

An entry is trusted only while its file's size, mtime, ctime and inode are those recorded, and so
are the stats of the images its specs read (a first frame's bytes are part of the spec key). The
racy case is git's too: a file changed within the timestamp granularity of the index's own write
could keep its recorded stat, so an entry whose mtime or ctime is not older than the index file is
parsed again (and the index rewritten, which clears it). An index kept in memory (``watch``) has
no file to compare with, so each entry also remembers when it was read: a file whose mtime is
within ``SLACK_NS`` of that moment (2 s, FAT's granularity; NFS, SMB and HFS+ are
coarse too) is read again until a later read sees it older. Images are hashed once per stat as
well, with the same rule: a changed image is read again, an unchanged one never.

The index is tied to the reconciler's version and to what the loader reads of ``reconcile.yaml``
(defaults and models): another version or another config starts it afresh. It is plain data in
``marshal``'s format, not a pickle: loading it can never run code, whoever put the file there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import marshal
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import Problem
from .fanout import gc_paused
from .files import Stat, stat_of
from .memo import write_cache
from .spec import Desired, ImageInput, Reference

INDEX_FILE = "spec-index.marshal"
FORMAT = 2  # bump when what an entry holds changes shape
SLACK_NS = 2_000_000_000  # a stat this close to its read may hide a later edit of the same tick
NO_STAT: Stat = (-1, -1, -1, -1)  # a file gone before its stat: no file matches it, so re-read

# The modules whose code decides an entry: an edited checkout (same version) starts afresh too.
_SOURCES = (
    "loader.py",
    "spec.py",
    "specdoc.py",
    "yamlio.py",
    "flatyaml.py",
    "index.py",
    "facts.py",
    "chains.py",
)


@dataclass
class Entry:
    """One spec file's result: its specs (keyed, before chains), its problems, and the stats of
    the images they read (path as written -> signature, None when it was missing)."""

    stat: Stat
    specs: list[Desired]
    problems: list[Problem]
    images: dict[str, Stat | None] = field(default_factory=dict)
    targets: frozenset[str] = frozenset()  # the images' resolved paths (keys of the hashes)
    seen_ns: int = 0  # wall clock when the file was read (0: trust the stat alone)


@dataclass
class SpecIndex:
    """Entries by repo-relative spec path, and image hashes by absolute path and stat."""

    path: Path | None  # None: nowhere to keep it (no state/ yet); it still serves this run
    stamp: str
    entries: dict[str, Entry] = field(default_factory=dict)
    hashes: dict[str, tuple[Stat, str, str, int, int]] = field(default_factory=dict)
    racy_ns: int = -1  # entries with mtime/ctime >= this are re-read (the index file's mtime)
    dirty: bool = False
    deps: dict[str, Stat | None] = field(default_factory=dict)  # images read for the current file
    targets: set[str] = field(default_factory=set)

    @staticmethod
    def stamp_of(*loader_config: Any) -> str:
        """What the entries depend on beside the files: this code and the config it reads."""
        code = [_source_hash(name) for name in _SOURCES]
        blob = json.dumps(
            [__version__, FORMAT, code, loader_config], sort_keys=True, default=_plain
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def restart(self, stamp: str) -> SpecIndex:
        """Another config: every entry goes (the file is rewritten by the next save)."""
        return SpecIndex(self.path, stamp, dirty=True)

    @classmethod
    def open(cls, repo: Path, stamp: str) -> SpecIndex:
        """The index of ``repo`` for this stamp (``stamp_of``); empty when missing or unusable."""
        state = repo / "state"
        path = state / INDEX_FILE if state.is_dir() else None
        index = cls(path, stamp)
        if path is None:
            return index
        try:
            with open(path, "rb") as handle:
                racy_ns = os.fstat(handle.fileno()).st_mtime_ns
                raw = handle.read()  # marshal.load() on a file object is ten times slower
            with gc_paused():  # tens of thousands of small objects, none of them cyclic
                data = marshal.loads(raw)
                if data["stamp"] == stamp and data["format"] == FORMAT:
                    index.entries = {rel: _entry(raw) for rel, raw in data["entries"].items()}
                    index.hashes = data["hashes"]
                    index.racy_ns = racy_ns
        except FileNotFoundError:
            pass
        except Exception:  # corrupt, truncated, another layout: rebuilt, never an error
            index.dirty = True
        return index

    def lookup(self, rel: str, stat: Stat) -> Entry | None:
        """The entry for ``rel`` if its file and its images are as recorded (and not racy)."""
        entry = self.entries.get(rel)
        if entry is None or entry.stat != stat or self._racy(stat, entry.seen_ns):
            return None
        for written, recorded in entry.images.items():
            now = stat_of(written)
            if now != recorded or (now is not None and self._racy(now, entry.seen_ns)):
                return None
        return entry

    def _racy(self, stat: Stat, seen_ns: int) -> bool:
        """Whether a file with this stat may have changed since it was read without its stat
        showing it: touched no earlier than the index file's write, or than its own read."""
        # An edit in the tick of the read keeps mtime (and ctime) as read: the mtime says so. A
        # change that keeps mtime (touch -r, chmod) moves ctime, checked against the index file.
        if seen_ns > 0 and stat[1] >= seen_ns - SLACK_NS:
            return True
        return self.racy_ns >= 0 and max(stat[1], stat[2]) >= self.racy_ns

    def store(self, rel: str, stat: Stat, specs: list[Desired], problems: list[Problem]) -> None:
        """Record a file just parsed, with the images read meanwhile (``deps``)."""
        self.entries[rel] = Entry(
            stat, specs, problems, dict(self.deps), frozenset(self.targets), time.time_ns()
        )
        self.deps.clear()
        self.targets.clear()
        self.dirty = True

    def image(self, written: str, target: str, stat: Stat) -> tuple[str, str, int] | None:
        """The (sha256, mime, size) of an image already hashed with this stat; records the
        dependency of the file being parsed either way."""
        self.deps[written] = stat
        self.targets.add(target)
        known = self.hashes.get(target)
        if known is None or known[0] != stat or self._racy(stat, known[4]):
            return None
        return known[1], known[2], known[3]

    def missing_image(self, written: str) -> None:
        self.deps[written] = stat_of(written)

    def hashed(self, target: str, stat: Stat, sha: str, mime: str, size: int) -> None:
        self.hashes[target] = (stat, sha, mime, size, time.time_ns())
        self.dirty = True

    def prune(self, present: set[str]) -> None:
        """Forget files that are gone (a deleted spec must not keep its entry forever)."""
        for rel in set(self.entries) - present:
            del self.entries[rel]
            self.dirty = True

    def save(self) -> None:
        """Write the index atomically if anything changed; a failure only costs the next run."""
        if self.path is None or not self.dirty or not self.path.parent.is_dir():
            return
        used = {t for e in self.entries.values() for t in e.targets}
        self.hashes = {t: h for t, h in self.hashes.items() if t in used}
        try:
            blob = marshal.dumps({
                "stamp": self.stamp, "format": FORMAT, "hashes": self.hashes,
                "entries": {rel: _raw(e) for rel, e in self.entries.items()},
            })  # fmt: skip
        except ValueError:  # a value marshal cannot hold: no index this time, still correct
            return
        if write_cache(self.path, blob):
            self.dirty = False


# -- plain data for marshal: tuples in field order, rebuilt into the loader's own types --------------


def _raw(entry: Entry) -> tuple[Any, ...]:
    specs = tuple([
        (s.name, s.file, s.line, s.model, s.prompt, s.parameters, _raw_image(s.image), s.video_uri,
         s.key, _raw_image(s.last_frame),
         tuple([(_raw_image(r.image), r.type) for r in s.references]) if s.references else (),
         s.source, s.source_key, s.depth, s.length, s.take)
        for s in entry.specs
    ])  # fmt: skip
    problems = tuple([(p.file, p.message, p.line, p.field) for p in entry.problems])
    targets = tuple(sorted(entry.targets)) if entry.targets else ()
    return entry.stat, specs, problems, entry.images, targets, entry.seen_ns


def _entry(raw: Any) -> Entry:
    # Built for every entry of a warm load and every one a forked child sends back (serial work
    # after the parse): the common case, no image and no problem, makes nothing it need not.
    stat, specs, problems, images, targets, seen_ns = raw
    return Entry(
        tuple(stat),
        [
            Desired(name, file, line, model, prompt, parameters,
                    None if image is None else ImageInput(*image), video_uri, key,
                    None if last is None else ImageInput(*last),
                    tuple(Reference(_image(i), t) for i, t in refs) if refs else (), source,
                    source_key, depth, length, take)
            for (name, file, line, model, prompt, parameters, image, video_uri, key, last, refs,
                 source, source_key, depth, length, take) in specs
        ],
        [Problem(*p) for p in problems] if problems else [],
        images,
        frozenset(targets) if targets else frozenset(),
        seen_ns,
    )  # fmt: skip


def _raw_image(image: ImageInput | None) -> tuple[str, str, str, int] | None:
    return None if image is None else (image.path, image.sha256, image.mime_type, image.size)


def _image(raw: Any) -> Any:
    return None if raw is None else ImageInput(*raw)


def _plain(value: Any) -> Any:
    """A config value as JSON, the same in every process (sets sorted: their order is hashed)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def _source_hash(name: str) -> str:
    try:
        return hashlib.sha256((Path(__file__).parent / name).read_bytes()).hexdigest()
    except OSError:  # pragma: no cover - an installation without sources: the version decides
        return ""
