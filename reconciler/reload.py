"""Reloading specs after an edit: the last load with the edited files' specs swapped in.

``watch`` is told which spec files an event names. When each of them was valid, still is, still
defines the same names, and nothing in the repo is chained (an extension's key depends on its
source's, wherever in specs/ that is), the new load is the last one with those files' specs
replaced: work in proportion to the edit, not to the repo. In any other case this returns None
and the caller loads in full (from the spec index, which parses only what changed).
"""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .files import stat_of
from .index import SpecIndex
from .loader import LoadResult, check_defaults, load_file
from .spec import Desired


def swap_edited(
    repo: Path, config: Config, last: LoadResult, changed: set[str]
) -> LoadResult | None:
    """``last`` with the specs of the ``changed`` files read again, or None (load in full)."""
    index = last.index
    if index is None or last.chained or not changed:
        return None
    if index.stamp != SpecIndex.stamp_of(config.defaults, config.models, config.lines):
        return None  # another config: every spec may change
    reported = frozenset(
        p.field.split(".")[1] for p in check_defaults(config) if p.field and p.field.count(".")
    )
    swapped: dict[str, Desired] = {}
    parsed = 0
    for rel in sorted(changed):
        names = last.files.get(rel)
        sig = stat_of(repo / rel)
        if names is None or rel in last.bad_files or sig is None:
            return None  # a new, deleted or broken file: duplicates and removals need it all
        entry = index.lookup(rel, sig)
        if entry is None:
            specs, problems = load_file(repo / rel, repo, config, reported=reported, index=index)
            index.store(rel, sig, specs, problems)  # a full load after this reuses the parse
            parsed += 1
        else:
            specs, problems = entry.specs, entry.problems
        if problems or [s.name for s in specs] != names or any(s.source for s in specs):
            return None
        swapped.update((s.name, s) for s in specs)
    return LoadResult(
        specs=[swapped.get(s.name, s) for s in last.specs],
        problems=list(last.problems),
        files=dict(last.files),
        bad_files=set(last.bad_files),
        parsed=parsed,
        index=index,
        swapped=swapped,
    )
