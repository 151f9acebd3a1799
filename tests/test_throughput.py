"""The apply loop's costs (issue 11): one pool of connections for polls and downloads, polls
skipped while an operation is surely running and spread out for long ones, bytes hashed once on
their way into the cache, and fsyncs only where a power cut could cost money. Real simulator,
real sqlite files."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import API_KEY, SPEC, Repo, png_bytes
from engines import Apply

from reconciler import sim as simmod
from reconciler.client import DOWNLOAD_SLOTS, POLL_SLOTS, VeoClient
from reconciler.config import ApiSettings
from reconciler.errors import TransientError
from reconciler.files import Syncer
from reconciler.landing import PIECE, Landing
from reconciler.lifecycle import Event, Generation, State
from reconciler.objects import ObjectCache
from reconciler.pacing import RUNS_KEPT
from reconciler.sim import Simulator
from reconciler.sqlite_store import SqliteStore

MODEL = "veo-3.1-fast-generate-preview"


def write_specs(repo: Repo, count: int) -> None:
    for i in range(count):
        repo.write(f"specs/s{i}.yaml", SPEC.format(name=f"s{i}", prompt=f"Clip number {i}."))


def test_polls_and_downloads_share_a_few_kept_alive_connections(repo: Repo, sim: Simulator) -> None:
    """20 specs at concurrency 10: one fresh connection per POST (a stale keep-alive connection
    could make a POST look ambiguous), and every poll and download over a pool of a few."""
    write_specs(repo, 20)
    result = repo.apply("--concurrency", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(repo.videos()) == 20 and sim.paid_posts == 20
    assert sim.polls >= 20 and sim.downloads == 20
    assert sim.connections <= 20 + POLL_SLOTS + DOWNLOAD_SLOTS, sim.connections


def test_a_new_spec_costs_four_hops_to_the_state_thread(repo: Repo, sim: Simulator) -> None:
    """Each hop to the state thread costs CPU (a wake of both threads, the GIL handed back and
    forth: 30-100 us). A new spec makes four: the claim, the operation name (each its own commit,
    never merged: DESIGN.md), the operation finished, and its bytes committed, recorded and
    placed together (a small video)."""
    write_specs(repo, 6)
    with Apply(repo, concurrency=3) as run:
        summary = asyncio.run(run.run())
        assert summary.ok and len(summary.written) == 6
        state = run.engine.ctx._thread
        assert state is not None and state.calls == 4 * 6, state.calls
    assert len(repo.videos()) == 6 and sim.paid_posts == 6


def polls_per_operation(sim: Simulator) -> list[int]:
    """How many times each operation was polled, in the order they were POSTed."""
    per_op = Counter(r.path.rsplit("/", 1)[-1] for r in sim.requests if "/operations/" in r.path)
    ops = sorted(sim.operations.values(), key=lambda o: o.created)
    return [per_op[op.id] for op in ops]


def test_later_operations_are_not_polled_while_surely_running(repo: Repo, sim: Simulator) -> None:
    """One at a time, operations of 1 s polled every 0.1 s: the first is polled all along (about
    ten times); the next ones are first polled at the shortest run seen, so a few polls each."""
    sim.set_latency(1.0)
    write_specs(repo, 3)
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    first, *later = polls = polls_per_operation(sim)
    assert first >= 8, polls
    assert all(n <= 5 for n in later), polls
    assert len(repo.videos()) == 3


@pytest.mark.slow  # a 2.5 s spike, then four operations in turn
def test_a_slow_operation_is_forgotten_once_they_are_fast_again(repo: Repo, sim: Simulator) -> None:
    """A spike (the first operation takes 2.5 s), then operations of 0.2 s, one at a time: the
    first polls of later ones start early enough that the fifth is found within 0.8 s of its
    POST (counting every operation found at its first poll as the whole wait, it was 1.3 s)."""
    sim.set_latency(0.2)
    sim.inject("submit", simmod.slow(2.5), times=1)
    write_specs(repo, 5)
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    ops = sorted(sim.operations.values(), key=lambda o: o.created)
    found = []
    for op in ops:
        polls = [r.time for r in sim.requests if r.path.endswith(f"/operations/{op.id}")]
        found.append(max(polls) - op.created)
    assert found[0] >= 2.5, found
    assert found[-1] < 0.8, found
    assert len(repo.videos()) == 5


@pytest.mark.slow  # six operations of 0.4 s in turn
def test_operations_of_a_kind_seen_are_found_done_at_their_first_poll(
    repo: Repo, sim: Simulator
) -> None:
    """One at a time, operations of 0.4 s polled every 0.1 s: the first is polled all along; the
    next ones are first polled at the shortest run seen, where they are done (one or two probe
    a step earlier, then poll at it), and none is found more than an interval late."""
    sim.set_latency(0.4)
    write_specs(repo, 6)
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    first, *later = polls_per_operation(sim)
    assert first >= 4, (first, later)
    assert sum(later) <= len(later) + 2 and later.count(1) >= len(later) - 2, (first, later)
    for op in sim.operations.values():
        polls = [r.time for r in sim.requests if r.path.endswith(f"/operations/{op.id}")]
        assert max(polls) - op.finished_at < 0.1 + 0.15, (op.id, max(polls) - op.finished_at)
    assert len(repo.videos()) == 6


@pytest.mark.slow  # eight operations in turn
def test_runs_from_an_image_are_timed_apart_from_text_runs(repo: Repo, sim: Simulator) -> None:
    """Text runs of 1.2 s, then first-frame runs of 0.3 s, one at a time: the image runs learn
    their own shortest run, so from the second on they are found done within a poll or two of
    their end, not first polled at the text runs' 1.2 s (0.9 s late)."""
    sim.set_latency(1.2)
    sim.inject("submit", simmod.slow(0.3), times=4, prompt_contains="From the frame")
    (repo.path / "assets").mkdir(exist_ok=True)
    (repo.path / "assets" / "frame.png").write_bytes(png_bytes())
    for i in range(4):  # applied in name order: every text run first
        repo.write(f"specs/a{i}.yaml", SPEC.format(name=f"a{i}", prompt=f"Text clip {i}."))
        image = SPEC.format(name=f"b{i}", prompt=f"From the frame {i}.")
        repo.write(f"specs/b{i}.yaml", image + "image: ../assets/frame.png\n")
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    ops = sorted(sim.operations.values(), key=lambda o: o.created)
    late = []
    for op in ops[5:]:  # the image runs after the first of their kind
        found = max(r.time for r in sim.requests if r.path.endswith(f"/operations/{op.id}"))
        late.append(found - op.finished_at)
    assert all(0 <= t < 0.5 for t in late), late
    assert len(repo.videos()) == 8


@pytest.mark.slow  # 25 operations in turn, 22 of them of 0.6 s
def test_a_provider_that_got_slower_is_followed(repo: Repo, sim: Simulator) -> None:
    """Three operations of 0.2 s, then RUNS_KEPT + 2 of 0.6 s, one at a time: the first slow
    ones are found running at their first poll (at the 0.2 s learned) and polled on; once
    RUNS_KEPT were, the first poll waits for 0.6 s, and the last ones are found done there."""
    sim.set_latency(0.6)
    sim.inject("submit", simmod.slow(0.2), times=3)
    write_specs(repo, 3 + RUNS_KEPT + 2)
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    polls = polls_per_operation(sim)
    assert all(n >= 3 for n in polls[3:6]), polls  # 0.2 s, then every 0.1 s up to 0.6 s
    assert sum(polls[-2:]) <= 3, polls  # at most one of the last two is found running
    assert len(repo.videos()) == 3 + RUNS_KEPT + 2


@pytest.mark.slow  # one operation of 3 s
def test_a_long_operation_is_polled_less_and_less_often(repo: Repo, sim: Simulator) -> None:
    """An operation of 3 s polled every 0.05 s: after six intervals the polls spread out
    (Tuning.poll_delay), so it is polled about 20 times rather than 60, and found done within
    the last (growing) wait of its end."""
    sim.set_latency(3.0)
    write_specs(repo, 1)
    result = repo.apply("--poll-interval", "0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    [polls] = polls_per_operation(sim)
    assert 10 <= polls <= 30, polls
    times = sorted(r.time for r in sim.requests if "/operations/" in r.path)
    gaps = [b - a for a, b in pairwise(times)]
    assert max(gaps[:5]) < 0.15 and gaps[-1] > 0.2, gaps  # the interval first, then longer
    [op] = sim.operations.values()
    assert times[-1] - op.finished_at < 0.7
    assert len(repo.videos()) == 1


def test_a_large_video_is_hashed_once_and_lands_whole(tmp_path: Path) -> None:
    """Several pieces through the writer thread: the object is named by the hash of exactly the
    bytes served, trusted without a second read, and its temp file is gone."""
    size = 5 * PIECE + 12345
    with Simulator(api_key=API_KEY, latency=0.0, video_size=size) as sim:
        settings = ApiSettings(sim.base_url, sim.base_url, API_KEY)
        cache = ObjectCache(tmp_path / "objects")

        async def fetch() -> tuple[str, int]:
            client = VeoClient(settings)
            try:
                op = await client.submit(MODEL, {"instances": [{"prompt": "A long take."}]})
                result = await client.poll(MODEL, op)
                assert result.done and result.video_uri
                landing = Landing(cache)
                try:
                    await client.download(result.video_uri, result.file_id, landing.feed)
                    return await landing.finish()
                finally:
                    await landing.close()
            finally:
                await client.aclose()

        sha, got = asyncio.run(fetch())
        served = sim.served_bytes(next(iter(sim.operations.values())).file_id or "")
    cache.syncer.drain()
    assert got == size and sha == hashlib.sha256(served).hexdigest()
    assert cache.path(sha).read_bytes() == served
    assert sha in cache.trusted  # verify() will not read it again in this process
    assert not list((tmp_path / "objects").glob(".incoming.*"))


def test_bytes_that_are_not_a_video_leave_nothing_behind(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects")

    async def land() -> None:
        landing = Landing(cache)
        try:
            for _ in range(3):
                await landing.feed(b"<html>" + b"x" * PIECE)
            await landing.finish()
        finally:
            await landing.close()

    with pytest.raises(TransientError, match="not an MP4"):
        asyncio.run(land())
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]


def test_an_objects_folders_are_made_when_missing_even_mid_run(tmp_path: Path) -> None:
    """begin and commit no longer make their folders every time, only when one is missing: the
    cache, its prefix folder and the output folder, even if deleted after a first object."""
    cache = ObjectCache(tmp_path / "objects")
    video = b"\0\0\0\x18ftypmp42" + b"v" * 100

    def land(body: bytes, spare_in: Path) -> str:
        incoming = cache.begin(spare_in)
        incoming.write(body)
        sha, _size = incoming.commit(defer_sync=True)
        return sha

    first = land(video, tmp_path / "videos" / "a")
    cache.syncer.drain()  # its deferred fsyncs, before its folders go
    shutil.rmtree(tmp_path / "objects")
    shutil.rmtree(tmp_path / "videos")
    second = land(video + b"2", tmp_path / "videos" / "b")
    cache.syncer.drain()
    assert not cache.path(first).exists() and cache.path(second).read_bytes() == video + b"2"
    assert cache.spares[second].parent == tmp_path / "videos" / "b"
    assert cache.spares[second].read_bytes() == video + b"2"


def statements(store: SqliteStore) -> list[str]:
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    return seen


def test_only_the_writes_around_the_post_wait_for_the_disk(tmp_path: Path) -> None:
    """The claim and the operation name are committed with synchronous=FULL (an fsync of the
    WAL: they survive a power cut); an operation finished or a video downloaded with NORMAL
    (they survive the process being killed, and are found again for free after a power cut)."""
    store = SqliteStore(tmp_path / "state.db")
    seed = Generation(spec_key="k", name="a", model=MODEL, resolution="720p", duration=8,
                      state=State.NEW, cost=1.2)  # fmt: skip
    # The mode in effect at each commit: the store switches it only when it changes, so it is
    # followed across transitions (the last switch before this COMMIT, else the one before).
    mode = ["FULL" if store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2 else "NORMAL"]
    seen = statements(store)
    switches: list[int] = []

    def sync_of(event: Event, **kw: object) -> str:
        seen.clear()
        assert store.transition("k", event, **kw) is not None  # type: ignore[arg-type]
        until_commit = seen[: seen.index("COMMIT")]
        for statement in until_commit:
            if statement.startswith("PRAGMA synchronous ="):
                mode[0] = statement.rsplit(" ", 1)[-1]
        switches.append(sum(s.startswith("PRAGMA synchronous") for s in seen))
        assert seen.index("BEGIN IMMEDIATE") > max(
            (i for i, s in enumerate(until_commit) if s.startswith("PRAGMA")), default=-1
        )  # switched before the transaction, never inside it
        return mode[0]

    assert sync_of(Event.SUBMIT, seed=seed).endswith("FULL")
    assert sync_of(Event.ACCEPTED, operation="operations/x").endswith("FULL")
    assert sync_of(Event.FINISHED, video_uri="u", file_id="f") == "NORMAL"
    assert sync_of(Event.DOWNLOADED, sha256="0" * 64, bytes=1) == "NORMAL"
    # Two of a kind in a row switch nothing: the operation name after its claim, the download
    # after the finish (two statements, each a release of the GIL, saved per transaction).
    assert switches[1] == 0 and switches[3] == 0 and switches[2] == 1
    store.close()
    # What was committed is there for the next process (killed or not: no fsync needed for that).
    with closing(sqlite3.connect(tmp_path / "state.db")) as conn:
        state, operation = conn.execute(
            "SELECT state, operation FROM generations WHERE spec_key = 'k'"
        ).fetchone()
    assert (state, operation) == ("materialized", "operations/x")
    reopened = SqliteStore(tmp_path / "state.db")
    assert reopened.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    reopened.close()


@pytest.mark.slow
def test_a_relaxed_commit_survives_sigkill(repo: Repo, sim: Simulator) -> None:
    """SIGKILL right after `finished` was committed without an fsync (synchronous=NORMAL): the
    next process reads it (the WAL is the kernel's once written), downloads without a new POST."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Killed once it finished."))
    killed = repo.apply(env=repo.env(RECONCILE_FAILPOINTS="after_succeeded:1"))
    assert killed.returncode < 0, killed.stderr
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn:
        state, uri = conn.execute("SELECT state, video_uri FROM generations").fetchone()
    assert state == "succeeded" and uri
    result = repo.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1 and len(repo.videos()) == 1


def test_deferred_fsyncs_are_waited_for_and_their_failures_said(tmp_path: Path) -> None:
    """The syncer fsyncs what it was given (a file retired meanwhile is no error), each folder
    once; ``drain`` returns when all are done, and raises what the disk refused."""
    syncer = Syncer()
    kept = tmp_path / "kept"
    kept.mkdir()
    for i in range(5):
        (kept / f"v{i}.mp4").write_bytes(b"x" * 1000)
        syncer.add(kept / f"v{i}.mp4")
    (kept / "v0.mp4").unlink()
    syncer.drain()
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "v.mp4").write_bytes(b"x")
    shutil.rmtree(gone)
    syncer.add(gone / "v.mp4")
    with pytest.raises(OSError):
        syncer.drain()
    syncer.drain()  # said once


def test_a_done_operation_gives_its_place_to_the_next_post(repo: Repo, sim: Simulator) -> None:
    """--concurrency 1: while the first video's download waits out a 429 (1 s), the second spec
    is already POSTed (the first operation is done, no longer in flight at the provider), and
    no two operations ever run at the provider at once."""
    write_specs(repo, 2)
    sim.inject("download", simmod.rate_limited(1.0))
    result = repo.apply("--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    downloads = [r.time for r in sim.requests if r.path.endswith(":download")]
    posts = [r.time for r in sim.requests if r.method == "POST"]
    assert len(posts) == 2 and len(downloads) == 3  # the refused one, then one per video
    assert downloads[0] < posts[1] < downloads[1], (posts, downloads)
    first, second = sorted(sim.operations.values(), key=lambda op: op.created)
    assert second.created >= first.finished_at
