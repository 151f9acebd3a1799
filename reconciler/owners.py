"""Who holds a claim or a temp file, and whether that process is still alive.

A claim names its owner as ``host:pid:start``: the pid's kernel start time is what tells a live
owner from a reused pid. Only owners on this host can be checked; elsewhere the caller falls back
on age. One module for it, so the state store and the temp-file sweep judge liveness the same way.
"""

from __future__ import annotations

import os
import socket
import time

_said: tuple[int, str] = (0, "")  # the last second formatted, and how


def now_iso() -> str:
    """Now in UTC, to the second, as the state and the ledger write it. Formatted once a second:
    every transition stamps it, and strftime was 2% of an apply's CPU."""
    global _said
    second, said = int(time.time()), _said  # one read of it: threads replace it whole
    if second != said[0]:
        said = _said = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return said[1]


def process_start(pid: int) -> str:
    """The kernel's start time of a pid, so a reused pid is not mistaken for the original owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "0"


def this_owner() -> str:
    """Who holds a claim: host, pid and the pid's start time, as shown in messages."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may be a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host; None when it lives elsewhere and cannot be checked."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if not pid_alive(pid):
        return False
    return process_start(pid) == start
