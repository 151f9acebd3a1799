"""The lock as a team's truth: pulls, fresh clones, shared keys, merge conflicts, lost locks.

Two working trees of one asset repo stand in for two people: files are copied between them the
way `git pull` moves them (the lock and the videos, never state/). Each test counts what the
simulator was paid.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import API_KEY, Repo

from reconciler.sim import Simulator

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n"
LOCK = "reconcile.lock"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY, latency=0.1) as server:
        yield server


def clone(repo: Repo, to: Path, *, videos: bool = True) -> Repo:
    """A fresh clone: specs, lock and (optionally) videos, never state/."""
    ignore = ["state"] + ([] if videos else ["videos"])
    shutil.copytree(repo.path, to, ignore=shutil.ignore_patterns(*ignore))
    return Repo(to, repo.sim)


def pull(source: Repo, into: Repo) -> None:
    """What `git pull` brings: the lock and the output folder as the other tree committed them."""
    shutil.copy2(source.path / LOCK, into.path / LOCK)
    shutil.rmtree(into.path / "videos")
    shutil.copytree(source.path / "videos", into.path / "videos")


def test_a_pulled_replace_wins_over_stale_local_state(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """Bob's --replace, pulled by Alice: her next apply keeps Bob's take and the lock, pays
    nothing, and never restores her older video."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    bob = clone(repo, tmp_path / "bob")
    assert bob.apply().returncode == 0  # Bob's fresh clone adopts the lock, free
    assert bob.apply("--replace", "hero").returncode == 0
    assert sim.paid_posts == 2
    bobs_lock = (bob.path / LOCK).read_text()
    pull(bob, repo)
    result = repo.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 2
    assert (repo.path / LOCK).read_text() == bobs_lock
    assert repo.videos() == bob.videos()
    assert repo.run("plan", "--detailed-exitcode").returncode == 0


def test_a_pulled_lock_without_its_video_downloads_it_again(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """A pulled lock whose video did not come along (Git LFS not fetched) is followed by
    downloading the take again from the provider: no POST, and the plan says it is free."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    bob = clone(repo, tmp_path / "bob")
    assert bob.apply("--replace", "hero").returncode == 0
    shutil.copy2(bob.path / LOCK, repo.path / LOCK)  # the lock only
    plan = repo.run("plan")
    assert "download it again from the provider (free)" in plan.stdout
    downloads = sim.downloads
    result = repo.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 2 and sim.downloads > downloads
    assert (repo.path / LOCK).read_text() == (bob.path / LOCK).read_text()


def test_a_fresh_clone_missing_a_locked_file_fetches_it_free(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """An unsmudged LFS pointer in a fresh clone: the video is downloaded again while the
    provider holds it, never regenerated."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    fresh = clone(repo, tmp_path / "fresh")
    (video,) = (fresh.path / "videos").iterdir()
    video.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    plan = fresh.run("plan")
    assert "resume" in plan.stdout and "$" not in plan.stdout.split("Plan:")[0].split("resume")[1]
    result = fresh.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1
    assert fresh.run("verify").returncode == 0


def test_a_locked_file_gone_everywhere_plans_a_labelled_paid_regeneration(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """Past the provider's keeping time, with no file and no cache: the plan pays, and says why
    and how much."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    fresh = clone(repo, tmp_path / "fresh", videos=False)
    old = (datetime.now(UTC) - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lock = fresh.path / LOCK
    lines = [
        f'    generated: "{old}"' if ln.strip().startswith("generated:") else ln
        for ln in lock.read_text().splitlines()
    ]
    lock.write_text("\n".join(lines) + "\n")
    plan = fresh.run("plan")
    assert "regenerate: the video reconcile.lock names is in no file" in plan.stdout
    assert "$0.80" in plan.stdout


def test_specs_with_identical_content_keep_every_lock_entry(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """Two names, one video: a fresh clone's apply keeps both names in the lock, pays nothing,
    and leaves the lock byte-identical."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Same prompt."))
    repo.write("specs/b.yaml", SPEC.format(name="b", prompt="Same prompt."))
    assert repo.apply().returncode == 0
    before = (repo.path / LOCK).read_bytes()
    fresh = clone(repo, tmp_path / "fresh")
    result = fresh.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (fresh.path / LOCK).read_bytes() == before
    assert sim.paid_posts == 1
    assert sorted(fresh.status()) == ["a", "b"]


def test_an_apply_that_changes_nothing_leaves_the_lock_byte_identical(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """A CI run with nothing to do commits nothing: not even generated times move."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    before = (repo.path / LOCK).read_bytes()
    assert repo.apply().returncode == 0
    fresh = clone(repo, tmp_path / "fresh")
    assert fresh.apply().returncode == 0
    assert (repo.path / LOCK).read_bytes() == before == (fresh.path / LOCK).read_bytes()


def test_state_is_ignored_by_git_in_any_asset_repo(repo: Repo, sim: Simulator) -> None:
    """The first run writes state/.gitignore, so `git add -A` never commits the db or cache."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    assert (repo.path / "state" / ".gitignore").read_text().splitlines()[-1] == "*"


def conflicted(ours: str, theirs: str) -> str:
    """Git's rendering of a lock both branches changed: the two spec blocks in conflict."""
    head, _, a_body = ours.partition("specs:\n")
    _, _, b_body = theirs.partition("specs:\n")
    return f"{head}specs:\n<<<<<<< HEAD\n{a_body}=======\n{b_body}>>>>>>> theirs\n"


def test_a_conflicted_lock_is_merged_without_paying(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """Two branches each added a spec: `reconcile lock merge` keeps both entries, checked against
    the files, and a fresh clone then plans no changes."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Branch one."))
    assert repo.apply().returncode == 0
    lock_a = (repo.path / LOCK).read_text()
    other = clone(repo, tmp_path / "other")
    (other.path / "specs" / "a.yaml").unlink()
    other.write("specs/b.yaml", SPEC.format(name="b", prompt="Branch two."))
    assert other.apply().returncode == 0
    lock_b = (other.path / LOCK).read_text()
    shutil.copytree(other.path / "videos", repo.path / "videos", dirs_exist_ok=True)
    repo.write("specs/b.yaml", SPEC.format(name="b", prompt="Branch two."))
    (repo.path / LOCK).write_text(conflicted(lock_a, lock_b))
    refused = repo.run("plan")
    assert refused.returncode == 1 and "reconcile lock merge" in refused.stderr
    merged = repo.run("lock", "merge")
    assert merged.returncode == 0, merged.stderr
    fresh = clone(repo, tmp_path / "fresh")
    assert fresh.run("plan", "--detailed-exitcode").returncode == 0
    assert sim.paid_posts == 2


def test_videos_are_adopted_when_the_lock_is_gone(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """A clone with videos but neither lock nor state: `reconcile adopt` takes them as the
    specs' takes, and the plan has nothing to pay for."""
    repo.write("specs/hero.yaml", SPEC.format(name="hero", prompt="A harbour at dawn."))
    assert repo.apply().returncode == 0
    fresh = clone(repo, tmp_path / "fresh")
    (fresh.path / LOCK).unlink()
    assert "create" in fresh.run("plan").stdout
    adopted = fresh.run("adopt")
    assert adopted.returncode == 0 and "hero: adopted videos/hero." in adopted.stdout
    assert fresh.run("plan", "--detailed-exitcode").returncode == 0
    assert sim.paid_posts == 1
