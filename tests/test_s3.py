"""Videos in a bucket: the object cache shared through S3-compatible storage.

A real S3 server on loopback (moto's server mode, a subprocess started here), or a real bucket
named by ``RECONCILE_TEST_S3=s3://bucket/prefix`` with the AWS environment to reach it. Each test
gets a bucket of its own (or, on a real S3, a prefix of its own). Working trees are copied the way
git moves them (specs, lock; never the videos or state/), the CLI runs in this process (conftest's
``Repo.run``) but for the memory test's real processes, and every test counts what the simulator
was asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import API_KEY, Repo
from s3 import LOCK, SPEC, Bucket, clone, locked, ok, requests, shared

from reconciler.sim import Simulator

MIB = 1024 * 1024


# -- what a team sees ----------------------------------------------------------------------------


def test_a_clone_with_the_lock_only_materializes_everything_from_the_bucket(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """A fresh clone with the lock but no videos and no state/ plans a free materialize and
    places every video from the bucket, byte for byte, without one request to the provider."""
    shared(repo, bucket, "hero", "teaser", "outro")
    ok(repo.apply())
    shas = locked(repo)
    assert bucket.shas() == set(shas.values()) and len(shas) == 3
    fresh = clone(repo, tmp_path / "ci-runner")
    before = requests(sim)
    plan = ok(fresh.run("plan"))
    assert "3 to materialize" in plan.stdout and "$0.00" in plan.stdout
    ok(fresh.apply())
    assert requests(sim) == before  # no POST, no poll, no download
    assert fresh.videos() == repo.videos()
    pairs = [(fresh.path / "videos" / n, repo.path / "videos" / n) for n in fresh.videos()]
    assert all(ours.read_bytes() == theirs.read_bytes() for ours, theirs in pairs)
    assert (fresh.path / LOCK).read_text() == (repo.path / LOCK).read_text()
    assert fresh.run("plan", "--detailed-exitcode").returncode == 0
    assert sim.post_requests == 3


def test_a_clone_without_a_key_materializes_from_the_bucket_named_by_the_environment(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """RECONCILE_OBJECTS alone (no reconcile.yaml key) shares the cache; a runner with no API
    key at all still gets every video, and `status` names the store."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    ok(repo.apply(env=repo.env(RECONCILE_OBJECTS=bucket.url)))
    assert bucket.shas() == set(locked(repo).values())
    fresh = clone(repo, tmp_path / "fresh")
    offline = {k: v for k, v in fresh.env(RECONCILE_OBJECTS=bucket.url).items()
               if k not in ("GPTPROTO_API_KEY", "RECONCILE_API_BASE")}  # fmt: skip
    ok(fresh.apply(env=offline))
    assert fresh.videos() == repo.videos()
    status = ok(fresh.run("status", env=offline)).stdout
    assert f"Objects: {bucket.url} (local cache state/objects)" in status
    assert "Objects: local cache state/objects" in ok(fresh.run("status")).stdout


@pytest.mark.slow
def test_a_revert_in_another_clone_is_free(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """Bob's clone never had the first take; a revert (spec and lock, as `git revert` brings
    them) places it from the bucket. Alice, whose local copy was collected, reverts by hand:
    also free. Neither asks the provider anything."""
    shared(repo, bucket)
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    ok(repo.apply())
    first_spec, first_lock = (
        (repo.path / "specs/hero.yaml").read_text(),
        (repo.path / LOCK).read_text(),
    )
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dusk."))
    ok(repo.apply())
    assert len(bucket.shas()) == 2
    bob = clone(repo, tmp_path / "bob")
    before = requests(sim)
    ok(bob.apply())
    (bob.path / "specs/hero.yaml").write_text(first_spec)  # git revert: the spec and its lock
    (bob.path / LOCK).write_text(first_lock)
    assert "1 to materialize" in ok(bob.run("plan")).stdout
    ok(bob.apply())
    assert bob.run("plan", "--detailed-exitcode").returncode == 0
    assert (bob.path / LOCK).read_text() == first_lock
    ok(repo.run("gc"))  # Alice's local copy of the first take goes
    (repo.path / "specs/hero.yaml").write_text(first_spec)
    assert "restore from cache" in ok(repo.run("plan")).stdout
    ok(repo.apply())
    assert repo.videos() == bob.videos()
    assert requests(sim) == before
    assert sim.paid_posts == 2


@pytest.mark.slow
def test_uploads_are_create_only_and_a_corrupt_shared_object_is_never_placed(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """Other bytes under a video's key are never overwritten and never placed: the clone says
    what was refused, then downloads the video again from the provider (free), and once the
    bad object is deleted the right bytes are shared."""
    shared(repo, bucket, "hero")
    ok(repo.apply())
    (sha,) = locked(repo).values()
    bad = b"\x00\x00\x00\x18ftypisom" + b"not the video" * 100
    bucket.put(bucket.key(sha), bad)
    ok(repo.apply())  # Alice has the bytes: nothing is uploaded over the object
    assert bucket.get(bucket.key(sha)) == bad
    bob = clone(repo, tmp_path / "bob")
    refused = bob.apply()
    assert refused.returncode == 1
    assert "holds other bytes than its name says: refused" in refused.stdout + refused.stderr
    assert bob.videos() == []
    posts, downloads = sim.post_requests, sim.downloads
    again = ok(bob.apply())
    assert sim.post_requests == posts and sim.downloads == downloads + 1
    assert bob.videos() == repo.videos()
    assert "never overwritten: delete it" in again.stderr
    assert bucket.get(bucket.key(sha)) == bad
    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.key(sha))
    ok(bob.apply())  # nothing to do, and what the bucket lacks is shared
    assert hashlib.sha256(bucket.get(bucket.key(sha))).hexdigest() == sha


@pytest.mark.parametrize("size", [100_000, 20 * MIB], ids=["one-put", "multipart"])
def test_a_write_over_another_body_is_refused_by_the_server(
    bucket: Bucket, tmp_path: Path, size: int
) -> None:
    """The upload itself is create-only (If-None-Match: *), for one PUT and for a multipart
    upload alike: a key that is taken keeps its body, and "already there" is success."""
    from reconciler.s3objects import S3Objects, StoreError

    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "object"
    path.write_bytes(data)
    bucket.put(bucket.key(sha), b"someone else's bytes")
    store = S3Objects(bucket.url, client=bucket.client)
    assert store.write(sha, path) is False
    assert bucket.get(bucket.key(sha)) == b"someone else's bytes"
    assert bucket.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.key(sha))
    assert store.write(sha, path) is True
    assert bucket.get(bucket.key(sha)) == data
    path.write_bytes(data[:-1] + b"!")  # a local copy that no longer matches its name
    other = S3Objects(f"s3://{bucket.name}/elsewhere", client=bucket.client)
    with pytest.raises(StoreError, match="no longer match its name"):
        other.write(sha, path)
    assert not bucket.client.list_objects_v2(Bucket=bucket.name, Prefix="elsewhere/").get(
        "Contents"
    )


def test_many_questions_cost_a_listing_per_prefix_once(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand "is it there?" questions are answered by listing their two-hex prefixes, once
    per process; a negative answer is asked again only after its time is up."""
    from reconciler import s3objects

    sent: list[str] = []
    bucket.client.meta.events.register(
        "before-send.s3", lambda **kw: sent.append(kw["request"].url)
    )
    shas = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(1000)]
    here = shas[:3]
    for sha in here:
        bucket.put(bucket.key(sha), b"x")
    store = s3objects.S3Objects(bucket.url, client=bucket.client)
    sent.clear()
    assert set(store.etags(shas)) == set(here)
    assert len(sent) <= len({s[:2] for s in shas}) <= 256
    sent.clear()
    assert set(store.etags(shas)) == set(here) and store.etag(shas[500]) is None
    assert sent == []
    monkeypatch.setattr(s3objects, "NEGATIVE_TTL", 0.0)
    assert store.etag(shas[500]) is None and len(sent) == 1  # asked again
    assert store.etag(here[0]) is not None and len(sent) == 1  # a positive answer holds


def peak_rss_mb(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """The peak RSS (VmHWM) of one `reconcile` process, read until it exits."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    return peak / 1024


def up_and_down(bucket: Bucket, tmp_path: Path, size: int) -> tuple[float, float]:
    """Peak RSS (MiB) of an apply that uploads a video of ``size`` bytes, and of a fresh clone's
    apply that pulls it; the video goes up in parts and the clone asks the provider nothing."""
    with Simulator(api_key=API_KEY, latency=0.1, video_size=size) as sim:
        repo = Repo(tmp_path / f"alice-{size}", sim)
        repo.write("reconcile.yaml", f"objects: {bucket.url}\n")
        repo.write("specs/big.yaml", SPEC.format(name="big", prompt=f"A pan, {size} bytes."))
        cli = [sys.executable, "-m", "reconciler"]
        up = peak_rss_mb([*cli, "apply", "--yes", "--poll-interval", "0.1"], repo.path, repo.env())
        (sha,) = locked(repo).values()
        head = bucket.client.head_object(Bucket=bucket.name, Key=bucket.key(sha))
        assert head["ContentLength"] == size
        if size > 8 * MIB:
            assert re.search(r"-\d+\"?$", head["ETag"]), head["ETag"]  # a multipart upload's
        fresh = clone(repo, tmp_path / f"fresh-{size}")
        before = requests(sim)
        down = peak_rss_mb([*cli, "apply", "--yes"], fresh.path, fresh.env())
        assert requests(sim) == before
        assert next((fresh.path / "videos").iterdir()).stat().st_size == size
    return up, down


@pytest.mark.slow
def test_a_large_video_goes_up_in_parts_and_comes_back_with_flat_memory(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A 64 MiB video is uploaded in parts and pulled by a fresh clone, and neither process
    needs more memory for it than for a 1 MiB one: nothing holds the whole video."""
    small = up_and_down(bucket, tmp_path, 1 * MIB)
    large = up_and_down(bucket, tmp_path, 64 * MIB)
    assert large[0] - small[0] < 16, (small, large)
    assert large[1] - small[1] < 16, (small, large)


def test_gc_leaves_the_bucket_alone_unless_asked_and_keeps_what_this_tree_needs(
    repo: Repo, sim: Simulator, bucket: Bucket
) -> None:
    """`gc` never touches the bucket; `gc --remote --dry-run` lists the shared objects nothing
    here needs and deletes nothing; `gc --remote` deletes exactly those, and never a key that
    is not named like an object."""
    shared(repo, bucket, "hero")
    ok(repo.apply())
    (old,) = locked(repo).values()
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="Another take entirely."))
    ok(repo.apply())
    (new,) = locked(repo).values()
    bucket.put(f"{bucket.prefix}/README.txt", b"not an object")
    assert bucket.shas() >= {old, new}
    local = ok(repo.run("gc"))
    assert "1 cached object(s), freed" in local.stdout
    assert bucket.shas() >= {old, new}
    dry = ok(repo.run("gc", "--remote", "--dry-run"))
    assert f"would delete {bucket.url}/{old[:2]}/{old[2:]}" in dry.stdout
    assert new[2:] not in dry.stdout and "1 shared object(s), would free" in dry.stdout
    assert bucket.shas() >= {old, new}
    ok(repo.run("gc", "--remote"))
    assert set(bucket.objects()) == {bucket.key(new), f"{bucket.prefix}/README.txt"}
    assert "other clones" in ok(repo.run("gc", "--help")).stdout.lower()


def test_the_api_key_is_nowhere_in_the_bucket(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """After uploads and a fresh clone's pulls, no key, body or metadata in the bucket holds the
    API key."""
    shared(repo, bucket, "hero", "teaser")
    ok(repo.apply())
    ok(clone(repo, tmp_path / "fresh").apply())
    keys = bucket.objects()
    assert len(keys) == 2
    for key in keys:
        assert API_KEY not in key
        assert API_KEY.encode() not in bucket.get(key)
        head = bucket.client.head_object(Bucket=bucket.name, Key=key)
        assert API_KEY not in repr(head), key


def test_an_unreachable_store_never_fails_an_upload_run_and_the_next_run_shares(
    repo: Repo, sim: Simulator, bucket: Bucket
) -> None:
    """With the store down, apply still converges (the bytes stay local) and says so once;
    the next apply with the store back uploads what it could not."""
    shared(repo, bucket, "hero", "teaser")
    down = repo.env(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    result = ok(repo.apply(env=down))
    assert result.stderr.count("the next apply uploads it") == 1, result.stderr
    assert bucket.shas() == set()
    ok(repo.apply())
    assert bucket.shas() == set(locked(repo).values())


def test_a_missing_bucket_stops_the_plan_instead_of_offering_to_pay(
    repo: Repo, sim: Simulator, bucket: Bucket, tmp_path: Path
) -> None:
    """A clone that cannot see the shared store is told so; it never plans to pay again for
    videos the lock names."""
    shared(repo, bucket, "hero")
    ok(repo.apply())
    fresh = clone(repo, tmp_path / "fresh")
    fresh.write("reconcile.yaml", f"objects: s3://{bucket.name}-missing/videos\n")
    plan = fresh.run("plan")
    assert plan.returncode == 1 and "no such bucket" in plan.stderr, plan.stdout + plan.stderr
    assert "create" not in plan.stdout and sim.post_requests == 1


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://user:password@bucket/prefix", "must be an s3://BUCKET[/PREFIX] URL"),
        ("s3://", "must be an s3://BUCKET[/PREFIX] URL"),
        ("s3://AKIA:secret@bucket/prefix", "the endpoint and credentials come from the AWS"),
        ("s3://bucket:9000/prefix", "the endpoint and credentials come from the AWS"),
    ],
)
def test_a_bad_objects_url_is_refused_in_the_yaml_and_the_environment(
    offline_repo: Repo, value: str, message: str
) -> None:
    """objects: takes only s3://bucket[/prefix]; never an endpoint or credentials."""
    offline_repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour."))
    offline_repo.write("reconcile.yaml", f"objects: '{value}'\n")
    result = offline_repo.run("validate")
    assert result.returncode == 1 and "reconcile.yaml:1: objects:" in result.stderr
    assert (
        message in result.stderr
        and "password" not in result.stderr
        and "secret" not in result.stderr
    )
    offline_repo.write("reconcile.yaml", "objects: s3://fine/prefix\n")
    result = offline_repo.run("status", env=offline_repo.env(RECONCILE_OBJECTS=value))
    assert result.returncode == 1 and "RECONCILE_OBJECTS" in result.stderr
    assert message in result.stderr


def test_the_objects_url_is_kept_canonical() -> None:
    """Slashes around the prefix do not change where objects go."""
    from reconciler.config import objects_url

    assert objects_url("s3://bucket//team/videos/") == "s3://bucket/team/videos"
    assert objects_url("s3://bucket") == "s3://bucket"
