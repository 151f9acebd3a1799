"""Money's guards: what a run may spend, and the day and month budgets over the ledger.

Three guards stand between a spec and a paid POST (DESIGN.md): the plan's estimate against
``--max-cost``, approval, and what is *really* spent. This module is the third. Every POST that may
be billed counts the moment its claim is committed (the claim appends a charge to the ledger), and
only an answer that proves nothing was accepted (429, 400/401/403, a refused connection) refunds
it; an unanswered POST or a gateway's 5xx stays charged. So retries can never spend past a limit,
however many there are.

- ``--max-cost`` and ``budget.perRun`` bound this process's run, counted here in memory.
- ``budget.perDay`` and ``budget.perMonth`` bound the ledger's sum since the start of the UTC day
  and month, checked by the store inside the claim's own transaction, so two processes cannot
  both pass the check with the last dollar.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import CostLimitExceeded

EPSILON = 1e-9


def money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


@dataclass(frozen=True)
class Window:
    """A budget over the ledger: at most ``limit`` USD charged since ``since``."""

    label: str  # "today", "this month"
    since: str  # ISO time, as the ledger's rows are stamped
    limit: float


def windows(
    *, per_day: float | None, per_month: float | None, now: datetime | None = None
) -> list[Window]:
    """The budget windows in force now: calendar day and month, in UTC."""
    now = now or datetime.now(UTC)
    found = []
    if per_day is not None:
        day = now.strftime("%Y-%m-%dT00:00:00Z")
        found.append(Window("today", day, per_day))
    if per_month is not None:
        month = now.strftime("%Y-%m-01T00:00:00Z")
        found.append(Window("this month", month, per_month))
    return found


def over(window: Window, spent: float, cost: float | None) -> CostLimitExceeded | None:
    """The refusal a charge of ``cost`` meets in ``window`` (None: it fits). An unknown cost
    cannot be checked, so it does not fit."""
    if cost is None:
        return CostLimitExceeded(
            f"the cost is unknown, so the budget for {window.label} cannot be checked: add the "
            "model and resolution to `pricing` in reconcile.yaml"
        )
    if spent + cost <= window.limit + EPSILON:
        return None
    return CostLimitExceeded(
        f"the budget for {window.label} would be exceeded: {money(spent)} of {money(window.limit)}"
        f" spent, this video costs {money(cost)} (budget in reconcile.yaml)"
    )


@dataclass
class RunLimit:
    """What this run may still spend: ``--max-cost`` or ``budget.perRun``, whichever is lower."""

    limit: float | None = None
    spent: float = 0.0

    def charge(self, cost: float | None, *, name: str) -> None:
        """Count a POST about to be sent; refuse it (CostLimitExceeded) if it would not fit."""
        if self.limit is not None:
            if cost is None:
                raise CostLimitExceeded(
                    f"{name}: its cost is unknown, so the run's limit cannot be checked: add its "
                    "model and resolution to `pricing` in reconcile.yaml"
                )
            if self.spent + cost > self.limit + EPSILON:
                raise CostLimitExceeded(
                    f"the run's limit of {money(self.limit)} would be exceeded: "
                    f"{money(self.spent)} spent on POSTs that may be billed, this one costs "
                    f"{money(cost)}"
                )
        self.spent += cost or 0.0

    def refund(self, cost: float | None) -> None:
        """The answer proved nothing was accepted: the POST costs nothing."""
        self.spent = max(0.0, self.spent - (cost or 0.0))


def run_limit(max_cost: float | None, per_run: float | None) -> RunLimit:
    limits = [v for v in (max_cost, per_run) if v is not None]
    return RunLimit(min(limits) if limits else None)


@dataclass(frozen=True)
class Spending:
    """What the ledger says POSTs that may be billed cost today and this month, beside the budget."""

    today: float
    month: float
    per_run: float | None = None
    per_day: float | None = None
    per_month: float | None = None

    @property
    def budgeted(self) -> bool:
        return any(v is not None for v in (self.per_run, self.per_day, self.per_month))

    def left(self) -> float | None:
        """What may still be spent now under the day and month budgets (None: no budget)."""
        room = [
            limit - spent
            for limit, spent in ((self.per_day, self.today), (self.per_month, self.month))
            if limit is not None
        ]
        return max(0.0, min(room)) if room else None

    def refusal(self, cost: float, *, known: bool = True) -> str | None:
        """Why a plan costing ``cost`` may not start under the budget (None: it may)."""
        if not self.budgeted:
            return None
        if not known:
            return "some costs are unknown, so the budget cannot be checked"
        if self.per_run is not None and cost > self.per_run + EPSILON:
            return f"it costs {money(cost)}, more than budget.perRun {money(self.per_run)}"
        for label, spent, limit in self._windows():
            if limit is not None and cost > limit - spent + EPSILON:
                left = max(0.0, limit - spent)
                return (
                    f"it costs {money(cost)}, more than the {money(left)} left of {label}'s "
                    f"budget ({money(spent)} of {money(limit)} spent)"
                )
        return None

    def describe(self) -> str:
        """One line: spent and left per window, as plan and status show it."""
        parts = []
        for label, spent, limit in self._windows():
            if limit is None:
                parts.append(f"{label} {money(spent)} spent")
            else:
                left = max(0.0, limit - spent)
                parts.append(f"{label} {money(spent)} of {money(limit)} spent, {money(left)} left")
        return "; ".join(parts)

    def _windows(self) -> list[tuple[str, float, float | None]]:
        return [("today", self.today, self.per_day), ("this month", self.month, self.per_month)]
