"""`reconcile watch` as a real daemon process, driven by real file writes, against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Repo

# Every test here drives `reconcile watch` as a real daemon process.
pytestmark = pytest.mark.slow

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n"


class Watch:
    """A running `reconcile watch` with its log lines collected on a thread."""

    def __init__(self, repo: Repo, *extra: str) -> None:
        self.repo = repo
        self.proc = repo.spawn("watch", "--poll-interval", "0.1", "--resync", "60", *extra,
                               stdout=subprocess.DEVNULL)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda line: "reconciled (start)" in line)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, match: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            if self.proc.poll() is not None and seen == len(self.lines):
                break
            time.sleep(0.02)
        raise AssertionError("not seen in time; log:\n" + "\n".join(self.lines))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        return self.proc.returncode, time.monotonic() - start


@pytest.fixture
def watch(repo: Repo) -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(*extra: str) -> Watch:
        w = Watch(repo, *extra)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        w._reader.join(timeout=5)
        assert w.proc.stderr is not None
        w.proc.stderr.close()


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def materialized(repo: Repo, name: str) -> bool:
    return any(v.startswith(f"{name}.") for v in repo.videos()) and (
        repo.status().get(name, {}).get("state") == "materialized"
    )


def test_new_spec_then_edit(repo: Repo, watch: Callable[..., Watch]) -> None:
    """Saving a new spec submits and materializes it; an edit replaces its video with one more POST."""
    assert repo.sim is not None
    w = watch()
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A lighthouse at dusk."))
    wait_until(lambda: materialized(repo, "a"))
    first = repo.videos()
    assert repo.sim.paid_posts == 1
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A lighthouse at dawn."))
    wait_until(lambda: repo.sim is not None and repo.sim.paid_posts == 2 and materialized(repo, "a")
               and repo.videos() != first)  # fmt: skip
    assert len(repo.videos()) == 1
    # The lock is rewritten once the pass that placed the video ends, a moment after the file
    # lands: wait for it (reading it at once failed about one run in eight).
    wait_until(lambda: repo.videos()[0] in (repo.path / "reconcile.lock").read_text())
    code, took = w.stop()
    assert code == 0 and took < 2.0


def test_burst_of_saves_makes_one_post(repo: Repo, watch: Callable[..., Watch]) -> None:
    """Twenty saves in a burst, some through temp-file renames as editors do, cost one POST."""
    assert repo.sim is not None
    watch()
    target = repo.path / "specs" / "burst.yaml"
    for i in range(20):
        text = SPEC.format(name="burst", prompt=f"Burst save number {i}.")
        if i % 2:
            tmp = repo.path / "specs" / ".burst.yaml.swp"
            tmp.write_text(text)
            os.replace(tmp, target)
        else:
            target.write_text(text)
        time.sleep(0.01)
    wait_until(lambda: materialized(repo, "burst"))
    time.sleep(0.5)
    assert repo.sim.paid_posts == 1
    assert repo.sim.posts_for("Burst save number 19.") == 1


def test_broken_save_keeps_old_video(repo: Repo, watch: Callable[..., Watch]) -> None:
    """A broken save is reported with file and line; the old video stays and other specs go on."""
    assert repo.sim is not None
    w = watch()
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A quiet harbour."))
    wait_until(lambda: materialized(repo, "a"))
    video = repo.videos()
    repo.write("specs/a.yaml", "name: a\nmodel: [\n")
    w.wait_for(lambda line: "specs/a.yaml:" in line and "keeping its last good version" in line)
    repo.write("specs/b.yaml", SPEC.format(name="b", prompt="A busy market."))
    wait_until(lambda: materialized(repo, "b"))
    assert all(v in repo.videos() for v in video)
    assert repo.sim.paid_posts == 2
    # An empty file (an editor truncating before it writes) is just as broken: nothing is removed.
    (repo.path / "specs/a.yaml").write_text("")
    w.wait_for(lambda line: "holds no spec" in line)
    time.sleep(0.3)
    assert all(v in repo.videos() for v in video)
    # Deleting the file on purpose does remove the video.
    (repo.path / "specs/a.yaml").unlink()
    wait_until(lambda: not any(v.startswith("a.") for v in repo.videos()))


def test_restart_resumes_in_flight_operation(repo: Repo, watch: Callable[..., Watch]) -> None:
    """SIGTERM with an operation in flight exits 0 at once; the next start polls it, no new POST."""
    assert repo.sim is not None
    repo.sim.set_latency(3.0)
    w = watch()
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A slow glacier."))
    wait_until(lambda: repo.status().get("a", {}).get("state") == "running")
    code, took = w.stop()
    assert code == 0 and took < 2.0
    assert any("still running remotely" in line for line in w.lines)
    w2 = watch()
    wait_until(lambda: materialized(repo, "a"))
    assert repo.sim.paid_posts == 1
    status = repo.run("status")
    assert "watch: running" in status.stdout
    w2.stop(signal.SIGINT)
    assert "watch: not running" in repo.run("status").stdout


def test_apply_racing_the_daemon_pays_once(repo: Repo, watch: Callable[..., Watch]) -> None:
    """CI's apply and the daemon on the same specs and state db: each spec is paid once."""
    assert repo.sim is not None
    repo.sim.set_latency(1.0)
    watch()
    for i in range(8):
        repo.write(f"specs/r{i}.yaml", SPEC.format(name=f"r{i}", prompt=f"Race clip {i}."))
    result = repo.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: all(materialized(repo, f"r{i}") for i in range(8)))
    assert repo.sim.paid_posts == 8
    for i in range(8):
        assert repo.sim.posts_for(f"Race clip {i}.") == 1


def test_json_log_format(repo: Repo, watch: Callable[..., Watch]) -> None:
    """--log-format json writes one JSON object per line with time, level, event, name, message."""
    w = watch("--log-format", "json")
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A paper crane."))
    w.wait_for(lambda line: '"materialized"' in line)
    records = [json.loads(line) for line in w.lines]
    assert all(
        {"time", "level", "event", "name", "operation", "message"} <= set(r) for r in records
    )
    assert any(r["event"] == "submitted" and r["name"] == "a" and r["operation"] for r in records)


def test_image_and_config_edits_are_seen(repo: Repo, watch: Callable[..., Watch]) -> None:
    """Editing a referenced image or reconcile.yaml re-plans: each changes the key, so one POST each;
    a broken reconcile.yaml is reported and the last good settings stay; SIGHUP reloads."""
    from conftest import png_bytes

    assert repo.sim is not None
    repo.write_bytes("assets/first.png", png_bytes(1))
    repo.write(
        "specs/a.yaml", SPEC.format(name="a", prompt="A sunrise.") + "image: ../assets/first.png\n"
    )
    w = watch()
    wait_until(lambda: materialized(repo, "a"))
    assert repo.sim.paid_posts == 1
    repo.write_bytes("assets/first.png", png_bytes(2))
    wait_until(lambda: repo.sim is not None and repo.sim.paid_posts == 2)
    repo.write("reconcile.yaml", "defaults:\n  enhancePrompt: false\n")
    wait_until(lambda: repo.sim is not None and repo.sim.paid_posts == 3)
    last_post = [r for r in repo.sim.requests if r.method == "POST"][-1]
    assert last_post.json["parameters"]["enhancePrompt"] is False
    repo.write("reconcile.yaml", "defaults: [\n")
    w.wait_for(lambda line: "reconcile.yaml" in line and "keeping the last good settings" in line)
    w.proc.send_signal(signal.SIGHUP)
    w.wait_for(lambda line: "SIGHUP: reloading" in line)
    wait_until(lambda: len(repo.videos()) == 1 and repo.sim is not None and repo.sim.downloads >= 3)
    time.sleep(0.3)
    assert repo.sim.paid_posts == 3
    repo.write("reconcile.yaml", "defaults:\n  enhancePrompt: false\n")
    wait_until(lambda: materialized(repo, "a"))
    assert repo.sim.paid_posts == 3
    code, _ = w.stop()
    assert code == 0


def test_superseded_edits_waiting_for_a_slot_are_never_sent(
    repo: Repo, watch: Callable[..., Watch]
) -> None:
    """With one slot busy, an edit that is itself replaced before its turn is never paid for."""
    assert repo.sim is not None
    repo.sim.set_latency(2.0)
    watch("--concurrency", "1")
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Version one."))
    wait_until(lambda: repo.sim is not None and repo.sim.paid_posts == 1)
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Version two."))
    time.sleep(0.5)
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Version three."))
    wait_until(lambda: repo.sim is not None and repo.sim.posts_for("Version three.") == 1)
    wait_until(lambda: materialized(repo, "a"))
    assert repo.sim.posts_for("Version two.") == 0
    assert repo.sim.paid_posts == 2


def test_broken_file_at_start_removes_nothing(repo: Repo, watch: Callable[..., Watch]) -> None:
    """Started while a spec file is broken (never seen whole by this daemon), watch holds every
    removal: the video made from it stays until the file is fixed or deleted."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A quiet harbour."))
    assert repo.apply().returncode == 0
    video = repo.videos()
    repo.write("specs/a.yaml", "name: a\nmodel: [\n")
    w = watch()
    w.wait_for(lambda line: "removal held" in line)
    time.sleep(0.3)
    assert repo.videos() == video
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A quiet harbour."))
    w.wait_for(lambda line: "reconciled (changed" in line and "1 specs" in line)
    time.sleep(0.3)
    assert repo.videos() == video
    assert repo.sim is not None and repo.sim.paid_posts == 1


def test_a_refused_account_pauses_submits_for_one_resync_period(
    repo: Repo, watch: Callable[..., Watch]
) -> None:
    """After a 403 (balance) watch pauses submits, and tries again once a resync period has passed
    even while someone keeps saving specs (events must not postpone it forever)."""
    from reconciler.sim import http_error

    assert repo.sim is not None
    repo.sim.inject("submit", http_error(403, "Insufficient balance"), times=1)
    w = watch("--resync", "2")
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A refused account."))
    w.wait_for(lambda line: "insufficient balance" in line and "paused" in line)
    deadline = time.monotonic() + 15
    while repo.sim.paid_posts == 0 and time.monotonic() < deadline:
        repo.write("specs/b.yaml", SPEC.format(name="b", prompt="Another save."))
        time.sleep(0.7)
    assert repo.sim.posts_for("A refused account.") == 1
    wait_until(lambda: materialized(repo, "a"))
