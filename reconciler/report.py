"""How plans, progress, summaries and status look: rich on a terminal, plain lines otherwise, JSON.

Kept apart from the CLI so the wording of a plan or a summary can be tested as data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from .lifecycle import PAID, ActionKind
from .money import Spending, money
from .plan import Action, Plan

if TYPE_CHECKING:  # rich and the engine load only when a terminal or an apply needs them
    from rich.console import Console

    from .engine import Summary

SYMBOLS = {
    ActionKind.CREATE: "+",
    ActionKind.REPLACE: "-/+",
    ActionKind.RESUME: "~",
    ActionKind.MATERIALIZE: ">",
    ActionKind.REMOVE: "-",
    ActionKind.BLOCKED: "!",
    ActionKind.NOOP: " ",
}


TERMINAL_ROWS = 100  # a terminal shows the rows that matter first, then says how many it left


def _console(out: TextIO) -> Console:
    from rich.console import Console

    # Off a terminal nothing limits the width: keep one row per line for CI logs and grep. No
    # emoji codes: ":smile:" in a prompt or a provider's message is shown as written.
    return Console(
        file=out, highlight=False, emoji=False, soft_wrap=True, width=None if out.isatty() else 200
    )


def _table(
    out: TextIO, headers: list[str], rows: list[list[str]], *, rest: str | None = None
) -> None:
    """Aligned columns: plain text to a pipe (costs nothing however many rows, one per line for
    CI logs and grep), a rich table on a terminal with at most ``TERMINAL_ROWS`` rows; ``rest``
    names what the rows leave out ("9,990 unchanged")."""
    if not out.isatty():
        lines = [headers, *rows]
        widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
        # One template for every line, written at once: format pads as ljust does (10,000 rows
        # of a cold plan took 20 ms cell by cell, 9 ms so).
        line = "  ".join([*(f"{{:<{width}}}" for width in widths[:-1]), "{}"])
        out.write("".join([line.format(*row).rstrip() + "\n" for row in lines]))
        if rest:
            out.write(f"({rest})\n")
        return
    from rich.table import Table

    console = _console(out)
    table = Table(box=None, show_header=True, pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(header, no_wrap=index < len(headers) - 1, overflow="fold")
    for row in rows[:TERMINAL_ROWS]:
        table.add_row(*(_escape(cell) for cell in row))
    console.print(table)
    left = len(rows) - TERMINAL_ROWS
    more = [f"{left:,} more rows (pipe the output to see every row)"] if left > 0 else []
    if rest or more:
        console.print(f"({'; '.join([*more, *([rest] if rest else [])])})")


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
    rows = [a for a in plan.actions if a.kind is not ActionKind.NOOP]
    unchanged = len(plan.actions) - len(rows)
    lines: list[str] = []
    if rows:
        costs = {cost: money(cost) for cost in {a.cost for a in rows if a.kind in PAID}}
        cells = [[SYMBOLS[a.kind], a.name, str(a.kind), costs[a.cost] if a.kind in PAID else "",
                  a.reason] for a in rows]  # fmt: skip
        rest = f"{unchanged:,} unchanged" if unchanged else None
        _table(out, ["", "name", "action", "cost", "why"], cells, rest=rest)
        lines.append("")
    changed = [a for a in rows if a.changes]
    for a in changed:
        lines.append(f"{SYMBOLS[a.kind]} {a.name}:")
        lines.extend(f"    {line}" for line in a.changes)
    if changed:
        lines.append("")
    lines.append(plan_headline(plan))
    if spending is not None and spending.budgeted:
        lines.append(f"Budget: {spending.describe()}.")
    out.write("\n".join(lines) + "\n")


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
        "polls": summary.polls,
        "written": summary.written,
        "outcomes": [o.__dict__ for o in summary.outcomes],
    }


def render_summary(summary: Summary, out: TextIO) -> None:
    counts: dict[str, int] = {}
    for o in summary.outcomes:
        # A video that was already in place is counted apart from one this run wrote, as
        # Terraform's "0 added" after "No changes": a second apply must not read as new work.
        said = "up to date" if o.state == "materialized" and o.path is None else str(o.state)
        counts[said] = counts.get(said, 0) + 1
    lines = [
        "Apply " + ("complete" if summary.ok else "incomplete") + ": "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    ]  # fmt: skip
    lines += [f"  {o.name}: {o.state}: {o.message}" for o in summary.outcomes if not o.finished]
    lines += [f"  wrote {path}" for path in summary.written]
    if summary.spent or summary.estimate:
        lines.append(
            f"Spent {money(summary.spent)} on POSTs that may be billed "
            f"(estimated {money(summary.estimate)})."
        )
    operations = sum(1 for o in summary.outcomes if o.path)
    if summary.polls and operations:
        lines.append(f"{summary.polls} polls for {operations} video(s) written.")
    if summary.stopped and not summary.fatal:
        lines.append(
            "Stopped early; operations still running remotely are resumed by the next apply."
        )
    if summary.fatal:
        lines.append(f"Stopped: {summary.fatal}")
    if not out.isatty():
        # Plain lines to a pipe, written at once: rich cost 0.2 ms a line (an apply of 1,000
        # specs names 1,000 videos written), and its import 70 ms more.
        out.write("".join(line + "\n" for line in lines))
        return
    console = _console(out)
    for line in lines:
        console.print(_escape(line))


def render_status(
    rows: list[dict[str, Any]],
    out: TextIO,
    *,
    daemon: str | None = None,
    spending: Spending | None = None,
    state: str | None = None,
    objects: str | None = None,
) -> None:
    lines = []
    if not rows:
        lines.append("No specs found under specs/.")
    else:
        # On a terminal the rows that need someone come first; a pipe gets every row in order.
        if out.isatty():
            rows = sorted(rows, key=lambda r: r["state"] == "materialized")
        cells = [[r["name"], str(r["state"]), r["path"] or "", (r["sha256"] or "")[:16],
                  r["error"] or ""] for r in rows]  # fmt: skip
        _table(out, ["name", "state", "path", "sha256", "error"], cells)
    if spending is not None:
        lines.append(f"Spent on POSTs that may be billed: {spending.describe()}.")
    if state:
        lines.append(f"State: {state}")
    if objects:
        lines.append(f"Objects: {objects}")
    if daemon:
        lines.append(daemon)
    if lines:
        out.write("\n".join(lines) + "\n")


def render_saved(data: dict[str, Any], out: TextIO, *, markdown: bool = False) -> None:
    """A saved plan, from its JSON: the same table and diffs as when it was made."""
    console = _console(out)
    actions = [a for a in data.get("actions", []) if a.get("action") != ActionKind.NOOP]
    if markdown:
        # A blank line first: a table cannot interrupt the paragraph `show` starts with.
        lines = ["", "| | spec | action | cost | why |", "|---|---|---|---|---|"]
        for a in actions:
            cost = money(a.get("cost_usd")) if a.get("action") in PAID else ""
            symbol = SYMBOLS[ActionKind(a["action"])].strip() or "·"
            lines.append(
                f"| `{symbol}` | `{a['name']}` | {a['action']} | {cost} | {_md(a['reason'])} |"
            )
        console.print("\n".join(lines) + "\n")
    else:
        from rich.table import Table

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
