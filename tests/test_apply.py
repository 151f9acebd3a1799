"""End to end: specs to verified videos through the real CLI, the simulator and files on disk."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from conftest import API_KEY, Repo, assert_key_nowhere, png_bytes

from reconciler.wire import file_id_of

TEXT = """
name: hero
model: veo-3.1-fast-generate-preview
prompt: >
  Slow drone shot over a misty pine forest at sunrise. Audio: distant birdsong.
"""
SHORT = """
name: short
model: veo-3.1-fast-generate-preview
prompt: A vertical clip of a cat jumping onto a windowsill.
aspectRatio: "9:16"
durationSeconds: 6
"""
IMAGE = """
name: logo
model: veo-3.1-generate-preview
prompt: The logo slowly rotates while light sweeps across it.
image: ../assets/logo.png
"""


def three_specs(repo: Repo) -> None:
    repo.write("specs/hero.yaml", TEXT)
    repo.write("specs/social/short.yml", SHORT)
    repo.write("specs/logo.yaml", IMAGE)
    repo.write_bytes("assets/logo.png", png_bytes(7))


def posts(repo: Repo) -> list[dict]:
    assert repo.sim is not None
    return [
        r.json for r in repo.sim.requests if r.method == "POST" and "predictLongRunning" in r.path
    ]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_three_specs_three_posts_verified_files(repo: Repo) -> None:
    """Three specs (text, 9:16, image) cost exactly three POSTs with the right bodies and verified files."""
    three_specs(repo)
    result = repo.apply()
    assert result.returncode == 0, result.stderr + result.stdout
    assert repo.sim is not None and repo.sim.post_requests == 3 and repo.sim.paid_posts == 3

    bodies = {b["instances"][0]["prompt"][:8]: b for b in posts(repo)}
    hero = bodies["Slow dro"]
    assert hero["parameters"] == {
        "aspectRatio": "16:9", "resolution": "720p", "durationSeconds": 8, "enhancePrompt": True,
    }  # fmt: skip
    assert "image" not in hero["instances"][0]
    short = bodies["A vertic"]
    assert short["parameters"]["aspectRatio"] == "9:16"
    assert short["parameters"]["durationSeconds"] == 6
    assert isinstance(short["parameters"]["durationSeconds"], int)
    logo = bodies["The logo"]["instances"][0]
    assert logo["image"]["mimeType"] == "image/png"
    import base64

    assert base64.b64decode(logo["image"]["bytesBase64Encoded"]) == png_bytes(7)

    status = repo.status()
    assert set(status) == {"hero", "short", "logo"}
    for name, row in status.items():
        assert row["state"] == "materialized", row
        path = repo.path / row["path"]
        digest = sha(path)
        assert row["sha256"] == digest
        assert path.name == f"{name}.{digest[:16]}.mp4"
        assert path.parent == repo.path / "videos"
        op_id = row["operation"].rsplit("operations/", 1)[1]
        file_id = repo.sim.operations[op_id].file_id
        assert file_id is not None
        assert repo.sim.served_bytes(file_id) == path.read_bytes()
    assert len(repo.videos()) == 3

    lock = (repo.path / "reconcile.lock").read_text()
    assert lock.index("  hero:") < lock.index("  logo:") < lock.index("  short:")
    assert status["hero"]["sha256"] in lock


def test_second_apply_is_free_and_plan_is_clean(repo: Repo) -> None:
    """Nothing changed: a second apply POSTs nothing and plan exits 0 with --detailed-exitcode."""
    three_specs(repo)
    assert repo.apply().returncode == 0
    assert repo.sim is not None
    before = repo.sim.post_requests
    lock_before = (repo.path / "reconcile.lock").read_bytes()

    again = repo.apply()
    assert again.returncode == 0, again.stderr
    assert repo.sim.post_requests == before
    assert "No changes" in again.stdout
    assert (repo.path / "reconcile.lock").read_bytes() == lock_before

    plan = repo.run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr

    # Writing the defaults out explicitly changes nothing that is paid for.
    repo.write("specs/hero.yaml", TEXT + 'aspectRatio: "16:9"\nresolution: 720p\ndurationSeconds: 8\n'
               "enhancePrompt: true\n")  # fmt: skip
    plan = repo.run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout


def test_plan_shows_changes_and_cost(repo: Repo) -> None:
    """plan lists each action with its cost and exits 2 with --detailed-exitcode, calling no API."""
    three_specs(repo)
    plan = repo.run("plan", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stderr
    # fast 720p: 8 s x $0.10 + 6 s x $0.10; standard 720p: 8 s x $0.40
    assert "$0.80" in plan.stdout and "$0.60" in plan.stdout and "$3.20" in plan.stdout
    assert "Estimated cost: $4.60 for 22 s of video" in plan.stdout
    data = json.loads(repo.run("plan", "--json").stdout)
    assert data["changes"] is True and data["cost_usd"] == 4.6 and data["video_seconds"] == 22
    assert {a["action"] for a in data["actions"]} == {"create"}
    assert repo.sim is not None and repo.sim.requests == []


def test_prompt_edit_then_revert(repo: Repo) -> None:
    """An edit costs one POST and replaces the file; reverting costs nothing and restores the original."""
    repo.write("specs/hero.yaml", TEXT)
    assert repo.apply().returncode == 0
    original = repo.videos()
    original_bytes = (repo.path / "videos" / original[0]).read_bytes()

    repo.write("specs/hero.yaml", TEXT.replace("sunrise", "sunset"))
    plan = repo.run("plan")
    assert "replace" in plan.stdout
    result = repo.apply()
    assert result.returncode == 0, result.stderr
    assert repo.sim is not None and repo.sim.post_requests == 2
    edited = repo.videos()
    assert len(edited) == 1 and edited != original

    repo.write("specs/hero.yaml", TEXT)
    plan = repo.run("plan", "--json")
    assert [a["action"] for a in json.loads(plan.stdout)["actions"]] == ["materialize"]
    result = repo.apply()
    assert result.returncode == 0, result.stderr
    assert repo.sim.post_requests == 2
    assert repo.videos() == original
    assert (repo.path / "videos" / original[0]).read_bytes() == original_bytes


def test_removed_spec_leaves_videos_but_stays_cached(repo: Repo) -> None:
    """Deleting a spec removes its file; restoring the spec brings it back from the cache for free."""
    repo.write("specs/hero.yaml", TEXT)
    repo.write("specs/other.yaml", TEXT.replace("hero", "other").replace("forest", "lake"))
    assert repo.apply().returncode == 0
    hero_file = next(v for v in repo.videos() if v.startswith("hero."))
    (repo.path / "specs/hero.yaml").unlink()
    plan = repo.run("plan", "--json")
    assert {a["name"]: a["action"] for a in json.loads(plan.stdout)["actions"]}["hero"] == "remove"
    assert repo.apply().returncode == 0
    assert not any(v.startswith("hero.") for v in repo.videos())
    assert "hero" not in (repo.path / "reconcile.lock").read_text()

    repo.write("specs/hero.yaml", TEXT)
    assert repo.apply().returncode == 0
    assert repo.sim is not None and repo.sim.post_requests == 2
    assert hero_file in repo.videos()


def test_max_cost_refuses_before_any_post(repo: Repo) -> None:
    """--max-cost below the plan's cost exits non-zero and nothing is submitted."""
    three_specs(repo)
    result = repo.apply("--max-cost", "4.00")
    assert result.returncode == 1
    assert "more than --max-cost $4.00" in result.stderr
    assert "Traceback" not in result.stderr
    assert repo.sim is not None and repo.sim.post_requests == 0
    assert repo.apply("--max-cost", "4.60").returncode == 0
    assert repo.sim.post_requests == 3


def test_fresh_clone_without_state_plans_no_changes(repo: Repo, tmp_path: Path) -> None:
    """A copy with the lock and videos but no state/ plans nothing and applies with zero POSTs."""
    three_specs(repo)
    assert repo.apply().returncode == 0
    clone = Repo(tmp_path / "clone", repo.sim)
    shutil.copytree(repo.path, clone.path, ignore=shutil.ignore_patterns("state"))
    assert not (clone.path / "state").exists()

    plan = clone.run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    result = clone.apply()
    assert result.returncode == 0, result.stderr
    assert repo.sim is not None and repo.sim.post_requests == 3
    assert {r["state"] for r in clone.status().values()} == {"materialized"}
    assert clone.run("plan", "--detailed-exitcode").returncode == 0

    # A tampered video does not verify: it is not trusted, and plan says so.
    clone2 = Repo(tmp_path / "clone2", repo.sim)
    shutil.copytree(repo.path, clone2.path, ignore=shutil.ignore_patterns("state"))
    victim = next((clone2.path / "videos").iterdir())
    victim.write_bytes(b"not the video")
    assert clone2.run("plan", "--detailed-exitcode").returncode == 2


def test_deleted_output_is_restored_from_cache(repo: Repo) -> None:
    """A deleted or edited output is re-materialized from the cache, with no API call."""
    repo.write("specs/hero.yaml", TEXT)
    assert repo.apply().returncode == 0
    video = repo.path / "videos" / repo.videos()[0]
    good = video.read_bytes()
    video.write_bytes(b"scribbled over")
    assert repo.run("plan", "--detailed-exitcode").returncode == 2
    assert repo.apply().returncode == 0
    assert video.read_bytes() == good
    video.unlink()
    assert repo.apply().returncode == 0
    assert video.read_bytes() == good
    assert repo.sim is not None and repo.sim.post_requests == 1


def test_api_key_is_never_written_or_printed(repo: Repo) -> None:
    """The key appears in no byte the tool wrote to disk and in none of its output."""
    three_specs(repo)
    outputs = [repo.apply(), repo.run("status", "--json"), repo.run("plan", "--json"),
               repo.apply("--json"), repo.run("status")]  # fmt: skip
    assert_key_nowhere(repo, outputs)
    assert repo.sim is not None
    for request in repo.sim.requests:
        assert request.headers.get("x-goog-api-key") == API_KEY


def test_missing_key_is_one_clear_error(offline_repo: Repo) -> None:
    """apply without GPTPROTO_API_KEY names the variable and the --sim alternative."""
    offline_repo.write("specs/hero.yaml", TEXT)
    result = offline_repo.apply()
    assert result.returncode == 1
    assert "GPTPROTO_API_KEY is not set" in result.stderr and "--sim" in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_sim_sandbox(offline_repo: Repo) -> None:
    """apply --sim runs the whole loop with no key, and keeps its videos apart from real ones."""
    offline_repo.write("specs/hero.yaml", TEXT)
    result = offline_repo.run("apply", "--sim", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Apply complete: 1 materialized" in result.stdout
    again = offline_repo.run("apply", "--sim", "--yes")
    assert again.returncode == 0, again.stderr
    assert "No changes." in again.stdout and "Apply complete: 1 up to date" in again.stdout
    assert not (offline_repo.path / "videos").exists()
    assert not (offline_repo.path / "reconcile.lock").exists()
    sandbox = offline_repo.path / "state" / "sim" / "videos"
    assert len(list(sandbox.glob("hero.*.mp4"))) == 1
    assert offline_repo.run("plan", "--sim", "--detailed-exitcode").returncode == 0


def test_file_id_is_taken_from_any_uri_form() -> None:
    """Downloads go to the configured base by file id, whatever host or /upload/ the URI names."""
    assert (
        file_id_of("https://api.gptproto.com/upload/v1beta/files/abc:download?alt=media") == "abc"
    )
    assert file_id_of("https://elsewhere.example/v1beta/files/xyz:download?alt=media") == "xyz"


def test_renaming_a_spec_in_a_fresh_clone_is_free(repo: Repo, tmp_path: Path) -> None:
    """A rename in a clone without state/ moves the video under the new name with no POST."""
    repo.write("specs/hero.yaml", TEXT)
    assert repo.apply().returncode == 0
    clone = Repo(tmp_path / "clone", repo.sim)
    shutil.copytree(repo.path, clone.path, ignore=shutil.ignore_patterns("state"))
    original = (clone.path / "videos" / clone.videos()[0]).read_bytes()
    clone.write("specs/hero.yaml", TEXT.replace("name: hero", "name: hero-wide"))
    result = clone.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.sim is not None and repo.sim.post_requests == 1
    assert [v.split(".")[0] for v in clone.videos()] == ["hero-wide"]
    assert (clone.path / "videos" / clone.videos()[0]).read_bytes() == original
    assert clone.run("plan", "--detailed-exitcode").returncode == 0


def test_bytes_lost_everywhere_are_paid_for_again_and_say_so(repo: Repo, tmp_path: Path) -> None:
    """With the video gone from the cache and the output folder, plan downloads it again for free
    while the provider keeps it; once the provider's copy is past its expiry too, plan says it
    will pay, and apply does pay once and converges (never claims success without a file)."""
    repo.write("specs/hero.yaml", TEXT)
    assert repo.apply().returncode == 0
    clone = Repo(tmp_path / "clone", repo.sim)
    shutil.copytree(repo.path, clone.path, ignore=shutil.ignore_patterns("state"))
    assert clone.apply().returncode == 0  # adopts the lock, with the provider's copy it names
    shutil.rmtree(clone.path / "state" / "objects")
    for video in (clone.path / "videos").iterdir():
        video.unlink()
    plan = json.loads(clone.run("plan", "--json").stdout)
    assert [a["action"] for a in plan["actions"]] == ["resume"]
    assert "download again from the provider (free)" in plan["actions"][0]["reason"]
    assert repo.sim is not None
    repo.sim.expire_files()
    with closing(sqlite3.connect(clone.path / "state" / "reconciler.db")) as conn, conn:
        conn.execute("UPDATE generations SET remote_until = '2020-01-01T00:00:00Z'")
    plan = json.loads(clone.run("plan", "--json").stdout)
    assert [(a["action"], a["reason"]) for a in plan["actions"]] == [
        ("create", "cached bytes lost and no copy on disk")
    ]
    result = clone.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.sim is not None and repo.sim.post_requests == 2
    assert len(clone.videos()) == 1 and clone.status()["hero"]["state"] == "materialized"
