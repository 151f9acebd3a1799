"""How plans, progress, summaries and status look: rich on a terminal, plain lines otherwise, JSON.

Kept apart from the CLI so the wording of a plan or a summary can be tested as data.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from .engine import Summary
from .lifecycle import PAID, ActionKind
from .money import Spending, money
from .plan import Action, Plan

SYMBOLS = {
    ActionKind.CREATE: "+",
    ActionKind.REPLACE: "-/+",
    ActionKind.RESUME: "~",
    ActionKind.MATERIALIZE: ">",
    ActionKind.REMOVE: "-",
    ActionKind.BLOCKED: "!",
    ActionKind.NOOP: " ",
}


def _console(out: TextIO) -> Console:
    # Off a terminal nothing limits the width: keep one row per line for CI logs and grep.
    return Console(file=out, highlight=False, soft_wrap=True, width=None if out.isatty() else 200)


def plan_json(plan: Plan, *, spending: Spending | None = None) -> dict[str, Any]:
    out = {
        "changes": bool(plan.changes),
        "cost_usd": round(plan.cost, 4),
        "cost_known": plan.cost_known,
        "video_seconds": plan.seconds,
        "actions": [action_json(a) for a in plan.actions],
    }
    if spending is not None:
        out["spending"] = spending_json(spending)
    return out


def spending_json(spending: Spending) -> dict[str, Any]:
    """What the ledger says was spent, and the budget (null where none is set)."""
    return {
        "today_usd": round(spending.today, 4),
        "this_month_usd": round(spending.month, 4),
        "budget": {
            "per_run_usd": spending.per_run,
            "per_day_usd": spending.per_day,
            "per_month_usd": spending.per_month,
        },
        "left_usd": None if spending.left() is None else round(spending.left() or 0.0, 4),
    }


def action_json(action: Action) -> dict[str, Any]:
    return {
        "name": action.name,
        "action": action.kind,
        "reason": action.reason,
        "spec_key": action.key,
        "state": action.state,
        "cost_usd": action.cost,
        "video_seconds": action.seconds,
        "path": action.path,
        "old_path": action.old_path,
        "file": action.spec.file if action.spec else None,
        "changes": list(action.changes),
    }


def plan_headline(plan: Plan) -> str:
    if not plan.changes:
        blocked = plan.blocked
        if blocked:
            return f"No changes can be made: {len(blocked)} spec(s) blocked (see above)."
        return "No changes. The videos match the specs."
    counts: dict[str, int] = {}
    for action in plan.changes:
        counts[action.kind] = counts.get(action.kind, 0) + 1
    parts = [f"{n} to {k}" for k, n in counts.items()]
    cost = money(plan.cost) if plan.cost_known else f"at least {money(plan.cost)}"
    return f"Plan: {', '.join(parts)}. Estimated cost: {cost} for {plan.seconds} s of video."


def render_plan(plan: Plan, out: TextIO, *, spending: Spending | None = None) -> None:
    console = _console(out)
    rows = [a for a in plan.actions if a.kind is not ActionKind.NOOP]
    if rows:
        table = Table(box=None, show_header=True, pad_edge=False)
        for column in ("", "name", "action", "cost", "why"):
            table.add_column(column, no_wrap=column != "why")
        for a in rows:
            cost = money(a.cost) if a.kind in PAID else ""
            table.add_row(SYMBOLS[a.kind], a.name, a.kind, cost, a.reason)
        console.print(table)
        console.print()
    changed = [a for a in rows if a.changes]
    for a in changed:
        console.print(f"{SYMBOLS[a.kind]} {a.name}:")
        for line in a.changes:
            console.print(f"    {_escape(line)}")
    if changed:
        console.print()
    console.print(plan_headline(plan))
    if spending is not None and spending.budgeted:
        console.print(f"Budget: {spending.describe()}.")


def plan_markdown(plan: Plan, *, spending: Spending | None = None) -> str:
    """The plan as a pull-request comment: a table, the total, blocked specs, what changed."""
    lines = ["### reconcile plan", ""]
    rows = [a for a in plan.actions if a.kind is not ActionKind.NOOP]
    if rows:
        lines += ["| | spec | action | cost | why |", "|---|---|---|---|---|"]
        for a in rows:
            cost = money(a.cost) if a.kind in PAID else ""
            why = _md(a.reason)
            lines.append(
                f"| `{SYMBOLS[a.kind].strip() or '·'}` | `{a.name}` | {a.kind} | {cost} | {why} |"
            )
        lines.append("")
    lines.append(f"**{plan_headline(plan)}**")
    if spending is not None and spending.budgeted:
        lines += ["", f"Budget: {spending.describe()}."]
    blocked = plan.blocked
    if blocked:
        lines += [
            "",
            f"**Blocked ({len(blocked)})**: these wait for an edit or someone's word:",
            "",
        ]
        lines += [f"- `{a.name}`: {_md(a.reason)}" for a in blocked]
    changed = [a for a in rows if a.changes]
    if changed:
        lines += ["", "<details><summary>What changed</summary>", ""]
        for a in changed:
            lines.append(f"- `{a.name}`")
            lines += [f"  - {_md(line)}" for line in a.changes]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "ok": summary.ok,
        "fatal": summary.fatal,
        "stopped": summary.stopped,
        "estimate_usd": round(summary.estimate, 4),
        "spent_usd": round(summary.spent, 4),
        "written": summary.written,
        "outcomes": [o.__dict__ for o in summary.outcomes],
    }


def render_summary(summary: Summary, out: TextIO) -> None:
    console = _console(out)
    counts: dict[str, int] = {}
    for o in summary.outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    console.print(
        "Apply " + ("complete" if summary.ok else "incomplete") + ": "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    )  # fmt: skip
    for o in summary.outcomes:
        if not o.finished:
            console.print(f"  {o.name}: {o.state}: {_escape(o.message)}")
    for path in summary.written:
        console.print(f"  wrote {path}")
    if summary.spent or summary.estimate:
        console.print(
            f"Spent {money(summary.spent)} on POSTs that may be billed "
            f"(estimated {money(summary.estimate)})."
        )
    if summary.stopped and not summary.fatal:
        console.print(
            "Stopped early; operations still running remotely are resumed by the next apply."
        )
    if summary.fatal:
        console.print(f"Stopped: {_escape(summary.fatal)}")


def render_status(
    rows: list[dict[str, Any]],
    out: TextIO,
    *,
    daemon: str | None = None,
    spending: Spending | None = None,
) -> None:
    console = _console(out)
    if not rows:
        console.print("No specs found under specs/.")
    else:
        table = Table(box=None, pad_edge=False)
        for column in ("name", "state", "path", "sha256"):
            table.add_column(column, no_wrap=True)
        table.add_column("error", overflow="fold")
        for r in rows:
            sha = (r["sha256"] or "")[:16]
            table.add_row(r["name"], r["state"], r["path"] or "", sha, _escape(r["error"] or ""))
        console.print(table)
    if spending is not None:
        console.print(f"Spent on POSTs that may be billed: {spending.describe()}.")
    if daemon:
        console.print(daemon)


def render_saved(data: dict[str, Any], out: TextIO, *, markdown: bool = False) -> None:
    """A saved plan, from its JSON: the same table and diffs as when it was made."""
    console = _console(out)
    actions = [a for a in data.get("actions", []) if a.get("action") != ActionKind.NOOP]
    if markdown:
        lines = ["| | spec | action | cost | why |", "|---|---|---|---|---|"]
        for a in actions:
            cost = money(a.get("cost_usd")) if a.get("action") in PAID else ""
            lines.append(f"| | `{a['name']}` | {a['action']} | {cost} | {_md(a['reason'])} |")
        console.print("\n".join(lines))
    else:
        table = Table(box=None, show_header=True, pad_edge=False)
        for column in ("", "name", "action", "cost", "why"):
            table.add_column(column, no_wrap=column != "why")
        for a in actions:
            cost = money(a.get("cost_usd")) if a.get("action") in PAID else ""
            table.add_row(SYMBOLS[ActionKind(a["action"])], a["name"], a["action"], cost,
                          _escape(a["reason"]))  # fmt: skip
        console.print(table)
    for a in actions:
        for line in a.get("changes") or []:
            console.print(f"    {a['name']}: {_escape(line)}")
    total = money(data.get("cost_usd"))
    console.print(f"Estimated cost: {total} for {data.get('video_seconds', 0)} s of video.")
