"""Finding spec files: the walk of ``specs/``, and after a ``watch`` event the files it names.

No stat of a file on the way and no pathlib: at 10,000 files the walk is a measurable part of a
cold load, done before the load can fork (a stat each was two thirds of it). Files are told from
folders by the type the listing gives (a symlink alone is stat'ed), and each is stat'ed only where
its stat is compared with the spec index (``spec_files``), or by the process that parses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import Problem
from .files import Stat, stat_of
from .index import SpecIndex


def spec_files(
    repo: Path, index: SpecIndex, changed: set[str] | None, problems: list[Problem]
) -> list[tuple[str, Stat | None]]:
    """Every spec file with its stat (a full walk; stat None when the index is empty), or, after
    an event, the files the index knows (stat None: taken as they were) with the ``changed``
    ones stat'ed again."""
    if changed is None:
        found = walk_specs(repo, problems)
        if not index.entries:  # nothing to compare a stat with: taken by whoever parses the file
            return [(rel, None) for rel in found]
        root = f"{repo}/"
        pairs = ((rel, stat_of(root + rel)) for rel in found)
        return [(rel, sig) for rel, sig in pairs if sig is not None]  # None: gone since listed
    stats = {rel: stat_of(repo / rel) for rel in changed}
    if not changed.issubset(index.entries):  # a new file: the index is kept in walk order
        ordered = sorted(index.entries.keys() | changed, key=lambda rel: rel.split("/"))
        index.entries = {rel: index.entries[rel] for rel in ordered if rel in index.entries}
    else:
        ordered = list(index.entries)
    return [(rel, stats.get(rel)) for rel in ordered if rel not in changed or stats[rel]]


def walk_specs(repo: Path, problems: list[Problem] | None) -> list[str]:
    """The repo-relative path of every spec file (a regular file, or a symlink to one), in order
    of their components: each folder listed once, sorted, and walked in that order.

    A folder that cannot be read is a problem, never silence: a spec that cannot be seen would
    otherwise count as deleted, and its video would be removed.
    """
    root = repo / "specs"
    if not root.is_dir():
        return []
    found: list[str] = []
    start = len(str(repo)) + 1
    pending = [(str(root), True)]  # (path, is a folder): taken from the end, so pushed reversed
    while pending:
        path, folder = pending.pop()
        if not folder:
            found.append(path[start:].replace(os.sep, "/"))
            continue
        try:
            with os.scandir(path) as listing:
                items = sorted(listing, key=_name)
        except OSError as exc:
            if problems is not None:
                where = Path(exc.filename or path).relative_to(repo).as_posix()
                problems.append(Problem(where, f"cannot be read ({exc.strerror})"))
            continue
        for item in reversed(items):
            name = item.name
            if name.startswith("."):
                continue
            try:
                if item.is_dir(follow_symlinks=False):  # as os.walk: links to folders not followed
                    pending.append((item.path, True))
                elif name.endswith((".yaml", ".yml")) and item.is_file():
                    pending.append((item.path, False))
            except OSError:
                continue  # gone, or a dangling symlink: not a spec file
    return found


def _name(item: os.DirEntry[str]) -> str:
    return item.name
