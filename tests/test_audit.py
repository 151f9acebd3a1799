"""`reconcile verify` and `reconcile gc` on a real repo after real applies."""

from __future__ import annotations

from conftest import Repo

from reconciler.mp4 import make_mp4

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n{extra}"


def test_verify_checks_hashes_and_containers(repo: Repo) -> None:
    """verify passes after apply, names a swapped video's wrong size and hash, and apply repairs it."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A kite.", extra=""))
    repo.write("specs/b.yaml", SPEC.format(name="b", prompt="A boat.", extra='aspectRatio: "9:16"\n'
                                           "durationSeconds: 4\n"))  # fmt: skip
    assert repo.apply().returncode == 0
    ok = repo.run("verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 outputs verified." in ok.stdout

    victim = next(p for p in (repo.path / "videos").iterdir() if p.name.startswith("a."))
    victim.write_bytes(make_mp4(duration_s=8, width=720, height=1280, seed=b"x"))
    bad = repo.run("verify")
    assert bad.returncode == 1
    assert "BAD a:" in bad.stdout and "bytes differ" in bad.stdout
    assert "720x1280, expected 1280x720" in bad.stdout
    assert "Traceback" not in bad.stderr
    assert repo.apply().returncode == 0
    assert repo.run("verify").returncode == 0
    assert repo.sim is not None and repo.sim.post_requests == 2


def test_gc_drops_only_unneeded_objects(repo: Repo) -> None:
    """After an edit the superseded video is garbage; gc --dry-run lists it, gc deletes it, and a
    revert then downloads it again by its operation instead of paying."""
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A kite.", extra=""))
    assert repo.apply().returncode == 0
    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A red kite.", extra=""))
    assert repo.apply().returncode == 0
    objects = repo.path / "state" / "objects"
    assert len(list(objects.glob("*/*"))) == 2

    dry = repo.run("gc", "--dry-run")
    assert (
        dry.returncode == 0 and "would delete" in dry.stdout and "1 cached object(s)" in dry.stdout
    )
    assert len(list(objects.glob("*/*"))) == 2
    done = repo.run("gc")
    assert done.returncode == 0 and "deleted" in done.stdout
    assert len(list(objects.glob("*/*"))) == 1
    assert repo.run("verify").returncode == 0

    repo.write("specs/a.yaml", SPEC.format(name="a", prompt="A kite.", extra=""))
    assert repo.apply().returncode == 0
    assert repo.sim is not None and repo.sim.post_requests == 2
    assert repo.run("gc", "--dry-run").stdout.strip().endswith("would free 49,152 bytes.")
