"""Crashes, hangs and leaks at the edges: odd YAML, odd files, echoed keys, file modes, a state
folder deleted under a daemon, claims of other hosts, tiny videos and exit codes.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import API_KEY, Repo, assert_key_nowhere

from reconciler import sim as simmod
from reconciler.sim import Simulator

FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}
SPEC = "name: hero\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour at dawn.\n"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY, latency=0.1) as server:
        yield server


# -- 11. no traceback from any spec or setting ---------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "text", "said"),
    [
        ("specs/a.yaml", SPEC + "negativePrompt: 2023-02-30\n", "'2023-02-30' is not a valid"),
        ("specs/a.yaml", SPEC + "durationSeconds: !!int eight\n", "'eight' is not a valid int"),
        ("specs/a.yaml", SPEC + f"durationSeconds: {'9' * 5000}\n", "is not a valid int"),
        ("reconcile.yaml", "outputDir: .\n", "is the repo itself"),
        ("reconcile.yaml", "outputDir: ./\n", "is the repo itself"),
        ("reconcile.yaml", 'outputDir: "vid\\0eos"\n', "control character"),
        ("reconcile.yaml", "limits:\n  submitPerMinute: .inf\n", "finite number"),
    ],
    ids=["bad-date", "int-tag", "huge-int", "outputdir-dot", "outputdir-dot-slash",
         "outputdir-nul", "infinite-rate"],
)  # fmt: skip
def test_odd_values_are_one_clear_message(
    offline_repo: Repo, rel: str, text: str, said: str
) -> None:
    """Values YAML parses but cannot make, and folders a file system refuses, end in a message
    naming the file and line, exit 1, no traceback, from validate, plan and apply alike."""
    if rel != "specs/a.yaml":
        offline_repo.write("specs/a.yaml", SPEC)
    offline_repo.write(rel, text)
    for command in (["validate"], ["plan"], ["apply", "--yes"]):
        result = offline_repo.run(*command)
        assert result.returncode == 1, command
        assert said in result.stderr and f"{rel}:" in result.stderr
        assert "Traceback" not in result.stderr


# -- 12. only regular files are read ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "folder"])
def test_outputs_that_are_not_regular_files_are_reported_never_opened(
    repo: Repo, sim: Simulator, target: str
) -> None:
    """An output replaced by a symlink to a device, a FIFO or a folder: plan, status and verify
    answer at once (never read /dev/zero forever) and say what is wrong."""
    repo.write("specs/hero.yaml", SPEC)
    assert repo.apply().returncode == 0
    (video,) = (repo.path / "videos").iterdir()
    video.unlink()
    if target == "fifo":
        os.mkfifo(video)
    elif target == "folder":
        video.mkdir()
    else:
        video.symlink_to(target)
    for command in (["plan"], ["status"], ["verify"]):
        result = repo.run(*command, timeout=20)
        assert "Traceback" not in result.stderr, command
    assert "not a regular file" in repo.run("status").stdout
    assert "not a regular file" in repo.run("verify").stdout


def test_a_lock_that_is_a_device_is_refused(offline_repo: Repo) -> None:
    """reconcile.lock pointing at /dev/zero is an error, not a hang."""
    offline_repo.write("specs/a.yaml", SPEC)
    (offline_repo.path / "reconcile.lock").symlink_to("/dev/zero")
    result = offline_repo.run("plan", timeout=20)
    assert result.returncode == 1 and "not a regular file" in result.stderr


# -- 13. the key never leaves, whatever a server echoes -----------------------------------------


def test_a_200_echoing_request_headers_never_carries_the_key(repo: Repo, sim: Simulator) -> None:
    """A gateway answering the POST with 200 and the request's headers (no operation name): the
    key is in no message, row or file."""
    repo.write("specs/hero.yaml", SPEC)
    sim.inject("submit", simmod.echo_headers())
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 1
    assert repo.status()["hero"]["state"] == "unknown"
    assert_key_nowhere(repo, [result, repo.run("status", "--json")])


# -- 14. files get the user's umask ----------------------------------------------------------------


# A real process: objects.py reads the umask once, at import.
@pytest.mark.slow
def test_videos_and_the_lock_are_readable_by_the_team(repo: Repo, sim: Simulator) -> None:
    """Under umask 022 a video and the lock are 0644, as any other tool's files, not 0600."""
    repo.write("specs/hero.yaml", SPEC)
    old = os.umask(0o022)
    try:
        result = repo.run_process(
            "apply", "--yes", "--poll-interval", "0.1", env=repo.env(**FAST_ENV)
        )
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    (video,) = (repo.path / "videos").iterdir()
    for path in (video, repo.path / "reconcile.lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- 15. watch notices a deleted state/ ------------------------------------------------------------


@pytest.mark.slow
def test_watch_stops_when_state_is_deleted_and_nothing_is_paid_twice(
    repo: Repo, sim: Simulator
) -> None:
    """state/ deleted under a running daemon with an operation in flight: the daemon says so and
    stops (exit 1); the next apply resumes the operation instead of paying again."""
    sim.set_latency(3.0)
    repo.write("specs/hero.yaml", SPEC)
    proc = repo.spawn("watch", "--settle", "0", "--poll-interval", "0.2", "--resync", "1",
                      env=repo.env(**FAST_ENV))  # fmt: skip
    try:
        repo.wait_for_posts(1)
        time.sleep(0.5)  # the operation name is committed
        import shutil

        shutil.rmtree(repo.path / "state")
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "deleted or replaced" in err
    sim.set_latency(0.1)
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1


# -- 16. a claim of another host never blocks silently ---------------------------------------------


def test_a_claim_of_another_host_is_waited_on_for_a_bounded_time(
    repo: Repo, sim: Simulator
) -> None:
    """A submitting row claimed by another host (its clock ahead, so never stale by age): apply
    waits a bounded time, names the owner and the way to take it over; resolve --abandoned does."""
    repo.write("specs/hero.yaml", SPEC)
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    db = repo.path / "state" / "reconciler.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "UPDATE generations SET state = 'submitting', owner = 'far-host:42:7', "
            "claimed_at = ?, operation = NULL, version = version + 1",
            [time.time() + 3600],
        )
    started = time.monotonic()
    result = repo.apply("--replace", "hero", env=repo.env(**FAST_ENV, RECONCILE_FOLLOW_LIMIT="1"))
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "far-host:42:7" in result.stdout and "--abandoned" in result.stdout
    assert sim.paid_posts == 1
    abandoned = repo.run("resolve", "hero", "--abandoned")
    assert abandoned.returncode == 0, abandoned.stderr
    assert repo.status()["hero"]["state"] == "unknown"


# -- 17. tiny videos -----------------------------------------------------------------------------------


def test_a_video_smaller_than_the_write_buffer_is_materialized(repo: Repo) -> None:
    """A 2 KiB video is checked from the bytes received, not from an unflushed file."""
    with Simulator(api_key=API_KEY, latency=0.1, video_size=2048) as small:
        tiny = Repo(repo.path, small)
        tiny.write("specs/hero.yaml", SPEC)
        result = tiny.apply(env=tiny.env(**FAST_ENV))
        assert result.returncode == 0, result.stdout + result.stderr
        (video,) = (tiny.path / "videos").iterdir()
        assert video.stat().st_size == 2048 and small.downloads == 1


# -- 18. exit codes ----------------------------------------------------------------------------------


def test_a_usage_error_with_detailed_exitcode_exits_1(offline_repo: Repo) -> None:
    """Exit 2 means "changes" to CI: a mistyped flag must never read as drift."""
    offline_repo.write("specs/a.yaml", SPEC)
    result = offline_repo.run("plan", "--detailed-exitcode", "--no-such-flag")
    assert result.returncode == 1 and "No such option" in result.stderr


def test_a_repo_without_specs_is_an_error_not_no_changes(tmp_path: Path) -> None:
    """--repo pointing at a folder with no specs/ says so instead of "No changes"."""
    empty = Repo(tmp_path / "not-an-asset-repo", None)
    empty.path.mkdir()
    result = empty.run("plan", "--detailed-exitcode")
    assert result.returncode == 1 and "no specs/ folder" in result.stderr
