"""Named crash points, for proving exactly-once through SIGKILL at precise moments.

``RECONCILE_FAILPOINTS=after_claim:2,mid_download:1`` makes the process SIGKILL itself the 2nd time
it passes ``after_claim`` and the 1st time it passes ``mid_download``. Unset (always, outside the
crash tests) every call is a dictionary lookup and nothing more. The idea is FoundationDB's and
TiKV's fail points: a random timer cannot reliably land between a rename and a lock-file write;
a named point can.
"""

from __future__ import annotations

import os
import signal

ENV = "RECONCILE_FAILPOINTS"

POINTS = (
    "before_claim",  # a paid action is about to claim its row
    "after_claim",  # row is `submitting`, POST not yet sent
    "after_post",  # the provider answered with an operation name, not yet committed
    "after_running",  # operation name committed
    "before_poll",
    "after_succeeded",  # poll said done, video URI committed, download not started
    "mid_download",  # half-way through the bytes
    "after_download",  # object in the cache, not yet recorded
    "after_cached",  # object recorded as materialized in the db, no output file yet
    "before_rename",  # output temp file written and fsynced, not renamed
    "after_rename",  # output in place, outputs row not yet written
    "before_lock",  # about to rewrite reconcile.lock
    "mid_lock",  # lock temp file written, not renamed
)
# Points off the paid path (tests/test_crash.py kills apply at each of POINTS instead).
OTHER_POINTS = ("parse_child",)  # a child forked to parse spec files, before it parses any


def _parse(value: str) -> dict[str, int]:
    armed = {}
    for item in value.split(","):
        name, _, count = item.strip().partition(":")
        if name:
            armed[name] = int(count or 1)
    return armed


_armed = _parse(os.environ.get(ENV, ""))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Pass a named point; SIGKILL this process if the environment armed it for this hit."""
    if not _armed:
        return
    assert name in POINTS or name in OTHER_POINTS, name
    _hits[name] = _hits.get(name, 0) + 1
    if _armed.get(name) == _hits[name]:
        os.kill(os.getpid(), signal.SIGKILL)
