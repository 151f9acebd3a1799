"""Pacing: of submissions (no fixed rate by default, slower on 429, faster again while submits
succeed), of retries (capped exponential backoff with jitter), and a run's tuning.

Preview quotas are low and undocumented (third-party reports say about 10 requests a minute), and a
team that knows its quota can cap the rate with ``limits.submitPerMinute``. The pacer is additive
increase / multiplicative decrease, like TCP: one 429 halves the rate and holds every submit until
the Retry-After has passed; each success raises the rate a little, until it is unlimited again.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import ReconcileError, TransientError

T = TypeVar("T")
DEFAULT_CONCURRENCY = 4  # fits preview quotas of a few concurrent operations
POLL_STEADY_POLLS = 6  # polls at the set interval before it starts to grow
POLL_CAP = 30.0  # seconds: the longest wait between two polls of one operation

# When an operation is first polled (``RunTimes``): learned from the last few of its kind, and one
# in PROBE_EVERY polled earlier, by PROBE_STEP of it, to find out whether they got faster.
# 20, not 5: with runs spread as real ones are (40-360 s, or lognormal about 90 s), the shortest
# of the last 5 was a slow one's more often than not, and the quick ones waited for it (a model
# of 2,000 runs: 39 s found late on average against 12 s when first polled at 80% of the
# shortest seen); the shortest of 20 waits 15 s (7 s for the lognormal, better than 80%'s 8)
# with 10 polls against 12 (5 against 9).
RUNS_KEPT = 20
PROBE_EVERY = 8
PROBE_STEP = 0.05  # then 4 times more after each probe that found it done, up to a half
PROBE_STEP_MAX = 0.5

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

    def ready(self) -> bool:
        """Whether ``turn`` would return at once (no rate or hold in force, no turn waiting):
        then it needs no task of its own raced against a stop (two tasks per submit)."""
        return not self._lock.locked() and self.wait_needed() == 0.0

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


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter: retries never spin and never stampede."""

    base: float = 1.0
    cap: float = 60.0
    attempts: int = 6

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), 3600.0)
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> T:
    """Run ``call``, retrying only TransientError, at most ``backoff.attempts`` times in all.

    ``sleep`` may raise (the engine's raises ``Stopping``): that ends the retries at once."""
    for attempt in range(backoff.attempts):
        try:
            return await call()
        except TransientError as exc:
            if attempt + 1 >= backoff.attempts:
                raise
            wait = backoff.delay(attempt, exc.retry_after)
            if on_retry:
                on_retry(exc, wait)
            await sleep(wait)
    raise AssertionError("unreachable")


class _Kind:
    def __init__(self) -> None:
        self.bounds: deque[float] = deque(maxlen=RUNS_KEPT)
        self.until_probe = 1  # the first operation planned after one was seen probes
        self.step = PROBE_STEP


class RunTimes:
    """When to poll an operation first, per kind (model, resolution, seconds, from images or
    not), so that one of a kind already seen is usually found done at its first poll: each poll
    is a request (quota, CPU), and 1,000 operations of 1 s, first polled at 80% of the shortest
    run seen, took 2.2.

    A bound is the time from an operation's POST to the answer of the poll that found it done:
    an upper bound of its run, tight when a poll saw it running an interval before. The first
    poll waits for the shortest of the last RUNS_KEPT bounds. One found done there keeps that
    bound too: where short and long runs mix (a kind is text, image and extension runs alike),
    the long ones found running would otherwise fill the window and every short one would wait
    as long as they do (0.3 s runs among 1.5 s ones were found 1.2 s late). One found running
    keeps its longer bound, so a provider that got slower for every operation is followed once
    RUNS_KEPT were, and a spike of short runs is forgotten as fast. That it got faster shows only by polling earlier: one
    operation in PROBE_EVERY is polled first PROBE_STEP before the shortest (then at it, if
    running); a probe that finds it done keeps that bound and makes the next one probe again,
    four times further, so a spike of long runs is forgotten in a few operations rather than
    kept for a daemon's life. The probes also take back the creep of the bounds (each is a
    little late: the event loop, the request): the first poll stays within PROBE_STEP of the
    run, and being an upper bound, it seldom finds one running."""

    def __init__(self) -> None:
        self._kinds: dict[Hashable, _Kind] = {}

    def plan(self, kind: Hashable) -> tuple[float, float]:
        """Seconds after the POST of the first poll, and of the second when the first finds it
        running (the shortest bound kept); (0, 0) for a kind not seen yet: poll at once."""
        seen = self._kinds.get(kind)
        if seen is None or not seen.bounds:
            return 0.0, 0.0
        shortest = min(seen.bounds)
        seen.until_probe -= 1
        if seen.until_probe > 0:
            return shortest, shortest
        seen.until_probe = PROBE_EVERY
        return (1 - seen.step) * shortest, shortest

    def record(self, kind: Hashable, planned: tuple[float, float], waited: float, *,
               at_first: bool) -> None:  # fmt: skip
        """An operation of ``kind``, its first polls as ``plan`` said, found done ``waited``
        seconds after its POST: at its first poll, or after a poll that saw it running."""
        seen = self._kinds.setdefault(kind, _Kind())
        first, shortest = planned
        probe = first < shortest
        if at_first and probe:  # found done before the shortest: faster now, probe again further
            seen.until_probe, seen.step = 1, min(PROBE_STEP_MAX, 4 * seen.step)
        elif probe:
            seen.step = PROBE_STEP
        seen.bounds.append(waited)


@dataclass
class Tuning:
    """How fast and how patient a run is: concurrency, poll interval, grace, timeouts, backoffs."""

    concurrency: int | None = None  # None: reconcile.yaml's limits.concurrency, else 4
    poll_interval: float = 10.0
    stop_grace: float = 1.0  # seconds between a stop request and cancelling what is left
    # How long a task waits on another process's claim before saying whose it is and moving on:
    # a POST's answer takes seconds, so a claim this old belongs to a wedged or unreachable owner.
    follow_limit: float = 300.0
    http_timeout: float = 60.0
    submit_backoff: Backoff = field(default_factory=Backoff)
    poll_backoff: Backoff = field(default_factory=lambda: Backoff(base=2.0, cap=60.0, attempts=10))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Tuning:
        """Defaults, with the retry base and HTTP timeout adjustable for tests and slow links."""
        env = dict(os.environ) if env is None else env
        tuning = cls()
        if base := env.get("RECONCILE_RETRY_BASE"):
            # The whole schedule scales with its first step: base 1 s waits up to 60 s.
            seconds = _seconds(base, "RECONCILE_RETRY_BASE")
            cap = min(60.0, 60.0 * seconds)
            tuning.submit_backoff = Backoff(base=seconds, cap=cap, attempts=6)
            tuning.poll_backoff = Backoff(base=seconds, cap=cap, attempts=10)
        if timeout := env.get("RECONCILE_HTTP_TIMEOUT"):
            tuning.http_timeout = _seconds(timeout, "RECONCILE_HTTP_TIMEOUT")
        if limit := env.get("RECONCILE_FOLLOW_LIMIT"):
            tuning.follow_limit = _seconds(limit, "RECONCILE_FOLLOW_LIMIT")
        return tuning

    def poll_delay(self, waited: float) -> float:
        """Seconds until the next poll of an operation running for ``waited`` seconds: the poll
        interval at first, then growing toward a cap for long operations (a 6-minute 4k video
        need not be asked about every few seconds)."""
        patience = self.poll_interval * POLL_STEADY_POLLS
        if waited <= patience:
            return self.poll_interval
        cap = max(self.poll_interval, POLL_CAP)
        return min(cap, self.poll_interval * (1 + (waited - patience) / patience))

    def concurrency_for(self, configured: int | None) -> int:
        """The flag, else reconcile.yaml's limit, else a default that fits preview quotas."""
        return self.concurrency or configured or DEFAULT_CONCURRENCY


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 86400):
        raise ReconcileError(f"{name}={text!r}: give a number of seconds, such as 1 or 0.5")
    return value
