"""Progress of ``apply`` and ``watch`` as it happens: the ``Reporter`` the CLI hands the engine.

One line per event (kind, level, name, message, operation): rich colours on a terminal, plain
lines in CI, or JSON lines for log collectors (``watch --log-format json``). On a terminal during
``apply``, the events of the specs being applied move their row of a live table instead.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from .events import Reporter
from .lifecycle import OutcomeState
from .lockfile import LOCK_FILE
from .money import money

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

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
        self._console: Console | None = None
        self.rich = self.out.isatty() and not json_lines
        self._live: Live | None = None
        self._rows: dict[str, list[Any]] = {}

    @property
    def console(self) -> Console:
        """rich, imported only for a terminal (or a caller that asks): plain lines to a pipe
        never load it (about 70 ms of an apply's start-up)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False, emoji=False, soft_wrap=True)
        return self._console

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
        from rich.live import Live

        with Live(get_renderable=self._table, console=self.console, refresh_per_second=8,
                  transient=True) as live:  # fmt: skip
            self._live = live
            try:
                yield
            finally:
                self._live = None
        self.console.print(self._table(final=True))

    def _table(self, final: bool = False) -> Table:
        from rich.table import Table

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
