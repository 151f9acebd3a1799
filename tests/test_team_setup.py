"""The team setup end to end: state on PostgreSQL and videos in a bucket, together.

Each working tree is a clone the way git makes one (specs, reconcile.yaml and the lock; never
``state/`` nor ``videos/``), and every clone's reconcile.yaml names the same database and bucket,
as a committed team setup does. What the README promises a team is checked here against the real
servers the suite starts (PostgreSQL from Debian's binaries, moto's S3 server), counting what the
simulator was asked: two clones racing pay once; a clone killed mid-generation is finished by a
fresh one without a new POST; a clone with the lock alone materializes everything with no call to
the provider; the API key is in no column of the database and no object of the bucket.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import API_KEY, Repo, assert_key_nowhere
from pg import db_rows, text_columns_holding, wait_running
from s3 import LOCK, SPEC, Bucket, clone, locked, ok, requests

from reconciler.sim import Simulator


def team_repo(repo: Repo, pg_url: str, bucket: Bucket, count: int) -> Repo:
    """The asset repo as committed: shared state and objects in reconcile.yaml, ``count`` specs."""
    repo.write("reconcile.yaml", f"state: {pg_url}\nobjects: {bucket.url}\n")
    for i in range(count):
        repo.write(f"specs/s{i}.yaml", SPEC.format(name=f"s{i}", prompt=f"Team clip {i}."))
    return repo


def states(repo: Repo) -> set[str]:
    result = ok(repo.run("status", "--json"))
    return {row["state"] for row in json.loads(result.stdout)}


def assert_key_in_no_shared_place(pg_url: str, bucket: Bucket) -> None:
    assert text_columns_holding(pg_url, API_KEY) == []
    keys = bucket.objects()
    assert keys, "an empty bucket would prove nothing"
    for key in keys:
        assert API_KEY not in key
        assert API_KEY.encode() not in bucket.get(key)
        assert API_KEY not in repr(bucket.client.head_object(Bucket=bucket.name, Key=key))


@pytest.mark.slow
def test_two_clones_racing_pay_once_and_a_third_needs_no_provider_call(
    repo: Repo, sim: Simulator, pg_url: str, bucket: Bucket, tmp_path: Path
) -> None:
    """Two clones apply the same commit at once: one POST per spec in all, both materialized with
    the same lock, every video in the bucket once. A third clone with that lock and no videos
    materializes everything without asking the provider anything."""
    count = 6
    team_repo(repo, pg_url, bucket, count)
    other = clone(repo, tmp_path / "runner-b")
    procs = [repo.spawn_apply(), other.spawn_apply()]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    assert sim.paid_posts == count
    for each in (repo, other):
        assert states(each) == {"materialized"}
        assert len(each.videos()) == count
    assert (repo.path / LOCK).read_text() == (other.path / LOCK).read_text()
    assert bucket.shas() == set(locked(repo).values()) and len(bucket.shas()) == count
    assert db_rows(pg_url, "SELECT count(*) FROM reconciler.attempts WHERE outcome = 'submit'") == [
        (count,)
    ]

    third = clone(repo, tmp_path / "runner-c")
    before = requests(sim)
    plan = ok(third.run("plan"))
    assert f"{count} to materialize" in plan.stdout and "$0.00" in plan.stdout
    ok(third.apply())
    assert requests(sim) == before  # no POST, no poll, no download
    assert third.videos() == repo.videos()
    assert third.run("plan", "--detailed-exitcode").returncode == 0
    assert_key_in_no_shared_place(pg_url, bucket)
    for each in (repo, other, third):
        assert_key_nowhere(each, [])


@pytest.mark.slow
def test_a_clone_killed_mid_generation_is_finished_by_a_fresh_clone_without_a_new_post(
    repo: Repo, sim: Simulator, pg_url: str, bucket: Bucket, tmp_path: Path
) -> None:
    """SIGKILL one clone's apply once its operations are recorded in the shared state; a fresh
    clone (no state/, no videos, no lock) polls and downloads them: no new POST. The videos it
    downloaded reach the bucket, so the killed clone catches up with no provider call at all."""
    sim.set_latency(3.0)
    count = 3
    team_repo(repo, pg_url, bucket, count)
    fresh = clone(repo, tmp_path / "fresh-runner")  # cloned before anything ran: no lock
    proc = repo.spawn_apply()
    try:
        repo.wait_for_posts(count)
        wait_running(pg_url, count)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert sim.downloads == 0

    ok(fresh.apply())
    assert sim.paid_posts == count
    assert states(fresh) == {"materialized"} and len(fresh.videos()) == count
    assert len(bucket.shas()) == count

    before = requests(sim)
    ok(repo.apply())  # the killed clone: the state says done, the bucket has the bytes
    assert requests(sim) == before
    assert repo.videos() == fresh.videos()
    assert (repo.path / LOCK).read_text() == (fresh.path / LOCK).read_text()
    assert_key_in_no_shared_place(pg_url, bucket)


def test_status_names_the_shared_state_and_objects_never_a_password(
    repo: Repo, pg_url: str, bucket: Bucket
) -> None:
    """`status` says where the state and the videos are shared, with no password in either."""
    team_repo(repo, pg_url, bucket, 1)
    # CI puts the whole URL, password included, in RECONCILE_STATE (the server trusts anyone).
    env = repo.env(RECONCILE_STATE=pg_url.replace("://postgres@", "://postgres:hunter2@", 1))
    assert "hunter2" in env["RECONCILE_STATE"]
    result = repo.run("status", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "State: postgresql://" in result.stdout
    assert f"Objects: {bucket.url}" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
