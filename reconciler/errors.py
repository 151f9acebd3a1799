"""The one error tree of reconciler.

Flow control is by error type (as in kopf): the engine decides whether to retry, record a final
failure, stop the run, or park a generation as ``unknown`` from the class alone. The CLI turns any
``ReconcileError`` into a one-line message and a non-zero exit, never a traceback.

::

    ReconcileError                   anything a user can cause or fix; printed as one message
    ├── SpecErrors                   bad specs or settings, all of them (file, line, field)
    ├── StateError                   the state db, lock file or outputs are unusable
    ├── CostLimitExceeded            the plan costs more than --max-cost
    └── ApiError                     anything the provider said (or failed to say)
        ├── TransientError           nothing accepted, or any HTTP error of a poll or download: retry
        │   ├── RateLimited          429: retry, and slow every submission down
        │   ├── ServerError          5xx: retried (a POST only on the user's word: it may be billed)
        │   ├── OperationLost        a poll's 404: retried; if it lasts, the spec becomes unknown
        │   └── FileMissing          a download's 404: retried; final only past the file's expiry
        ├── PermanentError           400, content policy, filtered, failed operation: final for the spec
        │   ├── ContentPolicyError
        │   ├── ModelUnavailable     404 to the POST: the model id is unknown or retired
        │   ├── FilteredError
        │   ├── OperationFailed      done with an error; not billed, retried at most N times
        │   └── FileExpired          the provider's copy is gone for good (past its ~2 days)
        ├── FatalError               401, 403: stop the whole run, nothing else is marked failed
        └── AmbiguousError           the POST may have been accepted (no answer, or a 5xx from the
                                     gateway): never resubmit by itself

Which HTTP answer or transport failure means which class is decided once, at the HTTP edge, from
one table per call (``wire.ANSWERS``, ``wire.TRANSPORT``): the engine only ever sees these classes,
never an httpx exception or a raw status. Stopping is not an error at all (``shutdown.Stopping``).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcileError(Exception):
    """Base of every error a user can cause or fix."""


@dataclass(frozen=True)
class Problem:
    """One validation finding, kept as data so it can be shown, sorted and tested."""

    file: str
    message: str
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class SpecErrors(ReconcileError):
    """Every problem found in one load, so a user fixes them all in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.field or ""))
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} found; nothing was submitted"
        super().__init__("\n".join([*(str(p) for p in self.problems), head]))


class StateError(ReconcileError):
    """The state db, lock file or an output cannot be used as it is."""


class CostLimitExceeded(ReconcileError):
    """The plan, or the next POST, would cost more than the user allowed; raised before the POST."""


class ApiError(ReconcileError):
    """Something the provider answered, or failed to answer.

    ``status`` is the HTTP status when there was one; ``reason`` the provider's own words.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason or message


class TransientError(ApiError):
    """Retry later: rate limits, server errors, connections that never carried the request."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


class ServerError(TransientError):
    """A 5xx answer. On a poll or download, a retry like any other; on the POST, retried only
    when the user opted in (``retries.resubmitAfterServerError``), and then never refunded: a
    gateway's 5xx can come after the upstream accepted and billed the job."""


class RateLimited(TransientError):
    """429: the account's rate or quota is exhausted; every submission slows down, not just one."""


class OperationLost(TransientError):
    """A poll answered 404: perhaps a lagging replica, perhaps an expired or vanished job.
    Retried like any transient error; if it persists the spec becomes unknown, never failed."""


class FileMissing(TransientError):
    """A download answered 404: the provider may lag, or the file may have expired. Retried; only
    once the file is past its expiry is it final (``FileExpired``)."""


class PermanentError(ApiError):
    """Final for this spec key until the spec changes or the user asks for a retry."""

    kind = "rejected"


class ModelUnavailable(PermanentError):
    """The provider does not know the model id (never did, or retired it): not billed."""

    kind = "model_unavailable"


class ContentPolicyError(PermanentError):
    """The provider refused the prompt or image on policy grounds."""

    kind = "content_policy"


class FilteredError(PermanentError):
    """The operation finished but its video was withheld by safety filters (not billed)."""

    kind = "filtered"


class OperationFailed(PermanentError):
    """The operation finished with an error (not billed); may be resubmitted a few times."""

    kind = "operation_failed"


class FileExpired(PermanentError):
    """The provider no longer has the video's file (404 on download): kept about 2 days."""

    kind = "expired"


class FatalError(ApiError):
    """Stops the run at once: the key is wrong or the account cannot pay."""


class AmbiguousError(ApiError):
    """The POST was sent and no answer came back: the job may exist and be billed."""
