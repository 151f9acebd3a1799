"""`reconcile cost`: what was spent, from the ledger, by day, month, spec or model.

Every POST that may be billed is a charge in the ledger from the moment its claim is committed,
and an answer proving nothing was accepted is a refund (see ``money``), so these sums are what
the provider may bill: an upper bound, since failed and filtered operations are not billed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .lifecycle import Generation

GROUPS = ("day", "month", "spec", "model")


@dataclass(frozen=True)
class Line:
    group: str
    usd: float
    posts: int  # POSTs charged (refunded ones excluded)


def report(
    attempts: Iterable[dict[str, Any]], generations: dict[str, Generation], by: str
) -> list[Line]:
    """Sums per ``by`` (day, month, spec name or model), largest first for spec and model,
    chronological for day and month."""
    usd: dict[str, float] = defaultdict(float)
    posts: dict[str, int] = defaultdict(int)
    for row in attempts:
        cost = row.get("cost")
        if cost is None:
            continue
        at = str(row.get("at") or "")
        gen = generations.get(str(row.get("spec_key")))
        group = {
            "day": at[:10],
            "month": at[:7],
            "spec": str(row.get("name") or "?"),
            "model": gen.model if gen else "?",
        }[by]
        usd[group] += float(cost)
        posts[group] += 1 if cost > 0 else -1
    lines = [Line(g, round(v, 4), posts[g]) for g, v in usd.items()]
    if by in ("day", "month"):
        return sorted(lines, key=lambda line: line.group)
    return sorted(lines, key=lambda line: (-line.usd, line.group))
