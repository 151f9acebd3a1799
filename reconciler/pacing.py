"""Submit pacing: no fixed rate by default, slow down on 429, speed up again while submits succeed.

Preview quotas are low and undocumented (third-party reports say about 10 requests a minute), and a
team that knows its quota can cap the rate with ``limits.submitPerMinute``. The pacer is additive
increase / multiplicative decrease, like TCP: one 429 halves the rate and holds every submit until
the Retry-After has passed; each success raises the rate a little, until it is unlimited again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MIN_PER_MINUTE = 1.0
# Above this the pacer stops metering altogether: concurrency is then the only limit.
UNLIMITED_PER_MINUTE = 120.0


class Pacer:
    def __init__(
        self,
        *,
        cap_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cap = cap_per_minute
        self.rate: float | None = cap_per_minute  # submits per minute; None = unmetered
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0  # earliest time of the next submit
        self._hold_until = 0.0
        self._lock = asyncio.Lock()

    def wait_needed(self) -> float:
        """Seconds until a submit could go out now, without reserving anything."""
        return max(0.0, self._next - self._clock(), self._hold_until - self._clock())

    async def turn(self) -> None:
        """Wait until the next submit may go out, then reserve that slot."""
        async with self._lock:
            # Re-check after each sleep: a 429 that arrives while this turn waits extends the hold.
            while True:
                now = self._clock()
                start = max(now, self._next, self._hold_until)
                if start <= now:
                    break
                await self._sleep(start - now)
            if self.rate is not None:
                self._next = max(self._clock(), start) + 60.0 / self.rate
            else:
                self._next = 0.0

    def succeeded(self) -> None:
        if self.rate is None:
            return
        self.rate = self.rate * 1.2 + 1.0
        if self.cap is not None:
            self.rate = min(self.rate, self.cap)
        elif self.rate >= UNLIMITED_PER_MINUTE:
            self.rate = None

    def rate_limited(self, retry_after: float | None, fallback: float) -> float:
        """Halve the rate and hold all submits; returns how long they are held."""
        current = self.rate if self.rate is not None else UNLIMITED_PER_MINUTE / 2
        self.rate = max(MIN_PER_MINUTE, current / 2)
        if self.cap is not None:
            self.rate = min(self.rate, self.cap)
        wait = retry_after if retry_after is not None else fallback
        self._hold_until = max(self._hold_until, self._clock() + wait)
        return wait
