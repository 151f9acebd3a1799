"""Submit pacing on a fake clock: unmetered by default, capped when asked, AIMD around 429s.

The pacer takes its clock and its async sleep as arguments, so these tests run it on a clock that
only moves when the pacer sleeps: every wait it asks for is recorded, and no real time passes.
"""

from __future__ import annotations

import asyncio

import pytest

from reconciler.pacing import (
    MIN_PER_MINUTE,
    POLL_CAP,
    PROBE_EVERY,
    PROBE_STEP,
    RUNS_KEPT,
    UNLIMITED_PER_MINUTE,
    Pacer,
    RunTimes,
    Tuning,
)


class FakeTime:
    """A clock that advances only through ``sleep``; ``sleep`` yields once before it wakes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake = self.now + seconds
        await asyncio.sleep(0)  # let other tasks (a 429 arriving) run while this one waits
        self.now = max(self.now, wake)


def pacer(cap: float | None = None) -> tuple[Pacer, FakeTime]:
    fake = FakeTime()
    return Pacer(cap_per_minute=cap, clock=fake.clock, sleep=fake.sleep), fake


def turn_times(p: Pacer, fake: FakeTime, count: int) -> list[float]:
    """Take ``count`` turns one after another; the fake time at which each was granted."""

    async def main() -> list[float]:
        times = []
        for _ in range(count):
            await p.turn()
            times.append(fake.now)
        return times

    return asyncio.run(main())


def test_unmetered_by_default() -> None:
    """With no cap and no 429 yet, submits never wait."""
    p, fake = pacer()
    assert p.rate is None
    assert turn_times(p, fake, 20) == [0.0] * 20
    assert fake.sleeps == []


@pytest.mark.parametrize(("cap", "gap"), [(6.0, 10.0), (10.0, 6.0), (60.0, 1.0), (1.0, 60.0)])
def test_cap_spaces_submits(cap: float, gap: float) -> None:
    """limits.submitPerMinute spaces submits 60/cap seconds apart, the first at once."""
    p, fake = pacer(cap)
    times = turn_times(p, fake, 6)
    assert times == pytest.approx([i * gap for i in range(6)])
    assert fake.sleeps == pytest.approx([gap] * 5)


def test_cap_counts_from_the_last_submit_not_from_now() -> None:
    """A turn taken long after the previous one does not wait at all."""
    p, fake = pacer(6.0)
    turn_times(p, fake, 1)
    fake.now = 100.0
    assert turn_times(p, fake, 2) == pytest.approx([100.0, 110.0])


@pytest.mark.parametrize(
    ("cap", "rate_after", "times"),
    [
        (None, UNLIMITED_PER_MINUTE / 4, [32.0, 34.0]),
        (6.0, 3.0, [32.0, 52.0]),
        (1.5, MIN_PER_MINUTE, [40.0, 100.0]),
    ],
    ids=["unmetered", "capped", "never below the minimum"],
)
def test_429_holds_until_retry_after_and_slows_down(
    cap: float | None, rate_after: float, times: list[float]
) -> None:
    """A 429 holds the next submit until its Retry-After (or a later slot) and halves the rate."""
    # Unmetered counts as half the unmetering threshold before halving; never below 1 a minute.
    p, fake = pacer(cap)
    turn_times(p, fake, 1)  # t=0; reserves the next slot at 60/cap
    fake.now = 2.0
    assert p.rate_limited(30.0, fallback=5.0) == 30.0
    assert p.rate == pytest.approx(rate_after)
    assert turn_times(p, fake, 2) == pytest.approx(times)


def test_429_without_retry_after_uses_the_fallback() -> None:
    """With no Retry-After, the caller's backoff delay is the hold."""
    p, fake = pacer()
    assert p.rate_limited(None, fallback=4.0) == 4.0
    assert turn_times(p, fake, 1) == [4.0]


def test_a_later_shorter_429_does_not_shorten_the_hold() -> None:
    """Two 429s in a row: the longer hold stands."""
    p, fake = pacer()
    p.rate_limited(30.0, fallback=1.0)
    p.rate_limited(5.0, fallback=1.0)
    assert turn_times(p, fake, 1) == [30.0]


def test_429_holds_a_turn_that_is_already_waiting() -> None:
    """A submit already waiting for its slot when a 429 arrives still waits out the hold."""
    p, fake = pacer(6.0)

    async def main() -> float:
        await p.turn()  # t=0; the next slot is t=10
        waiting = asyncio.create_task(p.turn())
        await asyncio.sleep(0)  # the task is now asleep until t=10
        fake.now = 2.0
        p.rate_limited(30.0, fallback=1.0)  # the first submit got a 429: hold until t=32
        await waiting
        return fake.now

    assert asyncio.run(main()) >= 32.0


def test_successes_raise_the_rate_back_to_unmetered() -> None:
    """Without a cap, successes after a 429 raise the rate until metering stops altogether."""
    p, fake = pacer()
    p.rate_limited(1.0, fallback=1.0)
    p.rate_limited(1.0, fallback=1.0)
    rates = []
    while p.rate is not None:
        rates.append(p.rate)
        p.succeeded()
        assert len(rates) < 50, "the rate never recovers"
    assert rates == sorted(rates) and rates[0] == pytest.approx(UNLIMITED_PER_MINUTE / 8)
    fake.now = 100.0
    assert turn_times(p, fake, 5) == [100.0] * 5


def test_successes_raise_the_rate_back_to_the_cap_only() -> None:
    """With a cap, successes raise the rate back to the cap and never past it."""
    p, fake = pacer(6.0)
    p.rate_limited(0.0, fallback=0.0)
    assert p.rate == pytest.approx(3.0)
    for _ in range(30):
        p.succeeded()
        assert p.rate is not None and p.rate <= 6.0
    assert p.rate == pytest.approx(6.0)
    fake.now = 100.0
    assert turn_times(p, fake, 3) == pytest.approx([100.0, 110.0, 120.0])


def test_success_while_unmetered_stays_unmetered() -> None:
    """A success with no rate in force changes nothing."""
    p, fake = pacer()
    p.succeeded()
    assert p.rate is None
    assert turn_times(p, fake, 3) == [0.0] * 3


# -- when an operation is polled ------------------------------------------------------------------

KIND = ("veo", "720p", 8)


def settled(bound: float) -> RunTimes:
    """Runs of ``bound`` s seen, and the probe after the first one spent (found running)."""
    runs = RunTimes()
    runs.record(KIND, (0.0, 0.0), bound, at_first=False)
    probe = runs.plan(KIND)
    assert probe == pytest.approx(((1 - PROBE_STEP) * bound, bound))
    runs.record(KIND, probe, bound, at_first=False)
    return runs


def test_an_unknown_kind_is_polled_at_once() -> None:
    """Nothing seen of a kind (nor of another kind's runs): the first poll goes out at once."""
    runs = settled(1.0)
    assert RunTimes().plan(KIND) == (0.0, 0.0)
    assert runs.plan(("veo", "1080p", 8)) == (0.0, 0.0)


def test_operations_of_a_known_kind_are_first_polled_at_its_shortest_run() -> None:
    """Once a kind is known, its operations are first polled at the shortest run kept, found done
    there teaching nothing; one in PROBE_EVERY is polled a step earlier, then at the shortest."""
    runs = settled(1.0)
    plans = []
    for _ in range(3 * PROBE_EVERY):
        plan = runs.plan(KIND)
        plans.append(plan)
        if plan[0] < plan[1]:
            runs.record(KIND, plan, plan[1], at_first=False)  # the probe found it running
        else:
            runs.record(KIND, plan, plan[0], at_first=True)
    probes = [p for p in plans if p[0] < p[1]]
    assert len(probes) == 3 and probes[0] == pytest.approx((1 - PROBE_STEP, 1.0))
    assert all(p[1] == 1.0 for p in plans)


def test_a_provider_that_got_slower_is_followed_once_a_few_were_found_running() -> None:
    """Runs of 1 s, then of 3 s: each found running at its first poll keeps its longer bound;
    after RUNS_KEPT of them the first poll waits for 3 s (an interval or so past the run)."""
    runs = settled(1.0)
    for _ in range(RUNS_KEPT):
        plan = runs.plan(KIND)
        assert plan[0] <= 1.0
        runs.record(KIND, plan, 3.1, at_first=False)
    assert runs.plan(KIND)[1] == pytest.approx(3.1)


def test_a_provider_that_got_faster_is_followed_by_probes_that_go_further() -> None:
    """Runs of 10 s, then of 1 s: the next probe finds it done a step early, so the next
    operation probes again, four times further each time, until one finds it running; the first
    poll is then within a few steps of the run instead of still at 10 s."""
    runs = settled(10.0)
    firsts = []
    for _ in range(3 * PROBE_EVERY):
        plan = runs.plan(KIND)
        first, shortest = plan
        if first < shortest:
            firsts.append(first)
        if first >= 1.0:
            runs.record(KIND, plan, first, at_first=True)
        else:  # found running at the probe, done at the shortest
            runs.record(KIND, plan, shortest, at_first=False)
    # 10 s -> 9.5 (step 5%) -> 7.6 (20%) -> 3.8 (50%) -> 1.9 -> 0.95: running, 1.9 kept; the
    # next probes start again from the small step, and the shortest closes in on 1 s.
    assert firsts[:5] == pytest.approx([9.5, 7.6, 3.8, 1.9, 0.95])
    assert 1.0 <= runs.plan(KIND)[1] < 1.5


def test_short_runs_among_long_ones_keep_the_first_poll_short() -> None:
    """Runs of 0.3 s and 1.5 s in turn: the short ones, found done at their first poll, keep
    their bounds, so the long ones found running never make every first poll wait 1.5 s."""
    runs = settled(0.3)
    for i in range(8 * RUNS_KEPT):
        plan = runs.plan(KIND)
        if i % 2:  # a short run: done by the first poll (or the probe's second, at the shortest)
            runs.record(KIND, plan, plan[0] if plan[0] >= 0.3 else plan[1],
                        at_first=plan[0] >= 0.3)  # fmt: skip
        else:  # a long run, found running at the first poll and done at 1.5 s
            runs.record(KIND, plan, 1.5, at_first=False)
    assert runs.plan(KIND)[1] == pytest.approx(0.3)


def test_a_spike_of_short_runs_is_forgotten() -> None:
    """A few runs far shorter than usual lower the first poll; the usual runs found running at
    it afterwards keep their bounds, and RUNS_KEPT of them bring it back."""
    runs = settled(1.0)
    runs.record(KIND, runs.plan(KIND), 0.2, at_first=False)
    assert runs.plan(KIND)[1] == pytest.approx(0.2)
    for _ in range(RUNS_KEPT):
        runs.record(KIND, runs.plan(KIND), 1.0, at_first=False)
    assert runs.plan(KIND)[1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("interval", "late", "delay"),
    [
        (0.2, 0.0, 0.2),  # just past the shortest run seen: the interval
        (0.2, 1.2, 0.2),  # six intervals past it still
        (0.2, 2.4, 0.4),  # then growing with the time waited
        (0.2, 7.2, 1.2),
        (10.0, 60.0, 10.0),
        (10.0, 120.0, 20.0),
        (10.0, 600.0, POLL_CAP),  # a long operation: never more than the cap apart
        (60.0, 6000.0, 60.0),  # an interval past the cap stays the interval
    ],
)
def test_polls_back_off_toward_a_cap_for_long_operations(
    interval: float, late: float, delay: float
) -> None:
    """The wait between two polls of one operation, past its expected end: the interval at
    first, then growing, never past POLL_CAP (or the interval, if longer)."""
    assert Tuning(poll_interval=interval).poll_delay(late) == pytest.approx(delay)


def test_ready_says_when_a_turn_would_not_wait() -> None:
    """Unmetered, a turn never waits; capped, the turn after one waits its gap, and past the
    gap it is ready again."""
    p, fake = pacer(6.0)
    assert p.ready()
    turn_times(p, fake, 1)
    assert not p.ready()
    fake.now = 10.0
    assert p.ready()
    unmetered, clock = pacer()
    assert unmetered.ready()
    assert turn_times(unmetered, clock, 3) == [0.0] * 3 and unmetered.ready()


def test_a_pause_ends_at_its_time_or_at_once_when_a_stop_is_asked() -> None:
    """Every poll waits in ``StopFlag.pause``: it sleeps its time (True), ends at once when a
    stop is asked meanwhile or was before (False), and a cancelled pause leaves nothing behind."""
    import time

    from reconciler.shutdown import StopFlag, Stopping

    async def main() -> None:
        flag = StopFlag()
        started = time.monotonic()
        assert await flag.pause(0.05) is True
        assert time.monotonic() - started >= 0.05
        many = [asyncio.ensure_future(flag.pause(30)) for _ in range(20)]
        asyncio.get_running_loop().call_later(0.05, flag.request)
        started = time.monotonic()
        assert await asyncio.gather(*many) == [False] * 20
        assert time.monotonic() - started < 5
        assert await flag.pause(30) is False  # asked before: at once
        with pytest.raises(Stopping):
            await flag.sleep(30)
        other = StopFlag()
        task = asyncio.ensure_future(other.pause(30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not other._pausing and not other.requested

    asyncio.run(main())
