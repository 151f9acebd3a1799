"""One way to stop, shared by ``apply`` and ``watch``: signals, the grace period, cancellation.

The first SIGINT/SIGTERM asks for a stop: no new claim is made, waits end early, and work in
progress gets ``grace`` seconds to settle before what is left is cancelled (a POST cancelled while
waiting for its answer records itself as unknown first). A second signal exits at once. Plain
``signal.signal`` handlers are used rather than the event loop's: they stay in force after the loop
has closed, so a second signal during shutdown still exits with 128+signum, never a traceback.

Stopping is a signal, not an error: ``Stopping`` is raised out of a wait and caught at the task's
edge, so no error handler can mistake it for a failed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Stopping(Exception):
    """A stop was requested while waiting: the task ends here, its state already recorded."""


class StopFlag:
    """The run's stop request, and the waits that end early when it is set."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._pausing: set[asyncio.Future[None]] = set()  # the pauses a request cuts short
        self.signal: int | None = None  # the signal that asked, if one did

    def request(self) -> None:
        """Ask to stop (on the loop's thread: a signal's handler hands it there)."""
        self._event.set()
        for waiter in self._pausing:
            _wake(waiter)

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def pause(self, seconds: float) -> bool:
        """Sleep unless asked to stop; False when stopping. One future and one timer: every
        poll waits here, and ``wait_for`` on the event made a task, a timeout and two futures
        each time."""
        if self.requested:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        self._pausing.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._pausing.discard(waiter)
        return not self.requested

    async def sleep(self, seconds: float) -> None:
        """Sleep, or raise ``Stopping`` as soon as a stop is requested."""
        if not await self.pause(seconds):
            raise Stopping


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def settle(tasks: Iterable[asyncio.Task[Any]], grace: float) -> None:
    """Give tasks ``grace`` seconds to finish on their own, then cancel the rest and wait.

    Everything a cancelled task leaves behind is recorded already (an operation name, a
    succeeded row), so the run ends within the 2 s a user expects with nothing forgotten."""
    tasks = [t for t in tasks if not t.done()]
    if not tasks:
        return
    await asyncio.sleep(0)  # let tasks see the stop request first
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def handling_signals(flag: StopFlag, *, announce: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM ask ``flag`` to stop (``announce`` says so, on the loop's
    thread); a second signal, or one after the loop has closed, exits at once with 128+signum.
    Enter it from inside the running loop; the previous handlers come back on exit."""
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal hits
        hits += 1
        if hits > 1 or loop.is_closed():
            os._exit(128 + signum)
        flag.signal = signum
        loop.call_soon_threadsafe(announce, signum)
        loop.call_soon_threadsafe(flag.request)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def name_of(signum: int) -> str:
    return signal.Signals(signum).name
