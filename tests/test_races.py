"""Interleavings found by adversarial review, each pinned: who may pay, who must follow, and that
every run ends with a state the user can act on."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

import pytest
from conftest import Repo
from engines import Apply, race

from reconciler.lifecycle import ActionKind
from reconciler.sim import http_error, stall

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n"
FAST = {"RECONCILE_RETRY_BASE": "0.05"}


def start_apply(repo: Repo, *extra: str) -> subprocess.Popen[str]:
    return repo.spawn_apply(*extra, env=repo.env(**FAST))


def expire_remote_copies(repo: Repo) -> None:
    """Time passes: the provider deletes its files, and the state knows their expiry passed."""
    assert repo.sim is not None
    repo.sim.expire_files()
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn, conn:
        conn.execute("UPDATE generations SET remote_until = '2020-01-01T00:00:00Z'")


def lose_bytes_everywhere(repo: Repo) -> None:
    """A fresh clone adopts the video from the lock, then loses video and cache, and the
    provider's copy expires: the bytes are nowhere."""
    shutil.rmtree(repo.path / "state")
    assert repo.apply().returncode == 0
    for video in (repo.path / "videos").iterdir():
        video.unlink()
    shutil.rmtree(repo.path / "state" / "objects")
    expire_remote_copies(repo)


@pytest.mark.slow
def test_two_applies_planning_a_regeneration_pay_once(repo: Repo) -> None:
    """Both runs plan a paid regeneration of lost bytes; the loser follows the winner's job and
    never claims the row again once it is materialized."""
    assert repo.sim is not None
    repo.sim.set_latency(1.5)
    repo.write("specs/x.yaml", SPEC.format(name="x", prompt="Lost bytes regeneration."))
    assert repo.apply().returncode == 0
    lose_bytes_everywhere(repo)
    procs = [start_apply(repo) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == 2  # the original, and one regeneration
    assert repo.status()["x"]["state"] == "materialized"


def test_two_engines_planning_a_regeneration_pay_once(repo: Repo) -> None:
    """In one loop, both runs plan a paid regeneration of lost bytes before either claims; the
    loser follows the winner's job and never claims the row again once it is materialized."""
    assert repo.sim is not None
    repo.write("specs/x.yaml", SPEC.format(name="x", prompt="Lost bytes regeneration."))
    assert repo.apply().returncode == 0
    lose_bytes_everywhere(repo)
    repo.sim.set_latency(1.5)  # the loser follows a job still running
    with Apply(repo, **FAST) as one, Apply(repo, **FAST) as two:
        for run in (one, two):
            assert [(a.name, a.kind) for a in run.plan.paid] == [("x", ActionKind.CREATE)]
        summaries = asyncio.run(race(one, two))
    for summary in summaries:
        assert summary.ok, summary
    assert repo.sim.paid_posts == 2  # the original, and one regeneration
    assert repo.status()["x"]["state"] == "materialized"


# In-process runs cannot stand in here: a claim's owner is a process, alive as long as the test is.
@pytest.mark.slow
def test_follower_of_a_dead_submitter_ends_with_unknown(repo: Repo) -> None:
    """A run following another process's submit notices when that process dies: it reports the
    spec unknown and exits instead of waiting forever."""
    assert repo.sim is not None
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Dead submitter."))
    repo.sim.inject("submit", stall(30.0))
    owner = start_apply(repo)
    repo.wait_for_posts(1)
    follower = start_apply(repo)
    time.sleep(1.5)
    owner.send_signal(signal.SIGKILL)
    owner.communicate(timeout=10)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 1, out + err
    assert "a: unknown" in out
    assert repo.status()["a"]["state"] == "unknown"
    assert repo.sim.paid_posts == 1


def test_a_passing_404_on_poll_does_not_abandon_a_paid_job(repo: Repo) -> None:
    """One 404 from the query host is retried; the job is downloaded, not given up."""
    assert repo.sim is not None
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Lagging replica."))
    repo.sim.inject("poll", http_error(404, "Requested entity was not found."), times=2)
    result = repo.apply(env=repo.env(RECONCILE_RETRY_BASE="0.05"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.sim.paid_posts == 1 and repo.status()["a"]["state"] == "materialized"


def test_a_lasting_404_on_poll_makes_the_spec_unknown_with_both_ways_out(repo: Repo) -> None:
    """A job the provider keeps denying may still have been billed: unknown (not failed), and the
    message names resolve and --resubmit-unknown."""
    assert repo.sim is not None
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Vanished job."))
    repo.sim.inject("poll", http_error(404, "Requested entity was not found."), times=50)
    result = repo.apply(env=repo.env(RECONCILE_RETRY_BASE="0.01"))
    assert result.returncode == 1
    row = repo.status()["a"]
    assert row["state"] == "unknown"
    assert (
        "reconcile resolve a --operation" in row["error"] and "--resubmit-unknown" in row["error"]
    )
    assert repo.sim.paid_posts == 1


@pytest.mark.slow  # over 4 s of retries and waits: out of the dev loop
def test_lost_bytes_after_the_provider_deleted_them_plan_a_paid_regeneration(repo: Repo) -> None:
    """Cache and output gone: while the provider keeps its copy the video is downloaded again for
    free; once that copy is past its expiry the plan says it will pay, instead of retrying a dead
    download forever, and a 404 meanwhile only leaves the spec resumable."""
    assert repo.sim is not None
    repo.write("specs/x.yaml", SPEC.format(name="x", prompt="Expired and lost."))
    assert repo.apply().returncode == 0
    for video in (repo.path / "videos").iterdir():
        video.unlink()
    shutil.rmtree(repo.path / "state" / "objects")
    repo.sim.expire_files()
    first = repo.apply(env=repo.env(**FAST))
    assert first.returncode == 1 and "the next run tries again" in first.stdout + first.stderr
    assert repo.sim.paid_posts == 1
    expire_remote_copies(repo)
    plan = repo.run("plan")
    assert "create" in plan.stdout and "$0.80" in plan.stdout
    assert repo.apply().returncode == 0
    assert repo.sim.paid_posts == 2


def test_replace_of_one_name_updates_every_name_on_the_key(repo: Repo) -> None:
    """--replace a, where b shares a's key: b follows the new bytes in the same run."""
    assert repo.sim is not None
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", SPEC.format(name=name, prompt="One video, two names."))
    assert repo.apply().returncode == 0
    result = repo.apply("--replace", "a")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = repo.status()
    assert rows["a"]["sha256"] == rows["b"]["sha256"]
    assert {v.split(".")[1] for v in repo.videos()} == {rows["a"]["sha256"][:16]}
    assert repo.run("plan", "--detailed-exitcode").returncode == 0
    assert repo.sim.paid_posts == 2
