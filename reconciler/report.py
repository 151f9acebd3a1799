"""How plans, progress, summaries and status look: rich on a terminal, plain lines otherwise, JSON.

Kept apart from the CLI so the wording of a plan or a summary can be tested as data.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .engine import Summary
from .events import Reporter
from .lifecycle import PAID, ActionKind, OutcomeState
from .lockfile import LOCK_FILE
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
    console.print(plan_headline(plan))
    if spending is not None and spending.budgeted:
        console.print(f"Budget: {spending.describe()}.")


PHASE_DONE = {"materialized": "[green]✓[/]", "removed": "[green]-[/]", "failed": "[red]✗[/]",
              "unknown": "[red]?[/]"}  # fmt: skip
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress(Reporter):
    """Event lines for apply and watch: rich colours on a terminal, plain text in CI, or JSON lines.

    Each event becomes one line (kind, level, name, message, operation); on a terminal during
    apply, events of the specs being applied move their row of the live table instead.
    """

    def __init__(self, out: TextIO | None = None, *, json_lines: bool = False) -> None:
        self.out = out or sys.stderr
        self.json_lines = json_lines
        self.console = Console(file=self.out, highlight=False, soft_wrap=True)
        self.rich = self.out.isatty() and not json_lines
        self._live: Live | None = None
        self._rows: dict[str, list[Any]] = {}

    # -- the events ------------------------------------------------------------------------------

    def submitting(
        self, name: str, *, model: str, resolution: str, duration: int, cost: float | None
    ) -> None:
        self._line("submit", f"submitting ({model}, {resolution}, {duration}s, {money(cost)})",
                   name=name, phase="submitting", cost=cost)  # fmt: skip

    def held(self, name: str, message: str) -> None:
        self._line("held", message, name=name, level="warning", phase="pending")

    def accepted(self, name: str, operation: str) -> None:
        self._line("submitted", "accepted", name=name, operation=operation, phase="running")

    def rescued(self, name: str, operation: str, message: str) -> None:
        self._line("rescued", message, name=name, level="error", operation=operation)

    def polling(self, name: str, operation: str) -> None:
        self._line("poll", "waiting for the operation", name=name, operation=operation,
                   phase="running")  # fmt: skip

    def downloading(self, name: str, operation: str | None) -> None:
        self._line("download", "downloading", name=name, operation=operation, phase="downloading")

    def materialized(self, name: str, path: str) -> None:
        self._line("materialized", f"materialized {path}", name=name, phase="materialized")

    def removed(self, name: str, path: str | None) -> None:
        self._line("removed", f"removed {path}", name=name, phase="removed")

    def adopted(self, name: str, path: str) -> None:
        self._line("adopted", f"adopted {path} from {LOCK_FILE}", name=name, phase="materialized")

    def retrying(self, name: str, message: str) -> None:
        self._line("retry", message, name=name, level="warning", phase="retrying")

    def failed(self, name: str, message: str, *, final: bool = True) -> None:
        level, phase = ("error", "failed") if final else ("warning", "retrying")
        self._line("failed", message, name=name, level=level, phase=phase)

    def unknown(self, name: str, message: str, *, recovered: bool = False) -> None:
        level = "warning" if recovered else "error"
        self._line("unknown", message, name=name, level=level, phase="unknown")

    def resubmitting(self, name: str, message: str) -> None:
        self._line("resubmit", message, name=name, level="warning")

    def watching(self, message: str) -> None:
        self._line("start", message)

    def reconciled(self, message: str) -> None:
        self._line("reconcile", message)

    def reloaded(self, message: str) -> None:
        self._line("reload", message)

    def stopping(self, message: str, *, name: str | None = None) -> None:
        self._line("stop", message, name=name)

    def condition(self, message: str, *, name: str | None = None, level: str = "error") -> None:
        self._line("info" if level == "info" else "problem", message, name=name, level=level)

    def ended(self, name: str, outcome: str, message: str) -> None:
        level = "info" if outcome == OutcomeState.SUPERSEDED else "warning"
        self._line("outcome", f"{outcome}: {message}", name=name, level=level)

    # -- how they look ---------------------------------------------------------------------------

    @contextmanager
    def live(self, names: list[str]) -> Iterator[None]:
        """On a terminal, a live table of every spec's phase while apply runs; elsewhere nothing."""
        if not self.rich or not names:
            yield
            return
        now = time.monotonic()
        self._rows = {name: ["queued", now, ""] for name in names}
        with Live(get_renderable=self._table, console=self.console, refresh_per_second=8,
                  transient=True) as live:  # fmt: skip
            self._live = live
            try:
                yield
            finally:
                self._live = None
        self.console.print(self._table(final=True))

    def _table(self, final: bool = False) -> Table:
        table = Table(box=None, pad_edge=False, show_header=False)
        for column in ("", "name", "phase", "time", "operation"):
            table.add_column(column, no_wrap=True)
        frame = int(time.monotonic() * 8)
        for name, (phase, since, operation) in self._rows.items():
            done = phase in PHASE_DONE
            mark = PHASE_DONE.get(phase) or ("" if final else SPINNER[frame % len(SPINNER)])
            elapsed = "" if phase == "queued" else f"{time.monotonic() - since:5.0f}s"
            style = {"failed": "red", "unknown": "red", "pending": "yellow"}.get(phase, "")
            table.add_row(mark, name, f"[{style or 'default'}]{phase}[/]",
                          "" if done else elapsed, operation.rsplit("/", 1)[-1])  # fmt: skip
        return table

    def _line(
        self,
        kind: str,
        message: str,
        *,
        name: str | None = None,
        level: str = "info",
        operation: str | None = None,
        phase: str | None = None,
        cost: float | None = None,
    ) -> None:
        if self._live is not None and name in self._rows:
            row = self._rows[name]
            if phase is not None and phase != row[0]:
                row[0], row[1] = phase, time.monotonic()
            row[2] = operation or row[2]
            if level in ("warning", "error"):
                style = "red" if level == "error" else "yellow"
                self._live.console.print(f"[{style}]{name}: {_escape(message)}[/]")
            return
        if self.json_lines:
            record: dict[str, object] = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "level": level,
                "event": kind,
                "name": name,
                "operation": operation,
                "message": message,
            }
            if kind == "submit":
                record["cost_usd"] = cost  # what this POST may cost, as estimated
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()
            return
        who = f"{name}: " if name else ""
        text = f"{who}{message}" + (f" [{operation}]" if operation else "")
        if self.rich:
            style = {"error": "red", "warning": "yellow"}.get(level, "")
            stamp = time.strftime("%H:%M:%S")
            self.console.print(f"[dim]{stamp}[/dim] [{style or 'default'}]{_escape(text)}[/]")
        else:
            self.out.write(f"{level.upper():7} {text}\n")
            self.out.flush()


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "ok": summary.ok,
        "fatal": summary.fatal,
        "stopped": summary.stopped,
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
    objects: str | None = None,
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
    if objects:
        console.print(f"Objects: {_escape(objects)}")
    if daemon:
        console.print(daemon)
