"""Finding spec files: the walk of ``specs/``, and after a ``watch`` event the files it names.

One stat per file and no pathlib on the way: at 10,000 files the walk is a measurable part of a
cold load, and all of a warm one's reading.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import Problem
from .files import Stat, signature, stat_of
from .index import SpecIndex


def spec_files(
    repo: Path, index: SpecIndex, changed: set[str] | None, problems: list[Problem]
) -> list[tuple[str, Stat | None]]:
    """Every spec file with its stat (a full walk), or, after an event, the files the index
    knows (stat None: taken as they were) with the ``changed`` ones stat'ed again."""
    if changed is None:
        return [(rel, signature(st)) for rel, st in walk_specs(repo, problems)]
    stats = {rel: stat_of(repo / rel) for rel in changed}
    if not changed.issubset(index.entries):  # a new file: the index is kept in walk order
        ordered = sorted(index.entries.keys() | changed, key=lambda rel: rel.split("/"))
        index.entries = {rel: index.entries[rel] for rel in ordered if rel in index.entries}
    else:
        ordered = list(index.entries)
    return [(rel, stats.get(rel)) for rel in ordered if rel not in changed or stats[rel]]


def walk_specs(repo: Path, problems: list[Problem] | None) -> list[tuple[str, os.stat_result]]:
    """(repo-relative path, stat) of every spec file, sorted: one stat per file, no pathlib.

    A folder that cannot be read is a problem, never silence: a spec that cannot be seen would
    otherwise count as deleted, and its video would be removed.
    """
    root = repo / "specs"
    if not root.is_dir():
        return []
    found: list[tuple[str, os.stat_result]] = []
    start = len(str(repo)) + 1
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError as exc:
            if problems is not None:
                where = Path(exc.filename or folder).relative_to(repo).as_posix()
                problems.append(Problem(where, f"cannot be read ({exc.strerror})"))
            continue
        for item in items:
            name = item.name
            if name.startswith("."):
                continue
            try:
                if item.is_dir(follow_symlinks=False):  # as os.walk: links to folders not followed
                    pending.append(item.path)
                elif name.endswith((".yaml", ".yml")):
                    st = item.stat()
                    if stat.S_ISREG(st.st_mode):
                        found.append((item.path[start:].replace(os.sep, "/"), st))
            except OSError:
                continue  # gone, or a dangling symlink: not a spec file
    found.sort(key=lambda pair: pair[0].split("/"))
    return found
