"""Work split over the machine's cores by fork: one part here, the others in children.

A cold load of thousands of spec files is CPU-bound Python (YAML, validation, keys) that one
core does at a time; a child forked with everything already imported starts parsing at once,
where a process pool would pay the imports again. Each child sends its result back through a
pipe as ``marshal`` data (plain values only: it can never run code), and any failure of a child
(it died, was killed, sent less) costs only its part being done again here.

Forking is only safe in a process that has started no threads (a lock another thread held at the
fork stays held in the child forever): ``can_fork`` says so, and callers fall back to one core.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for bulk work that makes a great many objects and no
    cycles (specs, index entries), where each full collection would walk every one of them, and
    more of them each time (at 100,000 specs: tenths of a second, several times per load)."""
    collect = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collect:
            gc.enable()


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether forking is safe here: a POSIX process whose only thread is the main one."""
    return (
        hasattr(os, "fork")
        and threading.active_count() == 1
        and threading.current_thread() is threading.main_thread()
    )


def split(items: Sequence[T], parts: int, *, first: float = 1.0) -> list[Sequence[T]]:
    """``items`` in ``parts`` contiguous slices, in order: the first ``first`` times as long as
    each of the others (nearly equal: they differ by at most one item)."""
    total = first + parts - 1
    bounds = [0] + [round(len(items) * (first + k) / total) for k in range(parts)]
    return [items[start:end] for start, end in pairwise(bounds)]


def run(
    items: Sequence[T],
    work: Callable[[Sequence[T], bool], Any],
    *,
    parts: int,
    meanwhile: Callable[[], object] | None = None,
) -> list[Any]:
    """``work(part, forked)`` over ``parts`` slices of ``items``: the first here, the rest in
    forked children (``forked`` True: return marshal-able data). Returns the children's results,
    in order; a child that failed has its part done here instead (``forked`` False, result None),
    so every item is worked on exactly once in the end, whatever happens to the children.
    ``meanwhile`` runs here once the children are forked, before this process's part: work of
    the caller's that the children need not see, done while they run (a child pays copy-on-write
    faults and packs its result, so this process would otherwise wait for it).
    """
    slices = split(items, parts)
    pending: list[tuple[int, int, Sequence[T]]] = []
    try:
        for part in slices[1:]:
            pending.append((*_fork(part, work), part))
        if meanwhile is not None:
            meanwhile()
        work(slices[0], False)
        results = []
        while pending:
            pid, fd, part = pending.pop(0)
            result = _receive(pid, fd)
            if result is _FAILED:
                work(part, False)
                result = None
            results.append(result)
        return results
    finally:
        for pid, fd, _ in pending:  # interrupted (Ctrl-C): no child outlives the command
            _reap(pid, fd)


_FAILED = object()


def _fork(part: Sequence[T], work: Callable[[Sequence[T], bool], Any]) -> tuple[int, int]:
    read, write = os.pipe()
    # A Ctrl-C between the fork and the child's ``try`` would unwind the child through the
    # parent's stack (click's "Aborted!", finalizers, stdout flushed twice): the signals wait
    # until the child has made them fatal, as they are by default, with no Python code run.
    stops = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:  # the child: work, send, and leave without running any of the parent's exits
        code = 1
        try:
            for stop in stops:
                signal.signal(stop, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read)
            data = marshal.dumps(work(part, True))
            with os.fdopen(write, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(write)
    return pid, read


def _receive(pid: int, fd: int) -> Any:
    """A child's result (the pipe read to its end, the child reaped), or ``_FAILED``."""
    try:
        with os.fdopen(fd, "rb") as pipe:
            data = pipe.read()
    except BaseException:
        _reap(pid, None)
        raise
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        with contextlib.suppress(EOFError, ValueError, TypeError):
            return marshal.loads(data)
    return _FAILED


def _reap(pid: int, fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)
