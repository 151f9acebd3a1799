"""``reconcile.lock``: the committed record of which generation each spec's video came from.

One block per spec, sorted by name, one field per line, every string JSON-quoted: the file diffs
line by line and two branches that touch different specs merge without conflict. With ``videos/``
it is enough to rebuild the state of a fresh clone without paying for anything again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import StateError
from .files import Stat, atomic_write_text, is_regular, signature

LOCK_FILE = "reconcile.lock"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
VERSION = 1
HEADER = (
    "# reconcile.lock: written by `reconcile apply`; commit it together with the videos.\n"
    "# It pins each spec to the generation its video came from. Do not edit by hand.\n"
)
FIELDS = (
    "spec_key", "path", "sha256", "bytes", "model", "operation", "generated", "uri", "expires",
)  # fmt: skip


@dataclass(frozen=True)
class LockEntry:
    name: str
    spec_key: str
    path: str
    sha256: str
    bytes: int
    model: str
    operation: str | None
    generated: str | None
    uri: str | None = None  # the provider's copy of the video (a chain's source needs it)
    expires: str | None = None  # when the provider deletes that copy


def render(entries: list[LockEntry]) -> str:
    """Stable text: same entries, same bytes."""
    lines = [HEADER, f"version: {VERSION}\n"]
    if not entries:
        lines.append("specs: {}\n")
        return "".join(lines)
    lines.append("specs:\n")
    for entry in sorted(entries, key=lambda e: e.name):
        lines.append(f"\n  {entry.name}:\n")
        for name in FIELDS:
            value = getattr(entry, name)
            text = "null" if value is None else str(value) if name == "bytes" else _quote(value)
            lines.append(f"    {name}: {text}\n")
    return "".join(lines)


def _quote(value: str) -> str:
    """``json.dumps`` of a string, without its cost for the plain ASCII almost all values are."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def write(path: Path, entries: list[LockEntry]) -> str:
    """Write the lock unless it already says exactly this; returns the text."""
    text = render(entries)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return text  # untouched: keeps mtimes (and make-style tools) quiet
    atomic_write_text(path, text, failpoint="mid_lock")
    # What was just written is known: the next read (watch plans right after) need not parse it.
    # A rename put it there, so any other writer's file has another inode.
    with contextlib.suppress(OSError):
        st = os.stat(path)
        _READ[str(path)] = (
            signature(st),
            {e.name: e for e in sorted(entries, key=lambda e: e.name)},
        )
    return text


FIX = "fix it, or delete it and let `reconcile apply` rewrite it from the state db"
CONFLICT_FIX = (
    "run `reconcile lock merge` to keep both sides (each name's take checked against the files "
    "present)"
)


# The last lock parsed (or written) per path, by its stat: a long-running ``watch`` reads it before
# every plan, and it changes only when an operation finishes or git replaces it. A parse is kept
# only once the file is older than any timestamp tick (git's racy case): a change within the tick
# of the read could keep size, mtime, ctime and inode alike.
_READ: dict[str, tuple[Stat, dict[str, LockEntry]]] = {}
_RACY_NS = 2_000_000_000  # a lock written this recently may change again within its mtime's tick


def read(path: Path) -> dict[str, LockEntry]:
    """Entries by name; a missing lock is empty, a damaged one is an error that says what to do."""
    try:
        stamp: Stat | None = signature(os.stat(path))
    except OSError:
        stamp = None
    known = _READ.get(str(path))
    if stamp is not None and known is not None and known[0] == stamp:
        return dict(known[1])
    text = read_text(path)
    if text is None:
        return {}
    if conflicted(text):
        raise StateError(f"{LOCK_FILE} has unresolved merge conflicts: {CONFLICT_FIX}")
    entries = parse(text)
    if stamp is not None and max(stamp[1], stamp[2]) < time.time_ns() - _RACY_NS:
        _READ[str(path)] = (stamp, entries)
    return dict(entries)


def read_text(path: Path) -> str | None:
    """The lock's text (None when there is none); never opens a device or a FIFO."""
    if path.exists() and not is_regular(path):
        raise StateError(f"{LOCK_FILE} is not a regular file (a device, FIFO or folder): {FIX}")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{LOCK_FILE} cannot be read ({exc.strerror}): {FIX}") from None


def conflicted(text: str) -> bool:
    return any(line.startswith(("<<<<<<<", ">>>>>>>")) for line in text.splitlines())


def parse(text: str) -> dict[str, LockEntry]:
    """Entries by name from a lock's text.

    Paths are checked as strictly as spec names: a lock is committed text that anyone can edit,
    and nothing in it may point the tool at a file outside the output folder's naming scheme.
    """
    fix = FIX
    data = _exact(text)
    if data is None:
        data = _fast(text)
    if data is None:  # not as `render` writes it (an older or hand-edited lock): YAML reads it
        try:
            data = yaml.load(text, Loader=_LOADER)
        except yaml.YAMLError as exc:
            raise StateError(f"{LOCK_FILE} is not valid YAML ({exc}): {fix}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise StateError(f"{LOCK_FILE} is not a version {VERSION} lock file: {fix}")
    specs = data.get("specs") or {}
    if not isinstance(specs, dict):
        raise StateError(f"{LOCK_FILE}: `specs` must be a mapping of names: {fix}")
    entries = {}
    for name, raw in specs.items():
        if not isinstance(raw, dict) or not all(
            isinstance(raw.get(k), str) for k in ("spec_key", "path", "sha256")
        ):
            raise StateError(f"{LOCK_FILE}: entry {name!r} is incomplete: {fix}")
        size = raw.get("bytes")
        entry = LockEntry(
            name=str(name), spec_key=raw["spec_key"], path=raw["path"], sha256=raw["sha256"],
            bytes=size if isinstance(size, int) else 0, model=str(raw.get("model") or ""),
            operation=raw.get("operation"), generated=raw.get("generated"),
            uri=_text(raw.get("uri")), expires=_text(raw.get("expires")),
        )  # fmt: skip
        if not _sane_path(entry):
            raise StateError(
                f"{LOCK_FILE}: entry {name!r} has path {entry.path!r}, which is not "
                f"<outputDir>/{name}.<16 hex of sha256>.mp4 inside the repo: {fix}"
            )
        entries[entry.name] = entry
    return entries


_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SHA = re.compile(r"[0-9a-f]{64}")
_VALUE = r'(null|"[^"\\\n]*"|0|[1-9][0-9]*)'  # no leading zero: YAML reads 0178 otherwise
_ENTRY = re.compile(
    r"\n  ([a-z0-9][a-z0-9_-]*):\n" + "".join(rf"    {name}: {_VALUE}\n" for name in FIELDS)
)


def _exact(text: str) -> dict[str, Any] | None:
    """The lock exactly as ``render`` writes it, entry by entry with one regular expression:
    the entries must follow each other with nothing between them, or None."""
    start = text.find("specs:\n")
    head = text[:start].split("\n")
    if start < 0 or head[-2:] != [f"version: {VERSION}", ""]:
        return None
    if not all(line.startswith("#") for line in head[:-2]):
        return None
    end = start + len("specs:\n")
    specs: dict[str, dict[str, Any]] = {}
    for match in _ENTRY.finditer(text, end):
        if match.start() != end:
            return None
        name, *values = match.groups()
        specs[name] = {k: _value(v) for k, v in zip(FIELDS, values, strict=True)}
        end = match.end()
    if end != len(text) or not specs or len(specs) != text.count("\n  ") - text.count("\n    "):
        return None
    return {"version": VERSION, "specs": specs}


def _value(raw: str) -> Any:
    return None if raw == "null" else raw[1:-1] if raw[0] == '"' else int(raw)


def _fast(text: str) -> dict[str, Any] | None:
    """The lock as ``render`` writes it, read line by line in one pass: ten times YAML's speed
    (even the C loader's) on ten thousand entries. None at the first line it does not expect,
    and YAML reads the whole text instead: the format stays YAML, this is only a fast path."""
    specs: dict[str, dict[str, Any]] = {}
    data: dict[str, Any] = {}
    current: dict[str, Any] | None = None
    for line in text.split("\n"):
        if line.startswith("    "):
            key, sep, value = line[4:].partition(": ")
            if current is None or not sep or key in current:
                return None
            if value.startswith('"') and value.endswith('"') and len(value) > 1:
                if "\\" in value or '"' in value[1:-1]:
                    try:
                        current[key] = json.loads(value)
                    except ValueError:
                        return None
                else:
                    current[key] = value[1:-1]
            elif value == "null":
                current[key] = None
            elif value.isdigit() and value.isascii() and (value == "0" or value[0] != "0"):
                current[key] = int(value)
            else:
                return None
        elif line.startswith("  ") and line.endswith(":"):
            name = line[2:-1]
            if "specs" not in data or name in specs or not _NAME.fullmatch(name):
                return None
            current = specs[name] = {}
        elif not line or line.startswith("#"):
            continue
        elif line == f"version: {VERSION}" and not data:
            data["version"] = VERSION
        elif line in ("specs:", "specs: {}") and data.get("version") == VERSION and not specs:
            data["specs"] = specs
        else:
            return None
    return data if "specs" in data else None


def sides(text: str) -> tuple[str, str]:
    """Both sides of a conflicted lock, as whole texts (git's merge and diff3 styles alike)."""
    ours: list[str] = []
    theirs: list[str] = []
    where = "both"
    for line in text.splitlines(keepends=True):
        if line.startswith("<<<<<<<"):
            where = "ours"
        elif line.startswith("|||||||"):
            where = "base"
        elif line.startswith("=======") and where in ("ours", "base"):
            where = "theirs"
        elif line.startswith(">>>>>>>"):
            where = "both"
        else:
            if where in ("both", "ours"):
                ours.append(line)
            if where in ("both", "theirs"):
                theirs.append(line)
    return "".join(ours), "".join(theirs)


Choose = Callable[[LockEntry, LockEntry], tuple[LockEntry, str]]


def merge(
    ours: dict[str, LockEntry], theirs: dict[str, LockEntry], choose: Choose
) -> tuple[list[LockEntry], list[str]]:
    """The union of two locks; where both name a different take, ``choose`` picks one and says
    why. Returns the entries and one note per choice made."""
    merged: list[LockEntry] = []
    notes: list[str] = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None or a == b:
            merged.append(a or theirs[name])
            continue
        kept, why = choose(a, b)
        merged.append(kept)
        notes.append(f"{name}: kept {kept.sha256[:16]} ({why})")
    return merged, notes


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _sane_path(entry: LockEntry) -> bool:
    """<outputDir>/<name>.<16 hex>.mp4, relative, no `..`: string checks (no pathlib: ten
    thousand entries per read)."""
    path = entry.path
    return (
        not path.startswith("/")
        and "\\" not in path
        and ".." not in path.split("/")
        and _SHA.fullmatch(entry.sha256) is not None
        and path.rsplit("/", 1)[-1] == f"{entry.name}.{entry.sha256[:16]}.mp4"
    )
