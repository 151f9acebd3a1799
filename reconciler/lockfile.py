"""``reconcile.lock``: the committed record of which generation each spec's video came from.

One block per spec, sorted by name, one field per line, every string JSON-quoted: the file diffs
line by line and two branches that touch different specs merge without conflict. With ``videos/``
it is enough to rebuild the state of a fresh clone without paying for anything again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .errors import StateError
from .objects import atomic_write_text

LOCK_FILE = "reconcile.lock"
VERSION = 1
HEADER = (
    "# reconcile.lock: written by `reconcile apply`; commit it together with the videos.\n"
    "# It pins each spec to the generation its video came from. Do not edit by hand.\n"
)
FIELDS = ("spec_key", "path", "sha256", "bytes", "model", "operation", "generated")


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


def render(entries: list[LockEntry]) -> str:
    """Stable text: same entries, same bytes."""
    lines = [HEADER, f"version: {VERSION}\n"]
    if not entries:
        lines.append("specs: {}\n")
        return "".join(lines)
    lines.append("specs:\n")
    for entry in sorted(entries, key=lambda e: e.name):
        lines.append(f"\n  {entry.name}:\n")
        values = asdict(entry)
        for name in FIELDS:
            value = values[name]
            text = "null" if value is None else str(value) if name == "bytes" else json.dumps(value)
            lines.append(f"    {name}: {text}\n")
    return "".join(lines)


def write(path: Path, entries: list[LockEntry]) -> None:
    text = render(entries)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return  # untouched: keeps mtimes (and make-style tools) quiet
    atomic_write_text(path, text, failpoint="mid_lock")


def read(path: Path) -> dict[str, LockEntry]:
    """Entries by name; a missing lock is empty, a damaged one is an error that says what to do."""
    if not path.exists():
        return {}
    fix = "fix it, or delete it and let `reconcile apply` rewrite it from the state db"
    text = path.read_text(encoding="utf-8", errors="replace")
    if any(line.startswith(("<<<<<<<", ">>>>>>>")) for line in text.splitlines()):
        raise StateError(f"{LOCK_FILE} has unresolved merge conflicts: {fix}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StateError(f"{LOCK_FILE} is not valid YAML ({exc}): {fix}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise StateError(f"{LOCK_FILE} is not a version {VERSION} lock file: {fix}")
    entries = {}
    for name, raw in (data.get("specs") or {}).items():
        try:
            entries[name] = LockEntry(name=str(name), **{k: raw.get(k) for k in FIELDS})
            if not all(isinstance(raw.get(k), str) for k in ("spec_key", "path", "sha256")):
                raise TypeError
        except (TypeError, AttributeError):
            raise StateError(f"{LOCK_FILE}: entry {name!r} is incomplete: {fix}") from None
    return entries
