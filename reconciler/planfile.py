"""Saved plans: what `plan --out FILE` writes, `show FILE` prints and `apply FILE` applies.

As with Terraform, a saved plan is what a reviewer approved: `apply FILE` applies exactly it or
nothing. It does not replay the file's actions; it plans again with the same options and refuses
unless the result is the same plan (same actions on the same spec keys, the same row versions
and files): anything that moved since (a spec edited, another process's claim, a file touched)
makes the saved plan stale, and the message says what moved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ReconcileError
from .owners import now_iso
from .plan import Action, Options, Plan

FORMAT = "reconciler-plan"
VERSION = 1


@dataclass(frozen=True)
class Saved:
    """A plan as saved: its options, its fingerprint, and its JSON for `show`."""

    options: Options
    fingerprint: list[list[Any]]
    plan: dict[str, Any]
    created: str
    sandbox: bool


def fingerprint(plan: Plan) -> list[list[Any]]:
    """What must not move between planning and applying, one row per action."""
    return [_row(a) for a in plan.actions]


def _row(a: Action) -> list[Any]:
    return [a.name, str(a.kind), a.key, a.version, a.path, a.sha256, a.cost]


def dump(plan: Plan, plan_json: dict[str, Any], options: Options, *, sandbox: bool) -> str:
    record = {
        "format": FORMAT,
        "version": VERSION,
        "created": now_iso(),
        "sandbox": sandbox,
        "options": {
            k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(options).items()
        },
        "fingerprint": fingerprint(plan),
        "plan": plan_json,
    }
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def load(path: Path) -> Saved:
    """Read a saved plan; anything else is one clear error."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReconcileError(f"{path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise ReconcileError(f"{path}: not a saved plan (not JSON); make one with "
                             "`reconcile plan --out FILE`") from None  # fmt: skip
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ReconcileError(f"{path}: not a saved plan; make one with `reconcile plan --out FILE`")
    if record.get("version") != VERSION:
        raise ReconcileError(f"{path}: saved by another version of reconciler; plan again")
    raw = record.get("options") or {}
    options = Options(
        targets=frozenset(raw.get("targets") or ()),
        replace=frozenset(raw.get("replace") or ()),
        retry_failed=bool(raw.get("retry_failed")),
        resubmit_unknown=bool(raw.get("resubmit_unknown")),
    )
    return Saved(
        options=options,
        fingerprint=record.get("fingerprint") or [],
        plan=record.get("plan") or {},
        created=str(record.get("created") or "?"),
        sandbox=bool(record.get("sandbox")),
    )


def stale(saved: Saved, plan: Plan) -> str | None:
    """Why ``plan`` (made now) is not the saved one; None when it is the same plan."""
    now = fingerprint(plan)
    then = saved.fingerprint
    if now == then:
        return None
    before = {row[0]: row for row in then}
    after = {row[0]: row for row in now}
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            was = _say(before.get(name))
            is_ = _say(after.get(name))
            return f"{name}: planned {was}, now {is_}"
    return "the plan's order changed"


def _say(row: list[Any] | None) -> str:
    if row is None:
        return "nothing"
    return f"{row[1]} of key {str(row[2] or '-')[:12]} (row version {row[3]})"
