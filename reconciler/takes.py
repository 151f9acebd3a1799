"""Takes: every video a spec ever had, from the ledger, and pinning one of them.

A replace pays for a new take of the same spec and the generation's row then names only the
newest; the ledger keeps a row with the bytes (sha256) of every take downloaded or adopted. So a
team can list what a name has shown over time (`reconcile takes NAME`), see which takes are
still cached, and pin one (`take: 3f9a2c1b` in the spec) to go back to it for free, as DVC users
pick an earlier version of a file. Pure functions over the ledger's rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .lifecycle import Generation


@dataclass(frozen=True)
class Take:
    sha256: str
    at: str  # when it was downloaded (or adopted)
    spec_key: str
    operation: str | None
    prompt: str | None
    cost: float | None
    cached: bool
    current: bool  # the name's output file holds it now


def of(
    name: str,
    attempts: Iterable[dict[str, Any]],
    generations: dict[str, Generation],
    *,
    cached: Callable[[str], bool],
    current: str | None,
) -> list[Take]:
    """Every take of ``name``, oldest first, one per distinct video."""
    found: dict[str, Take] = {}
    for row in attempts:
        sha = row.get("sha256")
        if not sha or row.get("name") != name or sha in found:
            continue
        key = str(row.get("spec_key"))
        gen = generations.get(key)
        found[sha] = Take(
            sha256=sha, at=str(row.get("at")), spec_key=key, operation=row.get("operation"),
            prompt=_prompt(gen), cost=gen.cost if gen else None, cached=cached(sha),
            current=sha == current,
        )  # fmt: skip
    return list(found.values())


def resolve(prefix: str, shas: Iterable[str]) -> str | None:
    """The one sha256 a pinned prefix names; None when none or several do."""
    matches = {sha for sha in shas if sha.startswith(prefix)}
    return matches.pop() if len(matches) == 1 else None


def owners(attempts: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """sha256 -> (name, when) of the take it is, for `gc` to say what it would delete."""
    found: dict[str, tuple[str, str]] = {}
    for row in attempts:
        sha = row.get("sha256")
        if sha and sha not in found:
            found[sha] = (str(row.get("name")), str(row.get("at")))
    return found


def _prompt(gen: Generation | None) -> str | None:
    if gen is None or not gen.spec_json:
        return None
    try:
        prompt = json.loads(gen.spec_json).get("prompt")
    except (ValueError, AttributeError):
        return None
    return prompt if isinstance(prompt, str) else None
