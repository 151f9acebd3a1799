"""Several runs on one state db: racing applies (and an apply racing the daemon) never
double-submit, readers never fail. Each race runs twice: as real processes (``slow``) and as
engines in one asyncio loop (``engines.py``), which race through the same sqlite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time

import pytest
from conftest import Repo
from engines import Apply, Recorder, api, race, read_status_and_plan, tuning, until

from reconciler.daemon import Daemon, DaemonSettings
from reconciler.engine import Engine, Summary
from reconciler.errors import StateError
from reconciler.lifecycle import ActionKind
from reconciler.money import run_limit
from reconciler.sim import op_error
from reconciler.workspace import Workspace

N_SPECS = 24


def write_many(repo: Repo) -> dict[str, str]:
    prompts = {}
    for i in range(N_SPECS):
        name = f"clip-{i:02d}"
        prompts[name] = f"Race test clip number {i:02d}, a paper boat on a pond."
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompts[name]}\n")  # fmt: skip
    return prompts


def start_apply(repo: Repo, *extra: str) -> subprocess.Popen[str]:
    return repo.spawn_apply("--concurrency", "8", *extra)


@pytest.mark.slow
def test_three_racing_applies_pay_once_and_readers_keep_working(repo: Repo) -> None:
    """Three applies started together on 24 specs: 24 paid POSTs in all; status and plan never fail."""
    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompts = write_many(repo)
    procs = [start_apply(repo) for _ in range(3)]
    reads = 0
    while any(p.poll() is None for p in procs):
        status = repo.run("status", "--json")
        assert status.returncode == 0, status.stderr
        assert "locked" not in status.stderr
        json.loads(status.stdout)
        plan = repo.run("plan", "--json")
        assert plan.returncode == 0, plan.stderr
        reads += 1
    assert reads >= 1
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == N_SPECS
    for prompt in prompts.values():
        assert repo.sim.posts_for(prompt) == 1
    rows = repo.status()
    assert len(rows) == N_SPECS and {r["state"] for r in rows.values()} == {"materialized"}
    assert len(repo.videos()) == N_SPECS
    assert repo.run("plan", "--detailed-exitcode").returncode == 0


def test_three_racing_engines_pay_once_and_readers_keep_working(repo: Repo) -> None:
    """Three applies in one loop on 24 specs: 24 paid POSTs in all; status and plan, read on a
    thread all the while, never fail."""
    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompts = write_many(repo)

    async def main(runs: list[Apply]) -> tuple[list[Summary], int]:
        racing = asyncio.ensure_future(race(*runs))
        reads = 0
        while not racing.done():
            await asyncio.to_thread(read_status_and_plan, repo)
            reads += 1
        return await racing, reads

    with Apply(repo, concurrency=8) as a, Apply(repo, concurrency=8) as b, \
            Apply(repo, concurrency=8) as c:  # fmt: skip
        summaries, reads = asyncio.run(main([a, b, c]))
    assert reads >= 1
    for summary in summaries:
        assert summary.ok, summary
    assert repo.sim.paid_posts == N_SPECS
    for prompt in prompts.values():
        assert repo.sim.posts_for(prompt) == 1
    rows = repo.status()
    assert len(rows) == N_SPECS and {r["state"] for r in rows.values()} == {"materialized"}
    assert len(repo.videos()) == N_SPECS
    assert repo.run("plan", "--detailed-exitcode").returncode == 0


@pytest.mark.slow
def test_late_apply_follows_running_operations(repo: Repo) -> None:
    """An apply started while another's operations run polls them instead of submitting again."""
    assert repo.sim is not None
    repo.sim.set_latency(2.0)
    write_many(repo)
    first = start_apply(repo)
    repo.wait_for_posts(N_SPECS)
    second = start_apply(repo)
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == N_SPECS


def test_late_engine_follows_running_operations(repo: Repo) -> None:
    """An apply planned while another's operations run polls them instead of submitting again."""
    assert repo.sim is not None
    repo.sim.set_latency(1.0)  # a run planned in-process needs no start-up time to be late
    write_many(repo)

    async def main(first: Apply) -> list[Summary]:
        running = asyncio.ensure_future(first.run())
        try:
            await until(lambda: repo.sim is not None and repo.sim.paid_posts >= N_SPECS)
            with await asyncio.to_thread(Apply, repo, concurrency=8) as second:
                assert second.plan.paid == []
                assert ActionKind.RESUME in {a.kind for a in second.plan.actions}
                return [await running, await second.run()]
        finally:
            running.cancel()

    with Apply(repo, concurrency=8) as first:
        summaries = asyncio.run(main(first))
    for summary in summaries:
        assert summary.ok, summary
    assert repo.sim.paid_posts == N_SPECS


@pytest.mark.slow
def test_shared_key_and_racing_processes_never_rewind_a_resubmission(repo: Repo) -> None:
    """A failed operation is resubmitted once, even when two names share its key and two
    processes poll it: a late poll of the old operation must not rewind the new one."""
    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompt = "Shared key clip, a lantern on a quiet river."
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompt}\n")  # fmt: skip
    repo.sim.inject("submit", op_error(), times=1)
    procs = [start_apply(repo) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == 2  # the failed operation (not billed) and its one resubmission
    rows = repo.status()
    assert rows["a"]["sha256"] == rows["b"]["sha256"]
    assert rows["a"]["operation"] == rows["b"]["operation"]


def test_shared_key_and_racing_engines_never_rewind_a_resubmission(repo: Repo) -> None:
    """In one loop too: a failed operation is resubmitted once, even when two names share its key
    and two runs poll it."""
    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompt = "Shared key clip, a lantern on a quiet river."
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompt}\n")  # fmt: skip
    repo.sim.inject("submit", op_error(), times=1)
    with Apply(repo, concurrency=8) as one, Apply(repo, concurrency=8) as two:
        summaries = asyncio.run(race(one, two))
    for summary in summaries:
        assert summary.ok, summary
    assert repo.sim.paid_posts == 2  # the failed operation (not billed) and its one resubmission
    rows = repo.status()
    assert rows["a"]["sha256"] == rows["b"]["sha256"]
    assert rows["a"]["operation"] == rows["b"]["operation"]


def test_apply_racing_a_daemon_in_the_same_loop_pays_once(repo: Repo) -> None:
    """The daemon and an apply on the same specs and state db, in one loop (test_watch.py races
    the daemon's process): each spec is paid once."""
    assert repo.sim is not None
    repo.sim.set_latency(1.0)
    names = {f"r{i}" for i in range(8)}

    async def main() -> Summary:
        events = Recorder()
        ws = Workspace(repo.path)
        try:
            engine = Engine(ws, api=api(repo), tuning=tuning(repo), reporter=events)
            engine.ctx.run_limit = run_limit(None, ws.config.budget_per_run)
            # settle=0: the daemon pays as soon as it plans, so the two really race.
            settings = DaemonSettings(resync=60, settle=0)
            daemon = asyncio.ensure_future(Daemon(engine, settings).run())
            await until(lambda: any("reconciled (start)" in line for line in events.lines))
            for i in range(8):
                repo.write(f"specs/r{i}.yaml", f"name: r{i}\nmodel: veo-3.1-fast-generate-preview\n"
                                               f"prompt: Race clip {i}.\n")  # fmt: skip
            # Planned while the loop is held, so before the daemon can react: both plan to pay
            # for all eight, and the apply claims only after the daemon has started its tasks.
            with Apply(repo) as run:
                assert len(run.plan.paid) == 8
                await until(lambda: any("8 started" in line for line in events.lines))
                summary = await run.run()
            await until(lambda: {v.split(".")[0] for v in repo.videos()} == names)
            engine.stop.request()
            assert await daemon == 0
            return summary
        finally:
            ws.close()

    summary = asyncio.run(main())
    assert summary.ok, summary
    rows = repo.status()
    assert set(rows) == names and {r["state"] for r in rows.values()} == {"materialized"}
    assert repo.sim.paid_posts == 8
    for i in range(8):
        assert repo.sim.posts_for(f"Race clip {i}.") == 1


def test_replace_on_names_sharing_a_key_pays_once(repo: Repo) -> None:
    """--replace of two names with one key makes one new generation, as the plan's cost says."""
    assert repo.sim is not None
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          "prompt: Same clip under two names.\n")  # fmt: skip
    assert repo.apply().returncode == 0
    assert repo.sim.paid_posts == 1
    plan = json.loads(repo.run("plan", "--json", "--replace", "a", "--replace", "b").stdout)
    assert plan["cost_usd"] == 0.8
    result = repo.apply("--replace", "a", "--replace", "b", "--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.sim.paid_posts == 2


def test_a_state_call_runs_even_when_its_task_is_cancelled_while_queued(repo: Repo) -> None:
    """A stop's grace ending cancels the run's tasks. A state call queued behind another on the
    run's one state thread (the operation name a POST was just answered with) still runs to its
    end before the cancel reaches its task: dropped, the spec would be left unknown."""
    ws = Workspace(repo.path)
    ctx = Engine(ws).ctx
    ran: list[str] = []

    async def main() -> None:
        busy = asyncio.ensure_future(ctx.db(time.sleep, 0.3))  # a commit ahead in the queue

        async def accepted() -> None:
            await asyncio.sleep(0.01)
            await ctx.db(ran.append, "operations/123")

        task = asyncio.ensure_future(accepted())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()  # a second cancel while it waits for the call is absorbed too
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ran == ["operations/123"]  # before the cancel was let through
        await busy

    try:
        asyncio.run(main())
    finally:
        ws.close()
    assert ran == ["operations/123"]


def test_state_calls_run_in_order_and_hand_back_results_and_errors(repo: Repo) -> None:
    """The state thread runs calls in the order they were made, one at a time, and hands each
    caller its result or its exception (any: a StateError, a sqlite error, a KeyboardInterrupt)."""
    ws = Workspace(repo.path)
    ctx = Engine(ws).ctx
    order: list[int] = []

    def step(i: int) -> int:
        order.append(i)
        time.sleep(0.001 * (i % 3))
        return i * i

    def fails(exc: BaseException) -> None:
        raise exc

    async def main() -> None:
        order.clear()
        squares = await asyncio.gather(*(ctx.db(step, i) for i in range(200)))
        assert squares == [i * i for i in range(200)] and order == list(range(200))
        for exc in (StateError("db gone"), sqlite3.OperationalError("locked"), KeyboardInterrupt()):
            with pytest.raises(type(exc)):
                await ctx.db(fails, exc)
        assert await ctx.db(step, 7) == 49  # the thread goes on after each

    try:
        asyncio.run(main())
        asyncio.run(main())  # a second loop (a second apply of the daemon) uses the same thread
    finally:
        ws.close()
    state = ctx._thread
    assert state is not None
    state.stop()  # as at exit: a call made after it is refused, never left waiting forever
    with pytest.raises(RuntimeError, match="state thread has stopped"):
        asyncio.run(ctx.db(step, 1))
