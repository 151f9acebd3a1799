"""The rescue journal: operation names the state db could not keep, kept beside it as text.

An accepted POST is a paid job; its operation name is what lets any later run poll it instead of
paying again. If the db write after the answer fails (disk full, the db deleted or replaced under
a running process), the name is printed and appended here, one JSON line per operation, and the
next run adopts it (``Workspace.recover``). The file is locked while read or rewritten, so two
processes never lose each other's lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import atomic_write_text

RESCUE_FILE = "rescued.jsonl"


@dataclass(frozen=True)
class Rescued:
    """One accepted operation, with enough of its row to record it again."""

    spec_key: str
    name: str
    operation: str
    at: str
    model: str = ""
    resolution: str = ""
    duration: int = 0
    cost: float | None = None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append(path: Path, entry: Rescued) -> None:
    """Add one operation, fsynced: it may be the only record of a paid job."""
    with _locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (json.dumps(asdict(entry)) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read(path: Path) -> list[Rescued]:
    """Every entry; lines that are not whole entries (a torn last write) are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError, TypeError):
            found.append(Rescued(**json.loads(line)))
    return found


def drain(path: Path, keep: Callable[[Rescued], bool]) -> None:
    """Offer each entry to ``keep`` (which adopts it); rewrite the file with those still kept."""
    if not path.exists():
        return
    with _locked(path):
        entries = read(path)
        left = [e for e in entries if keep(e)]
        if not left:
            path.unlink(missing_ok=True)
        elif len(left) != len(entries):
            atomic_write_text(path, "".join(json.dumps(asdict(e)) + "\n" for e in left))
