"""Typed events: what the engine and the daemon tell the user, one method per event.

The engine calls a ``Reporter`` and never decides how anything looks; the CLI's progress lines,
the live table, the JSON log and the daemon's outcome log implement it. This is resolvelib's
``BaseReporter``: every method does nothing here, so a reporter overrides only what it shows, and a
new event is a new method instead of a new string to match.
"""

from __future__ import annotations


class Reporter:
    """Receives every event of a run; the base class ignores them all."""

    # -- one spec key's generation ----------------------------------------------------------

    def submitting(
        self, name: str, *, model: str, resolution: str, duration: int, cost: float | None
    ) -> None:
        """A paid POST is about to be sent for ``name`` (its claim, and its charge, committed)."""

    def held(self, name: str, message: str) -> None:
        """A paid POST was held back for this run: a money limit, a stop, a long rate hold."""

    def accepted(self, name: str, operation: str) -> None:
        """The provider answered with an operation name, and it is committed."""

    def rescued(self, name: str, operation: str, message: str) -> None:
        """A paid job's operation name could not be recorded in the state: it was kept aside."""

    def polling(self, name: str, operation: str) -> None:
        """Waiting for the operation to finish."""

    def downloading(self, name: str, operation: str | None) -> None:
        """The video is being streamed into the object cache."""

    def materialized(self, name: str, path: str) -> None:
        """The output file is in place."""

    def removed(self, name: str, path: str | None) -> None:
        """A spec is gone and its file left the output folder (its bytes stay cached)."""

    def adopted(self, name: str, path: str) -> None:
        """A fresh clone's verified lock entry was taken into the state, free of charge."""

    def retrying(self, name: str, message: str) -> None:
        """A call failed in a way that may be retried: now, after a wait, or in a later run."""

    def failed(self, name: str, message: str, *, final: bool = True) -> None:
        """A generation failed; not final when it will be resubmitted (not billed)."""

    def unknown(self, name: str, message: str, *, recovered: bool = False) -> None:
        """A submission's outcome is unknown; ``recovered``: found so, left by a dead process."""

    def resubmitting(self, name: str, message: str) -> None:
        """The user asked to resubmit something that may have been paid for already."""

    # -- the daemon -----------------------------------------------------------------------------

    def watching(self, message: str) -> None:
        """The daemon started."""

    def reconciled(self, message: str) -> None:
        """One reconcile of the daemon ended: what it found and started."""

    def reloaded(self, message: str) -> None:
        """reconcile.yaml is being (or was) read again."""

    def stopping(self, message: str, *, name: str | None = None) -> None:
        """A stop was requested, or what a stop leaves running remotely."""

    def condition(self, message: str, *, name: str | None = None, level: str = "error") -> None:
        """A standing condition (a broken file, a paused account), said once while it lasts."""

    def ended(self, name: str, outcome: str, message: str) -> None:
        """The daemon's task for ``name`` ended short of materialized."""
